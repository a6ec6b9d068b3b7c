"""Palettized model files (issue 14, learnq/palette.py, learnq/file_layout.py): a LUT of k d-vectors per tensor or
per group plus one packed index per vector; the file round trip is bit-exact, the sizes are the formula, bad
palettes and damaged indices are refused, ONNX writes the float weights and says why."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch
from torch import nn

import learnq
from learnq.errors import CheckpointError, QuantizationError
from learnq.export.qdq import plan_weight
from learnq.granularity import Granularity
from learnq.grid import QuantizedTensor
from learnq.palette import nearest, palette_dequantize, vector_groups

ONNX = importlib.util.find_spec("onnx") is not None and importlib.util.find_spec("onnxruntime") is not None
CASES = [("tensor", 1, torch.float32, 2), ("channel", 2, torch.float16, 3), ("group:16", 4, torch.float32, 4),
         ("tensor", 8, torch.float16, 8)]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


def _palettized(gran: str, d: int, dtype: torch.dtype, bits: int, shape=(8, 16), seed: int = 0) -> QuantizedTensor:
    g = Granularity.parse(gran)
    gen = torch.Generator().manual_seed(seed)
    k = 2**bits - 1  # a palette need not fill its index width
    pal = torch.randn(g.num_groups(shape), k, d, generator=gen).to(dtype)
    idx = torch.randint(0, k, (math.prod(shape) // d,), generator=gen)
    return QuantizedTensor.from_palette(idx, pal, shape, g, bits, method="kmeans")


def test_dequantize_is_the_lookup_by_hand():
    pal = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[-1.0, -2.0], [5.0, 6.0]]])  # 2 groups (rows), k=2, d=2
    qt = QuantizedTensor.from_palette(torch.tensor([1, 0, 0, 1]), pal, (2, 4), Granularity.parse("channel"), 1)
    assert torch.equal(qt.dequantize(), torch.tensor([[2.0, 3.0, 0.0, 1.0], [-1.0, -2.0, 5.0, 6.0]]))
    assert qt.codes.tolist() == [[1, 1, 0, 0], [0, 0, 1, 1]]  # every value carries its vector's index
    assert qt.code_bits() == 4 and qt.vector_dim == 2


@pytest.mark.parametrize(("gran", "d", "dtype", "bits"), CASES)
def test_file_round_trip_is_bit_exact_and_sizes_are_the_formula(gran, d, dtype, bits, tmp_path):
    model = _net()
    qt = _palettized(gran, d, dtype, bits)
    report = learnq.save(model, tmp_path / "m.safetensors", quantized={"0.weight": qt})
    back = learnq.load(tmp_path / "m.safetensors").entries["0.weight"]
    assert torch.equal(back.codes, qt.codes) and torch.equal(back.palette, qt.palette)
    assert back.palette.dtype == dtype and back.method == "kmeans" and back.granularity == qt.granularity
    assert torch.equal(back.dequantize(), qt.dequantize())
    loaded = learnq.load(tmp_path / "m.safetensors", _net())
    assert torch.equal(loaded[0].weight, qt.dequantize())
    row = next(t for t in report.tensors if t.name == "0.weight")
    n_vec, lut = 128 // d, qt.palette.numel() * 8 * qt.palette.element_size()
    assert row.naive_bits == n_vec * bits + lut  # bits per index, the LUT at its own width, nothing else
    assert row.stored_bytes == math.ceil(n_vec * bits / 8) + lut // 8
    assert row.palette == "x".join(map(str, qt.palette.shape)) + f" {str(dtype)[6:]}"


def test_inspect_shows_the_palette(tmp_path, capsys):
    from learnq.cli import main

    learnq.save(_net(), tmp_path / "m.safetensors", quantized={"0.weight": _palettized("channel", 2, torch.float16, 3)})
    assert main(["inspect", str(tmp_path / "m.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "palette (groups x k x d)" in out and "8x7x2 float16" in out
    assert main(["inspect", str(tmp_path / "m.safetensors"), "--json"]) == 0
    rows = {t["name"]: t for t in json.loads(capsys.readouterr().out)["tensors"]}
    assert rows["0.weight"]["palette"] == "8x7x2 float16" and rows["0.bias"]["palette"] is None


def test_a_file_without_palettes_keeps_its_grid_records(tmp_path):
    """Old files decode unchanged: a uniform grid's record has no palette key (GRID_DEFAULTS leaves it out)."""
    from learnq.model_file import read

    model = _net()
    learnq.prepare(model, learnq.LSQ(bits=4))
    model.eval()
    learnq.save(model, tmp_path / "m.safetensors")
    mf = read(tmp_path / "m.safetensors")
    assert all(qt.palette is None for qt in mf.entries.values() if isinstance(qt, QuantizedTensor))


