"""Tests for ``learnq quantize`` (learnq.cli.quantize_cmd): round trips through model files, --json, errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import learnq
from learnq.act import input_quantizers
from learnq.cli import main
from learnq.cli.quantize_cmd import parse_options
from learnq.errors import ConfigError
from learnq.pipeline.data import load_dataset
from learnq.pipeline.models import build_model, model_from_spec, model_spec
from learnq.pipeline.train import evaluate

JSON_KEYS = {"accuracy", "file_bytes", "calib_seconds", "loss_evals", "wbits", "abits", "method", "file", "calib"}


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A pipeline model file: an MLP trained briefly on seeded synthetic 1x8x8 data, with model/data metadata."""
    out = tmp_path_factory.mktemp("q")
    splits = load_dataset("synthetic", seed=0, input_shape=(1, 8, 8), size=400, calib_size=64)
    torch.manual_seed(0)
    model = build_model("mlp", (1, 8, 8), 10)
    x, y = splits.train.tensors
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    test = evaluate(model, splits.test)
    meta = {"model": model_spec("mlp", (1, 8, 8), 10), "data": splits.preprocessing, "metrics": {"test": test}}
    path = out / "model.safetensors"
    learnq.save(model, path, metadata=meta)
    return path, splits, test


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_round_trip_with_eval_and_load(model_file, tmp_path, capsys) -> None:
    path, splits, test = model_file
    out = tmp_path / "w4a4.safetensors"
    code, text, _ = _run(capsys, "quantize", str(path), "--method", "mse", "--wbits", "4", "--abits", "4",
                         "--calib", "32", "--out", str(out), "--json")
    assert code == 0
    report = json.loads(text)
    assert JSON_KEYS <= set(report)
    assert (report["method"], report["wbits"], report["abits"], report["calib"]) == ("mse", 4, 4, 32)
    assert report["loss_evals"] == 0 and report["calib_seconds"] > 0
    assert report["file_bytes"] == out.stat().st_size
    assert report["float_accuracy"] == test["accuracy"]
    assert report["accuracy"] == report["accuracy_before_save"]  # the file computes what the model computed
    code, text, _ = _run(capsys, "eval", str(out), "--json")
    assert code == 0
    evaluated = json.loads(text)
    assert evaluated["accuracy"] == report["accuracy"] and evaluated["method"] == "mse" and evaluated["bits"] == 4
    meta = learnq.load(out).metadata
    model = model_from_spec(meta["model"])
    learnq.load(out, model)
    assert set(input_quantizers(model)) == {"fc1", "fc2"}
    assert evaluate(model, splits.test)["accuracy"] == report["accuracy"]
    assert meta["ptq"]["calib"] == 32 and meta["variant"] == {"method": "mse", "bits": 4, "abits": 4}


def test_weights_only_default_out_and_table(model_file, capsys) -> None:
    path, _, _ = model_file
    code, text, _ = _run(capsys, "quantize", str(path), "--method", "lp", "--wbits", "4", "--abits", "32",
                         "--calib", "16", "--option", "p=3.0", "--granularity", "channel", "--bias-correction")
    assert code == 0
    out = path.with_name("model.lp-w4a32.safetensors")
    assert out.is_file() and "quantized test accuracy" in text
    meta = learnq.load(out).metadata
    assert "activations" not in meta and meta["ptq"]["options"] == {"p": 3.0}
    model = learnq.load(out, model_from_spec(meta["model"]))
    assert not input_quantizers(model)


def test_same_seed_same_file(model_file, tmp_path, capsys) -> None:
    path, _, _ = model_file
    outs = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    for out in outs:
        code, _, _ = _run(capsys, "quantize", str(path), "--method", "kl", "--wbits", "4", "--abits", "4",
                          "--calib", "48", "--seed", "3", "--option", "bins=256", "--out", str(out), "--quiet")
        assert code == 0
    first, second = (learnq.load(out) for out in outs)
    assert list(first.entries) == list(second.entries)
    for name, value in first.entries.items():
        other = second.entries[name]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), name
        else:
            assert torch.equal(value.codes, other.codes) and torch.equal(value.scale, other.scale), name
    assert first.metadata["activations"] == second.metadata["activations"]


