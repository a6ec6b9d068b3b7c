"""The nested quantization layer with a learned scale and the gradient-ratio rule (seeds/004, thesis "Learned
Quantization Schemes for Data-centric ML Pipelines", Ch. 3, Sec. 3.1.1-3.1.2; METHODS.md section 5).

Per quantized parameter P (weight, kernel or bias) one trainable positive scale ``s`` per granularity group:

    forward   P_q = floor(P / s),   P_r = P_q · s
    backward  ∂L/∂P = ∂L/∂P_r                                   (straight through, Sec. 3.1.1)
              r = |∂L/∂P_r| / max(ε, |P_r|)                       (per element)
              g = 0 if r >= λ else -tanh(λ - r)                  (per element, in (-1, 0])
              ∂L/∂s = mean_group(g) · max_group|P_q|              (Sec. 3.1.2)

so under gradient descent ``s`` only grows (coarser grid) and an element whose gradient is large relative to its
value votes zero. λ = 0 gives ``s`` no gradient from the task at all (the thesis's custom-loss experiments, where
the scales are trained by the loss terms of :mod:`learnq.quantizers.losses` only).

Granularity (learnq's convention, :mod:`learnq.granularity`): ``scalar`` one s; ``row`` (= ``channel``, the
default, as every learnq weight grid) one s per output unit / output channel (axis 0); ``column`` one s per input
feature / input channel (axis 1); biases and other 1-D parameters always use a scalar s. The TensorFlow reference's
"rowwise" on a Keras ``(in, out)`` kernel is one scale per input feature, i.e. learnq's ``column``.

Choices where the thesis is silent, and differences from the reference code (anuunchin/learned-quantization):

* init: ``init_scale=None`` (default) sets each group's s to ``max|P_group| / (2^(init_bits-1) - 1)`` with
  ``init_bits = 16``. The reference starts at ``100·eps(float32) ≈ 1.19e-5`` (pass ``init_scale=1.1920929e-05`` to
  reproduce it); for weights of magnitude ~0.4 the two agree. Lower bound ``min_scale = 100·eps(float32)`` as in the
  reference, enforced by projecting s onto ``[min_scale, ∞)`` before each training forward (the reference's Keras
  constraint).
* code width bound (learnq's, not the thesis's): the codes must fit ``max_bits`` (default 16, the widest the model
  file stores), whatever the weights do during training. Each group's s is also kept at or above

      s_min(P) = max|P_group| / (2^(max_bits-1) - 1)

  so that ``floor(P/s)`` lies in ``[-2^(max_bits-1), 2^(max_bits-1) - 1]`` (P/s in ``[-(2^(b-1)-1), 2^(b-1)-1]``
  and floor moves a value down by less than 1; float32 rounding of P/s is below 2^-22·2^15 < 1 and can only reach
  the extra negative code). The bound moves with the weights: the stored s is projected onto
  ``[max(min_scale, s_min(P)), ∞)`` before each training forward (with the P of that forward), and the eval forward
  and export use ``max(s, min_scale, s_min(P))`` of the current P (an optimizer step after the last training
  forward may have grown P). Hence every state training can reach is saveable, and the thesis's rule below is
  untouched: it gives s its gradient at the projected value, as with ``min_scale``. A group whose weights grow
  faster than its learned s is coarsened just enough to stay within ``max_bits``. ``init_bits > max_bits`` starts
  at the bound.
* λ (``threshold``) default 1e-10, the thesis's best for dense layers on MNIST; it reports 1e-11 for conv layers.
  ε = ``eps(float32)``.
* optimizer: ``|∂L/∂s| <= tanh(λ)·max|P_q| ≈ λ·max|P_q|`` is tiny, so s moves only under a scale-invariant
  optimizer: train the scales with Adam (the reference: lr 1e-4), e.g. ``handle.param_groups(lr=1e-4)``.
* the reference replaces the rule by a constant ``-tanh(λ)`` vote when every element of a group is at or above the
  threshold; the thesis does not, and neither does learnq (such a group gets gradient 0).
* under DDP each process applies the rule to its local gradient and DDP averages the resulting scale gradients.

Export: codes ``floor(P/s)`` are signed; the stored width is the bits needed for the code range ``[min, max]``
(``qmin`` = the smallest code, at most ``max_bits`` by the bound above), scale ``s``, offset 0, rounding floor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from learnq.attach import Selection
from learnq.checks import check_choice, check_float, check_int
from learnq.errors import ConfigError, QuantizationError
from learnq.granularity import Granularity
from learnq.grid import MAX_BITS, bits_for_range
from learnq.quantizers.base import WeightQuantizer, per_tensor
from learnq.quantizers.config import QATConfig, parse_granularity
from learnq.quantizers.losses import nested_loss
from learnq.quantizers.ste import STEQuantizer

EPS32 = float(np.finfo(np.float32).eps)
REFERENCE_SCALE = 100 * EPS32  # the reference's init and lower bound of s
NESTED_GRANULARITIES = {"scalar": "tensor", "row": "axis:0", "channel": "axis:0", "column": "axis:1"}
_INT_LIMIT = 2.0**31 - 1
_RECIPE_GRANULARITY = {("tensor", None): "scalar", ("axis", 0): "row", ("axis", 1): "column"}


class _NestedQuantFn(torch.autograd.Function):
    """``P_r = floor(P/s)·s`` with the straight-through gradient to P and the gradient-ratio rule to s."""

    @staticmethod
    def forward(ctx, p: torch.Tensor, s: torch.Tensor, gran: Granularity, lam: float, eps: float,  # type: ignore[override]
                min_scale: float) -> torch.Tensor:
        s_full = gran.expand(s.detach().float().clamp(min=min_scale), p.shape)
        q = torch.floor(p.detach().float() / s_full)
        pr = q * s_full
        ctx.save_for_backward(q, pr)
        ctx.gran, ctx.lam, ctx.eps = gran, lam, eps
        ctx.p_dtype, ctx.s_dtype = p.dtype, s.dtype
        return pr.to(p.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        q, pr = ctx.saved_tensors
        gran, lam = ctx.gran, ctx.lam
        ratio = grad.float().abs() / pr.abs().clamp(min=ctx.eps)
        vote = torch.where(ratio >= lam, torch.zeros_like(ratio), -torch.tanh(lam - ratio))
        m = gran.view(q.abs()).amax(dim=1)  # (n_groups,)
        grad_s = gran.view(vote).mean(dim=1) * m
        return grad.to(ctx.p_dtype), grad_s.to(ctx.s_dtype), None, None, None, None


def nested_quantize(p: torch.Tensor, s: torch.Tensor, granularity: Granularity, threshold: float,
                    eps: float = EPS32, min_scale: float = 0.0) -> torch.Tensor:
    """The nested layer as a function: ``floor(p/s)·s`` with the thesis's backward rule (``s``: one per group)."""
    return _NestedQuantFn.apply(p, s, granularity, float(threshold), float(eps), float(min_scale))


