"""Uniform quantization grids: float tensor -> integer codes -> float tensor (METHODS.md §0).

One representation serves every grid: per group ``g`` a step ``scale[g]`` and an ``offset[g]``, and

    ŵ = q · scale + offset,    q an integer in [qmin, qmax].

The schemes differ only in how ``scale``, ``offset`` and ``[qmin, qmax]`` follow from a clipping range:

* ``symmetric`` (signed): ``Δ = α / (2^(b-1) - 1)``, ``q = clamp(round(w/Δ), -2^(b-1), 2^(b-1)-1)``, offset 0
  (``restricted=True`` uses ``±(2^(b-1)-1)``). With b = 1 the only sensible symmetric grid is the sign grid
  ``{-α, +α}``, which is LAPQ's 1-bit grid below.
* ``affine`` (min-max, DiffQ style): ``Δ = (max-min)/(2^b-1)``, ``q = round((w-min)/Δ)``, offset ``min``.
* ``unsigned`` (post-ReLU activations): range ``[0, c]``, ``Δ = c/(2^b-1)``, offset 0.
* ``lapq`` (LAPQ, seeds/001 §3): ``Δ = 2α/(2^b-1)``, ``q = round(clamp((w+α)/Δ, 0, 2^b-1))``, ``ŵ = qΔ - α``:
  2^b levels on [-α, α]; zero is not a level.

DiffQ's eval grid (seeds/003 §3, Eq. 6 at the rounded widths b̃) is the affine grid over ONE range [lo, hi] per
tensor with a width per group: ``scale_s = (hi - lo)/(2^b̃_s - 1)``, ``offset_s = lo`` (:func:`range_group_params`);
a :class:`QuantizedTensor` with ``value_range`` is stored in a model file as that range alone.

Rounding is to nearest (ties to even, as torch.round) or floor (the thesis's nested layer, seeds/004 §3.1).
Error bound: a value inside the clipping range comes back within Δ/2 (nearest) or Δ (floor).
A group whose values are all equal is stored exactly, as code 0 with offset equal to that value (no division by
zero). Arithmetic is float32 whatever the input dtype (float16 and bfloat16 work); dequantize returns the input dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from learnq.errors import ConfigError, QuantizationError
from learnq.granularity import Granularity

SCHEMES = ("symmetric", "affine", "unsigned", "lapq")
ROUNDINGS = ("nearest", "floor")
MAX_BITS = 16
FLOAT_BITS = 32  # "leave in float": the wbits/abits that quantize nothing, and the bits a float row reports


def check_bits(bits: object, name: str = "bits") -> int:
    """Validate a bit-width (an int in 1..16) and return it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise QuantizationError(f"{name} must be an integer from 1 to {MAX_BITS}, got {bits!r}")
    return bits


def check_tensor(w: torch.Tensor, name: str = "tensor") -> None:
    """Refuse what cannot be quantized: non-tensors, empty, non-float, NaN or Inf values."""
    if not isinstance(w, torch.Tensor):
        raise QuantizationError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.numel() == 0:
        raise QuantizationError(f"{name} is empty (shape {tuple(w.shape)}): there is nothing to quantize")
    if not w.is_floating_point():
        raise QuantizationError(f"{name} has dtype {w.dtype}; quantize a floating-point tensor")
    if not bool(torch.isfinite(w).all()):
        bad = int((~torch.isfinite(w)).sum())
        raise QuantizationError(f"{name} has {bad} NaN or Inf value(s); fix the weights (or the training) first")


@dataclass(frozen=True)
class GridSpec:
    """A uniform grid: bit-width, scheme, granularity and rounding. JSON round trip with to_dict/from_dict."""

    bits: int = 8
    scheme: str = "symmetric"
    granularity: Granularity = field(default_factory=Granularity)
    rounding: str = "nearest"
    restricted: bool = False

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.scheme not in SCHEMES:
            raise ConfigError(f"scheme {self.scheme!r} is unknown; use one of {', '.join(SCHEMES)}")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"rounding {self.rounding!r} is unknown; use 'nearest' or 'floor'")
        if not isinstance(self.granularity, Granularity):
            object.__setattr__(self, "granularity", Granularity.parse(self.granularity))
        if self.restricted and (self.scheme != "symmetric" or self.bits < 2):
            raise ConfigError("restricted=True applies to the symmetric scheme with bits >= 2 only")

    @property
    def sign_grid(self) -> bool:
        """True for the 1-bit symmetric grid, which is the two-level grid {-α, +α}."""
        return self.scheme == "symmetric" and self.bits == 1

    def qrange(self) -> tuple[int, int]:
        """Smallest and largest integer code."""
        if self.scheme == "symmetric" and not self.sign_grid:
            top = 2 ** (self.bits - 1) - 1
            return (-top if self.restricted else -top - 1), top
        return 0, 2**self.bits - 1

    def to_dict(self) -> dict:
        return {"bits": self.bits, "scheme": self.scheme, "granularity": str(self.granularity),
                "rounding": self.rounding, "restricted": self.restricted}

    @classmethod
    def from_dict(cls, data: dict) -> GridSpec:
        unknown = set(data) - {"bits", "scheme", "granularity", "rounding", "restricted"}
        if unknown:
            raise ConfigError(f"unknown grid key(s) {sorted(unknown)}")
        return cls(bits=data.get("bits", 8), scheme=data.get("scheme", "symmetric"),
                   granularity=Granularity.parse(data.get("granularity", "tensor")),
                   rounding=data.get("rounding", "nearest"), restricted=data.get("restricted", False))


