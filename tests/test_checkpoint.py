"""Model files: bit-exact round trips (every scheme x granularity x width, per-group widths, dtypes) and every bad
file refused with a CheckpointError that names the tensor or the file (never unpickling)."""

from __future__ import annotations

import base64
import json
import math
import os
import pickle
import tempfile
import zlib

import pytest
import safetensors.torch
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn

from learnq.checkpoint import FORMAT_VERSION, ModelFile, load, read, save
from learnq.errors import CheckpointError, ConfigError, QuantizationError
from learnq.granularity import Granularity
from learnq.grid import GridSpec, QuantizedTensor, quantize_tensor, range_group_params
from learnq.packing import unpack
from learnq.quantized import QuantizedWeight, attach_quantized, plain_state, quantized_parameters

SCHEMES = ["symmetric", "affine", "unsigned", "lapq"]
GRANS = ["tensor", "axis:0", "axis:1", "group:7"]  # group:7 on 6x10 = 60 values: last group has 4


def mlp(seed: int = 0, dtype: torch.dtype = torch.float32, hidden: int = 6) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, hidden), nn.ReLU(), nn.Linear(hidden, 3), nn.BatchNorm1d(3))
    with torch.no_grad():  # BN buffers that differ from their defaults
        model[3].running_mean.uniform_(-1, 1)
        model[3].running_var.uniform_(0.5, 2)
        model[3].num_batches_tracked.fill_(7)
    return model.to(dtype).eval()


def quantize_model(model: nn.Module, spec: GridSpec, names=("0.weight", "2.weight")) -> None:
    for name in names:
        attach_quantized(model, name, quantize_tensor(model.get_parameter(name).detach(), spec, name=name))


def header(path) -> tuple[dict, int]:
    data = open(path, "rb").read()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), 8 + n


def learnq_json(path) -> tuple[dict, dict]:
    """(the plain learnq header entry, the compressed JSON inside it)."""
    outer = json.loads(header(path)[0]["__metadata__"]["learnq"])
    return outer, json.loads(zlib.decompress(base64.b64decode(outer["zlib"])))


def assert_same_model(a: nn.Module, b: nn.Module, dtype: torch.dtype = torch.float32) -> None:
    qa, qb = dict(quantized_parameters(a)), dict(quantized_parameters(b))
    assert qa.keys() == qb.keys()
    for name in qa:
        assert torch.equal(qa[name].codes, qb[name].codes)
        assert torch.equal(qa[name].dequantize(), qb[name].dequantize())
        assert qb[name].dtype == qa[name].dtype
    sa, sb = plain_state(a), plain_state(b)
    assert sa.keys() == sb.keys()
    for key, va in sa.items():
        assert va.dtype == sb[key].dtype and torch.equal(va, sb[key]), key
    x = torch.randn(4, 10).to(dtype)
    assert torch.equal(a(x), b(x))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("gran", GRANS)
@pytest.mark.parametrize("bits", [1, 3, 8])
def test_round_trip_every_grid(tmp_path, scheme, gran, bits):
    model = mlp()
    quantize_model(model, GridSpec(bits=bits, scheme=scheme, granularity=Granularity.parse(gran)))
    path = tmp_path / "m.lq"
    save(model, path)
    fresh = mlp(seed=1)
    assert load(path, fresh) is fresh
    assert isinstance(fresh[0].parametrizations.weight[0], QuantizedWeight)
    assert_same_model(model, fresh)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 9), min_size=1, max_size=3), scheme=st.sampled_from(SCHEMES),
       bits=st.integers(1, 16), gran=st.sampled_from(["tensor", "axis", "group"]), g=st.integers(1, 13),
       seed=st.integers(0, 2**16))
