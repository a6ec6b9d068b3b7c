"""The registry of post-training quantization methods (:class:`learnq.ptq.context.PTQMethod`).

``PTQ_METHODS`` maps a name to its method; ``learnq.ptq.quantize``, the ``PTQ`` config, the pipeline's variants, the
CLI (``learnq quantize --method``, ``learnq list methods``) and the tests read it. The built-in methods are listed
below, one entry each; a method of your own is registered at run time with :func:`register_ptq_method`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from learnq.errors import ConfigError
from learnq.ptq import adaround, clip_methods, lapq
from learnq.ptq.context import PTQFn, PTQMethod

PTQ_METHODS: dict[str, PTQMethod] = {}


def add_ptq_method(method: PTQMethod, *, replace: bool = False) -> PTQMethod:
    """Add ``method`` to :data:`PTQ_METHODS` (``ConfigError`` if the name is taken and ``replace`` is False)."""
    if method.name in PTQ_METHODS and not replace:
        raise ConfigError(f"a PTQ method named {method.name!r} is already registered; pass replace=True to override it")
    PTQ_METHODS[method.name] = method
    return method


def register_ptq_method(name: str, description: str, fn: PTQFn, *, options: Mapping[str, Any] | None = None,
                        skip_first_last: bool = False, replace: bool = False) -> PTQMethod:
    """Build and add a :class:`PTQMethod` (see :func:`add_ptq_method`)."""
    return add_ptq_method(PTQMethod(name, description, fn, dict(options or {}), skip_first_last), replace=replace)


for _method in (*clip_methods.METHODS, adaround.METHOD, lapq.METHOD):  # the built-in methods, one entry each
    add_ptq_method(_method)


def get_ptq_method(name: str) -> PTQMethod:
    """The registered method ``name``; ConfigError listing the known ones otherwise."""
    if not isinstance(name, str) or name not in PTQ_METHODS:
        raise ConfigError(f"unknown PTQ method {name!r}; registered methods: {', '.join(PTQ_METHODS)}")
    return PTQ_METHODS[name]


def available_methods() -> list[str]:
    """Names of every registered PTQ method."""
    return list(PTQ_METHODS)


__all__ = ["PTQ_METHODS", "add_ptq_method", "available_methods", "get_ptq_method", "register_ptq_method"]
