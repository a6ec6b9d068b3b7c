"""Hessian of the calibration loss with respect to the quantization steps, and its Gaussian curvature.

LAPQ (Nahshan et al., seeds/001): §3.2 Eq. (8) / App. A Eq. (A.16) ``H_ij = ∂²L/∂Δ_i∂Δ_j`` over the vector of
steps Δ of all quantized tensors, the Gaussian curvature Eq. (9)

    K = det(H) / (‖∇L‖² + 1)²,

and Fig. A.1, the heat map of |H| (off-diagonal entries measure how non-separable the layers' steps are).

The loss of a quantized network is piecewise constant in each step at the finest scale (a small change of Δ moves
no value across a rounding boundary), so its derivatives are taken by central finite differences with a *relative*
step ``h_i = rel_step·Δ_i`` large enough to average over many boundaries (5 % by default):

    H_ii = (L(Δ + h_i e_i) - 2 L(Δ) + L(Δ - h_i e_i)) / h_i²,
    H_ij = (L(++) - L(+-) - L(-+) + L(--)) / (4 h_i h_j),      g_i = (L(Δ + h_i e_i) - L(Δ - h_i e_i)) / (2 h_i),

exact for a quadratic function. n steps cost 1 + 2n + 2n(n-1) loss evaluations (451 for the paper's 15 layers).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from learnq.errors import ConfigError


def _steps_vector(x0: np.ndarray, h: float | Sequence[float] | np.ndarray) -> np.ndarray:
    hv = np.broadcast_to(np.asarray(h, dtype=np.float64), x0.shape).copy()
    if not bool(np.all(np.isfinite(hv))) or bool(np.any(hv <= 0)):
        raise ConfigError(f"finite-difference steps must be finite and > 0, got {h!r}")
    return hv


def finite_difference_hessian(f: Callable[[np.ndarray], float], x0: np.ndarray | Sequence[float],
                              h: float | Sequence[float] | np.ndarray, *,
                              progress: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """``(H, grad, f(x0))`` of ``f`` at ``x0`` by central differences with step ``h`` (scalar or per coordinate).

    ``H`` is symmetric (n, n), ``grad`` (n,). Calls ``f`` 1 + 2n + 2n(n-1) times.
    """
    x = np.asarray(x0, dtype=np.float64).reshape(-1)
    n = x.size
    if n == 0:
        raise ConfigError("finite_difference_hessian needs at least one variable")
    hv = _steps_vector(x, h)
    total = 1 + 2 * n + 2 * n * (n - 1)
    bar = tqdm(total=total, desc="hessian", unit="eval", disable=not progress)

    def at(*moves: tuple[int, float]) -> float:
        y = x.copy()
        for i, sign in moves:
            y[i] += sign * hv[i]
        bar.update(1)
        return float(f(y))

    try:
        f0 = at()
        plus = np.array([at((i, 1.0)) for i in range(n)])
        minus = np.array([at((i, -1.0)) for i in range(n)])
        grad = (plus - minus) / (2 * hv)
        hess = np.diag((plus - 2 * f0 + minus) / hv**2)
        for i in range(n):
            for j in range(i + 1, n):
                value = (at((i, 1), (j, 1)) - at((i, 1), (j, -1)) - at((i, -1), (j, 1)) + at((i, -1), (j, -1)))
                hess[i, j] = hess[j, i] = value / (4 * hv[i] * hv[j])
    finally:
        bar.close()
    return hess, grad, f0


def gaussian_curvature(hessian: np.ndarray | torch.Tensor, grad: np.ndarray | torch.Tensor) -> float:
    """LAPQ Eq. (9): ``det(H) / (‖∇L‖² + 1)²``, computed through ``slogdet`` (no overflow for large n)."""
    H = np.asarray(hessian.detach().cpu() if isinstance(hessian, torch.Tensor) else hessian, dtype=np.float64)
    g = np.asarray(grad.detach().cpu() if isinstance(grad, torch.Tensor) else grad, dtype=np.float64).reshape(-1)
    if H.ndim != 2 or H.shape[0] != H.shape[1] or H.shape[0] != g.size:
        raise ConfigError(f"gaussian_curvature needs an (n, n) Hessian and an (n,) gradient, got {H.shape} and "
                          f"{g.shape}")
    sign, logdet = np.linalg.slogdet(H)
    if sign == 0:
        return 0.0
    return float(sign * math.exp(logdet - 2.0 * math.log1p(float(g @ g))))


@dataclass
class StepHessian:
    """The result of :func:`step_hessian`: names and values of the steps, the loss there, gradient, Hessian, the
    finite-difference steps used, the Gaussian curvature (Eq. 9) and the number of loss evaluations."""

    names: list[str]
    steps: np.ndarray
    loss: float
    grad: np.ndarray
    hessian: np.ndarray
    h: np.ndarray
    curvature: float
    loss_evals: int


def step_hessian(model: nn.Module, calib_data: object, *, names: Sequence[str] | None = None,
                 rel_step: float = 0.05, batch_size: int = 256, device: str | torch.device = "cpu",
                 progress: bool = False) -> StepHessian:
    """Hessian of the mean cross-entropy on ``calib_data`` w.r.t. the steps Δ of ``model``'s step quantizers.

    ``model`` carries live PTQ quantizers (``learnq.ptq.quantize(...).model`` of any method, e.g. ``"mse"`` for
    the paper's point "that minimizes the L2 norm", or ``"lapq"``); ``names`` chooses some of them (default all, in
    model order; :func:`learnq.ptq.calib_loss.step_coordinates`). The derivatives are taken at the current steps
    with ``h_i = rel_step·Δ_i``; the model's steps are restored afterwards.
    """
    from learnq.ptq.calib_loss import CalibrationLoss

    if not (isinstance(rel_step, (int, float)) and 0 < rel_step < 1):
        raise ConfigError(f"rel_step must be a fraction in (0, 1), got {rel_step!r}")
    loss = CalibrationLoss(model, calib_data, names=names, batch_size=batch_size, device=device)
    start = loss.get_steps()
    try:
        hess, grad, f0 = finite_difference_hessian(loss.loss_at_steps, start, rel_step * start, progress=progress)
    finally:
        loss.set_steps(start)
    return StepHessian(names=loss.names, steps=start, loss=f0, grad=grad, hessian=hess, h=rel_step * start,
                       curvature=gaussian_curvature(hess, grad), loss_evals=loss.evals)


def plot_hessian(hessian: np.ndarray | StepHessian, path: str | os.PathLike, *, names: Sequence[str] | None = None,
                 title: str | None = None, log: bool = True) -> Path:
    """PNG heat map of |H| (LAPQ Fig. A.1); ``log`` colours by log10 |H|. Returns the path written."""
    from learnq.analysis.plots import new_figure, save_png

    if isinstance(hessian, StepHessian):
        names = hessian.names if names is None else names
        H = hessian.hessian
    else:
        H = np.asarray(hessian, dtype=np.float64)
    if H.ndim != 2 or H.shape[0] != H.shape[1] or H.shape[0] == 0:
        raise ConfigError(f"plot_hessian needs a square, non-empty matrix, got shape {H.shape}")
    n = H.shape[0]
    values = np.abs(H)
    if log:
        floor = values[values > 0].min() if bool(np.any(values > 0)) else 1.0
        values = np.log10(np.maximum(values, floor))
    side = min(12.0, 3.0 + 0.4 * n)
    fig = new_figure(side + 1.2, side)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="log10 |H|" if log else "|H|")
    if names is not None:
        if len(names) != n:
            raise ConfigError(f"plot_hessian: {len(names)} names for a {n} x {n} Hessian")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xticklabels(list(names), rotation=90, fontsize=7)
        ax.set_yticklabels(list(names), fontsize=7)
    ax.set_title(title or "|Hessian| of the calibration loss w.r.t. the steps")
    fig.tight_layout()
    return save_png(fig, path)


__all__ = ["StepHessian", "finite_difference_hessian", "gaussian_curvature", "plot_hessian", "step_hessian"]