def test_round_trip_property(shape, scheme, bits, gran, g, seed):
    torch.manual_seed(seed)
    w = torch.randn(shape)
    spec_gran = Granularity.parse(
        {"tensor": "tensor", "axis": f"axis:{seed % len(shape)}", "group": f"group:{g}"}[gran])
    qt = quantize_tensor(w, GridSpec(bits=bits, scheme=scheme, granularity=spec_gran))
    holder = nn.Module()
    holder.w = nn.Parameter(w.clone())
    attach_quantized(holder, "w", qt)
    with tempfile.TemporaryDirectory() as tmp:
        save(holder, os.path.join(tmp, "m.lq"))
        got = read(os.path.join(tmp, "m.lq")).entries["w"]
    assert torch.equal(got.codes, qt.codes) and torch.equal(got.dequantize(), qt.dequantize())
    assert (got.bits, got.qmin, got.scheme, str(got.granularity)) == (bits, qt.qmin, scheme, str(spec_gran))


@pytest.mark.parametrize("gran", ["group:4", "axis:1", "axis:0", "tensor"])
def test_round_trip_group_bits(tmp_path, gran):
    torch.manual_seed(3)
    granularity = Granularity.parse(gran)
    shape = (6, 10)
    n = granularity.num_groups(shape)
    widths = torch.randint(1, 16, (n,), dtype=torch.uint8)
    widths[0] = 15  # DiffQ's package never packed 15-bit groups
    per_elem = granularity.expand(widths.to(torch.int64), shape)
    stored = (torch.rand(shape) * (2.0**per_elem)).floor().to(torch.int32)  # each code < 2^width of its group
    qmin = -3
    qt = QuantizedTensor(codes=stored + qmin, scale=torch.rand(n) + 0.1, offset=torch.randn(n),
                         granularity=granularity, bits=15, qmin=qmin, scheme="affine", method="diffq",
                         group_bits=widths, extra={"b_min": 2})
    model = mlp()
    attach_quantized(model, "0.weight", qt)
    report = save(model, tmp_path / "m.lq", report=True)
    mf = read(tmp_path / "m.lq")
    # the widths minus the smallest at ceil(log2(largest - smallest + 1)) bits, then one code stream per width, each
    # rounded up to whole bytes: that is the whole uint8 slice; the float32 slice holds the n steps and n offsets
    low, high = int(widths.min()), int(widths.max())
    wbits = max(1, math.ceil(math.log2(high - low + 1)))
    counts = {w: int(granularity.group_mask(shape).sum(1)[widths == w].sum()) for w in widths.unique().tolist()}
    code_bytes = sum(math.ceil(c * w / 8) for w, c in counts.items())
    packed, params = mf.slices["0.weight"]
    assert (packed.blob, packed.nbytes) == ("uint8", math.ceil(n * wbits / 8) + code_bytes)
    assert (params.blob, params.nbytes) == ("float32", 4 * 2 * n)
    data = (tmp_path / "m.lq").read_bytes()
    assert torch.equal(unpack(torch.tensor(list(data[packed.start:packed.stop]), dtype=torch.uint8), wbits, n) + low,
                       widths.to(torch.int32))
    got = mf.entries["0.weight"]
    assert torch.equal(got.codes, qt.codes) and torch.equal(got.group_bits, widths)
    assert got.method == "diffq" and got.extra == {"b_min": 2} and got.value_range is None
    fresh = mlp(seed=1)
    load(tmp_path / "m.lq", fresh)
    assert_same_model(model, fresh)
    sizes = {t.name: t for t in report.tensors}
    assert sizes["0.weight"].naive_bits == int((per_elem).sum()) + n * (32 + 32) + n * wbits
    assert sizes["0.weight"].stored_bytes == packed.nbytes + params.nbytes


