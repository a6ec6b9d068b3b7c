"""AdaQuant (Hubara et al. 2021): the layer-wise optimisation lowers its loss and the layer output error below
round-to-nearest's on the same initial grid; the model pass and its errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from learnq.errors import ConfigError
from learnq.grid import GridSpec, compute_params
from learnq.ptq import quantize
from learnq.ptq.adaquant import optimize_layer
from learnq.ptq.adaround import layer_function
from learnq.quantized import quantized_parameters


def _problem(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    layer = nn.Linear(16, 6)
    x = torch.randn(128, 16) @ torch.randn(16, 16) * 0.5  # correlated inputs
    with torch.no_grad():
        target = layer_function(layer)(x, layer.weight)
    return layer, x, target


def test_loss_decreases_and_error_beats_nearest():
    layer, x, target = _problem()
    spec = GridSpec(bits=3)
    # full batch: the loss is deterministic, so first vs last compares the same objective
    qt, info = optimize_layer(layer.weight.detach(), spec, layer_function(layer), x, target, clip="minmax",
                              iterations=300, lr=5e-3, lr_step=1e-2, batch_size=128)
    assert info.last_loss < 0.85 * info.first_loss
    assert info.kept == "adaquant"
    assert info.adaquant_error < 0.75 * info.nearest_error
    # the nearest error is the initial grid's round-to-nearest, computed here independently
    w = layer.weight.detach()
    p = compute_params(w, spec)
    nearest = torch.clamp(torch.round(w / p.scale), -4, 3) * p.scale
    with torch.no_grad():
        ref = ((x @ nearest.T - target) ** 2).sum(1).mean()
        got = ((x @ qt.dequantize().T - target) ** 2).sum(1).mean()
    assert info.nearest_error == pytest.approx(float(ref), rel=1e-5)
    assert info.adaquant_error == pytest.approx(float(got), rel=1e-5)
    assert qt.method == "adaquant" and not torch.equal(qt.scale, p.scale)  # the steps were learned too
    assert int(qt.codes.min()) >= -4 and int(qt.codes.max()) <= 3


def test_zero_iterations_keep_nearest_and_affine_is_refused():
    layer, x, target = _problem(1)
    qt, info = optimize_layer(layer.weight.detach(), GridSpec(bits=4), layer_function(layer), x, target,
                              clip="minmax", iterations=0)
    assert info.adaquant_error == info.nearest_error
    w = layer.weight.detach()
    p = compute_params(w, GridSpec(bits=4))
    assert torch.equal(qt.codes, torch.clamp(torch.round(w / p.scale), -8, 7).to(torch.int32))
    with pytest.raises(ConfigError, match="affine"):
        optimize_layer(w, GridSpec(bits=4, scheme="affine"), layer_function(layer), x, target)


def test_quantize_adaquant_layer_by_layer_with_bias_correction():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    x = torch.randn(64, 2, 5, 5)
    result = quantize(model, x, method="adaquant", wbits=3, abits=8, iterations=60, progress=False)
    infos = result.extra["adaquant"]
    assert [i["name"] for i in infos] == ["0.weight", "3.weight"]
    assert all(i["adaquant_error"] <= i["nearest_error"] for i in infos)
    assert result.model[3].input_quantizer.enabled
    bc = quantize(model, x, method="adaquant", wbits=3, abits=32, iterations=10, bias_correction=True,
                  progress=False)
    q = dict(quantized_parameters(bc.model))["3.weight"]
    assert q.extra["bias_correction"] == "mean"
    # float32 means of 100 values
    torch.testing.assert_close(q.dequantize().mean(1), model[3].weight.detach().mean(1), rtol=0, atol=1e-6)
