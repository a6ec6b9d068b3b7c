"""Post-training palettization: k-means on the trained weights, no training (the cheap baseline of weight clustering;
Han et al. 2016 "Deep Compression" §3; the starting point of DKM, Cho et al. 2021, seeds/000 §4.4; METHODS.md §6).

Per selected weight: its values split into ``dim``-long vectors (:mod:`learnq.palette`), ``2^wbits`` centroids per
palette group (the PTQ config's ``granularity``: ``tensor`` one palette, ``channel`` one per output channel, or
``group:G``) seeded by k-means++ (:func:`learnq.clustering.kmeans_pp`, reproducible from the seed), then Lloyd
iterations (at most ``iters``; stop when no centroid moves more than ``tol``). Every vector takes its nearest
centroid; the weight becomes a frozen palettized :class:`learnq.grid.QuantizedTensor` (the palette in
``palette_dtype`` plus ``wbits`` bits per vector in the file). The k-means objective ``Σ‖w - c(w)‖²`` of each weight
is reported before and after the Lloyd iterations. Activations (``abits`` < 32) are quantized at each layer's input
as every PTQ method does, α by ``act_clip``.
"""

from __future__ import annotations

from typing import Any

import torch

from learnq.clustering import init_centroids, lloyd
from learnq.errors import ConfigError, QuantizationError
from learnq.grid import QuantizedTensor
from learnq.palette import PALETTE_DTYPES, check_vectors, nearest, vector_groups
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.reconstruction import LayerByLayer, Observers, run_reconstruction

MAX_BITS = 8
OPTIONS: dict[str, Any] = {"dim": 1, "iters": 50, "tol": 0.0, "palette_dtype": "float32", "act_clip": "mse"}


def palettize(w: torch.Tensor, bits: int, dim: int, granularity: Any, *, iters: int = 50, tol: float = 0.0,
              palette_dtype: str = "float32", seed: int = 0, method: str = "kmeans",
              name: str = "tensor") -> tuple[QuantizedTensor, list[float]]:
    """k-means palettization of one tensor: the palettized tensor and the objective history (k-means++ seeds first,
    then after each Lloyd step; non-increasing)."""
    shape = tuple(w.shape)
    check_vectors(shape, granularity, dim, name)
    if palette_dtype not in PALETTE_DTYPES:
        raise ConfigError(f"palette_dtype must be one of {', '.join(PALETTE_DTYPES)}, got {palette_dtype!r}")
    vectors = w.detach().float().reshape(-1, dim)
    groups = vector_groups(shape, granularity, dim, w.device)
    n_groups = granularity.num_groups(shape)
    seeds = init_centroids(vectors.cpu(), groups.cpu(), n_groups, 2**bits, seed).to(w.device)
    centroids, history = lloyd(vectors, seeds, groups, iters, tol)
    palette = centroids.to(PALETTE_DTYPES[palette_dtype])
    idx = nearest(vectors, palette, groups)
    qt = QuantizedTensor.from_palette(idx, palette, shape, granularity, bits, method=method, dtype=w.dtype)
    return qt, history


def _kmeans(ctx: PTQContext) -> dict[str, Any]:
    if ctx.bias_correction or ctx.variance_correction:
        raise ConfigError("kmeans replaces each weight by its nearest centroid of a palette; bias correction "
                          "rescales a grid's steps and does not apply to a palette: drop bias_correction / "
                          "variance_correction")
    opts = ctx.options
    if isinstance(opts["dim"], bool) or opts["dim"] < 1:
        raise ConfigError(f"options.dim must be an integer >= 1, got {opts['dim']!r}")
    if opts["iters"] < 0 or opts["tol"] < 0:
        raise ConfigError("options.iters and options.tol must be >= 0")
    if ctx.wspec is not None and ctx.wspec.bits > MAX_BITS:
        raise ConfigError(f"kmeans palettizes at most {MAX_BITS} bits per index (2^{MAX_BITS} centroids); "
                          f"wbits is {ctx.wspec.bits}")
    return run_reconstruction(ctx, "kmeans", _weights)


def _weights(ctx: PTQContext, _observers: Observers | None) -> dict[str, dict[str, Any]]:
    """Every selected tensor (any parameter: k-means needs no layer function) palettized in turn, seed + index."""
    opts = ctx.options
    run = LayerByLayer(ctx.model, ctx.inputs, "k-means", selection=ctx.selection, params=None,
                       float_reference=False, device=ctx.device, progress=ctx.progress)
    for layer in run:
        try:
            qt, history = palettize(layer.weight, ctx.wspec.bits, opts["dim"], ctx.wspec.granularity,
                                    iters=opts["iters"], tol=opts["tol"], palette_dtype=opts["palette_dtype"],
                                    seed=ctx.seed + layer.index, name=layer.name)
        except QuantizationError as exc:
            raise ConfigError(f"kmeans cannot palettize {layer.name!r}: {exc}") from exc
        run.attach(layer, qt, {"name": layer.name, "objective_init": history[0], "objective": history[-1],
                               "iterations": len(history) - 1, "numel": layer.weight.numel()})
    return run.infos


METHOD = PTQMethod("kmeans", "k-means palettization: 2^wbits centroids of dim-long weight vectors, k-means++ then "
                   "Lloyd, no training (Han et al. 2016)", _kmeans, options=OPTIONS, quick={"iters": 5})


__all__ = ["METHOD", "OPTIONS", "palettize"]