def test_codes_that_do_not_fit_their_width_are_refused(tmp_path):
    qt = QuantizedTensor(codes=torch.tensor([0, 7, 1, 1]), scale=torch.ones(2), offset=torch.zeros(2),
                         granularity=Granularity.parse("group:2"), bits=3, group_bits=torch.tensor([2, 3]))
    holder = nn.Module()
    holder.w = nn.Parameter(torch.zeros(4))
    with pytest.raises(QuantizationError, match="^w: some codes - qmin do not fit the width of their group"):
        save(holder, tmp_path / "m.lq", quantized={"w": qt})
    plain = QuantizedTensor(codes=torch.tensor([0, 8, 1, 2]), scale=torch.ones(1), offset=torch.zeros(1),
                            granularity=Granularity(), bits=3)
    with pytest.raises(QuantizationError, match=r"^w: codes - qmin must lie in \[0, 7\]"):
        save(holder, tmp_path / "m.lq", quantized={"w": plain})
    double = QuantizedTensor(codes=torch.tensor([0, 1, 1, 2]), scale=torch.ones(1, dtype=torch.float64),
                             offset=torch.zeros(1), granularity=Granularity(), bits=3)
    with pytest.raises(QuantizationError, match="^w: scale and offset must be float32"):
        save(holder, tmp_path / "m.lq", quantized={"w": double})
    assert not (tmp_path / "m.lq").exists()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models(tmp_path, dtype):
    model = mlp(dtype=dtype)
    quantize_model(model, GridSpec(bits=4, granularity=Granularity.parse("axis:0")), names=("0.weight",))
    save(model, tmp_path / "m.lq")
    mf = read(tmp_path / "m.lq")
    assert mf.entries["0.weight"].dtype == dtype and mf.entries["0.bias"].dtype == dtype
    assert mf.entries["3.num_batches_tracked"].dtype == torch.int64
    fresh = mlp(seed=1, dtype=dtype)
    load(tmp_path / "m.lq", fresh)
    assert_same_model(model, fresh, dtype)


def test_float_model_and_file_contents(tmp_path):
    model = mlp()
    save(model, tmp_path / "m.lq", metadata={"task": "demo", "acc": 0.5, "recipe": {"bits": [2, 4]}})
    mf = load(tmp_path / "m.lq")
    assert isinstance(mf, ModelFile) and mf.version == FORMAT_VERSION
    assert mf.metadata == {"task": "demo", "acc": 0.5, "recipe": {"bits": [2, 4]}}
    assert list(mf.entries) == list(model.state_dict())  # model order
    assert mf.file_bytes == os.path.getsize(tmp_path / "m.lq")
    fresh = mlp(seed=1)
    load(tmp_path / "m.lq", fresh)
    assert_same_model(model, fresh)


def test_quantized_argument_order_and_offset_dropped(tmp_path):
    model = mlp()
    quantize_model(model, GridSpec(bits=4, scheme="affine"), names=("2.weight",))
    sym = quantize_tensor(model[0].weight.detach(), GridSpec(bits=5))  # offset all zero
    save(model, tmp_path / "m.lq", quantized={"0.weight": sym})
    hdr, _ = header(tmp_path / "m.lq")
    assert set(hdr) == {"__metadata__", "uint8", "float32", "int64"}  # one blob per dtype, not per tensor
    outer, info = learnq_json(tmp_path / "m.lq")
    assert list(outer) == ["format", "version", "crc32", "zlib"] and outer["format"] == "learnq"
    records = {r[0]: r for r in info["tensors"]}
    # model order; a parametrized weight comes after its module's plain tensors, as in state_dict
    assert [r[0] for r in info["tensors"]][:4] == ["0.weight", "0.bias", "2.bias", "2.weight"]
    # grids without their defaults: symmetric min-max per tensor with offsets dropped, affine with offsets
    assert info["grids"][records["0.weight"][3]] == {"bits": 5, "qmin": -16}
    assert info["grids"][records["2.weight"][3]] == {"bits": 4, "scheme": "affine", "offset": True}
    assert records["0.bias"] == ["0.bias", [6], zlib.crc32(model[0].bias.detach().numpy().tobytes()), "float32"]
    slices = read(tmp_path / "m.lq").slices
    assert [s.nbytes for s in slices["0.weight"]] == [math.ceil(60 * 5 / 8), 4]  # the step only
    assert [s.nbytes for s in slices["2.weight"]] == [math.ceil(18 * 4 / 8), 8]  # step and offset
    got = read(tmp_path / "m.lq").entries["0.weight"]
    assert torch.equal(got.dequantize(), sym.dequantize()) and torch.equal(got.offset, torch.zeros(1))
    with pytest.raises(ConfigError, match="nope"):
        save(model, tmp_path / "x.lq", quantized={"nope.weight": sym})
    with pytest.raises(ConfigError, match="metadata"):
        save(model, tmp_path / "x.lq", metadata={"f": object()})


