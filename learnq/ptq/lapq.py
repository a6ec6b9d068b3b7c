"""LAPQ: loss-aware post-training quantization (Nahshan et al., seeds/001, §4 and Algorithm 1; METHODS.md §2).

All selected conv/linear weights and their input activations are quantized, one clipping value α per tensor (the
paper's protocol: ``granularity="tensor"``) or per output channel of a weight (learnq's default grid; Powell then
searches one α per channel); the first and last layers stay in float by default (§5.1). Three steps:

1. *Layer-wise* (§4.1, Eq. 12): for each p in ``linspace(p_min, p_max, p_count)`` (2..4, 10 values), every tensor
   gets ``α_p = argmin_α mean(|Q_α(x) - x|^p)`` (:func:`learnq.clipping.clip_lp`; weights: the float weight,
   activations: the values observed on the calibration set with the float model).
2. *Quadratic approximation* (§4.2): the calibration loss ``L(α_p)`` is evaluated for every p, ``L ≈ a p² + b p + c``
   is fitted and ``p* = -b/(2a)``. The paper and its reference code take p* as is; here p* is used only when
   ``a > 0`` and clamped into [p_min, p_max], otherwise the best sampled p is taken (METHODS.md §2).
   ``quadratic=False`` starts from p = 2 instead (the "LW" row of the paper's ablation, Table 3).
3. *Joint* (§4.3): ``scipy.optimize.minimize(f, α_{p*}, method="Powell", options={"maxiter": 2})`` over the vector
   of all weight and activation α's, ``f`` = mean cross-entropy over the calibration set (eval mode, no gradient),
   with the bias correction of Banner et al. inside every evaluation (the PTQWeight applies it whenever α changes).
   α stays positive: Powell runs on log α (``space="log"``, default) or on α with bounds (``space="linear"``).
   The best point evaluated is kept (Powell's last evaluation need not be it).

Every loss evaluation is counted (``PTQResult.loss_evals``); :class:`learnq.ptq.calib_loss.CalibrationLoss` caches the
float prefix of the network and re-quantizes only the weights whose α changed, so one evaluation costs one pass of
the quantized part of the network over the calibration set.

Weights use the grid of ``quantize(..., scheme=...)`` (symmetric by default, as the other PTQ methods, so that
comparisons are at the same grid; ``scheme="lapq"`` is the reference code's 2^b levels on [-α, α]). Activations use
the unsigned grid when the calibration inputs are non-negative (post-ReLU), the symmetric one otherwise. The
calibration set must have labels: LAPQ minimises the task loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from learnq.clipping import clip_lp
from learnq.errors import ConfigError, DataError
from learnq.ptq.calib_loss import CalibrationLoss, StepCoordinate
from learnq.ptq.context import PTQContext, PTQMethod

SPACES = ("log", "linear")


def p_grid(p_min: float = 2.0, p_max: float = 4.0, p_count: int = 10) -> np.ndarray:
    """The sampled norms ``linspace(p_min, p_max, p_count)``."""
    if isinstance(p_count, bool) or not isinstance(p_count, int) or p_count < 1:
        raise ConfigError(f"p_count must be an integer >= 1, got {p_count!r}")
    if not (0 < p_min <= p_max and math.isfinite(p_max)):
        raise ConfigError(f"need 0 < p_min <= p_max < inf, got p_min={p_min!r}, p_max={p_max!r}")
    return np.linspace(p_min, p_max, p_count)


def fit_p_star(ps: Sequence[float] | np.ndarray, losses: Sequence[float] | np.ndarray,
               p_range: tuple[float, float] | None = None) -> tuple[float, str, np.ndarray]:
    """``(p*, how, (a, b, c))`` from the quadratic fit ``L ≈ a p² + b p + c`` of the sampled losses.

    how: ``"fit"`` (p* = -b/2a inside the range), ``"clamped"`` (a > 0 but -b/2a outside ``p_range``, default the
    sampled range: clamped to it), ``"best-sample"`` (a <= 0, a non-finite fit or fewer than 3 samples: the sampled
    p with the lowest loss).
    """
    p = np.asarray(ps, dtype=np.float64).reshape(-1)
    L = np.asarray(losses, dtype=np.float64).reshape(-1)
    if p.size != L.size or p.size == 0:
        raise ConfigError(f"fit_p_star needs as many losses as p values (got {L.size} and {p.size})")
    lo, hi = (float(p.min()), float(p.max())) if p_range is None else (float(p_range[0]), float(p_range[1]))
    best = float(p[int(np.nanargmin(np.where(np.isfinite(L), L, np.nan)))]) if np.isfinite(L).any() else float(p[0])
    if p.size < 3 or np.unique(p).size < 3 or not np.isfinite(L).all():
        return best, "best-sample", np.full(3, np.nan)
    coeffs = np.polyfit(p, L, 2)
    a, b = float(coeffs[0]), float(coeffs[1])
    if not (np.isfinite(coeffs).all() and a > 0):
        return best, "best-sample", coeffs
    vertex = -b / (2 * a)
    if lo <= vertex <= hi:
        return vertex, "fit", coeffs
    return min(max(vertex, lo), hi), "clamped", coeffs


def lp_alphas(coords: Sequence[StepCoordinate], p: float, *, grid: int = 100) -> list[torch.Tensor]:
    """α_p of every coordinate: :func:`clip_lp` of its values (weight or observed activations) at norm ``p``."""
    return [clip_lp(c.values(), c.spec(), p=float(p), grid=grid).float().cpu() for c in coords]


@dataclass
class PowellResult:
    """Best point found, its loss, Powell's iterations and message, and the evaluations it made."""

    x: np.ndarray
    fun: float
    nit: int
    nfev: int
    message: str


