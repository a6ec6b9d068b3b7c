"""``learnq.ptq.quantize``: post-training quantization of a trained model with a calibration set (LAPQ seeds/001
§5: weights and activations, W/A bits, first/last layers; METHODS.md §2 and §6).

    result = quantize(model, calib, PTQ(method="mse", wbits=4, abits=4))   # or quantize(model, calib, method=...)
    result.model        # a quantized copy (BatchNorm folded); the caller's model is untouched
    learnq.save(result.model, "m.safetensors")   # records folded BatchNorm, activation quantizers, the config

Order of operations: deep-copy the model (unless ``inplace``), eval mode, fold BatchNorm into the preceding layer
(``fold_bn``), find the layers learnq cannot quantize (any module with its own parameters that is not a conv,
linear or attention layer: LSTM, normalisation layers left after folding, custom modules; embeddings unless the
selection takes them; conv and linear layers *inside* such a module are left alone too, since the module may read
their weights directly; ``nn.MultiheadAttention`` is quantized: ``in_proj_weight`` and ``out_proj``, issue 16),
then run the method (:mod:`learnq.ptq.context`: a :class:`PTQContext` for a function of the registry
:mod:`learnq.ptq.registry`). ``wbits``/``abits`` = 32 leave weights/activations in float (W4A32 is weights only).
A tied weight (one Parameter in several modules, e.g. an embedding shared with the output layer) is one quantized
tensor, its quantizer registered on every holder as in QAT (:func:`learnq.attach.select_weights`), or stays in
float in every holder with a reason in ``skipped``; it is never split.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from learnq.act.integer_graph import attach_integer_target
from learnq.attach import LAYER_TYPES, Selection, check_finite, select_weights
from learnq.batches import calibration_batches
from learnq.bn_fold import FOLDED_BN_ATTR, bn_statistics, find_conv_bn_pairs, fold_batchnorm
from learnq.errors import ConfigError, ModelError
from learnq.fields.ptq_config import PTQ_CONFIG_ATTR
from learnq.ptq.config import PTQ
from learnq.ptq.context import PTQContext
from learnq.ptq.equalize import equalize
from learnq.quantized import full_name, get_module, holders, quantized_parameters, split_name


@dataclass
class PTQResult:
    """What :func:`quantize` returns. ``layers``: one dict per quantized layer (name, weight bits and α's, input
    bits, signed and α's); ``skipped``: "name (Type): reason" for every layer left in float that has weights."""

    model: nn.Module
    method: str
    wbits: int
    abits: int
    calib_seconds: float
    loss_evals: int
    layers: list[dict]
    skipped: list[str]
    extra: dict[str, Any] = field(default_factory=dict)
    config: PTQ | None = None  # the config applied (recorded in the model file as "ptq_config")


def unquantizable(model: nn.Module) -> list[tuple[str, nn.Module, str, bool]]:
    """``(name, module, reason, subtree)`` of every module with its own parameters that learnq's PTQ leaves in
    float. ``subtree`` is True for torch's own modules (LSTM, MultiheadAttention...), which may read the weights of
    their conv/linear children directly: those children are left in float too."""
    kinds = tuple(t for name, types in LAYER_TYPES.items() if name != "embedding" for t in types)
    out: list[tuple[str, nn.Module, str, bool]] = []
    for name, module in model.named_modules():
        if any(sub and (n == "" or name.startswith(f"{n}.")) for n, _, _, sub in out):
            continue  # inside a module whose children are all left in float
        if isinstance(module, kinds) or not any(True for _ in module.parameters(recurse=False)):
            continue
        if "parametrizations" in name.split("."):  # a layer's weight parametrization (its original, a quantizer)
            continue
        builtin = type(module).__module__.startswith("torch.")
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            reason = "BatchNorm not folded (no conv/linear right before it): kept in float"
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
            reason = "normalisation layer: kept in float"
        elif isinstance(module, nn.Embedding):
            reason = ("embedding: not selected (Selection types without 'embedding', or tied to a layer left in "
                      "float); kept in float")
        elif builtin:
            reason = (f"{type(module).__name__} has weights but is not a conv or linear layer: learnq cannot "
                      "quantize it; kept in float with every layer inside it")
        else:
            own = [n for n, _ in module.named_parameters(recurse=False)]
            reason = f"its own parameter(s) {own} are not conv/linear weights: kept in float"
        subtree = builtin and any(True for _ in module.children())
        out.append((name, module, reason, subtree))
    return out


def _selection(model: nn.Module, selection: Selection | None, skip: bool,
               skipped: list[tuple[str, nn.Module, str, bool]]) -> Selection:
    sel = selection if selection is not None else Selection()
    if not isinstance(sel, Selection):
        raise ConfigError(f"selection must be a learnq.attach.Selection, got {type(sel).__name__}")
    sel = replace(sel, skip_first=sel.skip_first or skip, skip_last=sel.skip_last or skip)
    excludes = tuple(f"{name}.*" if name else "*" for name, _, _, subtree in skipped if subtree)
    return replace(sel, exclude=tuple(sel.exclude) + excludes)


def _own(module: nn.Module) -> list[str]:
    """Names of the module's own parameters, parametrized ones included."""
    plists = getattr(module, "parametrizations", None)
    return [k for k, v in module._parameters.items() if v is not None] + list(plists.keys() if plists else [])


def _layer_report(ctx: PTQContext) -> list[dict]:
    names = list(dict.fromkeys([n.rpartition(".")[0] for n in ctx.weights] + list(ctx.activations)))
    rows = []
    for layer in names:
        row: dict[str, Any] = {"name": layer}
        wq = ctx.weights.get(f"{layer}.weight" if layer else "weight")
        if wq is not None:
            alpha = getattr(wq, "alpha", None)
            spec = getattr(wq, "spec", ctx.wspec)
            row.update({"wbits": spec.bits if spec else None,
                        "w_alpha": alpha.reshape(-1).tolist() if isinstance(alpha, torch.Tensor) else None})
            tied = [full_name(m, a) for m, _, a in holders(ctx.model, f"{layer}.weight" if layer else "weight")[1:]]
            if tied:
                row["tied"] = tied  # the same quantized tensor in these modules too
        aq = ctx.activations.get(layer)
        if aq is not None:
            row.update({"abits": aq.bits, "signed": aq.signed, "a_alpha": aq.alpha.reshape(-1).tolist()})
        rows.append(row)
    return rows


def quantize(model: nn.Module, calibration_data: Any, config: PTQ | None = None, *, inplace: bool = False,
             device: str = "cpu", seed: int = 0, progress: bool = True, batch_size: int = 256,
             **kwargs: Any) -> PTQResult:
    """Post-training quantization of ``model`` with ``calibration_data`` (a tensor of inputs, a Dataset of
    (input, target) pairs or a DataLoader) as ``config`` (:class:`learnq.ptq.PTQ`) says.

    Keyword use is a thin convenience for the same config: ``quantize(model, calib, method="mse", wbits=4, abits=4,
    p=3.0)`` is ``quantize(model, calib, PTQ(method="mse", wbits=4, abits=4, options={"p": 3.0}))`` (every keyword
    that is not a field of PTQ is an option of the method). inplace: quantize ``model`` itself instead of a copy;
    device: where the calibration runs; seed: of every random choice; batch_size: of the calibration passes.
    The quantized model carries the config (``learnq.save`` records it). Raises DataError for empty calibration
    data, ModelError for a model without a quantizable layer or with NaN/Inf values in a weight it quantizes (naming
    it), ConfigError for an unknown method or option (QuantizationError for bits out of range).
    """
    start = time.perf_counter()
    if config is None:
        config = PTQ.from_kwargs(**kwargs)
    elif kwargs:
        raise ConfigError(f"give quantize a PTQ config or keyword arguments, not both (got {sorted(kwargs)})")
    elif not isinstance(config, PTQ):
        raise ConfigError(f"config must be a learnq.ptq.PTQ, got {type(config).__name__}")
    info = config.method_info
    try:
        torch_device = str(torch.device(device))
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device; use cpu, cuda or cuda:N") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    batches = list(calibration_batches(calibration_data, batch_size))
    inputs = torch.cat([x.detach().cpu() for x, _ in batches])
    targets = None
    if all(y is not None for _, y in batches):
        targets = torch.cat([torch.as_tensor(y).detach().cpu() for _, y in batches])
    work = model if inplace else copy.deepcopy(model)
    work.eval()
    bn_stats: dict = {}
    if config.fold_bn:
        pairs = [list(p) for p in find_conv_bn_pairs(work)]
        bn_stats = bn_statistics(work, [(a, b) for a, b in pairs])
        work = fold_batchnorm(work, inplace=True)
        if pairs:  # learnq.save records them, learnq.load folds a fresh model the same way
            setattr(work, FOLDED_BN_ATTR, list(getattr(work, FOLDED_BN_ATTR, None) or []) + pairs)
    work.to(torch_device)
    skipped = unquantizable(work)
    skip = config.skips_first_last()
    sel = _selection(work, config.selection, skip, skipped)
    chosen, tied_float = select_weights(work, sel, require=False)
    for name in chosen:  # after BatchNorm folding: a NaN running variance shows up in the folded weight
        module_name, _, attr = name.rpartition(".")
        check_finite(name, getattr(work.get_submodule(module_name), attr), "learnq.ptq.quantize")
    if not chosen:
        what = "after leaving out the first and last layers " if skip else ""
        left = [n or "<model>" for n, _, _, _ in skipped] or "none"
        raise ModelError(f"{type(model).__name__} has no conv or linear layer that learnq can quantize {what}"
                         f"(left in float: {left}); PTQ needs at least one")
    torch.manual_seed(seed)
    integer = config.target is not None  # the integer target quantizes the activations itself (below)
    ctx = PTQContext(model=work, inputs=inputs, targets=targets, wspec=config.weight_spec(),
                     abits=None if integer else config.act_bits(),
                     selection=sel, bias_correction=config.bias_correction,
                     variance_correction=config.variance_correction, act_per_channel=config.act_per_channel,
                     device=torch_device, seed=seed, progress=bool(progress) and sys.stderr.isatty(),
                     options=dict(config.options), method=info.name, batch_size=batch_size, config=config,
                     bn_stats={k: (m.to(torch_device), sd.to(torch_device)) for k, (m, sd) in bn_stats.items()})
    equalized = equalize(work, ctx.bn_stats) if config.equalize else None  # DFQ's CLE before any method
    extra = dict(info.fn(ctx) or {})
    if equalized is not None:
        extra["equalize"] = equalized
    if integer:
        clip, clip_options = ctx.act_clip
        plan = attach_integer_target(work, inputs, device=torch_device, batch_size=batch_size, clip=clip, seed=seed,
                                     **clip_options)
        extra["integer_target"] = {"target": config.target, "edges": len(plan.edges), "act_clip": clip,
                                   "ops": {k: s.kind for k, s in plan.steps.items()}}
    done = {name for name, _ in quantized_parameters(work)}  # e.g. selected embeddings, or tied to a quantized layer
    skipped = [entry for entry in skipped if not all(full_name(entry[0], p) in done for p in _own(entry[1]))]
    skipped += [(split_name(name)[0], get_module(work, split_name(name)[0]), why, False)
                for name, why in tied_float.items() if name not in done]
    layers = extra.pop("layers", None) or _layer_report(ctx)
    work.eval()
    setattr(work, PTQ_CONFIG_ATTR, config.to_dict())  # learnq.save records it (learnq.fields.ptq_config)
    return PTQResult(model=work, method=info.name, wbits=config.wbits, abits=config.abits,
                     calib_seconds=time.perf_counter() - start, loss_evals=int(ctx.loss_evals), layers=layers,
                     skipped=[f"{name or '<model>'} ({type(m).__name__}): {why}" for name, m, why, _ in skipped],
                     extra=extra, config=config)


__all__ = ["PTQResult", "quantize", "unquantizable"]
