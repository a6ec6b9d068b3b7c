"""The model-file field of the activation quantizers: one entry, ``"activations"`` (its format, and the older keys
still read, are described in :mod:`learnq.act.state`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from learnq.act.input_quant import input_quantizers
from learnq.act.state import (
    ACTIVATIONS_KEY,
    FILE_VERSION,
    LEGACY_WRAPPERS_KEY,
    STATE_VERSION,
    WRAPPERS_VERSION,
    activation_state,
    restore_activation_state,
    restore_wrappers,
    wrapper_state,
)
from learnq.act.wrappers import wrapped_activations
from learnq.errors import ConfigError


class ActivationsField:
    """The model-file field of the activation quantizers (:class:`learnq.file_fields.FileField`)."""

    key = ACTIVATIONS_KEY
    version = FILE_VERSION
    what = "activation quantizers"

    def state(self, model: nn.Module) -> dict | None:
        inputs = activation_state(model)[0]["quantizers"] if input_quantizers(model) else {}
        modules = wrapper_state(model)["modules"] if wrapped_activations(model) else {}
        if not inputs and not modules:
            return None
        return {"version": FILE_VERSION, "quantizers": inputs, "modules": modules}

    def restore(self, model: nn.Module, value: Any, tensors: Mapping[str, torch.Tensor]) -> None:
        if isinstance(value, dict) and value.get("version") == STATE_VERSION:  # written before version 2
            restore_activation_state(model, value, dict(tensors))
            return
        if not isinstance(value, dict) or value.get("version") != FILE_VERSION or not isinstance(
                value.get("quantizers"), dict) or not isinstance(value.get("modules"), dict):
            raise ConfigError(f"the '{ACTIVATIONS_KEY}' entry must be a dict with version {FILE_VERSION}, "
                              "'quantizers' and 'modules'")
        if value["quantizers"]:
            restore_activation_state(model, {"version": STATE_VERSION, "quantizers": value["quantizers"]},
                                     dict(tensors))
        if value["modules"]:
            restore_wrappers(model, {"version": WRAPPERS_VERSION, "modules": value["modules"]})

    def legacy(self) -> dict[str, Any]:
        """Older keys this field reads: the wrappers of files written before version 2."""
        return {LEGACY_WRAPPERS_KEY: lambda model, value, tensors: restore_wrappers(model, value)}


FIELD = ActivationsField()


FIELD = ActivationsField()

__all__ = ["FIELD", "ActivationsField"]
