"""SymReg: symmetry regularization of each layer's weight distribution (Park et al., "Symmetry Regularization and
Saturating Nonlinearity for Robust Quantization", ECCV 2022; seeds/002, supplementary Sections 1-2).

Only the supplement is available, and it gives the goal, not the formula: make each layer's weight distribution
symmetric about zero, so that the error of a symmetric quantization grid is unbiased. We build it, as METHODS.md
section 3 prescribes, as a sorted-pairing loss. With ``u = sort(w)`` ascending (n values)::

    L = mean_i (u_i + u_{n+1-i})² / (mean(w²) + ε)

An empirical distribution is symmetric about zero exactly when its i-th smallest value is minus its i-th largest,
so ``L = 0`` iff the layer's weights are symmetric, and ``L > 0`` otherwise. Dividing by the mean square makes ``L``
invariant to the weight scale (it does not push weights towards zero, unlike L2); ``ε`` only guards an all-zero
layer. Each pair enters the mean twice (as ``i`` and ``n+1-i``), the middle value of an odd ``n`` once as ``(2u)²``.
The gradient flows through ``sort`` (to the values, by their sorted position).

Depthwise convolutions are skipped, as the paper does: their few weights per channel are left free.

Default strength: the source gives none; we use 0.1 (our choice, to be tuned per model).
"""

from __future__ import annotations

import torch
from torch import nn

from learnq.regularizers.base import Regularizer, check_positive, compute_dtype


def symreg_loss(weight: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The sorted-pairing asymmetry of one weight tensor (a scalar tensor, >= 0)."""
    w = weight.reshape(-1).to(compute_dtype(weight))  # (n,)
    u = torch.sort(w).values  # ascending
    pair_sums = u + u.flip(0)  # u_i + u_{n+1-i}
    return (pair_sums**2).mean() / ((w**2).mean() + eps)


class SymReg(Regularizer):
    """Symmetry regularizer over the model's non-depthwise conv and linear weights (sum over layers).

    Args:
        model: the model whose weights are regularized.
        strength: weight ``λ`` of the summed loss in ``task + λ·Σ L`` (no value in the source; default 0.1).
        eps: added to the mean square in the denominator (> 0).
    """

    name = "symreg"
    description = "Symmetry regularization: sorted-pairing loss making each layer's weights symmetric (Park 2022)"
    default_strength = 0.1
    skip_depthwise = True

    def __init__(self, model: nn.Module, strength: float = 0.1, eps: float = 1e-8) -> None:
        super().__init__(model, strength)
        self.eps = check_positive(eps, "eps")

    def layer_loss(self, index: int, weight: torch.Tensor) -> torch.Tensor:
        return symreg_loss(weight, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps:g}"


__all__ = ["SymReg", "symreg_loss"]
