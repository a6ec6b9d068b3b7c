"""DFQ: data-free quantization (Nagel et al. 2019, "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV, arXiv:1906.04721; document 000 Table 1 "DFQ"; METHODS.md §7).

The ``dfq`` PTQ method is the paper's pipeline (§5):

1. cross-layer equalization and high-bias absorption (§4.1, :mod:`learnq.ptq.equalize`; options ``cle``,
   ``absorb``, ``max_iter``, ``tol``), unless the config already ran them (``learnq.PTQ(equalize=True)``);
2. weights quantized on the configured grid (range by option ``clip``, min-max as in the paper);
3. data-free bias correction (§4.2, Eq. 15-19; option ``bn_bias_correction``): the quantization error
   ``ΔW = Q(W) - W`` of a layer shifts its output by ``E[ΔW·x] = ΔW·E[x]``; the expected input comes from the
   BatchNorm folded into the layer before it: its pre-activation is ``N(μ, σ²)`` per channel (β and |γ|, scaled
   and shifted by step 1), so after a ReLU

       E[x] = μ·Φ(μ/σ) + σ·φ(μ/σ)                     (the clipped normal's mean, Eq. 18-19)

   after a ReLU6 ``E[x] = E[relu(z)] - E[relu(z - 6)]``, with no activation ``E[x] = μ``; then
   ``b ← b - ΔW·E[x]`` (summed over the kernel; zero padding ignored, as in the paper). A layer without such a
   predecessor (the first layer, a max pooling in between, no BatchNorm) is not corrected; the report says which
   layers were.
4. inputs quantized as every method does (observed over the calibration set, α by option ``act_clip``): learnq's
   activation quantizers are calibrated, so only the weights are data-free here.

``bias_correction`` / ``variance_correction`` of the config (Banner et al.'s per-channel weight correction) compose
with it: they act on the quantized weight, and step 3 corrects what remains of the output's shift.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.equalize import equalize, find_pairs, input_sum

_SQRT2 = math.sqrt(2.0)


def relu_mean(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``E[max(0, z)]`` for ``z ~ N(mean, std²)`` per channel (``max(0, mean)`` where std = 0)."""
    sd = std.clamp(min=1e-12)
    z = mean / sd
    cdf = 0.5 * (1 + torch.erf(z / _SQRT2))
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
    return torch.where(std > 0, mean * cdf + sd * pdf, mean.clamp(min=0))


def expected_activation(act: str, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``E[act(z)]`` for ``z ~ N(mean, std²)``: act "relu", "relu6" or "none"."""
    if act == "relu":
        return relu_mean(mean, std)
    if act == "relu6":
        return relu_mean(mean, std) - relu_mean(mean - 6.0, std)
    return mean


@torch.no_grad()
def correct_biases(ctx: PTQContext, pairs: list) -> list[str]:
    """Step 3 on every pair whose second layer has a quantized weight and a bias; returns the corrected layers."""
    done = []
    for pair in pairs:
        if pair.maxpool or pair.first not in ctx.bn_stats:
            continue
        second = ctx.model.get_submodule(pair.second)
        plist = getattr(second, "parametrizations", None)
        if second.bias is None or plist is None or "weight" not in plist:
            continue
        mean, std = ctx.bn_stats[pair.first]
        ex = expected_activation(pair.act, mean.double(), std.double())
        delta = second.weight.detach().double() - plist["weight"].original.detach().double()
        channels = ex.numel()
        second.bias.sub_(input_sum(second, channels, ex, weight=delta).to(second.bias))
        done.append(pair.second)
    return done


OPTIONS: dict[str, Any] = {"clip": "minmax", "act_clip": "mse", "cle": True, "absorb": True, "bn_bias_correction": True,
                           "max_iter": 20, "tol": 1e-4}


def _dfq(ctx: PTQContext) -> dict[str, Any]:
    opts = ctx.options
    out: dict[str, Any] = {}
    if opts["cle"] and not (ctx.config is not None and ctx.config.equalize):
        out["equalize"] = equalize(ctx.model, ctx.bn_stats, max_iter=opts["max_iter"], tol=opts["tol"],
                                   absorb=opts["absorb"])
    pairs = find_pairs(ctx.model)  # relu6 pairs too: the bias correction holds through any activation
    ctx.attach_weights(clip=opts["clip"])
    out["bias_corrected"] = correct_biases(ctx, pairs) if opts["bn_bias_correction"] else []
    ctx.attach_activations(clip=opts["act_clip"])
    return out


METHOD = PTQMethod("dfq", "DFQ (Nagel et al. 2019): cross-layer equalization, high-bias absorption, data-free bias "
                   "correction from BatchNorm statistics", _dfq, options=OPTIONS)

__all__ = ["METHOD", "OPTIONS", "correct_biases", "expected_activation", "relu_mean"]
