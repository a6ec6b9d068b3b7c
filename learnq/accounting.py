"""Size accounting, per tensor, honestly: naive, stored, entropy-coded and zlib-compressed (DiffQ seeds/003 §3.3,
Eq. 12). :mod:`learnq.size` is the public face (``size_report`` of a model, a file or a path).

Per tensor of a model (or of a learnq model file; see :mod:`learnq.checkpoint` for the layout):

* ``naive_bits``: Σ bits·numel of the codes (each group at its own width when the tensor has DiffQ's per-group
  widths), plus 32 bits per stored float32 value (a step and an offset per group, or, for a tensor with
  ``value_range``, the two values of the range) and the bits of the stored group widths (``bits_for_range`` of the
  smallest and largest width, per group). For a DiffQ tensor this is Eq. 12 without its 8-bit width field (the
  file keeps that in its JSON header): ``2·32 + (d/g)·C' + Σ_s n_s·b̃_s`` with ``C' <= C``. A palettized tensor
  (DKM, k-means, iPQ; :mod:`learnq.palette`) counts ``bits`` per index (one per ``d``-vector) plus its LUT at the
  LUT's own width (16 or 32 bits per value). A float tensor counts 8·nbytes.
* ``stored_bytes``: the bytes of its slices in the file (packed codes and widths round up to whole bytes).
* ``entropy_bits``: ``H(codes)·numel`` (the empirical Shannon entropy of the codes, what an ideal entropy coder of
  independent symbols reaches; per index of a palettized tensor) plus the other stored bytes' bits as they are
  (steps, offsets, range, widths, palettes, floats).
* ``packed_bytes``: the bytes of its slices in the packed format (codes bit-packed), whatever codec wrote it.
* ``bound_bits``: the entropy bound of the file's entropy coder (:mod:`learnq.entropy_codec`): ``Σ_s n_s·H_s`` over
  its packed code streams (one per code width) plus the coder's model (its histograms, 6 + one byte a value per
  stream), at most the packed codes' bits (the codec keeps a tensor packed when coding would not make it smaller,
  e.g. 16-bit codes whose histogram outweighs the gain), plus the other stored bytes' bits. What ``codec="ans"``
  reaches up to a few bytes per tensor with rANS (pcodec, which it stores where that is within 2 % of it, can be
  below it: its model is smaller than the histogram); ``stored_bytes`` is what it did reach (``codec``: "ans" or
  "pco" when the tensor is entropy-coded on disk, else "packed").
* ``zlib_bytes``: zlib at level :data:`ZLIB_LEVEL` (1) of the packed codes plus the other stored bytes as they are.
  Level 1, not 9: packed codes are nearly random bytes, on which level 9 saves 2-3 % more (4-bit codes of 4M
  Gaussian weights: 1,378,402 bytes at levels 6 and 9, 1,424,130 at level 1) at 2.7x the time (533 ms against
  195 ms); the entropy bound above is the number that says how compressible the codes are.

Sizes are computed when asked for (``learnq.save(..., report=True)``, :func:`learnq.size.size_report`,
``ModelFile.size``, ``learnq inspect``, the pipeline's reports), never on a plain save.

Totals are sums; the file on disk adds the safetensors header (8 bytes + JSON, a few KiB at most) to
``stored_bytes``. ``float32_bytes`` is what the same tensors take as float32 (4 bytes per value; integer buffers at
their own size).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch

from learnq import entropy_codec
from learnq.file_layout import Encoded, Entry, dtype_name, encode
from learnq.grid import QuantizedTensor

ZLIB_LEVEL = 1
"""The zlib level of ``zlib_bytes`` (see the module docstring for why 1)."""
_BINCOUNT_SPAN = 2**24  # codes spread wider than this (never a quantized tensor's) are counted by torch.unique


@dataclass
class TensorSize:
    """Sizes of one tensor; ``granularity`` and ``method`` are None for a tensor stored as is."""

    name: str
    shape: tuple[int, ...]
    numel: int
    bits: int
    granularity: str | None
    method: str | None
    naive_bits: int
    stored_bytes: int
    entropy_bits: float
    zlib_bytes: int
    kind: str = "quantized"
    dtype: str = "float32"
    palette: str | None = None  # a palettized tensor's LUT: "<groups>x<k>x<d> <dtype>"
    packed_bytes: int = 0
    bound_bits: float = 0.0
    codec: str = "packed"

    @property
    def float32_bytes(self) -> int:
        """What this tensor takes as float32 (integer buffers, e.g. BatchNorm's counter, at their own size)."""
        if self.kind == "float" and not self.dtype.startswith(("float", "bfloat")):
            return self.stored_bytes
        return 4 * self.numel


@dataclass
class SizeReport:
    """Per-tensor sizes and their totals; ``file_bytes`` is the size on disk when the report is of a file."""

    tensors: list[TensorSize]
    file_bytes: int | None = None

    @property
    def naive_bits(self) -> int:
        return sum(t.naive_bits for t in self.tensors)

    @property
    def naive_bytes(self) -> float:
        return self.naive_bits / 8

    @property
    def stored_bytes(self) -> int:
        return sum(t.stored_bytes for t in self.tensors)

    @property
    def entropy_bytes(self) -> float:
        return sum(t.entropy_bits for t in self.tensors) / 8

    @property
    def zlib_bytes(self) -> int:
        return sum(t.zlib_bytes for t in self.tensors)

    @property
    def packed_bytes(self) -> int:
        return sum(t.packed_bytes for t in self.tensors)

    @property
    def bound_bytes(self) -> float:
        return sum(t.bound_bits for t in self.tensors) / 8

    @property
    def float32_bytes(self) -> int:
        return sum(t.float32_bytes for t in self.tensors)

    @property
    def ratio(self) -> float:
        """float32 bytes over the file's bytes (over the stored bytes for a model not yet written)."""
        size = self.file_bytes if self.file_bytes is not None else self.stored_bytes
        return self.float32_bytes / size if size else math.inf

    @property
    def header_bytes(self) -> int | None:
        """What the file adds to the stored bytes: the safetensors header (None for a model not yet written)."""
        return None if self.file_bytes is None else self.file_bytes - self.stored_bytes

    def totals(self) -> dict[str, float | int | None]:
        return {"naive_bytes": self.naive_bytes, "stored_bytes": self.stored_bytes, "file_bytes": self.file_bytes,
                "header_bytes": self.header_bytes,
                "entropy_bytes": self.entropy_bytes, "zlib_bytes": self.zlib_bytes,
                "packed_bytes": self.packed_bytes, "bound_bytes": self.bound_bytes,
                "float32_bytes": self.float32_bytes, "ratio_vs_float32": self.ratio}

    def to_dict(self) -> dict:
        tensors = []
        for t in self.tensors:
            row = asdict(t)
            row["shape"] = list(t.shape)
            row["float32_bytes"] = t.float32_bytes
            tensors.append(row)
        return {"tensors": tensors, "totals": self.totals()}


def entropy_bits(codes: torch.Tensor) -> float:
    """Empirical Shannon entropy of the values of ``codes`` times their number: H·numel bits."""
    flat = codes.detach().reshape(-1)
    n = flat.numel()
    if n == 0:
        return 0.0
    flat = flat.cpu()
    if flat.is_floating_point() or flat.dtype == torch.bool:
        _, counts = torch.unique(flat, return_counts=True)
    else:  # integer codes: bincount over [min, max], 5-20x faster than unique; the same counts in the same order
        low, high = int(flat.min()), int(flat.max())
        if high - low > _BINCOUNT_SPAN:
            _, counts = torch.unique(flat, return_counts=True)
        else:
            counts = torch.bincount((flat.to(torch.int64) - low), minlength=1)
            counts = counts[counts > 0]
    p = counts.double() / n
    return float(-(p * torch.log2(p)).sum()) * n


def tensor_size(name: str, value: Entry, encoded: Encoded | None = None,
                on_disk: tuple[int, str] | None = None) -> TensorSize:
    """Sizes of one entry; ``encoded`` (what :func:`learnq.file_layout.encode` made of it) saves encoding again;
    ``on_disk`` (the bytes of its slices and its codec, from a file) says how a file stores it."""
    enc = encoded if encoded is not None else encode(name, value)
    packed = sum(t.numel() * t.element_size() for _, t in enc.parts())
    if enc.coded is not None:
        packed += enc.codes.numel() - enc.coded.nbytes  # type: ignore[union-attr]
    stored, codec = on_disk if on_disk is not None else (
        packed if enc.coded is None else packed - enc.codes.numel() + enc.coded.nbytes,  # type: ignore[union-attr]
        "packed" if enc.coded is None else enc.coded.codec[0])
    if isinstance(value, torch.Tensor):
        return TensorSize(name=name, shape=tuple(value.shape), numel=value.numel(), bits=8 * value.element_size(),
                          granularity=None, method=None, naive_bits=8 * stored, stored_bytes=stored,
                          entropy_bits=8.0 * stored, zlib_bytes=stored, kind="float", dtype=dtype_name(value.dtype),
                          packed_bytes=stored, bound_bits=8.0 * stored, codec="packed")
    qt: QuantizedTensor = value
    codes = enc.codes.numpy().tobytes()  # type: ignore[union-attr]
    pal = None if qt.palette is None else f"{'x'.join(map(str, qt.palette.shape))} {dtype_name(qt.palette.dtype)}"
    side = packed - len(codes)  # packed widths and float32 steps/offsets/range
    bound = enc.coded.bound_bits if enc.coded is not None else (
        entropy_codec.bound_bits(enc.codes, enc.streams) if len(codes) else 0.0)  # type: ignore[arg-type]
    bound = min(bound, 8.0 * len(codes))  # the codec keeps a tensor packed when coding would not make it smaller
    params = enc.params  # float32 steps/offsets/range, or a palette (float32 or float16)
    naive = enc.code_bits + enc.width_bits + 8 * params.numel() * params.element_size()  # type: ignore[union-attr]
    return TensorSize(name=name, shape=qt.shape, numel=qt.codes.numel(), bits=qt.bits, granularity=str(qt.granularity),
                      method=qt.method, naive_bits=naive, stored_bytes=stored,
                      entropy_bits=entropy_bits(qt.index_codes()) + 8.0 * side,
                      zlib_bytes=len(zlib.compress(codes, ZLIB_LEVEL)) + side,
                      kind="quantized", dtype=dtype_name(qt.dtype), palette=pal, packed_bytes=packed,
                      bound_bits=bound + 8.0 * side, codec=codec)


def report_for(entries: Mapping[str, Entry], file_bytes: int | None = None,
               encoded: Mapping[str, Encoded] | None = None,
               on_disk: Mapping[str, tuple[int, str]] | None = None) -> SizeReport:
    """The size report of ``entries`` (name -> QuantizedTensor or tensor); ``on_disk``: bytes and codec of each
    tensor in a file."""
    encoded, on_disk = encoded or {}, on_disk or {}
    return SizeReport([tensor_size(k, v, encoded.get(k), on_disk.get(k)) for k, v in entries.items()], file_bytes)


__all__ = ["ZLIB_LEVEL", "SizeReport", "TensorSize", "entropy_bits", "report_for", "tensor_size"]