def test_errors(model_file, tmp_path, capsys) -> None:
    path, _, _ = model_file
    code, _, err = _run(capsys, "quantize", str(path), "--method", "percentile")
    assert code == 2 and "--method" in err
    code, _, err = _run(capsys, "quantize", str(path), "--calib", "0")
    assert code == 2 and "--calib" in err
    code, _, err = _run(capsys, "quantize", str(path), "--option", "p")
    assert code == 2 and "KEY=VALUE" in err
    code, _, err = _run(capsys, "quantize", str(path), "--method", "aciq", "--option", "bins=3")
    assert code == 2 and "no option 'bins'" in err
    code, _, err = _run(capsys, "quantize", str(path), "--out", str(path))
    assert code == 2 and "input file" in err
    plain = tmp_path / "plain.safetensors"
    learnq.save(build_model("mlp", (1, 8, 8), 10), plain)
    code, _, err = _run(capsys, "quantize", str(plain))
    assert code == 2 and "pipeline metadata" in err


def test_batchnorm_network_round_trip(tmp_path, capsys) -> None:
    # BatchNorm is folded before quantization; learnq eval / learnq.load fold the rebuilt network the same way
    splits = load_dataset("synthetic", seed=0, input_shape=(3, 8, 8), size=120, calib_size=16)
    torch.manual_seed(0)
    spec = model_spec("resnet20", (3, 8, 8), 10, width_mult=0.25)
    model = model_from_spec(spec)
    with torch.no_grad():  # non-trivial running statistics
        model(splits.train.tensors[0])
    model.eval()
    path = tmp_path / "resnet.safetensors"
    learnq.save(model, path, metadata={"model": spec, "data": splits.preprocessing})
    out = tmp_path / "q.safetensors"
    code, text, _ = _run(capsys, "quantize", str(path), "--method", "minmax", "--wbits", "8", "--abits", "8",
                         "--calib", "16", "--out", str(out), "--json")
    assert code == 0
    report = json.loads(text)
    assert report["accuracy"] == report["accuracy_before_save"]
    code, text, _ = _run(capsys, "eval", str(out), "--json")
    assert code == 0 and json.loads(text)["accuracy"] == report["accuracy"]
    assert learnq.load(out).metadata["folded_batchnorm"]


def test_parse_options() -> None:
    assert parse_options(["p=3", "distribution=gaussian", "x=[1, 2]"]) == {"p": 3, "distribution": "gaussian",
                                                                           "x": [1, 2]}
    with pytest.raises(ConfigError):
        parse_options(["=3"])


def test_weights_are_per_channel_by_default_per_tensor_on_request(model_file, tmp_path, capsys) -> None:
    path, _, _ = model_file
    grids = {}
    for extra in ([], ["--granularity", "tensor"]):
        out = tmp_path / f"w4a8{len(extra)}.safetensors"
        code, _, _ = _run(capsys, "quantize", str(path), "--wbits", "4", "--abits", "8", "--calib", "32", "--out",
                          str(out), "--quiet", *extra)
        assert code == 0
        mf = learnq.load(out)
        grids[tuple(extra)] = ({str(v.granularity) for v in mf.entries.values() if hasattr(v, "granularity")},
                               mf.metadata["ptq"]["granularity"])
    assert grids[()] == ({"axis:0"}, "channel")
    assert grids[("--granularity", "tensor")] == ({"tensor"}, "tensor")


def test_kmeans_palettizes_through_the_cli(model_file, tmp_path, capsys) -> None:
    """``learnq quantize --method kmeans`` (issue 14): a palette of 2^wbits d-vectors per tensor, same seed same
    file, and the file's indices cost wbits per vector."""
    path, splits, _ = model_file
    outs = [tmp_path / "k1.safetensors", tmp_path / "k2.safetensors"]
    for out in outs:
        code, text, _ = _run(capsys, "quantize", str(path), "--method", "kmeans", "--wbits", "2", "--abits", "32",
                             "--granularity", "tensor", "--option", "dim=2", "--seed", "4", "--out", str(out),
                             "--json")
        assert code == 0
    report = json.loads(text)
    assert report["method"] == "kmeans" and report["accuracy"] == report["accuracy_before_save"]
    mf, again = learnq.load(outs[0]), learnq.load(outs[1])  # the metadata holds timings: compare the tensors
    for name, value in mf.entries.items():
        other = again.entries[name]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), name
        else:
            assert torch.equal(value.codes, other.codes) and torch.equal(value.palette, other.palette), name
    for name in ("fc1.weight", "fc2.weight"):
        qt = mf.entries[name]
        assert qt.palette.shape == (1, 4, 2) and qt.method == "kmeans"
        row = next(t for t in mf.size.tensors if t.name == name)
        assert row.naive_bits == 2 * qt.codes.numel() // 2 + 4 * 2 * 32
    model = learnq.load(outs[0], model_from_spec(mf.metadata["model"]))
    assert evaluate(model, splits.test)["accuracy"] == report["accuracy"]


