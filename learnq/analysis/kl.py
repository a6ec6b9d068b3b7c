"""Layer-wise KL divergence of each layer's output before and after quantization.

The SymReg/SatNL supplement (Park et al., ECCV 2022; seeds/002, supplementary Section 1, Fig. 1A) plots, per
(depthwise) convolution, the KL divergence between the layer's output activations in the float network and in the
network whose weights are quantized, to show where quantization error appears and how it propagates: the quantized
network runs end to end, so a layer's output carries the error of every layer before it.

How it is measured here:

* both networks run, in eval mode and without gradients, on the same inputs (the first ``max_samples`` of ``data``,
  512 by default); forward hooks collect the values each chosen module outputs (by default every conv/linear
  layer): all of them, or for large layers about ``max_values`` (10^6) of them at seeded random positions, the same
  positions in both networks;
* per layer, the float outputs ``P`` and the quantized outputs ``Q`` are binned into ``bins`` equal-width bins
  (256 by default) over the union of their ranges ``[min(P ∪ Q), max(P ∪ Q)]``;
* smoothing: every bin gets a pseudo-count ``smoothing`` (0.5 by default, the Krichevsky-Trofimov estimator), so
  ``p_i = (c_i + s) / (N + B·s)`` and ``q_i`` likewise; no bin is empty and the divergence is finite;
* ``KL(P || Q) = Σ p_i log(p_i / q_i)`` in nats, float64, with the float network as the reference ``P`` (the
  direction of TensorRT's calibration).

Identical outputs give exactly 0. Two constant and equal outputs give 0. With ``smoothing = 0`` a bin that ``P``
fills and ``Q`` leaves empty gives ``inf``.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from learnq.analysis.plots import grid_shape, new_figure, save_png, series_color
from learnq.attach import Selection
from learnq.batches import calibration_batches
from learnq.errors import ConfigError, DataError, ModelError
from learnq.granularity import Granularity
from learnq.grid import GridSpec
from learnq.layers import require_weight_layers
from learnq.ptq.ptq_weight import quantize_weights

DEFAULT_BINS = 256
DEFAULT_SMOOTHING = 0.5
DEFAULT_SAMPLES = 512
DEFAULT_MAX_VALUES = 1_000_000

Data = torch.Tensor | Dataset | DataLoader


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def quantized_copy(model: nn.Module, bits: int, *, scheme: str = "symmetric", granularity: str = "tensor",
                   selection: Selection = Selection()) -> nn.Module:
    """A deep copy of ``model`` with its selected weights quantized by naive min-max PTQ
    (``learnq.ptq.quantize_weights``).

    Per-tensor symmetric by default: the naive quantization the documents compare against.
    """
    spec = GridSpec(bits=bits, scheme=scheme, granularity=Granularity.parse(granularity))
    out = copy.deepcopy(model)
    quantize_weights(out, spec, selection=selection, method="minmax")
    return out


def iter_inputs(data: Data, max_samples: int | None = None, batch_size: int = 256) -> Iterator[torch.Tensor]:
    """Input batches of ``data`` (a tensor of inputs, a Dataset of ``(x, y)`` or ``x``, or a DataLoader), in order,
    stopping after ``max_samples`` samples (all of them when None). Batching: learnq.batches.calibration_batches."""
    batch_size = _positive_int(batch_size, "batch_size")
    if max_samples is not None:
        _positive_int(max_samples, "max_samples")
    seen = 0
    for x, _ in calibration_batches(data, batch_size, what="data"):
        if max_samples is not None:
            x = x[: max_samples - seen]
        seen += x.shape[0]
        yield x
        if max_samples is not None and seen >= max_samples:
            return


@torch.no_grad()
def collect_outputs(model: nn.Module, data: Data, layers: Sequence[str], *, max_samples: int | None = DEFAULT_SAMPLES,
                    max_values: int | None = DEFAULT_MAX_VALUES, batch_size: int = 256, seed: int = 0,
                    device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The values each module in ``layers`` outputs over the inputs of ``data``: ``{name: 1-D float32 tensor}``.

    With ``max_samples`` and ``max_values`` both given, a layer keeps about ``max_values`` of its values: from each
    batch of ``n`` samples, ``ceil(max_values·n/max_samples)`` positions drawn uniformly (with replacement) by a
    generator seeded with ``seed`` and the batch number, so two versions of one network keep the same positions.
    """
    if max_values is not None:
        _positive_int(max_values, "max_values")
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ModelError(f"the model has no module named {missing}; give layer names of model.named_modules()")
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    state = {"batch": 0, "n": 0}

    def hook_for(name: str):  # noqa: ANN202
        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if not isinstance(output, torch.Tensor):
                raise ModelError(f"layer {name!r} does not return one tensor; choose another layer")
            flat = output.detach().float().reshape(-1)
            if max_values is not None and max_samples is not None:
                keep = math.ceil(max_values * state["n"] / max_samples)
                if keep < flat.numel():
                    gen = torch.Generator().manual_seed(seed * 1_000_003 + state["batch"])
                    flat = flat[torch.randint(flat.numel(), (keep,), generator=gen).to(flat.device)]
            chunks[name].append(flat.cpu())
        return hook

    handles = [modules[n].register_forward_hook(hook_for(n)) for n in layers]
    was_training = model.training
    model.to(device).eval()
    try:
        for i, x in enumerate(iter_inputs(data, max_samples, batch_size)):
            state["batch"], state["n"] = i, x.shape[0]
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: torch.cat(c) if c else torch.zeros(0) for n, c in chunks.items()}


