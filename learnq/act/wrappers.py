"""Activation quantizers after activation modules: ``QuantizedActivation(act, quantizer)`` replaces every ``nn.ReLU``
/ ``nn.ReLU6`` module (or the types given) of a model, for quantization-aware training (PACT, Choi et al. 2018;
the min-max observer; METHODS.md section 6).

Activations applied as functions (``F.relu`` in ``forward``) cannot be found this way; a module instance used at
several places gets one shared quantizer. ``WRAPPER_METHODS`` is the registry of the quantizers a wrapper can hold
(name -> class with ``build``, ``record`` and ``load_record``; a new one is its file in ``learnq/act/`` plus one
entry); the model file records the wrappers through :mod:`learnq.act.state`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from learnq.act.base import ActivationQuantizer
from learnq.act.observer import ObserverFakeQuant
from learnq.act.pact import PACT
from learnq.checks import check_int
from learnq.errors import ConfigError, ModelError

WRAPPER_METHODS: dict[str, type[PACT] | type[ObserverFakeQuant]] = {"pact": PACT, "observer": ObserverFakeQuant}
ACTIVATION_METHODS = tuple(WRAPPER_METHODS)


class QuantizedActivation(nn.Sequential):
    """An activation module followed by its quantizer (what :func:`insert_activation_quantizers` inserts)."""

    def __init__(self, activation: nn.Module, quantizer: ActivationQuantizer) -> None:
        super().__init__(activation, quantizer)

    @property
    def quantizer(self) -> ActivationQuantizer:
        return self[1]


def insert_activation_quantizers(model: nn.Module, bits: int = 8, method: str = "pact",
                                 after: Sequence[type[nn.Module]] | type[nn.Module] = (nn.ReLU, nn.ReLU6), *,
                                 init_clip: float | None = None, momentum: float = 0.1) -> list[str]:
    """Wrap every activation module of the types in ``after`` as ``QuantizedActivation(act, quantizer)``, in
    place; return the wrapped modules' names.

    method: ``"pact"`` (learned clip; ``init_clip`` default 6 after ReLU6, else 10) or ``"observer"`` (running
    min-max, ``momentum``). Quantizers are created on the device of the model's first parameter or buffer.
    Raises ModelError when the model has no such module (functional activations cannot be wrapped).
    """
    check_int("insert_activation_quantizers", "bits", bits, 1, 16)
    if method not in WRAPPER_METHODS:
        raise ConfigError(f"activation quantizer method {method!r} is unknown; use "
                          f"{' or '.join(repr(m) for m in WRAPPER_METHODS)}")
    kinds = (after,) if isinstance(after, type) else tuple(after)
    if not kinds or not all(isinstance(k, type) and issubclass(k, nn.Module) for k in kinds):
        raise ConfigError(f"after must be nn.Module classes such as (nn.ReLU, nn.ReLU6), got {after!r}")
    device = device_of(model)
    wrapped: dict[int, QuantizedActivation] = {}
    names: list[str] = []
    already = 0
    for parent_name, parent in list(model.named_modules(remove_duplicate=False)):
        if isinstance(parent, QuantizedActivation):
            already += 1
            continue
        if ".parametrizations" in f".{parent_name}":
            continue
        for child_name, child in list(parent._modules.items()):
            if child is None or not isinstance(child, kinds) or isinstance(child, QuantizedActivation):
                continue
            if id(child) not in wrapped:
                quantizer = WRAPPER_METHODS[method].build(child, bits, device, init_clip=init_clip, momentum=momentum)
                wrapped[id(child)] = QuantizedActivation(child, quantizer)
            parent._modules[child_name] = wrapped[id(child)]
            names.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not names and already:
        raise ConfigError(f"{type(model).__name__}'s activations already have quantizers ({already}); build the model "
                          "again to change them")
    if not names:
        kinds_text = ", ".join(k.__name__ for k in kinds)
        raise ModelError(f"{type(model).__name__} has no {kinds_text} module to quantize after; activations applied "
                         "as functions (F.relu) cannot be wrapped: use nn.ReLU modules, or pass after=(...)")
    return names


def device_of(model: nn.Module) -> torch.device:
    tensors = [*model.parameters(), *model.buffers()]
    return tensors[0].device if tensors else torch.device("cpu")


def wrapped_activations(model: nn.Module) -> dict[str, QuantizedActivation]:
    """``{name: QuantizedActivation}`` of every wrapped activation of ``model`` (every name of a shared one), in
    model order."""
    return {name: m for name, m in model.named_modules(remove_duplicate=False)
            if isinstance(m, QuantizedActivation) and ".parametrizations" not in f".{name}"}


__all__ = ["ACTIVATION_METHODS", "QuantizedActivation", "WRAPPER_METHODS", "device_of", "insert_activation_quantizers",
           "wrapped_activations"]
