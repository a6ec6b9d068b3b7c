"""Model files whose JSON metadata nests absurdly deep (a crafted 5 KB file holding 200,000 levels) are refused with
a CheckpointError by ``learnq.load``, ``learnq inspect`` and ``learnq eval`` (exit 2, one line), never a
RecursionError; and ``learnq.save`` does not write metadata that ``load`` would refuse."""

from __future__ import annotations

import base64
import json
import os
import zlib

import pytest
import safetensors.torch
import torch
from torch import nn

import learnq
from learnq.checkpoint import MAX_JSON_DEPTH
from learnq.cli import main
from learnq.errors import CheckpointError, ConfigError

DEEP = 200_000


def _crafted(path, *, inner: bytes | None = None, header_extra: bytes | None = None) -> str:
    """A file laid out as learnq.save writes it, with no tensors and the given learnq JSON (inner) or a raw
    safetensors header with ``header_extra`` spliced in."""
    inner = inner if inner is not None else b'{"metadata":{},"grids":[],"tensors":[]}'
    outer = json.dumps({"format": "learnq", "version": 1, "crc32": zlib.crc32(inner),
                        "zlib": base64.b64encode(zlib.compress(inner, 9)).decode("ascii")}, separators=(",", ":"))
    if header_extra is None:
        safetensors.torch.save_file({}, str(path), metadata={"learnq": outer})
    else:
        header = b'{"__metadata__":{"learnq":' + json.dumps(outer).encode() + b'},"x":' + header_extra + b"}"
        header += b" " * (-len(header) % 8)
        path.write_bytes(len(header).to_bytes(8, "little") + header)
    return str(path)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.fixture
def deep_file(tmp_path):
    inner = b'{"metadata":{"model":' + _nested(DEEP) + b'},"grids":[],"tensors":[]}'
    path = _crafted(tmp_path / "deep.safetensors", inner=inner)
    assert os.path.getsize(path) < 8192  # what the trial found: a few KB of file
    return path


def test_load_refuses_deep_metadata(deep_file):
    with pytest.raises(CheckpointError, match=f"nests more than {MAX_JSON_DEPTH} levels"):
        learnq.load(deep_file)
    with pytest.raises(CheckpointError, match="nests more than"):
        learnq.load(deep_file, nn.Linear(2, 2))


def test_a_deep_safetensors_header_is_refused_too(tmp_path):
    path = _crafted(tmp_path / "h.safetensors", header_extra=_nested(DEEP))
    with pytest.raises(CheckpointError, match="nests more than"):
        learnq.load(path)


@pytest.mark.parametrize("command", ["inspect", "eval"])
def test_inspect_and_eval_exit_2_with_one_line(command, deep_file, capsys):
    capsys.readouterr()
    assert main([command, deep_file]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"learnq {command}: error: ") and "nests more than" in err


def test_depth_at_the_limit_round_trips_and_save_refuses_deeper(tmp_path):
    model = nn.Linear(3, 2)
    inside = MAX_JSON_DEPTH - 2  # the file's JSON adds {"metadata": {"k": ...}}: two levels
    value: object = 1
    for _ in range(inside):
        value = [value]
    learnq.save(model, tmp_path / "ok.safetensors", metadata={"k": value})
    assert learnq.load(tmp_path / "ok.safetensors").metadata == {"k": value}
    fresh = learnq.load(tmp_path / "ok.safetensors", nn.Linear(3, 2))
    assert torch.equal(fresh.weight, model.weight)
    with pytest.raises(ConfigError, match=f"metadata .* nests more than {MAX_JSON_DEPTH - 2} levels"):
        learnq.save(model, tmp_path / "deep.safetensors", metadata={"k": [value]})
    assert not (tmp_path / "deep.safetensors").exists()
    with pytest.raises(ConfigError, match="nests more than"):  # too deep even for json.dumps: still a ConfigError
        deep: object = 0
        for _ in range(DEEP):
            deep = [deep]
        learnq.save(model, tmp_path / "deeper.safetensors", metadata={"k": deep})


def test_brackets_inside_strings_do_not_count(tmp_path):
    model = nn.Linear(2, 2)
    learnq.save(model, tmp_path / "s.safetensors", metadata={"k": "[" * 10_000 + '"\\' + "{" * 10_000})
    assert learnq.load(tmp_path / "s.safetensors").metadata["k"].startswith("[[[")
