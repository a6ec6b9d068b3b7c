"""The tensor records of a learnq model file and where their bytes are (the layout: :mod:`learnq.checkpoint`).

A record is ``[name, shape, crc32, dtype]`` for a tensor stored as is and ``[name, shape, crc32, grid index]`` (plus
the byte count of its packed codes when it has per-group widths, then, when its codes are entropy-coded, the coded
byte count, the byte count of its model and the CRC-32 of its packed codes) for a quantized one;
``[name, shape, crc32, "tied", first]`` names a tied parameter already stored under ``first`` (an earlier record,
same shape and crc32; no bytes).
Slice offsets are not stored: :func:`place_records` follows the records through the per-dtype blobs, :func:`locate`
checks the blobs the safetensors header declares against them (names, dtypes, shapes, extents, tiling) and
:func:`decode_record` turns a checked record's slices back into its tensor (:func:`learnq.file_layout.decode`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from learnq.errors import CheckpointError, LearnqError
from learnq.file_layout import BLOBS, MODEL, PACKED, Entry, decode, params_blob, parse_grid, slice_counts


# -- records and slices ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slice:
    """Bytes ``[start, stop)`` of the file, inside blob ``blob``."""

    blob: str
    start: int
    stop: int

    @property
    def nbytes(self) -> int:
        return self.stop - self.start


def damaged(path: str, what: str) -> CheckpointError:
    """The error for a file whose ``what`` does not check out."""
    return CheckpointError(f"{path!r}: {what} is corrupted; the file was damaged after it was written")


@dataclass
class Record:
    """One record of the file: the tensor's name, shape, checksum, how to decode it and its slices (blob, first
    element, element count)."""

    name: str
    shape: tuple[int, ...]
    crc: int
    dtype: str | None = None  # a tensor stored as is
    grid: dict | None = None  # a quantized tensor: its grid, defaults filled in
    code_bytes: int | None = None  # of a tensor with per-group widths
    coded: tuple[int, int, int] | None = None  # entropy-coded: (coded bytes, model length, CRC-32 of the decoding)
    tied: str | None = None  # the earlier record holding this tied parameter's bytes
    slices: list[tuple[str, int, int]] = field(default_factory=list)


def parse_record(rec: Any, grids: list) -> Record:
    """A record -> a Record with its element count per blob (the first elements are placed by place_records)."""
    if not isinstance(rec, list) or len(rec) < 4:
        raise ValueError("a record is a list [name, shape, crc32, dtype or grid, ...]")
    name, shape, crc, kind, *more = rec
    shape = tuple(shape)
    if not isinstance(name, str) or not all(type(s) is int and s >= 0 for s in shape) or type(crc) is not int or \
            not (isinstance(kind, str) or (type(kind) is int and kind >= 0)):
        raise ValueError("bad record")
    if kind == "tied":
        if len(more) != 1 or not isinstance(more[0], str):
            raise ValueError("a tied record is [name, shape, crc32, 'tied', first name]")
        return Record(name, shape, crc, tied=more[0])
    if isinstance(kind, str):
        if kind not in BLOBS or more:
            raise ValueError(f"dtype {kind!r}")
        return Record(name, shape, crc, dtype=kind, slices=[(kind, 0, math.prod(shape))])
    grid = parse_grid(grids[kind])
    want = (grid["widths"] is not None) + 3 * (grid["codec"] is not None)
    if len(more) != want or not all(type(c) is int and c >= 0 for c in more):
        raise ValueError(f"code byte counts {more!r}")
    code_bytes = more[0] if grid["widths"] is not None else None
    coded = tuple(more[-3:]) if grid["codec"] is not None else None
    packed, params = slice_counts(grid, shape, code_bytes, None if coded is None else coded[0])
    slices = [(PACKED, 0, packed), (params_blob(grid), 0, params)] + ([] if coded is None else [(MODEL, 0, coded[1])])
    return Record(name, shape, crc, grid=grid, code_bytes=code_bytes, coded=coded, slices=slices)  # type: ignore


def place_records(path: str, info: dict) -> tuple[list[Record], dict[str, int]]:
    """Every record as a Record with its slices placed, and the element count of every blob."""
    items: list[Record] = []
    names: set[str] = set()
    counts: dict[str, int] = {}
    for i, rec in enumerate(info["tensors"]):
        label = rec[0] if isinstance(rec, list) and rec and isinstance(rec[0], str) else f"#{i}"
        try:
            item = parse_record(rec, info["grids"])
        except (LearnqError, IndexError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path!r}: the metadata of tensor {label!r} is malformed ({exc})") from exc
        if item.name in names:
            raise CheckpointError(f"{path!r}: tensor {item.name!r} is listed twice in the metadata")
        if item.tied is not None:
            first = next((it for it in items if it.name == item.tied and it.tied is None), None)
            if first is None or first.shape != item.shape or first.crc != item.crc:
                raise CheckpointError(f"{path!r}: the metadata of tensor {item.name!r} is malformed (tied to "
                                      f"{item.tied!r}, which is not an earlier tensor of the same shape and checksum)")
        placed = []
        for blob, _, count in item.slices:
            placed.append((blob, counts.get(blob, 0), count))
            counts[blob] = counts.get(blob, 0) + count
        item.slices = placed
        items.append(item)
        names.add(item.name)
    return items, counts


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def locate(path: str, header: dict, items: list[Record], counts: dict[str, int], start: int,
           data_len: int) -> dict[str, list[Slice]]:
    """Check the blobs against the records (names, dtypes, shapes, extents, tiling); each tensor's slices."""
    stored = {k: v for k, v in header.items() if k != "__metadata__"}
    extra = sorted(set(stored) - {b for b, c in counts.items() if c})
    if extra:
        raise CheckpointError(f"{path!r} stores tensor(s) {extra} that its metadata does not describe")
    first: dict[str, int] = {}
    spans = []
    for blob, count in counts.items():
        if not count:
            continue
        holders = [it.name for it in items if any(b == blob and c for b, _, c in it.slices)]
        spec = stored.get(blob)
        if spec is None:
            raise CheckpointError(f"{path!r}: tensor(s) {_names(holders)} are listed in the metadata but blob "
                                  f"{blob!r}, which holds them, is not stored in the file")
        size = count * getattr(torch, blob).itemsize
        try:
            lo, hi = (int(x) for x in spec["data_offsets"])
            intact = set(spec) == {"dtype", "shape", "data_offsets"} and spec["dtype"] == BLOBS[blob] and \
                spec["shape"] == [count] and hi - lo == size
        except (KeyError, TypeError, ValueError):
            intact = False
        if not intact:
            raise damaged(path, f"the header entry of blob {blob!r} (holding tensor(s) {_names(holders)})")
        first[blob] = lo
        spans.append((lo, hi))
    end = max((hi for _, hi in spans), default=0)
    if end > data_len:
        cut = [it.name for it in items
               if any(first[b] + (e + c) * getattr(torch, b).itemsize > data_len for b, e, c in it.slices if c)]
        raise CheckpointError(f"{path!r} is truncated: tensor(s) {_names(cut)} end past its last byte "
                              f"({end - data_len} byte(s) missing); write the file again")
    if end < data_len:
        raise CheckpointError(f"{path!r} has {data_len - end} unexpected byte(s) after its last tensor")
    spans.sort()
    if any(a[1] != b[0] for a, b in zip(spans, spans[1:], strict=False)) or (spans and spans[0][0] != 0):
        raise damaged(path, "its safetensors header (blobs overlap or leave gaps)")
    slices = {}
    for it in items:
        slices[it.name] = [Slice(b, start + first.get(b, 0) + e * getattr(torch, b).itemsize,  # empty blob: none
                                 start + first.get(b, 0) + (e + c) * getattr(torch, b).itemsize)
                           for b, e, c in it.slices]
    return slices


def decode_record(item: Record, data: bytes, slices: list[Slice]) -> Entry:
    """The tensor of one checked record, from its slices of ``data``."""
    parts = [torch.frombuffer(bytearray(data[s.start:s.stop]), dtype=getattr(torch, s.blob)) if s.nbytes else
             torch.zeros(0, dtype=getattr(torch, s.blob)) for s in slices]
    if item.grid is None:
        return parts[0].reshape(item.shape)
    coded = None if item.coded is None else (parts[2], item.coded[2])
    return decode(item.name, item.grid, item.shape, item.code_bytes, parts[0], parts[1], coded)


__all__ = ["Record", "Slice", "damaged", "decode_record", "locate", "parse_record", "place_records"]