def test_unwritable_path(tmp_path):
    with pytest.raises(CheckpointError, match="cannot write the model file .*no_dir"):
        save(mlp(), tmp_path / "no_dir" / "m.lq")


def test_tied_weights(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight  # both names in the state dict share one storage
    save(model, tmp_path / "m.lq")
    fresh = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    load(tmp_path / "m.lq", fresh)
    assert torch.equal(fresh[0].weight, model[0].weight) and torch.equal(fresh[1].weight, model[0].weight)


def test_float_tensor_replaces_a_parametrization(tmp_path):
    model = mlp()
    save(model, tmp_path / "m.lq")
    fresh = mlp(seed=1)
    quantize_model(fresh, GridSpec(bits=2))  # the file says float: the quantizer goes, the values come
    load(tmp_path / "m.lq", fresh)
    assert not list(quantized_parameters(fresh))
    assert_same_model(model, fresh)


# -- bad files ---------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model = mlp()
    quantize_model(model, GridSpec(bits=4, scheme="affine", granularity=Granularity.parse("group:7")))
    path = tmp_path / "m.lq"
    save(model, path)
    return path


@pytest.mark.parametrize(("tensor", "part", "where"), [
    ("0.weight", 0, 1),  # its codes
    ("0.weight", 1, 1),  # its first step
    ("2.weight", 1, -1),  # its last offset
    ("0.bias", 0, 1),
    ("3.num_batches_tracked", 0, 0),
])
def test_flipped_byte_fails_checksum(saved, tensor, part, where):
    piece = read(saved).slices[tensor][part]
    data = bytearray(saved.read_bytes())
    data[piece.start + where if where >= 0 else piece.stop + where] ^= 0x10
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"tensor '{tensor}' is corrupted"):
        read(saved)


def test_damaged_learnq_metadata(saved):
    hdr, _ = header(saved)
    outer = json.loads(hdr["__metadata__"]["learnq"])
    text = zlib.decompress(base64.b64decode(outer["zlib"]))
    with safe_open(saved, "pt") as f:
        blobs = {k: f.get_tensor(k) for k in f.keys()}

    def rewrite(**changes):
        safetensors.torch.save_file(blobs, saved, metadata={"learnq": json.dumps({**outer, **changes})})

    rewrite(crc32=outer["crc32"] ^ 1)
    with pytest.raises(CheckpointError, match="learnq metadata .*CRC-32 mismatch.* is corrupted"):
        read(saved)
    rewrite(zlib=outer["zlib"][:-8])
    with pytest.raises(CheckpointError, match="m.lq': its learnq metadata .*is corrupted"):
        read(saved)
    # a record that does not fit its blob (consistent CRC): named
    info = json.loads(text)
    info["tensors"][1][1] = [7]  # 0.bias has 6 values
    bad = json.dumps(info).encode()
    rewrite(zlib=base64.b64encode(zlib.compress(bad)).decode(), crc32=zlib.crc32(bad))
    with pytest.raises(CheckpointError, match="blob 'float32' .*'0.bias'"):
        read(saved)
    info["tensors"][1] = ["0.bias", [6], 0, "complex128"]
    bad = json.dumps(info).encode()
    rewrite(zlib=base64.b64encode(zlib.compress(bad)).decode(), crc32=zlib.crc32(bad))
    with pytest.raises(CheckpointError, match="metadata of tensor '0.bias' is malformed"):
        read(saved)


