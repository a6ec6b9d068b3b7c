"""Pipeline model files read back: a run directory's ``model.safetensors`` or a variant's file, the network and the
test data its metadata describes (``learnq eval``, ``learnq quantize``, ``learnq export``). No paper.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from learnq.checkpoint import load, read
from learnq.errors import CheckpointError, ConfigError
from learnq.evaluation import evaluate, task_metrics
from learnq.grid import FLOAT_BITS
from learnq.pipeline.data import Splits, dataset_from_preprocessing
from learnq.pipeline.models import model_from_spec

MODEL_FILE = "model.safetensors"
EVAL_BATCH = 256


def resolve_model_file(path: str | os.PathLike) -> Path:
    """A model file, or a run directory's ``model.safetensors``."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / MODEL_FILE
        if not p.is_file():
            raise CheckpointError(f"{p.parent} is a directory without {MODEL_FILE}; give a run directory written by "
                                  "`learnq train`/`learnq run`, or a model file")
    elif not p.exists():
        raise CheckpointError(f"no such model file or run directory: {p}")
    return p


def rebuild(path: str | os.PathLike, *, device: str = "cpu") -> tuple[nn.Module, Splits, dict]:
    """The network (weights loaded) and the data ``Splits`` a pipeline model file describes, and its metadata."""
    p = resolve_model_file(path)
    mf = read(p)
    meta = mf.metadata
    missing = [k for k in ("model", "data") if k not in meta]
    if missing:
        raise CheckpointError(f"{p} has no pipeline metadata ({', '.join(missing)} missing): it was saved from user "
                              "code, so learnq cannot rebuild its network; load it into your model with "
                              "learnq.load(path, model)")
    model = model_from_spec(meta["model"], device="cpu")
    load(p, model, device=device)
    splits = dataset_from_preprocessing(meta["data"])
    return model, splits, meta


def evaluate_file(path: str | os.PathLike, *, device: str = "cpu") -> dict:
    """``learnq eval``: rebuild the model and its test split from the file's metadata and evaluate it.

    Returns ``{"file", "model", "data", "method", "bits", "abits", "loss", "accuracy", "n"}`` (``abits`` 32: float
    activations), plus ``bits_per_char`` and ``perplexity`` for a language model (``task_metrics``).
    """
    try:
        torch_device = str(torch.device(device))
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from exc
    model, splits, meta = rebuild(path, device=torch_device)
    metrics = task_metrics(evaluate(model, splits.test, device=torch_device, batch_size=EVAL_BATCH), splits.task)
    variant = meta.get("variant") or {}
    qat = (meta.get("recipe") or {}).get("qat") or {}
    method = variant.get("method") or qat.get("method") or "float"
    bits = variant.get("bits") or (meta.get("metrics") or {}).get("bits") or 32
    return {"file": str(resolve_model_file(path)), "model": meta["model"]["name"], "data": meta["data"]["name"],
            "method": method, "bits": bits,
            "abits": variant.get("abits") or (qat.get("options") or {}).get("abits") or FLOAT_BITS, **metrics}


__all__ = ["EVAL_BATCH", "MODEL_FILE", "evaluate_file", "rebuild", "resolve_model_file"]
