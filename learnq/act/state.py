"""What a model file records of a model's activation quantizers: ONE metadata entry, ``"activations"``, for the whole
activation-quantizer family (:mod:`learnq.act`), read back by :func:`learnq.load` before the tensors are loaded.

The entry (version 2) is ``{"version": 2, "quantizers": {layer: record}, "modules": {name: record}}``: the PTQ
input quantizers (:mod:`learnq.act.input_quant`; record ``bits``, ``signed``, ``per_channel``, ``channel_axis``,
``enabled``, ``calibrated``, ``shape`` of α, whose values are the file's ``<layer>.input_quantizer.alpha`` tensors)
and the wrapped activations (:mod:`learnq.act.wrappers`; record ``activation`` (class name), ``method``, ``bits`` and
the quantizer's own values: PACT's ``clip``, the observer's ``momentum``, ``observed`` and ``range``). Files written
before it hold the input quantizers as version 1 of the same key (``{"version": 1, "quantizers": ...}``) and the
wrappers under ``"activation_wrappers"`` (``{"version": 1, "modules": ...}``); both are still read.

:func:`activation_state` / :func:`restore_activation_state` and :func:`wrapper_state` / :func:`restore_wrappers`
are the two halves (version 1 dicts of their own); the model-file field is :mod:`learnq.fields.activations`.
"""

from __future__ import annotations

import torch
from torch import nn

from learnq.act.input_quant import ATTR, ActQuantizer, _input_hook, input_quantizers
from learnq.act.wrappers import WRAPPER_METHODS, QuantizedActivation, device_of, wrapped_activations
from learnq.errors import ConfigError, ModelError, QuantizationError

ACTIVATIONS_KEY = "activations"  # the model file's metadata key
FILE_VERSION = 2  # of the entry under ACTIVATIONS_KEY
STATE_VERSION = 1  # of activation_state's dict (version 1 of the entry: input quantizers only)
WRAPPERS_VERSION = 1  # of wrapper_state's dict
LEGACY_WRAPPERS_KEY = "activation_wrappers"  # where files written before FILE_VERSION 2 keep the wrappers