def histogram_kl(p_values: torch.Tensor, q_values: torch.Tensor, *, bins: int = DEFAULT_BINS,
                 smoothing: float = DEFAULT_SMOOTHING) -> float:
    """``KL(P || Q)`` in nats between the empirical distributions of two samples (see the module docstring)."""
    bins = _positive_int(bins, "bins")
    if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not smoothing >= 0:
        raise ConfigError(f"smoothing must be a number >= 0 (a pseudo-count per bin), got {smoothing!r}")
    p = p_values.detach().double().reshape(-1).cpu().numpy()
    q = q_values.detach().double().reshape(-1).cpu().numpy()
    if p.size == 0 or q.size == 0:
        raise DataError("histogram_kl needs two non-empty samples")
    if not (np.isfinite(p).all() and np.isfinite(q).all()):
        raise DataError("the outputs hold NaN or Inf values; their KL divergence is undefined")
    lo, hi = min(p.min(), q.min()), max(p.max(), q.max())
    if lo == hi:
        return 0.0
    edges = np.linspace(lo, hi, bins + 1)
    cp = np.histogram(p, bins=edges)[0].astype(np.float64) + smoothing
    cq = np.histogram(q, bins=edges)[0].astype(np.float64) + smoothing
    pp, qq = cp / cp.sum(), cq / cq.sum()
    mask = pp > 0
    if bool((qq[mask] == 0).any()):
        return math.inf
    return float(np.sum(pp[mask] * np.log(pp[mask] / qq[mask])))


def layer_kl(model_float: nn.Module, model_quant: nn.Module, data: Data, *, layers: Sequence[str] | None = None,
             bins: int = DEFAULT_BINS, smoothing: float = DEFAULT_SMOOTHING,
             max_samples: int | None = DEFAULT_SAMPLES, max_values: int | None = DEFAULT_MAX_VALUES,
             batch_size: int = 256, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, float]:
    """``{layer: KL(float outputs || quantized outputs)}`` for each layer (default: every conv/linear layer of
    ``model_float``, by module name), over the first ``max_samples`` inputs of ``data``.

    ``model_quant`` is the same network with quantized weights (e.g. :func:`quantized_copy`, or a model loaded from
    a quantized model file); it must have modules of the same names.
    """
    if layers is None:
        layers = [name for name, _ in require_weight_layers(model_float, what="layer_kl")]
    layers = list(layers)
    if not layers:
        raise ConfigError("layers is empty; name at least one module, or pass None for every conv/linear layer")
    kwargs = {"max_samples": max_samples, "max_values": max_values, "batch_size": batch_size, "seed": seed,
              "device": device}
    p = collect_outputs(model_float, data, layers, **kwargs)
    q = collect_outputs(model_quant, data, layers, **kwargs)
    out = {}
    for name in layers:
        if p[name].shape != q[name].shape:
            raise ModelError(f"layer {name!r} outputs {p[name].numel()} values in the float model but "
                             f"{q[name].numel()} in the quantized one; compare two versions of one network")
        out[name] = histogram_kl(p[name], q[name], bins=bins, smoothing=smoothing)
    return out


def plot_kl(kl: Mapping[str, float] | Mapping[str, Mapping[str, float]], path: str | os.PathLike, *,
            log: bool = False, title: str | None = None) -> Path:
    """Bar plot of layer-wise KL (supplement Fig. 1A) as a PNG; returns its path.

    ``kl`` is one result of :func:`layer_kl`, or ``{label: result}`` for grouped bars (e.g. baseline vs SatNL, or
    2 / 4 / 8 bits); layers are in the order of the first series.
    """
    if not kl:
        raise ConfigError("there is no KL value to plot")
    first = next(iter(kl.values()))
    series: dict[str, Mapping[str, float]] = (
        {"": kl} if not isinstance(first, Mapping) else dict(kl))  # type: ignore[dict-item]
    layers = list(dict.fromkeys(name for s in series.values() for name in s))
    grid_shape(len(layers))  # refuses an empty plot
    width = 0.8 / len(series)
    fig = new_figure(max(5.0, 0.55 * len(layers) * max(1, len(series)) ** 0.5 + 2), 4)
    ax = fig.subplots()
    xs = np.arange(len(layers))
    for i, (label, values) in enumerate(series.items()):
        heights = [float(values.get(name, np.nan)) for name in layers]
        ax.bar(xs + (i - (len(series) - 1) / 2) * width, heights, width=width, color=series_color(i),
               label=label or None)
    ax.set_xticks(xs)
    ax.set_xticklabels(layers, rotation=45 if len(layers) > 4 else 0, ha="right" if len(layers) > 4 else "center",
                       fontsize=8)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="layer", ylabel="KL(float || quantized) [nats]", title=title or "layer-wise output KL divergence")
    ax.grid(True, axis="y", alpha=0.3)
    if len(series) > 1 or "" not in series:
        ax.legend()
    fig.tight_layout()
    return save_png(fig, path)


__all__ = ["DEFAULT_BINS", "DEFAULT_SMOOTHING", "DEFAULT_SAMPLES", "DEFAULT_MAX_VALUES",
           "quantized_copy", "iter_inputs",
           "collect_outputs", "histogram_kl", "layer_kl", "plot_kl"]
