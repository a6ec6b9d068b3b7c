"""Checks of user-given data set parameters and options (no paper: input validation).

Option values may come from Python (ints, floats, sequences) or from the command line as strings ("10", "0.5",
"1,28,28"); a string is parsed explicitly, anything else of the wrong type is a ``ConfigError`` naming the option.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from learnq.errors import ConfigError


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within [minimum, maximum]; ``ConfigError`` naming ``name`` otherwise."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be <= {maximum}, got {value}")
    return int(value)


def check_float(name: str, value: Any, low: float, high: float, *, open_low: bool = True,
                open_high: bool = True) -> float:
    """``value`` as a finite float in the interval between ``low`` and ``high`` (open or closed ends)."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    below = value <= low if open_low else value < low
    above = value >= high if open_high else value > high
    if value != value or below or above:
        lo, hi = ("(" if open_low else "["), (")" if open_high else "]")
        raise ConfigError(f"{name} must be in {lo}{low}, {high}{hi}, got {value}")
    return value


def check_shape(name: str, value: Any, max_rank: int = 3) -> tuple[int, ...]:
    """A shape given as a sequence of positive ints or a string like ``"1,28,28"`` / ``"1x28x28"``."""
    if isinstance(value, str):
        parts = [p for p in value.replace("x", ",").replace(" ", "").split(",") if p]
        value = parts
    if isinstance(value, (int, bool)) or not isinstance(value, Sequence) or len(value) == 0:
        raise ConfigError(f"{name} must be a sequence of 1 to {max_rank} positive integers, got {value!r}")
    if len(value) > max_rank:
        raise ConfigError(f"{name} must have at most {max_rank} dimensions, got {len(value)}: {value!r}")
    return tuple(check_int(f"{name}[{i}]", v, minimum=1) for i, v in enumerate(value))


def check_seed(value: Any) -> int:
    return check_int("seed", value, minimum=0)
