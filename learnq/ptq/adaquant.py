"""AdaQuant: layer-wise optimisation of the weights and their steps after training (Hubara, Nahshan, Hanani, Banner &
Soudry 2021, "Accurate Post Training Quantization With Small Calibration Sets", ICML, arXiv:2006.10518, §3 Eq. 2;
METHODS.md §7; seeds/002 Table 2A uses it as a PTQ method). Not one of seeds/: the formula is the paper's.

For one layer with weight ``W``, calibration inputs ``x`` (float model) and ``x̂`` (the model whose earlier layers
are already quantized), AdaQuant minimises over a weight perturbation ``V`` and the steps ``Δ`` (one per group):

    ‖W x - Q_Δ(W + V) x̂‖²,     Q_Δ(w) = Δ · (clamp(⌊w/Δ - r⌉, qmin, qmax) + r)

(``r`` the grid's offset in steps: 0 for the symmetric and unsigned grids, ``-(2^b-1)/2`` for ``lapq``; the affine
grid, with two free ends, is not supported), with Adam and the straight-through gradient of the rounding (the
LSQ-style gradient of Δ). Here ``V`` is measured in steps of the initial grid and ``Δ = Δ₀·exp(t)``, so that the
learning rates do not depend on the weights' scale: ``lr`` for V (default 5e-3), ``lr_step`` for t (1e-2). Δ₀ is
chosen by the clipping rule ``clip`` (default MSE); V starts at 0 (nearest rounding) and t at 0. The error is the
squared norm of each sample's output difference (no bias), averaged over a minibatch of ``round_batch_size``
samples, for ``iterations`` steps (the paper runs over its small calibration set for a few epochs).

The straight-through steps oscillate around rounding boundaries (the objective is piecewise constant in V), so the
hard-rounded ``(codes, Δ)`` are evaluated on the whole calibration set ``checks`` times during the run (every
``iterations/checks`` steps, default 20 checks) and the best of them is the result; when none beats round-to-nearest
on Δ₀ (V = 0, the start) the layer keeps that and its :class:`AdaQuantInfo` says ``kept="nearest"``. Layers are
processed one at a time in definition order and frozen into :class:`learnq.quantized.QuantizedWeight` (method
``"adaquant"``); bias correction, when asked, is folded in after
(:func:`learnq.ptq.bias_correction.correct_quantized`); the registered method then attaches input quantizers
observed on the quantized model (α by ``act_clip``). The bias is not optimised (the paper's "bias" is folded BN).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from learnq.attach import Selection
from learnq.clipping import choose_clip
from learnq.errors import ConfigError, DataError
from learnq.grid import GridSpec, QuantizedTensor, compute_params
from learnq.ptq.adaround import _recon_error, layer_function
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.reconstruction import LayerByLayer, Observers, run_reconstruction


@dataclass
class AdaQuantInfo:
    """One layer: reconstruction error (mean per sample) with nearest rounding on the initial grid and with the
    optimised weights and steps, which one was kept, the loss at the first and the last iteration."""

    name: str
    nearest_error: float
    adaquant_error: float
    kept: str
    first_loss: float
    last_loss: float


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def optimize_layer(weight: torch.Tensor, spec: GridSpec, fn: Any, x_in: torch.Tensor, target: torch.Tensor, *,
                   clip: str = "mse", iterations: int = 500, lr: float = 5e-3, lr_step: float = 1e-2,
                   batch_size: int = 64, checks: int = 20, seed: int = 0,
                   name: str = "weight") -> tuple[QuantizedTensor, AdaQuantInfo]:
    """AdaQuant on one layer: ``fn(x, w)`` the layer without bias, ``x_in`` its inputs (quantized model),
    ``target = fn(x_float, W)``. Returns the :class:`QuantizedTensor` (method ``"adaquant"``) and the info."""
    if spec.scheme == "affine":
        raise ConfigError("AdaQuant learns one step per group; use a grid with one clipping value (scheme "
                          "'symmetric', 'unsigned' or 'lapq'), not 'affine'")
    if x_in.shape[0] == 0 or x_in.shape[0] != target.shape[0]:
        raise DataError(f"AdaQuant {name}: {x_in.shape[0]} inputs for {target.shape[0]} targets; need matching, "
                        "non-empty calibration batches")
    if not isinstance(iterations, int) or iterations < 0 or not (lr > 0 and lr_step >= 0 and batch_size >= 1):
        raise ConfigError("AdaQuant needs iterations >= 0 (an integer), lr > 0, lr_step >= 0, round_batch_size >= 1")
    g = spec.granularity
    w = weight.detach().float()
    alpha = None if clip == "minmax" else choose_clip(w, spec, clip)
    p0 = compute_params(w, spec, clip=alpha, name=name)
    ratio = p0.offset / p0.scale  # r per group: the offset in steps (constant groups: their value, step 1)
    qmin, qmax = spec.qrange()
    s0 = g.expand(p0.scale, w.shape)
    r = g.expand(ratio, w.shape)
    v = torch.zeros_like(w, requires_grad=True)
    t = torch.zeros_like(p0.scale, requires_grad=True)
    opt = torch.optim.Adam([{"params": [v], "lr": lr}, {"params": [t], "lr": lr_step}])
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = x_in.shape[0]

    def quantized(hard: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        step = g.expand(p0.scale * torch.exp(t), w.shape)
        x = (w + v * s0) / step - r
        codes = torch.clamp(torch.round(x) if hard else _round_ste(x), qmin, qmax)
        return (codes + r) * step, codes, step

    def hard_error() -> tuple[float, torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            w_hat, codes, _ = quantized(True)
            return (_recon_error(fn, x_in, target, w_hat.to(weight.dtype), batch_size=256), codes.clone(),
                    (p0.scale * torch.exp(t)).clone())

    err_near, codes, scale = hard_error()  # V = 0, t = 0: round-to-nearest on the initial grid
    best, kept = (err_near, codes, scale), "nearest"
    every = max(1, iterations // checks) if checks else 0
    losses: list[float] = []
    for step in range(iterations):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        xb, tb = x_in[idx.to(x_in.device)], target[idx.to(target.device)]
        out = fn(xb, quantized(False)[0].to(weight.dtype))
        loss = (out - tb).pow(2).reshape(out.shape[0], -1).sum(dim=1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if every and ((step + 1) % every == 0 or step + 1 == iterations):
            now = hard_error()
            if now[0] < best[0]:
                best, kept = now, "adaquant"
    err_opt, codes, scale = best
    qt = QuantizedTensor(codes=codes.to(torch.int32).to(weight.device), scale=scale.contiguous(),
                         offset=(ratio * scale).detach().contiguous(), granularity=g, bits=spec.bits, qmin=qmin,
                         scheme=spec.scheme, method="adaquant", dtype=weight.dtype)
    info = AdaQuantInfo(name=name, nearest_error=err_near, adaquant_error=err_opt, kept=kept,
                        first_loss=losses[0] if losses else float("nan"),
                        last_loss=losses[-1] if losses else float("nan"))
    return qt, info


def adaquant_weights(model: nn.Module, calib_inputs: torch.Tensor, spec: GridSpec, *,
                     selection: Selection = Selection(), clip: str = "mse", inputs: str = "quantized",
                     iterations: int = 500, lr: float = 5e-3, lr_step: float = 1e-2, batch_size: int = 64,
                     checks: int = 20, bias_correction: bool = False, variance_correction: bool = False,
                     device: str | torch.device = "cpu", seed: int = 0,
                     progress: bool = False) -> dict[str, AdaQuantInfo]:
    """Quantize the selected weights of ``model`` (in place, eval mode) with AdaQuant, layer by layer."""
    run = LayerByLayer(model, calib_inputs, "AdaQuant", selection=selection, inputs=inputs,
                       bias_correction=bias_correction, variance_correction=variance_correction, device=device,
                       seed=seed, progress=progress)
    for layer in run:
        fn = layer_function(layer.module)
        x_q, target = run.layer_data(layer.module_name, fn, layer.weight)
        run.attach(layer, *optimize_layer(layer.weight, spec, fn, x_q, target, clip=clip, iterations=iterations,
                                          lr=lr, lr_step=lr_step, batch_size=batch_size, checks=checks,
                                          seed=seed + layer.index, name=layer.name))
    return run.infos


OPTIONS: dict[str, Any] = {"iterations": 500, "lr": 5e-3, "lr_step": 1e-2, "round_batch_size": 64, "checks": 20,
                           "inputs": "quantized", "clip": "mse", "act_clip": "mse"}


def _adaquant_method(ctx: PTQContext) -> dict[str, Any]:
    """The ``adaquant`` PTQ method: weights by :func:`adaquant_weights`, then input quantizers (α by ``act_clip``)."""
    return run_reconstruction(ctx, "adaquant", _weights)


def _weights(ctx: PTQContext, _observers: Observers | None) -> dict[str, AdaQuantInfo]:
    opts = ctx.options
    return adaquant_weights(ctx.model, ctx.inputs, ctx.wspec, selection=ctx.selection, clip=opts["clip"],
                            inputs=opts["inputs"], iterations=opts["iterations"], lr=opts["lr"],
                            lr_step=opts["lr_step"], batch_size=opts["round_batch_size"], checks=opts["checks"],
                            bias_correction=ctx.bias_correction, variance_correction=ctx.variance_correction,
                            device=ctx.device, seed=ctx.seed, progress=ctx.progress)


METHOD = PTQMethod("adaquant", "AdaQuant (Hubara et al. 2021): layer-wise optimisation of weights and steps",
                   _adaquant_method, options=OPTIONS, quick={"iterations": 20})


__all__ = ["METHOD", "OPTIONS", "AdaQuantInfo", "adaquant_weights", "optimize_layer"]
