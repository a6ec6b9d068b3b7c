"""learnq's module graph, built from the import statements of its source (issue 11): no import cycle among learnq's
modules, nothing outside ``learnq/pipeline/`` and ``learnq/cli/`` imports ``learnq.pipeline``, and ``learnq.analysis``
does not import ``learnq.pipeline.train``.

Every ``import`` / ``from ... import`` counts, at module level or inside a function (a function-level import is a
real dependency, only a later one), except those under ``if TYPE_CHECKING:``, which never run (annotations only).
``from pkg import name`` is an edge to the submodule ``pkg.name`` when there is one, else to ``pkg``. The one kind of
import the graph cannot see, and so the one exception, is the PEP 562 laziness of :mod:`learnq._lazy`: ``learnq``,
``learnq.analysis`` and ``learnq.pipeline`` expose their submodules (and ``learnq.PTQ``) on first attribute access
through ``importlib``; those are the public convenience names of ``import learnq; learnq.ptq.quantize(...)``, listed
in their ``SUBMODULES`` / ``LAZY_NAMES`` and checked by test_lazy_import.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

LEARNQ = Path(__file__).resolve().parents[1] / "learnq"


def _modules() -> dict[str, Path]:
    out = {}
    for path in LEARNQ.rglob("*.py"):
        parts = list(path.relative_to(LEARNQ.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str) -> set[str]:
    """Every learnq module ``tree`` imports (``package``: the package of relative imports)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(t for a in node.names if a.name.startswith("learnq") and (t := _resolve(a.name)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base == "learnq" or base.startswith("learnq."):
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    target = full if full in MODULES else _resolve(base)
                    if target:
                        found.add(target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imports(ast.parse(path.read_text(encoding="utf-8")), package) - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


GRAPH = _graph()


def test_the_graph_sees_function_level_and_relative_imports():
    tree = ast.parse("def f():\n    from learnq.grid import GridSpec\n    from . import pact\n"
                     "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from learnq.pipeline import run\n")
    assert _imports(tree, "learnq.act") == {"learnq.grid", "learnq.act.pact"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "learnq.checkpoint" in GRAPH["learnq"] and len(GRAPH) == len(MODULES) > 100


def test_no_import_cycle_among_learnq_modules():
    assert _cycles(GRAPH) == []


def test_only_the_pipeline_and_the_cli_import_the_pipeline():
    outside = {m: sorted(t for t in targets if t == "learnq.pipeline" or t.startswith("learnq.pipeline."))
               for m, targets in GRAPH.items()
               if not (m.startswith(("learnq.pipeline", "learnq.cli")))}
    assert {m: t for m, t in outside.items() if t} == {}


def test_analysis_does_not_import_the_trainer():
    assert {m: sorted(t for t in targets if t.startswith("learnq.pipeline"))
            for m, targets in GRAPH.items() if m.startswith("learnq.analysis")
            if any(t.startswith("learnq.pipeline") for t in targets)} == {}