@dataclass
class QuantParams:
    """Per-group step and offset, each a float32 tensor of shape (n_groups,): ŵ = q·scale + offset."""

    scale: torch.Tensor
    offset: torch.Tensor


def _as_groups(value: torch.Tensor | float, n: int, device: torch.device, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ConfigError(f"{name} has {t.numel()} values but the granularity has {n} groups")
    if not bool(torch.isfinite(t).all()):
        raise QuantizationError(f"{name} has NaN or Inf values")
    return t.clone()


def compute_params(w: torch.Tensor, spec: GridSpec, *, clip: torch.Tensor | float | None = None,
                   clip_low: torch.Tensor | float | None = None, name: str = "tensor") -> QuantParams:
    """Steps and offsets of ``spec``'s grid for ``w``.

    ``clip`` is the clipping magnitude α per group (a scalar or a ``(n_groups,)`` tensor): the grid covers
    [-α, α] (symmetric, lapq), [0, α] (unsigned) or [clip_low, clip] (affine). Without it the range is the
    min-max range of each group (max|w| for the symmetric grids).
    """
    check_tensor(w, name)
    g = spec.granularity
    rows = g.view(w.detach().float())  # (n_groups, group_len)
    n = rows.shape[0]
    lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
    constant = lo == hi
    if spec.scheme == "affine":
        low = lo if clip_low is None else _as_groups(clip_low, n, rows.device, "clip_low")
        high = hi if clip is None else _as_groups(clip, n, rows.device, "clip")
        if bool((high < low).any()):
            raise QuantizationError(f"{name}: the clipping range has max < min")
        scale = (high - low) / (2**spec.bits - 1)
        offset = low.clone()
    else:
        if clip is None:
            alpha = hi.clamp(min=0) if spec.scheme == "unsigned" else torch.maximum(hi.abs(), lo.abs())
        else:
            alpha = _as_groups(clip, n, rows.device, "clip")
            if bool((alpha < 0).any()):
                raise QuantizationError(f"{name}: the clipping value must be >= 0")
        if spec.scheme == "lapq" or spec.sign_grid:
            scale = 2 * alpha / (2**spec.bits - 1)
            offset = -alpha
        elif spec.scheme == "unsigned":
            scale = alpha / (2**spec.bits - 1)
            offset = torch.zeros_like(alpha)
        else:
            scale = alpha / spec.qrange()[1]
            offset = torch.zeros_like(alpha)
    # degenerate groups: all values equal (stored exactly as code 0) or a zero-width range
    scale = torch.where(constant | (scale <= 0), torch.ones_like(scale), scale)
    offset = torch.where(constant, lo, offset)
    return QuantParams(scale=scale.contiguous(), offset=offset.contiguous())


def quantize(w: torch.Tensor, spec: GridSpec, params: QuantParams) -> torch.Tensor:
    """Integer codes (int32, same shape as ``w``) of ``w`` on the grid."""
    g = spec.granularity
    scale = g.expand(params.scale, w.shape)
    offset = g.expand(params.offset, w.shape)
    x = (w.float() - offset) / scale
    x = torch.floor(x) if spec.rounding == "floor" else torch.round(x)
    qmin, qmax = spec.qrange()
    return x.clamp_(qmin, qmax).to(torch.int32)


def dequantize(codes: torch.Tensor, granularity: Granularity, params: QuantParams,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ŵ = q·scale + offset, computed in float32 then cast to ``dtype``."""
    scale = granularity.expand(params.scale, codes.shape)
    offset = granularity.expand(params.offset, codes.shape)
    return (codes.float() * scale + offset).to(dtype)


def fake_quantize(w: torch.Tensor, spec: GridSpec, params: QuantParams) -> torch.Tensor:
    """Quantize then dequantize (no gradient trick: see learnq.ste for straight-through versions)."""
    return dequantize(quantize(w, spec, params), spec.granularity, params, w.dtype)


def range_group_params(lo: torch.Tensor | float, hi: torch.Tensor | float, group_bits: torch.Tensor) -> QuantParams:
    """DiffQ's grid (seeds/003 §3, Eq. 6 with b̃): ``scale_s = (hi - lo)/(2^b_s - 1)``, ``offset_s = lo`` per group.

    ``group_bits`` holds the whole width of every group (any numeric dtype, shape (n_groups,)); ``lo``/``hi`` are the
    tensor's range (0-dim float32 tensors or floats). A zero step (``hi == lo``: a constant tensor, or one that
    underflows) becomes 1, so the tensor is stored exactly as code 0. DiffQ's eval forward and export and the model
    file's loader all call this one function, so the steps are the same bits wherever they are computed.
    """
    widths = torch.as_tensor(group_bits).reshape(-1).to(torch.int64)
    levels = (2**widths - 1).to(torch.float32)  # exact integers (at most 65535)
    low = torch.as_tensor(lo, dtype=torch.float32, device=widths.device).reshape(())
    high = torch.as_tensor(hi, dtype=torch.float32, device=widths.device).reshape(())
    scale = (high - low) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return QuantParams(scale=scale.contiguous(), offset=low.expand(widths.shape).clone())


def bits_for_range(qmin: int, qmax: int) -> int:
    """Bits needed to store every integer of [qmin, qmax] as an offset from qmin."""
    return max(1, math.ceil(math.log2(qmax - qmin + 1)))


@dataclass
class QuantizedTensor:
    """A quantized tensor as the model file stores it.

    ``codes`` (int32, the tensor's shape) are stored as ``codes - qmin`` in ``bits`` bits each; when ``group_bits``
    is given (DiffQ's learned bits per group), each group is stored with its own width instead.

    ``value_range`` (optional, float32 ``[lo, hi]``) says that ``scale`` and ``offset`` are
    ``range_group_params(lo, hi, widths)`` (widths: ``group_bits``, else ``bits`` for every group): the model file
    then stores these two values instead of a step and an offset per group (and checks that they give them).
    """

    codes: torch.Tensor
    scale: torch.Tensor
    offset: torch.Tensor
    granularity: Granularity
    bits: int
    qmin: int = 0
    scheme: str = "symmetric"
    method: str = "minmax"
    dtype: torch.dtype = torch.float32
    group_bits: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)
    value_range: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_bits(self.bits)
        n = self.granularity.num_groups(tuple(self.codes.shape))
        if self.scale.numel() != n or self.offset.numel() != n:
            raise QuantizationError(
                f"scale/offset have {self.scale.numel()}/{self.offset.numel()} values for {n} groups")
        if self.value_range is not None and self.value_range.numel() != 2:
            raise QuantizationError(f"value_range must hold 2 values [lo, hi], got {self.value_range.numel()}")

    def group_widths(self) -> torch.Tensor:
        """The width of every group: ``group_bits``, or ``bits`` for every group (int64, shape (n_groups,))."""
        if self.group_bits is not None:
            return self.group_bits.detach().reshape(-1).to(torch.int64)
        return torch.full((self.scale.numel(),), self.bits, dtype=torch.int64, device=self.scale.device)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)

    @property
    def params(self) -> QuantParams:
        return QuantParams(self.scale, self.offset)

    def dequantize(self) -> torch.Tensor:
        return dequantize(self.codes, self.granularity, self.params, self.dtype)

    def stored_codes(self) -> torch.Tensor:
        """Codes as the non-negative integers the file packs: ``codes - qmin``."""
        return self.codes - self.qmin


def quantize_tensor(w: torch.Tensor, spec: GridSpec, *, clip: torch.Tensor | float | None = None,
                    clip_low: torch.Tensor | float | None = None, method: str = "minmax",
                    name: str = "tensor") -> QuantizedTensor:
    """Quantize ``w`` on ``spec``'s grid (min-max range unless ``clip`` is given)."""
    params = compute_params(w, spec, clip=clip, clip_low=clip_low, name=name)
    codes = quantize(w, spec, params)
    qmin, _ = spec.qrange()
    return QuantizedTensor(codes=codes, scale=params.scale, offset=params.offset, granularity=spec.granularity,
                           bits=spec.bits, qmin=qmin, scheme=spec.scheme, method=method, dtype=w.dtype)
