"""Grids: hand-computed codes, error bounds (property tests), constant tensors, dtypes and bad input."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from learnq.errors import ConfigError, QuantizationError
from learnq.granularity import Granularity
from learnq.grid import GridSpec, compute_params, dequantize, quantize, quantize_tensor

GRANS = ["tensor", "axis:0", "axis:1", "axis:-1", "group:1", "group:3", "group:7"]


def test_symmetric_hand_computed():
    w = torch.tensor([-1.0, -0.4, 0.0, 0.26, 1.0])
    spec = GridSpec(bits=3)  # qmax = 3, Δ = 1/3
    qt = quantize_tensor(w, spec)
    assert qt.scale.item() == pytest.approx(1 / 3)
    assert qt.codes.tolist() == [-3, -1, 0, 1, 3]
    assert qt.dequantize().tolist() == pytest.approx([-1.0, -1 / 3, 0.0, 1 / 3, 1.0])
    assert spec.qrange() == (-4, 3)
    assert GridSpec(bits=3, restricted=True).qrange() == (-3, 3)


def test_affine_hand_computed():
    w = torch.tensor([[0.0, 0.5], [1.0, 3.0]])
    qt = quantize_tensor(w, GridSpec(bits=2, scheme="affine"))  # Δ = 3/3 = 1, offset 0
    assert qt.codes.tolist() == [[0, 0], [1, 3]]  # 0.5 rounds half to even
    per_row = quantize_tensor(w, GridSpec(bits=2, scheme="affine", granularity=Granularity.parse("row")))
    assert per_row.scale.tolist() == pytest.approx([0.5 / 3, 2 / 3])
    assert per_row.offset.tolist() == pytest.approx([0.0, 1.0])
    assert per_row.codes.tolist() == [[0, 3], [0, 3]]


def test_lapq_and_sign_grid():
    w = torch.tensor([-2.0, -0.1, 0.1, 2.0])
    qt = quantize_tensor(w, GridSpec(bits=2, scheme="lapq"), clip=1.5)  # Δ = 3/3 = 1, levels -1.5 -0.5 0.5 1.5
    assert qt.codes.tolist() == [0, 1, 2, 3]
    assert qt.dequantize().tolist() == pytest.approx([-1.5, -0.5, 0.5, 1.5])
    sign = quantize_tensor(w, GridSpec(bits=1))
    assert sign.dequantize().tolist() == pytest.approx([-2.0, -2.0, 2.0, 2.0])


def test_unsigned_and_floor():
    w = torch.tensor([0.0, 0.9, 1.5, 3.0])
    qt = quantize_tensor(w, GridSpec(bits=2, scheme="unsigned"))  # Δ = 1
    assert qt.codes.tolist() == [0, 1, 2, 3]  # 1.5 -> 2 (ties to even)
    fl = quantize_tensor(w, GridSpec(bits=2, scheme="unsigned", rounding="floor"))
    assert fl.codes.tolist() == [0, 0, 1, 3]


def test_clip_saturates():
    w = torch.tensor([-5.0, 0.55, 5.0])
    qt = quantize_tensor(w, GridSpec(bits=4), clip=1.0)
    assert qt.dequantize().tolist() == pytest.approx([-8 / 7, 4 / 7, 1.0])  # -8 is the lowest code


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 6), min_size=1, max_size=4),
    bits=st.integers(1, 16),
    scheme=st.sampled_from(["symmetric", "affine", "unsigned", "lapq"]),
    gran=st.sampled_from(GRANS),
    rounding=st.sampled_from(["nearest", "floor"]),
    seed=st.integers(0, 10_000),
)
def test_error_bound(shape, bits, scheme, gran, rounding, seed):
    g = Granularity.parse(gran)
    if g.kind == "axis" and len(shape) < 2:
        shape = shape + [3]
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3
    if scheme == "unsigned":
        w = w.abs()
    spec = GridSpec(bits=bits, scheme=scheme, granularity=g, rounding=rounding)
    qt = quantize_tensor(w, spec)
    step = g.expand(qt.scale, w.shape)
    err = (qt.dequantize() - w).abs()
    bound = step / 2 if rounding == "nearest" else step
    # the symmetric grid's range is max|w| while floor of -max|w|/Δ may need one extra level: stays in range
    assert bool((err <= bound * (1 + 1e-5) + 1e-6).all())
    lo, hi = spec.qrange()
    assert int(qt.codes.min()) >= lo and int(qt.codes.max()) <= hi
    assert int(qt.stored_codes().min()) >= 0 and int(qt.stored_codes().max()) <= 2**bits - 1


@pytest.mark.parametrize("scheme", ["symmetric", "affine", "unsigned", "lapq"])
@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("bits", [1, 2, 8])
def test_constant_tensor_exact(scheme, gran, bits):
    for value in (0.0, 0.37, -2.5):
        w = torch.full((4, 3), value)
        qt = quantize_tensor(w, GridSpec(bits=bits, scheme=scheme, granularity=Granularity.parse(gran)))
        assert torch.equal(qt.dequantize(), w)
        assert bool(torch.isfinite(qt.scale).all())


def test_constant_group_inside_varied_tensor():
    w = torch.tensor([[1.0, 1.0, 1.0], [-1.0, 0.0, 2.0]])
    qt = quantize_tensor(w, GridSpec(bits=4, granularity=Granularity.parse("row")))
    assert torch.equal(qt.dequantize()[0], w[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_dtypes(dtype):
    w = torch.randn(8, 5, generator=torch.Generator().manual_seed(3)).to(dtype)
    qt = quantize_tensor(w, GridSpec(bits=6, granularity=Granularity.parse("channel")))
    out = qt.dequantize()
    assert out.dtype == dtype
    step = Granularity.parse("channel").expand(qt.scale, w.shape)
    # Δ/2 from the grid, plus the rounding of the result to the low-precision dtype (relative 2^-8 for bfloat16)
    rounding = w.float().abs() * torch.finfo(dtype).eps
    assert bool(((out.float() - w.float()).abs() <= step / 2 + rounding + 1e-7).all())


def test_partial_last_group():
    w = torch.arange(10, dtype=torch.float32)
    g = Granularity.parse("group:4")
    assert g.num_groups(w.shape) == 3
    qt = quantize_tensor(w, GridSpec(bits=2, scheme="affine", granularity=g))
    assert qt.offset.tolist() == [0.0, 4.0, 8.0]
    assert qt.scale.tolist() == pytest.approx([1.0, 1.0, 1 / 3])
    assert torch.equal(qt.dequantize(), w)
    assert g.group_mask(w.shape).sum().item() == 10


def test_params_reused_across_calls():
    w = torch.randn(3, 4)
    spec = GridSpec(bits=5, granularity=Granularity.parse("column"))
    params = compute_params(w, spec)
    assert params.scale.shape == (4,)
    codes = quantize(w, spec, params)
    assert torch.equal(dequantize(codes, spec.granularity, params), quantize_tensor(w, spec).dequantize())


@pytest.mark.parametrize("bits", [0, 17, -1, 2.5, True, "8"])
def test_bad_bits(bits):
    with pytest.raises(QuantizationError, match="bits"):
        GridSpec(bits=bits)


@pytest.mark.parametrize(
    "w, match",
    [
        (torch.tensor([1.0, float("nan")]), "NaN"),
        (torch.tensor([1.0, float("inf")]), "Inf"),
        (torch.zeros(0), "empty"),
        (torch.tensor([1, 2]), "floating-point"),
    ],
)
def test_bad_tensors(w, match):
    with pytest.raises(QuantizationError, match=match):
        quantize_tensor(w, GridSpec(), name="fc.weight")
    with pytest.raises(QuantizationError, match="fc.weight"):
        quantize_tensor(w, GridSpec(), name="fc.weight")


@pytest.mark.parametrize("spec", ["diagonal", "group:0", "group:-2", "group:x", "axis:", 3])
def test_bad_granularity(spec):
    with pytest.raises(ConfigError, match="granularity"):
        Granularity.parse(spec)


def test_bad_scheme_rounding_axis():
    with pytest.raises(ConfigError, match="scheme"):
        GridSpec(scheme="log")
    with pytest.raises(ConfigError, match="rounding"):
        GridSpec(rounding="stochastic")
    with pytest.raises(ConfigError, match="axis 2"):
        quantize_tensor(torch.randn(3, 3), GridSpec(granularity=Granularity("axis", axis=2)))
    with pytest.raises(ConfigError, match="groups"):
        quantize_tensor(torch.randn(3, 3), GridSpec(granularity=Granularity.parse("row")), clip=torch.ones(2))


def test_spec_json_round_trip():
    spec = GridSpec(bits=3, scheme="affine", granularity=Granularity.parse("group:16"), rounding="floor")
    assert GridSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="unknown grid key"):
        GridSpec.from_dict({"bits": 3, "colour": "red"})
