"""Per-layer weight statistics and histograms: range, spread, tails, asymmetry and outliers of each weight.

The analyses behind DSMM (seeds/000, Fig. 2: weight distributions of the first 3x3 convolutions under L2, heavy L2
and DSMM, outliers in red) and the SymReg/SatNL supplement (seeds/002, Fig. 2A: histograms of one convolution's
weights for the baseline, SatNL and SatNL+SymReg). What they argue about is what :func:`weight_stats` measures:

* ``range = max - min`` and ``abs_max`` (the min-max grid's step is proportional to them);
* ``std`` and ``mean``: population moments (divisor n), computed in float64;
* ``kurtosis = m4 / m2²`` (Pearson, not excess: Gaussian 3, uniform 1.8, the KURE target). KURE's own loss divides
  by the Bessel-corrected σ by default, which differs from this by the factor ``((n-1)/n)²``;
* asymmetry, twice: ``range_asymmetry = (max + min) / (max - min)`` in [-1, 1] (0 when the extremes are symmetric
  about zero, > 0 when the positive tail reaches farther; what a symmetric grid wastes) and ``skewness = m3 / m2^1.5``
  (the third standardized moment: the shape of the bulk, which SymReg pushes to 0);
* outliers: the number of values with ``|w - mean| > k·std`` (``k = outlier_sigma``, 3 by default; a Gaussian has
  0.27 % of its values there), their fraction, and ``max_abs_z = max |w - mean| / std``.

Statistics are undefined for a constant tensor (std 0): skewness, kurtosis and max_abs_z are then ``None`` and there
are no outliers; ``range_asymmetry`` is ``None`` when the range is 0. The weight measured is the one the layer
computes with (``module.weight``: after SatNL's saturation, or the dequantized values of a quantized model).
Each record also holds a histogram (``bins`` equal bins on [min, max]) so plots can be redrawn from the JSON.
"""

from __future__ import annotations

import fnmatch
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from learnq.analysis.plots import OUTLIER_COLOR, grid_shape, new_figure, save_png, series_color
from learnq.attach import Selection, select_parameters
from learnq.errors import ConfigError, ModelError
from learnq.layers import require_weight_layers
from learnq.quantized import get_module, split_name

OUTLIER_SIGMA = 3.0
DEFAULT_BINS = 100

Stats = dict[str, Any]


def _check_bins(bins: object) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ConfigError(f"bins must be an integer >= 1, got {bins!r}")
    return bins


def _check_sigma(outlier_sigma: object) -> float:
    if isinstance(outlier_sigma, bool) or not isinstance(outlier_sigma, (int, float)) or not outlier_sigma > 0:
        raise ConfigError(f"outlier_sigma must be a number > 0 (the outlier threshold in stds), got {outlier_sigma!r}")
    return float(outlier_sigma)


def named_weights(model: nn.Module, selection: Selection | None = None) -> list[tuple[str, torch.Tensor]]:
    """``(parameter name, tensor)`` of the weights to analyse, in definition order, detached.

    Without ``selection``: the ``weight`` of every conv/linear layer (``learnq.layers.weight_layers``; tied weights
    once). With one: the parameters ``learnq.attach.select_parameters`` picks (biases too if it says so). The tensor
    is the value the layer computes with. ``ModelError`` when nothing is selected.
    """
    if selection is None:
        layers = require_weight_layers(model, what="weight analysis")
        return [((f"{name}.weight" if name else "weight"), module.weight.detach()) for name, module in layers]
    if not isinstance(selection, Selection):
        raise ConfigError(f"selection must be a learnq.attach.Selection, got {type(selection).__name__}")
    out = []
    for full in select_parameters(model, selection):
        module_name, param = split_name(full)
        out.append((full, getattr(get_module(model, module_name), param).detach()))
    return out


