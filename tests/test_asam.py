"""Tests for learnq.optim.asam (Kwon et al. 2021, adaptive sharpness-aware minimization)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from learnq.errors import ConfigError
from learnq.optim import ASAM, is_weight_name
from learnq.regularizers import DSMM, SatNL


class _Quad(nn.Module):
    """L = ½‖weight‖² + ½‖bias‖², so the gradient at any point is the point itself."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        self.bias = nn.Parameter(torch.tensor([3.0], dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.weight**2).sum() + 0.5 * (self.bias**2).sum()


def _hand_step(rho: float, eta: float, lr: float) -> tuple[list[float], list[float], list[float], float]:
    # g = p. T_w = |w| + η, T_b = 1. ε = ρ·T²·g/‖T·g‖ (norm over weight and bias together).
    w, b = [1.0, -2.0], [3.0]
    tw = [abs(x) + eta for x in w]
    norm = math.sqrt(sum((t * x) ** 2 for t, x in zip(tw, w, strict=True)) + b[0] ** 2)
    eps_w = [rho * t * t * x / norm for t, x in zip(tw, w, strict=True)]
    eps_b = [rho * b[0] / norm]
    # gradient at w + ε is w + ε; SGD step from the restored w
    new_w = [x - lr * (x + e) for x, e in zip(w, eps_w, strict=True)]
    new_b = [b[0] - lr * (b[0] + eps_b[0])]
    return eps_w + eps_b, new_w, new_b, norm


def test_one_step_matches_hand_computation() -> None:
    # ρ = 0.5, η = 0.01: T·g = [1.01, -4.02, 3], ‖T·g‖ = √26.1805 = 5.1166884...
    # ε_w = 0.5·[1.0201·1, 4.0401·(-2)]/5.11669 = [0.0996836, -0.7895927], ε_b = 1.5/5.11669 = 0.2931583
    # SGD lr 0.1: w ← [1 - 0.1·1.0996836, -2 - 0.1·(-2.7895927)] = [0.8900316, -1.7210407], b ← 2.6706842
    eps, new_w, new_b, norm = _hand_step(0.5, 0.01, 0.1)
    assert norm == pytest.approx(5.1166884, abs=1e-6)
    assert eps == pytest.approx([0.0996836, -0.7895927, 0.2931583], abs=1e-6)
    assert new_w == pytest.approx([0.8900316, -1.7210407], abs=1e-6)
    assert new_b == pytest.approx([2.6706842], abs=1e-6)

    model = _Quad()
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1), model, rho=0.5, eta=0.01)

    def closure() -> torch.Tensor:
        asam.zero_grad()
        loss = model()
        loss.backward()
        return loss

    loss = asam.step(closure)
    assert loss.item() == pytest.approx(0.5 * (1 + 4 + 9))  # the loss at w, not at w + ε
    # float64 parameters and the hand step in Python floats: a dozen roundings apart, ~1e-15 relative
    assert model.weight.tolist() == pytest.approx(new_w, rel=1e-12)
    assert model.bias.tolist() == pytest.approx(new_b, rel=1e-12)
    assert asam.last_perturbation_norm == pytest.approx(math.sqrt(sum(e * e for e in eps)), rel=1e-6)


def test_manual_two_step_api() -> None:
    model = _Quad()
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1), model, rho=0.5, eta=0.01)
    eps, new_w, new_b, _ = _hand_step(0.5, 0.01, 0.1)
    model().backward()
    asam.ascent_step()
    assert model.weight.tolist() == pytest.approx([1.0 + eps[0], -2.0 + eps[1]], rel=1e-12)
    assert model.bias.tolist() == pytest.approx([3.0 + eps[2]], rel=1e-12)
    assert model.weight.grad is None and model.bias.grad is None  # zeroed before the second pass
    model().backward()
    asam.descent_step()
    assert model.weight.tolist() == pytest.approx(new_w, rel=1e-12)
    assert model.bias.tolist() == pytest.approx(new_b, rel=1e-12)
    assert model.weight.grad is None


def test_restore_is_exact() -> None:
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    before = [p.detach().clone() for p in model.parameters()]
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.0), model, rho=0.7)  # lr 0: the step changes nothing
    model(torch.randn(4, 5)).pow(2).sum().backward()
    asam.ascent_step()
    assert not torch.equal(model.weight, before[0])
    model(torch.randn(4, 5)).pow(2).sum().backward()
    asam.descent_step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_eta_zero_leaves_zero_weights_unperturbed() -> None:
    model = _Quad()
    with torch.no_grad():
        model.weight[0] = 0.0
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1), model, rho=0.5, eta=0.0)
    with torch.no_grad():
        model.weight.grad = torch.tensor([5.0, -2.0], dtype=torch.float64)  # any gradient
        model.bias.grad = torch.tensor([3.0], dtype=torch.float64)
    asam.ascent_step()
    assert model.weight[0].item() == 0.0  # T = |0| + 0 = 0
    assert model.weight[1].item() != -2.0


