"""Up-front validation of model-builder arguments.

Every builder in the zoo checks its arguments here before it creates a layer, so a bad value fails with a
:class:`learnq.errors.ConfigError` (or :class:`learnq.errors.ModelError` for an input too small for the network)
that names the model, the argument and what to do, instead of a shape error deep inside ``forward``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from learnq.errors import ConfigError, ModelError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def input_shape(model: str, value: Any, ndim: int | None = None) -> tuple[int, ...]:
    """``value`` as a tuple of positive ints; ``ndim`` (when given) is the required length, e.g. 3 for (C, H, W)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ConfigError(f"model {model!r}: input_shape must be a non-empty sequence of positive ints, got {value!r}")
    if not all(_is_int(v) and v > 0 for v in value):
        raise ConfigError(f"model {model!r}: input_shape must hold positive ints only, got {tuple(value)!r}")
    shape = tuple(int(v) for v in value)
    if ndim is not None and len(shape) != ndim:
        raise ConfigError(
            f"model {model!r} takes images: input_shape must be (C, H, W), got {shape!r} "
            f"(a {len(shape)}-d shape); use 'mlp' or 'thesis-mnist' for flat inputs"
        )
    return shape


def min_spatial(model: str, shape: tuple[int, ...], minimum: int, why: str) -> None:
    """Raise ModelError when the spatial size (H, W) of ``shape`` is below ``minimum``."""
    if shape[1] < minimum or shape[2] < minimum:
        raise ModelError(
            f"model {model!r} needs inputs of at least {minimum}x{minimum} pixels ({why}), got input_shape {shape!r}; "
            "choose a model for smaller images (e.g. 'lenet' or 'resnet20')"
        )


def num_classes(model: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ConfigError(f"model {model!r}: num_classes must be a positive int, got {value!r}")
    return int(value)


def positive_int(model: str, arg: str, value: Any) -> int:
    if not _is_int(value) or value < 1:
        raise ConfigError(f"model {model!r}: argument {arg!r} must be a positive int, got {value!r}")
    return int(value)


def positive_ints(
    model: str, arg: str, value: Any, length: int | None = None, allow_empty: bool = False
) -> tuple[int, ...]:
    """A sequence of positive ints (a list from JSON or a tuple from Python)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"model {model!r}: argument {arg!r} must be a list of positive ints, got {value!r}")
    if not all(_is_int(v) and v > 0 for v in value):
        raise ConfigError(f"model {model!r}: argument {arg!r} must hold positive ints only, got {list(value)!r}")
    if length is not None and len(value) != length:
        raise ConfigError(f"model {model!r}: argument {arg!r} must have {length} entries, got {len(value)}")
    if not value and not allow_empty:
        raise ConfigError(f"model {model!r}: argument {arg!r} must not be empty")
    return tuple(int(v) for v in value)


def positive_float(model: str, arg: str, value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok:
        raise ConfigError(f"model {model!r}: argument {arg!r} must be a finite number > 0, got {value!r}")
    return float(value)


def flag(model: str, arg: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"model {model!r}: argument {arg!r} must be true or false, got {value!r}")
    return value
