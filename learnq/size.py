"""Model sizes, honestly: naive, stored, entropy-coded and zlib-compressed (DiffQ seeds/003 §3.3, Eq. 12).

Per tensor of a model (or of a learnq model file):

* ``naive_bits``: Σ bits·numel of the codes (each group at its own width when the tensor has DiffQ's per-group
  widths), plus 32 bits per stored scale and offset value and 8 bits per stored group width. DiffQ's Eq. 12 counts
  the same quantities (its ``2·32`` bits of min/max per tensor are our scale/offset; its per-group bit field is our
  8-bit width). A float tensor counts 8·nbytes.
* ``stored_bytes``: the bytes its tensors occupy in the file (packed codes round up to whole bytes per width).
* ``entropy_bits``: ``H(codes)·numel`` (the empirical Shannon entropy of the codes, what an ideal entropy coder of
  independent symbols reaches) plus the other stored tensors' bits as they are (scales, offsets, widths, floats).
* ``zlib_bytes``: zlib level 9 of the packed codes plus the other stored bytes as they are.

Totals are sums; the file on disk adds the safetensors header (8 bytes + JSON) to ``stored_bytes``.
``float32_bytes`` is what the same tensors take as float32 (4 bytes per value; integer buffers at their own size).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from learnq.checkpoint import Entry, ModelFile, model_entries, offset_stored, pack_codes, read
from learnq.errors import ConfigError
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

    def totals(self) -> dict[str, float | int | None]:
        return {"naive_bytes": self.naive_bytes, "stored_bytes": self.stored_bytes, "file_bytes": self.file_bytes,
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


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def tensor_size(name: str, value: Entry, packed: torch.Tensor | None = None) -> TensorSize:
    """Sizes of one entry; ``packed`` (its packed codes, if already computed) saves packing again."""
    if isinstance(value, torch.Tensor):
        nbytes = value.numel() * value.element_size()
        return TensorSize(name=name, shape=tuple(value.shape), numel=value.numel(), bits=8 * value.element_size(),
                          granularity=None, method=None, naive_bits=8 * nbytes, stored_bytes=nbytes,
                          entropy_bits=8.0 * nbytes, zlib_bytes=nbytes, kind="float", dtype=_dtype_name(value.dtype))
    qt: QuantizedTensor = value
    numel = qt.codes.numel()
    n_groups = qt.scale.numel()
    side = 4 * n_groups * (2 if offset_stored(qt) else 1)  # scale (+ offset) float32
    if qt.group_bits is None:
        code_bits = qt.bits * numel
    else:
        side += n_groups  # one uint8 width per group
        per_group = qt.granularity.group_mask(qt.shape).sum(dim=1)
        code_bits = int((per_group * qt.group_bits.detach().cpu().reshape(-1).to(torch.int64)).sum())
    if packed is None:
        packed = pack_codes(qt, name)
    raw = packed.detach().cpu().numpy().tobytes()
    return TensorSize(name=name, shape=qt.shape, numel=numel, bits=qt.bits, granularity=str(qt.granularity),
                      method=qt.method, naive_bits=code_bits + 8 * side, stored_bytes=len(raw) + side,
                      entropy_bits=entropy_bits(qt.codes) + 8.0 * side, zlib_bytes=len(zlib.compress(raw, 9)) + side,
                      kind="quantized", dtype=_dtype_name(qt.dtype))


def report_for(entries: Mapping[str, Entry], file_bytes: int | None = None,
               packed: Mapping[str, torch.Tensor] | None = None) -> SizeReport:
    """The size report of ``entries`` (name -> QuantizedTensor or tensor)."""
    packed = packed or {}
    return SizeReport([tensor_size(k, v, packed.get(k)) for k, v in entries.items()], file_bytes)


def size_report(model_or_file: nn.Module | ModelFile | str | os.PathLike) -> SizeReport:
    """Sizes of a model (as :func:`learnq.save` would write it), of a read :class:`ModelFile`, or of a file path."""
    if isinstance(model_or_file, nn.Module):
        return report_for(model_entries(model_or_file))
    if isinstance(model_or_file, (str, os.PathLike)):
        model_or_file = read(model_or_file)
    if isinstance(model_or_file, ModelFile):
        return report_for(model_or_file.entries, model_or_file.file_bytes)
    raise ConfigError(f"size_report takes a model, a ModelFile or a path, got {type(model_or_file).__name__}")
