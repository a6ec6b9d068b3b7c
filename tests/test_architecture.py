"""docs/architecture.md stays true: its worked examples (a new QAT method, a PTQ plug-in) run as written, and the
modules, registries and protocols it names exist."""

from __future__ import annotations

import importlib
import re
import sys
import types
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
TEXT = DOC.read_text(encoding="utf-8")
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)


@pytest.fixture
def registries():
    """Every registry the examples add to, restored afterwards (the examples register at run time)."""
    from learnq.pipeline import registry as pipeline_registry
    from learnq.ptq import registry as ptq_registry
    from learnq.quantizers import config as qat_config

    saved = [(d, dict(d)) for d in (qat_config.QAT_METHODS, ptq_registry.PTQ_METHODS, pipeline_registry.VARIANTS,
                                    pipeline_registry.QAT_SECTIONS)]
    yield
    for d, copy in saved:
        d.clear()
        d.update(copy)


def test_the_page_has_the_four_example_blocks():
    assert len(BLOCKS) == 4


@pytest.mark.parametrize("first", [0, 2], ids=["qat-method", "ptq-plugin"])
def test_worked_example_runs(first, registries, monkeypatch):
    module = types.ModuleType("architecture_example")  # the example's file, as a module (dataclasses need one)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(BLOCKS[first], f"{DOC}:block{first}", "exec"), module.__dict__)
    exec(compile(BLOCKS[first + 1], f"{DOC}:block{first + 1}", "exec"), module.__dict__)  # using it (asserts inside)


def test_the_modules_the_page_names_exist():
    names = set(re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", TEXT)) - {"learnq/quantizers/clipped.py",
                                                                        "learnq/ptq/percentile.py"}  # the examples
    assert len(names) > 30
    files = [p.relative_to(DOC.parents[1]).as_posix() for p in DOC.parents[1].glob("*/**/*.py")]
    missing = [n for n in names if not any(f == n or f.endswith(f"/{n}") for f in files)]
    assert missing == []
    for module in ("learnq.parametrization", "learnq.act.base", "learnq.ptq.context", "learnq.fields",
                   "learnq.quantizers.config", "learnq.pipeline.registry", "learnq.pipeline.sections"):
        importlib.import_module(module)
