"""The model zoo: a registry of classifier builders, and JSON model specs that rebuild a model exactly.

Every model is a plain ``nn.Module`` of standard layers (``nn.Linear``, ``nn.Conv2d`` incl. depthwise,
``nn.BatchNorm2d``, ``nn.ReLU``/``nn.ReLU6`` modules, pooling, ``nn.Flatten``), so quantizers can be attached to
its parameters with ``torch.nn.utils.parametrize`` and to its activations after each ReLU module. Builders take the
input shape ``(C, H, W)`` (any shape for the dense models) and the class count, plus keyword arguments checked up
front.

    >>> model = build_model("resnet20", (3, 32, 32), 10, width_mult=0.5)
    >>> spec = model_spec("resnet20", (3, 32, 32), 10, width_mult=0.5)   # JSON-serialisable, defaults filled in
    >>> same = model_from_spec(spec)                                      # same layers, same state_dict keys

The networks and the papers they come from are described in ``dense.py``, ``convnets.py``, ``resnet.py`` and
``mobilenet.py``; the thesis networks (seeds/004, Sec. 4.1) are ``thesis-mnist``, ``thesis-cifar`` and
``thesis-imagenette``. The text models (``transformer.py``, ``attention.py``) take token ids ``(N, T)`` with
``input_shape = (block_size,)``: ``gpt`` (a language model: ``num_classes`` is the vocabulary, logits ``(N, T, V)``)
and ``encoder-classifier``; their attention is four ``nn.Linear`` layers or ``nn.MultiheadAttention``.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from learnq.errors import ConfigError
from learnq.pipeline.models.convnets import build_lenet, build_thesis_cifar
from learnq.pipeline.models.dense import build_mlp, build_thesis_mnist
from learnq.pipeline.models.mobilenet import build_mobilenetv2_small
from learnq.pipeline.models.resnet import build_resnet20, build_thesis_imagenette
from learnq.pipeline.models.transformer import build_encoder_classifier, build_gpt


@dataclass(frozen=True)
class ModelInfo:
    """One registered model: its name, a one-line description and ``builder(input_shape, num_classes, **kwargs)``."""

    name: str
    description: str  # one line, for `learnq list models`
    builder: Callable[..., nn.Module]


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo("mlp", "small MLP (hidden=(64,)); fast default for digits 1x8x8", build_mlp),
        ModelInfo("thesis-mnist", "thesis MNIST net: two dense layers (hidden=112)", build_thesis_mnist),
        ModelInfo(
            "thesis-cifar", "thesis CIFAR-10 net: three conv blocks (32/64/64) + two dense (192)", build_thesis_cifar
        ),
        ModelInfo(
            "thesis-imagenette",
            "thesis Imagenette net: ResNet-18 style stem + four residual stages (width=64)",
            build_thesis_imagenette,
        ),
        ModelInfo("lenet", "LeNet-5 style CNN for 8x8 to 32x32 images", build_lenet),
        ModelInfo("resnet20", "ResNet-20 for CIFAR: 3 stages x 3 basic blocks, 16/32/64 x width_mult", build_resnet20),
        ModelInfo(
            "mobilenetv2-small",
            "small MobileNetV2: inverted residuals, depthwise convs, ReLU6",
            build_mobilenetv2_small,
        ),
        ModelInfo("gpt", "GPT-style decoder for character LM: pre-LN, causal attention, tied embedding/head",
                  build_gpt),
        ModelInfo("encoder-classifier", "transformer encoder over padded characters, mean pooling, linear head",
                  build_encoder_classifier),
    )
}

_SPEC_KEYS = ("name", "input_shape", "num_classes", "kwargs")


def _info(name: Any) -> ModelInfo:
    if not isinstance(name, str) or name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def model_arguments(name: str) -> dict[str, Any]:
    """The keyword arguments model ``name`` accepts, with their defaults."""
    params = list(inspect.signature(_info(name).builder).parameters.values())[2:]  # after input_shape, num_classes
    return {p.name: p.default for p in params}


def _check_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """All builder keyword arguments of ``name``: defaults overridden by ``kwargs``; unknown names raise."""
    accepted = model_arguments(name)
    for key in kwargs:
        if key not in accepted:
            known = ", ".join(accepted) if accepted else "none"
            raise ConfigError(f"model {name!r} has no argument {key!r}; its arguments are: {known}")
    return {**accepted, **kwargs}


def _torch_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device (use 'cpu', 'cuda', 'cuda:0' ...): {exc}") from exc


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, *, device: str | torch.device = "cpu", **kwargs: Any
) -> nn.Module:
    """Build registered model ``name`` for inputs of shape ``input_shape`` (no batch dimension) and ``num_classes``.

    ``kwargs`` are the model's own arguments (see :func:`model_arguments`); parameters are created on ``device``.
    Raises ConfigError for an unknown name or argument or a bad value, ModelError for an input the model can't take.
    """
    info = _info(name)
    _check_kwargs(name, kwargs)
    with _torch_device(device):  # parameters are created directly on the device
        return info.builder(input_shape, num_classes, **kwargs)


def _to_json(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def model_spec(name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any) -> dict[str, Any]:
    """A JSON-serialisable description ``{"name", "input_shape", "num_classes", "kwargs"}`` of a model.

    ``kwargs`` holds every builder argument, defaults included, so the spec rebuilds the same network even if a
    default changes later. Nothing is built: values are checked when :func:`model_from_spec` builds the model.
    """
    _info(name)
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise ConfigError(f"model {name!r}: input_shape must be a sequence of positive ints, got {input_shape!r}")
    spec = {
        "name": name,
        "input_shape": _to_json(input_shape),
        "num_classes": num_classes,
        "kwargs": _to_json(_check_kwargs(name, kwargs)),
    }
    try:
        json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"model {name!r}: arguments are not JSON-serialisable ({exc}); use numbers, lists and bools"
        ) from exc
    return spec


def model_from_spec(spec: dict[str, Any], *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model a :func:`model_spec` dict (e.g. read back from JSON) describes, on ``device``."""
    if not isinstance(spec, dict):
        raise ConfigError(f"model spec must be a dict with keys {list(_SPEC_KEYS)}, got {type(spec).__name__}")
    missing = [k for k in _SPEC_KEYS if k not in spec]
    extra = [k for k in spec if k not in _SPEC_KEYS]
    if missing or extra:
        raise ConfigError(
            f"model spec must have exactly the keys {list(_SPEC_KEYS)}; missing {missing}, unexpected {extra}"
        )
    if not isinstance(spec["kwargs"], dict):
        raise ConfigError(f"model spec 'kwargs' must be a dict, got {type(spec['kwargs']).__name__}")
    shape = spec["input_shape"]
    if isinstance(shape, list):
        shape = tuple(shape)
    return build_model(spec["name"], shape, spec["num_classes"], device=device, **spec["kwargs"])


__all__ = ["MODELS", "ModelInfo", "build_model", "model_arguments", "model_from_spec", "model_spec"]
