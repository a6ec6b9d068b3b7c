"""AdaRound: learned rounding of weights after training (Nagel et al. 2020, "Up or Down? Adaptive Rounding for
Post-Training Quantization", ICML, arXiv:2004.10568, Sec. 4; METHODS.md §6). Not one of seeds/: the formulas below
are the paper's, written from its text.

For one layer with weight ``W`` on a grid of step ``Δ`` (per group) and offset ``o`` (0 for the symmetric grids),
rounding up or down is learned with a continuous variable ``V`` of ``W``'s shape:

    W̃ = Δ · clamp(⌊(W - o)/Δ⌋ + h(V), qmin, qmax) + o,
    h(V) = clip(σ(V)(ζ - γ) + γ, 0, 1),        ζ = 1.1, γ = -0.1   (rectified sigmoid),

minimising the layer's local reconstruction error plus a regulariser that pushes ``h`` to 0 or 1:

    ‖W x - W̃ x̃‖² + λ Σ (1 - |2h(V) - 1|^β),

``β`` annealed linearly from 20 to 2 after a warm-up (20 % of the iterations by default) without the regulariser;
``λ = 0.01``. ``x`` is the layer's input in the float model and ``x̃`` its input in the model whose earlier layers
are already quantized (the paper's asymmetric reconstruction, default ``inputs="quantized"``); ``inputs="float"``
uses ``x`` on both sides. The error is the squared norm of each sample's output difference (pre-activation; the
paper's variant through the activation function is not implemented), averaged over a minibatch. ``V`` is
initialised so that ``h(V)`` equals the fractional part of ``(W - o)/Δ`` (W̃ = W at the start), trained with Adam,
and finally rounded hard: up where ``h(V) >= 1/2`` (``V >= 0``). The bias is not touched.

Layers are processed one at a time in definition order; each is replaced by a frozen
:class:`learnq.quantized.QuantizedWeight` (method ``"adaround"``), so export, size and save are the usual ones.
Activations stay in float while the rounding is learned; the registered PTQ method ``adaround``
(``learnq.ptq.quantize(..., method="adaround")``) then attaches input quantizers observed on the model with the
rounded weights. A layer called several times per forward pass is reconstructed on the inputs of its first call; a
tied weight (one Parameter in several modules) is rounded once, and used by all: reconstructed at its first linear or
conv holder when it has one (a language model's output layer rather than its token embedding). Transformers: an
``nn.MultiheadAttention``'s ``in_proj_weight`` is reconstructed as ``x Wᵀ`` on the attention's first input (the
query: exact for self-attention, where query, key and value are one tensor); an embedding as the lookup
``W[ids]`` (its rows weighted by how often the calibration ids use them); the ``out_proj`` of an
``nn.MultiheadAttention``, whose input no hook reaches, is rounded to nearest (its info says so).
Iterations per layer: the paper's (and AIMET's) 10,000 by default (batch 32, λ = 0.01; option ``iterations``),
or the ``fast`` preset: option ``fast=True`` (``learnq quantize --fast``, a recipe variant's
``options = { fast = true }``) runs :data:`FAST_ITERATIONS` (1,000) instead, about 10x quicker; what it costs in
accuracy is what ``benchmarks/ptq.py``'s ``adaround`` / ``adaround-fast`` rows measure (BENCHMARKS.md, issue 17).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from learnq.attach import BitsRule, Selection
from learnq.errors import ConfigError, DataError, ModelError
from learnq.grid import GridSpec, QuantizedTensor, check_tensor, compute_params
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.reconstruction import (  # capture_inputs, for_each_input: public here too (moved there)
    LayerByLayer,
    Observers,
    capture_inputs,
    for_each_input,
    run_reconstruction,
)
from learnq.quantized import get_module, holders

ZETA = 1.1
GAMMA = -0.1
DEFAULT_ITERATIONS = 10_000  # Nagel et al. 2020, Sec. 5; AIMET's default
FAST_ITERATIONS = 1_000  # the ``fast`` preset


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clip(σ(V)(ζ - γ) + γ, 0, 1)`` with ζ = 1.1, γ = -0.1."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = h`` for ``h`` in [0, 1] (finite: σ(V) stays in [1/12, 11/12])."""
    p = (h.clamp(0.0, 1.0) - GAMMA) / (ZETA - GAMMA)
    return torch.log(p) - torch.log1p(-p)


