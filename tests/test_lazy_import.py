"""``import learnq`` exposes its subpackages lazily (PEP 562, learnq._lazy): ``learnq.ptq.quantize`` works after a
plain ``import learnq`` (an AttributeError before), and the import itself loads none of the lazy subpackages (it
stays as fast as it was; the time is measured in the issue's note, never asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import learnq

LAZY = ("learnq.ptq", "learnq.analysis", "learnq.pipeline", "learnq.export", "learnq.cli", "learnq.regularizers",
        "learnq.optim", "learnq.size")
SCRIPT = """
import json, sys
import learnq
before = sorted(m for m in sys.modules if m.startswith("learnq"))
import torch
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
result = learnq.ptq.quantize(model, torch.randn(16, 4), method="minmax", wbits=4, abits=8, progress=False)
print(json.dumps({"before": before, "method": result.method, "kl": learnq.analysis.kl.__name__,
                  "models": learnq.pipeline.models.__name__, "dir": "ptq" in dir(learnq)}))
"""


def test_plain_import_then_subpackage_attributes_work_and_load_nothing_eagerly():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["method"] == "minmax"
    assert got["kl"] == "learnq.analysis.kl" and got["models"] == "learnq.pipeline.models" and got["dir"]
    assert not [m for m in got["before"] if m.startswith(LAZY)], got["before"]


def test_unknown_attributes_still_raise_attribute_error():
    with pytest.raises(AttributeError, match="module 'learnq' has no attribute 'quantise'"):
        learnq.quantise  # noqa: B018
    with pytest.raises(AttributeError, match="module 'learnq.pipeline' has no attribute 'nope'"):
        learnq.pipeline.nope  # noqa: B018
    assert set(learnq.SUBMODULES) <= set(dir(learnq))


@pytest.mark.parametrize("package", ["learnq", "learnq.analysis", "learnq.pipeline"])
def test_every_public_submodule_is_listed(package):
    import importlib
    import pkgutil

    mod = importlib.import_module(package)
    names = {m.name for m in pkgutil.iter_modules(mod.__path__) if not m.name.startswith("_")}
    assert set(mod.SUBMODULES) == names
