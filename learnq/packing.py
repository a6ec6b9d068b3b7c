"""Bit packing of integer quantization codes into a dense byte stream.

Implements no equation of a paper; it is the storage step behind the "true model size" of DiffQ (Défossez et al.,
2022, "Differentiable Model Compression via Pseudo Quantization Noise", Sec. 3: a b-bit weight costs b bits on
disk), and of every other method that stores integer codes.

Layout: the codes (flattened in C order) form one little-endian bit stream. Code ``i`` occupies stream bits
``[i * bits, (i + 1) * bits)``, least significant bit first, and stream bit ``k`` is bit ``k % 8`` of byte
``k // 8``. The last byte is padded with zero bits. So codes ``[1, 2, 3]`` at 2 bits are the single byte
``0b00_11_10_01 = 57``.

Speed: everything is a handful of whole-tensor integer operations (SWAR, "SIMD within a register"):

* 8 bits is a cast, 16 bits is a cast to uint16 whose bytes are read little-endian;
* 1..7 bits: 8 codes are put one per byte of an int64 word, then three shift/mask/or steps merge neighbouring
  lanes (8 -> 16 -> 32 -> 64-bit lanes) until the word holds the 8 codes back to back in its low ``bits`` bytes;
* 9..15 bits: 4 codes per int64 word (16-bit lanes), two merge steps, then two words (8 codes, ``8 * bits`` bits)
  are joined into ``bits`` bytes with one 128-bit shift written as two 64-bit ones.

Unpacking runs the same steps backwards. The word views assume a little-endian host (checked at import).
"""

from __future__ import annotations

import numbers
import sys

import torch

from learnq.errors import CheckpointError, QuantizationError

if sys.byteorder != "little":  # pragma: no cover - no big-endian host runs torch in practice
    raise ImportError("learnq.packing needs a little-endian host: its word views read bytes in little-endian order")

__all__ = ["pack", "unpack", "packed_nbytes"]

_INTEGER_DTYPES = (
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.uint16,
    torch.uint32,
    torch.uint64,
)
# Unsigned types with few kernels in torch: widened to int64 before min/max is taken.
_LIMITED_DTYPES = (torch.uint16, torch.uint32, torch.uint64)


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise QuantizationError(f"bits must be an int in 1..16, got {bits!r} of type {type(bits).__name__}")
    if not 1 <= int(bits) <= 16:
        raise QuantizationError(f"bits must be in 1..16, got {int(bits)}; use 1..16-bit codes or store them unpacked")
    return int(bits)


def packed_nbytes(numel: int, bits: int) -> int:
    """Number of bytes ``pack`` returns for ``numel`` codes of ``bits`` bits: ``ceil(numel * bits / 8)``."""
    b = _check_bits(bits)
    if isinstance(numel, bool) or not isinstance(numel, numbers.Integral) or int(numel) < 0:
        raise QuantizationError(f"numel must be an int >= 0, got {numel!r}")
    return (int(numel) * b + 7) // 8


