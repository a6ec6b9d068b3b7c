"""SQuant: data-free rounding by the diagonal-Hessian decomposition (Guo et al. 2022, "SQuant: On-the-Fly Data-Free
Quantization via Diagonal Hessian Approximation", ICLR, arXiv:2202.07471, §3.2-3.4 and Algorithm 1; document 000
Table 1 "SQ"; METHODS.md §7). Not one of seeds/: written from the paper's text.

The second-order loss of a weight perturbation ``ΔW`` is approximated by a Hessian made of three diagonal blocks:
element-wise, kernel-wise and output-channel-wise. With ``e`` the rounding perturbation of each weight in units of
its step (``e = q - w/Δ``), the objective decomposes into

    E = Σ e²            (element terms)        K = Σ_kernels (Σ_kernel e)²        C = Σ_channels (Σ_channel e)²

and SQuant minimises it progressively ("CASE", §3.4): start from nearest rounding (``|e| <= 1/2``, minimal E), then

* **SQuant-K**: in each kernel (the ``kh·kw`` weights of one (output, input) channel pair) whose summed perturbation
  ``s`` exceeds ½ in magnitude, flip the rounding of the ``round(s)`` elements with the largest perturbation in the
  direction of ``s`` (the cheapest flips in E: a flip costs ``1 - 2|e|``), so that ``|Σ_kernel e| <= 1/2``;
* **SQuant-C**: in each output channel whose summed perturbation ``S`` exceeds ½, flip one more element in each of
  the ``round(S)`` kernels whose own sum lies furthest in the direction of ``S`` (its next-cheapest element), so that
  ``|Σ_channel e| <= 1/2`` while every kernel stays within ``±1``.

Elements on the edge of the grid are never flipped outwards. Dense layers have one-element kernels (the K step
does nothing) and the C step works on their rows. No data are used: only the weights' grid (range by option
``clip``, min-max per group by default; the paper quantizes per channel). The result is a frozen
:class:`learnq.quantized.QuantizedWeight` per layer (method ``"squant"``); the config's ``bias_correction`` then
corrects each output channel's mean and spread as for the other methods (folded into the channel's step and offset),
and inputs are quantized as every method does (calibrated, option ``act_clip``).
"""

from __future__ import annotations

from typing import Any

import torch

from learnq.clipping import choose_clip
from learnq.errors import ConfigError
from learnq.grid import GridSpec, QuantizedTensor, compute_params
from learnq.ptq.bias_correction import correct_quantized
from learnq.ptq.context import PTQContext, PTQMethod
from learnq.ptq.reconstruction import LayerByLayer, Observers, run_reconstruction