@pytest.mark.parametrize("method, option", [("gptq", "act_order=true"), ("adaquant", "iterations=10"),
                                            ("qdrop", "drop_prob=0.25")])
def test_issue15_methods_from_the_command_line(model_file, tmp_path, capsys, method, option) -> None:
    path, _, _ = model_file
    out = tmp_path / f"{method}.safetensors"
    extra = [] if method == "gptq" else ["--option", "iterations=10"]
    code, text, _ = _run(capsys, "quantize", str(path), "--method", method, "--wbits", "4", "--abits", "8",
                         "--calib", "32", "--out", str(out), "--option", option, *extra, "--json")
    assert code == 0
    report = json.loads(text)
    assert report["method"] == method and report["accuracy"] == report["accuracy_before_save"]
    config = learnq.load(out).metadata["ptq_config"]
    key, _, value = option.partition("=")
    assert config["method"] == method and config["options"][key] == json.loads(value)


@pytest.mark.parametrize("args", [["--method", "dfq"], ["--method", "squant", "--equalize"],
                                  ["--method", "pdquant", "--option", "iterations=5"]])
def test_document_000_methods_round_trip(args, tmp_path, capsys) -> None:
    # DFQ's CLE rewrites float weights and biases, SQuant and PD-Quant freeze their own codes: the file keeps them
    splits = load_dataset("synthetic", seed=0, input_shape=(3, 8, 8), size=120, calib_size=16)
    torch.manual_seed(0)
    spec = model_spec("mobilenetv2-small", (3, 8, 8), 10, width_mult=0.25, last_channels=32)
    model = model_from_spec(spec)
    with torch.no_grad():
        model(splits.train.tensors[0])
    model.eval()
    path = tmp_path / "mnv2.safetensors"
    learnq.save(model, path, metadata={"model": spec, "data": splits.preprocessing})
    out = tmp_path / "q.safetensors"
    code, text, _ = _run(capsys, "quantize", str(path), *args, "--wbits", "4", "--abits", "8", "--calib", "16",
                         "--out", str(out), "--json")
    assert code == 0
    report = json.loads(text)
    assert report["accuracy"] == report["accuracy_before_save"]
    assert learnq.load(out).metadata["ptq_config"]["equalize"] == ("--equalize" in args)


def test_codec_ans_writes_entropy_coded_codes_with_the_same_weights(model_file, tmp_path, capsys) -> None:
    pytest.importorskip("constriction")
    path, _, _ = model_file
    files = {}
    for codec in ("packed", "ans"):
        files[codec] = tmp_path / f"{codec}.safetensors"
        code, text, _ = _run(capsys, "quantize", str(path), "--method", "minmax", "--wbits", "4", "--abits", "8",
                             "--calib", "32", "--out", str(files[codec]), "--codec", codec, "--json")
        assert code == 0
        report = json.loads(text)
        assert report["codec"] == codec and report["file_bytes"] == files[codec].stat().st_size
    packed, coded = learnq.load(files["packed"]), learnq.load(files["ans"])
    assert coded.codecs and set(coded.codecs.values()) <= {"ans", "pco"} and packed.codecs == {}  # rANS or pcodec
    for name, qt in packed.entries.items():
        other = coded.entries[name]
        assert torch.equal(qt.codes if hasattr(qt, "codes") else qt, other.codes if hasattr(other, "codes") else other)
    assert coded.size.stored_bytes < packed.size.stored_bytes == coded.size.packed_bytes
    code, text, _ = _run(capsys, "inspect", str(files["ans"]))
    assert code == 0 and "codec" in text and "entropy bound (ans)" in text
    code, text, _ = _run(capsys, "inspect", str(files["ans"]), "--json")
    totals = json.loads(text)["totals"]
    assert totals["stored_bytes"] < totals["packed_bytes"] and totals["bound_bytes"] > 0
    with pytest.raises(SystemExit) as exc:  # argparse's choices: exit status 2
        _run(capsys, "quantize", str(path), "--codec", "zip")
    assert exc.value.code == 2
