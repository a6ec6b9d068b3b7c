"""The one place that checks user-given values of configs and method options (no paper: input validation).

``check_int`` / ``check_float`` / ``check_choice`` check one field of a typed config (``STE.bits``, ``PACT.bits``,
``PTQ.wbits``...) and raise :class:`learnq.errors.ConfigError` naming it. :func:`check_options` checks a method's
free-form options (a recipe's ``[variants.options]``, ``learnq.ptq.quantize(..., p=3.0)``, ``learnq quantize
--option``) against the method's declared defaults: the type of each default is the type a caller must give
(``None``: any value). ``selection_to_dict`` / ``selection_from_dict`` are the JSON form of a
:class:`learnq.attach.Selection` inside a config.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from learnq.attach import Selection
from learnq.errors import ConfigError

TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", dict: "table", list: "array",
              type(None): "nothing"}


def type_name(value: Any) -> str:
    """The TOML-ish name of a value's type (``int``, ``str``, ``table``, ``array``...)."""
    return TYPE_NAMES.get(type(value), type(value).__name__)


def check_int(cls: str, name: str, value: object, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        top = "" if hi is None else f" and <= {hi}"
        raise ConfigError(f"{cls}.{name} must be an integer >= {lo}{top}, got {value!r}")
    return value


def check_float(cls: str, name: str, value: object, lo: float = 0.0, strict: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < lo or (strict and value == lo):
        rel = ">" if strict else ">="
        raise ConfigError(f"{cls}.{name} must be a finite number {rel} {lo}, got {value!r}")
    return float(value)


def check_choice(cls: str, name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{cls}.{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value  # type: ignore[return-value]


def check_options(defaults: Mapping[str, Any], options: Mapping[str, Any], path: str,
                  owner: str = "this method") -> dict[str, Any]:
    """``options`` checked against ``defaults``; returns the defaults overridden by ``options``.

    An unknown key, or a value of another type than the key's default (an int is a float; a bool is never a
    number), raises ConfigError naming ``path.key`` and ``owner`` (e.g. ``"PTQ method 'lp'"``).
    """
    for key, value in options.items():
        where = f"{path}.{key}" if path else key
        if key not in defaults:
            known = ", ".join(defaults) if defaults else "none"
            raise ConfigError(f"{where}: unknown option; this method's options are: {known} ({owner} has no option "
                              f"{key!r})")
        default = defaults[key]
        if default is None:
            continue
        expected: tuple[type, ...] = (float, int) if isinstance(default, float) else (type(default),)
        if (isinstance(value, bool) and not isinstance(default, bool)) or not isinstance(value, expected):
            kind = type_name(default)
            raise ConfigError(f"{where}: expected {kind}, got {type_name(value)} ({value!r}); option {key!r} of "
                              f"{owner} must be a {kind}")
    return {**defaults, **options}


def selection_to_dict(sel: Selection | None) -> dict | None:
    """The JSON form of a Selection (tuples as lists), None for None."""
    if sel is None:
        return None
    return {f.name: (list(v) if isinstance(v := getattr(sel, f.name), tuple) else v) for f in fields(sel)}


def selection_from_dict(data: object) -> Selection | None:
    """Inverse of :func:`selection_to_dict` (a Selection passes through); ConfigError for unknown keys."""
    if data is None or isinstance(data, Selection):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"selection must be a dict of Selection fields or null, got {data!r}")
    known = {f.name for f in fields(Selection)}
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"selection has unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    return Selection(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


__all__ = ["check_choice", "check_float", "check_int", "check_options", "selection_from_dict", "selection_to_dict",
           "type_name"]
