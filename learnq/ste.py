"""Straight-through estimators and gradient scaling (Bengio et al. 2013; LSQ, Esser et al. 2020, §2.2).

* ``round_ste(x)`` / ``floor_ste(x)``: forward rounds (floors), backward passes the gradient unchanged.
* ``grad_scale(x, s)``: forward is the identity, backward multiplies the gradient by ``s`` (LSQ's step-size
  gradient scale ``1/sqrt(numel·Q_p)``).
* ``ste(x, y)``: forward ``y``, backward the identity to ``x``, for any quantizer ``y = Q(x)``: the one
  straight-through function of learnq (weight quantizers, activation quantizers). Unlike the ``x + (y - x).detach()``
  idiom its value is ``y`` bit for bit, so a fake quantizer's training forward and its eval forward agree.
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


class _Passthrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exactly the values of ``y``; the identity gradient to ``x`` (a straight-through estimator)."""
    return _Passthrough.apply(x, y.detach())
