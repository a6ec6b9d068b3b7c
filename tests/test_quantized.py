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
