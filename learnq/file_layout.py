"""The data of a learnq model file: each tensor's slices of the per-dtype blobs, their bytes, and back.

The layout is described in :mod:`learnq.checkpoint` (which reads and writes the header). This module turns one
tensor into the contents of its slices (:func:`encode`: bit-packed codes, packed group widths, float32 steps and
offsets or the value range) and back (:func:`decode`), parses the file's tensor records and places their slices in
the blobs (:func:`place_records`), and checks the blobs the safetensors header declares against them
(:func:`locate`). Codes are bit-packed with :mod:`learnq.packing` (DiffQ seeds/003 §3.3: a b-bit weight costs b
bits); a tensor with ``value_range`` (DiffQ's eval grid, Eq. 6 at the rounded widths) stores only its range, its
steps and offsets being :func:`learnq.grid.range_group_params` of it, here and in DiffQ's own forward.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from learnq.errors import CheckpointError, LearnqError, QuantizationError
from learnq.granularity import Granularity
from learnq.grid import MAX_BITS, QuantizedTensor, bits_for_range, check_bits, range_group_params
from learnq.packing import pack, packed_nbytes, unpack

PACKED, PARAMS = "uint8", "float32"  # the blobs of packed widths and codes, and of steps, offsets and ranges
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
BLOBS = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64",  # safetensors
         "uint16": "U16", "uint32": "U32", "uint64": "U64", "float16": "F16", "bfloat16": "BF16", "float32": "F32",
         "float64": "F64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "complex64": "C64"}
GRID_DEFAULTS: dict[str, Any] = {"method": "minmax", "scheme": "symmetric", "qmin": 0, "granularity": "tensor",
                                 "dtype": "float32", "offset": False, "range": False, "widths": None, "extra": {}}

Entry = QuantizedTensor | torch.Tensor


# -- codes <-> bytes --------------------------------------------------------------------------------------------
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
    stored = qt.stored_codes().detach().cpu().to(torch.int64)
    if qt.group_bits is None:
        top = 2**qt.bits - 1
        if stored.numel() and (int(stored.min()) < 0 or int(stored.max()) > top):
            raise QuantizationError(f"{name}: codes - qmin must lie in [0, {top}] for {qt.bits} bits; "
                                    f"found [{int(stored.min())}, {int(stored.max())}] (check qmin and bits)")
        return pack(stored.reshape(-1), qt.bits)
    widths = group_widths(qt, name)
    rows = qt.granularity.view(stored)  # (n_groups, group_len)
    mask = qt.granularity.group_mask(qt.shape)
    limit = (2**widths - 1).unsqueeze(1)
    if bool(((rows < 0) | (rows > limit))[mask].any()):
        raise QuantizationError(f"{name}: some codes - qmin do not fit the width of their group (group_bits)")
    parts = [pack(rows[widths == w][mask[widths == w]], w) for w in widths.unique().tolist()]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.uint8)


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
    numel = math.prod(shape)
    if group_bits is None:
        return (unpack(packed, bits, numel).reshape(shape) + qmin).to(torch.int32)
    widths = group_bits.to(torch.int64).reshape(-1)
    mask = granularity.group_mask(shape)
    rows = torch.zeros(mask.shape, dtype=torch.int32)
    start = 0
    for w in widths.unique().tolist():
        sel = widths == w
        count = int(mask[sel].sum())
        nbytes = packed_nbytes(count, w)
        block = torch.zeros((int(sel.sum()), mask.shape[1]), dtype=torch.int32)
        block[mask[sel]] = unpack(packed[start:start + nbytes], w, count).to(torch.int32)
        rows[sel] = block
        start += nbytes
    if granularity.kind == "axis":
        axis = granularity.axis % len(shape)
        moved = (shape[axis],) + tuple(s for i, s in enumerate(shape) if i != axis)
        codes = rows.reshape(moved).movedim(0, axis)
    else:
        codes = rows.reshape(-1)[:numel].reshape(shape)
    return (codes + qmin).to(torch.int32).contiguous()


# -- encode -----------------------------------------------------------------------------------------------------
@dataclass
class Encoded:
    """One tensor as the file stores it. Quantized: ``grid`` (its record's grid), ``codes`` (packed), ``widths``
    (packed group widths, or None), ``params`` (float32 steps and offsets, or the range); as is: ``data`` (flat)."""

    grid: dict | None = None
    codes: torch.Tensor | None = None
    widths: torch.Tensor | None = None
    params: torch.Tensor | None = None
    data: torch.Tensor | None = None
    code_bits: int = 0  # Σ bits·numel of the codes
    width_bits: int = 0  # bits of the group widths before rounding up to whole bytes

    def parts(self) -> list[tuple[str, torch.Tensor]]:
        """(blob, 1-D tensor) of each of its slices, in file order."""
        if self.grid is None:
            return [(dtype_name(self.data.dtype), self.data)]  # type: ignore[union-attr]
        packed = self.codes if self.widths is None else torch.cat([self.widths, self.codes])  # type: ignore[list-item]
        return [(PACKED, packed), (PARAMS, self.params)]  # type: ignore[list-item]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.detach().cpu().float().reshape(-1), b.detach().cpu().float().reshape(-1)
    return a.shape == b.shape and torch.equal(a.view(torch.int32), b.view(torch.int32))


def _range(qt: QuantizedTensor, widths: torch.Tensor, name: str) -> torch.Tensor:
    """``qt.value_range``, checked: two finite float32 values lo <= hi whose grid gives ``qt``'s steps and offsets."""
    vr = qt.value_range.detach().cpu().reshape(-1)  # type: ignore[union-attr]
    if vr.dtype != torch.float32 or not bool(torch.isfinite(vr).all()) or float(vr[0]) > float(vr[1]):
        raise QuantizationError(f"{name}: value_range must be two finite float32 values lo <= hi, got {vr.tolist()}")
    params = range_group_params(vr[0], vr[1], widths)
    if not (_same_bits(params.scale, qt.scale) and _same_bits(params.offset, qt.offset)):
        raise QuantizationError(f"{name}: its scale and offset are not range_group_params(value_range, widths) bit "
                                "for bit; set value_range=None to store them as they are")
    return vr.contiguous()


def encode(name: str, value: Entry) -> Encoded:
    """What the file stores for one tensor (checks bits, widths, codes, float32 steps and the value range)."""
    if isinstance(value, torch.Tensor):
        if dtype_name(value.dtype) not in BLOBS:
            raise CheckpointError(f"tensor {name!r} has dtype {value.dtype}, which a model file cannot store; "
                                  "convert it (e.g. to float32) before saving")
        return Encoded(data=value.detach().cpu().reshape(-1))
    qt = value
    check_bits(qt.bits, f"bits of {name}")
    if qt.scale.dtype != torch.float32 or qt.offset.dtype != torch.float32:
        raise QuantizationError(f"{name}: scale and offset must be float32 (the file stores float32), got "
                                f"{qt.scale.dtype} and {qt.offset.dtype}")
    grid: dict[str, Any] = {"bits": qt.bits, "method": qt.method, "scheme": qt.scheme, "qmin": qt.qmin,
                            "granularity": str(qt.granularity), "dtype": dtype_name(qt.dtype)}
    codes = pack_codes(qt, name)
    enc = Encoded(codes=codes, code_bits=qt.bits * qt.codes.numel())
    widths = qt.group_widths().cpu()
    if qt.group_bits is not None:
        widths = group_widths(qt, name)
        low, wbits = int(widths.min()), bits_for_range(int(widths.min()), int(widths.max()))
        grid["widths"] = [low, wbits]
        enc.widths = pack(widths - low, wbits)
        enc.width_bits = widths.numel() * wbits
        enc.code_bits = int((qt.granularity.group_mask(qt.shape).sum(dim=1) * widths).sum())
    if qt.value_range is not None:
        grid["range"] = True
        enc.params = _range(qt, widths, name)
    else:
        grid["offset"] = offset_stored(qt)
        scale = qt.scale.detach().cpu().reshape(-1)
        enc.params = torch.cat([scale, qt.offset.detach().cpu().reshape(-1)]) if grid["offset"] else scale
    grid["extra"] = qt.extra
    enc.grid = {k: v for k, v in grid.items() if k not in GRID_DEFAULTS or v != GRID_DEFAULTS[k]}
    return enc


def same_entry(a: Entry, b: Entry) -> bool:
    """Whether the file stores ``a`` and ``b`` identically (same grid, same bytes of codes, steps and data)."""
    ea, eb = encode("a", a), encode("b", b)
    if ea.grid != eb.grid:
        return False
    pa, pb = ea.parts(), eb.parts()
    if len(pa) != len(pb):
        return False
    return all(x == y and s.dtype == t.dtype and torch.equal(s.contiguous().view(torch.uint8),
                                                             t.contiguous().view(torch.uint8))
               for (x, s), (y, t) in zip(pa, pb, strict=True))


def crc32(t: torch.Tensor, crc: int = 0) -> int:
    """CRC-32 of the bytes of ``t`` (continuing ``crc``)."""
    return zlib.crc32(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()), crc)


