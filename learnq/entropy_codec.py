"""Entropy-coded code tensors: the packed code streams of a quantized tensor, rANS-coded with a categorical model
whose histogram the file stores (issue 18; DiffQ seeds/003 §5.6 and its conclusion: the naive Σ bits is not what
the codes cost, their entropy is).

The coder is ``constriction``'s (Bamler 2022, "Understanding Entropy Coding With Asymmetric Numeral Systems (ANS):
a Statistician's Perspective"; ``constriction.stream.stack.AnsCoder``: 32-bit words, 64-bit state, 24-bit
probabilities), never a home-made one; it is the optional extra ``learnq[entropy]`` and imported only when a file
is written with ``codec="ans"`` or such a file is read.

Two coders, chosen per tensor. constriction decodes ~25 M symbols/s from Python (4M codes: ~180 ms, holding the GIL),
which made ``learnq.load`` of a 4M-weight layer 2.4-3.6x slower than the packed file's. :mod:`learnq.pco_codec`
(``pcodec``, also an order-0 ANS coder, with its model in its stream) decodes the same codes in ~25 ms. :func:`encode`
stores a tensor pcodec-coded (grid ``"codec": ["pco", 1]``) when that is at most :data:`PCO_SLACK` (2 %) above this
module's rANS bound below, and otherwise the smaller of the two (rANS, ``["ans", 1]``, wherever pcodec's stream
header outweighs 2 %: small tensors, very low entropy); both are exact, so the choice only trades size for load time.
Files written before pcodec was added (rANS only) read as before.

What is coded. A quantized tensor's packed codes are one stream per code width (:func:`learnq.code_packing.pack_codes`:
one for a plain or palettized tensor, one per width for DiffQ's per-group widths, each byte-aligned). Each stream's
symbols (the stored codes ``q - qmin``, or palette indices) get their own model: the stream's histogram, stored in
6 + k bytes (``uint8``): the smallest symbol ``lo`` (uint16 LE), the span ``k`` (uint32 LE; 0 for an empty stream),
then one byte per symbol ``lo..lo+k-1``, its count on a small float scale (:func:`quantize_counts`: exact below 16,
then 3 mantissa bits, relative error at most 1/16; 0 only for an absent symbol). The coder's probabilities are
those dequantized counts (integers, so both sides compute bit-identical models; constriction rescales them to 24-bit
fixed point, every symbol of the span at least 2^-24). A stream with one distinct symbol (``k = 1``) costs no coded
bits. All streams go into one ANS stack, first stream decoded first; the coded words are stored as little-endian
bytes. One byte per symbol instead of a 32-bit count: a histogram of 8-bit codes costs 262 bytes, not 1 KiB, so
tensors of a few thousand codes pay; the coarse counts cost well under 1 % of the coded size.

Bound. The ideal size of this model is ``Σ_s n_s·H_s`` bits (``H_s`` the empirical entropy of stream ``s``, exact
counts) plus the model's bytes; :func:`bound_bits` computes it without constriction (every size report shows it).
ANS adds at most a few words per tensor plus the rounding of the counts and of the 24-bit probabilities (tests:
within 5 % plus 16 bytes on tensors of known entropy).

The file layout around it (grid key ``"codec"``, the record's coded byte count and model length, the
``uint8`` slice of the model) is :mod:`learnq.file_layout`'s and :mod:`learnq.checkpoint`'s; the CRC-32 of every
tensor covers the coded bytes and the model, so a damaged file is refused before anything is decoded.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from learnq import pco_codec
from learnq.errors import CheckpointError, ConfigError
from learnq.packing import pack_checked, packed_nbytes, unpack

CODECS = ("packed", "ans")
"""The codecs of :func:`learnq.save`: ``packed`` (bit-packed codes, the default) and ``ans`` (entropy-coded)."""
ANS = ["ans", 1]
"""The grid key ``"codec"`` of an rANS-coded tensor: codec name and version of its layout."""
PCO = pco_codec.PCO
"""The grid key ``"codec"`` of a pcodec-coded tensor (:mod:`learnq.pco_codec`)."""
CODERS = (ANS, PCO)
"""The grid ``"codec"`` values this learnq reads."""
PCO_SLACK = 1.02
"""A tensor is pcodec-coded when that is at most this factor above the rANS bound (:func:`bound_bits`), since it
decodes ~7x faster; otherwise the smaller of the two is stored."""
EXTRA = pco_codec.EXTRA

Streams = list[tuple[int, int]]  # (width in bits, symbol count) of each packed stream, in file order


def check_codec(codec: object) -> str:
    """``codec`` checked: one of :data:`CODECS` (ConfigError otherwise)."""
    if codec not in CODECS:
        raise ConfigError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    return codec  # type: ignore[return-value]


def _constriction(reading: bool):
    return pco_codec.import_coder("constriction", "ans", reading)


def _stream_symbols(packed: torch.Tensor, streams: Streams) -> list[np.ndarray]:
    out, start = [], 0
    for width, count in streams:
        nbytes = packed_nbytes(count, width)
        out.append(unpack(packed[start:start + nbytes], width, count).numpy() if count else np.zeros(0, np.int32))
        start += nbytes
    return out


def _histogram(sym: np.ndarray) -> tuple[int, np.ndarray]:
    if not sym.size:
        return 0, np.zeros(0, np.int64)
    lo = int(sym.min())
    return lo, np.bincount(sym - lo)


def quantize_counts(counts: np.ndarray) -> np.ndarray:
    """Counts -> one byte each: ``q = c`` below 16, else ``q = 8·(e + 1) + m`` for ``c ≈ (8 + m)·2^e`` (m in 0..7,
    nearest); 0 only for 0. :func:`dequantize_counts` is the inverse up to the rounding (at most 1/16 relative)."""
    c = counts.astype(np.int64)
    q = np.where(c < 16, c, 0)
    big = c >= 16
    if big.any():
        cb = c[big]
        e = np.frexp(cb.astype(np.float64))[1].astype(np.int64) - 4  # c in [2^(e+3), 2^(e+4)): exact for ints < 2^53
        m = (cb + (np.int64(1) << (e - 1))) >> e  # round(c / 2^e), in 8..16
        e = np.where(m == 16, e + 1, e)
        m = np.where(m == 16, 8, m)
        q[big] = 8 * (e + 1) + (m - 8)
    if (q > 255).any():
        raise ValueError("a count too large for the entropy model (more than 2^34 codes in a stream)")
    return q.astype(np.uint8)


def dequantize_counts(q: np.ndarray) -> np.ndarray:
    """The integer counts the coder's model uses (see :func:`quantize_counts`), int64."""
    q = q.astype(np.int64)
    e = (q >> 3) - 1
    return np.where(q < 16, q, (8 + (q & 7)) << np.maximum(e, 0))