def test_every_flipped_byte_is_caught(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    attach_quantized(model, "0.weight", quantize_tensor(model[0].weight.detach(), GridSpec(
        bits=3, scheme="affine", granularity=Granularity.parse("group:5"))))
    path = tmp_path / "m.lq"
    save(model, path, metadata={"note": "x"})
    good = path.read_bytes()
    reference = read(path).entries
    for i in range(len(good)):
        data = bytearray(good)
        data[i] ^= 0x01
        path.write_bytes(bytes(data))
        try:
            got = read(path).entries
        except CheckpointError:
            continue
        # the only undetectable flips are JSON whitespace padding that stays whitespace
        assert chr(good[i]).isspace() and chr(data[i]).isspace(), i
        assert torch.equal(got["0.weight"].codes, reference["0.weight"].codes)


@pytest.mark.parametrize("cut", [1, 20, 200])  # the data region is 227 bytes
def test_truncated_file(saved, cut):
    slices = read(saved).slices
    _, start = header(saved)
    assert saved.stat().st_size - start == 227
    data = saved.read_bytes()[:-cut]
    saved.write_bytes(data)
    past = [k for k, v in slices.items() if any(s.stop > len(data) for s in v)]
    with pytest.raises(CheckpointError, match="truncated") as err:
        read(saved)
    assert past and all(f"'{k}'" in str(err.value) for k in past[:5])


def test_truncated_inside_header(saved):
    saved.write_bytes(saved.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="m.lq"):
        read(saved)


def test_wrong_version(saved):
    data = saved.read_bytes()
    assert data.count(b'\\"version\\":1,') == 1
    saved.write_bytes(data.replace(b'\\"version\\":1,', b'\\"version\\":9,'))
    with pytest.raises(CheckpointError, match="version 9.*reads version 1"):
        read(saved)


def test_pickle_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save(mlp().state_dict(), tmp_path / "a.pt")
    (tmp_path / "b.pkl").write_bytes(pickle.dumps(Payload()))
    for name in ("a.pt", "b.pkl"):
        with pytest.raises(CheckpointError, match=f"{name}.*not a learnq model file"):
            load(tmp_path / name, mlp())
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, bytes(range(256)) * 8, b"\x10" + b"\x00" * 7 + b"{" * 16])
def test_empty_or_random_bytes(tmp_path, content):
    (tmp_path / "bad.lq").write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.lq.*not a learnq model file"):
        read(tmp_path / "bad.lq")


def test_plain_safetensors_and_missing_file(tmp_path):
    safetensors.torch.save_file(mlp().state_dict(), tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="plain.safetensors.*not a learnq model file"):
        read(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="nothing.lq"):
        load(tmp_path / "nothing.lq", mlp())


