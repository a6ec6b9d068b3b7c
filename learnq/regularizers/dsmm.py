"""DSMM: Differentiable Soft Min-Max loss (Kundu, Yoo, Cho, Adya, ICML 2024 workshop "Differentiable Almost
Everything"; seeds/000, Section 3, Eq. 1).

Per layer with weight ``W`` and learnable temperature ``α`` (initialised to 0.1)::

    s_max = Σ W·e^{α(W - W_max)} / Σ e^{α(W - W_max)}        (a soft maximum of W)
    s_min = Σ W·e^{-α(W - W_min)} / Σ e^{-α(W - W_min)}      (a soft minimum of W)
    L     = (s_max - s_min) + e^{-α}

and the training loss is ``task + λ·Σ_layers L`` with ``λ = 0.01``. The ``e^{-α}`` term pushes ``α`` up, so the soft
range approaches the hard range ``max - min`` during training. ``s_max`` is ``Σ W·softmax(α·W)`` and ``s_min`` is
``Σ W·softmax(-α·W)``: the subtraction of ``W_max``/``W_min`` in Eq. 1 is exactly the softmax stabilisation, so we
compute with ``torch.softmax`` (which does it internally) and the loss is finite for any weight scale and any
``α`` whose ``e^{-α}`` is representable (``α > -88`` in float32; the loss itself overflows below that).

The temperatures are ``nn.Parameter`` s of this module (not of the model): give them their own optimizer group
without weight decay (``param_groups(lr)``) and report them with ``alphas()``. ``alpha_lr`` sets that group's
learning rate (None: the trainer's): ``α`` moves by ``lr·λ·dL/dα`` per SGD step, so at ``λ = 0.01`` and a small
network's lr and step count it stays far below its equilibrium ``α*`` (:mod:`learnq.regularizers.dsmm_alpha`,
which also records ``α`` and ``α*`` per epoch), while the paper's ImageNet runs (lr 0.4 to 1.0, seeds/000 A.1) take
orders of magnitude more steps.

Multi-dimensional variant (Section 4.4, for vector clustering with ``d``-dimensional codebooks, e.g. DKM): the
weight is reshaped to ``(-1, d)`` (consecutive values in memory form one ``d``-vector) and Eq. 1 is applied to each of
the ``d`` columns, the ``d`` column losses summed; each column's loss carries its own ``e^{-α}`` term, with one ``α``
per layer. ``dims=1`` is the same as the scalar loss. The paper gives no formula for this variant; this is our
reading of "applied multi-dimensional DSMM loss" and is stated here so it can be checked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from learnq.errors import ConfigError
from learnq.layers import raw_weight
from learnq.regularizers.base import Regularizer, check_positive, compute_dtype


def soft_max_min(weight: torch.Tensor, alpha: torch.Tensor, dims: int | None = None) -> tuple[torch.Tensor, ...]:
    """``(s_max, s_min)`` of Eq. 1; scalars, or vectors of length ``dims`` (one per column of the ``(-1, dims)``
    reshaped weight)."""
    w = weight.reshape(-1, 1) if dims is None else weight.reshape(-1, dims)  # (n, d)
    dtype = torch.promote_types(compute_dtype(w), alpha.dtype)
    w = w.to(dtype)
    a = alpha.to(dtype)
    s_max = (w * torch.softmax(a * w, dim=0)).sum(dim=0)  # (d,)
    s_min = (w * torch.softmax(-a * w, dim=0)).sum(dim=0)  # (d,)
    if dims is None:
        return s_max[0], s_min[0]
    return s_max, s_min


def dsmm_loss(weight: torch.Tensor, alpha: torch.Tensor, dims: int | None = None) -> torch.Tensor:
    """Eq. 1 for one weight tensor and temperature ``alpha`` (a scalar tensor); with ``dims=d`` the sum over the
    ``d`` columns of the ``(-1, d)`` reshaped weight."""
    s_max, s_min = soft_max_min(weight, alpha, dims)
    return (s_max - s_min + torch.exp(-alpha.to(s_max.dtype))).sum()


class DSMM(Regularizer):
    """Differentiable Soft Min-Max loss over the model's conv and linear weights (sum over layers).

    Args:
        model: the model whose conv/linear weights are regularized.
        strength: ``λ`` in ``task + λ·Σ L`` (paper: 0.01).
        alpha_init: initial temperature of every layer (paper: 0.1); must be > 0.
        dims: ``None`` for the scalar loss, or ``d >= 1`` for the multi-dimensional variant; every layer's weight
            count must then be a multiple of ``d``.
        alpha_lr: learning rate of the temperatures' optimizer group (None: the trainer's lr); read by
            ``learnq.pipeline.training.prepare_training`` and used by ``param_groups()`` when called without an lr.
    """

    name = "dsmm"
    description = "Differentiable soft min-max: shrinks each layer's weight range, learnable temperature (Kundu 2024)"
    default_strength = 0.01

    def __init__(
        self, model: nn.Module, strength: float = 0.01, alpha_init: float = 0.1, dims: int | None = None,
        alpha_lr: float | None = None,
    ) -> None:
        super().__init__(model, strength)
        self.alpha_init = check_positive(alpha_init, "alpha_init")
        self.alpha_lr = None if alpha_lr is None else check_positive(alpha_lr, "alpha_lr")
        if dims is not None and (isinstance(dims, bool) or not isinstance(dims, int) or dims < 1):
            raise ConfigError(f"dims must be None or an integer >= 1, got {dims!r}")
        self.dims = dims
        if dims is not None:
            for name, module in self._layers:
                numel = raw_weight(module).numel()
                if numel % dims:
                    raise ConfigError(
                        f"dims={dims} does not divide the {numel} weights of layer '{name}'; choose a dims that "
                        "divides every layer's weight count (or dims=None)"
                    )
        # One temperature per layer, on that layer's device, in layer order (ParameterList: layer names have dots).
        self.alpha = nn.ParameterList(
            nn.Parameter(torch.tensor(self.alpha_init, device=raw_weight(m).device)) for _, m in self._layers
        )

    def layer_loss(self, index: int, weight: torch.Tensor) -> torch.Tensor:
        return dsmm_loss(weight, self.alpha[index], self.dims)

    def alphas(self) -> dict[str, float]:
        """The current temperature of each layer."""
        return {name: float(a.detach()) for name, a in zip(self.layer_names, self.alpha, strict=True)}

    @torch.no_grad()
    def soft_ranges(self) -> dict[str, float]:
        """``s_max - s_min`` of each layer (summed over columns for ``dims``), without the ``e^{-α}`` term."""
        out = {}
        for (name, module), a in zip(self._layers, self.alpha, strict=True):
            s_max, s_min = soft_max_min(module.weight, a, self.dims)
            out[name] = float((s_max - s_min).sum())
        return out

    def param_groups(self, lr: float | None = None) -> list[dict[str, Any]]:
        """One optimizer group with the temperatures, ``weight_decay=0`` (decay would pull ``α`` to 0), at ``lr``
        (default: ``alpha_lr``; ``ConfigError`` when both are None)."""
        lr = self.alpha_lr if lr is None else lr
        if lr is None:
            raise ConfigError("DSMM.param_groups needs an lr: pass one or build DSMM with alpha_lr")
        return super().param_groups(lr)

    def extra_repr(self) -> str:
        lr = "" if self.alpha_lr is None else f", alpha_lr={self.alpha_lr:g}"
        return f"{super().extra_repr()}, alpha_init={self.alpha_init:g}, dims={self.dims}{lr}"


__all__ = ["DSMM", "dsmm_loss", "soft_max_min"]
