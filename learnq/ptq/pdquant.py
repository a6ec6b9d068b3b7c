"""PD-Quant: learned rounding driven by the prediction difference (Liu et al. 2023, "PD-Quant: Post-Training
Quantization based on Prediction Difference Metric", CVPR, arXiv:2212.07048, §3.2 Eq. 5-7 and §3.3 Eq. 8-9;
document 000 Table 1 "PD-Q" and Table 3; METHODS.md §7). Not one of seeds/: written from the paper's text.

PD-Quant keeps AdaRound's rounding variables (:mod:`learnq.ptq.adaround`: ``W̃ = Δ·clamp(⌊W/Δ⌋ + h(V)) + o``, the
rectified sigmoid, the annealed regulariser, hard rounding at the end) and changes what they minimise: instead of
the layer's local output error, the **prediction difference** of the whole network,

    L = KL(p_float(x) ‖ p_q(x)) + λ_mse·‖O - Õ‖² / ‖O‖² + λ_round·mean(1 - |2h(V) - 1|^β)      (Eq. 7 with Eq. 5-6)

where ``p = softmax`` of the logits, ``p_q`` is the prediction of the network whose earlier layers are already
quantized, whose current layer computes with ``W̃`` and whose later layers are still float, and ``O``/``Õ`` are the
layer's float and quantized outputs (the paper's regularisation against over-fitting the small calibration set;
here relative to ``‖O‖²`` so that both terms have the same scale for every layer; summed over the block's layers).
Reconstruction goes block by block, the rounding of a block's layers learned jointly: the paper uses BRECQ's blocks
(residual blocks); option ``block_depth`` groups consecutive layers whose names share their first ``block_depth``
components (2: ``blocks.3.*`` of MobileNetV2-small), 0 (default) makes every layer its own block.

**Distribution correction (§3.3).** The calibration activations feeding a layer are corrected towards the
statistics the network was trained on: when the layer before it had a BatchNorm (folded; its ``(β, |γ|)`` in
``ctx.bn_stats``) and only an activation lies between them, the pre-activation ``z`` of that layer on the
calibration set (quantized model) is moved per channel towards ``N(β, γ²)``:

    z' = μ' + (z - μ̂)·σ'/σ̂,     μ' = (1 - ρ)·μ̂ + ρ·β,     σ' = (1 - ρ)·σ̂ + ρ·|γ|

(μ̂, σ̂: the calibration batch's mean and standard deviation per channel; ρ: option ``dc_strength``), and the layer
is reconstructed on ``act(z')`` (the first layer of a block; the others see what the block computes). This closed
form is the fixed point family of the paper's Eq. 9 (BN-statistics loss plus a penalty for moving away from ``z``),
solved per channel instead of by gradient steps.

Activations stay in float while the rounding is learned; input quantizers are attached afterwards (α by option
``act_clip``), as for AdaRound. Defaults: 500 iterations per layer (batch 32, Adam lr 5e-2, λ_mse = 0.01,
λ_round = 0.1: chosen on a small network, where the relative MSE at 2 bits otherwise outweighs the KL); the paper's
are 20,000 per block.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from learnq.clipping import choose_clip
from learnq.errors import ConfigError, ModelError
from learnq.grid import GridSpec, QuantizedTensor, compute_params
from learnq.ptq.adaround import (
    beta_schedule,
    inverse_rectified_sigmoid,
    layer_function,
    rectified_sigmoid,
    rounding_regularizer,
)
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.equalize import Pair, find_pairs
from learnq.ptq.reconstruction import LayerByLayer, Observers, run_reconstruction
from learnq.quantized import get_module, split_name


def _log_probs(logits: Any) -> torch.Tensor:
    """log-softmax over the last dimension, one row per prediction ((N, C), or (N·T, V) for a sequence model)."""
    if not isinstance(logits, torch.Tensor) or logits.dim() < 2:
        raise ModelError("PD-Quant compares the network's predictions: its forward must return a tensor of logits "
                         f"with classes in the last dimension, got {type(logits).__name__}")
    return F.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=1)


@torch.no_grad()
def _batched(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, x.shape[0], batch)])


@torch.no_grad()
def capture_outputs(model: nn.Module, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The output of ``module`` when ``model`` runs on ``inputs``."""
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out.detach()))
    try:
        _batched(model, inputs)
    finally:
        handle.remove()
    return torch.cat(seen)


def distribution_correction(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, strength: float) -> torch.Tensor:
    """``z'`` of the module docstring: each channel (dim 1) of ``z`` moved towards ``N(mean, std²)``."""
    dims = [d for d in range(z.dim()) if d != 1]
    shape = [1, -1] + [1] * (z.dim() - 2)
    mu_hat, sd_hat = z.mean(dim=dims), z.std(dim=dims, correction=0)
    mu = (1 - strength) * mu_hat + strength * mean.to(z)
    sd = (1 - strength) * sd_hat + strength * std.to(z)
    ratio = torch.where(sd_hat > 0, sd / sd_hat.clamp(min=1e-12), torch.ones_like(sd_hat))
    return mu.reshape(shape) + (z - mu_hat.reshape(shape)) * ratio.reshape(shape)


