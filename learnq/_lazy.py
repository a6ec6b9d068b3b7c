"""Lazy submodules and names of a package (PEP 562): ``package.sub`` imports ``package.sub`` on first access, and a
lazy name (``learnq.PTQ``) imports the module that defines it, so that ``import learnq; learnq.ptq.quantize(...)``
and ``learnq.PTQ(...)`` work while ``import learnq`` imports only what it needs. These are the only imports of
learnq that its static import graph does not show (``tests/test_import_graph.py`` lists them as its exception)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_submodules(
    package: str, names: Iterable[str], namespace: dict[str, Any], attributes: Mapping[str, str] | None = None,
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for package ``package`` (its ``globals()`` is ``namespace``) whose submodules
    ``names`` are imported on first attribute access, and whose ``attributes`` (name -> defining module) are
    looked up in their module on first access; any other missing name raises AttributeError as usual."""
    known = frozenset(names)
    lazy = dict(attributes or {})

    def __getattr__(name: str) -> Any:
        if name in known:
            return importlib.import_module(f"{package}.{name}")  # also binds it as an attribute of the package
        if name in lazy:
            value = getattr(importlib.import_module(lazy[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*namespace, *known, *lazy})

    return __getattr__, __dir__