def activation_state(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    """The JSON description of the model's input quantizers and their α tensors (keyed by state-dict name)."""
    meta: dict = {"version": STATE_VERSION, "quantizers": {}}
    tensors: dict[str, torch.Tensor] = {}
    for name, q in input_quantizers(model).items():
        meta["quantizers"][name] = {"bits": q.bits, "signed": q.signed, "per_channel": q.per_channel,
                                    "channel_axis": q.channel_axis, "enabled": q.enabled, "calibrated": q.calibrated,
                                    "shape": list(q.alpha.shape)}
        tensors[f"{name}.{ATTR}.alpha" if name else f"{ATTR}.alpha"] = q.alpha.detach().cpu().clone()
    return meta, tensors


def restore_activation_state(model: nn.Module, meta: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Re-attach the input quantizers ``meta`` (from :func:`activation_state`) describes to ``model`` (a freshly
    built copy of the network), with α from ``tensors`` when given (else zeros, to be filled by a state-dict load)."""
    if not isinstance(meta, dict) or meta.get("version") != STATE_VERSION or not isinstance(
            meta.get("quantizers"), dict):
        raise ConfigError(f"activation state must be a dict with version {STATE_VERSION} and 'quantizers' (from "
                          "learnq.act.activation_state)")
    tensors = tensors or {}
    for name, rec in meta["quantizers"].items():
        try:
            layer = model.get_submodule(name) if name else model
        except AttributeError:
            raise ModelError(f"the activation state names layer {name!r}, which the model does not have") from None
        try:
            q = ActQuantizer(int(rec["bits"]), signed=rec["signed"], per_channel=bool(rec["per_channel"]),
                             channel_axis=int(rec["channel_axis"]))
            shape = tuple(int(s) for s in rec["shape"])
            enabled, calibrated = bool(rec["enabled"]), bool(rec["calibrated"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the activation state of layer {name!r} is malformed ({exc!r})") from None
        key = f"{name}.{ATTR}.alpha" if name else f"{ATTR}.alpha"
        alpha = tensors.get(key)
        alpha = torch.zeros(shape) if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        if tuple(alpha.shape) != shape:
            raise ConfigError(f"{key} has shape {tuple(alpha.shape)}, its description says {shape}")
        q.alpha = alpha.clone()
        q.calibrated, q.enabled = calibrated, enabled
        existing = getattr(layer, ATTR, None)
        if isinstance(existing, ActQuantizer):
            layer._modules[ATTR] = q
        elif existing is not None:
            raise ModelError(f"layer {name!r} already has an attribute {ATTR!r}; cannot restore its quantizer")
        else:
            layer.add_module(ATTR, q)
            layer.register_forward_pre_hook(_input_hook)
        try:
            dev = next(layer.parameters()).device
        except StopIteration:
            dev = torch.device("cpu")
        q.to(dev)


def wrapper_state(model: nn.Module) -> dict:
    """The JSON description of the model's wrapped activations: ``{"version": 1, "modules": {name: record}}`` with
    record ``{"activation": class name, "method", "bits"}`` plus ``"clip"`` (PACT's α) or ``"momentum"``,
    ``"range"`` ([min, max]) and ``"observed"`` (the observer's state)."""
    modules: dict[str, dict] = {}
    for name, wrapper in wrapped_activations(model).items():
        q = wrapper.quantizer
        if WRAPPER_METHODS.get(q.method) is not type(q):
            raise QuantizationError(f"activation {name!r} has a quantizer of type {type(q).__name__}, which a model "
                                    f"file cannot describe; use one of {', '.join(WRAPPER_METHODS)}")
        modules[name] = {"activation": type(wrapper[0]).__name__, "bits": int(q.bits), "method": q.method,
                         **q.record(name)}
    return {"version": WRAPPERS_VERSION, "modules": modules}


def restore_wrappers(model: nn.Module, state: dict) -> list[str]:
    """Wrap the activations that ``state`` (from :func:`wrapper_state`) names in ``model`` (a freshly built copy of
    the network), in place, with quantizers holding the recorded α / range; return the names wrapped.

    A module already wrapped with the recorded method and bits keeps its wrapper (its quantizer's values are set).
    Raises ConfigError for a malformed state, ModelError when a named module is missing or of another type.
    """
    if not isinstance(state, dict) or state.get("version") != WRAPPERS_VERSION or not isinstance(
            state.get("modules"), dict):
        raise ConfigError(f"activation wrapper state must be a dict with version {WRAPPERS_VERSION} and 'modules' "
                          "(from learnq.act.wrapper_state)")
    device = device_of(model)
    made: dict[int, QuantizedActivation] = {}
    for name, rec in state["modules"].items():
        parent_name, _, child_name = name.rpartition(".")
        try:
            method, bits, kind = str(rec["method"]), int(rec["bits"]), str(rec["activation"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the activation state of {name!r} is malformed ({exc!r})") from None
        try:
            parent = model.get_submodule(parent_name)
            child = parent._modules[child_name]
        except (AttributeError, KeyError):
            raise ModelError(f"the activation state names module {name!r}, which the model does not have; load it "
                             "into the network it was made from") from None
        if method not in WRAPPER_METHODS:
            raise ConfigError(f"the activation state of {name!r} has unknown method {method!r}")
        if isinstance(child, QuantizedActivation):
            wrapper = child
        elif id(child) in made:
            wrapper = made[id(child)]
        else:
            if child is None or type(child).__name__ != kind:
                raise ModelError(f"module {name!r} is {type(child).__name__} in the model but {kind} in the "
                                 "activation state; load it into the network it was made from")
            quantizer = WRAPPER_METHODS[method].build(child, bits, device, init_clip=1.0,
                                                      momentum=float(rec.get("momentum", 0.1)))
            wrapper = QuantizedActivation(child, quantizer)
            made[id(child)] = wrapper
        q = wrapper.quantizer
        if type(wrapper[0]).__name__ != kind or type(q) is not WRAPPER_METHODS[method] or q.bits != bits:
            raise ModelError(f"module {name!r} is already wrapped with another activation or quantizer than the "
                             "activation state records; build the model again")
        try:
            q.load_record(rec)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the activation state of {name!r} is malformed ({exc!r})") from None
        parent._modules[child_name] = wrapper
    return list(state["modules"])


__all__ = ["ACTIVATIONS_KEY", "FILE_VERSION", "LEGACY_WRAPPERS_KEY", "STATE_VERSION", "WRAPPERS_VERSION",
           "activation_state", "restore_activation_state", "restore_wrappers", "wrapper_state"]