def rounding_regularizer(h: torch.Tensor, beta: float) -> torch.Tensor:
    """``Σ (1 - |2h - 1|^β)``: zero when every ``h`` is 0 or 1, largest at ``h = 1/2``."""
    return (1.0 - (2.0 * h - 1.0).abs().pow(beta)).sum()


def beta_schedule(step: int, iterations: int, *, warmup: float = 0.2, start: float = 20.0,
                  end: float = 2.0) -> float | None:
    """β at iteration ``step`` (0-based): None during the warm-up (no regulariser), then linear from ``start`` to
    ``end`` over the remaining iterations (``end`` reached at the last one)."""
    first = int(warmup * iterations)
    if step < first:
        return None
    span = max(1, iterations - 1 - first)
    return end + (start - end) * max(0.0, 1.0 - (step - first) / span)


@dataclass
class AdaRoundInfo:
    """What one layer's optimisation did: reconstruction error (mean per sample) with nearest rounding and with the
    learned rounding on the calibration inputs, and how many weights were rounded the other way than nearest."""

    name: str
    nearest_error: float
    adaround_error: float
    flipped: int
    numel: int
    note: str = ""


def _is_attention_out(model: nn.Module, module_name: str) -> bool:
    parent, _, leaf = module_name.rpartition(".")
    return leaf == "out_proj" and isinstance(get_module(model, parent), nn.MultiheadAttention)


def reconstruction_layer(model: nn.Module, name: str) -> tuple[str, Callable[[torch.Tensor, torch.Tensor],
                                                                           torch.Tensor] | None]:
    """(module name, ``fn(x, w)``) whose output AdaRound reconstructs for weight ``name``: its first linear/conv
    holder, else an attention's in-projection or an embedding lookup; ``fn`` None for an ``nn.MultiheadAttention``'s
    ``out_proj`` (its input cannot be captured: rounded to nearest)."""
    every = holders(model, name)
    for mname, module, attr in every:
        if attr == "weight" and isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            if _is_attention_out(model, mname):
                continue
            return mname, layer_function(module)
    mname, module, attr = every[0]
    if isinstance(module, nn.MultiheadAttention) and attr == "in_proj_weight":
        return mname, lambda x, w: F.linear(x, w)
    if isinstance(module, nn.Embedding) and attr == "weight":
        return mname, lambda x, w: F.embedding(x, w)
    if attr == "weight" and _is_attention_out(model, mname):
        return mname, None
    raise ModelError(f"AdaRound rounds the weights of linear, conv, embedding and attention layers, not {name!r} "
                     f"({type(module).__name__}.{attr})")


def _nearest(weight: torch.Tensor, spec: GridSpec, clip: torch.Tensor | None, name: str) -> QuantizedTensor:
    w = weight.detach().float()
    g = spec.granularity
    params = compute_params(w, spec, clip=clip, name=name)
    qmin, qmax = spec.qrange()
    scaled = (w - g.expand(params.offset, w.shape)) / g.expand(params.scale, w.shape)
    codes = torch.clamp(torch.round(scaled), qmin, qmax)
    return QuantizedTensor(codes=codes.to(torch.int32), scale=params.scale, offset=params.offset, granularity=g,
                           bits=spec.bits, qmin=qmin, scheme=spec.scheme, method="adaround", dtype=weight.dtype)