def tensor_stats(w: torch.Tensor, name: str = "tensor", *, outlier_sigma: float = OUTLIER_SIGMA,
                 bins: int = DEFAULT_BINS) -> Stats:
    """The statistics record (see the module docstring) of one tensor."""
    k = _check_sigma(outlier_sigma)
    bins = _check_bins(bins)
    if not isinstance(w, torch.Tensor) or w.numel() == 0 or not w.is_floating_point():
        raise ConfigError(f"{name}: weight statistics need a non-empty floating-point tensor")
    x = w.detach().to(device="cpu", dtype=torch.float64).reshape(-1)
    if not bool(torch.isfinite(x).all()):
        raise ModelError(f"{name} has NaN or Inf values; its statistics are undefined (check the training)")
    n = x.numel()
    mean = float(x.mean())
    d = x - mean
    m2 = float((d**2).mean())
    std = math.sqrt(m2)
    lo, hi = float(x.min()), float(x.max())
    rng = hi - lo
    if std > 0:
        z = d.abs() / std
        skewness: float | None = float((d**3).mean()) / m2**1.5
        kurtosis: float | None = float((d**4).mean()) / m2**2
        outliers = int((z > k).sum())
        max_abs_z: float | None = float(z.max())
    else:
        skewness = kurtosis = max_abs_z = None
        outliers = 0
    counts, edges = np.histogram(x.numpy(), bins=bins)
    return {
        "name": name, "shape": list(w.shape), "numel": n,
        "mean": mean, "std": std, "min": lo, "max": hi, "range": rng, "abs_max": max(abs(lo), abs(hi)),
        "skewness": skewness, "kurtosis": kurtosis,
        "range_asymmetry": (hi + lo) / rng if rng > 0 else None,
        "outliers": outliers, "outlier_fraction": outliers / n, "outlier_sigma": k, "max_abs_z": max_abs_z,
        "histogram": {"lo": float(edges[0]), "hi": float(edges[-1]), "counts": [int(c) for c in counts]},
    }


def weight_stats(model: nn.Module, selection: Selection | None = None, *, outlier_sigma: float = OUTLIER_SIGMA,
                 bins: int = DEFAULT_BINS) -> list[Stats]:
    """One statistics record per weight of ``model`` (see :func:`named_weights` for which), in definition order."""
    weights = named_weights(model, selection)
    return [tensor_stats(w, name, outlier_sigma=outlier_sigma, bins=bins) for name, w in weights]


def select_stats(stats: list[Stats], layers: Sequence[str] | None) -> list[Stats]:
    """The records whose weight or layer name matches one of the globs ``layers`` (all of them for None);
    ConfigError naming the weights when none matches."""
    if layers is None:
        return stats
    if isinstance(layers, str):
        layers = [layers]
    chosen = [s for s in stats if any(fnmatch.fnmatchcase(s["name"], p) or fnmatch.fnmatchcase(
        s["name"].rpartition(".")[0], p) for p in layers)]
    if not chosen:
        names = ", ".join(s["name"] for s in stats)
        raise ConfigError(f"no weight matches layers={list(layers)}; the weights are: {names}")
    return chosen


def _as_stats(model_or_stats: nn.Module | Sequence[Stats], bins: int, outlier_sigma: float,
              selection: Selection | None) -> list[Stats]:
    if isinstance(model_or_stats, nn.Module):
        return weight_stats(model_or_stats, selection, outlier_sigma=outlier_sigma, bins=bins)
    stats = list(model_or_stats)
    for s in stats:
        if not isinstance(s, Mapping) or "histogram" not in s or "name" not in s:
            raise ConfigError("plot_histograms needs a model or the records of weight_stats (with 'name' and "
                              "'histogram'), e.g. read back from weights.json")
    return stats


def _edges(hist: Mapping[str, Any]) -> np.ndarray:
    return np.linspace(hist["lo"], hist["hi"], len(hist["counts"]) + 1)


