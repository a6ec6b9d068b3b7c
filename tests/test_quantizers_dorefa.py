"""DoReFa weights (learnq.quantizers.dorefa): the formula by hand, its gradient by hand, export == eval, config."""

from __future__ import annotations

import math

import pytest
import torch

import learnq
from learnq.errors import ConfigError
from learnq.quantizers import QAT_METHODS, DoReFa, DoReFaQuantizer


def test_formula_by_hand_two_bits():
    w = torch.tensor([[-2.0, -0.1, 0.0], [0.3, 0.6, 1.5]])
    t = [math.tanh(v) for v in w.flatten().tolist()]
    m = max(abs(v) for v in t)  # tanh(2)
    expected = []
    for v in t:
        u = v / (2 * m) + 0.5
        expected.append(2 * round(3 * u) / 3 - 1)
    # by hand: u = 0, .4668, .5, .6342, .7724, .9643 -> 3u rounds to 0, 1, 2 (1.5: ties to even), 2, 2, 3
    assert [round(3 * (v / (2 * m) + 0.5)) for v in t] == [0, 1, 2, 2, 2, 3]
    y = DoReFaQuantizer((2, 3), bits=2)(w)
    torch.testing.assert_close(y.flatten(), torch.tensor(expected), rtol=0, atol=1e-6)  # float32 vs float64 tanh
    assert y.min() == -1 and y.max() == 1  # the extremes of tanh map to the ends of [-1, 1]


def test_gradient_is_tanh_and_normalisation_with_straight_through_rounding():
    w = torch.tensor([0.2, -0.9, 0.5, 1.3], dtype=torch.float64)
    c = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    x = w.clone().float().requires_grad_(True)
    (DoReFaQuantizer((4,), bits=3)(x) * c.float()).sum().backward()
    t = torch.tanh(w)
    m, j = t.abs().max(), int(t.abs().argmax())
    # ∂w_k/∂w_i = 2·∂u/∂w_i, u_i = t_i/(2m) + 1/2 (STE through the rounding):
    # direct term (1 - t_i²)/m for every i, plus through m = |t_j|: -Σ_i c_i t_i/m² · sign(t_j)(1 - t_j²)
    expected = c * (1 - t**2) / m
    expected[j] += -(c * t).sum() / m**2 * torch.sign(t[j]) * (1 - t[j] ** 2)
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-5, atol=1e-6)  # float32 vs float64


@pytest.mark.parametrize("rescale", [False, True])
def test_export_equals_eval_and_grid(rescale):
    torch.manual_seed(0)
    w = torch.randn(6, 7) * 0.3
    q = DoReFaQuantizer((6, 7), bits=3, rescale=rescale)
    q.eval()
    qt = q.export_quantized(w)
    e = float(w.abs().mean()) if rescale else 1.0
    assert qt.bits == 3 and qt.qmin == 0 and qt.scheme == "affine" and qt.method == "dorefa"
    assert int(qt.codes.min()) >= 0 and int(qt.codes.max()) <= 7
    torch.testing.assert_close(qt.scale, torch.tensor([2 * e / 7]), rtol=1e-6, atol=0)  # float32 of mean|w|
    assert torch.equal(q(w), qt.dequantize())
    q.train()
    torch.testing.assert_close(q(w), qt.dequantize(), rtol=0, atol=1e-6)  # train and eval: the same levels
    assert q.true_size_bits() == 42 * 3 + 64


def test_one_bit_is_sign_of_the_normalised_weight():
    w = torch.tensor([-0.3, 0.01, -0.02, 2.0])
    y = DoReFaQuantizer((4,), bits=1)(w)
    assert y.tolist() == [-1.0, 1.0, -1.0, 1.0]  # u > 1/2 <=> w > 0 (u = 1/2 only at w = 0)


def test_config_and_registry():
    assert QAT_METHODS["dorefa"] is DoReFa and learnq.DoReFa is DoReFa
    assert DoReFa.from_dict(DoReFa(bits=2, rescale=True).to_dict()) == DoReFa(bits=2, rescale=True)
    assert DoReFa.recipe_options() == {"rescale": False}
    with pytest.raises(ConfigError, match="DoReFa.bits"):
        DoReFa(bits=0)
    with pytest.raises(ConfigError, match="rescale"):
        DoReFa(rescale=1)
    with pytest.raises(ConfigError, match="one grid per tensor"):
        DoReFa.from_granularity("group:8", {})


def test_prepared_model_trains_and_freezes_exactly():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    handle = learnq.prepare(model, DoReFa(bits=2))
    x = torch.randn(16, 5)
    before = model[0].parametrizations.weight.original.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model(x).pow(2).sum().backward()
    opt.step()
    assert not torch.equal(model[0].parametrizations.weight.original, before)  # the float weights moved through the STE
    model.eval()
    with torch.no_grad():
        out = model(x)
        levels = torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0])
        # every weight is one of the 4 levels, up to float32 rounding of q·Δ + offset (1e-6)
        assert float((model[0].weight.reshape(-1, 1) - levels).abs().amin(dim=1).max()) < 1e-6
        handle.freeze()
        assert torch.equal(model(x), out)
