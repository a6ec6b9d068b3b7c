"""The per-tensor coder of ``codec="ans"`` files (issue 18, learnq.entropy_codec + learnq.pco_codec): pcodec where it
is within 2 % of the rANS bound, else the smaller of pcodec and rANS. Bit-exact round trips at every width through
pcodec, the choice rule on tensors where each coder wins, pcodec's size against hand-computed entropies, malformed
pcodec streams and an unknown coder version refused, and a file written before pcodec joined (rANS only,
tests/data/ans_v1.safetensors) still loads, byte for byte the file the rANS coder writes now."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from learnq import entropy_codec, pco_codec
from learnq.checkpoint import read, save
from learnq.errors import CheckpointError
from learnq.file_layout import same_entry
from learnq.granularity import Granularity
from learnq.grid import QuantizedTensor
from learnq.packing import pack

pytest.importorskip("constriction")
pytest.importorskip("pcodec")
DATA = Path(__file__).resolve().parent / "data"
sys.path.insert(0, str(DATA))
from make_ans_fixture import ans_fixture_entries, holder  # noqa: E402


def _plain(codes: torch.Tensor, bits: int, qmin: int = 0) -> QuantizedTensor:
    return QuantizedTensor(codes=codes.to(torch.int32), scale=torch.ones(1), offset=torch.zeros(1),
                           granularity=Granularity(), bits=bits, qmin=qmin)


def _holder(n: int) -> nn.Module:
    m = nn.Module()
    m.w = nn.Parameter(torch.zeros(n))
    return m


def _gaussian_codes(n: int, bits: int, sigma: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.round(torch.randn(n, generator=g) * sigma).clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _near_uniform() -> torch.Tensor:
    """20,000 4-bit codes, symbol 0 drawn with weight 1.8 and the other 15 with 1: about 3.99 bits each."""
    p = torch.ones(16)
    p[0] += 0.8
    return torch.multinomial(p / p.sum(), 20_000, replacement=True, generator=torch.Generator().manual_seed(0)) - 8


def _force(monkeypatch, coder: str) -> None:
    real = entropy_codec.encode
    monkeypatch.setattr(entropy_codec, "encode", lambda packed, streams: real(packed, streams, coder=coder))


@pytest.mark.parametrize("bits", range(1, 17))
def test_pcodec_round_trips_bit_exact_at_every_width(bits, tmp_path, monkeypatch):
    _force(monkeypatch, "pco")
    sigma = 0.6 if bits <= 2 else 2.0 ** (bits - 3)  # bell-shaped codes over most of the range (±4σ)
    qt = _plain(_gaussian_codes(5000, bits, sigma, seed=bits), bits, qmin=-(2 ** (bits - 1)))
    save(_holder(5000), tmp_path / "a.lq", quantized={"w": qt}, codec="ans")
    mf = read(tmp_path / "a.lq")
    assert mf.codecs == {"w": "pco"}  # coded: smaller than packed at every width (bell-shaped codes)
    assert torch.equal(mf.entries["w"].codes, qt.codes) and same_entry(mf.entries["w"], qt)


def test_the_choice_follows_the_rule(tmp_path):
    cases = {
        "gaussian-4bit": (_gaussian_codes(40_000, 4, 2.0), 4),  # pcodec ~0.3 % above the bound: pcodec
        "one-symbol": (torch.full((1000,), 3.0), 4),  # rANS: 0 coded bytes + 7 model bytes; pcodec more
        "tiny": (_gaussian_codes(60, 4, 2.0), 4),  # a few dozen bytes: pcodec's header is > 2 %
        "8bit": (_gaussian_codes(20_000, 8, 20.0), 8),
        "near-uniform": (_near_uniform(), 4),  # pcodec within 2 % of the bound but above packed, rANS below it
    }
    seen = set()
    for name, (codes, bits) in cases.items():
        qt = _plain(codes, bits, qmin=-(2 ** (bits - 1)))
        packed = pack((qt.codes - qt.qmin).reshape(-1), bits)
        streams = [(bits, codes.numel())]
        ans = entropy_codec.encode(packed, streams, coder="ans")
        pco = entropy_codec.encode(packed, streams, coder="pco")
        chosen = entropy_codec.encode(packed, streams)
        assert ans.bound_bits == pco.bound_bits == chosen.bound_bits
        fast = 8 * pco.nbytes <= 1.02 * pco.bound_bits and pco.nbytes < packed.numel()
        want = "pco" if fast or pco.nbytes <= ans.nbytes else "ans"
        assert chosen.codec[0] == want, name
        assert chosen.nbytes == (pco if want == "pco" else ans).nbytes
        seen.add(want)
        if name in ("gaussian-4bit", "8bit"):
            assert want == "pco"
        if name == "one-symbol":
            assert want == "ans" and ans.nbytes == 7
        if name == "near-uniform":  # stored rANS-coded, not packed: the file is smaller (seed 0: 9982 < 10000 < 10025)
            assert want == "ans" and ans.nbytes < packed.numel() < pco.nbytes <= 1.02 * pco.bound_bits / 8
    assert seen == {"ans", "pco"}  # both outcomes happen


@pytest.mark.parametrize("case", ["1.75-bit", "6-bit-of-8", "2-bit-skewed"])
def test_pcodec_size_against_hand_computed_entropy(case, tmp_path, monkeypatch):
    # frequencies exact by construction, so the empirical entropy is the formula's: n·H bits
    n = 48_000
    values, probs, bits = {
        "1.75-bit": ([0, 1, 2, 3], [1 / 2, 1 / 4, 1 / 8, 1 / 8], 4),  # H = 1.75
        "6-bit-of-8": (list(range(0, 256, 4)), [1 / 64] * 64, 8),  # 64 of 256 values, equal: H = 6
        "2-bit-skewed": ([0, 1, 2, 3], [3 / 4, 1 / 8, 1 / 16, 1 / 16], 2),  # H = 1.1863
    }[case]
    h = -sum(p * np.log2(p) for p in probs)
    codes = torch.cat([torch.full((round(n * p),), v, dtype=torch.float32) for v, p in zip(values, probs, strict=True)])
    codes = codes[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    _force(monkeypatch, "pco")
    report = save(_holder(n), tmp_path / "a.lq", quantized={"w": _plain(codes, bits)}, codec="ans", report=True)
    mf = read(tmp_path / "a.lq")
    assert mf.codecs == {"w": "pco"}
    coded = mf.slices["w"][0].nbytes  # the pcodec stream, its own header and bin table included
    assert h * n / 8 <= coded <= 1.05 * h * n / 8 + 64  # goal: ≤ 1.05x the entropy + fixed metadata
    assert report.tensors[0].stored_bytes == coded + 4 + 4  # + the stream length + the float32 step


def test_pcodec_model_and_symbols_are_checked():
    sym = [np.array([0, 1, 2, 3, 1, 1, 0], np.uint8)]
    coded, model = pco_codec.encode(sym, [2])
    assert model.numel() == 4 and int(model.numpy().view("<u4")[0]) == coded.numel()
    assert (pco_codec.decode(coded, model, [(2, 7)], "w")[0] == sym[0]).all()
    with pytest.raises(CheckpointError, match="not 4 per stream"):
        pco_codec.decode(coded, model[:3], [(2, 7)], "w")
    bad = torch.from_numpy(np.array([coded.numel() + 1], "<u4").view(np.uint8).copy())
    with pytest.raises(CheckpointError, match="add up to"):
        pco_codec.decode(coded, bad, [(2, 7)], "w")
    with pytest.raises(CheckpointError, match="other than its 8 symbols"):
        pco_codec.decode(coded, model, [(2, 8)], "w")
    with pytest.raises(CheckpointError, match="past 1 bits"):  # symbols 2, 3 do not fit one bit
        pco_codec.decode(coded, model, [(1, 7)], "w")
    with pytest.raises(CheckpointError, match="pcodec cannot decode"):
        pco_codec.decode(torch.full_like(coded, 7), model, [(2, 7)], "w")


def test_unknown_coder_version_is_refused(tmp_path, monkeypatch):
    real = entropy_codec.encode

    def future(packed, streams):
        out = real(packed, streams, coder="pco")
        out.codec = ["pco", 2]
        return out

    monkeypatch.setattr(entropy_codec, "encode", future)
    save(_holder(4000), tmp_path / "a.lq", quantized={"w": _plain(_gaussian_codes(4000, 4, 2.0) + 8, 4)},
         codec="ans")
    with pytest.raises(CheckpointError, match=r"codec \['pco', 2\], which this learnq does not know"):
        read(tmp_path / "a.lq")


def test_file_written_before_pcodec_still_loads(tmp_path, monkeypatch):
    path = DATA / "ans_v1.safetensors"
    mf = read(path)
    want = ans_fixture_entries()
    assert mf.codecs == {"w": "ans", "d": "ans", "one": "ans"}
    for name, qt in want.items():
        assert torch.equal(mf.entries[name].codes, qt.codes) and same_entry(mf.entries[name], qt), name
    _force(monkeypatch, "ans")  # the rANS layout did not change: the same file, byte for byte
    save(holder(), tmp_path / "again.lq", quantized=want, codec="ans")
    assert (tmp_path / "again.lq").read_bytes() == path.read_bytes()
