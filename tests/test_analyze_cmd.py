"""Tests for ``learnq analyze`` (learnq.cli.analyze_cmd): round trips on a tiny pipeline model file."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import learnq
from learnq.analysis.kl import layer_kl, quantized_copy
from learnq.analysis.plots import PNG_SIGNATURE
from learnq.analysis.weights import weight_stats
from learnq.cli import main
from learnq.grid import GridSpec
from learnq.pipeline.data import load_dataset
from learnq.pipeline.models import build_model, model_spec
from learnq.pipeline.train import evaluate
from learnq.ptq.ptq_weight import quantize_weights


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run directory holding ``model.safetensors`` of an MLP on 1x8x8 inputs, with pipeline metadata."""
    out = tmp_path_factory.mktemp("run")
    splits = load_dataset("synthetic", seed=0, input_shape=(1, 8, 8), size=300)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    meta = {"model": model_spec("mlp", (1, 8, 8), 10), "data": splits.preprocessing}
    learnq.save(model, out / "model.safetensors", metadata=meta)
    variant = quantized_copy(model, 4)
    learnq.save(variant, out / "minmax-w4.safetensors", metadata=meta)
    learnq.save(model, out / "plain.safetensors")  # saved from user code: no pipeline metadata
    return out, model, splits


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_weights_round_trip(run_dir, capsys) -> None:
    out, model, _ = run_dir
    assert main(["analyze", "weights", str(out), "--json"]) == 0
    printed = _json(capsys)
    expected = json.loads(json.dumps(weight_stats(model)))
    assert printed["layers"] == expected
    assert printed["model"] == "mlp"
    written = json.loads((out / "analysis" / "weights.json").read_text())
    assert written == {k: v for k, v in printed.items() if k != "files"}
    assert (out / "analysis" / "histograms.png").read_bytes()[:8] == PNG_SIGNATURE


def test_weights_table_options_and_out(run_dir, tmp_path, capsys) -> None:
    out, _, _ = run_dir
    dest = tmp_path / "a"
    code = main(["analyze", "weights", str(out / "model.safetensors"), "--out", str(dest), "--bins", "10",
                 "--outlier-sigma", "2", "--log", "--layers", "fc2*"])
    assert code == 0
    text = capsys.readouterr().out  # --layers filters everything alike: the table, weights.json and the plot
    assert "fc1.weight" not in text and "fc2.weight" in text and ">2σ" in text
    written = json.loads((dest / "weights.json").read_text())
    assert [s["name"] for s in written["layers"]] == ["fc2.weight"] and written["selected"] == ["fc2*"]
    assert [len(s["histogram"]["counts"]) for s in written["layers"]] == [10]
    assert (dest / "histograms.png").read_bytes()[:8] == PNG_SIGNATURE
    assert main(["analyze", "weights", str(out), "--out", str(dest), "--layers", "fc2*", "--json", "--seed", "3"]) == 0
    assert [s["name"] for s in _json(capsys)["layers"]] == ["fc2.weight"]
    assert main(["analyze", "weights", str(out), "--out", str(dest), "--layers", "nope*"]) == 2
    assert "no weight matches layers=['nope*']" in capsys.readouterr().err


def test_kl_matches_the_library(run_dir, capsys) -> None:
    out, model, splits = run_dir
    assert main(["analyze", "kl", str(out), "--bits", "4", "--samples", "40", "--json"]) == 0
    printed = _json(capsys)
    direct = layer_kl(model, quantized_copy(model, 4), splits.test, max_samples=40)
    # the command rebuilds the same data and loads the same weights bit for bit, and both paths run the first batch
    # cut to 40 samples through the same layers: the same kernels on the same shapes, so the KL is identical
    assert printed["kl"] == direct
    assert all(v > 0 for v in printed["kl"].values())
    assert (out / "analysis" / "kl-w4.png").read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads((out / "analysis" / "kl-w4.json").read_text())["kl"] == printed["kl"]
    # the run's 4-bit variant file is the same quantization as the naive PTQ above
    assert main(["analyze", "kl", str(out), "--quantized", str(out / "minmax-w4.safetensors"), "--samples", "40",
                 "--json"]) == 0
    assert _json(capsys)["kl"] == direct  # the file's weights are the dequantized codes, equal to quantized_copy's
    assert (out / "analysis" / "kl-minmax-w4.png").is_file()


def test_robustness_matches_plain_minmax(run_dir, capsys) -> None:
    out, model, splits = run_dir
    assert main(["analyze", "robustness", str(out), "--bits", "3", "--factors", "0.5,1,2", "--json"]) == 0
    printed = _json(capsys)
    assert [r["factor"] for r in printed["rows"]] == [0.5, 1.0, 2.0]
    plain = copy.deepcopy(model)
    quantize_weights(plain, GridSpec(bits=3))
    assert printed["rows"][1]["accuracy"] == evaluate(plain, splits.test)["accuracy"]
    assert printed["float"] == evaluate(model, splits.test)
    assert (out / "analysis" / "robustness-w3.png").read_bytes()[:8] == PNG_SIGNATURE
    assert main(["analyze", "robustness", str(out), "--bits", "3", "--factors", "1", "--step", "mse", "--per-layer",
                 "--quiet"]) == 0
    assert (out / "analysis" / "robustness-w3-mse-per-layer.json").is_file()


def test_errors(run_dir, tmp_path, capsys) -> None:
    out, _, _ = run_dir
    assert main(["analyze", "weights", str(out / "plain.safetensors")]) == 2
    assert "no pipeline metadata" in capsys.readouterr().err
    assert main(["analyze", "kl", str(out / "plain.safetensors")]) == 2
    assert "no pipeline metadata" in capsys.readouterr().err
    assert main(["analyze", "weights", str(tmp_path / "missing.safetensors")]) == 2
    assert "no such model file" in capsys.readouterr().err
    assert main(["analyze", "robustness", str(out), "--factors", "1,x"]) == 2
    assert "--factors" in capsys.readouterr().err
    assert main(["analyze", "kl", str(out), "--smoothing", "0"]) == 2
    assert "--smoothing" in capsys.readouterr().err
    assert main(["analyze", "robustness", str(out), "--device", "nope"]) == 2
    assert "--device" in capsys.readouterr().err
    other = build_model("mlp", (1, 8, 8), 10, hidden=[8])
    learnq.save(other, tmp_path / "other.safetensors",
                metadata={"model": model_spec("mlp", (1, 8, 8), 10, hidden=[8]), "data": {}})
    assert main(["analyze", "kl", str(out), "--quantized", str(tmp_path / "other.safetensors")]) == 2
    assert "another network" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["analyze", "weights", str(out), "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
