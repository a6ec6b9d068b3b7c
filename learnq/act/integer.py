"""The integer deployment target's activation quantizer and the integer kernels it simulates (onnxruntime's CPU
kernels: QuantizeLinear, QLinearConv / QGemm, QLinearAdd, QLinearConcat, QLinearGlobalAveragePool,
QLinearAveragePool; ONNX operators
QuantizeLinear-13 and the com.microsoft QLinear* contrib operators).

:class:`EdgeQuantizer` is a member of the one activation-quantizer family (:mod:`learnq.act.base`): an 8-bit
*asymmetric* uint8 grid over the observed range with zero included, ``scale = (hi - lo) / 255``,
``zero_point = round(-lo / scale)`` (``lo = min(0, min x)``, ``hi = max(0, max x)``; Jacob et al. 2018,
"Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference", §2.1 Eq. 1, the
rule of onnxruntime's MinMax calibrator too). One type for every tensor is what lets onnxruntime fuse: its QDQ
selectors require the input and output of QLinearConv / QLinearAdd / QLinearGlobalAveragePool to have one type.

The kernels compute what the runtime computes (Jacob et al. 2018 §2.2-2.4, Eq. 4-7): int32 accumulation of
``(x_q - z_x) · w_q`` plus an int32 bias ``round(b / (s_x s_w))``, then *requantization*
``y_q = clamp(rne(float32(acc) · M) + z_y, 0, 255)`` with the float32 multiplier ``M = (s_x · s_w) / s_y`` computed in
that order (round half to even, as the CPU's float-to-int conversion does). Accumulators are computed in float64
(exact for every int32 value), so the integer codes are those of an exact int32 kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from learnq.act.base import ActGrid, ActivationQuantizer
from learnq.act.observer import keep_sample, update_range
from learnq.errors import DataError, ModelError, QuantizationError
from learnq.grid import GridSpec

QMIN, QMAX = 0, 255


class EdgeQuantizer(ActivationQuantizer):
    """uint8 asymmetric quantizer of one tensor of the integer graph (an "edge"): observes min/max (and a bounded
    random sample of the values, for the clipping rules), then quantizes.

    Buffers ``lo``/``hi`` (the range, zero included) make the grid; ``enabled`` switches quantization on."""

    method = "edge"

    def __init__(self, sample_size: int = 32768, seed: int = 0) -> None:
        super().__init__()
        self.bits = 8
        self.enabled = False
        self.observing = False
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self._seen = False
        self.sample_size, self.seed, self.batches = sample_size, seed, 0
        self._keys: torch.Tensor | None = None
        self.sample: torch.Tensor | None = None

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        lo, hi = x.detach().float().min(), x.detach().float().max()
        if not (torch.isfinite(lo) and torch.isfinite(hi)):
            raise DataError("an activation of the integer graph is NaN or infinite during calibration")
        new_lo, new_hi = update_range(self.lo, self.hi, lo.clamp(max=0).cpu(), hi.clamp(min=0).cpu(),
                                      first=not self._seen)
        self.lo, self.hi = new_lo.to(self.lo.device), new_hi.to(self.hi.device)
        self._seen = True
        if self.sample_size:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.batches)
            self._keys, self.sample = keep_sample(self._keys, self.sample, x.detach().float().reshape(1, -1),
                                                  self.sample_size, g)
        self.batches += 1

    def finish(self, clip: str = "minmax", **options: object) -> None:
        """Stop observing and quantize. ``clip`` other than "minmax" narrows the observed range with a clipping rule
        of :mod:`learnq.clipping` on the sampled values: α of the 8-bit ``unsigned`` grid when the range starts at 0
        (after a ReLU), else α of the 256-level grid on [-α, α] (scheme ``lapq``), and the range becomes
        ``[max(lo, -α), min(hi, α)]`` (zero stays inside)."""
        if not self._seen:
            raise DataError("an edge quantizer of the integer graph observed no data; calibrate it first")
        if clip != "minmax" or options:
            from learnq.clipping import choose_clip  # here: ``import learnq`` does not load the clipping rules

            if self.sample is None:
                raise DataError("this edge quantizer kept no sample of its values (sample_size=0); clip 'minmax' only")
            scheme = "unsigned" if float(self.lo) >= 0 else "lapq"
            alpha = choose_clip(self.sample, GridSpec(bits=8, scheme=scheme, granularity="tensor"), clip, **options)
            a = alpha.float().reshape(()).to(self.lo.device)
            self.lo, self.hi = torch.maximum(self.lo, -a), torch.minimum(self.hi, a)
        self._keys = self.sample = None  # only the range is kept (and saved)
        self.observing, self.enabled = False, True

    def grid(self) -> ActGrid:
        lo, hi = self.lo.float(), self.hi.float()
        span = hi - lo
        scale = torch.where(span > 0, span / (QMAX - QMIN), torch.ones_like(span))  # onnxruntime: 1.0 if empty
        zp = torch.round(QMIN - lo / scale).clamp(QMIN, QMAX)
        return ActGrid(scale=scale.reshape(()), offset=torch.zeros(()), zero_point=zp.reshape(()), qmin=QMIN,
                       qmax=QMAX)

    def before(self, x: torch.Tensor) -> None:
        if self.observing:
            self.observe(x)

    def active(self) -> bool:
        return self.enabled

    def extra_repr(self) -> str:
        return f"uint8 asymmetric, range [{float(self.lo):.4g}, {float(self.hi):.4g}], enabled={self.enabled}"


class QValue:
    """A quantized tensor in the integer graph: integer ``codes`` (int64), float32 ``scale`` (0-dim), int ``zp``."""

    __slots__ = ("codes", "scale", "zp")

    def __init__(self, codes: torch.Tensor, scale: torch.Tensor, zp: int) -> None:
        self.codes, self.scale, self.zp = codes, scale, zp

    @classmethod
    def grid_of(cls, q: ActivationQuantizer) -> tuple[torch.Tensor, int]:
        g = q.grid()
        return g.scale.float().reshape(()), int(g.zero_point)

    def dequantize(self) -> torch.Tensor:
        """DequantizeLinear: ``float32(q - zp) · scale``."""
        return (self.codes - self.zp).float() * self.scale.to(self.codes.device)


def quantize_linear(x: torch.Tensor, scale: torch.Tensor, zp: int) -> QValue:
    """QuantizeLinear: ``clamp(rne(x / scale) + zp, 0, 255)`` in float32."""
    s = scale.to(x.device).float()
    codes = (torch.round(x.float() / s) + zp).clamp_(QMIN, QMAX).to(torch.int64)
    return QValue(codes, s, zp)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, zp: int) -> torch.Tensor:
    """int32 accumulator -> uint8 codes: ``clamp(rne(float32(acc) · M) + zp, 0, 255)``; M float32 (broadcast)."""
    y = acc.to(torch.float32) * multiplier.to(acc.device).float()
    return (torch.round(y) + zp).clamp_(QMIN, QMAX).to(torch.int64)


def check_int32(acc: torch.Tensor, what: str) -> torch.Tensor:
    if acc.numel() and float(acc.abs().max()) >= 2**31:
        raise QuantizationError(f"{what}: the int32 accumulator overflows; use fewer weight or activation bits")
    return acc.to(torch.int64)


def bias_codes(bias: torch.Tensor | None, x_scale: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor | None:
    """The int32 bias of an integer conv/gemm: ``round(b / float32(s_x · s_w))`` (per output channel)."""
    if bias is None:
        return None
    s = (x_scale.float() * w_scale.float().to(x_scale.device)).reshape(-1)
    return torch.round(bias.detach().float() / s).to(torch.int64)


def accumulate(x: QValue, w_codes: torch.Tensor, b_codes: torch.Tensor | None, op: str,
               **conv: object) -> torch.Tensor:
    """int32 accumulator of a conv (``op`` "conv1d/2d/3d") or a linear layer (``op`` "linear"), exact (float64)."""
    xi = (x.codes - x.zp).double()
    wi = w_codes.to(xi.device).double()
    if op == "linear":
        acc = F.linear(xi, wi)
    else:
        acc = getattr(F, op)(xi, wi, None, **conv)
    acc = torch.round(acc)
    if b_codes is not None:
        shape = [1] * acc.ndim
        shape[1 if op != "linear" else -1] = -1
        acc = acc + b_codes.to(acc.device).double().reshape(shape)
    return check_int32(acc, op)


def _fma32(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """float32 fused multiply-add ``a · b + c`` with one rounding (float64 holds the float32 product exactly)."""
    return (a.double() * b.double() + c.double()).float()


def qlinear_add(a: QValue, b: QValue, scale: torch.Tensor, zp: int) -> torch.Tensor:
    """QLinearAdd as onnxruntime's x86 kernel computes it (MLAS ``qladd_avx2.cpp``): float32 ratios
    ``r_a = s_a / s_c``, ``r_b = s_b / s_c``, a fixed part ``z_c - (r_a z_a + r_b z_b)``, then
    ``rne(fma(q_a, r_a, fma(q_b, r_b, fixed)))``, saturated."""
    dev = a.codes.device
    ra = (a.scale.float() / scale.float()).to(dev)
    rb = (b.scale.float() / scale.float()).to(dev)
    fixed = torch.tensor(float(zp), dtype=torch.float32, device=dev) - (ra * float(a.zp) + rb * float(b.zp))
    y = _fma32(a.codes.float(), ra, _fma32(b.codes.float(), rb, fixed))
    return torch.round(y).clamp_(QMIN, QMAX).to(torch.int64)


def qlinear_global_average_pool(x: QValue, scale: torch.Tensor, zp: int) -> torch.Tensor:
    """QLinearGlobalAveragePool (NCHW): int32 sum over the spatial axes minus ``z_x · n``, requantized with
    ``M = s_x / (s_y · n)``."""
    n = 1
    for s in x.codes.shape[2:]:
        n *= int(s)
    acc = x.codes.sum(dim=tuple(range(2, x.codes.ndim)), keepdim=True) - x.zp * n
    mult = x.scale.float() / (scale.float() * torch.tensor(float(n), dtype=torch.float32))
    return requantize(acc, mult, zp)


def qlinear_concat(values: list[QValue], dim: int, scale: torch.Tensor, zp: int) -> torch.Tensor:
    """QLinearConcat (onnxruntime's ``qlinear_concat.cc``): an input on the output's grid is copied, any other goes
    through the lookup table ``QuantizeLinear(float32(q - z_x) · s_x)`` onto the output's grid."""
    s = scale.float().reshape(())
    parts = []
    for v in values:
        same = float(v.scale) == float(s) and v.zp == zp
        parts.append(v.codes if same else quantize_linear(v.dequantize(), s, zp).codes)
    return torch.cat(parts, dim=dim)


def qlinear_average_pool(x: QValue, kernel: list[int], stride: list[int], padding: list[int], count_include_pad: bool,
                         scale: torch.Tensor, zp: int) -> torch.Tensor:
    """QLinearAveragePool (1-d/2-d, NCHW; onnxruntime's ``qlinear_pool.cc``): the input dequantized to float32
    ``s_x · (q - z_x)``, summed over each window in float32 row by row (padding adds nothing), divided by the window
    size (``count_include_pad``) or its in-bounds count, then ``clamp(rne(y / s_y + z_y))`` (the zero point added in
    float before rounding, unlike QuantizeLinear). A window covering the whole unpadded input is onnxruntime's global
    pooling kernel (:func:`qlinear_global_average_pool`)."""
    spatial = list(x.codes.shape[2:])
    if kernel == spatial and not any(padding):
        return qlinear_global_average_pool(x, scale, zp)
    one_d = len(spatial) == 1
    deq = x.dequantize()
    ones = torch.ones_like(deq[:1, :1])
    k, st, pad = ([1] + kernel, [1] + stride, [0] + padding) if one_d else (kernel, stride, padding)
    if one_d:
        deq, ones = deq.unsqueeze(2), ones.unsqueeze(2)
    n, c = deq.shape[:2]
    cols = F.unfold(deq, k, padding=pad, stride=st).reshape(n, c, k[0] * k[1], -1)
    total = torch.zeros_like(cols[:, :, 0])
    for i in range(cols.shape[2]):  # float32, in onnxruntime's order (rows, then columns of the window)
        total = total + cols[:, :, i]
    if count_include_pad:
        count = torch.full_like(total, float(k[0] * k[1]))
    else:
        count = F.unfold(ones, k, padding=pad, stride=st).sum(dim=1).reshape(1, 1, -1)
    y = total / count
    h_out = (deq.shape[2] + 2 * pad[0] - k[0]) // st[0] + 1
    out_shape = list(x.codes.shape[:2]) + ([] if one_d else [h_out]) + [-1]
    codes = torch.round(y / scale.float().to(y.device) + float(zp)).clamp_(QMIN, QMAX).to(torch.int64)
    return codes.reshape(out_shape)


def weight_codes(qts: dict, label: str, m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 codes, per-output-channel scale) of a layer's weight on a symmetric grid; ModelError otherwise."""
    qt = qts.get(f"{label}.weight")
    if qt is None:
        raise ModelError(f"layer {label!r} has no quantized weight; the integer target quantizes every conv/linear "
                         "layer it runs in integer kernels")
    gran = qt.granularity
    per_row = gran.kind == "tensor" or (gran.kind == "axis" and gran._axis_for(tuple(qt.codes.shape)) == 0)
    if bool((qt.offset != 0).any()) or not per_row or int(qt.codes.min()) < -128 or int(qt.codes.max()) > 127:
        raise ModelError(f"layer {label!r}: the integer target needs symmetric int8 weights, one step per tensor or "
                         f"output channel (got {qt.scheme}, {qt.granularity}, {qt.bits} bits)")
    scale = gran.expand(qt.scale.float(), qt.codes.shape).reshape(qt.codes.shape[0], -1)[:, 0]
    return qt.codes.to(torch.int64), scale


_CONV_OPS = {nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d"}


def integer_layer(m: nn.Module, label: str, x: QValue, qts: dict,
                  out: tuple[torch.Tensor, int] | None) -> QValue | torch.Tensor:
    """A conv/linear layer on quantized input ``x``: QLinearConv / QGemm requantized to ``out`` = (scale, zero
    point), or with ``out`` None the float output ``float32(acc) · (s_x · s_w)`` (QGemm without an output scale)."""
    w, ws = weight_codes(qts, label, m)
    b = bias_codes(m.bias, x.scale, ws)
    if isinstance(m, nn.Linear):
        acc = accumulate(x, w, b, "linear")
    else:
        if m.padding_mode != "zeros":
            raise ModelError(f"layer {label!r}: padding_mode={m.padding_mode!r}; the integer target pads with zeros")
        op = next(v for k, v in _CONV_OPS.items() if isinstance(m, k))
        acc = accumulate(x, w, b, op, stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups)
    shape = [1] * acc.ndim
    shape[-1 if isinstance(m, nn.Linear) else 1] = -1
    sw = ws.float().to(acc.device)
    if out is None:
        return acc.float() * (x.scale.float().to(acc.device) * sw).reshape(shape)
    s, z = out
    mult = (x.scale.float().to(acc.device) * sw) / s.float().to(acc.device)
    return QValue(requantize(acc, mult.reshape(shape), z), s, z)


__all__ = ["EdgeQuantizer", "QMAX", "QMIN", "QValue", "accumulate", "bias_codes", "check_int32", "integer_layer",
           "qlinear_add", "qlinear_average_pool", "qlinear_concat", "qlinear_global_average_pool", "quantize_linear",
           "requantize", "weight_codes"]