def powell(f: Callable[[np.ndarray], float], x0: np.ndarray, *, maxiter: int = 2, xtol: float = 1e-4,
           ftol: float = 1e-4, maxfev: int | None = None,
           bounds: Sequence[tuple[float | None, float | None]] | None = None) -> PowellResult:
    """``scipy.optimize.minimize(f, x0, method="Powell")`` limited to ``maxiter`` iterations, returning the best
    point evaluated (with ``maxiter = 0``: ``x0`` after one evaluation)."""
    from scipy.optimize import minimize

    if isinstance(maxiter, bool) or not isinstance(maxiter, int) or maxiter < 0:
        raise ConfigError(f"maxiter must be an integer >= 0, got {maxiter!r}")
    x0 = np.asarray(x0, dtype=np.float64).reshape(-1)
    best: dict[str, Any] = {"x": x0.copy(), "fun": math.inf}
    calls = [0]

    def tracked(x: np.ndarray) -> float:
        calls[0] += 1
        value = float(f(x))
        if value < best["fun"]:
            best["x"], best["fun"] = np.array(x, dtype=np.float64), value
        return value

    if maxiter == 0 or x0.size == 0:
        tracked(x0)
        return PowellResult(best["x"], best["fun"], 0, calls[0], "maxiter = 0: no joint optimisation")
    options: dict[str, Any] = {"maxiter": maxiter, "xtol": xtol, "ftol": ftol}
    if maxfev:
        options["maxfev"] = maxfev
    res = minimize(tracked, x0, method="Powell", bounds=bounds, options=options)
    return PowellResult(best["x"], best["fun"], int(res.nit), calls[0], str(res.message))