class NestedQuantizer(WeightQuantizer):
    """One trainable scale per granularity group, floor quantization, the gradient-ratio rule, codes within
    ``max_bits``."""

    method = "nested"

    def __init__(self, x: torch.Tensor, granularity: Granularity, threshold: float = 1e-10,
                 init_scale: float | None = None, init_bits: int = 16, min_scale: float = REFERENCE_SCALE,
                 eps: float = EPS32, max_bits: int = MAX_BITS) -> None:
        super().__init__(tuple(x.shape), per_tensor(granularity, tuple(x.shape)))
        if not 2 <= int(max_bits) <= MAX_BITS:
            raise ConfigError(f"NestedQuantizer max_bits must be in [2, {MAX_BITS}], got {max_bits!r}")
        self.threshold = float(threshold)
        self.min_scale = float(min_scale)
        self.eps = float(eps)
        self.max_bits = int(max_bits)
        rows = self.granularity.view(x.detach().float())
        if init_scale is None:
            init = rows.abs().amax(dim=1) / (2 ** (init_bits - 1) - 1)
        else:
            init = torch.full((rows.shape[0],), float(init_scale), device=rows.device)
        self.scale = nn.Parameter(torch.maximum(init, self.lower_bound(x)))

    def lower_bound(self, x: torch.Tensor) -> torch.Tensor:
        """Per group ``max(min_scale, max|P_group| / (2^(max_bits-1) - 1))``: the smallest s whose codes
        ``floor(P/s)`` fit ``max_bits`` (module docstring), float32, no gradient."""
        top = 2 ** (self.max_bits - 1) - 1
        m = self.granularity.view(x.detach().float().abs()).amax(dim=1)
        return (m / top).clamp_(min=self.min_scale)

    def effective_scale(self, x: torch.Tensor | None = None) -> torch.Tensor:
        """``max(s, min_scale)``, and with ``x`` (the quantized tensor P) ``max(s, lower_bound(P))``: what the forward
        uses (differentiable in s above the bound)."""
        if x is None:
            return self.scale.clamp(min=self.min_scale)
        return torch.maximum(self.scale, self.lower_bound(x).to(self.scale.dtype))

    def project_(self, x: torch.Tensor | None = None) -> None:
        """Clamp the stored scale onto ``[min_scale, ∞)`` in place (the reference's Keras constraint), and with
        ``x`` onto ``[lower_bound(x), ∞)`` (codes within ``max_bits``)."""
        with torch.no_grad():
            if x is None:
                self.scale.data.clamp_(min=self.min_scale)
            else:
                torch.maximum(self.scale.data, self.lower_bound(x).to(self.scale.dtype), out=self.scale.data)

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        self.project_(x)
        return nested_quantize(x, self.scale, self.granularity, self.threshold, self.eps, self.min_scale)

    def _grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Granularity]:
        s = torch.maximum(self.scale.detach().float(), self.lower_bound(x))
        codes = torch.floor(x.float() / self.granularity.expand(s, x.shape)).clamp_(-_INT_LIMIT, _INT_LIMIT)
        return codes.to(torch.int32), s.clone(), torch.zeros_like(s), self.granularity

    def code_range(self, x: torch.Tensor | None = None) -> tuple[int, int]:
        """Smallest and largest code ``floor(P/s)`` now."""
        codes = self._grid(self._input(x).detach())[0]
        return int(codes.min()), int(codes.max())

    def bits(self, x: torch.Tensor | None = None) -> int:
        """Bits needed to store the current codes (at most ``max_bits``)."""
        qmin, qmax = self.code_range(x)
        return bits_for_range(qmin, qmax)

    def summary_bits(self) -> int:
        return self.bits()

    def _export_meta(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, Any]:
        qmin, qmax = int(codes.min()), int(codes.max())
        bits = bits_for_range(qmin, qmax)
        if bits > self.max_bits:  # unreachable for finite weights: the scale's lower bound keeps codes within
            raise QuantizationError(
                f"nested-quantized parameter {self.name or '(unnamed)'}: its codes floor(P/s) span [{qmin}, {qmax}], "
                f"{bits} bits, more than max_bits={self.max_bits}; check the weights for NaN or Inf values")
        return {"bits": bits, "qmin": qmin, "scheme": "symmetric"}

    def true_size_bits(self, x: torch.Tensor | None = None) -> int:
        """Codes at the width their range needs plus one float32 scale per group."""
        return self.numel * self.bits(x) + 32 * self.granularity.num_groups(self.shape)

    def extra_repr(self) -> str:
        return (f"granularity={self.granularity}, threshold={self.threshold:g}, min_scale={self.min_scale:.3g}, "
                f"max_bits={self.max_bits}")