def _flip(q: torch.Tensor, e: torch.Tensor, need: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Rows of ``q``/``e`` (R, L), ``need`` (R,) signed flip counts: flip the |need| cheapest elements of each row
    (down where need > 0, up where need < 0), in place; returns the mask of flipped elements."""
    sign = need.sign().unsqueeze(1)
    prio = e * sign  # > 0: rounded in the direction to undo; larger = cheaper to flip
    can = (prio > 0) & torch.where(sign > 0, q > lo, q < hi)
    prio = torch.where(can, prio, torch.full_like(prio, -float("inf")))
    order = prio.argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=q.device).expand_as(order))
    mask = (rank < need.abs().unsqueeze(1)) & can
    step = mask.to(q.dtype) * sign
    q.sub_(step)
    e.sub_(step)
    return mask


def squant_round(x: torch.Tensor, qmin: int, qmax: int, *, kernel: bool = True,
                 channel: bool = True) -> tuple[torch.Tensor, dict[str, int]]:
    """SQuant's codes for ``x = (w - offset)/Δ`` (output channel first; shape (O, I, *k) or (O, I)); returns the
    codes (float, integer values in [qmin, qmax]) and how many elements each stage flipped."""
    if x.dim() < 2:
        raise ConfigError(f"SQuant rounds weights with output and input channels (ndim >= 2), got shape "
                          f"{tuple(x.shape)}")
    o, i = x.shape[0], x.shape[1]
    x3 = x.detach().double().reshape(o, i, -1)
    q = torch.clamp(torch.round(x3), qmin, qmax)
    e = q - x3
    lo = torch.full_like(q, qmin)
    hi = torch.full_like(q, qmax)
    inside = (x3 >= qmin - 0.5) & (x3 <= qmax + 0.5)  # clipped elements keep their code (SQuant's t_min/t_max)
    lo, hi = torch.where(inside, lo, q), torch.where(inside, hi, q)
    flips = {"kernel": 0, "channel": 0}
    k = x3.shape[2]
    if kernel and k > 1:
        rows = (o * i, k)
        qk, ek = q.reshape(rows), e.reshape(rows)
        flips["kernel"] = int(_flip(qk, ek, torch.round(ek.sum(dim=1)), lo.reshape(rows), hi.reshape(rows)).sum())
    if channel:
        ksum = e.sum(dim=2)  # (O, I)
        need = torch.round(ksum.sum(dim=1))  # (O,)
        sign = need.sign().unsqueeze(1)
        # each kernel's cheapest element in the channel's direction, and whether it may move
        prio = e * sign.unsqueeze(2)
        can = (prio > 0) & torch.where(sign.unsqueeze(2) > 0, q > lo, q < hi)
        best_prio, best = torch.where(can, prio, torch.full_like(prio, -float("inf"))).max(dim=2)
        kernel_prio = torch.where(torch.isfinite(best_prio), ksum * sign, torch.full_like(ksum, -float("inf")))
        order = kernel_prio.argsort(dim=1, descending=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(i, device=x.device).expand_as(order))
        chosen = (rank < need.abs().unsqueeze(1)) & torch.isfinite(kernel_prio)  # (O, I)
        step = torch.zeros_like(q)
        step.scatter_(2, best.unsqueeze(2), (chosen.to(q.dtype) * sign).unsqueeze(2))
        q.sub_(step)
        e.sub_(step)
        flips["channel"] = int(chosen.sum())
    return q.reshape(x.shape).to(x.dtype), flips


def objective_terms(e: torch.Tensor) -> dict[str, float]:
    """The decomposition's three terms for perturbations ``e`` (O, I, *k): E, K and C of the module docstring."""
    e3 = e.double().reshape(e.shape[0], e.shape[1], -1)
    return {"E": float((e3 ** 2).sum()), "K": float((e3.sum(dim=2) ** 2).sum()),
            "C": float((e3.sum(dim=(1, 2)) ** 2).sum())}


def squant_weight(w: torch.Tensor, spec: GridSpec, *, clip: torch.Tensor | float | None = None, kernel: bool = True,
                  channel: bool = True, bias_correction: bool = False, variance_correction: bool = False,
                  name: str = "weight") -> tuple[QuantizedTensor, dict[str, Any]]:
    """One weight rounded by SQuant on ``spec``'s grid (range ``clip`` per group; min-max when None), bias / variance
    corrected when asked (:func:`learnq.ptq.bias_correction.correct_quantized`)."""
    g = spec.granularity
    wf = w.detach().float()
    params = compute_params(wf, spec, clip=clip, name=name)
    scale, offset = g.expand(params.scale, w.shape), g.expand(params.offset, w.shape)
    qmin, qmax = spec.qrange()
    x = (wf - offset) / torch.where(scale > 0, scale, torch.ones_like(scale))
    nearest = torch.clamp(torch.round(x), qmin, qmax)
    codes, flips = squant_round(x, qmin, qmax, kernel=kernel, channel=channel)
    info = {"name": name, **flips, "numel": w.numel(),
            "nearest": objective_terms(nearest - x), "squant": objective_terms(codes - x)}
    qt = QuantizedTensor(codes=codes.to(torch.int32), scale=params.scale.contiguous(),
                         offset=params.offset.contiguous(), granularity=g, bits=spec.bits, qmin=qmin,
                         scheme=spec.scheme, method="squant", dtype=w.dtype)
    if bias_correction or variance_correction:
        qt = correct_quantized(qt, w, variance=variance_correction)
    return qt, info


OPTIONS: dict[str, Any] = {"clip": "minmax", "act_clip": "mse", "kernel": True, "channel": True}


def _weights(ctx: PTQContext, _observers: Observers | None) -> dict[str, dict[str, Any]]:
    """Every selected weight rounded by SQuant in turn (no data: no float copy, no captured inputs)."""
    opts = ctx.options
    run = LayerByLayer(ctx.model, ctx.inputs, "SQuant", selection=ctx.selection, float_reference=False,
                       bias_correction=ctx.bias_correction, variance_correction=ctx.variance_correction,
                       device=ctx.device, progress=ctx.progress)
    for layer in run:
        clip = None if opts["clip"] == "minmax" else choose_clip(layer.weight, ctx.wspec, opts["clip"])
        run.attach(layer, *squant_weight(layer.weight, ctx.wspec, clip=clip, kernel=opts["kernel"],
                                         channel=opts["channel"], name=layer.name))
    return run.infos


METHOD = PTQMethod("squant", "SQuant (Guo et al. 2022): data-free rounding, element/kernel/channel flips of the "
                   "diagonal-Hessian decomposition", lambda ctx: run_reconstruction(ctx, "squant", _weights),
                   options=OPTIONS)

__all__ = ["METHOD", "OPTIONS", "objective_terms", "squant_round", "squant_weight"]
