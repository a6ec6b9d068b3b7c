"""STE fake-quantization QAT: DiffQ's "QAT" baseline (seeds/003 §3.2-3.3 and §5: Eq. 1 with a layer-wise min-max
scaling of the weights; Krishnamoorthi 2018; Bengio et al. 2013 for the straight-through estimator).

Training forward ``Q(w)``: the weight's min-max range (per tensor, or per output channel), ``2^b`` levels (affine,
Eq. 1 after normalisation by the range) or the signed symmetric grid; backward the identity to ``w``
(``w + (Q(w) - w).detach()``, here computed so that the value is exactly ``Q(w)``). The range is not trained.

``entropy_weight`` (issue 18, default 0: no extra loss): adds ``entropy_weight·Ĥ`` to the loss, ``Ĥ`` the kernel
density estimate of the entropy-coded size in MB of the codes ``(w - offset)/scale`` (:mod:`learnq.quantizers.entropy`;
seeds/003 §5.6), differentiable in ``w`` (not through the min-max range): with the bits fixed, fewer codes used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from learnq.checks import check_choice, check_float, check_int
from learnq.granularity import Granularity
from learnq.quantizers.base import WeightQuantizer, per_tensor
from learnq.quantizers.config import QATConfig
from learnq.quantizers.entropy import entropy_penalty, soft_entropy_bits
from learnq.ste import ste

STE_SCHEMES = ("affine", "symmetric")
STE_GRANULARITIES = ("tensor", "channel")


def minmax_grid(rows: torch.Tensor, bits: int, scheme: str) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Per-row (scale, offset, qmin, qmax) of the min-max grid of ``rows`` (n_groups, group_len), float32.

    Same formulas as :func:`learnq.grid.compute_params` (affine ``Δ = (max-min)/(2^b-1)``, offset ``min``;
    symmetric ``Δ = max|w|/(2^(b-1)-1)``), written without host synchronisation so it can run at every step.
    A constant row gets step 1 and offset equal to its value (represented exactly).
    """
    lo, hi = rows.amin(dim=1), rows.amax(dim=1)
    constant = lo == hi
    if scheme == "affine" or bits == 1:
        if scheme == "affine":
            scale, offset = (hi - lo) / (2**bits - 1), lo
        else:  # 1-bit symmetric: the sign grid {-α, α}
            alpha = torch.maximum(hi.abs(), lo.abs())
            scale, offset = 2 * alpha, -alpha
        qmin, qmax = 0, 2**bits - 1
    else:
        top = 2 ** (bits - 1) - 1
        scale, offset = torch.maximum(hi.abs(), lo.abs()) / top, torch.zeros_like(lo)
        qmin, qmax = -top - 1, top
    scale = torch.where(constant | (scale <= 0), torch.ones_like(scale), scale)
    offset = torch.where(constant, lo, offset)
    return scale, offset, qmin, qmax


def fake_quantize_ste(w: torch.Tensor, bits: int, low: float | torch.Tensor,
                      high: float | torch.Tensor) -> torch.Tensor:
    """Eq. 1 on the fixed range [low, high]: ``round((w-low)/(high-low)·(2^B-1))/(2^B-1)·(high-low)+low``, with the
    straight-through gradient (the QAT side of DiffQ Fig. 1a)."""
    levels = 2**bits - 1
    width = torch.as_tensor(high, dtype=torch.float32) - torch.as_tensor(low, dtype=torch.float32)
    with torch.no_grad():
        q = torch.round(((w.float() - low) / width * levels).clamp(0, levels))
        y = (q / levels * width + low).to(w.dtype)
    return ste(w, y)


class STEQuantizer(WeightQuantizer):
    """Min-max fake quantization with a straight-through gradient; fixed ``bits``."""

    method = "ste"

    def __init__(self, shape: tuple[int, ...], bits: int, granularity: Granularity, scheme: str = "affine") -> None:
        super().__init__(shape, per_tensor(granularity, tuple(shape)))
        self.bits = bits
        self.scheme = scheme

    def _grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Granularity]:
        g = self.granularity
        scale, offset, qmin, qmax = minmax_grid(g.view(x.float()), self.bits, self.scheme)
        codes = torch.round((x.float() - g.expand(offset, x.shape)) / g.expand(scale, x.shape))
        return codes.clamp_(qmin, qmax).to(torch.int32), scale, offset, g

    def soft_entropy_bits(self, x: torch.Tensor) -> torch.Tensor:
        """Estimated entropy-coded size of the codes of ``x`` in bits, differentiable in ``x`` (not through the
        min-max range, which STE does not train: a wider range would lower the entropy by pushing the extreme
        weights outward)."""
        rows = self.granularity.view(x.float())
        scale, offset, qmin, qmax = minmax_grid(rows.detach(), self.bits, self.scheme)
        return soft_entropy_bits(((rows - offset.unsqueeze(1)) / scale.unsqueeze(1)).clamp(qmin, qmax))

    def _export_meta(self, x: torch.Tensor, codes: torch.Tensor) -> dict[str, Any]:
        qmin = 0 if (self.scheme == "affine" or self.bits == 1) else -(2 ** (self.bits - 1))
        scheme = "symmetric" if self.scheme == "symmetric" and self.bits > 1 else "affine"
        return {"bits": self.bits, "qmin": qmin, "scheme": scheme}

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        return ste(x, self.quantized_value(x))

    def true_size_bits(self, x: torch.Tensor | None = None) -> int:
        """Codes plus one float32 step (and offset, affine) per group."""
        floats = 2 if self.scheme == "affine" or self.bits == 1 else 1
        return self.numel * self.bits + 32 * floats * self.granularity.num_groups(self.shape)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, scheme={self.scheme}, granularity={self.granularity}"


@dataclass(frozen=True)
class STE(QATConfig):
    """STE fake-quant QAT (DiffQ's QAT baseline): ``bits`` fixed, min-max range per output channel (default) or per
    tensor (``granularity="tensor"``, DiffQ's layer-wise baseline), ``scheme="affine"`` (Eq. 1) or ``"symmetric"``;
    ``entropy_weight``: weight of the estimated entropy-coded size (MB) in the loss (0: none)."""

    method = "ste"
    description = "STE fake-quant QAT, fixed bits, min-max range per tensor or channel (DiffQ's QAT baseline)"
    bits: int = 8
    granularity: str = "channel"
    scheme: str = "affine"
    entropy_weight: float = 0.0

    def validate(self) -> None:
        check_int("STE", "bits", self.bits, 1, 16)
        check_float("STE", "entropy_weight", self.entropy_weight)
        check_choice("STE", "granularity", self.granularity, STE_GRANULARITIES)
        check_choice("STE", "scheme", self.scheme, STE_SCHEMES)

    def loss(self, quantizers: Sequence[WeightQuantizer]) -> torch.Tensor | None:
        """``entropy_weight·Ĥ`` (:func:`learnq.quantizers.entropy.entropy_penalty`); None when the weight is 0."""
        return entropy_penalty(quantizers, self.entropy_weight)

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> STEQuantizer:
        return STEQuantizer(tuple(x.shape), bits or self.bits, Granularity.parse(self.granularity), self.scheme)


__all__ = ["STE", "STEQuantizer", "fake_quantize_ste", "minmax_grid"]
