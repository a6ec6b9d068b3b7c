"""Size accounting, per tensor, honestly: naive, stored, entropy-coded and zlib-compressed (DiffQ seeds/003 §3.3,
Eq. 12). :mod:`learnq.size` is the public face (``size_report`` of a model, a file or a path).

Per tensor of a model (or of a learnq model file; see :mod:`learnq.checkpoint` for the layout):

* ``naive_bits``: Σ bits·numel of the codes (each group at its own width when the tensor has DiffQ's per-group
  widths), plus 32 bits per stored float32 value (a step and an offset per group, or, for a tensor with
  ``value_range``, the two values of the range) and the bits of the stored group widths (``bits_for_range`` of the
  smallest and largest width, per group). For a DiffQ tensor this is Eq. 12 without its 8-bit width field (the
  file keeps that in its JSON header): ``2·32 + (d/g)·C' + Σ_s n_s·b̃_s`` with ``C' <= C``. A float tensor counts
  8·nbytes.
* ``stored_bytes``: the bytes of its slices in the file (packed codes and widths round up to whole bytes).
* ``entropy_bits``: ``H(codes)·numel`` (the empirical Shannon entropy of the codes, what an ideal entropy coder of
  independent symbols reaches) plus the other stored bytes' bits as they are (steps, offsets, range, widths, floats).
* ``zlib_bytes``: zlib level 9 of the packed codes plus the other stored bytes as they are.

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

from learnq.file_layout import Encoded, Entry, dtype_name, encode
from learnq.grid import QuantizedTensor


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
    _, counts = torch.unique(flat.cpu(), return_counts=True)
    p = counts.double() / n
    return float(-(p * torch.log2(p)).sum()) * n


def tensor_size(name: str, value: Entry, encoded: Encoded | None = None) -> TensorSize:
    """Sizes of one entry; ``encoded`` (what :func:`learnq.file_layout.encode` made of it) saves encoding again."""
    enc = encoded if encoded is not None else encode(name, value)
    stored = sum(t.numel() * t.element_size() for _, t in enc.parts())
    if isinstance(value, torch.Tensor):
        return TensorSize(name=name, shape=tuple(value.shape), numel=value.numel(), bits=8 * value.element_size(),
                          granularity=None, method=None, naive_bits=8 * stored, stored_bytes=stored,
                          entropy_bits=8.0 * stored, zlib_bytes=stored, kind="float", dtype=dtype_name(value.dtype))
    qt: QuantizedTensor = value
    codes = enc.codes.numpy().tobytes()  # type: ignore[union-attr]
    side = stored - len(codes)  # packed widths and float32 steps/offsets/range
    naive = enc.code_bits + enc.width_bits + 32 * enc.params.numel()  # type: ignore[union-attr]
    return TensorSize(name=name, shape=qt.shape, numel=qt.codes.numel(), bits=qt.bits, granularity=str(qt.granularity),
                      method=qt.method, naive_bits=naive, stored_bytes=stored,
                      entropy_bits=entropy_bits(qt.codes) + 8.0 * side, zlib_bytes=len(zlib.compress(codes, 9)) + side,
                      kind="quantized", dtype=dtype_name(qt.dtype))


def report_for(entries: Mapping[str, Entry], file_bytes: int | None = None,
               encoded: Mapping[str, Encoded] | None = None) -> SizeReport:
    """The size report of ``entries`` (name -> QuantizedTensor or tensor)."""
    encoded = encoded or {}
    return SizeReport([tensor_size(k, v, encoded.get(k)) for k, v in entries.items()], file_bytes)


__all__ = ["SizeReport", "TensorSize", "entropy_bits", "report_for", "tensor_size"]