# -- decode -----------------------------------------------------------------------------------------------------
def parse_grid(raw: Any) -> dict:
    """A grid record with its defaults filled in and its values checked (ValueError or LearnqError if bad)."""
    if not isinstance(raw, dict) or "bits" not in raw or not set(raw) <= {"bits", *GRID_DEFAULTS}:
        raise ValueError(f"bad grid {raw!r}")
    g = {**GRID_DEFAULTS, **raw}
    g["granularity"] = Granularity.parse(g["granularity"])
    check_bits(g["bits"])
    if g["dtype"] not in DTYPES or not isinstance(g["qmin"], int) or not isinstance(g["extra"], dict) or \
            not isinstance(g["scheme"], str) or not isinstance(g["method"], str):
        raise ValueError(f"bad grid {raw!r}")
    if g["widths"] is not None:
        low, wbits = g["widths"]
        check_bits(low)
        check_bits(wbits)
    return g


def slice_counts(grid: dict, shape: tuple[int, ...], code_bytes: int | None) -> tuple[int, int]:
    """Lengths of a quantized tensor's uint8 slice (bytes) and float32 slice (values); ``code_bytes`` is the byte
    count of its codes, recorded for per-group widths (None otherwise)."""
    n = grid["granularity"].num_groups(shape)
    params = 2 if grid["range"] else n * (2 if grid["offset"] else 1)
    if grid["widths"] is None:
        return packed_nbytes(math.prod(shape), grid["bits"]), params
    return packed_nbytes(n, grid["widths"][1]) + int(code_bytes or 0), params