def _model(hists: list[tuple[int, np.ndarray]]) -> torch.Tensor:
    parts = []
    for lo, counts in hists:
        parts += [np.array([lo], "<u2").view(np.uint8), np.array([counts.size], "<u4").view(np.uint8),
                  quantize_counts(counts)]
    return torch.from_numpy(np.concatenate(parts)) if parts else torch.zeros(0, dtype=torch.uint8)


def model_len(packed: torch.Tensor, streams: Streams) -> int:
    """The byte count of the model :func:`encode` would store."""
    return sum(6 + counts.size for counts in (_histogram(s)[1] for s in _stream_symbols(packed, streams)))


def _entropy(counts: np.ndarray) -> float:
    n = counts.sum()
    p = counts[counts > 0] / n if n else counts[:0]
    return float(-(p * np.log2(p)).sum() * n)


def bound_bits(packed: torch.Tensor, streams: Streams) -> float:
    """The entropy bound of ``packed`` under the per-stream model: Σ n_s·H_s bits plus the model's bytes."""
    hists = [_histogram(s) for s in _stream_symbols(packed, streams)]
    return sum(_entropy(c) for _, c in hists) + 8.0 * sum(6 + c.size for _, c in hists)


@dataclass
class Coded:
    """The entropy-coded form of one tensor's packed codes: ``coded`` (uint8; rANS: whole 32-bit words), ``model``
    (uint8: the rANS histograms, or the byte length of each pcodec stream), the rANS bound (bits: Σ n·H over the
    streams + the histograms' bytes) and ``codec``, the coder (:data:`ANS` or :data:`PCO`)."""

    coded: torch.Tensor
    model: torch.Tensor
    bound_bits: float
    codec: list = field(default_factory=lambda: list(ANS))
    crc: int = 0
    """CRC-32 of the codes as the coder checks them on decoding: the packed codes (rANS) or the symbols of the
    streams as pcodec stores them (uint8/uint16 little-endian, streams in order)."""

    @property
    def nbytes(self) -> int:
        return self.coded.numel() + self.model.numel()


def _categorical(constriction, q: np.ndarray):
    return constriction.stream.model.Categorical(dequantize_counts(q).astype(np.float64), perfect=False)


def encode(packed: torch.Tensor, streams: Streams, coder: str | None = None) -> Coded:
    """Entropy-code the packed code streams of one tensor: pcodec when that is at most :data:`PCO_SLACK` times the
    rANS bound and smaller than the packed codes, else the smaller of pcodec and rANS (see the module docstring);
    ``coder`` ("ans" or "pco") forces one (tests, benchmarks)."""
    _constriction(reading=False)  # both coders are needed to choose; a missing one fails here, whatever the codes
    symbols = _stream_symbols(packed, streams)
    hists = [_histogram(s) for s in symbols]
    model = _model(hists)
    bound = sum(_entropy(c) for _, c in hists) + 8.0 * model.numel()
    packed_crc = zlib.crc32(memoryview(packed.numpy()))
    if coder == "ans":
        return Coded(coded=_ans_encode(symbols, hists), model=model, bound_bits=bound, crc=packed_crc)
    widths = [w for w, _ in streams]
    coded, lengths = pco_codec.encode(symbols, widths)
    fast = Coded(coded=coded, model=lengths, bound_bits=bound, codec=list(PCO),
                 crc=pco_codec.symbols_crc(symbols, widths))
    if coder == "pco" or (8.0 * fast.nbytes <= PCO_SLACK * bound and fast.nbytes < packed.numel()):
        return fast  # (a tensor is stored coded only when that is smaller than packed: else rANS may still be)
    ans = Coded(coded=_ans_encode(symbols, hists), model=model, bound_bits=bound, crc=packed_crc)
    return ans if ans.nbytes < fast.nbytes else fast