def test_non_weights_get_t_one_and_outside_params_are_not_perturbed() -> None:
    torch.manual_seed(1)
    model = SatNL.apply(nn.Sequential(nn.Linear(3, 3)), learnable=True)
    reg = DSMM(model)
    opt = torch.optim.SGD([{"params": model.parameters()}, *reg.param_groups(0.1)], lr=0.1)
    asam = ASAM(opt, model, rho=0.5, eta=0.01)
    names = dict(model.named_parameters())
    assert set(names) == {"0.bias", "0.parametrizations.weight.original", "0.parametrizations.weight.0.a"}
    grads = {"0.bias": torch.ones(3), "0.parametrizations.weight.original": torch.ones(3, 3)}
    grads["0.parametrizations.weight.0.a"] = torch.ones(())
    values = {n: p.detach().clone() for n, p in names.items()}
    for n, p in names.items():
        p.grad = grads[n].clone()
    alpha_before = reg.alpha[0].detach().clone()
    reg.alpha[0].grad = torch.ones(())
    asam.ascent_step()
    w = values["0.parametrizations.weight.original"]
    t_w = w.abs() + 0.01
    norm = math.sqrt(float((t_w**2).sum()) + 3 + 1)  # T = 1 for the bias and for a
    torch.testing.assert_close(names["0.parametrizations.weight.original"], w + 0.5 * t_w**2 / norm)
    torch.testing.assert_close(names["0.bias"], values["0.bias"] + 0.5 / norm)
    torch.testing.assert_close(
        names["0.parametrizations.weight.0.a"], values["0.parametrizations.weight.0.a"] + 0.5 / norm
    )
    assert torch.equal(reg.alpha[0].detach(), alpha_before)  # the regularizer's α is not in the model


def test_is_weight_name() -> None:
    assert is_weight_name("weight") and is_weight_name("features.0.weight") and is_weight_name("bn.weight")
    assert is_weight_name("fc.parametrizations.weight.original")
    assert not is_weight_name("fc.bias") and not is_weight_name("fc.parametrizations.weight.0.a")
    assert not is_weight_name("weight_scale")


def test_trains_a_tiny_model() -> None:
    torch.manual_seed(2)
    x = torch.randn(64, 4)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]])).tanh()
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model)

    def closure() -> torch.Tensor:
        asam.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    losses = [asam.step(closure).item() for _ in range(60)]
    assert losses[-1] < 0.2 * losses[0]


def test_passthrough() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    asam = ASAM(opt, model)
    assert asam.param_groups is opt.param_groups
    x = torch.randn(3, 2)

    def closure() -> torch.Tensor:
        asam.zero_grad()
        loss = model(x).sum()
        loss.backward()
        return loss

    asam.step(closure)
    state = asam.state_dict()
    assert state == opt.state_dict() and len(state["state"]) == 2
    opt2 = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=1e-3)
    ASAM(opt2, model).load_state_dict(state)
    assert opt2.state_dict()["state"][0]["step"] == state["state"][0]["step"]
    model(x).sum().backward()
    asam.zero_grad()
    assert model.weight.grad is None


def test_errors() -> None:
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for bad_rho in (0.0, -1.0, "0.5"):
        with pytest.raises(ConfigError, match="rho"):
            ASAM(opt, model, rho=bad_rho)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eta"):
        ASAM(opt, model, eta=-0.1)
    with pytest.raises(ConfigError, match="optimizer"):
        ASAM(object(), model)  # type: ignore[arg-type]
    asam = ASAM(opt, model)
    with pytest.raises(ConfigError, match="backward"):
        asam.ascent_step()
    with pytest.raises(ConfigError, match="without a preceding ascent_step"):
        asam.descent_step()
    model(torch.ones(1, 2)).sum().backward()
    asam.ascent_step()
    model(torch.ones(1, 2)).sum().backward()
    with pytest.raises(ConfigError, match="twice"):
        asam.ascent_step()


def test_failed_second_pass_restores_weights() -> None:
    model = nn.Linear(2, 2)
    before = model.weight.detach().clone()
    asam = ASAM(torch.optim.SGD(model.parameters(), lr=0.1), model)
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        asam.zero_grad()
        loss = model(torch.ones(1, 2)).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="boom"):
        asam.step(closure)
    assert torch.equal(model.weight, before)
    model(torch.ones(1, 2)).sum().backward()
    asam.ascent_step()  # no pending ascent left behind
