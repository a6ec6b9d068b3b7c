"""Lazy submodules of a package (PEP 562): ``package.sub`` imports ``package.sub`` on first access, so that
``import learnq; learnq.ptq.quantize(...)`` works while ``import learnq`` imports only what it needs."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any


def lazy_submodules(package: str, names: Iterable[str],
                    namespace: dict[str, Any]) -> tuple[Callable[[str], ModuleType], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for package ``package`` (its ``globals()`` is ``namespace``) whose submodules
    ``names`` are imported on first attribute access; any other missing name raises AttributeError as usual."""
    known = frozenset(names)

    def __getattr__(name: str) -> ModuleType:
        if name in known:
            return importlib.import_module(f"{package}.{name}")  # also binds it as an attribute of the package
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *known})

    return __getattr__, __dir__