def _check_range(flat: torch.Tensor, bits: int) -> None:
    values = flat.to(torch.int64) if flat.dtype in _LIMITED_DTYPES else flat
    lo_t, hi_t = torch.aminmax(values)
    lo, hi = int(lo_t.item()), int(hi_t.item())
    top = (1 << bits) - 1
    if lo < 0 or hi > top:
        raise QuantizationError(
            f"codes must lie in [0, {top}] for bits={bits}, got min={lo}, max={hi}; "
            f"clamp the codes or pack with more bits"
        )


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits - 1]`` into a 1-D uint8 tensor of ``ceil(numel * bits / 8)`` bytes.

    ``codes`` may have any shape (flattened in C order) and any integer dtype; the result is on ``codes.device``.
    Raises QuantizationError for ``bits`` outside 1..16, a non-integer dtype or a code out of range.
    """
    b = _check_bits(bits)
    if not isinstance(codes, torch.Tensor):
        raise QuantizationError(f"codes must be a torch.Tensor of integers, got {type(codes).__name__}")
    if codes.dtype not in _INTEGER_DTYPES:
        raise QuantizationError(
            f"codes must have an integer dtype (int8/16/32/64 or uint8/16/32/64), got {codes.dtype}; "
            f"round and cast the codes first"
        )
    flat = codes.reshape(-1)
    if flat.numel() == 0:
        return torch.empty(0, dtype=torch.uint8, device=flat.device)
    _check_range(flat, b)
    return pack_checked(flat, b)


def pack_checked(flat: torch.Tensor, b: int) -> torch.Tensor:
    """:func:`pack` of a non-empty 1-D integer tensor whose codes the caller checked to lie in [0, 2**b - 1]
    (the model file's encoder checks them once, with its own message)."""
    if b == 8:
        return flat.to(torch.uint8, copy=True)
    if b == 16:
        return flat.to(torch.uint16, copy=True).view(torch.uint8)
    if b < 8:
        return _pack_small(flat, b)
    return _pack_wide(flat, b)


_WORD_OF_BYTES = {1: torch.uint8, 2: torch.int16, 4: torch.int32}  # a group of 8 codes fills exactly one of these


def _write_groups(rows: torch.Tensor, n: int, b: int) -> torch.Tensor:
    """Copy the first ``b`` bytes of each group row into an exactly sized 1-D output (the tail group trimmed)."""
    nbytes = (n * b + 7) // 8
    out = torch.empty(nbytes, dtype=torch.uint8, device=rows.device)
    full = n // 8
    if full and b in _WORD_OF_BYTES and rows.shape[1] == 8:
        # one truncating cast of the int64 words (keeps their low b bytes) instead of a strided byte copy
        out[: full * b].view(_WORD_OF_BYTES[b]).copy_(rows[:full].view(torch.int64).view(-1))
    elif full:
        dest = out[: full * b].view(full, b)
        for k in range(b):  # column by column: torch copies long strided columns much faster than short rows
            dest[:, k].copy_(rows[:full, k])
    tail = nbytes - full * b
    if tail:
        out[full * b :].copy_(rows[full, :tail])
    return out


def _lane_mask(lane: int, width: int) -> int:
    """The low ``width`` bits of every ``lane``-bit lane of a 64-bit word."""
    return sum(((1 << width) - 1) << shift for shift in range(0, 64, lane))


def _merge(w: torch.Tensor, tmp: torch.Tensor, half: int, width: int, last: bool) -> None:
    """In every ``2 * half``-bit lane, turn halves ``x | y << half`` into ``x | y << width`` (x, y < 2**width).

    Needs ``width < half`` so that the word's sign bit is clear and ``>>`` shifts in zeros.
    """
    if 2 * width <= half:  # the shifted copy cannot land on the bits kept: shift, or, mask
        torch.bitwise_right_shift(w, half - width, out=tmp)
        w |= tmp
        if not last:  # in the last step the leftovers sit above the 8 packed codes and are never read
            w &= _lane_mask(2 * half, 2 * width)
    else:  # split off x, shift y down onto it, put x back
        torch.bitwise_and(w, _lane_mask(2 * half, half), out=tmp)
        w ^= tmp
        w >>= half - width
        w |= tmp


def _pack_small(flat: torch.Tensor, b: int) -> torch.Tensor:
    n = flat.numel()
    groups = (n + 7) // 8
    lanes = torch.empty(groups * 8, dtype=torch.uint8, device=flat.device)
    lanes[:n].copy_(flat)
    lanes[n:].zero_()
    w = lanes.view(torch.int64)  # one group of 8 codes per word, code j in byte j
    tmp = torch.empty_like(w)
    _merge(w, tmp, 8, b, last=False)  # 16-bit lanes hold 2 codes
    _merge(w, tmp, 16, 2 * b, last=False)  # 32-bit lanes hold 4 codes
    _merge(w, tmp, 32, 4 * b, last=True)  # the low 8b bits of the word hold the 8 codes
    return _write_groups(w.view(torch.uint8).view(groups, 8), n, b)


def _pack_wide(flat: torch.Tensor, b: int) -> torch.Tensor:
    n = flat.numel()
    groups = (n + 7) // 8
    lanes = torch.empty(groups * 8, dtype=torch.uint16, device=flat.device)
    lanes[:n].copy_(flat)
    lanes[n:].zero_()
    w = lanes.view(torch.int64)  # 4 codes per word, code j in 16-bit lane j
    tmp = torch.empty_like(w)
    _merge(w, tmp, 16, b, last=False)  # 32-bit lanes hold 2 codes
    _merge(w, tmp, 32, 2 * b, last=False)  # the low 4b <= 60 bits of the word hold 4 codes
    pairs = w.view(groups, 2)
    first, second = pairs[:, 0], pairs[:, 1]
    first |= torch.bitwise_left_shift(second, 4 * b)  # low 64 bits of the 8b-bit group (bits past 64 drop)
    second >>= 64 - 4 * b  # the rest; second >= 0 so the arithmetic shift is a logical one
    return _write_groups(pairs.view(torch.uint8).view(groups, 16), n, b)


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of ``pack``: a 1-D int32 tensor of ``numel`` codes, on ``packed.device``.

    Bytes after the first ``ceil(numel * bits / 8)`` are ignored. Raises CheckpointError if ``packed`` is not a
    1-D uint8 tensor or is too short, QuantizationError for ``bits`` outside 1..16.
    """
    b = _check_bits(bits)
    if isinstance(numel, bool) or not isinstance(numel, numbers.Integral) or int(numel) < 0:
        raise CheckpointError(f"numel must be an int >= 0, got {numel!r}; the stored code count is corrupted")
    n = int(numel)
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.uint8 or packed.dim() != 1:
        what = (
            f"{packed.dtype} tensor of shape {tuple(packed.shape)}"
            if isinstance(packed, torch.Tensor)
            else type(packed).__name__
        )
        raise CheckpointError(f"packed codes must be a 1-D uint8 tensor, got a {what}; the file is corrupted")
    nbytes = (n * b + 7) // 8
    if packed.numel() < nbytes:
        raise CheckpointError(
            f"packed codes hold {packed.numel()} bytes but {n} codes of {b} bits need {nbytes}; "
            f"the file is truncated or its metadata is wrong"
        )
    device = packed.device
    if n == 0:
        return torch.empty(0, dtype=torch.int32, device=device)
    data = packed[:nbytes]
    if data.stride(0) != 1:  # the word views below need densely stored bytes
        data = torch.empty(nbytes, dtype=torch.uint8, device=device).copy_(data)
    if b == 8:
        return data.to(torch.int32)
    if b == 16:
        if data.storage_offset() % 2 or not data.is_contiguous():
            data = data.clone()  # a dtype view needs an aligned start
        return data.view(torch.uint16).to(torch.int32)
    if b < 8:
        return _unpack_small(data, b, n)
    return _unpack_wide(data, b, n)


def _read_groups(data: torch.Tensor, n: int, b: int, width: int) -> torch.Tensor:
    """Spread ``b`` bytes per group of 8 codes into zero-padded rows of ``width`` bytes (inverse of _write_groups)."""
    groups = (n + 7) // 8
    full = n // 8
    tail = data.numel() - full * b
    if b in _WORD_OF_BYTES and width == 8:
        # the groups are whole b-byte words: pad the stream to whole words and widen them with one cast
        if tail or data.storage_offset() % b:
            padded = torch.zeros(groups * b, dtype=torch.uint8, device=data.device)
            padded[: data.numel()].copy_(data)
            data = padded
        words = data.view(_WORD_OF_BYTES[b]).to(torch.int64)
        if b > 1:
            words &= (1 << (8 * b)) - 1  # undo the sign extension of int16/int32
        return words.view(torch.uint8).view(groups, 8)
    rows = torch.zeros(groups, width, dtype=torch.uint8, device=data.device)
    if full:
        src = data[: full * b].view(full, b)
        for k in range(b):  # column by column: torch copies long strided columns much faster than short rows
            rows[:full, k].copy_(src[:, k])
    if full < groups:
        rows[full, :tail].copy_(data[full * b :])
    return rows


def _split(w: torch.Tensor, tmp: torch.Tensor, half: int, width: int) -> None:
    """Inverse of ``_merge``: in every ``2 * half``-bit lane, turn ``x | y << width`` into ``x | y << half``.

    Needs every bit of a lane above ``2 * width`` to be clear.
    """
    if 2 * width <= half:  # copy shifted up, or, keep the two fields
        torch.bitwise_left_shift(w, half - width, out=tmp)
        w |= tmp
        w &= _lane_mask(half, width)
    else:  # split off x, shift y up to its half, put x back
        torch.bitwise_and(w, _lane_mask(2 * half, width), out=tmp)
        w ^= tmp
        w <<= half - width
        w |= tmp


def _unpack_small(data: torch.Tensor, b: int, n: int) -> torch.Tensor:
    rows = _read_groups(data, n, b, 8)
    w = rows.view(torch.int64).view(-1)  # bits above 8b are zero
    tmp = torch.empty_like(w)
    _split(w, tmp, 32, 4 * b)  # 32-bit lanes hold 4 codes
    _split(w, tmp, 16, 2 * b)  # 16-bit lanes hold 2 codes
    _split(w, tmp, 8, b)  # one code per byte
    return w.view(torch.uint8)[:n].to(torch.int32)


def _unpack_wide(data: torch.Tensor, b: int, n: int) -> torch.Tensor:
    rows = _read_groups(data, n, b, 16)
    pairs = rows.view(torch.int64)  # (groups, 2): low and high 64 bits of each 8-code group
    first, second = pairs[:, 0], pairs[:, 1]
    carry = torch.bitwise_right_shift(first, 4 * b)
    carry &= (1 << (64 - 4 * b)) - 1  # logical shift: first may have its sign bit set
    second <<= 64 - 4 * b
    second |= carry
    first &= (1 << (4 * b)) - 1  # both words now hold 4 codes in their low 4b bits
    w = pairs.view(-1)
    tmp = torch.empty_like(w)
    _split(w, tmp, 32, 2 * b)  # 32-bit lanes hold 2 codes
    _split(w, tmp, 16, b)  # one code per 16-bit lane
    return w.view(torch.uint16)[:n].to(torch.int32)
