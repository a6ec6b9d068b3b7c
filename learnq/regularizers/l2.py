"""L2 weight regularization, the baseline DSMM is compared against (seeds/000, Section 3 and Table 1: "L2 (1x,
baseline) and heavy L2 (10x)").

Per layer ``L = ½·Σ w²`` over the conv/linear weights (not biases), total ``strength · Σ_layers L``. With the ``½``
the gradient is ``strength · w``, the same as SGD's ``weight_decay=strength`` restricted to these weights, so
``strength`` reads as a weight-decay coefficient. Heavy L2 (``l2-heavy``) is the same loss with 10x the strength
given (``L2Heavy(model, s)`` is ``L2(model, 10·s)``). Default strength: 5e-4 (a common CIFAR weight decay; the
paper does not give its value).
"""

from __future__ import annotations

import torch
from torch import nn

from learnq.regularizers.base import Regularizer, check_strength, compute_dtype

L2_DEFAULT_STRENGTH = 5e-4


def l2_loss(weight: torch.Tensor) -> torch.Tensor:
    """``½·Σ w²`` of one weight tensor."""
    return 0.5 * (weight.to(compute_dtype(weight)) ** 2).sum()


class L2(Regularizer):
    """``strength · Σ_layers ½‖w‖²`` over the model's conv and linear weights."""

    name = "l2"
    description = "L2 on conv/linear weights, 1x (strength acts as a weight-decay coefficient): DSMM's baseline"
    default_strength = L2_DEFAULT_STRENGTH

    def __init__(self, model: nn.Module, strength: float | None = None) -> None:
        super().__init__(model, strength)

    def layer_loss(self, index: int, weight: torch.Tensor) -> torch.Tensor:
        return l2_loss(weight)


class L2Heavy(L2):
    """Heavy L2 (seeds/000's "heavy L2"): ``L2`` at ``factor`` (10) times the given base strength.

    ``strength`` is the 1x (baseline) coefficient, so ``"l2"`` and ``"l2-heavy"`` built with the same strength differ
    by exactly ``factor``; ``self.strength`` holds the effective (multiplied) value.
    """

    name = "l2-heavy"
    description = "Heavy L2: 10x the l2 strength, DSMM's second baseline (shrinks scale, keeps outliers)"
    factor = 10.0

    def __init__(self, model: nn.Module, strength: float | None = None) -> None:
        super().__init__(model, check_strength(L2_DEFAULT_STRENGTH if strength is None else strength) * self.factor)


__all__ = ["L2", "L2Heavy", "l2_loss", "L2_DEFAULT_STRENGTH"]