def test_stored_tensor_not_described(saved):
    hdr, _ = header(saved)
    with safe_open(saved, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors["stowaway"] = torch.zeros(2)
    safetensors.torch.save_file(tensors, saved, metadata=hdr["__metadata__"])
    with pytest.raises(CheckpointError, match="stowaway"):
        read(saved)


def test_shape_mismatch_and_strict(saved):
    with pytest.raises(CheckpointError, match=r"'0.weight' has shape \(6, 10\) in the file but \(7, 10\)"):
        load(saved, mlp(hidden=7))
    bigger = nn.Sequential(*mlp(), nn.Linear(3, 2))
    with pytest.raises(CheckpointError, match=r"tensor\(s\) \['4.weight', '4.bias'\] are missing"):
        load(saved, bigger)
    load(saved, bigger, strict=False)
    assert torch.equal(bigger[0].weight, read(saved).entries["0.weight"].dequantize())
    smaller = nn.Sequential(nn.Linear(10, 6))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) \['2.bias', '2.weight'"):
        load(saved, smaller)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_load_to_cuda(saved):
    model = load(saved, mlp(seed=1), device="cuda")
    assert model[0].weight.device.type == "cuda" and model[3].running_mean.device.type == "cuda"
    reference = mlp()
    quantize_model(reference, GridSpec(bits=4, scheme="affine", granularity=Granularity.parse("group:7")))
    assert torch.equal(model[0].weight.cpu(), reference[0].weight)


# -- value_range: DiffQ's grid stored as its range ---------------------------------------------------------------
def range_tensor(w: torch.Tensor, granularity: Granularity, widths: torch.Tensor | None, bits: int) -> QuantizedTensor:
    """DiffQ's eval grid by hand: one range per tensor, a width per group."""
    lo, hi = torch.aminmax(w)
    n = granularity.num_groups(tuple(w.shape))
    per_group = widths if widths is not None else torch.full((n,), bits)
    params = range_group_params(lo, hi, per_group)
    step = granularity.expand(params.scale, w.shape)
    top = granularity.expand(2 ** per_group.to(torch.int64) - 1, w.shape)
    codes = torch.minimum(torch.round((w - lo) / step).clamp(min=0), top.float()).to(torch.int32)
    return QuantizedTensor(codes=codes, scale=params.scale, offset=params.offset, granularity=granularity, bits=bits,
                           scheme="affine", method="diffq", group_bits=widths, value_range=torch.stack([lo, hi]))


@pytest.mark.parametrize(("gran", "constant"), [("group:8", False), ("group:7", True), ("tensor", False)])
def test_value_range_round_trip(tmp_path, gran, constant):
    torch.manual_seed(5)
    model = mlp()
    w = torch.full((6, 10), 0.25) if constant else model[0].weight.detach()
    granularity = Granularity.parse(gran)
    n = granularity.num_groups((6, 10))
    widths = torch.randint(2, 9, (n,), dtype=torch.uint8) if granularity.kind == "group" else None
    qt = range_tensor(w, granularity, widths, bits=8 if widths is None else int(widths.max()))
    if constant:
        assert torch.equal(qt.scale, torch.ones(n)) and torch.equal(qt.dequantize(), w)
    attach_quantized(model, "0.weight", qt)
    # QuantizedWeight drops value_range
    report = save(model, tmp_path / "m.lq", quantized={"0.weight": qt}, report=True)
    mf = read(tmp_path / "m.lq")
    packed, params = mf.slices["0.weight"]
    assert params.nbytes == 8  # lo and hi, not a step and an offset per group
    got = mf.entries["0.weight"]
    assert torch.equal(got.value_range, qt.value_range) and torch.equal(got.codes, qt.codes)
    for a, b in ((got.scale, qt.scale), (got.offset, qt.offset), (got.dequantize(), qt.dequantize())):
        assert torch.equal(a.view(torch.int32), b.view(torch.int32))  # bit for bit
    wbits = 0 if widths is None else max(1, math.ceil(math.log2(int(widths.max()) - int(widths.min()) + 1)))
    code_bits = 60 * 8 if widths is None else int((granularity.group_mask((6, 10)).sum(1) * widths).sum())
    size = next(t for t in report.tensors if t.name == "0.weight")
    assert size.naive_bits == code_bits + 64 + n * wbits
    assert size.stored_bytes == packed.nbytes + params.nbytes
    fresh = mlp(seed=1)
    load(tmp_path / "m.lq", fresh)
    assert torch.equal(fresh[0].weight, qt.dequantize())


def test_value_range_that_does_not_give_the_steps_is_refused(tmp_path):
    model = mlp()
    qt = range_tensor(model[0].weight.detach(), Granularity.parse("group:8"), torch.full((8,), 4, dtype=torch.uint8),
                      bits=4)
    lo, hi = qt.value_range.tolist()
    bad = [torch.tensor([lo, hi * 1.5]), torch.tensor([hi, lo]), qt.value_range.double(),
           torch.tensor([lo, float("inf")])]
    for value_range in bad:
        wrong = QuantizedTensor(codes=qt.codes, scale=qt.scale, offset=qt.offset, granularity=qt.granularity, bits=4,
                                scheme="affine", group_bits=qt.group_bits, value_range=value_range)
        with pytest.raises(QuantizationError, match="^0.weight: .*value_range"):
            save(model, tmp_path / "m.lq", quantized={"0.weight": wrong})
    with pytest.raises(QuantizationError, match="value_range must hold 2 values"):
        QuantizedTensor(codes=qt.codes, scale=qt.scale, offset=qt.offset, granularity=qt.granularity, bits=4,
                        value_range=torch.zeros(3))
    assert not (tmp_path / "m.lq").exists()


def test_header_does_not_grow_with_the_tensor_count(tmp_path):
    # 200 BatchNorm layers = 1000 tensors: the header stays a few bytes per tensor (names and CRCs, compressed)
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.BatchNorm1d(4) for _ in range(200)])
    for bn in model:
        bn.running_mean.uniform_(-1, 1)
    save(model, tmp_path / "m.lq")
    _, start = header(tmp_path / "m.lq")
    assert len(hdr := header(tmp_path / "m.lq")[0]) == 3  # metadata, float32 and int64 blobs
    assert start < 8 * 1000 and hdr["float32"]["shape"] == [200 * 16]
    fresh = nn.Sequential(*[nn.BatchNorm1d(4) for _ in range(200)])
    load(tmp_path / "m.lq", fresh)
    assert all(torch.equal(a.running_mean, b.running_mean) for a, b in zip(model, fresh, strict=True))


