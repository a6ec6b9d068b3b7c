"""Loss landscape over the quantization steps of two layers (LAPQ, seeds/001, §3 Fig. 1 and Fig. 2).

For every pair ``(Δ_a, Δ_b)`` on a grid, the steps of two chosen quantizers of a quantized model are set and the
calibration cross-entropy is evaluated (all other steps fixed), giving the surface the paper plots: separable and
flat at 4 bits, coupled and steep at 2 bits. ``plot_landscape`` draws it as a PNG heat map with the points that
different methods chose marked (``method_points``: the steps each PTQ method picks for the same two tensors,
e.g. min-max, MMSE, the Lp trajectory, ACIQ, KL and LAPQ).

The model is one with PTQ quantizers attached (``learnq.ptq.quantize(...).model`` for any method, whose
quantizers stay live); quantizers are named ``"<layer>.weight"`` and ``"<layer>.input"``
(:func:`learnq.ptq.calib_loss.step_coordinates`). Steps are Δ (not α): Δ = α·(grid factor). Each point costs one
evaluation of the quantized part of the network on the calibration set (the float prefix is cached).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from learnq.errors import ConfigError

_MARKERS = ("o", "s", "^", "D", "v", "P", "*", "h", "<", ">")

def steps_of(model: nn.Module, names: Sequence[str]) -> np.ndarray:
    """The current step Δ of each named per-tensor quantizer of ``model``."""
    from learnq.ptq.calib_loss import step_coordinates

    coords = {c.name: c for c in step_coordinates(model)}
    out = []
    for name in names:
        if name not in coords:
            raise ConfigError(f"the model has no step quantizer named {name!r}; it has {list(coords)}")
        c = coords[name]
        if c.size != 1:
            raise ConfigError(f"quantizer {name!r} has {c.size} steps (per channel); the landscape and its points "
                              "need one step per tensor")
        out.append(float(c.get()[0] * c.step_factor()[0]))
    return np.asarray(out)


def _axis(grid: int | Sequence[float] | np.ndarray, current: float, span: tuple[float, float], name: str) -> np.ndarray:
    if isinstance(grid, bool):
        raise ConfigError(f"grid for {name!r} must be a point count or a sequence of steps, got {grid!r}")
    if isinstance(grid, int):
        if grid < 2:
            raise ConfigError(f"grid for {name!r} needs at least 2 points, got {grid}")
        if not (0 < span[0] < span[1]):
            raise ConfigError(f"span must be (low, high) factors with 0 < low < high, got {span!r}")
        return np.linspace(span[0], span[1], grid) * current
    values = np.asarray(grid, dtype=np.float64).reshape(-1)
    if values.size < 1 or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ConfigError(f"grid for {name!r} must hold finite steps > 0, got {grid!r}")
    return values


def loss_landscape(model: nn.Module, calib_data: object, layer_a: str, layer_b: str,
                   grid_a: int | Sequence[float] | np.ndarray = 21, grid_b: int | Sequence[float] | np.ndarray = 21,
                   *, span: tuple[float, float] = (0.25, 2.0), batch_size: int = 256,
                   device: str | torch.device = "cpu", progress: bool = False,
                   cache: bool = True) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """``((steps_a, steps_b), losses)`` with ``losses[i, j]`` the mean cross-entropy on labelled ``calib_data``
    when quantizer ``layer_a`` has step ``steps_a[i]`` and ``layer_b`` step ``steps_b[j]``.

    grid_a / grid_b: the steps, or a number of points spread over ``span`` times the current step. The model's
    steps are restored afterwards.
    """
    from learnq.ptq.calib_loss import CalibrationLoss

    if layer_a == layer_b:
        raise ConfigError(f"layer_a and layer_b are both {layer_a!r}; choose two different quantizers")
    loss = CalibrationLoss(model, calib_data, names=[layer_a, layer_b], batch_size=batch_size, device=device,
                           cache=cache)
    if len(loss.names) != 2:
        raise ConfigError(f"{layer_a!r} and {layer_b!r} must be per-tensor quantizers (one step each)")
    start = loss.get_steps()
    axis_a = _axis(grid_a, float(start[0]), span, layer_a)
    axis_b = _axis(grid_b, float(start[1]), span, layer_b)
    losses = np.empty((axis_a.size, axis_b.size))
    try:
        with tqdm(total=losses.size, desc="landscape", unit="eval", disable=not progress) as bar:
            for i, a in enumerate(axis_a):
                for j, b in enumerate(axis_b):
                    losses[i, j] = loss.loss_at_steps([a, b])
                    bar.update(1)
    finally:
        loss.set_steps(start)
    return (axis_a, axis_b), losses


def method_points(float_model: nn.Module, calib_data: object, names: Sequence[str],
                  methods: Sequence[str | tuple[str, Mapping[str, Any]]] = ("minmax", "mse", "aciq", "kl"),
                  **quantize_options: Any) -> dict[str, tuple[float, ...]]:
    """The steps that each PTQ method chooses for the quantizers ``names``: ``{label: (Δ_a, Δ_b, ...)}``.

    methods: method names, or ``(label, options)`` pairs with ``options`` passed to ``learnq.ptq.quantize`` (e.g.
    ``("L3", {"method": "lp", "p": 3.0})``). ``quantize_options`` (wbits, abits, seed...) apply to every run; use the
    same ones as for the model the landscape is computed on. The weights are quantized per tensor unless
    ``granularity`` is given (the landscape has one step per quantizer, as in LAPQ's figures).
    """
    from learnq.ptq.api import quantize

    quantize_options = {"progress": False, "granularity": "tensor", **quantize_options}
    points: dict[str, tuple[float, ...]] = {}
    for entry in methods:
        label, opts = (entry, {"method": entry}) if isinstance(entry, str) else (entry[0], dict(entry[1]))
        result = quantize(float_model, calib_data, **{**quantize_options, **opts})
        points[label] = tuple(float(v) for v in steps_of(result.model, names))
    return points


def plot_landscape(grid: tuple[np.ndarray, np.ndarray], losses: np.ndarray, path: str | os.PathLike, *,
                   labels: tuple[str, str] = ("step a", "step b"),
                   points: Mapping[str, Sequence[float]] | None = None, title: str | None = None,
                   log: bool = False) -> Path:
    """PNG heat map of ``losses`` over ``grid`` (from :func:`loss_landscape`) with ``points`` (label -> (Δ_a, Δ_b))
    marked, e.g. from :func:`method_points`. ``log`` colours by log10 of the loss. Returns the path written."""
    from learnq.analysis.plots import new_figure, save_png, series_color

    axis_a, axis_b = (np.asarray(g, dtype=np.float64).reshape(-1) for g in grid)
    values = np.asarray(losses, dtype=np.float64)
    if values.shape != (axis_a.size, axis_b.size):
        raise ConfigError(f"losses have shape {values.shape} but the grid is {axis_a.size} x {axis_b.size}")
    if log:
        values = np.log10(np.maximum(values, np.finfo(np.float64).tiny))
    fig = new_figure(7.0, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    # x: layer b's step, y: layer a's step (losses[i, j] is row i = a)
    mesh = ax.pcolormesh(axis_b, axis_a, values, shading="nearest", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label="log10 loss" if log else "calibration loss")
    if axis_a.size > 2 and axis_b.size > 2:
        ax.contour(axis_b, axis_a, values, levels=10, colors="white", linewidths=0.5, alpha=0.6)
    for k, (label, point) in enumerate((points or {}).items()):
        if len(point) != 2:
            raise ConfigError(f"point {label!r} must be (step a, step b), got {point!r}")
        # shapes and shrinking sizes keep coinciding points (e.g. ACIQ capped at min-max) visible
        ax.plot([point[1]], [point[0]], marker=_MARKERS[k % len(_MARKERS)], markersize=max(7.0, 12.0 - 0.7 * k),
                linestyle="none", markeredgecolor="black", markeredgewidth=0.8, color=series_color(k), label=label)
    i, j = np.unravel_index(int(np.nanargmin(losses)), values.shape)
    ax.plot([axis_b[j]], [axis_a[i]], marker="x", markersize=11, markeredgewidth=2.5, linestyle="none",
            color="red", label="grid minimum")
    ax.set_xlabel(labels[1])
    ax.set_ylabel(labels[0])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=4, fontsize=8, frameon=False)
    ax.set_title(title or "calibration loss over two quantization steps")
    fig.tight_layout()
    return save_png(fig, path)


__all__ = ["loss_landscape", "method_points", "plot_landscape", "steps_of"]
