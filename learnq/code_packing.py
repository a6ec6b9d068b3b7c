"""The packed code streams of a quantized tensor: codes <-> bytes (DiffQ seeds/003 §3.3: a b-bit weight costs b bits).

:func:`pack_codes` bit-packs a :class:`~learnq.grid.QuantizedTensor`'s codes (minus ``qmin``) with
:mod:`learnq.packing`: one stream at ``bits`` for a plain tensor, one index per ``d``-vector for a palettized one
(:mod:`learnq.palette`), and for DiffQ's per-group widths one stream per width, widths ascending, the groups of each
width in their order. :func:`unpack_codes` is its inverse (:func:`split_streams` then :func:`codes_from_streams`, which
also takes the streams an entropy decoder gives), :func:`codes_nbytes` its byte count and :func:`code_streams` the
``(width, symbol count)`` of each stream (what :mod:`learnq.entropy_codec` codes).
:mod:`learnq.file_layout` places these bytes in the model file.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from learnq import entropy_codec
from learnq.errors import QuantizationError
from learnq.granularity import Granularity
from learnq.grid import MAX_BITS, QuantizedTensor
from learnq.packing import pack, pack_checked, packed_nbytes, unpack


def offset_stored(qt: QuantizedTensor) -> bool:
    """False when every offset is +0.0 (bit pattern zero), so leaving it out of the file changes no value."""
    return bool((qt.offset.detach().float().contiguous().view(torch.int32) != 0).any())


def group_widths(qt: QuantizedTensor, name: str) -> torch.Tensor:
    """``qt.group_bits`` checked (whole numbers in 1..16, one per group), int64 on the CPU."""
    gb = qt.group_bits.detach().cpu().reshape(-1)
    n = qt.granularity.num_groups(qt.shape)
    if gb.numel() != n:
        raise QuantizationError(f"{name}: group_bits has {gb.numel()} values for {n} groups")
    if gb.is_floating_point() and not bool((gb == gb.round()).all()):
        raise QuantizationError(f"{name}: group_bits must be whole numbers, got {gb.tolist()[:8]}...")
    gb = gb.to(torch.int64)
    if bool(((gb < 1) | (gb > MAX_BITS)).any()):
        raise QuantizationError(f"{name}: every group width must be from 1 to {MAX_BITS} bits")
    return gb


def pack_codes(qt: QuantizedTensor, name: str = "tensor") -> torch.Tensor:
    """The packed codes of ``qt`` (uint8, 1-D); checks that every code fits its width."""
    if qt.palette is not None:
        stored = qt.stored_codes().detach().cpu().to(torch.int64)
        d, k = qt.vector_dim, int(qt.palette.shape[1])
        vectors = stored.reshape(-1, d)
        if not bool((vectors == vectors[:, :1]).all()):
            raise QuantizationError(f"{name}: the codes of a palettized tensor must be equal within each {d}-vector")
        if vectors.numel() and (int(vectors.min()) < 0 or int(vectors.max()) >= k):
            raise QuantizationError(f"{name}: palette indices must lie in [0, {k - 1}]")
        return pack(vectors[:, 0].contiguous(), qt.bits)
    if qt.group_bits is None:
        stored = qt.stored_codes().detach().cpu().reshape(-1)
        if not stored.numel():
            return torch.zeros(0, dtype=torch.uint8)
        if stored.dtype in (torch.uint16, torch.uint32, torch.uint64) or stored.is_floating_point():
            stored = stored.to(torch.int64)  # aminmax and the packer take int8..int64 (and codes given as floats)
        top = 2**qt.bits - 1
        low, high = (int(v) for v in torch.aminmax(stored))  # one pass for both ends
        if low < 0 or high > top:
            raise QuantizationError(f"{name}: codes - qmin must lie in [0, {top}] for {qt.bits} bits; "
                                    f"found [{low}, {high}] (check qmin and bits)")
        return pack_checked(stored, qt.bits)
    stored = (qt.codes if qt.qmin == 0 else qt.stored_codes()).detach().cpu()  # read only: no copy for qmin 0
    if stored.dtype in (torch.uint16, torch.uint32, torch.uint64) or stored.is_floating_point():
        stored = stored.to(torch.int64)
    widths = group_widths(qt, name)
    rows = qt.granularity.view(stored)  # (n_groups, group_len)
    mask = qt.granularity.group_mask(qt.shape)
    if bool(mask.all()):
        return _pack_full_groups(rows, widths, name)
    limit = (2**widths - 1).unsqueeze(1)
    bad = (rows < 0) | (rows > limit)
    if bool((bad if bool(mask.all()) else bad[mask]).any()):
        raise QuantizationError(f"{name}: some codes - qmin do not fit the width of their group (group_bits)")
    parts = []
    for w, block, keep in _width_blocks(widths, rows, mask):  # one stream per width, widths ascending
        flat = block.reshape(-1) if keep is None else block[keep]
        parts.append(pack_checked(flat, w) if flat.numel() else torch.zeros(0, dtype=torch.uint8))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)


def _pack_full_groups(rows: torch.Tensor, widths: torch.Tensor, name: str) -> torch.Tensor:
    """:func:`pack_codes` of full groups: the groups of each width gathered in order (NumPy's stable sort of the
    one-byte widths, a radix sort: the permutation ``torch.argsort(stable=True)`` gives, in a tenth of the time),
    each width's block range-checked by one ``aminmax`` and packed as one stream, widths ascending."""
    w = widths.numpy().astype(np.uint8)  # 1..16, checked by group_widths
    order = np.argsort(w, kind="stable")
    values, starts = np.unique(w[order], return_index=True)
    ordered = rows.index_select(0, torch.from_numpy(order))
    ends = [*starts[1:].tolist(), len(order)]
    parts = []
    for width, start, end in zip(values.tolist(), starts.tolist(), ends, strict=True):
        block = ordered[start:end].reshape(-1)
        low, high = (int(v) for v in torch.aminmax(block))
        if low < 0 or high > 2**width - 1:
            raise QuantizationError(f"{name}: some codes - qmin do not fit the width of their group (group_bits)")
        parts.append(pack_checked(block, width))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)