def test_bad_palettes_are_refused():
    g = Granularity.parse("tensor")
    with pytest.raises(QuantizationError, match="do not split into vectors of 3"):
        QuantizedTensor.from_palette(torch.zeros(1, dtype=torch.long), torch.zeros(1, 2, 3), (8, 16), g, 1)
    with pytest.raises(QuantizationError, match="needs more than 1-bit"):
        QuantizedTensor.from_palette(torch.zeros(128, dtype=torch.long), torch.zeros(1, 3, 1), (8, 16), g, 1)
    with pytest.raises(QuantizationError, match="float32 or float16"):
        QuantizedTensor.from_palette(torch.zeros(128, dtype=torch.long), torch.zeros(1, 2, 1).double(), (8, 16), g, 1)
    with pytest.raises(QuantizationError, match="row of 5 values"):
        QuantizedTensor.from_palette(torch.zeros(5, dtype=torch.long), torch.zeros(2, 2, 2), (2, 5),
                                     Granularity.parse("channel"), 1)
    qt = _palettized("tensor", 2, torch.float32, 2)
    qt.codes[0, 0] = (qt.codes[0, 1] + 1) % 3  # one vector with two indices: not a palettized tensor
    with pytest.raises(QuantizationError, match="equal within each 2-vector"):
        learnq.save(_net(), "/nonexistent/never-written.safetensors", quantized={"0.weight": qt})


def test_an_index_past_the_palette_is_refused_on_load(tmp_path):
    """k = 3 entries at 2 bits: index 3 fits the bits but not the palette (a file edited by hand or damaged)."""
    from learnq.file_layout import decode, parse_grid

    qt = _palettized("tensor", 1, torch.float32, 2)
    grid = parse_grid({"bits": 2, "scheme": "palette", "palette": [3, 1, "float32"]})
    packed = torch.full((32,), 0xFF, dtype=torch.uint8)  # every index = 3
    with pytest.raises(CheckpointError, match="past its 3 entries"):
        decode("w", grid, (8, 16), None, packed, qt.palette.reshape(-1))
    with pytest.raises(ValueError, match="bad palette"):
        parse_grid({"bits": 2, "palette": [5, 1, "float32"]})  # 5 entries cannot be indexed in 2 bits


def test_nearest_is_chunk_independent_and_ties_go_low():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1000, 2, generator=gen)
    pal = torch.randn(3, 4, 2, generator=gen)
    groups = torch.randint(0, 3, (1000,), generator=gen)
    one = nearest(x, pal, groups, chunk_elements=1 << 22)
    assert torch.equal(one, nearest(x, pal, groups, chunk_elements=8))  # 1 row per chunk
    by_hand = ((x[:, None, :] - pal[groups]) ** 2).sum(-1).argmin(1)
    assert torch.equal(one, by_hand)
    tie = nearest(torch.tensor([[0.5]]), torch.tensor([[[0.0], [1.0]]]), torch.zeros(1, dtype=torch.long))
    assert tie.tolist() == [0]


def test_vector_groups_follow_the_granularity():
    assert vector_groups((4, 6), Granularity.parse("channel"), 3).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert vector_groups((4, 6), Granularity.parse("group:12"), 2).tolist() == [0] * 6 + [1] * 6
    codes = torch.zeros(4, 6, dtype=torch.int32)
    pal = torch.arange(4.0).reshape(4, 1, 1)
    assert torch.equal(palette_dequantize(codes, pal, Granularity.parse("channel")), torch.arange(4.0)[:, None]
                       .expand(4, 6))


def test_onnx_writes_the_float_weights_and_says_why(tmp_path):
    qt = _palettized("tensor", 2, torch.float32, 2)
    reason = plan_weight(qt, 13)
    assert isinstance(reason, str) and "lookup table" in reason and "float weights" in reason
    if not ONNX:
        return
    from learnq.export import run_onnx, to_onnx

    model = _net()
    learnq.save(model, tmp_path / "m.safetensors", quantized={"0.weight": qt})
    loaded = learnq.load(tmp_path / "m.safetensors", _net()).eval()
    x = torch.randn(5, 16)
    report = to_onnx(loaded, x, tmp_path / "m.onnx", verify=False)
    row = next(r for r in report.tensors if r.name == "0.weight")
    assert row.export == "float" and "lookup table" in row.reason
    with torch.no_grad():
        # same float weights, summed by onnxruntime's kernels: float32 rounding of a 16-term dot product
        torch.testing.assert_close(run_onnx(tmp_path / "m.onnx", x, optimize=False), loaded(x), rtol=1e-5, atol=1e-5)
