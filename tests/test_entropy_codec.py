"""Entropy-coded model files (issue 18, learnq.entropy_codec): ``learnq.save(..., codec="ans")`` round trips bit for
bit for every quantizer family that writes codes, edge cases (one symbol, empty, tiny, every symbol of 2^b used,
16-bit codes), the coded size against a hand-computed entropy, damaged coded bytes -> the CRC error, a missing
constriction -> an error naming the extra, and the size report (naive, packed, bound, coded). Each tensor is coded
by pcodec or rANS (tests/test_entropy_pco.py checks the choice); tests of one coder's layout force it."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import learnq
from learnq import entropy_codec
from learnq.checkpoint import load, read, save
from learnq.errors import CheckpointError, ConfigError
from learnq.granularity import Granularity
from learnq.grid import QuantizedTensor, range_group_params
from learnq.ptq import PTQ, quantize
from learnq.quantizers import QAT_METHODS

pytest.importorskip("constriction")
pytest.importorskip("pcodec")
CODERS = ("ans", "pco")


def force(monkeypatch, coder: str) -> None:
    """Every tensor of the next saves is coded by ``coder`` (where coding makes it smaller)."""
    real = entropy_codec.encode
    monkeypatch.setattr(entropy_codec, "encode", lambda packed, streams: real(packed, streams, coder=coder))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16))
    with torch.no_grad():  # Gaussian weights, as trained ones are near enough: codes far from uniform
        for p in net.parameters():
            p.normal_(0.0, 0.1)
    return net


def _data(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def _same_entries(a, b) -> None:
    """Two read files hold the same tensors bit for bit (codes, steps, offsets, widths, palettes, floats)."""
    assert list(a.entries) == list(b.entries)
    for name, x in a.entries.items():
        y = b.entries[name]
        if isinstance(x, torch.Tensor):
            assert torch.equal(x, y), name
            continue
        for attr in ("codes", "scale", "offset", "group_bits", "value_range", "palette"):
            u, v = getattr(x, attr), getattr(y, attr)
            assert (u is None) == (v is None) and (u is None or torch.equal(u, v)), (name, attr)
        assert (x.bits, x.qmin, x.scheme, x.method, str(x.granularity)) == \
            (y.bits, y.qmin, y.scheme, y.method, str(y.granularity))


def _round_trip(model: nn.Module, build, tmp_path, x: torch.Tensor, quantized=None) -> tuple:
    """Save packed and ans, check both files decode to the same tensors and the ans one loads to the same outputs."""
    model.eval()
    save(model, tmp_path / "p.lq", quantized=quantized)
    report = save(model, tmp_path / "a.lq", quantized=quantized, codec="ans", report=True)
    packed, coded = read(tmp_path / "p.lq"), read(tmp_path / "a.lq")
    _same_entries(packed, coded)
    if quantized is None:
        with torch.no_grad():
            expected = model(x)
            torch.manual_seed(123)
            fresh = load(tmp_path / "a.lq", build()).eval()  # no flag: the file says how its codes are stored
            assert torch.equal(fresh(x), expected)
    return packed, coded, report


@pytest.mark.parametrize("method", list(QAT_METHODS))
def test_every_qat_method_round_trips_bit_exact_with_ans(method, tmp_path):
    model = _net()
    handle = learnq.prepare(model, QAT_METHODS[method]())
    x, y = _data()
    params, _ = handle.split_parameters()
    opt = torch.optim.Adam([{"params": params}, *handle.param_groups()], lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        (F.cross_entropy(model(x), y) + handle.loss()).backward()
        opt.step()
    _round_trip(model, _net, tmp_path, x)


@pytest.mark.parametrize(("method", "wbits"), [("minmax", 4), ("mse", 3), ("kmeans", 2), ("gptq", 4)])
def test_ptq_round_trips_bit_exact_with_ans(method, wbits, tmp_path):
    model = _net()
    x, _ = _data(64)
    result = quantize(model, x, PTQ(method=method, wbits=wbits, abits=8), progress=False)
    _, coded, report = _round_trip(result.model, _net, tmp_path, x[:8])
    if method != "kmeans":  # Gaussian weights on a uniform grid: the big layer's codes are entropy-coded
        assert coded.codecs.get("3.weight") in CODERS
        assert {t.name: t.codec for t in report.tensors}["3.weight"] == coded.codecs["3.weight"]


def _holder(*shape: int) -> nn.Module:
    holder = nn.Module()
    holder.w = nn.Parameter(torch.zeros(shape))
    return holder


def _plain(codes: torch.Tensor, bits: int, qmin: int = 0) -> QuantizedTensor:
    return QuantizedTensor(codes=codes.to(torch.int32), scale=torch.ones(1), offset=torch.zeros(1),
                           granularity=Granularity(), bits=bits, qmin=qmin)


@pytest.mark.parametrize("coder", CODERS)
def test_diffq_mixed_widths_and_range_round_trip(coder, tmp_path, monkeypatch):
    force(monkeypatch, coder)
    torch.manual_seed(1)
    w = torch.randn(64, 96)
    gran = Granularity.parse("group:96")
    n = gran.num_groups(tuple(w.shape))
    widths = torch.randint(2, 6, (n,), dtype=torch.uint8)
    lo, hi = torch.aminmax(w)
    params = range_group_params(lo, hi, widths)
    step, top = gran.expand(params.scale, w.shape), gran.expand(2 ** widths.to(torch.int64) - 1, w.shape)
    codes = torch.minimum(torch.round((w - lo) / step).clamp(min=0), top.float()).to(torch.int32)
    qt = QuantizedTensor(codes=codes, scale=params.scale, offset=params.offset, granularity=gran, bits=8,
                         scheme="affine", method="diffq", group_bits=widths, value_range=torch.stack([lo, hi]))
    _, coded, report = _round_trip(_holder(64, 96), None, tmp_path, None, quantized={"w": qt})
    assert coded.codecs == {"w": coder} and torch.equal(coded.entries["w"].group_bits, widths)
    assert len({int(v) for v in widths}) > 2  # several streams, one model each


@pytest.mark.parametrize("case", ["one-symbol", "empty", "one-value", "all-256", "16-bit", "two-values"])
@pytest.mark.parametrize("coder", [*CODERS, None])
def test_edge_cases_round_trip(case, coder, tmp_path, monkeypatch):
    if coder is not None:
        force(monkeypatch, coder)
    g = torch.Generator().manual_seed(2)
    codes, bits, shape = {
        "one-symbol": (torch.full((1000,), 5), 4, (1000,)),
        "empty": (torch.zeros(0), 4, (0,)),
        "one-value": (torch.tensor([3]), 2, (1,)),
        "all-256": (torch.arange(256).repeat(40)[torch.randperm(10240, generator=g)], 8, (10240,)),
        "16-bit": (torch.randint(0, 2**16, (3000,), generator=g), 16, (3000,)),
        "two-values": (torch.tensor([0, 1] * 7), 1, (14,)),
    }[case]
    qt = _plain(codes.reshape(shape), bits, qmin=-(2 ** (bits - 1)))
    qt = _plain(codes.reshape(shape) + qt.qmin, bits, qt.qmin)
    packed, coded, report = _round_trip(_holder(*shape), None, tmp_path, None, quantized={"w": qt})
    t = report.tensors[0]
    assert t.stored_bytes <= t.packed_bytes  # never bigger than packed: packed kept when ans does not pay
    assert t.bound_bits <= 8 * t.packed_bytes  # nor the bound: the coder's reach includes keeping the codes packed
    if case == "16-bit":  # 3000 distinct-ish 16-bit codes: a dense 65k-value histogram would put the bound far above
        assert t.bound_bits == 8 * t.packed_bytes  # the 6000 packed bytes; the bound is the packed codes then
    if case == "one-symbol" and coder != "pco":  # 1000 codes of one value: rANS (also the choice: pcodec's header
        assert coded.codecs == {"w": "ans"} and coded.slices["w"][0].nbytes == 0  # is more than 7 bytes), no coded
        assert coded.slices["w"][2].nbytes == 7  # words, the model lo, k = 1, one count (7 bytes)
    if case == "one-symbol" and coder == "pco":
        assert coded.codecs == {"w": "pco"} and coded.slices["w"][2].nbytes == 4  # one stream length
    if case in ("empty", "one-value", "two-values", "all-256", "16-bit"):  # nothing to gain: stored packed
        assert coded.codecs == {}
        assert (tmp_path / "a.lq").read_bytes() == (tmp_path / "p.lq").read_bytes()


@pytest.mark.parametrize("coder", [*CODERS, None])
def test_coded_size_within_5_percent_of_a_hand_computed_entropy(coder, tmp_path, monkeypatch):
    if coder is not None:
        force(monkeypatch, coder)
    # symbols 0..3 with probabilities 1/2, 1/4, 1/8, 1/8 exactly: H = 1.75 bits, 40,000 codes -> 70,000 bits
    n = 40_000
    codes = torch.cat([torch.zeros(n // 2), torch.ones(n // 4), torch.full((n // 8,), 2), torch.full((n // 8,), 3)])
    codes = codes[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    qt = _plain(codes, 4)  # 4-bit codes: packed 20,000 bytes
    report = save(_holder(n), tmp_path / "a.lq", quantized={"w": qt}, codec="ans", report=True)
    t = report.tensors[0]
    model_bytes = 6 + 4  # the rANS histogram: lo (2 bytes), k (4 bytes), one byte per count
    assert t.packed_bytes == n // 2 + 4 and t.naive_bits == 4 * n + 32
    assert t.bound_bits == pytest.approx(1.75 * n + 8 * model_bytes + 32, rel=1e-12)
    mf = read(tmp_path / "a.lq")
    assert mf.codecs["w"] == (coder or "pco")  # pcodec is within 2 % of the bound here: chosen
    coded = t.stored_bytes - 4 - mf.slices["w"][2].nbytes  # minus the float32 step and the model (10 or 4 bytes)
    assert coded <= 1.05 * (1.75 * n / 8) + 16
    assert coded >= 1.75 * n / 8  # no coder beats the entropy of i.i.d. symbols with these frequencies
    assert read(tmp_path / "a.lq").size.stored_bytes == t.stored_bytes  # the file's report says the same


def test_stream_model_is_the_histogram(tmp_path, monkeypatch):
    force(monkeypatch, "ans")
    qt = _plain(torch.tensor([1, 1, 1, 3, 3, 2] * 50), 3)
    save(_holder(300), tmp_path / "a.lq", quantized={"w": qt}, codec="ans")
    mf = read(tmp_path / "a.lq")
    data = (tmp_path / "a.lq").read_bytes()
    model = mf.slices["w"][2]
    assert model.blob == "uint8"
    # lo = 1 (uint16), k = 3 (uint32), counts 150, 50, 100 -> 150 ~ (8 + 1)·2^4 = 144 (q = 8·5 + 1),
    # 50 = 12.5·2^2 -> (8 + 5)·2^2 = 52 (halves round up; q = 8·3 + 5), 100 = 12.5·2^3 -> 104 (q = 8·4 + 5)
    assert list(data[model.start:model.stop]) == [1, 0, 3, 0, 0, 0, 41, 29, 37]
    assert entropy_codec.dequantize_counts(np.array([41, 29, 37])).tolist() == [144, 52, 104]


def test_count_quantization_by_hand_and_its_error_bound():
    c = np.arange(0, 200_000)
    q = entropy_codec.quantize_counts(c)
    back = entropy_codec.dequantize_counts(q)
    assert np.array_equal(back[:16], c[:16])  # exact below 16
    assert (back[1:] > 0).all() and back[0] == 0
    assert (np.abs(back[16:] - c[16:]) <= c[16:] / 16).all()  # nearest of (8 + m)·2^e: half a step of 1/8
    assert (np.diff(back) >= 0).all()  # monotone
    assert entropy_codec.quantize_counts(np.array([2**31 - 1]))[0] == 8 * 29 + 0  # 2^31 = 8·2^28


@pytest.mark.parametrize("coder", CODERS)
def test_damaged_coded_bytes_fail_the_crc(coder, tmp_path, monkeypatch):
    force(monkeypatch, coder)
    codes = torch.randint(0, 3, (5000,), generator=torch.Generator().manual_seed(4))
    save(_holder(5000), tmp_path / "a.lq", quantized={"w": _plain(codes, 4)}, codec="ans")
    mf = read(tmp_path / "a.lq")
    assert mf.codecs == {"w": coder}
    for index in (0, 2):  # a coded byte, a model byte (histogram, or stream length)
        s = mf.slices["w"][index]
        data = bytearray((tmp_path / "a.lq").read_bytes())
        data[(s.start + s.stop) // 2] ^= 0x10
        (tmp_path / "b.lq").write_bytes(bytes(data))
        with pytest.raises(CheckpointError, match=r"tensor 'w' is corrupted \(CRC-32 mismatch\)"):
            read(tmp_path / "b.lq")


@pytest.mark.parametrize("coder", CODERS)
def test_decoded_codes_are_checked_against_their_own_crc(coder, tmp_path, monkeypatch):
    codes = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(4))
    with monkeypatch.context() as m:
        force(m, coder)
        save(_holder(500), tmp_path / "a.lq", quantized={"w": _plain(codes, 4)}, codec="ans")
    assert read(tmp_path / "a.lq").codecs == {"w": coder}
    if coder == "pco":  # a coder that decodes wrong: the symbols reversed
        real = entropy_codec.pco_codec.decode
        monkeypatch.setattr(entropy_codec.pco_codec, "decode", lambda *a: [s[::-1].copy() for s in real(*a)])
    else:
        real = entropy_codec._ans_decode
        monkeypatch.setattr(entropy_codec, "_ans_decode", lambda *a: [s.flip(0) for s in real(*a)])
    lib = {"ans": "constriction", "pco": "pcodec"}[coder]
    with pytest.raises(CheckpointError, match=f"decode to other codes than were written .*another {lib} version"):
        read(tmp_path / "a.lq")


@pytest.mark.parametrize(("package", "coder"), [("constriction", "ans"), ("pcodec", "pco")])
def test_missing_coder_package_names_the_extra(package, coder, tmp_path, monkeypatch):
    codes = torch.randint(0, 3, (500,), generator=torch.Generator().manual_seed(4))
    with monkeypatch.context() as m:
        force(m, coder)
        save(_holder(500), tmp_path / "a.lq", quantized={"w": _plain(codes, 4)}, codec="ans")
    real_import = builtins.__import__

    def no_package(name, *args, **kwargs):
        if name == package or name.startswith(package + "."):
            raise ImportError(f"No module named {package!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_package)
    with pytest.raises(ConfigError, match=f"codec='ans' needs the '{package}' package; install it with: pip "
                                          r"install 'learnq\[entropy\]'"):
        save(_holder(500), tmp_path / "b.lq", quantized={"w": _plain(codes, 4)}, codec="ans")
    assert not (tmp_path / "b.lq").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["a.lq"]
    with pytest.raises(CheckpointError, match=f"codec '{coder}'.*needs the '{package}' package; install it with: "
                                              r"pip install 'learnq\[entropy\]'"):
        read(tmp_path / "a.lq")
    save(_holder(500), tmp_path / "c.lq", quantized={"w": _plain(codes, 4)})  # packed needs nothing
    assert read(tmp_path / "c.lq").size.bound_bytes > 0  # and its report's bound neither


def test_unknown_codec_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="codec must be one of packed, ans, got 'zip'"):
        save(_holder(4), tmp_path / "a.lq", codec="zip")


def test_size_report_packed_file_has_the_bound_the_coder_reaches(tmp_path):
    torch.manual_seed(0)
    codes = torch.round(torch.randn(20_000) * 2).clamp(-8, 7).to(torch.int32)
    qt = _plain(codes, 4, qmin=-8)
    packed = save(_holder(20_000), tmp_path / "p.lq", quantized={"w": qt}, report=True).tensors[0]
    coded = save(_holder(20_000), tmp_path / "a.lq", quantized={"w": qt}, codec="ans", report=True).tensors[0]
    assert packed.codec == "packed" and coded.codec == "pco"  # within 2 % of the bound: the fast coder
    assert packed.bound_bits == coded.bound_bits and packed.packed_bytes == coded.packed_bytes == 10_004
    counts = torch.bincount(codes + 8).double()
    p = counts[counts > 0] / 20_000
    h = float(-(p * torch.log2(p)).sum()) * 20_000
    span = int(codes.max()) - int(codes.min()) + 1
    assert coded.bound_bits == pytest.approx(h + 8 * (6 + span) + 32, rel=1e-9)
    assert 8 * coded.stored_bytes <= coded.bound_bits * 1.05 + 8 * 16
    assert math.isclose(read(tmp_path / "a.lq").size.bound_bytes, coded.bound_bits / 8)


def test_recipe_variant_codec(tmp_path):
    from recipe_util import tiny_recipe

    from learnq.pipeline.recipe import parse_recipe
    from learnq.pipeline.run import run_recipe

    variants = ('[[variants]]\nmethod = "minmax"\nbits = 3\nname = "p"\n\n'
                '[[variants]]\nmethod = "minmax"\nbits = 3\nname = "a"\ncodec = "ans"\n')
    run_recipe(parse_recipe(tiny_recipe(hidden=(64,), tables=variants)), tmp_path)
    packed, coded = read(tmp_path / "p.safetensors"), read(tmp_path / "a.safetensors")
    assert packed.codecs == {} and coded.codecs and set(coded.codecs.values()) <= set(CODERS)
    _same_entries(packed, coded)
    with pytest.raises(ConfigError, match=r"variants\[0\]\.codec.*codec must be one of packed, ans"):
        parse_recipe(tiny_recipe(tables='[[variants]]\nmethod = "minmax"\nbits = 3\ncodec = "zip"\n'))


def test_the_example_of_docs_entropy_md_runs(tmp_path, monkeypatch):
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "entropy.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "docs/entropy.md", "exec"), {"print": lambda *a: None})
    assert read(tmp_path / "model.ans.safetensors").codecs == {"0.weight": "pco"}
