"""The data of a learnq model file: each tensor's slices of the per-dtype blobs, their bytes, and back.

The layout is described in :mod:`learnq.checkpoint` (which reads and writes the header). This module turns one
tensor into the contents of its slices (:func:`encode`: bit-packed codes, packed group widths, float32 steps and
offsets or the value range) and back (:func:`decode`), parses the file's tensor records and places their slices in
the blobs (:func:`place_records`), and checks the blobs the safetensors header declares against them
(:func:`locate`). Codes are bit-packed by :mod:`learnq.code_packing` (DiffQ seeds/003 §3.3: a b-bit weight costs b
bits); a tensor with ``value_range`` (DiffQ's eval grid, Eq. 6 at the rounded widths) stores only its range, its
steps and offsets being :func:`learnq.grid.range_group_params` of it, here and in DiffQ's own forward. A palettized
tensor (:mod:`learnq.palette`: DKM, k-means, iPQ) stores its indices, one per ``d``-vector at ``bits`` each, in the
``uint8`` slice and its LUT, ``(n_groups, k, d)`` values, in a slice of the blob of the LUT's dtype (``float32`` or
``float16``); its grid record says ``"palette": [k, d, dtype]``. With ``codec="ans"`` (:mod:`learnq.entropy_codec`)
the packed code streams are entropy-coded when that makes the tensor smaller: the ``uint8`` slice then holds the
packed widths and the coded bytes, a third slice (``uint8``) the coder's model (rANS: the per-stream histograms;
pcodec: the byte length of each stream), and the grid record names the coder, ``"codec": ["ans", 1]`` or
``["pco", 1]``.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import torch

from learnq import entropy_codec
from learnq.code_packing import (
    code_streams,
    codes_from_streams,
    codes_nbytes,
    group_widths,
    offset_stored,
    pack_codes,
    unpack_codes,
)
from learnq.errors import CheckpointError, QuantizationError
from learnq.granularity import Granularity
from learnq.grid import MAX_BITS, QuantizedTensor, bits_for_range, check_bits, range_group_params
from learnq.packing import pack, packed_nbytes, unpack
from learnq.palette import PALETTE_DTYPES, check_vectors

# the blobs of packed widths and codes (or coded ones), of steps, offsets and ranges, and of entropy models
PACKED, PARAMS, MODEL = "uint8", "float32", "uint8"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
BLOBS = {"bool": "BOOL", "uint8": "U8", "int8": "I8", "int16": "I16", "int32": "I32", "int64": "I64",  # safetensors
         "uint16": "U16", "uint32": "U32", "uint64": "U64", "float16": "F16", "bfloat16": "BF16", "float32": "F32",
         "float64": "F64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "complex64": "C64"}
GRID_DEFAULTS: dict[str, Any] = {"method": "minmax", "scheme": "symmetric", "qmin": 0, "granularity": "tensor",
                                 "dtype": "float32", "offset": False, "range": False, "widths": None, "extra": {},
                                 "palette": None, "codec": None}

Entry = QuantizedTensor | torch.Tensor


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
    params_blob: str = PARAMS  # the blob of ``params`` (a palette's own dtype)
    streams: entropy_codec.Streams | None = None  # (width, count) of each packed code stream
    coded: entropy_codec.Coded | None = None  # the entropy-coded codes (codec "ans"), stored instead of ``codes``
    codes_crc: int = 0  # CRC-32 the decoding is checked against, recorded with coded codes (Coded.crc)

    def parts(self) -> list[tuple[str, torch.Tensor]]:
        """(blob, 1-D tensor) of each of its slices, in file order."""
        if self.grid is None:
            return [(dtype_name(self.data.dtype), self.data)]  # type: ignore[union-attr]
        body = self.codes if self.coded is None else self.coded.coded
        packed = body if self.widths is None else torch.cat([self.widths, body])  # type: ignore[list-item]
        out = [(PACKED, packed), (self.params_blob, self.params)]
        if self.coded is not None:
            out.append((MODEL, self.coded.model))
        return out  # type: ignore[return-value]

    def record_tail(self) -> list[int]:
        """What its file record holds after the grid index: the byte count of its packed codes (per-group widths
        only), then, when entropy-coded, the coded byte count, the model length and the packed codes' CRC-32."""
        tail = [] if self.widths is None else [self.codes.numel()]  # type: ignore[union-attr]
        if self.coded is not None:
            tail += [self.coded.coded.numel(), self.coded.model.numel(), self.codes_crc]
        return tail


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


def encode(name: str, value: Entry, codec: str = "packed") -> Encoded:
    """What the file stores for one tensor (checks bits, widths, codes, float32 steps and the value range); with
    ``codec="ans"`` its codes are entropy-coded when that makes the tensor smaller (:mod:`learnq.entropy_codec`)."""
    enc = _encode(name, value)
    if enc.grid is None:
        return enc
    qt: QuantizedTensor = value  # type: ignore[assignment]
    enc.streams = code_streams(qt.shape, qt.bits, qt.granularity, None if qt.group_bits is None else
                               group_widths(qt, name), qt.vector_dim if qt.palette is not None else 1)
    if entropy_codec.check_codec(codec) == "ans" and enc.codes.numel():  # type: ignore[union-attr]
        coded = entropy_codec.encode(enc.codes, enc.streams)  # type: ignore[arg-type]
        if coded.nbytes < enc.codes.numel():  # type: ignore[union-attr]
            enc.coded, enc.codes_crc = coded, coded.crc
            enc.grid = {**enc.grid, "codec": coded.codec}  # type: ignore[dict-item]
    return enc


