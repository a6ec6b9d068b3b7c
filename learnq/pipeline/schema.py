"""Typed dataclasses from plain dicts (a parsed TOML or JSON file), with errors that name the key path.

No paper: input validation for recipes. ``from_dict(cls, data, path)`` builds dataclass ``cls`` from ``data``,
checking every key against the fields' type annotations, and ``to_dict(obj)`` turns it back into plain JSON values,
so ``from_dict(cls, to_dict(obj)) == obj``. Errors read ``train.epochs: expected int, got str`` or
``variants[1].granularity: unknown key``. Supported annotations: ``int``, ``float`` (an int is accepted and
converted), ``str``, ``bool``, ``Any``, ``X | None``, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and nested
dataclasses. ``bool`` is never accepted where a number is expected, nor a number where a bool is.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from learnq.checks import TYPE_NAMES, type_name
from learnq.errors import ConfigError

T = TypeVar("T")


def _annotation_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is Any:
        return "any value"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_annotation_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return f"array of {_annotation_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return f"table of {_annotation_name(typing.get_args(tp)[1])}"
    if dataclasses.is_dataclass(tp):
        return "table"
    return TYPE_NAMES.get(tp, getattr(tp, "__name__", str(tp)))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mismatch(path: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(f"{path or 'recipe'}: expected {_annotation_name(tp)}, got {type_name(value)} ({value!r})")


def convert(tp: Any, value: Any, path: str) -> Any:
    """``value`` checked against annotation ``tp`` (and converted: tuples, nested dataclasses, int -> float)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return convert(option, value, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise _mismatch(path, tp, value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _mismatch(path, tp, value)
        item_tp = typing.get_args(tp)[0]
        items = [convert(item_tp, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _mismatch(path, tp, value)
        key_tp, value_tp = typing.get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{path}: keys must be strings, got {k!r}")
            out[k] = convert(value_tp, v, _join(path, k))
        return out
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise _mismatch(path, tp, value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _mismatch(path, tp, value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _mismatch(path, tp, value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _mismatch(path, tp, value)
        return value
    raise TypeError(f"schema: unsupported annotation {tp!r} at {path}")  # a bug in a dataclass, not user input


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build dataclass ``cls`` from mapping ``data``; unknown keys, missing required keys and wrong types raise
    ``ConfigError`` naming the key path (``path`` is the prefix, e.g. ``"train"``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or 'recipe'}: expected a table, got {type_name(data)} ({data!r})")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            known = ", ".join(fields)
            raise ConfigError(f"{_join(path, str(key))}: unknown key; the keys of {path or 'a recipe'} are: {known}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = convert(hints[name], data[name], _join(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(path, name)}: missing; this key is required")
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a dataclass that checks its own values (e.g. learnq.attach.Selection)
        raise ConfigError(f"{path or 'recipe'}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """Plain JSON values of a dataclass (recursively; tuples become lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


__all__ = ["convert", "from_dict", "to_dict", "type_name"]
