"""Tests for learnq.regularizers.satnl (w_eff = a·tanh(w/a) as the first weight parametrization)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.errors import ConfigError, ModelError
from learnq.regularizers import DSMM, SatNL, TanhSaturation, dsmm_loss


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 4))


def test_hand_values() -> None:
    # a = max|w| = 2: w = [2, -1, 0.5] → 2·tanh([1, -0.5, 0.25]) = [1.5231883, -0.9242343, 0.4898373]
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[2.0, -1.0, 0.5]]))
    SatNL.apply(nn.Sequential(layer))
    expected = [2 * math.tanh(1.0), 2 * math.tanh(-0.5), 2 * math.tanh(0.25)]
    assert expected == pytest.approx([1.5231883, -0.9242343, 0.4898373], abs=1e-7)
    assert layer.weight.detach()[0].tolist() == pytest.approx(expected, rel=1e-6)
    assert SatNL.scales(nn.Sequential(layer)) == {"0": 2.0}


def test_apply_matches_formula_and_forward_uses_it() -> None:
    model = _model()
    raw = {n: m.weight.detach().clone() for n, m in model.named_children() if hasattr(m, "weight")}
    SatNL.apply(model)
    for name, w in raw.items():
        a = w.abs().max()
        layer = getattr(model, name)
        torch.testing.assert_close(layer.weight, a * torch.tanh(w / a))
        assert parametrize.is_parametrized(layer, "weight")
        assert not isinstance(layer.parametrizations["weight"][0].a, nn.Parameter)  # fixed: a buffer
    x = torch.randn(2, 2, 4, 4)
    y = model(x)
    manual = nn.functional.conv2d(x, model[0].weight, model[0].bias).relu().flatten(1) @ model[3].weight.T
    torch.testing.assert_close(y, manual + model[3].bias)


def test_odd_bounded_decreasing_slope() -> None:
    sat = TanhSaturation(0.5)
    w = torch.linspace(-10, 10, 2001, dtype=torch.float64)
    out = sat(w)
    torch.testing.assert_close(sat(-w), -out)  # odd
    assert out.abs().max().item() <= 0.5  # bounded by a
    assert sat(torch.tensor([1e6])).item() == pytest.approx(0.5, rel=1e-12)  # saturates at a
    w_pos = torch.linspace(0, 5, 101, dtype=torch.float64, requires_grad=True)
    (slope,) = torch.autograd.grad(sat(w_pos).sum(), w_pos)
    assert slope[0].item() == pytest.approx(1.0)  # identity near 0
    assert bool((slope[1:] < slope[:-1]).all())  # slope decreases with |w|


def test_gradcheck_weight_and_learnable_a() -> None:
    torch.manual_seed(1)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    a = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)

    def f(w_: torch.Tensor, a_: torch.Tensor) -> torch.Tensor:
        return a_ * torch.tanh(w_ / a_)

    assert torch.autograd.gradcheck(f, (w, a))
    sat = TanhSaturation(torch.tensor(0.7, dtype=torch.float64), learnable=True)
    assert torch.autograd.gradcheck(sat, (w,))
    sat(w).sum().backward()
    (ga,) = torch.autograd.grad(f(w, a).sum(), a)
    torch.testing.assert_close(sat.a.grad, ga)


def test_learnable_a_is_a_model_parameter() -> None:
    model = _model()
    n_before = len(list(model.parameters()))
    SatNL.apply(model, learnable=True)
    params = SatNL.scale_parameters(model)
    assert len(params) == 2 and all(isinstance(p, nn.Parameter) for p in params)
    assert len(list(model.parameters())) == n_before + 2
    model(torch.randn(1, 2, 4, 4)).sum().backward()
    assert all(p.grad is not None for p in params)


def test_remove_bakes_values_into_same_parameter() -> None:
    model = _model()
    original = model[3].weight
    SatNL.apply(model)
    effective = {i: model[i].weight.detach().clone() for i in (0, 3)}
    x = torch.randn(2, 2, 4, 4)
    y = model(x)
    SatNL.remove(model)
    for i in (0, 3):
        assert not parametrize.is_parametrized(model[i])
        assert torch.equal(model[i].weight, effective[i])  # bit-exact
    assert model[3].weight is original  # optimizer state keyed on it stays valid
    assert torch.equal(model(x), y)
    with pytest.raises(ConfigError, match="no SatNL"):
        SatNL.remove(model)


def test_must_be_first_parametrization() -> None:
    model = _model()
    parametrize.register_parametrization(model[3], "weight", _Double())
    with pytest.raises(ConfigError, match="already parametrized"):
        SatNL.apply(model)
    assert not parametrize.is_parametrized(model[0])  # nothing half-applied


def test_later_parametrization_sees_saturated_weight_and_survives_remove() -> None:
    model = _model()
    SatNL.apply(model)
    saturated = model[3].weight.detach().clone()
    parametrize.register_parametrization(model[3], "weight", _Double())  # e.g. a quantizer appended later
    torch.testing.assert_close(model[3].weight, 2 * saturated)
    SatNL.remove(model)
    plist = model[3].parametrizations["weight"]
    assert len(plist) == 1 and isinstance(plist[0], _Double)
    torch.testing.assert_close(plist.original, saturated)
    torch.testing.assert_close(model[3].weight, 2 * saturated)


def test_regularizer_sees_saturated_weight() -> None:
    model = _model()
    SatNL.apply(model)
    reg = DSMM(model, strength=1.0, alpha_init=1.0)
    expected = sum(dsmm_loss(model[i].weight, torch.tensor(1.0)).item() for i in (0, 3))
    assert reg().item() == pytest.approx(expected, rel=1e-6)


def test_model_apply_still_works() -> None:
    # nn.Module.apply recurses into parametrizations: SatNL's namespace must not shadow it
    model = SatNL.apply(_model())
    model.apply(lambda m: nn.init.zeros_(m.bias) if isinstance(m, nn.Linear) else None)
    assert torch.equal(model[3].bias, torch.zeros(4))


def test_errors() -> None:
    with pytest.raises(ModelError):
        SatNL.apply(nn.Sequential(nn.ReLU()))
    zero = nn.Linear(2, 2)
    nn.init.zeros_(zero.weight)
    with pytest.raises(ModelError, match="max\\|w\\| = 0"):
        SatNL.apply(nn.Sequential(zero))
    with pytest.raises(ConfigError):
        TanhSaturation(0.0)
    assert not SatNL.is_applied(_model()) and SatNL.is_applied(SatNL.apply(_model()))


class _Double(nn.Module):
    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return 2 * w
