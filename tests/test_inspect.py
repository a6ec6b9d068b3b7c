"""``learnq inspect``: the table, --json (numbers equal to the size report) and bad files (exit 2, one line)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from learnq.checkpoint import read, save
from learnq.cli import main
from learnq.granularity import Granularity
from learnq.grid import GridSpec, quantize_tensor
from learnq.quantized import attach_quantized


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    attach_quantized(model, "0.weight", quantize_tensor(model[0].weight.detach(), GridSpec(
        bits=3, scheme="affine", granularity=Granularity.parse("group:7")), method="lapq"))
    path = tmp_path / "model.lq"
    report = save(model, path, metadata={"task": "unit-test", "accuracy": 0.875, "long": "x" * 500}, report=True)
    return path, report


def test_table(model_file, capsys):
    path, report = model_file
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    row = next(line.split() for line in lines if line.startswith("0.weight"))
    assert row == ["0.weight", "32x16", "3", "group:7", "lapq", str(report.tensors[1].stored_bytes),
                   str(round(report.tensors[1].entropy_bits / 8))]
    assert next(line.split() for line in lines if line.startswith("2.weight"))[1:5] == ["4x32", "float32", "-", "-"]
    assert f"file  {report.file_bytes}".split() in [line.split() for line in lines]
    assert f"stored  {report.stored_bytes}".split() in [line.split() for line in lines]
    assert f"header  {report.file_bytes - report.stored_bytes}".split() in [line.split() for line in lines]
    # per tensor, the bytes are those of its slices in the file
    slices = read(path).slices
    for name in ("0.weight", "0.bias", "2.weight"):
        row = next(line.split() for line in lines if line.startswith(name + " "))
        assert int(row[5]) == sum(s.nbytes for s in slices[name])
    assert any(line.split()[-1] == f"{report.ratio:.2f}x" for line in lines if line.startswith("ratio"))
    assert "  task: unit-test" in lines and "  accuracy: 0.875" in lines
    assert max(len(line) for line in lines) < 120  # long metadata values are cut


def test_json(model_file, capsys):
    path, report = model_file
    assert main(["inspect", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["metadata"]["task"] == "unit-test" and data["format_version"] == 1
    assert data["totals"]["file_bytes"] == path.stat().st_size == report.file_bytes
    assert data["totals"]["zlib_bytes"] == report.zlib_bytes
    assert data["totals"]["naive_bytes"] == report.naive_bytes
    assert data["totals"]["header_bytes"] == report.file_bytes - report.stored_bytes < 1024
    assert [t["name"] for t in data["tensors"]] == ["0.bias", "0.weight", "2.weight", "2.bias"]
    q = next(t for t in data["tensors"] if t["name"] == "0.weight")
    assert (q["bits"], q["granularity"], q["method"], q["shape"]) == (3, "group:7", "lapq", [32, 16])


@pytest.mark.parametrize("content", [b"", b"not a model at all", None])
def test_bad_file(tmp_path, capsys, content):
    path = tmp_path / "bad.lq"
    if content is not None:
        path.write_bytes(content)
    assert main(["inspect", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "bad.lq" in captured.err
    assert captured.err.startswith("learnq inspect: error: ")


def test_corrupted_file(model_file, capsys):
    path, _ = model_file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last byte belongs to some tensor's data
    path.write_bytes(bytes(data))
    assert main(["inspect", str(path), "--json"]) == 2
    err = capsys.readouterr().err
    assert "corrupted" in err and err.count("\n") == 1
