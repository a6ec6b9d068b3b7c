"""``learnq.ptq.quantize``: post-training quantization of a trained model with a calibration set (LAPQ seeds/001
§5: weights and activations, W/A bits, first/last layers; METHODS.md §2 and §6).

    result = quantize(model, calib, method="mse", wbits=4, abits=4)
    result.model        # a quantized copy (BatchNorm folded); the caller's model is untouched
    learnq.save(result.model, "m.safetensors", metadata={"activations": activation_state(result.model)[0]})

Order of operations: deep-copy the model (unless ``inplace``), eval mode, fold BatchNorm into the preceding layer
(``fold_bn``), find the layers learnq cannot quantize (any module with its own parameters that is not a conv or
linear layer: LSTM, MultiheadAttention, embeddings, normalisation layers left after folding, custom modules; conv
and linear layers *inside* such a module are left alone too, since the module may read their weights directly),
then run the method. ``wbits``/``abits`` = 32 leave weights/activations in float (W4A32 is weights only).
A tied weight (one Parameter in several modules, e.g. an embedding shared with the output layer) is one quantized
tensor, its quantizer registered on every holder as in QAT (:func:`learnq.attach.select_weights`), or stays in
float in every holder with a reason in ``skipped``; it is never split.

A method is a function ``fn(ctx: PTQContext) -> dict | None`` registered with :func:`register_ptq_method`; it
quantizes ``ctx.model`` in place, typically with ``ctx.attach_weights(clip=...)`` (a
:class:`learnq.ptq.ptq_weight.PTQWeight` per selected weight, or its own parametrization exporting a
QuantizedTensor) and ``ctx.attach_activations(clip=...)`` (an :class:`learnq.act.ActQuantizer` at the input of
each selected layer, calibrated). It counts loss evaluations in ``ctx.loss_evals``; what it returns is merged into
``PTQResult.extra`` (a ``"layers"`` list there replaces the per-layer report). Registered here: the clipping rules
``minmax``, ``mse``, ``lp``, ``aciq``, ``kl`` (same rule for weights and activations); AdaRound and LAPQ register
themselves from their modules (imported on first use of the registry).
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from learnq.act import ActQuantizer, attach_input_quantizers, calibrate
from learnq.attach import LAYER_TYPES, Selection, check_finite, select_weights
from learnq.batches import calibration_batches
from learnq.bn_fold import FOLDED_BN_ATTR, find_conv_bn_pairs, fold_batchnorm
from learnq.errors import ConfigError, ModelError
from learnq.granularity import Granularity
from learnq.grid import FLOAT_BITS, GridSpec, check_bits
from learnq.ptq.ptq_weight import PTQWeight, attach_weight_quantizers
from learnq.quantized import full_name, get_module, holders, quantized_parameters, split_name

PTQFn = Callable[["PTQContext"], "dict[str, Any] | None"]
_PLUGINS = ("learnq.ptq.adaround", "learnq.ptq.lapq")


@dataclass(frozen=True)
class PTQMethod:
    """A registered PTQ method: one-line description, function, option defaults (the type of each default is the
    type a caller must give; None: any), and whether it leaves the first and last layers in float by default."""

    name: str
    description: str
    fn: PTQFn
    options: Mapping[str, Any] = field(default_factory=dict)
    skip_first_last: bool = False


PTQ_METHODS: dict[str, PTQMethod] = {}


def register_ptq_method(name: str, description: str, fn: PTQFn, *, options: Mapping[str, Any] | None = None,
                        skip_first_last: bool = False, replace: bool = False) -> PTQMethod:
    """Add a method to :data:`PTQ_METHODS` (``ConfigError`` if the name is taken and ``replace`` is False)."""
    if name in PTQ_METHODS and not replace:
        raise ConfigError(f"a PTQ method named {name!r} is already registered; pass replace=True to override it")
    method = PTQMethod(name, description, fn, dict(options or {}), skip_first_last)
    PTQ_METHODS[name] = method
    return method


def load_plugins() -> dict[str, PTQMethod]:
    """Import the modules that register further methods (AdaRound, LAPQ) when they exist; returns the registry."""
    for module in _PLUGINS:
        if module not in sys.modules and importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    return PTQ_METHODS


def get_ptq_method(name: str) -> PTQMethod:
    """The registered method ``name``; ConfigError listing the known ones otherwise."""
    load_plugins()
    if not isinstance(name, str) or name not in PTQ_METHODS:
        raise ConfigError(f"unknown PTQ method {name!r}; registered methods: {', '.join(PTQ_METHODS)}")
    return PTQ_METHODS[name]


def check_method_options(method: PTQMethod, options: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of ``method`` overridden by ``options``; unknown names or wrong types raise ConfigError."""
    for key, value in options.items():
        if key not in method.options:
            known = ", ".join(method.options) if method.options else "none"
            raise ConfigError(f"PTQ method {method.name!r} has no option {key!r}; its options are: {known}")
        default = method.options[key]
        if default is None:
            continue
        expected: tuple[type, ...] = (float, int) if isinstance(default, float) else (type(default),)
        if (isinstance(value, bool) and not isinstance(default, bool)) or not isinstance(value, expected):
            raise ConfigError(f"option {key!r} of PTQ method {method.name!r} must be a {type(default).__name__}, "
                              f"got {value!r}")
    return {**method.options, **options}