def test_range_group_params_hand_computed():
    params = range_group_params(torch.tensor(-1.0), torch.tensor(2.0), torch.tensor([2, 1, 16, 4], dtype=torch.uint8))
    assert torch.equal(params.scale, torch.tensor([3 / 3, 3 / 1, 3 / 65535, 3 / 15], dtype=torch.float32))
    assert torch.equal(params.offset, torch.full((4,), -1.0))
    constant = range_group_params(0.5, 0.5, torch.tensor([3.0, 8.0]))  # float widths, as DiffQ's rounded bits
    assert torch.equal(constant.scale, torch.ones(2)) and torch.equal(constant.offset, torch.full((2,), 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_diffq_trained_on_cuda_loads_bit_identical_on_cpu(tmp_path):
    import learnq

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 3)).cuda()
    learnq.prepare(model, learnq.DiffQ(group_size=8))
    model.eval()
    expected = {k: v.cpu() for k, v in plain_state(model).items()}  # the eval forward's weights, computed on CUDA
    save(model, tmp_path / "m.lq")
    assert read(tmp_path / "m.lq").slices["0.weight"][1].nbytes == 8
    fresh = nn.Sequential(nn.Linear(40, 64), nn.ReLU(), nn.Linear(64, 3))
    load(tmp_path / "m.lq", fresh)
    got = plain_state(fresh)
    assert all(torch.equal(got[k].view(torch.int32), v.view(torch.int32)) for k, v in expected.items())


def test_per_group_widths_pack_as_one_stream_per_width_ascending():
    """The full-group packer (NumPy stable sort of the widths) writes what the layout says: for each width,
    ascending, the codes of its groups in their order, packed at that width; negative codes are refused too."""
    from learnq.code_packing import pack_codes
    from learnq.packing import pack

    g = torch.Generator().manual_seed(3)
    widths = torch.randint(1, 17, (300,), generator=g)
    codes = torch.cat([torch.randint(0, 2**int(w), (4,), generator=g) for w in widths])
    qt = QuantizedTensor(codes=codes.to(torch.int32), scale=torch.ones(300), offset=torch.zeros(300),
                         granularity=Granularity.parse("group:4"), bits=16, group_bits=widths)
    rows = codes.reshape(300, 4)
    expected = torch.cat([pack(rows[widths == w].reshape(-1).to(torch.int64), int(w))
                          for w in sorted(set(widths.tolist()))])
    assert torch.equal(pack_codes(qt, "w"), expected)
    bad = QuantizedTensor(codes=torch.tensor([0, -1, 1, 1], dtype=torch.int32), scale=torch.ones(2),
                          offset=torch.zeros(2), granularity=Granularity.parse("group:2"), bits=3,
                          group_bits=torch.tensor([2, 3]))
    with pytest.raises(QuantizationError, match="^w: some codes - qmin do not fit the width of their group"):
        pack_codes(bad, "w")
