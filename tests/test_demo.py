"""``learnq demo``: the built-in digits recipe end to end; JSON keys, 8-bit accuracy close to float, honest sizes."""

from __future__ import annotations

import json
import os

import pytest

from learnq.checkpoint import read
from learnq.cli import main
from learnq.pipeline.run import ROW_KEYS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out


def test_demo_json(demo, capsys):
    capsys.readouterr()
    assert main(["demo", "--json", "--out", str(demo)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"rows", "out"} and result["out"] == str(demo)
    rows = result["rows"]
    assert [tuple(r) for r in rows] == [ROW_KEYS] * len(rows)
    fixed = [(r["method"], r["bits"], r["abits"]) for r in rows if r["method"] not in ("diffq", "nested")]
    assert fixed == [("float", 32, 32), ("minmax", 8, 32), ("minmax", 4, 32), ("minmax", 2, 32), ("ste", 2, 32),
                     ("lsq", 2, 32), ("mse", 4, 4), ("aciq", 4, 4), ("lapq", 4, 4), ("dkm", 2, 32), ("dkm", 4, 32),
                     ("kmeans", 2, 32), ("gptq", 4, 4)]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    for r in rows:
        assert r["file_bytes"] == os.path.getsize(demo / r["file"])
    assert json.loads((demo / "metrics.json").read_text())["rows"] == rows
    by_bits = {r["bits"]: r for r in rows if r["method"] in ("float", "minmax")}
    assert by_bits[32]["accuracy"] > 0.9  # a trained digits classifier
    assert abs(by_bits[8]["accuracy"] - by_bits[32]["accuracy"]) <= 0.02
    assert by_bits[32]["file_bytes"] > by_bits[8]["file_bytes"] > by_bits[4]["file_bytes"] > by_bits[2]["file_bytes"]
    assert by_bits[32]["ratio"] < by_bits[8]["ratio"] < by_bits[4]["ratio"] < by_bits[2]["ratio"]
    for r in rows:
        if r["abits"] == 4:  # W4A4 PTQ of weights and activations: a 4-bit file, a few points below float
            assert by_bits[32]["accuracy"] - r["accuracy"] < 0.05
            assert r["file_bytes"] < by_bits[8]["file_bytes"]
            assert set(read(demo / r["file"]).metadata["activations"]["quantizers"]) == {"fc1", "fc2"}


def test_demo_default_out_is_a_new_temporary_directory(tmp_path, monkeypatch, capsys):
    """Text mode on a one-epoch recipe: the temporary directory is printed, then the table."""
    recipe = tmp_path / "quick.toml"
    recipe.write_text('[data]\nlimit = 100\n[model]\nargs = { hidden = [4] }\n[train]\nepochs = 1\n'
                      '[[variants]]\nmethod = "float"\n[[variants]]\nmethod = "minmax"\nbits = 8\n'
                      '[report]\nplots = false\n')
    made = tmp_path / "made"
    made.mkdir()
    monkeypatch.setattr("tempfile.mkdtemp", lambda prefix="": str(made))
    capsys.readouterr()
    assert main(["demo", "--recipe", str(recipe), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"learnq demo: recipe quick, run directory {made}"
    assert "method  bits  test acc  file size  vs float32" in out
    assert (made / "minmax-w8.safetensors").is_file()
