"""Tests for learnq.regularizers.dsmm (Eq. 1 of seeds/000)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.errors import ConfigError, ModelError
from learnq.regularizers import DSMM, dsmm_loss
from learnq.regularizers.dsmm import soft_max_min


def _linear(values: list[float], bias: bool = False, dtype: torch.dtype = torch.float32) -> nn.Linear:
    layer = nn.Linear(len(values), 1, bias=bias).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([values], dtype=dtype))
    return layer


def test_hand_computation_single_layer() -> None:
    # w = [0, 1, 2], α = 1:
    #   s_max = (0·1 + 1·e + 2·e²) / (1 + e + e²)            = 1.5752103826
    #   s_min = (0·1 + 1·e⁻¹ + 2·e⁻²) / (1 + e⁻¹ + e⁻²)      = 0.4247896174
    #   L = s_max - s_min + e⁻¹                              = 1.5183002064
    e = math.e
    s_max = (e + 2 * e**2) / (1 + e + e**2)
    s_min = (1 / e + 2 / e**2) / (1 + 1 / e + 1 / e**2)
    assert s_max == pytest.approx(1.5752103826, abs=1e-9)
    assert s_min == pytest.approx(0.4247896174, abs=1e-9)
    model = nn.Sequential(_linear([0.0, 1.0, 2.0], bias=True))
    reg = DSMM(model, strength=0.01, alpha_init=1.0)
    assert reg().item() == pytest.approx(0.01 * 1.5183002064, rel=1e-6)
    assert reg.per_layer() == {"0": pytest.approx(1.5183002064, rel=1e-6)}
    s_max_t, s_min_t = soft_max_min(model[0].weight, reg.alpha[0])
    assert s_max_t.item() == pytest.approx(s_max, rel=1e-6)
    assert s_min_t.item() == pytest.approx(s_min, rel=1e-6)


def test_hand_computation_asymmetric_and_sum_over_layers() -> None:
    # w = [-1, 0, 3], α = 0.5:
    #   s_max = (-e^-0.5 + 0 + 3e^1.5) / (e^-0.5 + 1 + e^1.5)  = 2.1087505249
    #   s_min = (-e^0.5 + 0 + 3e^-1.5) / (e^0.5 + 1 + e^-1.5)  = -0.3410102555
    #   L = 2.1087505249 + 0.3410102555 + e^-0.5               = 3.0562914401
    w = torch.tensor([-1.0, 0.0, 3.0])
    assert dsmm_loss(w, torch.tensor(0.5)).item() == pytest.approx(3.0562914401, rel=1e-6)
    # the module sums layers: [-1, 0, 3] and [0, 1, 2] both at α = 0.5
    model = nn.Sequential(_linear([-1.0, 0.0, 3.0]), nn.ReLU(), _linear([0.0, 1.0, 2.0]))
    reg = DSMM(model, strength=2.0, alpha_init=0.5)
    other = dsmm_loss(torch.tensor([0.0, 1.0, 2.0]), torch.tensor(0.5)).item()
    assert reg().item() == pytest.approx(2.0 * (3.0562914401 + other), rel=1e-6)
    assert list(reg.per_layer()) == ["0", "2"]


def test_multidim_hand_computation() -> None:
    # weight [[0, 1], [2, 3]] reshaped to (-1, 2): columns [0, 2] and [1, 3]; α = 1.
    # Two values x < y at distance 2: s_max - s_min = 2·(2σ(2) - 1) = 2·tanh(1).
    # Each column: 2·tanh(1) + e⁻¹; the sum over 2 columns: 2·(2·tanh(1) + e⁻¹) = 3.7821355062
    w = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    expected = 2 * (2 * math.tanh(1.0) + math.exp(-1.0))
    assert expected == pytest.approx(3.7821355062, abs=1e-9)
    assert dsmm_loss(w, torch.tensor(1.0), dims=2).item() == pytest.approx(expected, rel=1e-6)
    layer = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(w)
    reg = DSMM(nn.Sequential(layer), strength=1.0, alpha_init=1.0, dims=2)
    assert reg().item() == pytest.approx(expected, rel=1e-6)


def test_dims_one_equals_scalar_loss() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    a = torch.tensor(0.7)
    torch.testing.assert_close(dsmm_loss(w, a, dims=1), dsmm_loss(w, a))


def test_dims_must_divide_every_layer() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))  # 9 and 6 weights
    DSMM(model, dims=3)
    with pytest.raises(ConfigError, match="dims=2 does not divide the 9 weights of layer '0'"):
        DSMM(model, dims=2)
    with pytest.raises(ConfigError, match="dims"):
        DSMM(model, dims=0)


def test_gradcheck_weight_and_alpha() -> None:
    torch.manual_seed(1)
    w = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w_, a_: dsmm_loss(w_, a_), (w, a))
    w2 = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w_, a_: dsmm_loss(w_, a_, dims=2), (w2, a))
    # large α and scale (sharp softmax) still has correct gradients
    w3 = (torch.randn(5, dtype=torch.float64) * 3).requires_grad_()
    a3 = torch.tensor(4.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w_, a_: dsmm_loss(w_, a_), (w3, a3))


def test_module_alpha_gradient_matches_finite_difference() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).double()
    reg = DSMM(model, strength=0.3, alpha_init=0.5).double()
    reg().backward()
    h = 1e-6
    for i, alpha in enumerate(reg.alpha):
        with torch.no_grad():
            alpha += h
            up = reg().item()
            alpha -= 2 * h
            down = reg().item()
            alpha += h
        assert alpha.grad is not None
        assert alpha.grad.item() == pytest.approx((up - down) / (2 * h), rel=1e-6), i
    assert model[0].weight.grad is not None and model[0].bias.grad is None  # biases are not regularized


@pytest.mark.parametrize("alpha", [100.0, 1e4])
def test_stable_for_large_weights_and_alpha(alpha: float) -> None:
    torch.manual_seed(3)
    layer = nn.Linear(64, 32)
    with torch.no_grad():
        layer.weight.mul_(1e3 / layer.weight.abs().max())  # max|w| = 1e3: α·w up to 1e5 (e^1e5 would overflow)
    reg = DSMM(nn.Sequential(layer), strength=1.0, alpha_init=alpha)
    loss = reg()
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(layer.weight.grad).all() and torch.isfinite(reg.alpha[0].grad)
    # so sharp that the soft range is the hard range
    w = layer.weight.detach()
    assert loss.item() == pytest.approx((w.max() - w.min()).item(), rel=1e-5)


def test_negative_alpha_is_finite_in_range() -> None:
    # α can drift below 0 in training; the loss stays finite while e^{-α} fits in float32
    w = torch.randn(50) * 1e3
    assert torch.isfinite(dsmm_loss(w, torch.tensor(-50.0)))


def test_alphas_live_on_regularizer_not_model() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(), nn.Linear(4, 2))
    n_model = len(list(model.parameters()))
    reg = DSMM(model)
    assert len(list(model.parameters())) == n_model
    params = list(reg.parameters())
    assert len(params) == 3 and all(p.shape == () for p in params)
    assert reg.alphas() == {"0": pytest.approx(0.1), "2": pytest.approx(0.1), "4": pytest.approx(0.1)}
    assert set(reg.state_dict()) == {"alpha.0", "alpha.1", "alpha.2"}  # never the model's weights
    (group,) = reg.param_groups(lr=0.05)
    assert group["weight_decay"] == 0.0 and group["lr"] == 0.05 and group["params"] == params
    opt = torch.optim.SGD([{"params": model.parameters()}, *reg.param_groups(0.05)], lr=0.1, weight_decay=1e-4)
    assert opt.param_groups[1]["weight_decay"] == 0.0 and opt.param_groups[0]["weight_decay"] == 1e-4


def test_alpha_is_trained_by_optimizer() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(8, 8))
    reg = DSMM(model, strength=1.0, alpha_init=0.1)
    opt = torch.optim.SGD(reg.param_groups(lr=0.5))
    history = [reg.alphas()["0"]]
    for _ in range(5):
        opt.zero_grad()
        reg().backward()
        opt.step()
        history.append(reg.alphas()["0"])
    # with 64 weights of scale ~0.3, d/dα (s_max - s_min) is small and -e^{-α} dominates: α grows every step
    # (first step: 0.1 + 0.5·(e^{-0.1} - small) ≈ 0.55)
    assert all(b > a for a, b in zip(history, history[1:], strict=False))
    assert 0.5 < history[1] < 0.56 and history[-1] > 1.0


def test_reads_parametrized_weight_at_call_time() -> None:
    layer = _linear([0.0, 1.0, 2.0])
    reg = DSMM(nn.Sequential(layer), strength=1.0, alpha_init=1.0)
    before = reg().item()
    parametrize.register_parametrization(layer, "weight", _Double())
    after = reg().item()
    assert before == pytest.approx(1.5183002064, rel=1e-6)
    assert after == pytest.approx(dsmm_loss(torch.tensor([0.0, 2.0, 4.0]), torch.tensor(1.0)).item(), rel=1e-6)


def test_validation_errors() -> None:
    model = nn.Sequential(nn.Linear(2, 2))
    for bad in (-0.1, "0.1", True, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="strength"):
            DSMM(model, strength=bad)  # type: ignore[arg-type]
    for bad_alpha in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="alpha_init"):
            DSMM(model, alpha_init=bad_alpha)
    with pytest.raises(ModelError, match="DSMM"):
        DSMM(nn.Sequential(nn.ReLU()))
    assert DSMM(model, strength=0).strength == 0.0


class _Double(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w