@dataclass
class PTQContext:
    """Everything a method needs; it quantizes ``model`` in place.

    inputs / targets: the calibration set (CPU tensors, targets None when the data had none). wspec: the weight
    grid (None when weights stay in float); abits: activation bits (None: float). selection: the layers to quantize
    (weights and activation inputs alike), with the unquantizable subtrees excluded.
    """

    model: nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor | None
    wspec: GridSpec | None
    abits: int | None
    selection: Selection
    bias_correction: bool
    variance_correction: bool
    act_per_channel: bool
    device: str
    seed: int
    progress: bool
    options: dict[str, Any]
    method: str = "minmax"
    batch_size: int = 256
    loss_evals: int = 0
    weights: dict[str, nn.Module] = field(default_factory=dict)
    activations: dict[str, ActQuantizer] = field(default_factory=dict)

    def attach_weights(self, clip: Any = "minmax", **clip_options: Any) -> dict[str, PTQWeight]:
        """PTQWeight on every selected weight, α by clipping rule ``clip`` (nothing when weights stay in float)."""
        if self.wspec is None:
            return {}
        qs = attach_weight_quantizers(self.model, self.wspec, selection=self.selection, clip=clip,
                                      bias_correction=self.bias_correction,
                                      variance_correction=self.variance_correction,
                                      method=self.method, **clip_options)
        self.weights.update(qs)
        return qs

    def attach_activations(self, clip: str = "minmax", *, finish: bool = True,
                           **clip_options: Any) -> dict[str, ActQuantizer]:
        """ActQuantizer at the input of every selected layer, observed over the calibration set (the model as it
        is now, e.g. with quantized weights); with ``finish`` α is chosen by ``clip`` and quantization enabled."""
        if self.abits is None:
            return {}
        qs = attach_input_quantizers(self.model, self.abits, selection=self.selection,
                                     per_channel=self.act_per_channel, seed=self.seed)
        calibrate(self.model, self.inputs, device=self.device, batch_size=self.batch_size)
        if finish:
            for q in qs.values():
                q.finish_calibration(clip, **clip_options)
        self.activations.update(qs)
        return qs


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


def _bits(value: Any, name: str) -> int | None:
    if value == FLOAT_BITS and not isinstance(value, bool):
        return None
    return check_bits(value, f"{name} (or {FLOAT_BITS} to leave them in float)")


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
        builtin = type(module).__module__.startswith("torch.")
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            reason = "BatchNorm not folded (no conv/linear right before it): kept in float"
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm)):
            reason = "normalisation layer: kept in float"
        elif isinstance(module, nn.Embedding):
            reason = "embedding: learnq's PTQ quantizes conv and linear layers only; kept in float"
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


