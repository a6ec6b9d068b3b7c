"""LSQ: learned step size quantization (Esser et al., "Learned Step Size Quantization", ICLR 2020, Eq. 1-5;
METHODS.md section 6; DiffQ seeds/003 compares against it).

Signed grid with ``Q_n = 2^(b-1)`` negative and ``Q_p = 2^(b-1)-1`` positive levels and a learnable step ``s`` (per
tensor, or per output channel):

    ŵ = round(clamp(w/s, -Q_n, Q_p)) · s

Backward: straight-through to ``w`` inside the clipping range, zero outside; to ``s`` the LSQ gradient
``∂ŵ/∂s = -w/s + round(w/s)`` inside, ``-Q_n`` / ``Q_p`` outside (Eq. 3), multiplied by the gradient scale
``g = 1/sqrt(N·Q_p)`` (Eq. 5; N = the number of weights sharing the step). Init ``s = 2·mean|w|/sqrt(Q_p)``.
``s`` is kept positive by projecting it onto ``[1e-12, ∞)`` before every training forward.

**The step's optimizer group** (``handle.param_groups()``, weight decay 0): lr ``LSQ.default_lr`` = 1e-5, not the
model's. ``g`` sets the step's update against the weights' under SGD (§2.2), but Adam and AdamW divide each
gradient by its own running RMS, which cancels any constant ``g``: every update moves the step by about the group's
lr. Steps start near ``0.75·mean|w|`` (4 bits), 0.004 to 0.012 for weights of std 0.02 (a GPT's init), so at an
Adam lr of 1e-3 to 3e-3 a step whose gradient keeps one sign reaches zero within a few updates; then every weight is
clipped, gets no gradient, and the layer's quantized weight is about 0 for good (issue 16: LSQ 4 bits on the text
LM, a perplexity 10.7 vs STE's 9.2; ``benchmarks/text_lsq.py`` traces it). At 1e-5 a step moves at most ~0.1-0.3 %
per update. Pass ``param_groups(lr=...)`` for another value (with SGD: the model's lr, the paper's setting).

``entropy_weight`` (issue 18, default 0: no extra loss): adds ``entropy_weight·Ĥ`` to the loss, ``Ĥ`` the kernel
density estimate of the entropy-coded size in MB of the codes ``round(clamp(w/s))`` (:mod:`learnq.quantizers.entropy`;
seeds/003 §5.6), differentiable in ``w`` and ``s``: with the bits fixed, it makes the weights use fewer codes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from learnq.checks import check_choice, check_float, check_int
from learnq.granularity import Granularity
from learnq.quantizers.base import WeightQuantizer, per_tensor
from learnq.quantizers.config import QATConfig
from learnq.quantizers.entropy import entropy_penalty, soft_entropy_bits
from learnq.ste import grad_scale, round_ste

LSQ_GRANULARITIES = ("tensor", "channel")
MIN_STEP = 1e-12
STEP_LR = 1e-5  # the steps' default lr (their param group): Adam moves a parameter by ~lr per update, whatever g is


class LSQQuantizer(WeightQuantizer):
    """Learned step size: ``step`` (one per group) is a Parameter trained with the LSQ gradient."""

    method = "lsq"

    def __init__(self, x: torch.Tensor, bits: int, granularity: Granularity) -> None:
        super().__init__(tuple(x.shape), per_tensor(granularity, tuple(x.shape)))
        self.bits = bits
        self.qn = 2 ** (bits - 1)
        self.qp = 2 ** (bits - 1) - 1
        rows = self.granularity.view(x.detach().float())
        init = 2 * rows.abs().mean(dim=1) / math.sqrt(self.qp)
        init = torch.where(init > 0, init, torch.ones_like(init))  # an all-zero tensor: any step represents it
        self.step = nn.Parameter(init.clamp_min(MIN_STEP))
        self.grad_factor = 1.0 / math.sqrt(rows.shape[1] * self.qp)

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.step.data.clamp_(min=MIN_STEP)
        s = self.granularity.expand(grad_scale(self.step, self.grad_factor), x.shape)
        q = round_ste(torch.clamp(x.float() / s, -self.qn, self.qp))
        return (q * s).to(x.dtype)

    def soft_entropy_bits(self, x: torch.Tensor) -> torch.Tensor:
        """Estimated entropy-coded size of the codes of ``x`` in bits, differentiable in ``x`` and the step."""
        s = self.granularity.expand(grad_scale(self.step.clamp_min(MIN_STEP), self.grad_factor), x.shape)
        return soft_entropy_bits(torch.clamp(x.float() / s, -self.qn, self.qp))

    def _grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Granularity]:
        step = self.step.detach().float().clamp_min(MIN_STEP)
        codes = torch.round(x.float() / self.granularity.expand(step, x.shape)).clamp_(-self.qn, self.qp)
        return codes.to(torch.int32), step.clone(), torch.zeros_like(step), self.granularity

    def _export_meta(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, Any]:
        return {"bits": self.bits, "qmin": -self.qn, "scheme": "symmetric"}

    def true_size_bits(self, x: torch.Tensor | None = None) -> int:
        """Codes plus one float32 step per group."""
        return self.numel * self.bits + 32 * self.granularity.num_groups(self.shape)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, granularity={self.granularity}, grad_scale={self.grad_factor:.3g}"


@dataclass(frozen=True)
class LSQ(QATConfig):
    """LSQ (Esser et al. 2020): learned step per output channel (default) or per tensor (``granularity="tensor"``,
    the paper's), signed ``bits``-bit grid (bits >= 2); ``entropy_weight``: weight of the estimated entropy-coded size
    (MB) in the loss (0: none)."""

    method = "lsq"
    description = "LSQ: learned step size per tensor or channel, gradient scale 1/sqrt(N·Q_p) (Esser et al. 2020)"
    default_lr: ClassVar[float | None] = STEP_LR  # Adam cancels g: see the module docstring
    bits: int = 4
    granularity: str = "channel"
    entropy_weight: float = 0.0

    def validate(self) -> None:
        check_int("LSQ", "bits", self.bits, 2, 16)
        check_float("LSQ", "entropy_weight", self.entropy_weight)
        check_choice("LSQ", "granularity", self.granularity, LSQ_GRANULARITIES)
        for pattern, bits in self.bits_overrides.items():
            check_int("LSQ", f"bits_overrides[{pattern!r}]", bits, 2, 16)

    def loss(self, quantizers: Sequence[WeightQuantizer]) -> torch.Tensor | None:
        """``entropy_weight·Ĥ`` (:func:`learnq.quantizers.entropy.entropy_penalty`); None when the weight is 0."""
        return entropy_penalty(quantizers, self.entropy_weight)

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> LSQQuantizer:
        return LSQQuantizer(x, bits or self.bits, Granularity.parse(self.granularity))


__all__ = ["LSQ", "LSQQuantizer"]
