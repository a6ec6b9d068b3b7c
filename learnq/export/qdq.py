"""Which of learnq's grids ONNX's QuantizeLinear/DequantizeLinear can carry, and how (ONNX operators
QuantizeLinear-13 / DequantizeLinear-13, ``y = saturate(round(x / scale) + zero_point)`` and
``x̂ = (y - zero_point) · scale``, per tensor or per axis; int4/uint4/int16/uint16 from opset 21).

A learnq grid is ``ŵ = q · scale + offset`` (METHODS.md §0). DequantizeLinear computes ``(q' - zp) · scale``, so a
quantized tensor is carried as integer codes when, for every group, ``offset = -zp · scale`` with an integer ``zp``
that fits the integer type together with the codes (codes and zero point may be shifted by one integer ``k``:
``(q + k) - (zp + k) = q - zp``). :func:`plan_weight` checks this on the values themselves: it computes what
DequantizeLinear will compute, ``float32(q - zp) · scale``, and compares it with learnq's ŵ. Symmetric and unsigned
grids (zero point 0) come out bit for bit; a nonzero integer zero point agrees to float32 rounding (``exact`` False,
``max_abs_error`` says by how much). Anything else (affine min-max and DiffQ's range grids, LAPQ's grid where zero is
not a level, bias-corrected steps, codes wider than the integer types) is not expressible: the exporter writes ŵ as
a float initializer and the plan says why.

Activations (:func:`plan_activation`): every activation quantizer of learnq (:mod:`learnq.act`: the PTQ input
quantizers, PACT and the min-max observer) computes
``y = (clamp(round((x - offset) / scale) + zp, qmin, qmax) - zp) · scale + offset``; at 8 bits with offset 0 and a
positive scale this is exactly QuantizeLinear -> DequantizeLinear (uint8 for [0, 255], int8 for [-128, 127]).
Other widths are *emulated* with Div/Round/Clip/Mul, which computes the same formula in float32 (same division,
round half to even, same clamp), so the numbers do not change; only an integer engine cannot read them as 8-bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from learnq.act import ActivationQuantizer
from learnq.errors import ModelError, QuantizationError
from learnq.grid import QuantizedTensor

#: ONNX integer types for codes: name -> (smallest, largest, first opset whose Q/DQ accept it)
INT_TYPES: dict[str, tuple[int, int, int]] = {
    "int4": (-8, 7, 21), "uint4": (0, 15, 21), "int8": (-128, 127, 13), "uint8": (0, 255, 13),
    "int16": (-32768, 32767, 21), "uint16": (0, 65535, 21),
}
_NUMPY = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16, "int4": np.int8,
          "uint4": np.uint8}
_EPS32 = float(torch.finfo(torch.float32).eps)


@dataclass
class WeightPlan:
    """How one quantized tensor goes into the graph: ``codes`` (numpy, in ``dtype``'s range; for group
    granularity reshaped to (n_groups, group_size), padded) + ``scale`` + ``zero_point`` -> DequantizeLinear
    (``axis`` None: per tensor), then ``Reshape`` to ``shape`` (and a slice to ``numel``) when ``grouped``."""

    codes: np.ndarray
    dtype: str
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None
    shape: tuple[int, ...]
    grouped: bool
    exact: bool
    max_abs_error: float


@dataclass
class ActivationPlan:
    """An activation quantizer as numbers: ``y = (clamp(round((x - offset)/scale) + zp, qmin, qmax) - zp)·scale
    + offset``, times ``mask`` (0 where learnq's α is 0) when given. ``channel_axis`` None: per tensor. ``qtype``
    is the Q/DQ integer type, or None with ``reason`` when the quantizer is emulated."""

    source: str
    bits: int
    scale: np.ndarray
    zero_point: np.ndarray
    offset: np.ndarray
    qmin: int
    qmax: int
    channel_axis: int | None
    mask: np.ndarray | None
    qtype: str | None
    reason: str | None


def _grid_context(qt: QuantizedTensor) -> str:
    if qt.group_bits is not None or qt.value_range is not None or qt.method == "diffq":
        widths = qt.group_widths()
        return (f"DiffQ's grid: one range [lo, hi] with offset lo, per-group bits {int(widths.min())}.."
                f"{int(widths.max())}")
    if qt.scheme == "lapq":
        return "LAPQ's grid: levels at (q - (2^b-1)/2)·Δ, zero is not a level"
    if "bias_correction" in qt.extra:
        return "bias correction shifts every output channel by its own t_c"
    if qt.scheme == "affine":
        return "affine min-max grid: offset = the range's minimum"
    return f"{qt.scheme} grid"


def _pick_type(lo: int, hi: int, signed_first: bool, opset: int) -> tuple[str, int] | None:
    """The narrowest integer type (allowed at ``opset``) that holds [lo, hi] after one integer shift k."""
    widths = ("4", "8", "16")
    for width in widths:
        for name in ((f"int{width}", f"uint{width}") if signed_first else (f"uint{width}", f"int{width}")):
            tlo, thi, first = INT_TYPES[name]
            if opset < first or hi - lo > thi - tlo:
                continue
            shift = 0 if tlo <= lo and hi <= thi else (tlo - lo if lo < tlo else thi - hi)
            return name, shift
    return None


def plan_weight(qt: QuantizedTensor, opset: int) -> WeightPlan | str:
    """A :class:`WeightPlan` for ``qt`` at ``opset``, or the reason (a sentence) why ONNX cannot carry it."""
    scale = qt.scale.detach().float().cpu().reshape(-1)
    offset = qt.offset.detach().float().cpu().reshape(-1)
    codes = qt.codes.detach().cpu().to(torch.int64)
    gran = qt.granularity
    if not bool(torch.isfinite(scale).all()) or bool((scale <= 0).any()):
        return "a step is zero, negative or not finite; DequantizeLinear needs positive scales"
    zp = torch.round(-offset.double() / scale.double())
    if not bool(torch.isfinite(zp).all()) or bool((zp.abs() > 2**31).any()):
        return f"the offset is not an integer multiple of the step ({_grid_context(qt)})"
    zp = zp.to(torch.int64)
    ref = qt.dequantize().detach().float().cpu()
    got = (codes - gran.expand(zp, codes.shape)).float() * gran.expand(scale, codes.shape)
    err = float((got - ref).abs().max())
    size = max(float(ref.abs().max()), float(offset.abs().max()), float(scale.max()) * float(codes.abs().max()))
    if err > 4 * _EPS32 * size:
        return f"the offset is not an integer multiple of the step ({_grid_context(qt)})"
    lo, hi = min(int(codes.min()), int(zp.min())), max(int(codes.max()), int(zp.max()))
    picked = _pick_type(lo, hi, qt.qmin < 0 or lo < 0, opset)
    if picked is None:
        bits = int(np.ceil(np.log2(hi - lo + 1)))
        wider = ("; use --opset 21 for int16 codes" if opset < 21 and hi - lo <= 65535 else "")
        return (f"codes and zero point span [{lo}, {hi}] ({bits} bits): DequantizeLinear takes at most "
                f"{16 if opset >= 21 else 8}-bit integers at opset {opset}{wider}")
    dtype, shift = picked
    axis: int | None = None
    grouped = False
    flat_codes = codes + shift
    if gran.kind == "tensor":
        scale_out, zp_out = scale.reshape(()), (zp + shift).reshape(())
    elif gran.kind == "axis":
        axis = gran._axis_for(tuple(codes.shape))
        scale_out, zp_out = scale, zp + shift
    else:  # group:G -> (n_groups, G) rows, one step per row (axis 0), padded with the zero point
        grouped, axis = True, 0
        g, n = gran.group_size, scale.numel()
        flat = flat_codes.reshape(-1)
        pad = n * g - flat.numel()
        if pad:
            flat = torch.cat([flat, torch.full((pad,), int(zp[-1]) + shift, dtype=torch.int64)])
        flat_codes = flat.reshape(n, g)
        scale_out, zp_out = scale, zp + shift
    np_type = _NUMPY[dtype]
    return WeightPlan(codes=flat_codes.numpy().astype(np_type), dtype=dtype, scale=scale_out.numpy().astype(np.float32),
                      zero_point=zp_out.numpy().astype(np_type), axis=axis, shape=tuple(codes.shape),
                      grouped=grouped, exact=bool(torch.equal(got, ref)), max_abs_error=err)


def plan_activation(module: nn.Module, name: str) -> ActivationPlan:
    """The numbers of an enabled activation quantizer (any :class:`learnq.act.ActivationQuantizer`: PTQ input
    quantizer, PACT, observer in eval mode; its :meth:`~learnq.act.ActivationQuantizer.grid`, the numbers its own
    forward uses) and whether QuantizeLinear/DequantizeLinear can carry them. Raises ModelError for another module."""
    if not isinstance(module, ActivationQuantizer):
        raise ModelError(f"{name!r} ({type(module).__name__}) is not an activation quantizer learnq can export")
    try:
        grid = module.grid()
    except QuantizationError as exc:
        raise QuantizationError(f"activation quantizer {name!r} cannot be exported: {exc}") from exc
    scale = grid.scale.detach().float().cpu()
    offset = grid.offset.detach().float().cpu().expand_as(scale).clone()
    zp = grid.zero_point.detach().float().cpu().expand_as(scale)
    mask = None
    if bool((scale <= 0).any()):
        mask = (scale > 0).float()
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    reason = None
    qtype = {(0, 255): "uint8", (-128, 127): "int8"}.get((grid.qmin, grid.qmax))
    if module.bits != 8 or qtype is None:
        reason = (f"{module.bits}-bit activations: QuantizeLinear/DequantizeLinear carry 8-bit activations "
                  "(uint8/int8); emulated in float32 with Div/Round/Clip/Mul (same values)")
    elif bool((offset != 0).any()):
        reason = "the grid has an offset that is not an integer zero point; emulated in float32 (same values)"
    elif mask is not None:
        reason = ("α = 0 (an input that was all zero during calibration): QuantizeLinear needs a positive scale; "
                  "emulated in float32 (same values)")
    return ActivationPlan(source=type(module).__name__, bits=module.bits, scale=scale.numpy().astype(np.float32),
                          zero_point=zp.numpy().astype(np.int64), offset=offset.numpy().astype(np.float32),
                          qmin=grid.qmin, qmax=grid.qmax, channel_axis=grid.channel_axis,
                          mask=None if mask is None else mask.numpy(), qtype=None if reason else qtype,
                          reason=reason)


def is_activation_quantizer(module: nn.Module) -> bool:
    return isinstance(module, ActivationQuantizer)


__all__ = ["INT_TYPES", "ActivationPlan", "WeightPlan", "is_activation_quantizer", "plan_activation", "plan_weight"]