def _width_blocks(widths: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor):
    """``(width, rows of the groups of that width, their mask or None when full)`` per width, widths ascending and
    the groups of each in their order (one stable sort instead of a boolean selection per width)."""
    order = torch.argsort(widths, stable=True)
    values, counts = torch.unique_consecutive(widths[order], return_counts=True)
    ordered, full = rows[order], bool(mask.all())
    omask = None if full else mask[order]
    start = 0
    for w, c in zip(values.tolist(), counts.tolist(), strict=True):
        yield w, ordered[start:start + c], None if omask is None else omask[start:start + c]
        start += c


def codes_nbytes(shape: tuple[int, ...], bits: int, granularity: Granularity, group_bits: torch.Tensor | None) -> int:
    """Byte count of the packed codes for this grid."""
    numel = math.prod(shape)
    if group_bits is None:
        return packed_nbytes(numel, bits)
    per_group = granularity.group_mask(shape).sum(dim=1)
    widths = group_bits.to(torch.int64).reshape(-1)
    return sum(packed_nbytes(int(per_group[widths == w].sum()), w) for w in widths.unique().tolist())


def unpack_codes(packed: torch.Tensor, shape: tuple[int, ...], bits: int, qmin: int, granularity: Granularity,
                 group_bits: torch.Tensor | None) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: int32 codes of ``shape``."""
    streams = split_streams(packed, code_streams(shape, bits, granularity, group_bits))
    return codes_from_streams(streams, shape, qmin, granularity, group_bits)


def split_streams(packed: torch.Tensor, streams: entropy_codec.Streams) -> list[torch.Tensor]:
    """The symbols of each packed stream (``streams``: ``(width, count)``, :func:`code_streams`), fresh int32."""
    out, start = [], 0
    for width, count in streams:
        nbytes = packed_nbytes(count, width)
        out.append(unpack(packed[start:start + nbytes], width, count) if count else torch.zeros(0, dtype=torch.int32))
        start += nbytes
    return out


def codes_from_streams(streams: list[torch.Tensor], shape: tuple[int, ...], qmin: int, granularity: Granularity,
                       group_bits: torch.Tensor | None) -> torch.Tensor:
    """int32 codes of ``shape`` from the symbols of each stream (fresh int32 tensors, :func:`split_streams` or an
    entropy decoder's; the first one is shifted in place for a tensor without per-group widths)."""
    if group_bits is None:
        codes = streams[0].reshape(shape)
        return codes.add_(qmin) if qmin else codes
    widths = group_bits.to(torch.int64).reshape(-1)
    mask = granularity.group_mask(shape)
    order = torch.argsort(widths, stable=True)  # the groups in file order: widths ascending (see pack_codes)
    _, counts = torch.unique_consecutive(widths[order], return_counts=True)
    full = bool(mask.all())
    omask = None if full else mask[order]
    ordered = torch.zeros(mask.shape, dtype=torch.int32)
    first = 0
    for c, codes in zip(counts.tolist(), streams, strict=True):
        if omask is None:
            ordered[first:first + c] = codes.view(c, mask.shape[1])
        else:
            ordered[first:first + c][omask[first:first + c]] = codes
        first += c
    rows = torch.empty_like(ordered)
    rows[order] = ordered
    if granularity.kind == "axis":
        axis = granularity.axis % len(shape)
        moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
        codes = rows.reshape(moved).movedim(0, axis)
    else:
        codes = rows.reshape(-1)[:math.prod(shape)].reshape(shape)
    return (codes + qmin).to(torch.int32).contiguous()


def code_streams(shape: tuple[int, ...], bits: int, granularity: Granularity, group_bits: torch.Tensor | None,
                 vector_dim: int = 1) -> entropy_codec.Streams:
    """``(width, symbol count)`` of each packed code stream of a tensor, in file order (see :func:`pack_codes`)."""
    numel = math.prod(shape)
    if group_bits is None:
        return [(bits, numel // vector_dim)]
    per_group = granularity.group_mask(shape).sum(dim=1)
    widths = group_bits.to(torch.int64).reshape(-1)
    return [(w, int(per_group[widths == w].sum())) for w in widths.unique().tolist()]
