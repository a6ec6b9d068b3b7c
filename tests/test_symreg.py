"""Tests for learnq.regularizers.symreg (sorted-pairing symmetry loss, METHODS.md section 3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnq.errors import ConfigError, ModelError
from learnq.regularizers import SymReg, symreg_loss


def test_hand_computation() -> None:
    # w = [3, -1, 0] → u = sort(w) = [-1, 0, 3], reversed [3, 0, -1], pair sums [2, 0, 2]
    # mean of squares = (4 + 0 + 4)/3 = 8/3; mean(w²) = (9 + 1 + 0)/3 = 10/3; L = 0.8
    w = torch.tensor([3.0, -1.0, 0.0])
    assert symreg_loss(w, eps=0.0).item() == pytest.approx(0.8, rel=1e-6)
    # eps enters the denominator: 8/3 / (10/3 + 1) = 8/13
    assert symreg_loss(w, eps=1.0).item() == pytest.approx(8 / 13, rel=1e-6)
    # even n, all positive: [1, 2] → pair sums [3, 3]: 9 / ((1 + 4)/2) = 3.6
    assert symreg_loss(torch.tensor([2.0, 1.0]), eps=0.0).item() == pytest.approx(3.6, rel=1e-6)


def test_zero_iff_symmetric() -> None:
    torch.manual_seed(0)
    half = torch.rand(50) + 0.1
    symmetric = torch.cat([half, -half, torch.zeros(1)])[torch.randperm(101)].reshape(1, 101)
    assert symreg_loss(symmetric).item() == pytest.approx(0.0, abs=1e-12)
    shifted = symmetric + 0.05
    skewed = torch.cat([half, -0.5 * half])
    assert symreg_loss(shifted).item() > 1e-3
    assert symreg_loss(skewed).item() > 1e-2


def test_scale_invariant() -> None:
    torch.manual_seed(1)
    w = torch.randn(30) + 0.3
    assert symreg_loss(100 * w).item() == pytest.approx(symreg_loss(w).item(), rel=1e-5)


def test_all_zero_layer_is_finite() -> None:
    assert symreg_loss(torch.zeros(7)).item() == 0.0


def test_gradcheck() -> None:
    torch.manual_seed(2)
    w = (torch.randn(3, 5, dtype=torch.float64) + 0.2).requires_grad_()  # distinct values: sort is differentiable
    assert torch.autograd.gradcheck(lambda x: symreg_loss(x, eps=1e-8), (w,))


def test_skips_depthwise_and_sums_layers() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1), nn.Flatten(), nn.Linear(8, 2)
    )
    with torch.no_grad():
        model[1].weight.add_(5.0)  # depthwise made very asymmetric: must not count
        model[2].weight.abs_()  # all positive: asymmetric
    reg = SymReg(model, strength=0.5)
    assert reg.layer_names == ["0", "2", "4"]
    per_layer = reg.per_layer()
    expected = {name: symreg_loss(model[int(name)].weight).item() for name in ("0", "2", "4")}
    assert per_layer == {k: pytest.approx(v, rel=1e-6) for k, v in expected.items()}
    assert per_layer["2"] > 1.0  # all-positive layer: pair sums ~ 2·mean
    assert reg().item() == pytest.approx(0.5 * sum(expected.values()), rel=1e-6)
    reg().backward()
    assert model[1].weight.grad is None and model[2].weight.grad is not None


def test_only_depthwise_model_raises() -> None:
    with pytest.raises(ModelError, match="non-depthwise"):
        SymReg(nn.Sequential(nn.Conv2d(4, 4, 3, groups=4)))


def test_validation() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="strength"):
        SymReg(model, strength=-1.0)
    with pytest.raises(ConfigError, match="eps"):
        SymReg(model, eps=0.0)
    assert SymReg(model).strength == pytest.approx(0.1)


def test_training_makes_layer_symmetric() -> None:
    torch.manual_seed(4)
    layer = nn.Linear(16, 4, bias=False)
    with torch.no_grad():
        layer.weight.abs_()
    reg = SymReg(nn.Sequential(layer), strength=1.0)
    start = reg().item()
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        reg().backward()
        opt.step()
    assert reg().item() < 0.1 * start
