"""Robustness to the weight step: accuracy when each layer's quantization step is scaled away from its optimum.

The SymReg/SatNL supplement (Park et al., ECCV 2022; seeds/002, supplementary Section 8, Fig. 5A, and Fig. 7 of
the main paper): the networks are quantized with the step ``Δ'`` their PTQ chose, then evaluated with a scaled step
``Δ = factor·Δ'``; a network whose accuracy stays flat over the factors is robust to the choice of step.

Here the weights are quantized directly on a ``learnq.grid`` grid (weights only, activations stay float; the
supplement quantizes both with its PTQ). The optimal clipping value ``α`` of each group (one per tensor by default)
comes from one of two rules:

* ``minmax``: the group's range (``max|w|`` for the symmetric and LAPQ grids, ``[min, max]`` for the affine one);
* ``mse``: the ``α`` minimising ``Σ (w - Q_α(w))²`` over ``mse_grid`` candidates ``α = (i/mse_grid)·α_minmax``,
  ``i = 1..mse_grid`` (ties go to the smaller ``α``; a constant group, stored exactly by any grid, keeps its
  min-max ``α``).
* any other rule of ``learnq.clipping`` (``aciq``, the supplement's PTQ for Fig. 1A; ``kl``; ``lp``), for the
  symmetric and LAPQ grids.

Every grid's step is proportional to ``α``, so the scaled step is obtained by quantizing with ``clip = factor·α``
(``quantize_tensor(w, spec, clip=factor·α)``): ``factor < 1`` clips more and steps finer, ``factor > 1`` clips
nothing and wastes levels. For the affine grid the range ``[lo, hi]`` is scaled about its centre.

``per_layer=False`` (default) scales every layer's step by the same factor (Fig. 5A); ``per_layer=True`` scales one
layer at a time while every other layer stays quantized at its optimal step, which shows which layer is fragile.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from learnq.analysis.plots import new_figure, save_png, series_color
from learnq.analysis.weights import named_weights
from learnq.attach import Selection
from learnq.errors import ConfigError
from learnq.evaluation import evaluate
from learnq.granularity import Granularity
from learnq.grid import GridSpec, QuantizedTensor, check_tensor, quantize_tensor
from learnq.quantized import attach_quantized

FACTORS = (0.5, 0.625, 0.75, 0.875, 1.0, 1.25, 1.5, 1.75, 2.0)
STEP_RULES = ("minmax", "mse")
SCHEMES = ("symmetric", "lapq", "affine")
MSE_GRID = 100


def _check_factors(factors: Sequence[float]) -> tuple[float, ...]:
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence) or not factors:
        raise ConfigError(f"factors must be a non-empty sequence of numbers > 0, got {factors!r}")
    out = []
    for f in factors:
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not (f > 0 and math.isfinite(f)):
            raise ConfigError(f"every step factor must be a finite number > 0, got {f!r}")
        out.append(float(f))
    return tuple(out)


def _minmax_alpha(w: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    """Per group: half the range ``(max - min)/2`` for the affine grid, ``max|w|`` for the others; float32."""
    rows = spec.granularity.view(w.detach().float())  # (n_groups, group_len)
    lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
    if spec.scheme == "affine":
        return (hi - lo) / 2
    return torch.maximum(hi.abs(), lo.abs())


def quantize_scaled(w: torch.Tensor, spec: GridSpec, alpha: torch.Tensor, factor: float = 1.0,
                    name: str = "tensor") -> QuantizedTensor:
    """``w`` on ``spec``'s grid with clipping ``factor·alpha`` per group (for affine: about the group's centre).

    ``alpha`` is what :func:`optimal_clip` returns (the half-width of the range for the affine grid).
    """
    if spec.scheme == "affine":
        rows = spec.granularity.view(w.detach().float())
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        shrink = (hi - lo) / 2 - alpha * factor  # 0 exactly at the min-max range: the plain min-max grid
        return quantize_tensor(w, spec, clip=hi - shrink, clip_low=lo + shrink, method="step-scaled", name=name)
    return quantize_tensor(w, spec, clip=alpha * factor, method="step-scaled", name=name)


def optimal_clip(w: torch.Tensor, spec: GridSpec, rule: str = "minmax", *, mse_grid: int = MSE_GRID,
                 name: str = "tensor") -> torch.Tensor:
    """The optimal clipping value ``α`` of each group of ``w`` (float32, shape ``(n_groups,)``) under ``rule``."""
    from learnq.clipping import CLIP_METHODS, choose_clip

    check_tensor(w, name)
    if rule not in STEP_RULES and rule not in CLIP_METHODS:
        known = ", ".join(dict.fromkeys((*STEP_RULES, *CLIP_METHODS)))
        raise ConfigError(f"step rule {rule!r} is unknown; use one of {known}")
    if spec.scheme not in SCHEMES:
        raise ConfigError(f"scheme {spec.scheme!r} cannot quantize signed weights here; "
                          f"use one of {', '.join(SCHEMES)}")
    alpha = _minmax_alpha(w, spec)
    if rule == "minmax":
        return alpha
    if rule != "mse":  # the other rules of learnq.clipping (aciq, kl, lp): symmetric and lapq grids only
        return choose_clip(w.detach().float(), spec, rule).float()
    if isinstance(mse_grid, bool) or not isinstance(mse_grid, int) or mse_grid < 1:
        raise ConfigError(f"mse_grid must be an integer >= 1, got {mse_grid!r}")
    g = spec.granularity
    mask = g.group_mask(tuple(w.shape), device=w.device)
    x = w.detach().float()
    errors = []
    for i in range(1, mse_grid + 1):
        qt = quantize_scaled(x, spec, alpha, i / mse_grid, name)
        sq = g.view((qt.dequantize().float() - x) ** 2)
        errors.append((sq * mask).sum(dim=1))
    best = torch.stack(errors).argmin(dim=0)  # first minimum: the smallest α among ties
    rows = g.view(x)
    constant = rows.min(dim=1).values == rows.max(dim=1).values  # stored exactly whatever α: keep the range
    return torch.where(constant, alpha, alpha * (best + 1).float() / mse_grid)


def step_robustness(model: nn.Module, data: Dataset | DataLoader, factors: Sequence[float] = FACTORS, bits: int = 4,
                    *, step: str = "minmax", scheme: str = "symmetric", granularity: str = "tensor",
                    per_layer: bool = False, selection: Selection | None = None, mse_grid: int = MSE_GRID,
                    batch_size: int = 256, device: str | torch.device = "cpu",
                    progress: bool = False) -> list[dict[str, Any]]:
    """Accuracy of ``model`` with its weights quantized at ``factor`` times their optimal step, for each factor.

    ``data``: an evaluation Dataset of ``(input, label)`` or a DataLoader. ``model`` itself is not changed (a copy
    is quantized). Returns one row per (layer, factor): ``{"layer", "factor", "bits", "step", "scheme",
    "granularity", "accuracy", "loss", "n"}``, with ``layer = "all"`` unless ``per_layer``, in which case there is
    one row per weight (its parameter name) and factor.
    """
    factors = _check_factors(factors)
    spec = GridSpec(bits=bits, scheme=scheme, granularity=Granularity.parse(granularity))
    weights = [(name, w.float().clone()) for name, w in named_weights(model, selection)]
    alphas = {name: optimal_clip(w, spec, step, mse_grid=mse_grid, name=name) for name, w in weights}
    work = copy.deepcopy(model).to(device)

    def place(name: str, w: torch.Tensor, factor: float) -> None:
        attach_quantized(work, name, quantize_scaled(w, spec, alphas[name], factor, name))

    plan = [("all", f) for f in factors] if not per_layer else [(n, f) for n, _ in weights for f in factors]
    base = {"bits": bits, "step": step, "scheme": scheme, "granularity": str(spec.granularity)}
    rows: list[dict[str, Any]] = []
    if per_layer:
        for name, w in weights:
            place(name, w, 1.0)
    current = {name: 1.0 for name, _ in weights}
    for layer, factor in tqdm(plan, desc="step factors", unit="eval", disable=not progress):
        targets = weights if layer == "all" else [(n, w) for n, w in weights if n == layer]
        for name, w in targets:
            place(name, w, factor)
            current[name] = factor
        if per_layer:  # put back the optimal step of every other layer
            for name, w in weights:
                if name != layer and current[name] != 1.0:
                    place(name, w, 1.0)
                    current[name] = 1.0
        metrics = evaluate(work, data, device, batch_size)
        rows.append({"layer": layer, "factor": factor, **base, **metrics})
    return rows


def plot_robustness(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, float_accuracy: float | None = None,
                    title: str | None = None) -> Path:
    """Accuracy against the step factor (log-2 axis), one line per layer (or ``all``), as a PNG (Fig. 5A).

    ``float_accuracy`` (in [0, 1]) draws the unquantized model's accuracy as a dashed line.
    """
    if not rows:
        raise ConfigError("there is no robustness row to plot")
    fig = new_figure(6, 4)
    ax = fig.subplots()
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    for i, layer in enumerate(layers):
        mine = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["factor"])
        ax.plot([r["factor"] for r in mine], [100 * r["accuracy"] for r in mine], marker="o", markersize=3,
                color=series_color(i), label=layer)
    if float_accuracy is not None:
        ax.axhline(100 * float_accuracy, color="black", linestyle="--", linewidth=0.8, label="float")
    factors = sorted({r["factor"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(factors)
    ax.set_xticklabels([f"{f:g}" for f in factors], fontsize=8)
    ax.minorticks_off()
    first = rows[0]
    ax.set(xlabel="step factor Δ/Δ'", ylabel="accuracy (%)",
           title=title or f"{first['bits']}-bit weights, {first['step']} step, {first['granularity']}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_png(fig, path)


__all__ = ["FACTORS", "STEP_RULES", "SCHEMES", "MSE_GRID", "optimal_clip", "quantize_scaled", "step_robustness",
           "plot_robustness"]
