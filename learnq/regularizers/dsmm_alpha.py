"""DSMM's temperature: its gradient, its equilibrium ``α*`` for given weights, and a per-epoch trace of both
(Kundu et al. 2024, seeds/000, Section 3, Eq. 1).

With ``p = softmax(α·W)`` and ``q = softmax(-α·W)`` over a layer's weights, Eq. 1 is
``L(α) = E_p[W] - E_q[W] + e^{-α}``, and since ``d E_p[W] / dα = Var_p(W)`` and ``d E_q[W] / dα = -Var_q(W)``::

    dL/dα = Var_p(W) + Var_q(W) - e^{-α}

The two variances (the "spread term", >= 0) push ``α`` down, ``e^{-α}`` pushes it up. The task loss does not depend
on ``α``, so for fixed weights the training loss ``task + λ·Σ L`` is lowest where ``dL/dα = 0``: the equilibrium
``α*`` of the layer, independent of ``λ``. For Gaussian weights of standard deviation ``σ`` the tilted variances
both equal ``σ²``, so ``α* ≈ -ln(2σ²)`` (about 3.9 for ``σ = 0.1``, 7.1 for ``σ = 0.02``). ``λ`` and the learning
rate set only how fast ``α`` gets there: each SGD step moves it by ``lr·λ·dL/dα``.

``equilibrium_alpha`` finds ``α*`` on ``α >= 0``: ``dL/dα`` on a log grid, every change of sign from - to + refined
by bisection (a local minimum of ``L``), the one with the lowest ``L`` returned; 0 when ``L`` rises from ``α = 0``
(weight variance above about 1/2), ``inf`` when ``L`` falls up to the grid's end (all weights equal). ``dims=d``
(the multi-dimensional variant of :mod:`learnq.regularizers.dsmm`) sums the derivative over the ``d`` columns.

:class:`DSMMTrace` records, after each epoch (a ``train(..., callbacks=[trace])`` callback), every layer's ``α``,
``α*``, ``dL/dα`` at the current ``α`` and the soft range ``s_max - s_min``; :func:`plot_alpha_trace` draws the
trajectory of ``α`` against ``α*`` per layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from learnq.errors import ConfigError

#: The grid on which ``equilibrium_alpha`` looks for sign changes of dL/dα (then refined by bisection).
ALPHA_GRID = np.concatenate([[0.0], np.geomspace(1e-3, 1e4, 281)])


def _columns(weight: torch.Tensor | np.ndarray, dims: int | None) -> np.ndarray:
    w = weight.detach().cpu().double().numpy() if isinstance(weight, torch.Tensor) else np.asarray(weight, float)
    return w.reshape(-1, 1) if dims is None else w.reshape(-1, dims)


def _tilted(w: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """``(E_p[W], Var_p[W])`` per column for ``p = softmax(alpha·W)`` (float64, shifted for stability)."""
    z = alpha * w
    e = np.exp(z - z.max(axis=0, keepdims=True))
    p = e / e.sum(axis=0, keepdims=True)
    mean = (p * w).sum(axis=0)
    var = (p * (w - mean) ** 2).sum(axis=0)  # centred form: no cancellation
    return mean, var


def loss_at(weight: torch.Tensor | np.ndarray, alpha: float, dims: int | None = None) -> float:
    """Eq. 1 in float64 for fixed weights at temperature ``alpha`` (summed over columns with ``dims``)."""
    return _loss(_columns(weight, dims), alpha)


def _loss(w: np.ndarray, alpha: float) -> float:
    s_max, _ = _tilted(w, alpha)
    s_min, _ = _tilted(w, -alpha)
    return float((s_max - s_min + math.exp(-alpha)).sum())


def alpha_gradient(weight: torch.Tensor | np.ndarray, alpha: float, dims: int | None = None) -> float:
    """``dL/dα = Σ_columns Var_p(W) + Var_q(W) - e^{-α}`` at ``alpha`` (float64)."""
    return _gradient(_columns(weight, dims), alpha)


def _gradient(w: np.ndarray, alpha: float) -> float:
    _, var_p = _tilted(w, alpha)
    _, var_q = _tilted(w, -alpha)
    return float((var_p + var_q - math.exp(-alpha)).sum())


def equilibrium_alpha(weight: torch.Tensor | np.ndarray, dims: int | None = None, *, tol: float = 1e-10) -> float:
    """``α* >= 0`` minimising Eq. 1 for these weights (see the module docstring); bisection to ``tol`` relative."""
    return _equilibrium(_columns(weight, dims), tol)


def _equilibrium(w: np.ndarray, tol: float = 1e-10) -> float:
    grads = np.array([_gradient(w, a) for a in ALPHA_GRID])
    # a sign change to strictly > 0: where e^{-α} underflows (α > 745) the derivative of equal weights is exactly 0
    crossings = np.nonzero((grads[:-1] < 0) & (grads[1:] > 0))[0]
    if grads[0] >= 0 and not len(crossings):
        return 0.0
    roots = []
    for i in crossings:
        lo, hi = float(ALPHA_GRID[i]), float(ALPHA_GRID[i + 1])
        while hi - lo > tol * max(hi, 1e-12):
            mid = 0.5 * (lo + hi)
            if _gradient(w, mid) < 0:
                lo = mid
            else:
                hi = mid
        roots.append(0.5 * (lo + hi))
    candidates = roots + ([0.0] if grads[0] >= 0 else [])
    if not candidates:  # dL/dα < 0 on the whole grid: L keeps falling (weights (nearly) all equal)
        return math.inf
    return min(candidates, key=lambda a: _loss(w, a))


class DSMMTrace:
    """Per-epoch record of a :class:`learnq.regularizers.DSMM`'s temperatures and their equilibria.

    Use as a training callback (``train(..., callbacks=[trace])``); call ``trace.record(0)`` before training to have
    the starting point. ``history`` is a list of ``{"epoch", "alpha", "alpha_star", "grad", "soft_range"}`` records,
    each a ``{layer: float}`` mapping except ``epoch`` (``alpha_star`` None where it is infinite: all weights of
    the layer equal). A resumed training records only the epochs it runs.
    """

    def __init__(self, regularizer: nn.Module) -> None:
        if not hasattr(regularizer, "alphas") or not hasattr(regularizer, "layers"):
            raise ConfigError(f"DSMMTrace needs a DSMM regularizer, got {type(regularizer).__name__}")
        self.regularizer = regularizer
        self.history: list[dict[str, Any]] = []

    @torch.no_grad()
    def snapshot(self) -> dict[str, dict[str, float]]:
        """Every layer's ``alpha``, ``alpha_star``, ``grad`` (dL/dα at alpha) and ``soft_range`` now."""
        reg = self.regularizer
        dims = getattr(reg, "dims", None)
        out: dict[str, dict[str, Any]] = {"alpha": {}, "alpha_star": {}, "grad": {}, "soft_range": {}}
        for (name, module), a in zip(reg.layers(), reg.alpha, strict=True):
            w = _columns(module.weight, dims)
            alpha = float(a)
            s_max, _ = _tilted(w, alpha)
            s_min, _ = _tilted(w, -alpha)
            out["alpha"][name] = alpha
            star = _equilibrium(w)
            out["alpha_star"][name] = star if math.isfinite(star) else None  # None: JSON has no inf
            out["grad"][name] = _gradient(w, alpha)
            out["soft_range"][name] = float((s_max - s_min).sum())
        return out

    def record(self, epoch: int) -> dict[str, Any]:
        entry = {"epoch": int(epoch), **self.snapshot()}
        self.history.append(entry)
        return entry

    def __call__(self, record: dict, model: nn.Module) -> None:
        self.record(record["epoch"])


