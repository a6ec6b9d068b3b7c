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
here relative to ``‖O‖²`` so that both terms have the same scale for every layer). Reconstruction goes layer by
layer (the paper uses BRECQ's blocks; a layer is a block of one here).

**Distribution correction (§3.3).** The calibration activations feeding a layer are corrected towards the
statistics the network was trained on: when the layer before it had a BatchNorm (folded; its ``(β, |γ|)`` in
``ctx.bn_stats``) and only an activation lies between them, the pre-activation ``z`` of that layer on the
calibration set (quantized model) is moved per channel towards ``N(β, γ²)``:

    z' = μ' + (z - μ̂)·σ'/σ̂,     μ' = (1 - ρ)·μ̂ + ρ·β,     σ' = (1 - ρ)·σ̂ + ρ·|γ|

(μ̂, σ̂: the calibration batch's mean and standard deviation per channel; ρ: option ``dc_strength``), and the layer
is reconstructed on ``act(z')``. This closed form is the fixed point family of the paper's Eq. 9 (BN-statistics
loss plus a penalty for moving away from ``z``), solved per channel instead of by gradient steps.

Activations stay in float while the rounding is learned; input quantizers are attached afterwards (α by option
``act_clip``), as for AdaRound. Defaults: 500 iterations per layer (batch 32, Adam lr 5e-2, λ_mse = 0.01,
λ_round = 0.1: chosen on a small network, where the relative MSE at 2 bits otherwise outweighs the KL); the paper's
are 20,000 per block.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from learnq.attach import select_weights
from learnq.clipping import choose_clip
from learnq.errors import ConfigError, ModelError
from learnq.grid import GridSpec, QuantizedTensor, compute_params
from learnq.ptq.adaround import (
    beta_schedule,
    capture_inputs,
    inverse_rectified_sigmoid,
    layer_function,
    rectified_sigmoid,
    rounding_regularizer,
)
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.equalize import Pair, find_pairs
from learnq.quantized import attach_quantized, get_module, split_name


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


def learn_rounding_pd(model: nn.Module, module: nn.Module, weight: torch.Tensor, spec: GridSpec,
                      inputs: torch.Tensor, log_p_float: torch.Tensor, target: torch.Tensor, *,
                      layer_input: torch.Tensor | None = None, clip: torch.Tensor | None = None,
                      iterations: int = 500, lr: float = 5e-2, reg_weight: float = 0.1, mse_weight: float = 0.01,
                      beta_range: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, batch_size: int = 32,
                      seed: int = 0, name: str = "weight") -> tuple[QuantizedTensor, dict[str, Any]]:
    """Learn ``module``'s rounding by the loss of the module docstring; ``layer_input``: the (corrected) inputs of
    the layer for each calibration sample, replacing what the model computes there (None: the model's own)."""
    fn = layer_function(module)
    g = spec.granularity
    w = weight.detach().float()
    params = compute_params(w, spec, clip=clip, name=name)
    scale, offset = g.expand(params.scale, w.shape), g.expand(params.offset, w.shape)
    qmin, qmax = spec.qrange()
    scaled = (w - offset) / scale
    floor = torch.floor(scaled)
    v = inverse_rectified_sigmoid(scaled - floor).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    bias = None if module.bias is None else module.bias.detach().reshape(
        [-1] + [1] * (weight.dim() - 2) if weight.dim() > 2 else [-1])
    state: dict[str, Any] = {}

    def pre_hook(_m: nn.Module, args: tuple) -> tuple | None:
        return (layer_input[state["idx"]],) if layer_input is not None else None

    def hook(_m: nn.Module, args: tuple, _out: torch.Tensor) -> torch.Tensor:
        out = fn(args[0], state["w"])
        state["out"] = out
        return out if bias is None else out + bias

    handles = [module.register_forward_pre_hook(pre_hook), module.register_forward_hook(hook)]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = inputs.shape[0]
    tnorm = target.pow(2).reshape(n, -1).sum(dim=1).clamp(min=1e-12)
    try:
        for step in range(iterations):
            idx = torch.randint(0, n, (min(batch_size, n),), generator=gen).to(inputs.device)
            h = rectified_sigmoid(v)
            state["idx"], state["w"] = idx, (torch.clamp(floor + h, qmin, qmax) * scale + offset).to(weight.dtype)
            loss = F.kl_div(_log_probs(model(inputs[idx])), log_p_float[idx].reshape(-1, log_p_float.shape[-1]),
                            log_target=True, reduction="batchmean")
            if mse_weight > 0:
                err = (state["out"] - (target[idx] - (0 if bias is None else bias))).pow(2).reshape(len(idx), -1)
                loss = loss + mse_weight * (err.sum(dim=1) / tnorm[idx]).mean()
            beta = beta_schedule(step, iterations, warmup=warmup, start=beta_range[0], end=beta_range[1])
            if beta is not None and reg_weight > 0:
                loss = loss + reg_weight * rounding_regularizer(h, beta) / h.numel()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for handle in handles:
            handle.remove()
    with torch.no_grad():
        codes = torch.clamp(floor + (v >= 0).float(), qmin, qmax)
        nearest = torch.clamp(torch.round(scaled), qmin, qmax)
    qt = QuantizedTensor(codes=codes.to(torch.int32).to(weight.device), scale=params.scale, offset=params.offset,
                         granularity=g, bits=spec.bits, qmin=qmin, scheme=spec.scheme, method="pdquant",
                         dtype=weight.dtype)
    return qt, {"name": name, "flipped": int((codes != nearest).sum()), "numel": w.numel(),
                "corrected": layer_input is not None}


def _dc_pair(pair: Pair | None, ctx: PTQContext) -> bool:
    return pair is not None and not pair.maxpool and not pair.flatten and pair.first in ctx.bn_stats


OPTIONS: dict[str, Any] = {"iterations": 500, "lr": 5e-2, "reg_weight": 0.1, "mse_weight": 0.01, "beta_start": 20.0,
                           "beta_end": 2.0, "warmup": 0.2, "round_batch_size": 32, "dc": True, "dc_strength": 0.5,
                           "clip": "mse", "act_clip": "mse"}


def _pdquant(ctx: PTQContext) -> dict[str, Any]:
    if ctx.bias_correction or ctx.variance_correction:
        raise ConfigError("PD-Quant learns the rounding against the network's predictions; bias correction does not "
                          "apply to it: drop bias_correction / variance_correction")
    opts = ctx.options
    if not 0.0 <= opts["dc_strength"] <= 1.0:
        raise ConfigError(f"PD-Quant dc_strength must be in [0, 1], got {opts['dc_strength']!r}")
    infos: list[dict[str, Any]] = []
    if ctx.wspec is not None:
        model = ctx.model.eval()
        inputs = ctx.inputs.to(ctx.device)
        float_model = copy.deepcopy(model)
        logits = _batched(float_model, inputs)
        log_p = _log_probs(logits).reshape(*logits.shape)  # one row of log-probabilities per sample (and position)
        pairs = {p.second: p for p in find_pairs(model)}
        names = select_weights(model, ctx.selection)[0]
        for i, name in enumerate(tqdm(names, desc="pdquant", unit="layer", disable=not ctx.progress)):
            module_name, param = split_name(name)
            if param != "weight":
                raise ConfigError(f"PD-Quant rounds layer weights only, not {name!r}; select weights (biases=False)")
            module = get_module(model, module_name)
            weight = module.weight.detach()
            clip = None if opts["clip"] == "minmax" else choose_clip(weight, ctx.wspec, opts["clip"])
            x_float = capture_inputs(float_model, get_module(float_model, module_name), inputs, device=ctx.device)
            fn = layer_function(module)
            with torch.no_grad():
                target = torch.cat([fn(x_float[j:j + 256], weight) for j in range(0, x_float.shape[0], 256)])
            corrected = None
            pair = pairs.get(module_name)
            if opts["dc"] and opts["dc_strength"] > 0 and _dc_pair(pair, ctx):
                z = capture_outputs(model, get_module(model, pair.first), inputs)
                mean, std = ctx.bn_stats[pair.first]
                corrected = _act(pair.act, distribution_correction(z, mean, std, opts["dc_strength"]))
            qt, info = learn_rounding_pd(model, module, weight, ctx.wspec, inputs, log_p, target,
                                         layer_input=corrected, clip=clip, iterations=opts["iterations"],
                                         lr=opts["lr"], reg_weight=opts["reg_weight"], mse_weight=opts["mse_weight"],
                                         beta_range=(opts["beta_start"], opts["beta_end"]), warmup=opts["warmup"],
                                         batch_size=opts["round_batch_size"], seed=ctx.seed + i, name=name)
            attach_quantized(model, name, qt)
            ctx.weights[name] = module.parametrizations[param][-1]
            infos.append(info)
    ctx.attach_activations(clip=opts["act_clip"])
    return {"pdquant": infos}


METHOD = PTQMethod("pdquant", "PD-Quant (Liu et al. 2023): AdaRound rounding learned against the prediction "
                   "difference (KL of outputs), BN-statistics distribution correction", _pdquant, options=OPTIONS,
                   quick={"iterations": 20})

__all__ = ["METHOD", "OPTIONS", "capture_outputs", "distribution_correction", "learn_rounding_pd"]