def _act(kind: str, z: torch.Tensor) -> torch.Tensor:
    return {"relu": F.relu, "relu6": F.relu6}.get(kind, lambda t: t)(z)


class _Rounding:
    """One layer's rounding variables ``V`` and its soft weight ``W̃(V)`` (AdaRound's parametrisation)."""

    def __init__(self, weight: torch.Tensor, spec: GridSpec, clip: torch.Tensor | None, name: str) -> None:
        g = spec.granularity
        self.weight, self.spec, self.name = weight, spec, name
        w = weight.detach().float()
        self.params = compute_params(w, spec, clip=clip, name=name)
        self.scale, self.offset = g.expand(self.params.scale, w.shape), g.expand(self.params.offset, w.shape)
        self.qmin, self.qmax = spec.qrange()
        self.scaled = (w - self.offset) / self.scale
        self.floor = torch.floor(self.scaled)
        self.v = inverse_rectified_sigmoid(self.scaled - self.floor).requires_grad_(True)

    def soft(self) -> tuple[torch.Tensor, torch.Tensor]:
        h = rectified_sigmoid(self.v)
        return h, (torch.clamp(self.floor + h, self.qmin, self.qmax) * self.scale + self.offset).to(self.weight.dtype)

    @torch.no_grad()
    def hard(self, corrected: bool) -> tuple[QuantizedTensor, dict[str, Any]]:
        codes = torch.clamp(self.floor + (self.v >= 0).float(), self.qmin, self.qmax)
        nearest = torch.clamp(torch.round(self.scaled), self.qmin, self.qmax)
        qt = QuantizedTensor(codes=codes.to(torch.int32).to(self.weight.device), scale=self.params.scale,
                             offset=self.params.offset, granularity=self.spec.granularity, bits=self.spec.bits,
                             qmin=self.qmin, scheme=self.spec.scheme, method="pdquant", dtype=self.weight.dtype)
        return qt, {"name": self.name, "flipped": int((codes != nearest).sum()), "numel": codes.numel(),
                    "corrected": corrected}


def learn_rounding_pd(model: nn.Module, modules: list[nn.Module], spec: GridSpec, inputs: torch.Tensor,
                      log_p_float: torch.Tensor, targets: list[torch.Tensor], *,
                      layer_inputs: list[torch.Tensor | None] | None = None,
                      clips: list[torch.Tensor | None] | None = None, iterations: int = 500, lr: float = 5e-2,
                      reg_weight: float = 0.1, mse_weight: float = 0.01, beta_range: tuple[float, float] = (20.0, 2.0),
                      warmup: float = 0.2, batch_size: int = 32, seed: int = 0,
                      names: list[str] | None = None) -> list[tuple[QuantizedTensor, dict[str, Any]]]:
    """Learn the rounding of the layers ``modules`` of one block jointly by the loss of the module docstring.

    ``targets[k]``: layer k's float output without bias on the float model's inputs (per calibration sample);
    ``layer_inputs[k]``: the (corrected) inputs of layer k, replacing what the model computes there (None: the
    model's own). Returns the hard-rounded :class:`QuantizedTensor` (method ``"pdquant"``) and a report per layer.
    """
    count = len(modules)
    layer_inputs = layer_inputs or [None] * count
    clips = clips or [None] * count
    names = names or [f"layer{k}" for k in range(count)]
    fns = [layer_function(m) for m in modules]
    roundings = [_Rounding(m.weight.detach(), spec, c, nm) for m, c, nm in zip(modules, clips, names, strict=True)]
    opt = torch.optim.Adam([r.v for r in roundings], lr=lr)
    biases = [None if m.bias is None else m.bias.detach().reshape([-1] + [1] * (m.weight.dim() - 2))
              for m in modules]
    state: dict[str, Any] = {"w": [None] * count, "out": [None] * count}

    def hooks(k: int) -> tuple:
        def pre_hook(_m: nn.Module, args: tuple) -> tuple | None:
            return (layer_inputs[k][state["idx"]],) if layer_inputs[k] is not None else None

        def hook(_m: nn.Module, args: tuple, _out: torch.Tensor) -> torch.Tensor:
            out = fns[k](args[0], state["w"][k])
            state["out"][k] = out
            return out if biases[k] is None else out + biases[k]

        return pre_hook, hook

    handles = []
    for k, m in enumerate(modules):
        pre, post = hooks(k)
        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = inputs.shape[0]
    tnorms = [t.pow(2).reshape(n, -1).sum(dim=1).clamp(min=1e-12) for t in targets]
    try:
        for step in range(iterations):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen).to(inputs.device)
            soft = [r.soft() for r in roundings]
            state["idx"], state["w"] = idx, [w for _, w in soft]
            state["out"] = [None] * count
            loss = F.kl_div(_log_probs(model(inputs[idx])), log_p_float[idx].reshape(-1, log_p_float.shape[-1]),
                            log_target=True, reduction="batchmean")
            beta = beta_schedule(step, iterations, warmup=warmup, start=beta_range[0], end=beta_range[1])
            for k in range(count):
                out = state["out"][k]
                if mse_weight > 0 and out is not None:
                    err = (out - targets[k][idx]).pow(2).reshape(len(idx), -1)
                    loss = loss + mse_weight * (err.sum(dim=1) / tnorms[k][idx]).mean()
                if beta is not None and reg_weight > 0:
                    h = soft[k][0]
                    loss = loss + reg_weight * rounding_regularizer(h, beta) / h.numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for handle in handles:
            handle.remove()
    return [r.hard(x is not None) for r, x in zip(roundings, layer_inputs, strict=True)]


