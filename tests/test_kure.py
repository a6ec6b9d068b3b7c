"""Tests for learnq.regularizers.kure (kurtosis regularization, Shkolnik et al. 2020)."""

from __future__ import annotations

import pytest
import scipy.stats
import torch
from torch import nn

from learnq.errors import ConfigError, ModelError
from learnq.regularizers import KURE, kure_loss, kurtosis


def test_kurtosis_hand_computation() -> None:
    # x = [0, 0, 0, 4]: μ = 1, deviations [-1, -1, -1, 3]
    #   4th central moment = (1 + 1 + 1 + 81)/4 = 21
    #   population variance = (1 + 1 + 1 + 9)/4 = 3  → Kurt = 21/9  = 2.3333
    #   Bessel variance     = 12/3 = 4               → Kurt = 21/16 = 1.3125
    x = torch.tensor([0.0, 0.0, 0.0, 4.0])
    assert kurtosis(x, unbiased=False).item() == pytest.approx(21 / 9, rel=1e-6)
    assert kurtosis(x, unbiased=True).item() == pytest.approx(1.3125, rel=1e-6)
    # (1.3125 - 1.8)² = 0.23765625
    assert kure_loss(x).item() == pytest.approx(0.23765625, rel=1e-6)


def test_kurtosis_of_known_distributions() -> None:
    # evenly spaced points approximate the uniform distribution: kurtosis 1.8 (minus O(1/n²))
    uniform = torch.linspace(-1.0, 1.0, 10001, dtype=torch.float64)
    assert kurtosis(uniform, unbiased=False).item() == pytest.approx(1.8, abs=1e-3)
    # two-point distribution ±1: kurtosis 1, the minimum possible
    assert kurtosis(torch.tensor([-1.0, 1.0, -1.0, 1.0]), unbiased=False).item() == pytest.approx(1.0, rel=1e-6)
    torch.manual_seed(0)
    sample = torch.randn(1000, dtype=torch.float64)
    assert kurtosis(sample, unbiased=False).item() == pytest.approx(
        scipy.stats.kurtosis(sample.numpy(), fisher=False), rel=1e-10
    )


def test_gradcheck() -> None:
    torch.manual_seed(1)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: kure_loss(x, 1.8, True), (w,))
    assert torch.autograd.gradcheck(lambda x: kure_loss(x, 1.8, False), (w,))


def test_mean_over_layers_and_strength() -> None:
    model = nn.Sequential(nn.Linear(4, 1, bias=True), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 0.0, 0.0, 4.0]]))
        model[0].bias.fill_(100.0)  # biases are not regularized
        model[1].weight.copy_(torch.tensor([[-1.0, 1.0]]))
    # layer 1: Bessel σ² = 2, Kurt = mean(x⁴)/4 = 0.25, loss (0.25 - 1.8)² = 2.4025
    reg = KURE(model, strength=0.5)
    assert reg.per_layer() == {"0": pytest.approx(0.23765625, rel=1e-6), "1": pytest.approx(2.4025, rel=1e-6)}
    assert reg().item() == pytest.approx(0.5 * (0.23765625 + 2.4025) / 2, rel=1e-6)
    assert reg.kurtoses() == {"0": pytest.approx(1.3125, rel=1e-6), "1": pytest.approx(0.25, rel=1e-6)}


def test_constant_layer_is_finite() -> None:
    assert kurtosis(torch.full((5,), 3.0)).item() == 0.0


def test_training_moves_kurtosis_towards_target() -> None:
    torch.manual_seed(2)
    layer = nn.Linear(32, 32, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.distributions.Laplace(0.0, 1.0).sample((32, 32)))  # kurtosis ≈ 6
    reg = KURE(nn.Sequential(layer))
    start = reg.kurtoses()["0"]
    opt = torch.optim.Adam(layer.parameters(), lr=0.05)
    for _ in range(40):
        opt.zero_grad()
        reg().backward()
        opt.step()
    assert start > 4.0 and abs(reg.kurtoses()["0"] - 1.8) < 0.5 * abs(start - 1.8)


def test_validation() -> None:
    with pytest.raises(ModelError, match="fewer than 2"):
        KURE(nn.Sequential(nn.Linear(1, 1)))
    with pytest.raises(ConfigError, match="target"):
        KURE(nn.Sequential(nn.Linear(2, 2)), target=-1.0)
    with pytest.raises(ConfigError, match="strength"):
        KURE(nn.Sequential(nn.Linear(2, 2)), strength="big")  # type: ignore[arg-type]
