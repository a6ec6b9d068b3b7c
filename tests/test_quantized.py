"""Frozen quantized parameters keep everything the model file needs (value range of DiffQ tensors included)."""

from __future__ import annotations

import os

import torch
from torch import nn

import learnq
from learnq.quantized import attach_quantized, plain_state, quantized_parameters


def _diffq_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    handle = learnq.prepare(model, learnq.DiffQ(group_size=8))
    model.train()
    model(torch.randn(4, 32)).sum().backward()
    model.eval()
    return model, handle


def test_frozen_diffq_saves_as_compactly_as_the_prepared_model(tmp_path):
    model, handle = _diffq_model()
    direct = tmp_path / "direct.safetensors"
    learnq.save(model, direct)
    x = torch.randn(3, 32)
    expected = model(x)
    handle.freeze()
    frozen = dict(quantized_parameters(model))
    assert all(qt.value_range is not None for qt in frozen.values())
    refrozen = tmp_path / "frozen.safetensors"
    learnq.save(model, refrozen)
    assert os.path.getsize(refrozen) == os.path.getsize(direct)
    fresh = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10))
    learnq.load(refrozen, fresh)
    assert torch.equal(fresh(x), expected)
    again = tmp_path / "again.safetensors"
    learnq.save(fresh, again)
    assert os.path.getsize(again) == os.path.getsize(direct)


def test_plain_state_names_and_attach_shape_check():
    model = nn.Sequential(nn.Linear(3, 2))
    qt = learnq.grid.quantize_tensor(model[0].weight.detach(), learnq.grid.GridSpec(bits=4))
    attach_quantized(model, "0.weight", qt)
    state = plain_state(model)
    assert set(state) == {"0.weight", "0.bias"}
    assert torch.equal(state["0.weight"], qt.dequantize())
    bad = learnq.grid.quantize_tensor(torch.randn(3, 3), learnq.grid.GridSpec(bits=4))
    try:
        attach_quantized(model, "0.weight", bad)
    except learnq.errors.ConfigError as exc:
        assert "shape" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a shape mismatch must be refused")


def test_frozen_weight_is_dequantized_once_and_recomputed_when_its_buffers_change():
    model = nn.Sequential(nn.Linear(3, 4))
    qt = learnq.grid.quantize_tensor(model[0].weight.detach(), learnq.grid.GridSpec(bits=4))
    attach_quantized(model, "0.weight", qt)
    qw = model[0].parametrizations.weight[0]
    first = model[0].weight
    assert model[0].weight is first  # cached: the same tensor, no dequantize per access
    assert torch.equal(first, qt.dequantize())
    with torch.no_grad():
        qw.scale.mul_(2)  # in place: version change
    assert torch.equal(model[0].weight, 2 * qt.dequantize())
    qw.load_state_dict({k: v for k, v in qw.state_dict().items()} | {"codes": torch.zeros_like(qw.codes)})
    zero_codes = model[0].weight  # codes 0 -> every value is the (per-row) offset
    assert torch.equal(zero_codes, qw.offset.reshape(-1, 1).expand(4, 3) if qw.offset.numel() == 4 else
                       qw.offset.expand(4, 3))
    qw.double()  # buffers replaced (float scale -> float64); output still the QuantizedTensor's dequantize()
    assert torch.equal(model[0].weight, qw.quantized().dequantize())
    w = model[0].weight
    with torch.no_grad():
        w.add_(1.0)  # the cached tensor itself written in place: recomputed
    assert torch.equal(model[0].weight, qw.quantized().dequantize())
