"""Which layers of a model carry the weights that quantization-friendly losses and quantizers work on: the one place
that says which module types are quantizable layers (``LAYER_TYPES``) and what a depthwise convolution is.

Every method in learnq that acts "per layer" (DSMM, SymReg, KURE, L2, SatNL, later the quantizers) acts on the
weights of the model's ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` and ``nn.Linear`` modules (subclasses included,
e.g. the ``out_proj`` of ``nn.MultiheadAttention``; transposed convolutions are not subclasses of these and are left
out). This module finds them once, in definition order, so every method agrees on the same list.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from learnq.errors import ModelError

LAYER_TYPES: dict[str, tuple[type[nn.Module], ...]] = {
    "linear": (nn.Linear,),
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "embedding": (nn.Embedding,),
}
"""The layer kinds a :class:`learnq.attach.Selection` names (``types``), each a tuple of module classes."""

#: The module types whose ``weight`` learnq regularizes and quantizes by default (conv and linear).
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = LAYER_TYPES["conv"] + LAYER_TYPES["linear"]


def is_depthwise(module: nn.Module) -> bool:
    """True for a depthwise convolution: one group per input channel (``groups == in_channels > 1``).

    A convolution with a single input channel (``in_channels == groups == 1``) is an ordinary convolution here.
    Linear layers and every other module are not depthwise.
    """
    if not isinstance(module, LAYER_TYPES["conv"]):
        return False
    return module.groups > 1 and module.groups == module.in_channels


def raw_weight(module: nn.Module) -> torch.Tensor:
    """The stored weight of ``module``: ``module.weight`` (normally a Parameter) or, when the weight is parametrized
    (SatNL, quantizers), the ``original`` tensor that the parametrizations read. ``module.weight`` itself is what the
    layer computes with (the parametrized value)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations["weight"].original  # type: ignore[index,return-value]
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise ModelError(f"{type(module).__name__} has no 'weight' tensor; learnq can only use modules that do")
    return weight


def weight_layers(model: nn.Module, include_depthwise: bool = True) -> list[tuple[str, nn.Module]]:
    """The model's conv (1d/2d/3d) and linear modules, named, in definition order.

    A module reached under two names, or two modules sharing one weight Parameter (tied weights), appear once, under
    the first name. ``include_depthwise=False`` leaves out depthwise convolutions (see ``is_depthwise``). The list
    may be empty; callers that need at least one layer raise ``ModelError`` (see ``require_weight_layers``).
    """
    if not isinstance(model, nn.Module):
        raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, WEIGHT_LAYER_TYPES):
            continue
        if not include_depthwise and is_depthwise(module):
            continue
        weight = raw_weight(module)
        if isinstance(weight, nn.parameter.UninitializedParameter):
            raise ModelError(
                f"layer '{name}' is a lazy module whose weight is not initialised yet; run one forward pass "
                "through the model before attaching regularizers or quantizers"
            )
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        layers.append((name, module))
    return layers


def require_weight_layers(
    model: nn.Module, include_depthwise: bool = True, what: str = "this method"
) -> list[tuple[str, nn.Module]]:
    """``weight_layers`` that raises ``ModelError`` when the model has none (``what`` names the caller)."""
    layers = weight_layers(model, include_depthwise=include_depthwise)
    if not layers:
        kinds = "Conv1d/Conv2d/Conv3d/Linear" + ("" if include_depthwise else " (non-depthwise)")
        raise ModelError(f"{what} needs a model with at least one {kinds} layer, but {type(model).__name__} has none")
    return layers


def weight_count(model: nn.Module, include_depthwise: bool = True) -> int:
    """Number of weight values (not biases) in the model's conv and linear layers."""
    return sum(int(raw_weight(m).numel()) for _, m in weight_layers(model, include_depthwise))


def layer_device(module: nn.Module) -> torch.device:
    """The device the layer's stored weight lives on."""
    return raw_weight(module).device


__all__ = [
    "LAYER_TYPES",
    "WEIGHT_LAYER_TYPES",
    "is_depthwise",
    "raw_weight",
    "weight_layers",
    "require_weight_layers",
    "weight_count",
    "layer_device",
]