def plot_histograms(model_or_stats: nn.Module | Sequence[Stats], path: str | os.PathLike, *,
                    selection: Selection | None = None, layers: Sequence[str] | None = None,
                    bins: int = DEFAULT_BINS, outlier_sigma: float = OUTLIER_SIGMA, log: bool = False,
                    max_cols: int = 4, title: str | None = None) -> Path:
    """A PNG grid with one weight histogram per layer (DSMM Fig. 2, supplement Fig. 2A); returns its path.

    ``model_or_stats``: a model, or the records of :func:`weight_stats` (e.g. loaded from ``weights.json``).
    ``layers``: globs on the weight or layer name to keep (e.g. ``["features.*"]``). Bins beyond
    ``mean ± outlier_sigma·std`` are drawn in red, with the threshold as dashed lines (DSMM's red outliers);
    ``log`` puts the counts on a log scale, which makes the sparse tails visible.
    """
    stats = select_stats(_as_stats(model_or_stats, bins, outlier_sigma, selection), layers)
    rows, cols = grid_shape(len(stats), max_cols)
    fig = new_figure(3.2 * cols, 2.6 * rows + (0.4 if title else 0))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, s in enumerate(stats):
        ax = axes[i // cols][i % cols]
        counts = np.asarray(s["histogram"]["counts"], dtype=float)
        edges = _edges(s["histogram"])
        centers = (edges[:-1] + edges[1:]) / 2
        k = float(s.get("outlier_sigma", outlier_sigma))
        low, high = s["mean"] - k * s["std"], s["mean"] + k * s["std"]
        out = (centers < low) | (centers > high) if s["std"] > 0 else np.zeros_like(centers, dtype=bool)
        colors = [OUTLIER_COLOR if o else series_color(0) for o in out]
        ax.bar(centers, counts, width=np.diff(edges), color=colors, align="center", linewidth=0)
        if s["std"] > 0:
            for t in (low, high):
                if edges[0] <= t <= edges[-1]:
                    ax.axvline(t, color=OUTLIER_COLOR, linestyle="--", linewidth=0.8)
        if log:
            ax.set_yscale("log")
        shape = "x".join(str(d) for d in s["shape"])
        ax.set_title(f"{s['name']} ({shape})", fontsize=8)
        kurt = "-" if s["kurtosis"] is None else f"{s['kurtosis']:.2f}"
        ax.text(0.02, 0.97, f"range {s['range']:.3g}\nstd {s['std']:.3g}\nkurt {kurt}\n{s['outliers']} > {k:g}σ",
                transform=ax.transAxes, fontsize=7, va="top", ha="left")
        ax.tick_params(labelsize=7)
    for j in range(len(stats), rows * cols):
        axes[j // cols][j % cols].set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_png(fig, path)


def _layer_tensor(model: nn.Module, layer: str) -> torch.Tensor:
    names = dict(named_weights(model))
    for key in (layer, f"{layer}.weight"):
        if key in names:
            return names[key]
    raise ConfigError(f"the model has no conv/linear weight named {layer!r}; its weights are: {', '.join(names)}")


def plot_histogram_comparison(models: Mapping[str, nn.Module | torch.Tensor | Sequence[Stats]], layer: str,
                              path: str | os.PathLike, *, bins: int = DEFAULT_BINS, density: bool = True,
                              log: bool = False, title: str | None = None) -> Path:
    """Overlay one layer's weight histogram for several models (e.g. L2, heavy L2, DSMM) in one PNG.

    ``models`` maps a label to a model (its weight ``layer``, e.g. ``"fc1"`` or ``"fc1.weight"``), a tensor, or
    the records of :func:`weight_stats`. Models and tensors share one set of ``bins`` equal bins over all their
    values; stats records keep their own bins. ``density`` normalises each histogram to unit area, so models of
    different scales compare by shape.
    """
    bins = _check_bins(bins)
    if not models:
        raise ConfigError("plot_histogram_comparison needs at least one model")
    values: dict[str, np.ndarray] = {}
    recorded: dict[str, Mapping[str, Any]] = {}
    for label, item in models.items():
        if isinstance(item, nn.Module):
            values[label] = _layer_tensor(item, layer).double().cpu().reshape(-1).numpy()
        elif isinstance(item, torch.Tensor):
            values[label] = item.detach().double().cpu().reshape(-1).numpy()
        else:
            match = [s for s in _as_stats(item, bins, OUTLIER_SIGMA, None) if s["name"] in (layer, f"{layer}.weight")]
            if not match:
                raise ConfigError(f"the statistics of {label!r} have no weight named {layer!r}")
            recorded[label] = match[0]["histogram"]
    common = None
    if values:
        lo = min(float(v.min()) for v in values.values())
        hi = max(float(v.max()) for v in values.values())
        common = np.histogram_bin_edges(np.array([lo, hi]), bins=bins)
    fig = new_figure(6, 4)
    ax = fig.subplots()
    for i, label in enumerate(models):
        if label in values:
            counts, edges = np.histogram(values[label], bins=common)
        else:
            counts, edges = np.asarray(recorded[label]["counts"], dtype=float), _edges(recorded[label])
        counts = counts.astype(float)
        if density and counts.sum() > 0:
            counts = counts / (counts.sum() * np.diff(edges))
        ax.stairs(counts, edges, label=label, color=series_color(i), linewidth=1.2)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="weight value", ylabel="density" if density else "count", title=title or f"weights of {layer}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path)


__all__ = ["OUTLIER_SIGMA", "DEFAULT_BINS", "named_weights", "tensor_stats", "weight_stats", "select_stats",
           "plot_histograms",
           "plot_histogram_comparison"]