def blocks(names: list[str], depth: int) -> list[list[str]]:
    """Consecutive weight names grouped into blocks: the same first ``depth`` components of the layer's name
    (``depth`` 0: every layer its own block; 2 groups ``blocks.3.block.*`` of MobileNetV2-small)."""
    out: list[list[str]] = []
    key = None
    for name in names:
        parts = split_name(name)[0].split(".")
        k = ".".join(parts[:depth]) if 0 < depth < len(parts) else split_name(name)[0]
        if out and k == key:
            out[-1].append(name)
        else:
            out.append([name])
        key = k
    return out


def _dc_pair(pair: Pair | None, ctx: PTQContext) -> bool:
    return pair is not None and not pair.maxpool and not pair.flatten and pair.first in ctx.bn_stats


OPTIONS: dict[str, Any] = {"iterations": 500, "lr": 5e-2, "reg_weight": 0.1, "mse_weight": 0.01, "beta_start": 20.0,
                           "beta_end": 2.0, "warmup": 0.2, "round_batch_size": 32, "dc": True, "dc_strength": 0.5,
                           "block_depth": 0, "clip": "mse", "act_clip": "mse"}


def _pdquant(ctx: PTQContext) -> dict[str, Any]:
    if ctx.bias_correction or ctx.variance_correction:
        raise ConfigError("PD-Quant learns the rounding against the network's predictions; bias correction does not "
                          "apply to it: drop bias_correction / variance_correction")
    if not 0.0 <= ctx.options["dc_strength"] <= 1.0:
        raise ConfigError(f"PD-Quant dc_strength must be in [0, 1], got {ctx.options['dc_strength']!r}")
    return run_reconstruction(ctx, "pdquant", _weights)


def _weights(ctx: PTQContext, _observers: Observers | None) -> dict[str, dict[str, Any]]:
    """The selected weights block by block (option ``block_depth``), each block's rounding learned jointly against
    the float model's predictions, the first layer's input distribution-corrected where the option asks."""
    opts = ctx.options
    run = LayerByLayer(ctx.model, ctx.inputs, "PD-Quant", selection=ctx.selection, device=ctx.device,
                       progress=ctx.progress)
    model, inputs = ctx.model, ctx.inputs.to(ctx.device)
    logits = _batched(run.float_model, inputs)
    log_p = _log_probs(logits).reshape(*logits.shape)  # one row of log-probabilities per sample (and position)
    pairs = {p.second: p for p in find_pairs(model)}
    groups = [[split_name(name)[0] for name in group] for group in blocks(run.names, opts["block_depth"])]
    for block in run.blocks(groups):
        targets, corrected, clips = [], [], []
        for layer in block.layers:
            clips.append(None if opts["clip"] == "minmax" else choose_clip(layer.weight, ctx.wspec, opts["clip"]))
            targets.append(run.float_target(layer.module_name, layer_function(layer.module), layer.weight))
            pair = pairs.get(layer.module_name)
            x_dc = None
            if opts["dc"] and opts["dc_strength"] > 0 and _dc_pair(pair, ctx) and layer is block.layers[0]:
                z = capture_outputs(model, get_module(model, pair.first), inputs)
                mean, std = ctx.bn_stats[pair.first]
                x_dc = _act(pair.act, distribution_correction(z, mean, std, opts["dc_strength"]))
            corrected.append(x_dc)
        results = learn_rounding_pd(model, [layer.module for layer in block.layers], ctx.wspec, inputs, log_p,
                                    targets, layer_inputs=corrected, clips=clips, iterations=opts["iterations"],
                                    lr=opts["lr"], reg_weight=opts["reg_weight"], mse_weight=opts["mse_weight"],
                                    beta_range=(opts["beta_start"], opts["beta_end"]), warmup=opts["warmup"],
                                    batch_size=opts["round_batch_size"], seed=ctx.seed + block.index,
                                    names=[layer.name for layer in block.layers])
        for layer, (qt, info) in zip(block.layers, results, strict=True):
            run.attach(layer, qt, info)
    return run.infos


METHOD = PTQMethod("pdquant", "PD-Quant (Liu et al. 2023): AdaRound rounding learned against the prediction "
                   "difference (KL of outputs), BN-statistics distribution correction", _pdquant, options=OPTIONS,
                   quick={"iterations": 20})

__all__ = ["METHOD", "OPTIONS", "blocks", "capture_outputs", "distribution_correction", "learn_rounding_pd"]