def _encode(name: str, value: Entry) -> Encoded:
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
    enc = Encoded(codes=codes, code_bits=qt.code_bits())
    if qt.palette is not None:
        pal = qt.palette.detach().cpu()
        if not bool(torch.isfinite(pal).all()):
            raise QuantizationError(f"{name}: its palette has NaN or Inf values")
        grid["palette"] = [int(pal.shape[1]), int(pal.shape[2]), dtype_name(pal.dtype)]
        enc.params, enc.params_blob = pal.reshape(-1).contiguous(), dtype_name(pal.dtype)
        grid["extra"] = qt.extra
        enc.grid = {k: v for k, v in grid.items() if k not in GRID_DEFAULTS or v != GRID_DEFAULTS[k]}
        return enc
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
    if g["codec"] is not None and g["codec"] not in entropy_codec.CODERS:
        raise ValueError(f"codec {g['codec']!r}, which this learnq does not know (it reads "
                         f"{', '.join(map(str, entropy_codec.CODERS))}); "
                         "read the file with the learnq that wrote it")
    if g["palette"] is not None:
        k, d, pdtype = g["palette"]
        if type(k) is not int or type(d) is not int or not 1 <= k <= 2 ** g["bits"] or d < 1 or \
                pdtype not in PALETTE_DTYPES or g["widths"] is not None or g["range"] or g["qmin"] != 0:
            raise ValueError(f"bad palette {g['palette']!r}")
    return g


def params_blob(grid: dict) -> str:
    """The blob of a quantized tensor's second slice: float32 (steps, offsets, range), or its palette's dtype."""
    return PARAMS if grid["palette"] is None else grid["palette"][2]


def slice_counts(grid: dict, shape: tuple[int, ...], code_bytes: int | None,
                 coded_bytes: int | None = None) -> tuple[int, int]:
    """Lengths of a quantized tensor's uint8 slice (bytes) and float32 slice (values); ``code_bytes`` is the byte
    count of its codes, recorded for per-group widths (None otherwise), ``coded_bytes`` that of its entropy-coded
    codes (codec "ans"; None otherwise)."""
    n = grid["granularity"].num_groups(shape)
    if grid["palette"] is not None:
        k, d, _ = grid["palette"]
        check_vectors(shape, grid["granularity"], d)
        codes = packed_nbytes(math.prod(shape) // d, grid["bits"]) if coded_bytes is None else coded_bytes
        return codes, n * k * d
    params = 2 if grid["range"] else n * (2 if grid["offset"] else 1)
    if grid["widths"] is None:
        return (packed_nbytes(math.prod(shape), grid["bits"]) if coded_bytes is None else coded_bytes), params
    codes = int(code_bytes or 0) if coded_bytes is None else coded_bytes
    return packed_nbytes(n, grid["widths"][1]) + codes, params


def decode(name: str, grid: dict, shape: tuple[int, ...], code_bytes: int | None, packed: torch.Tensor,
           params: torch.Tensor, coded: tuple[torch.Tensor, int] | None = None) -> QuantizedTensor:
    """The quantized tensor ``name`` from its checked uint8 and float32 slices (inverse of :func:`encode`);
    ``coded``: the uint8 model slice and the packed codes' CRC-32 of an entropy-coded tensor."""
    gran, n = grid["granularity"], grid["granularity"].num_groups(shape)
    if grid["palette"] is not None:
        k, d, _ = grid["palette"]
        if coded is None:
            indices = unpack(packed, grid["bits"], math.prod(shape) // d)
        else:
            indices = entropy_codec.decode(packed, coded[0], code_streams(shape, grid["bits"], gran, None, d), name,
                                           grid["codec"], coded[1])[0]
        if indices.numel() and int(indices.max()) >= k:
            raise CheckpointError(f"tensor {name!r} has palette indices past its {k} entries")
        return QuantizedTensor.from_palette(indices, params.reshape(n, k, d), shape, gran, grid["bits"],
                                            method=grid["method"], dtype=DTYPES[grid["dtype"]],
                                            extra=dict(grid["extra"]))
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
    if coded is None:
        codes = unpack_codes(packed, shape, grid["bits"], grid["qmin"], gran, group_bits)
    else:  # the decoder's symbols straight into codes, checked against the recorded CRC-32
        streams = entropy_codec.decode(packed, coded[0], code_streams(shape, grid["bits"], gran, group_bits), name,
                                       grid["codec"], coded[1])
        codes = codes_from_streams(streams, shape, grid["qmin"], gran, group_bits)
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