@dataclass
class LAPQReport:
    """What one LAPQ run did (also returned in ``PTQResult.extra``)."""

    names: list[str]
    ps: list[float]
    p_losses: list[float]
    p_star: float
    p_star_how: str
    fit: list[float]
    start_loss: float
    final_loss: float
    powell_iterations: int
    powell_evals: int
    powell_message: str
    loss_evals: int
    cached: bool
    alphas: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_lapq(model: nn.Module, calib_data: object, *, p_min: float = 2.0, p_max: float = 4.0, p_count: int = 10,
             quadratic: bool = True, maxiter: int = 2, maxfev: int = 0, xtol: float = 1e-4, ftol: float = 1e-4,
             space: str = "log", lp_grid: int = 100, cache: bool = True, batch_size: int = 256,
             device: str | torch.device = "cpu", progress: bool = False) -> LAPQReport:
    """Algorithm 1 on ``model``, whose PTQ weight and input quantizers are attached and calibrated (the float
    model's activation statistics observed). Sets every α in place; ``calib_data`` must be labelled."""
    if space not in SPACES:
        raise ConfigError(f"space={space!r} is unknown; use 'log' (optimise log α) or 'linear' (α with bounds)")
    ps = p_grid(p_min, p_max, p_count)
    loss = CalibrationLoss(model, calib_data, batch_size=batch_size, device=device, cache=cache)
    coords = loss.coordinates
    bar = tqdm(desc="lapq", unit="eval", disable=not progress)
    loss.bar = bar
    try:
        # 1-2: layer-wise Lp sweep, loss along the trajectory, quadratic fit
        by_p = [torch.cat(lp_alphas(coords, p, grid=lp_grid)).double().numpy() for p in ps]
        p_losses = [loss(a) for a in by_p]
        if quadratic:
            p_star, how, coeffs = fit_p_star(ps, p_losses, (p_min, p_max))
        else:
            p_star, how, coeffs = float(ps[0]), "no-fit", np.full(3, np.nan)
        sampled = [i for i, p in enumerate(ps) if math.isclose(float(p), p_star, rel_tol=0, abs_tol=1e-12)]
        start = by_p[sampled[0]] if sampled else torch.cat(lp_alphas(coords, p_star, grid=lp_grid)).double().numpy()
        start_loss = p_losses[sampled[0]] if sampled else loss(start)
        # 3: Powell over all α (those > 0; an α of 0 belongs to an all-zero tensor and stays 0)
        live = start > 0
        full = start.copy()

        def to_alpha(x: np.ndarray) -> np.ndarray:
            full[live] = np.exp(x) if space == "log" else x
            return full

        def objective(x: np.ndarray) -> float:
            value = loss(to_alpha(x))
            bar.set_postfix(loss=f"{value:.4f}", refresh=False)
            return value

        x0 = np.log(start[live]) if space == "log" else start[live]
        bounds = None if space == "log" else [(1e-8 * float(a), None) for a in start[live]]
        result = powell(objective, x0, maxiter=maxiter, xtol=xtol, ftol=ftol, maxfev=maxfev or None, bounds=bounds)
        if result.fun <= start_loss:
            final, final_loss = to_alpha(result.x).copy(), result.fun
        else:  # maxiter = 0 re-evaluates the start; never end worse than it
            final, final_loss = start, start_loss
        loss.set_alphas(final)
    finally:
        bar.close()
    return LAPQReport(names=loss.names, ps=[float(p) for p in ps], p_losses=[float(v) for v in p_losses],
                      p_star=float(p_star), p_star_how=how, fit=[float(c) for c in coeffs],
                      start_loss=float(start_loss), final_loss=float(final_loss),
                      powell_iterations=result.nit, powell_evals=result.nfev, powell_message=result.message,
                      loss_evals=loss.evals, cached=loss.cached, alphas=[float(a) for a in final])


OPTIONS: dict[str, Any] = {"p_min": 2.0, "p_max": 4.0, "p_count": 10, "quadratic": True, "maxiter": 2,
                           "maxfev": 0, "xtol": 1e-4, "ftol": 1e-4, "space": "log", "lp_grid": 100, "cache": True,
                           "correct_bias": True}


def _lapq_method(ctx: PTQContext) -> dict[str, Any]:
    """The ``lapq`` PTQ method: activation quantizers observe the float model, then weight quantizers are attached
    (with bias correction, as the paper, unless the option ``correct_bias=False``), then :func:`run_lapq`."""
    if ctx.targets is None:
        raise DataError("LAPQ minimises the cross-entropy on the calibration set, which therefore needs labels: give "
                        "a Dataset of (input, target) pairs or a DataLoader yielding them")
    opts = {k: v for k, v in ctx.options.items() if not k.startswith("_")}
    correct_bias = bool(opts.pop("correct_bias"))
    ctx.bias_correction = ctx.bias_correction or correct_bias
    acts = ctx.attach_activations(clip="minmax", finish=False)
    for q in acts.values():
        q.finish_calibration("minmax")  # decides signed/unsigned and enables; α is LAPQ's from here on
    ctx.attach_weights(clip="mse")
    report = run_lapq(ctx.model, TensorDataset(ctx.inputs, ctx.targets), batch_size=ctx.batch_size,
                      device=ctx.device, progress=ctx.progress, **opts)
    ctx.loss_evals += report.loss_evals
    return {"lapq": report.as_dict()}


METHOD = PTQMethod(
    "lapq", "LAPQ (seeds/001): Lp sweep, quadratic fit of the loss in p, Powell on all steps; first/last layers float",
    _lapq_method, options=OPTIONS, skip_first_last=True, quick={"p_count": 3, "maxiter": 1})


__all__ = ["LAPQReport", "METHOD", "OPTIONS", "PowellResult", "fit_p_star", "lp_alphas", "p_grid", "powell", "run_lapq"]
