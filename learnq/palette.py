"""Palettes: a weight as a lookup table of k d-long vectors plus one index per vector (weight clustering).

The representation shared by DKM (Cho et al. 2021, "DKM: Differentiable k-Means Clustering Layer for Neural Network
Compression", ICLR 2022; METHODS.md §6-7; seeds/000 §4.4, Fig. 3, Table 6), post-training k-means palettization and
iPQ (Stock et al. 2020, product quantization: a codebook of block vectors per layer; METHODS.md §7).

* **Vectors**: the tensor's values in C order, split into consecutive ``d``-long vectors (``w.reshape(-1, d)``, the
  convention of the multi-dimensional DSMM loss, :mod:`learnq.regularizers.dsmm`). For a linear weight these run along
  the input features of one output row (iPQ's blocks); ``d = 1`` is scalar palettization.
* **Palettes**: one per group of a :class:`learnq.granularity.Granularity` (``tensor``: one per tensor; ``axis:0``:
  one per output channel; ``group:G``: one per run of G consecutive values, i.e. per G/row-length output channels),
  a ``(n_groups, k, d)`` float32 or float16 tensor (the LUT). A vector must lie inside one group: ``d`` divides the
  group length (and the number of values).
* **Indices**: one per vector, in ``0..k-1``, stored bit-packed at ``bits = ceil(log2 k)`` bits each
  (:mod:`learnq.file_layout`). In memory a :class:`learnq.grid.QuantizedTensor` keeps ``codes`` at the tensor's
  shape, every value carrying its vector's index, so granularity-based code (sizes, masks) reads it unchanged.

``ŵ[v] = palette[group(v), index(v)]`` (a lookup; exact in any dtype the palette converts to). The nearest palette
entry (squared Euclidean distance, ties to the lowest index) is :func:`nearest`, computed in chunks of vectors so
that its ``(chunk, k)`` distance matrix stays bounded whatever the tensor's size.
"""

from __future__ import annotations

import math

import torch

from learnq.errors import QuantizationError
from learnq.granularity import Granularity

PALETTE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
CHUNK_ELEMENTS = 1 << 22  # distance entries per chunk of :func:`nearest` (16 MiB of float32)


def check_vectors(shape: tuple[int, ...], granularity: Granularity, dim: int, name: str = "tensor") -> None:
    """Refuse a vector length that splits a vector across two palette groups (or leaves a partial vector)."""
    numel = math.prod(shape)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise QuantizationError(f"{name}: the vector length must be an integer >= 1, got {dim!r}")
    if numel % dim:
        raise QuantizationError(f"{name}: {numel} values do not split into vectors of {dim}; choose a dim that "
                                "divides the number of values (or leave this tensor out)")
    if granularity.kind == "axis":
        if granularity._axis_for(tuple(shape)) != 0:
            raise QuantizationError(f"{name}: per-axis palettes take axis 0 (output channels), not {granularity}")
        row = numel // max(1, shape[0])
        if row % dim:
            raise QuantizationError(f"{name}: a row of {row} values does not split into vectors of {dim}")
    elif granularity.kind == "group" and granularity.group_size % dim:
        raise QuantizationError(f"{name}: palette groups of {granularity.group_size} values do not split into "
                                f"vectors of {dim}")


def vector_groups(shape: tuple[int, ...], granularity: Granularity, dim: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """The palette group of every vector (int64, ``(numel/dim,)``)."""
    if granularity.kind == "tensor":
        return torch.zeros(math.prod(shape) // dim, dtype=torch.int64, device=device)
    return granularity.group_index(shape, device).reshape(-1, dim)[:, 0].contiguous()


def lookup(indices: torch.Tensor, palette: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``palette[groups, indices]`` as float32 ``(n_vectors, d)``."""
    return palette.float()[groups, indices.long()]


def expand_indices(indices: torch.Tensor, dim: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Per-vector indices -> int32 codes of ``shape`` (every value carries its vector's index)."""
    return indices.to(torch.int32).repeat_interleave(dim).reshape(shape).contiguous()


def vector_indices(codes: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`expand_indices`: the first code of every vector."""
    return codes.reshape(-1, dim)[:, 0]


def palette_dequantize(codes: torch.Tensor, palette: torch.Tensor, granularity: Granularity,
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ŵ of a palettized tensor (``codes`` at the tensor's shape), cast to ``dtype``."""
    dim = palette.shape[2]
    shape = tuple(codes.shape)
    groups = vector_groups(shape, granularity, dim, codes.device)
    return lookup(vector_indices(codes, dim), palette, groups).reshape(shape).to(dtype)


def nearest(vectors: torch.Tensor, palette: torch.Tensor, groups: torch.Tensor,
            chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Index of the nearest palette vector of every row of ``vectors`` ``(n, d)`` (int64 ``(n,)``), squared
    Euclidean distance in float32, ties to the lowest index; in chunks of ``chunk_elements // (k·d)`` rows."""
    pal = palette.float()
    n, k = vectors.shape[0], pal.shape[1]
    step = max(1, chunk_elements // (k * pal.shape[2]))
    out = torch.empty(n, dtype=torch.int64, device=vectors.device)
    single = pal.shape[0] == 1
    for start in range(0, n, step):
        x = vectors[start:start + step].float()
        if single:  # (x - c)² directly: the expanded x² - 2x·c + c² cancels badly near a centroid
            dist = (x.unsqueeze(1) - pal[0].unsqueeze(0)).pow(2).sum(-1)
        else:
            dist = (x.unsqueeze(1) - pal[groups[start:start + step]]).pow(2).sum(-1)
        out[start:start + step] = dist.argmin(dim=1)
    return out


def index_bits(k: int) -> int:
    """Bits per index of a k-entry palette (at least 1)."""
    return max(1, math.ceil(math.log2(k)))


__all__ = ["CHUNK_ELEMENTS", "PALETTE_DTYPES", "check_vectors", "expand_indices", "index_bits", "lookup", "nearest",
           "palette_dequantize", "vector_groups", "vector_indices"]