@dataclass(frozen=True)
class Nested(QATConfig):
    """The thesis's nested quantization layer (seeds/004 Sec. 3.1) plus its custom loss terms (Sec. 3.2).

    granularity: ``channel`` (= ``row``, the default), ``scalar`` or ``column`` (biases always scalar). threshold:
    λ of the gradient-ratio rule. init_scale: None (each group starts at max|P|/(2^(init_bits-1)-1)) or a number (the
    reference: 100·eps(float32)). min_scale: lower bound of s. max_bits: the widest codes training may reach (s is
    kept at or above max|P|/(2^(max_bits-1)-1) per group, so the model is saveable at any step). biases: quantize
    the layers' biases too.
    gamma_inverse / gamma_bins / gamma_deviation: weights of the inverse-scale, bin-count and deviation losses in
    ``handle.loss()``. A parameter named in ``bits_overrides`` gets a fixed-bit STE min-max quantizer instead.
    """

    method = "nested"
    description = "nested quantization layer: learned scale, floor, gradient-ratio rule, custom losses (thesis Ch. 3)"
    default_lr: ClassVar[float | None] = 1e-4  # the reference's Adam lr
    learns_bits: ClassVar[bool] = True
    granularity: str = "channel"
    threshold: float = 1e-10
    init_scale: float | None = None
    # recipes start the scales at 8 bits: chosen when weights that grew while training could need codes wider than
    # 16 bits; since the layer keeps its codes within max_bits that no longer happens, and 8 stays the recipes'
    # (coarser, smaller) starting point
    init_bits: int = field(default=16, metadata={"recipe_default": 8})
    min_scale: float = REFERENCE_SCALE
    eps: float = field(default=EPS32, metadata={"recipe": False})
    max_bits: int = MAX_BITS
    biases: bool = True
    gamma_inverse: float = 0.0
    gamma_bins: float = 0.0
    gamma_deviation: float = 0.0

    def validate(self) -> None:
        check_choice("Nested", "granularity", self.granularity, tuple(NESTED_GRANULARITIES))
        check_float("Nested", "threshold", self.threshold)
        check_float("Nested", "min_scale", self.min_scale, strict=True)
        check_float("Nested", "eps", self.eps, strict=True)
        check_int("Nested", "init_bits", self.init_bits, 2, 16)
        check_int("Nested", "max_bits", self.max_bits, 2, MAX_BITS)
        if self.init_scale is not None:
            check_float("Nested", "init_scale", self.init_scale, strict=True)
        if not isinstance(self.biases, bool):
            raise ConfigError(f"Nested.biases must be True or False, got {self.biases!r}")
        for name in ("gamma_inverse", "gamma_bins", "gamma_deviation"):
            check_float("Nested", name, getattr(self, name))

    def default_selection(self) -> Selection:
        return Selection(biases=self.biases)

    @classmethod
    def from_granularity(cls, raw: str, options: Any) -> dict[str, Any]:
        """``tensor`` / ``scalar``: one scale per tensor; ``row`` / ``channel``: per row; ``column``: per column."""
        if raw == "scalar":
            return {"granularity": "scalar"}
        gran = parse_granularity(raw)
        axis = gran.axis if gran.kind == "axis" else None
        if (gran.kind, axis) not in _RECIPE_GRANULARITY:
            raise ConfigError(f"the nested layer has one scale per tensor ('tensor'), row ('row' or 'channel') or "
                              f"column ('column'), not {raw!r}")
        return {"granularity": _RECIPE_GRANULARITY[(gran.kind, axis)]}

    def loss(self, quantizers: Sequence[WeightQuantizer]) -> torch.Tensor | None:
        """``γ_inverse·L_inverse + γ_bins·L_bins + γ_deviation·L_deviation`` over the nested-quantized parameters
        (:mod:`learnq.quantizers.losses`; those fixed by ``bits_overrides`` are left out); None when every γ is 0."""
        if not (self.gamma_inverse or self.gamma_bins or self.gamma_deviation):
            return None
        items = [(q, q.current_input()) for q in quantizers if isinstance(q, NestedQuantizer)]
        if not items:
            return None
        return nested_loss(items, self.gamma_inverse, self.gamma_bins, self.gamma_deviation)

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> WeightQuantizer:
        if bits is not None:
            return STEQuantizer(tuple(x.shape), bits, Granularity("tensor"), "affine")
        return NestedQuantizer(x, Granularity.parse(NESTED_GRANULARITIES[self.granularity]), self.threshold,
                               self.init_scale, self.init_bits, self.min_scale, self.eps, self.max_bits)


__all__ = ["Nested", "NestedQuantizer", "nested_quantize", "REFERENCE_SCALE", "EPS32"]