def _ans_encode(symbols: list[np.ndarray], hists: list[tuple[int, np.ndarray]]) -> torch.Tensor:
    cs = _constriction(reading=False)
    coder = cs.stream.stack.AnsCoder()
    for sym, (lo, counts) in reversed(list(zip(symbols, hists, strict=True))):  # a stack: last stream first
        if counts.size > 1:
            coder.encode_reverse((sym - lo).astype(np.int32), _categorical(cs, quantize_counts(counts)))
    words = coder.get_compressed().astype("<u4", copy=False)
    return torch.from_numpy(words.view(np.uint8).copy())


def _parse_model(model: np.ndarray, streams: Streams, name: str) -> list[tuple[int, np.ndarray]]:
    hists, at = [], 0
    for width, count in streams:
        if at + 6 > model.size:
            raise CheckpointError(f"tensor {name!r}: its entropy model is shorter than its {len(streams)} stream(s)")
        lo, k = int(model[at:at + 2].view("<u2")[0]), int(model[at + 2:at + 6].view("<u4")[0])
        q = model[at + 6:at + 6 + k]
        at += 6 + k
        if q.size != k or lo + k > 2**width or (k and q[-1] == 0) or (k and q[0] == 0) or bool(count) != bool(k):
            raise CheckpointError(f"tensor {name!r}: its entropy model does not describe {count} symbols of "
                                  f"{width} bits")
        hists.append((lo, q))
    if at != model.size:
        raise CheckpointError(f"tensor {name!r}: its entropy model has {model.size - at} byte(s) too many")
    return hists


def decode(coded: torch.Tensor, model: torch.Tensor, streams: Streams, name: str = "tensor",
           codec: list | None = None, crc: int | None = None) -> list[torch.Tensor]:
    """The symbols of each code stream of one tensor (fresh int32 tensors, the input of
    :func:`learnq.code_packing.codes_from_streams`) from its coded bytes and model (inverse of :func:`encode`);
    ``codec``: the grid's ``"codec"`` (:data:`ANS`, the default, or :data:`PCO`); ``crc``: the recorded CRC-32
    (:attr:`Coded.crc`) the decoded symbols are checked against."""
    if codec is not None and list(codec) not in CODERS:
        raise CheckpointError(f"tensor {name!r}: codec {codec!r}, which this learnq does not know")
    if codec is not None and list(codec) == PCO:
        raw = pco_codec.decode(coded, model, streams, name)
        got = pco_codec.symbols_crc(raw, [w for w, _ in streams])
        symbols = [torch.from_numpy(s).to(torch.int32) for s in raw]
        lib = "pcodec"
    else:
        symbols = _ans_decode(coded, model, streams, name)
        got = 0
        for (width, _), sym in zip(streams, symbols, strict=True):  # rANS files record the packed codes' CRC-32
            if sym.numel():
                got = zlib.crc32(memoryview(pack_checked(sym, width).numpy()), got)
        lib = "constriction"
    if crc is not None and got != crc:
        raise CheckpointError(f"tensor {name!r}: its entropy-coded codes decode to other codes than were written "
                              f"(CRC-32 mismatch; another {lib} version?); read it with the learnq and {lib} that "
                              "wrote it")
    return symbols


def _ans_decode(coded: torch.Tensor, model: torch.Tensor, streams: Streams, name: str) -> list[torch.Tensor]:
    cs = _constriction(reading=True)
    hists = _parse_model(model.numpy(), streams, name)
    raw = coded.numpy()
    if raw.size % 4:
        raise CheckpointError(f"tensor {name!r}: its {raw.size} coded bytes are not whole 32-bit words")
    words = raw.view("<u4")
    coder = cs.stream.stack.AnsCoder(words.astype(np.uint32) if sys.byteorder != "little" else words.view(np.uint32))
    out = []
    for (_, count), (lo, q) in zip(streams, hists, strict=True):
        if not count:
            out.append(torch.zeros(0, dtype=torch.int32))
        elif q.size == 1:
            out.append(torch.full((count,), lo, dtype=torch.int32))
        else:
            out.append(torch.from_numpy(coder.decode(_categorical(cs, q), count)).add_(lo))
    if not coder.is_empty():
        raise CheckpointError(f"tensor {name!r}: its coded bytes hold more than its {sum(c for _, c in streams)} "
                              "symbols")
    return out


__all__ = ["ANS", "CODECS", "CODERS", "Coded", "PCO", "PCO_SLACK", "Streams", "bound_bits", "check_codec", "decode",
           "dequantize_counts", "encode", "model_len", "quantize_counts"]