def decode(name: str, grid: dict, shape: tuple[int, ...], code_bytes: int | None, packed: torch.Tensor,
           params: torch.Tensor) -> QuantizedTensor:
    """The quantized tensor ``name`` from its checked uint8 and float32 slices (inverse of :func:`encode`)."""
    gran, n = grid["granularity"], grid["granularity"].num_groups(shape)
    group_bits = None
    if grid["widths"] is not None:
        low, wbits = grid["widths"]
        width_bytes = packed_nbytes(n, wbits)
        widths = unpack(packed[:width_bytes], wbits, n) + low
        if bool((widths > MAX_BITS).any()):
            raise CheckpointError(f"tensor {name!r} has group widths outside 1..{MAX_BITS}")
        group_bits = widths.to(torch.uint8)
        packed = packed[width_bytes:]
        need = codes_nbytes(shape, grid["bits"], gran, group_bits)
        if need != code_bytes:
            raise CheckpointError(f"tensor {name!r} has group widths that need {need} bytes of codes, but its "
                                  f"metadata says {code_bytes}")
    codes = unpack_codes(packed, shape, grid["bits"], grid["qmin"], gran, group_bits)
    value_range = None
    if grid["range"]:
        if not bool(torch.isfinite(params).all()) or float(params[0]) > float(params[1]):
            raise CheckpointError(f"tensor {name!r} has the value range {params.tolist()}, not lo <= hi")
        value_range = params
        widths = group_bits if group_bits is not None else torch.full((n,), grid["bits"])
        derived = range_group_params(params[0], params[1], widths)
        scale, offset = derived.scale, derived.offset
    else:
        scale = params[:n]
        offset = params[n:] if grid["offset"] else torch.zeros(n, dtype=torch.float32)
    return QuantizedTensor(codes=codes, scale=scale, offset=offset, granularity=gran, bits=grid["bits"],
                           qmin=grid["qmin"], scheme=grid["scheme"], method=grid["method"],
                           dtype=DTYPES[grid["dtype"]], group_bits=group_bits, extra=dict(grid["extra"]),
                           value_range=value_range)


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
    if isinstance(kind, str):
        if kind not in BLOBS or more:
            raise ValueError(f"dtype {kind!r}")
        return Record(name, shape, crc, dtype=kind, slices=[(kind, 0, math.prod(shape))])
    grid = parse_grid(grids[kind])
    if (grid["widths"] is None) != (not more) or len(more) > 1 or not all(type(c) is int and c >= 0 for c in more):
        raise ValueError(f"code byte count {more!r}")
    code_bytes = more[0] if more else None
    packed, params = slice_counts(grid, shape, code_bytes)
    return Record(name, shape, crc, grid=grid, code_bytes=code_bytes, slices=[(PACKED, 0, packed), (PARAMS, 0, params)])


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
        slices[it.name] = [Slice(b, start + first[b] + e * getattr(torch, b).itemsize,
                                 start + first[b] + (e + c) * getattr(torch, b).itemsize) for b, e, c in it.slices]
    return slices


def decode_record(item: Record, data: bytes, slices: list[Slice]) -> Entry:
    """The tensor of one checked record, from its slices of ``data``."""
    parts = [torch.frombuffer(bytearray(data[s.start:s.stop]), dtype=getattr(torch, s.blob)) if s.nbytes else
             torch.zeros(0, dtype=getattr(torch, s.blob)) for s in slices]
    if item.grid is None:
        return parts[0].reshape(item.shape)
    return decode(item.name, item.grid, item.shape, item.code_bytes, *parts)


