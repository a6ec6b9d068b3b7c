"""learnq.pipeline.run: a tiny recipe end to end (files, metrics rows, metadata), eval reproducing the numbers,
regularizers wired into training, and the errors for files the pipeline did not write."""

from __future__ import annotations

import json
import os

import pytest
import torch
from recipe_util import tiny_recipe
from torch import nn

import learnq.checkpoint as ckpt
from learnq.errors import CheckpointError, ConfigError
from learnq.pipeline.model_files import evaluate_file, rebuild
from learnq.pipeline.recipe import Recipe, parse_recipe
from learnq.pipeline.run import ROW_KEYS, run_recipe, train_recipe

TINY = tiny_recipe(seed=1, limit=300, calib_size=64, hidden=(16,), epochs=2, batch_size=32, lr=0.01, plots=None,
                   tables="""\
[[variants]]
method = "float"

[[variants]]
method = "minmax"
bits = 8

[[variants]]
method = "minmax"
bits = 2
granularity = "tensor"
name = "two-bit"
""")

N_PARAMS = 64 * 16 + 16 + 16 * 10 + 10  # the mlp's weights and biases


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return run_recipe(parse_recipe(TINY), out), out


def test_run_writes_every_file(tiny_run):
    result, out = tiny_run
    names = {"recipe.json", "metrics.json", "model.safetensors", "minmax-w8.safetensors", "two-bit.safetensors",
             "report.md", "training.png", "accuracy_vs_size.png"}
    assert names <= set(os.listdir(out))
    assert (out / "checkpoints" / "last.pt").is_file()
    assert {p.name for p in result.files} == names


def test_metrics_rows_have_the_exact_keys_and_honest_sizes(tiny_run):
    result, out = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"] == result.rows
    assert [list(r) for r in metrics["rows"]] == [list(ROW_KEYS)] * 3
    assert [(r["method"], r["bits"], r["file"]) for r in metrics["rows"]] == [
        ("float", 32, "model.safetensors"), ("minmax", 8, "minmax-w8.safetensors"),
        ("minmax", 2, "two-bit.safetensors")]
    for r in metrics["rows"]:
        assert r["file_bytes"] == os.path.getsize(out / r["file"])
        assert r["ratio"] == pytest.approx(4 * N_PARAMS / r["file_bytes"], rel=1e-12)
        assert 0.0 <= r["accuracy"] <= 1.0
    assert metrics["rows"][0]["file_bytes"] > metrics["rows"][1]["file_bytes"] > metrics["rows"][2]["file_bytes"]
    assert len(metrics["history"]) == 2 and metrics["test"]["n"] == 359  # round(20% of 1,797 digits)
    assert metrics["rows"][0]["accuracy"] == metrics["test"]["accuracy"]


def test_resolved_recipe_is_written(tiny_run):
    _, out = tiny_run
    assert Recipe.from_dict(json.loads((out / "recipe.json").read_text())) == parse_recipe(TINY)


def test_model_files_record_the_pipeline_metadata(tiny_run):
    _, out = tiny_run
    meta = ckpt.read(out / "model.safetensors").metadata
    assert {"model", "data", "recipe", "metrics"} <= set(meta)
    assert meta["model"] == {"name": "mlp", "input_shape": [1, 8, 8], "num_classes": 10, "kwargs": {"hidden": [16]}}
    assert (meta["data"]["name"], meta["data"]["seed"], meta["data"]["limit"]) == ("digits", 1, 300)
    assert meta["recipe"]["train"]["epochs"] == 2
    variant = ckpt.read(out / "two-bit.safetensors").metadata["variant"]
    assert (variant["method"], variant["bits"], variant["granularity"]) == ("minmax", 2, "tensor")


def test_eval_reproduces_the_metrics_exactly(tiny_run):
    result, out = tiny_run
    for row in result.rows:
        again = evaluate_file(out / row["file"])
        assert again["accuracy"] == row["accuracy"]
        assert (again["method"], again["bits"]) == (row["method"], row["bits"])
    assert evaluate_file(out)["loss"] == result.test["loss"]  # a run directory means its model.safetensors


def test_rebuilt_quantized_model_has_the_grid_values(tiny_run):
    _, out = tiny_run
    model, splits, _ = rebuild(out / "two-bit.safetensors")
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(layers) == 2
    for layer in layers:
        assert torch.unique(layer.weight).numel() <= 4  # 2 bits per tensor: at most 4 distinct values
    assert len(splits.test) == 359


def test_same_seed_same_rows(tiny_run, tmp_path):
    result, _ = tiny_run
    again = run_recipe(parse_recipe(TINY), tmp_path, report=False)
    assert again.rows == result.rows


def test_user_file_without_pipeline_metadata_is_refused(tmp_path):
    path = tmp_path / "mine.safetensors"
    ckpt.save(nn.Linear(3, 2), path)
    with pytest.raises(CheckpointError, match=r"saved from user code.*learnq\.load\(path, model\)"):
        evaluate_file(path)
    with pytest.raises(CheckpointError, match="without model.safetensors"):
        evaluate_file(tmp_path)
    with pytest.raises(CheckpointError, match="no such model file"):
        evaluate_file(tmp_path / "missing.safetensors")


def test_bad_device_is_a_config_error(tiny_run):
    _, out = tiny_run
    with pytest.raises(ConfigError, match="not a torch device"):
        evaluate_file(out, device="gpu9")


def test_regularizers_are_trained_with(tmp_path):
    text = TINY.replace("epochs = 2", "epochs = 1") + '\n[[regularizers]]\nname = "dsmm"\nstrength = 0.01\n'
    trained = train_recipe(parse_recipe(text), tmp_path)
    extra = trained.history[0]["extra"]
    assert list(extra) == ["dsmm"] and extra["dsmm"] > 0


def test_out_must_not_be_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        train_recipe(parse_recipe(TINY), f)