def quantize(model: nn.Module, calibration_data: Any, *, method: str = "minmax", wbits: int = 8, abits: int = 8,
             granularity: str | Granularity = "channel", scheme: str = "symmetric", selection: Selection | None = None,
             skip_first_last: bool | None = None, bias_correction: bool = False, variance_correction: bool = False,
             act_per_channel: bool = False, fold_bn: bool = True, inplace: bool = False, device: str = "cpu",
             seed: int = 0, progress: bool = True, batch_size: int = 256, **options: Any) -> PTQResult:
    """Post-training quantization of ``model`` with ``calibration_data`` (a tensor of inputs, a Dataset of
    (input, target) pairs or a DataLoader) by ``method`` (``PTQ_METHODS``) at W``wbits``A``abits``.

    granularity / scheme: the weight grid, one step per output channel by default (``"tensor"``: one per tensor,
    as some papers' protocols; activations are per tensor unless ``act_per_channel``; unsigned after non-negative
    inputs, symmetric otherwise). skip_first_last: leave the first and last layers in float (None: the
    method's default; LAPQ's is True). options: the method's own (``PTQ_METHODS[method].options``).
    Raises DataError for empty calibration data, ModelError for a model without a quantizable layer or with NaN/Inf
    values in a weight it quantizes (naming it), ConfigError for an unknown method or option.
    """
    start = time.perf_counter()
    info = get_ptq_method(method)
    opts = check_method_options(info, options)
    wb, ab = _bits(wbits, "wbits"), _bits(abits, "abits")
    if wb is None and ab is None:
        raise ConfigError("wbits and abits are both 32: nothing to quantize; give wbits or abits below 32")
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
    if fold_bn:
        pairs = [list(p) for p in find_conv_bn_pairs(work)]
        work = fold_batchnorm(work, inplace=True)
        if pairs:  # learnq.save records them, learnq.load folds a fresh model the same way
            setattr(work, FOLDED_BN_ATTR, list(getattr(work, FOLDED_BN_ATTR, None) or []) + pairs)
    work.to(torch_device)
    skipped = unquantizable(work)
    skip = info.skip_first_last if skip_first_last is None else bool(skip_first_last)
    sel = _selection(work, selection, skip, skipped)
    chosen, tied_float = select_weights(work, sel, require=False)
    for name in chosen:  # after BatchNorm folding: a NaN running variance shows up in the folded weight
        module_name, _, attr = name.rpartition(".")
        check_finite(name, getattr(work.get_submodule(module_name), attr), "learnq.ptq.quantize")
    if not chosen:
        what = "after leaving out the first and last layers " if skip else ""
        left = [n or "<model>" for n, _, _, _ in skipped] or "none"
        raise ModelError(f"{type(model).__name__} has no conv or linear layer that learnq can quantize {what}"
                         f"(left in float: {left}); PTQ needs at least one")
    wspec = None
    if wb is not None:
        wspec = GridSpec(bits=wb, scheme=scheme, granularity=Granularity.parse(granularity))
    torch.manual_seed(seed)
    ctx = PTQContext(model=work, inputs=inputs, targets=targets, wspec=wspec, abits=ab, selection=sel,
                     bias_correction=bias_correction, variance_correction=variance_correction,
                     act_per_channel=act_per_channel, device=torch_device, seed=seed,
                     progress=bool(progress) and sys.stderr.isatty(), options=opts, method=info.name,
                     batch_size=batch_size)
    extra = dict(info.fn(ctx) or {})
    done = {name for name, _ in quantized_parameters(work)}  # e.g. selected embeddings, or tied to a quantized layer
    skipped = [entry for entry in skipped if not all(full_name(entry[0], p) in done for p in _own(entry[1]))]
    skipped += [(split_name(name)[0], get_module(work, split_name(name)[0]), why, False)
                for name, why in tied_float.items() if name not in done]
    layers = extra.pop("layers", None) or _layer_report(ctx)
    work.eval()
    return PTQResult(model=work, method=info.name, wbits=wb or FLOAT_BITS, abits=ab or FLOAT_BITS,
                     calib_seconds=time.perf_counter() - start, loss_evals=int(ctx.loss_evals), layers=layers,
                     skipped=[f"{name or '<model>'} ({type(m).__name__}): {why}" for name, m, why, _ in skipped],
                     extra=extra)


# -- the clipping methods ------------------------------------------------------------------------------------------
def _clipping_method(rule: str) -> PTQFn:
    def run(ctx: PTQContext) -> dict[str, Any]:
        clip_opts = dict(ctx.options)
        ctx.attach_weights(clip=rule, **clip_opts)
        ctx.attach_activations(clip=rule, **clip_opts)
        return {}

    run.__name__ = f"ptq_{rule}"
    return run


register_ptq_method("minmax", "min-max range per tensor/channel (weights) and over the calibration set (inputs)",
                    _clipping_method("minmax"))
register_ptq_method("mse", "minimum mean-squared-error clipping (MMSE), Lp with p = 2", _clipping_method("mse"))
register_ptq_method("lp", "Lp-optimal clipping argmin mean|Q(x)-x|^p (LAPQ step 1), option p", _clipping_method("lp"),
                    options={"p": 2.0})
register_ptq_method("aciq", "ACIQ analytical clipping k*sigma / k*b (Banner et al.), option distribution",
                    _clipping_method("aciq"), options={"distribution": "laplace"})
register_ptq_method("kl", "KL-divergence (TensorRT) histogram threshold, option bins", _clipping_method("kl"),
                    options={"bins": 2048})


def available_methods() -> list[str]:
    """Names of every registered PTQ method (after importing the plugin modules)."""
    return list(load_plugins())


__all__ = ["PTQContext", "PTQMethod", "PTQResult", "PTQ_METHODS", "available_methods", "check_method_options",
           "get_ptq_method", "load_plugins", "quantize", "register_ptq_method", "unquantizable"]
