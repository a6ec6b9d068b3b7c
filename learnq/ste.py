"""Straight-through estimators and gradient scaling (Bengio et al. 2013; LSQ, Esser et al. 2020, §2.2).

* ``round_ste(x)`` / ``floor_ste(x)``: forward rounds (floors), backward passes the gradient unchanged.
* ``grad_scale(x, s)``: forward is the identity, backward multiplies the gradient by ``s`` (LSQ's step-size
  gradient scale ``1/sqrt(numel·Q_p)``).
* ``ste(x, y)``: forward ``y``, backward the identity to ``x`` (the ``x + (y - x).detach()`` idiom), for any
  quantizer ``y = Q(x)``.
"""

from __future__ import annotations

import torch


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class _FloorSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest in the forward pass; identity gradient."""
    return _RoundSTE.apply(x)


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """Floor in the forward pass; identity gradient."""
    return _FloorSTE.apply(x)


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; gradient multiplied by ``scale``."""
    return _GradScale.apply(x, float(scale))


def ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Value of ``y``, gradient of the identity with respect to ``x``."""
    return x + (y - x).detach()