def layer_function(module: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(x, w)``: the layer's output for input ``x`` with weight ``w`` and no bias."""
    if isinstance(module, nn.Linear):
        return lambda x, w: F.linear(x, w)
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return lambda x, w: module._conv_forward(x, w, None)  # stride, padding, dilation, groups of the layer
    raise ModelError(f"AdaRound works on nn.Linear and nn.Conv1d/2d/3d layers, not {type(module).__name__}")


def _soft_weight(floor: torch.Tensor, h: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                 qmin: int, qmax: int) -> torch.Tensor:
    return torch.clamp(floor + h, qmin, qmax) * scale + offset


def learn_rounding(weight: torch.Tensor, spec: GridSpec, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   x_in: torch.Tensor, target: torch.Tensor, *, clip: torch.Tensor | float | None = None,
                   iterations: int = DEFAULT_ITERATIONS, lr: float = 1e-2, reg_weight: float = 0.01,
                   beta_range: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, batch_size: int = 32,
                   seed: int = 0, name: str = "weight") -> tuple[QuantizedTensor, AdaRoundInfo]:
    """Learn the rounding of one ``weight`` on ``spec``'s grid (range ``clip`` per group, min-max when None).

    ``fn(x, w)`` is the layer without bias; ``x_in`` the layer's inputs (N, ...), ``target`` = ``fn(x_float, W)``.
    Returns the hard-rounded :class:`QuantizedTensor` (method ``"adaround"``) and an :class:`AdaRoundInfo`.
    """
    check_tensor(weight, name)
    if x_in.shape[0] == 0 or x_in.shape[0] != target.shape[0]:
        raise DataError(f"AdaRound {name}: {x_in.shape[0]} inputs for {target.shape[0]} targets; need matching, "
                        "non-empty calibration batches")
    if not isinstance(iterations, int) or iterations < 0:
        raise ConfigError(f"AdaRound iterations must be an integer >= 0, got {iterations!r}")
    if not 0.0 <= warmup < 1.0:
        raise ConfigError(f"AdaRound warmup must be a fraction in [0, 1), got {warmup!r}")
    if not (lr > 0 and reg_weight >= 0 and batch_size >= 1):
        raise ConfigError("AdaRound needs lr > 0, reg_weight >= 0 and batch_size >= 1")
    if len(beta_range) != 2 or not all(b > 0 for b in beta_range):
        raise ConfigError(f"AdaRound beta_range must be two values > 0 (start, end), got {beta_range!r}")
    device = weight.device
    g = spec.granularity
    w = weight.detach().float()
    params = compute_params(w, spec, clip=clip, name=name)
    scale, offset = g.expand(params.scale, w.shape), g.expand(params.offset, w.shape)
    qmin, qmax = spec.qrange()
    scaled = (w - offset) / scale
    floor = torch.floor(scaled)
    v = inverse_rectified_sigmoid(scaled - floor).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = x_in.shape[0]
    for step in range(iterations):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=gen)
        xb, tb = x_in[idx.to(x_in.device)], target[idx.to(target.device)]
        h = rectified_sigmoid(v)
        out = fn(xb, _soft_weight(floor, h, scale, offset, qmin, qmax).to(weight.dtype))
        loss = (out - tb).pow(2).reshape(out.shape[0], -1).sum(dim=1).mean()
        beta = beta_schedule(step, iterations, warmup=warmup, start=beta_range[0], end=beta_range[1])
        if beta is not None and reg_weight > 0:
            loss = loss + reg_weight * rounding_regularizer(h, beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        codes = torch.clamp(floor + (v >= 0).float(), qmin, qmax)
        nearest = torch.clamp(torch.round(scaled), qmin, qmax)
        errors = [_recon_error(fn, x_in, target, (c * scale + offset).to(weight.dtype), batch_size=256)
                  for c in (nearest, codes)]
    qt = QuantizedTensor(codes=codes.to(torch.int32).to(device), scale=params.scale, offset=params.offset,
                         granularity=g, bits=spec.bits, qmin=qmin, scheme=spec.scheme, method="adaround",
                         dtype=weight.dtype)
    info = AdaRoundInfo(name=name, nearest_error=errors[0], adaround_error=errors[1],
                        flipped=int((codes != nearest).sum()), numel=w.numel())
    return qt, info


@torch.no_grad()
def _recon_error(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, target: torch.Tensor,
                 w: torch.Tensor, batch_size: int) -> float:
    total = 0.0
    for i in range(0, x.shape[0], batch_size):
        out = fn(x[i:i + batch_size], w)
        total += float((out - target[i:i + batch_size]).pow(2).reshape(out.shape[0], -1).sum())
    return total / x.shape[0]


def adaround_weights(model: nn.Module, calib_inputs: torch.Tensor, spec: GridSpec, *,
                     selection: Selection = Selection(), bits_rule: BitsRule | None = None, clip: str = "minmax",
                     inputs: str = "quantized", iterations: int = DEFAULT_ITERATIONS, lr: float = 1e-2,
                     reg_weight: float = 0.01,
                     beta_range: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2, batch_size: int = 32,
                     device: str | torch.device = "cpu", seed: int = 0, progress: bool = False,
                     **clip_options: object) -> dict[str, AdaRoundInfo]:
    """Quantize the selected weights of ``model`` (in place, eval mode) with AdaRound, layer by layer.

    ``calib_inputs``: calibration inputs (N, ...). ``clip``: how each layer's range is chosen before rounding is
    learned (``"minmax"`` or any method of ``learnq.clipping``, with ``clip_options``). ``inputs``:
    ``"quantized"`` (each layer sees the output of the layers already rounded) or ``"float"``. Returns
    ``{name: AdaRoundInfo}`` in processing order.
    """
    run = LayerByLayer(model, calib_inputs, "AdaRound", selection=selection, inputs=inputs,
                       params=("weight", "in_proj_weight"), device=device, seed=seed, progress=progress)
    for layer in run:
        name, weight = layer.name, layer.weight
        layer_name, fn = reconstruction_layer(model, name)
        layer_spec = spec if bits_rule is None else GridSpec(
            bits=bits_rule(name), scheme=spec.scheme, granularity=spec.granularity, rounding=spec.rounding,
            restricted=spec.restricted)
        alpha = None
        if clip != "minmax":
            from learnq.clipping import choose_clip  # part of the clipping module (not needed for min-max)

            alpha = choose_clip(weight, layer_spec, clip, **clip_options)
        if fn is None:
            run.attach(layer, _nearest(weight, layer_spec, alpha, name),
                       AdaRoundInfo(name=name, nearest_error=math.nan, adaround_error=math.nan, flipped=0,
                                    numel=weight.numel(), note="attention out_proj: input not reachable, nearest"))
            continue
        x_q, target = run.layer_data(layer_name, fn, weight)
        run.attach(layer, *learn_rounding(weight, layer_spec, fn, x_q, target, clip=alpha, iterations=iterations,
                                          lr=lr, reg_weight=reg_weight, beta_range=beta_range, warmup=warmup,
                                          batch_size=batch_size, seed=seed + layer.index, name=name))
    return run.infos


OPTIONS: dict[str, Any] = {"iterations": DEFAULT_ITERATIONS, "fast": False, "lr": 1e-2, "reg_weight": 0.01,
                           "beta_start": 20.0, "beta_end": 2.0, "warmup": 0.2, "round_batch_size": 32,
                           "inputs": "quantized", "clip": "mse", "act_clip": "mse"}


def resolve_iterations(options: dict[str, Any]) -> int:
    """Iterations per layer from the method's options: ``iterations``, or :data:`FAST_ITERATIONS` with ``fast``
    (``ConfigError`` when both are given: they contradict each other)."""
    if not options.get("fast"):
        return options["iterations"]
    if options["iterations"] != DEFAULT_ITERATIONS:
        raise ConfigError(f"AdaRound: fast=True sets {FAST_ITERATIONS} iterations; drop fast or iterations="
                          f"{options['iterations']}")
    return FAST_ITERATIONS


def _adaround_method(ctx: PTQContext) -> dict[str, Any]:
    """The ``adaround`` PTQ method: weights by :func:`adaround_weights` (range by option ``clip``, float
    activations while the rounding is learned), then input quantizers observed on the model with rounded weights
    (α by option ``act_clip``)."""
    if ctx.bias_correction or ctx.variance_correction:
        raise ConfigError("AdaRound learns the rounding to reconstruct each layer's output; bias correction does not "
                          "apply to it: drop bias_correction / variance_correction")
    opts = ctx.options
    iterations = resolve_iterations(opts)

    def weights(ctx: PTQContext, _observers: Observers | None) -> dict[str, AdaRoundInfo]:
        return adaround_weights(ctx.model, ctx.inputs, ctx.wspec, selection=ctx.selection, clip=opts["clip"],
                                inputs=opts["inputs"], iterations=iterations, lr=opts["lr"],
                                reg_weight=opts["reg_weight"], beta_range=(opts["beta_start"], opts["beta_end"]),
                                warmup=opts["warmup"], batch_size=opts["round_batch_size"], device=ctx.device,
                                seed=ctx.seed, progress=ctx.progress)

    return run_reconstruction(ctx, "adaround", weights)


METHOD = PTQMethod("adaround", "AdaRound (Nagel et al. 2020): learned up/down rounding per layer, layer by layer",
                   _adaround_method, options=OPTIONS, quick={"iterations": 20})


__all__ = ["ZETA", "GAMMA", "DEFAULT_ITERATIONS", "FAST_ITERATIONS", "METHOD", "OPTIONS", "AdaRoundInfo",
           "adaround_weights", "beta_schedule", "capture_inputs", "for_each_input", "inverse_rectified_sigmoid",
           "layer_function", "learn_rounding", "reconstruction_layer", "rectified_sigmoid", "resolve_iterations",
           "rounding_regularizer"]
