"""Model files: bit-exact round trips (every scheme x granularity x width, per-group widths, dtypes) and every bad
file refused with a CheckpointError that names the tensor or the file (never unpickling)."""

from __future__ import annotations

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
from learnq.grid import GridSpec, QuantizedTensor, quantize_tensor
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
    report = save(model, tmp_path / "m.lq")
    with safe_open(tmp_path / "m.lq", "pt") as f:
        assert torch.equal(f.get_tensor("0.weight::bits"), widths)
        # one stream per width, each rounded up to whole bytes: that is the whole codes tensor
        counts = {w: int(granularity.group_mask(shape).sum(1)[widths == w].sum()) for w in widths.unique().tolist()}
        assert f.get_tensor("0.weight::codes").numel() == sum(math.ceil(c * w / 8) for w, c in counts.items())
    got = read(tmp_path / "m.lq").entries["0.weight"]
    assert torch.equal(got.codes, qt.codes) and torch.equal(got.group_bits, widths)
    assert got.method == "diffq" and got.extra == {"b_min": 2}
    fresh = mlp(seed=1)
    load(tmp_path / "m.lq", fresh)
    assert_same_model(model, fresh)
    sizes = {t.name: t for t in report.tensors}
    assert sizes["0.weight"].naive_bits == int((per_elem).sum()) + n * (32 + 32 + 8)


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
    assert "0.weight::offset" not in hdr and "2.weight::offset" in hdr and "0.weight" not in hdr
    info = json.loads(hdr["__metadata__"]["learnq"])
    # model order; a parametrized weight comes after its module's plain tensors, as in state_dict
    assert list(info["tensors"])[:4] == ["0.weight", "0.bias", "2.bias", "2.weight"]
    assert info["tensors"]["0.weight"]["offset"] is False and info["tensors"]["2.weight"]["offset"] is True
    assert info["tensors"]["2.weight"]["crc32"].keys() == {"codes", "scale", "offset"}
    assert info["tensors"]["0.bias"] == {"kind": "float", "shape": [6], "dtype": "float32", "numel": 6,
                                         "crc32": zlib.crc32(model[0].bias.detach().numpy().tobytes())}
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


@pytest.mark.parametrize("tensor", ["0.weight::codes", "0.weight::scale", "2.weight::offset", "0.bias"])
def test_flipped_byte_fails_checksum(saved, tensor):
    hdr, start = header(saved)
    data = bytearray(saved.read_bytes())
    data[start + hdr[tensor]["data_offsets"][0] + 1] ^= 0x10
    saved.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"'{tensor}' is corrupted"):
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
    hdr, start = header(saved)
    data = saved.read_bytes()[:-cut]
    saved.write_bytes(data)
    past = sorted(k for k, v in hdr.items() if k != "__metadata__" and start + v["data_offsets"][1] > len(data))
    with pytest.raises(CheckpointError, match="truncated") as err:
        read(saved)
    assert any(f"'{k}'" in str(err.value) for k in past)


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