def plot_alpha_trace(history: Sequence[dict[str, Any]], path: str | Path, *, title: str | None = None) -> Path:
    """PNG of ``α`` (solid) and ``α*`` (dashed) per layer against the epoch, from a :class:`DSMMTrace` history."""
    from learnq.analysis.plots import new_figure, save_png, series_color

    if not history:
        raise ConfigError("the DSMM trace is empty: nothing to plot (record at least one epoch)")
    layers = list(history[0]["alpha"])
    epochs = [h["epoch"] for h in history]
    fig = new_figure(7.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for i, layer in enumerate(layers):
        color = series_color(i)
        ax.plot(epochs, [h["alpha"][layer] for h in history], color=color, linewidth=1.3, label=layer)
        star = [h["alpha_star"][layer] for h in history]
        ax.plot(epochs, [float("nan") if s is None else s for s in star], color=color, linewidth=1.0, linestyle="--")
    ax.set(xlabel="epoch", ylabel="temperature α", yscale="log",
           title=title or "DSMM temperature α per layer (solid) and its equilibrium α* (dashed)")
    ax.grid(True, alpha=0.3, which="both")
    if len(layers) <= 12:
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_png(fig, path)


__all__ = ["ALPHA_GRID", "DSMMTrace", "alpha_gradient", "equilibrium_alpha", "loss_at", "plot_alpha_trace"]
