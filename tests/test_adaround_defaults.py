"""AdaRound's iteration count: the paper's 10,000 by default and the ``fast`` preset (1,000), the same in Python
(``quantize``), the CLI (``learnq quantize [--fast]``) and recipes (``options = { fast = true }``)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F

import learnq
from learnq.cli import main
from learnq.errors import ConfigError
from learnq.pipeline.data import load_dataset
from learnq.pipeline.models import build_model, model_spec
from learnq.pipeline.recipe import parse_recipe
from learnq.pipeline.registry import apply_variant
from learnq.ptq import adaround as A
from learnq.ptq import quantize
from learnq.ptq.registry import get_ptq_method


def test_default_is_the_papers_10000_and_fast_is_1000():
    assert A.DEFAULT_ITERATIONS == 10_000 and A.FAST_ITERATIONS == 1_000
    assert get_ptq_method("adaround").options["iterations"] == 10_000
    assert get_ptq_method("adaround").options["fast"] is False
    for fn in (A.learn_rounding, A.adaround_weights):
        assert inspect.signature(fn).parameters["iterations"].default == 10_000
    assert A.resolve_iterations({"iterations": 10_000, "fast": False}) == 10_000
    assert A.resolve_iterations({"iterations": 10_000, "fast": True}) == 1_000
    assert A.resolve_iterations({"iterations": 250, "fast": False}) == 250
    with pytest.raises(ConfigError, match="fast=True sets 1000 iterations; drop fast or iterations=250"):
        A.resolve_iterations({"iterations": 250, "fast": True})


@pytest.fixture
def spy(monkeypatch):
    """Record the iterations ``adaround_weights`` is called with, then run it with 2 (the test's speed)."""
    seen: list[int] = []
    real = A.adaround_weights

    def fake(*args, iterations, **kwargs):
        seen.append(iterations)
        return real(*args, iterations=2, **kwargs)

    monkeypatch.setattr(A, "adaround_weights", fake)
    return seen


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory):
    splits = load_dataset("synthetic", seed=0, input_shape=(1, 8, 8), size=200, calib_size=32)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    x, y = splits.train.tensors
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    path = tmp_path_factory.mktemp("ada") / "model.safetensors"
    learnq.save(model, path, metadata={"model": model_spec("mlp", (1, 8, 8), 10), "data": splits.preprocessing})
    return path, model, splits


def test_python_api_default_and_fast(spy, mlp_file):
    _, model, splits = mlp_file
    quantize(model, splits.calib, method="adaround", wbits=4, abits=8, progress=False)
    quantize(model, splits.calib, method="adaround", wbits=4, abits=8, fast=True, progress=False)
    quantize(model, splits.calib, method="adaround", wbits=4, abits=8, iterations=7, progress=False)
    assert spy == [10_000, 1_000, 7]


def test_cli_default_and_fast(spy, mlp_file, tmp_path, capsys):
    path, _, _ = mlp_file
    common = ["quantize", str(path), "--method", "adaround", "--wbits", "4", "--calib", "16", "--json", "--out"]
    assert main([*common, str(tmp_path / "a.safetensors")]) == 0
    assert main([*common, str(tmp_path / "b.safetensors"), "--fast"]) == 0
    assert spy == [10_000, 1_000]
    capsys.readouterr()
    assert main(["quantize", str(path), "--method", "mse", "--fast", "--out", str(tmp_path / "c.safetensors")]) == 2
    assert "--fast: PTQ method 'mse' has no fast preset (methods with one: adaround" in capsys.readouterr().err
    assert main([*common, str(tmp_path / "d.safetensors"), "--fast", "--option", "iterations=5"]) == 2


def test_recipe_default_and_fast(spy, mlp_file):
    _, model, splits = mlp_file
    base = ('seed = 0\n[data]\nname = "digits"\n[model]\nname = "mlp"\n[train]\nepochs = 1\n'
            '[[variants]]\nmethod = "adaround"\nwbits = 4\nabits = 8\n')
    for extra in ("", "options = { fast = true }\n"):
        variant = parse_recipe(base + extra).variants[0]
        apply_variant(copy.deepcopy(model), splits, variant, seed=0)  # the pipeline quantizes its copy in place
    assert spy == [10_000, 1_000]
