"""Tests for learnq.ptq.ptq_weight: the PTQ weight parametrization (α per group, cache, bias correction)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

import learnq
from learnq.attach import BitsRule, Selection
from learnq.clipping import clip_mse
from learnq.errors import ConfigError, ModelError, QuantizationError
from learnq.grid import GridSpec, quantize_tensor
from learnq.ptq.ptq_weight import PTQWeight, attach_weight_quantizers, ptq_weight_of
from learnq.quantized import quantized_parameters

CASES = [(scheme, gran, bc, var) for scheme in ("symmetric", "lapq") for gran in ("tensor", "channel")
         for bc, var in ((False, False), (True, False), (True, True))]


@pytest.mark.parametrize("scheme,gran,bc,var", CASES)
def test_forward_is_export_dequantized_bitwise(scheme: str, gran: str, bc: bool, var: bool) -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3) * 0.3
    spec = GridSpec(3, scheme=scheme, granularity=gran)
    alpha = 0.7 * w.abs().amax() if gran == "tensor" else 0.7 * w.abs().amax(dim=(1, 2, 3))
    q = PTQWeight(spec, alpha, bias_correction=bc, variance_correction=var, method="test")
    out = q(w)
    qt = q.export_quantized(w)
    assert torch.equal(out, qt.dequantize())
    assert qt.method == "test" and qt.bits == 3 and qt.scheme == scheme
    plain = quantize_tensor(w, spec, clip=alpha)
    assert torch.equal(qt.codes, plain.codes)  # bias correction changes steps and offsets, never codes
    if not bc:
        assert torch.equal(out, plain.dequantize())
    else:
        assert str(qt.granularity) == "axis:0"
        assert torch.allclose(out.reshape(6, -1).mean(dim=1), w.reshape(6, -1).mean(dim=1), atol=1e-6)
        assert qt.extra["bias_correction"] == ("variance+mean" if var else "mean")
    if var:
        assert torch.allclose(out.reshape(6, -1).std(dim=1), w.reshape(6, -1).std(dim=1), rtol=1e-4)


def test_cache_and_invalidation() -> None:
    torch.manual_seed(1)
    w = nn.Parameter(torch.randn(5, 8))
    q = PTQWeight(GridSpec(4), w.detach().abs().max())
    first = q(w)
    assert q(w) is first and q.computations == 1
    q.set_alpha(0.5)
    second = q(w)
    assert q.computations == 2 and not torch.equal(first, second)
    assert torch.equal(second, quantize_tensor(w.detach(), GridSpec(4), clip=0.5).dequantize())
    with torch.no_grad():
        w.mul_(2)  # an in-place change of the weight is seen (version counter)
    third = q(w)
    assert q.computations == 3
    assert torch.equal(third, quantize_tensor(w.detach(), GridSpec(4), clip=0.5).dequantize())
    with torch.no_grad():
        q.alpha.fill_(0.25)  # so is an in-place change of the α buffer
    q(w)
    assert q.computations == 4
    other = torch.randn(5, 8)  # another tensor: recomputed
    assert torch.equal(q(other), quantize_tensor(other, GridSpec(4), clip=0.25).dequantize())


def _same_qt(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in ((a.codes, b.codes), (a.scale, b.scale), (a.offset, b.offset)))


def test_export_cache_follows_every_change() -> None:
    """save reads cached_export: it must equal a fresh export_quantized after each kind of change, and be reused
    (the same object) while nothing changed, including after an eval forward computed it."""
    torch.manual_seed(2)
    w = nn.Parameter(torch.randn(5, 8))
    q = PTQWeight(GridSpec(4), w.detach().abs().max())
    q(w)  # the forward computes the export once and keeps it
    first = q.cached_export(w)
    assert q.cached_export(w) is first and _same_qt(first, q.export_quantized(w))
    q.set_alpha(0.5)
    second = q.cached_export(w)
    assert second is not first and _same_qt(second, quantize_tensor(w.detach(), GridSpec(4), clip=0.5))
    with torch.no_grad():
        w.mul_(2)
    third = q.cached_export(w)
    assert third is not second and _same_qt(third, quantize_tensor(w.detach(), GridSpec(4), clip=0.5))
    with torch.no_grad():
        q.alpha.fill_(0.25)
    fourth = q.cached_export(w)
    assert _same_qt(fourth, quantize_tensor(w.detach(), GridSpec(4), clip=0.25))
    fourth.codes.add_(1)  # a write into the returned tensors is seen: exported again
    assert _same_qt(q.cached_export(w), quantize_tensor(w.detach(), GridSpec(4), clip=0.25))
    w.data = torch.randn(5, 8)  # new storage
    assert _same_qt(q.cached_export(w), quantize_tensor(w.detach(), GridSpec(4), clip=0.25))
    q.invalidate()
    assert q._export_cache is None


def test_alpha_validation() -> None:
    q = PTQWeight(GridSpec(4, granularity="channel"), torch.ones(3))
    with pytest.raises(ConfigError, match="3 groups"):
        q.set_alpha(torch.ones(4))
    with pytest.raises(QuantizationError):
        q.set_alpha(torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(QuantizationError):
        q.set_alpha(float("nan"))
    q.set_alpha(torch.tensor([1.0, 0.0, 1.0]))
    w = torch.randn(3, 4)
    with pytest.raises(QuantizationError, match="α is 0"):
        q(w)
    w[1] = 0.0  # an all-zero channel with α = 0 is exact
    q.set_alpha(torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(q(w)[1], torch.zeros(4))
    with pytest.raises(ConfigError, match="affine"):
        PTQWeight(GridSpec(4, scheme="affine"), torch.ones(1))
    with pytest.raises(ConfigError, match="per output channel"):
        PTQWeight(GridSpec(4, granularity="group:4"), torch.ones(1), bias_correction=True)


def _mlp() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def test_attach_selects_clips_and_skips_float_bits() -> None:
    model = _mlp()
    w2 = model[2].weight.detach().clone()
    rule = BitsRule(4, {"4.weight": 32})
    qs = attach_weight_quantizers(model, GridSpec(4, granularity="channel"), clip="mse", bits_rule=rule)
    assert list(qs) == ["0.weight", "2.weight"]
    assert not parametrize.is_parametrized(model[4])
    assert torch.equal(qs["2.weight"].alpha, clip_mse(w2, GridSpec(4, granularity="channel")))
    assert ptq_weight_of(model[2]) is qs["2.weight"]
    assert torch.equal(model[2].weight, quantize_tensor(w2, GridSpec(4, granularity="channel"),
                                                        clip=qs["2.weight"].alpha).dequantize())
    assert qs["0.weight"].method == "mse"
    with pytest.raises(ModelError, match="already carries a quantizer"):
        attach_weight_quantizers(model, 4)
    first = attach_weight_quantizers(_mlp(), 3, selection=Selection(skip_first=True, skip_last=True))
    assert list(first) == ["2.weight"]
    custom = attach_weight_quantizers(_mlp(), 3, clip=lambda w, spec: torch.full((1,), 0.1), method="fixed")
    assert all(float(q.alpha) == pytest.approx(0.1) for q in custom.values())
    with pytest.raises(ConfigError, match="only apply to a named"):
        attach_weight_quantizers(_mlp(), 3, clip=lambda w, spec: torch.ones(1), p=2.0)


def test_save_load_round_trip_and_deepcopy(tmp_path) -> None:
    model = _mlp()
    attach_weight_quantizers(model, GridSpec(3), clip="mse", bias_correction=True)
    x = torch.randn(10, 6)
    expected = model(x)
    twin = copy.deepcopy(model)
    assert torch.equal(twin(x), expected)
    exported = dict(quantized_parameters(model))
    assert set(exported) == {"0.weight", "2.weight", "4.weight"}
    path = tmp_path / "m.safetensors"
    learnq.save(model, path)
    fresh = _mlp()
    learnq.load(path, fresh)
    assert torch.equal(fresh(x), expected)
