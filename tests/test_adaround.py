"""AdaRound (Nagel et al. 2020): rectified sigmoid, regulariser, β schedule, learned rounding, model pass."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import learnq
from learnq.act import input_quantizers
from learnq.errors import ConfigError, DataError, ModelError
from learnq.granularity import Granularity
from learnq.grid import GridSpec, compute_params
from learnq.ptq import PTQ_METHODS, quantize
from learnq.ptq.adaround import (
    AdaRoundInfo,
    adaround_weights,
    beta_schedule,
    capture_inputs,
    inverse_rectified_sigmoid,
    layer_function,
    learn_rounding,
    rectified_sigmoid,
    rounding_regularizer,
)
from learnq.quantized import QuantizedWeight, quantized_parameters


def test_rectified_sigmoid_by_hand():
    v = torch.tensor([-10.0, 0.0, math.log(3.0), 10.0, -math.log(3.0)])
    # σ = [4.54e-5, 0.5, 0.75, 0.99995, 0.25]; h = clip(1.2 σ - 0.1, 0, 1)
    expected = torch.tensor([0.0, 0.5, 0.8, 1.0, 0.2])
    assert torch.allclose(rectified_sigmoid(v), expected, atol=1e-6)


def test_inverse_rectified_sigmoid_round_trip_and_gradient():
    h = torch.linspace(0, 1, 11)
    assert torch.allclose(rectified_sigmoid(inverse_rectified_sigmoid(h)), h, atol=1e-6)
    v = torch.tensor([-1.3, -0.2, 0.4, 1.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rectified_sigmoid, (v,))


def test_rounding_regularizer_by_hand():
    h = torch.tensor([0.0, 1.0, 0.5, 0.25])
    # β = 2: 1 - |2h-1|² = [0, 0, 1, 0.75]
    assert float(rounding_regularizer(h, 2.0)) == pytest.approx(1.75)
    # β = 20: 1 - 0.5^20 for h = 0.25
    assert float(rounding_regularizer(h, 20.0)) == pytest.approx(1.0 + 1.0 - 0.5**20)


def test_beta_schedule_warmup_then_linear_20_to_2():
    assert [beta_schedule(s, 100) for s in range(20)] == [None] * 20
    assert beta_schedule(20, 100) == pytest.approx(20.0)
    assert beta_schedule(99, 100) == pytest.approx(2.0)
    assert beta_schedule(20 + 79 // 2, 100) == pytest.approx(2.0 + 18.0 * (1 - 39 / 79))
    assert beta_schedule(0, 10, warmup=0.0) == pytest.approx(20.0)


def _tiny_layer_problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(12, 6, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, 12, generator=gen) * 0.5)
    mix = torch.randn(12, 12, generator=gen)
    x = torch.randn(256, 12, generator=gen) @ mix  # correlated inputs: nearest rounding is not optimal
    return layer, x


def test_learned_rounding_is_floor_or_ceil_and_beats_nearest():
    layer, x = _tiny_layer_problem()
    spec = GridSpec(bits=3, granularity=Granularity.parse("channel"))
    fn = layer_function(layer)
    w = layer.weight.detach()
    target = fn(x, w)
    qt, info = learn_rounding(w, spec, fn, x, target, iterations=1000, lr=1e-2, batch_size=64, seed=0)
    params = compute_params(w, spec)
    scaled = w / spec.granularity.expand(params.scale, w.shape)
    qmin, qmax = spec.qrange()
    up = qt.codes.float() - torch.floor(scaled)
    inside = (torch.floor(scaled) >= qmin) & (torch.floor(scaled) + 1 <= qmax)
    assert bool(((up == 0) | (up == 1))[inside].all())
    assert int(qt.codes.min()) >= qmin and int(qt.codes.max()) <= qmax
    assert qt.method == "adaround" and torch.equal(qt.scale, params.scale)
    # errors recomputed by hand
    nearest = torch.clamp(torch.round(scaled), qmin, qmax) * spec.granularity.expand(params.scale, w.shape)
    err_nearest = float((fn(x, nearest) - target).pow(2).sum(dim=1).mean())
    err_ada = float((fn(x, qt.dequantize()) - target).pow(2).sum(dim=1).mean())
    assert info.nearest_error == pytest.approx(err_nearest, rel=1e-5)
    assert info.adaround_error == pytest.approx(err_ada, rel=1e-5)
    assert err_ada < 0.75 * err_nearest  # measured 0.53
    assert 0 < info.flipped < info.numel


def test_learned_rounding_without_iterations_is_the_rest_threshold():
    # zero iterations: V = h⁻¹(frac), hard rounding up where frac >= 1/2, i.e. nearest (up to ties)
    layer, x = _tiny_layer_problem(1)
    spec = GridSpec(bits=4)
    w = layer.weight.detach()
    qt, info = learn_rounding(w, spec, layer_function(layer), x, layer(x), iterations=0)
    params = compute_params(w, spec)
    assert torch.equal(qt.codes, torch.clamp(torch.round(w / params.scale), *spec.qrange()).to(torch.int32))
    assert info.flipped == 0


def test_learn_rounding_rejects_bad_options():
    layer, x = _tiny_layer_problem()
    w = layer.weight.detach()
    fn = layer_function(layer)
    with pytest.raises(DataError):
        learn_rounding(w, GridSpec(bits=4), fn, x[:0], layer(x)[:0])
    with pytest.raises(ConfigError):
        learn_rounding(w, GridSpec(bits=4), fn, x, layer(x), iterations=-1)
    with pytest.raises(ConfigError):
        learn_rounding(w, GridSpec(bits=4), fn, x, layer(x), warmup=1.0)
    with pytest.raises(ModelError):
        layer_function(nn.ReLU())


def test_capture_inputs_returns_the_layer_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3))
    x = torch.randn(10, 5)
    got = capture_inputs(net, net[2], x, batch_size=4)
    # the same batches of 4, 4, 2 through the same layers: the same kernels on the same shapes, bit for bit
    with torch.no_grad():
        assert torch.equal(got, torch.cat([torch.relu(net[0](x[i:i + 4])) for i in range(0, 10, 4)]))
        # one batch of 10 may run another matmul kernel (MKL picks by shape and CPU): each output is a float32 sum
        # of 6 terms (5 products + bias) with Σ|terms| < 2.5, within 6·2⁻²⁴·2.5 ≈ 9e-7 of exact on either side
        torch.testing.assert_close(got, torch.relu(net[0](x)), rtol=0, atol=2e-6)
    with pytest.raises(ModelError):
        capture_inputs(net, nn.Linear(2, 2), x)


def test_conv_layer_function_matches_the_layer():
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1, bias=False)
    x = torch.randn(2, 2, 7, 7)
    assert torch.equal(layer_function(conv)(x, conv.weight), conv(x))


@pytest.mark.parametrize("inputs", ["quantized", "float"])
def test_adaround_weights_on_a_tiny_mlp(inputs):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    w1, b1, w2 = net[1].weight.detach().clone(), net[1].bias.detach().clone(), net[3].weight.detach().clone()
    x = torch.randn(64, 8)
    infos = adaround_weights(net, x, GridSpec(bits=3), inputs=inputs, iterations=50, lr=5e-2, seed=0)
    assert list(infos) == ["1.weight", "3.weight"]
    assert all(isinstance(i, AdaRoundInfo) for i in infos.values())
    exported = dict(quantized_parameters(net))
    assert set(exported) == {"1.weight", "3.weight"}
    assert all(qt.method == "adaround" for qt in exported.values())
    assert isinstance(net[1].parametrizations.weight[0], QuantizedWeight)
    # the model computes with exactly the exported grid values
    assert torch.equal(net[1].weight, exported["1.weight"].dequantize())
    # the second layer learned from the float model's inputs or the rounded first layer's (asymmetric)
    x_float = torch.relu(x @ w1.T + b1)
    x_seen = x_float if inputs == "float" else torch.relu(net[1](x)).detach()
    nearest = torch.clamp(torch.round(w2 / exported["3.weight"].scale), -4, 3) * exported["3.weight"].scale
    expected = float((x_float @ w2.T - x_seen @ nearest.T).pow(2).sum(dim=1).mean())
    assert infos["3.weight"].nearest_error == pytest.approx(expected, rel=1e-5)
    assert infos["3.weight"].adaround_error < infos["3.weight"].nearest_error


def test_adaround_weights_errors():
    net = nn.Sequential(nn.Linear(4, 2))
    with pytest.raises(ConfigError):
        adaround_weights(net, torch.randn(4, 4), GridSpec(bits=4), inputs="both")
    with pytest.raises(DataError):
        adaround_weights(net, torch.randn(0, 4), GridSpec(bits=4))


def test_adaround_is_a_registered_ptq_method(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(48, 8)
    assert "adaround" in PTQ_METHODS and not PTQ_METHODS["adaround"].skip_first_last
    result = quantize(net, x, method="adaround", wbits=3, abits=8, iterations=20, progress=False)
    assert [row["name"] for row in result.extra["adaround"]] == ["0.weight", "2.weight", "4.weight"]
    exported = dict(quantized_parameters(result.model))
    assert {qt.method for qt in exported.values()} == {"adaround"}
    acts = input_quantizers(result.model)
    assert list(acts) == ["0", "2", "4"] and all(q.enabled for q in acts.values())
    assert acts["2"].signed is False  # after a ReLU: the unsigned grid
    assert not hasattr(net[0], "parametrizations")  # the caller's model is untouched
    # the model file computes exactly what the quantized model computes
    learnq.save(result.model, tmp_path / "ada.safetensors")
    fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    learnq.load(tmp_path / "ada.safetensors", fresh)
    with torch.no_grad():
        assert torch.equal(fresh(x), result.model(x))
    with pytest.raises(ConfigError):
        quantize(net, x, method="adaround", bias_correction=True, iterations=1, progress=False)
    with pytest.raises(ConfigError):
        quantize(net, x, method="adaround", iterations=1, beta_end=0.0, progress=False)
    with pytest.raises(ConfigError):
        quantize(net, x, method="adaround", rounds=3, progress=False)
    weights_only = quantize(net, x, method="adaround", wbits=4, abits=32, iterations=5, clip="minmax",
                            progress=False)
    assert not input_quantizers(weights_only.model)
