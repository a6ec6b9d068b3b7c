"""The training checkpoint: everything needed to continue a run bit-exactly, in a file that holds no pickled objects.

``checkpoint_dir/last.pt`` is written by ``torch.save`` after every epoch (to a temporary file, then renamed, so a
crash while writing leaves the previous one intact) and read with ``torch.load(..., weights_only=True)``. It is a
dict of tensors and plain Python values: model state, optimizer state, scheduler state, the RNG states of every
process (torch, CUDA, NumPy, Python, the data loader's generator), completed epochs, the history and the config.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from learnq.atomic_file import write_atomic
from learnq.errors import CheckpointError, ConfigError
from learnq.pipeline.train import distributed as D
from learnq.pipeline.train.config import TrainConfig
from learnq.pipeline.train.seeding import restore_rng_state, set_seed

FORMAT = "learnq.train-state"
VERSION = 1
FILENAME = "last.pt"

# fields of TrainConfig that may change between a run and its resumption
_MAY_CHANGE = {"epochs", "device"}

_PLAIN = (int, float, bool, str, type(None), torch.Tensor)


def checkpoint_path(checkpoint_dir: str | os.PathLike) -> Path:
    return Path(checkpoint_dir) / FILENAME


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``CheckpointError`` naming the first value that is not a tensor, plain value or container of them."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise CheckpointError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"{where} is a {type(obj).__name__}, which a weights-only checkpoint cannot hold; keep only tensors, numbers, "
        "strings, None, lists and dicts in optimizer param groups and history records"
    )


def save_state(checkpoint_dir: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (plus format and version) atomically to ``checkpoint_dir/last.pt``; returns the path."""
    payload = {"format": FORMAT, "version": VERSION, **state}
    check_plain(payload)
    directory = Path(checkpoint_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create checkpoint_dir {str(directory)!r}: {exc}") from exc
    path = checkpoint_path(directory)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    try:
        write_atomic(path, buffer.getbuffer())
    except OSError as exc:
        raise CheckpointError(f"cannot write the training checkpoint {str(path)!r}: {exc}") from exc
    return path


def load_state(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """Read ``checkpoint_dir/last.pt`` (weights only, onto the CPU) and check its format and version."""
    path = checkpoint_path(checkpoint_dir)
    if not path.is_file():
        raise CheckpointError(
            f"no training checkpoint to resume from: {str(path)!r} does not exist; run without resume to start fresh"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupted or not a torch file: torch raises many kinds
        raise CheckpointError(
            f"cannot read the training checkpoint {str(path)!r} ({type(exc).__name__}: {exc}); delete it to start fresh"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a learnq training checkpoint (format {FORMAT!r})")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{str(path)!r} is a training checkpoint of version {state.get('version')!r}; this learnq reads version "
            f"{VERSION}: start a fresh run"
        )
    missing = [k for k in ("epoch", "config", "model", "optimizer", "scheduler", "rng", "history") if k not in state]
    if missing:
        raise CheckpointError(f"{str(path)!r} misses {missing}; delete it to start fresh")
    return state


def check_resumable(saved_config: dict[str, Any], config: dict[str, Any], path: str) -> None:
    """``CheckpointError`` unless ``config`` continues the run that wrote ``saved_config`` exactly."""
    changed = sorted(
        k for k in set(saved_config) | set(config) if k not in _MAY_CHANGE and saved_config.get(k) != config.get(k)
    )
    if changed:
        details = ", ".join(f"{k}: {saved_config.get(k)!r} -> {config.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"the checkpoint {path!r} was written with another training config ({details}); resume with the same "
            "options or start a fresh run in another checkpoint_dir"
        )
    if saved_config.get("epochs") != config.get("epochs"):
        fixed_length = config.get("scheduler") == "cosine" or (
            config.get("scheduler") == "step" and config.get("lr_step_size") is None
        )
        if fixed_length:
            raise CheckpointError(
                f"the checkpoint {path!r} was written for epochs={saved_config.get('epochs')} and its "
                f"{config.get('scheduler')!r} lr schedule depends on the number of epochs; resume with "
                f"epochs={saved_config.get('epochs')} (or use scheduler='step' with lr_step_size set)"
            )


def restore_training(
    checkpoint_dir: str,
    config: TrainConfig,
    ctx: D.DistContext,
    raw: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    loader_gen: torch.Generator,
) -> tuple[int, list[dict]]:
    """Load ``last.pt`` into the model, optimizer, scheduler and RNGs; returns (completed epochs, history)."""
    path = str(checkpoint_path(checkpoint_dir))
    state = load_state(checkpoint_dir)
    check_resumable(state["config"], config.to_dict(), path)
    epoch = int(state["epoch"])
    epochs_seen = D.gather_objects(epoch, ctx)
    if len(set(epochs_seen)) != 1:
        raise CheckpointError(
            f"the processes read different checkpoints from {path!r} (epochs {epochs_seen}); checkpoint_dir must be "
            "one folder that every process sees (a shared file system)"
        )
    if epoch > config.epochs:
        raise ConfigError(f"the checkpoint {path!r} is at epoch {epoch}, past config.epochs={config.epochs}")
    try:
        raw.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"the model state in {path!r} does not fit this model: {exc}") from exc
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(
            f"the optimizer state in {path!r} does not fit this optimizer (same extra_params groups?): {exc}"
        ) from exc
    if (scheduler is None) != (state["scheduler"] is None):
        raise CheckpointError(f"{path!r} and the config disagree on whether there is an lr scheduler")
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"]
    if len(rngs) == ctx.world_size:
        restore_rng_state(rngs[ctx.rank], {"loader": loader_gen})
    else:
        warnings.warn(
            f"{path!r} was written by {len(rngs)} processes, this run has {ctx.world_size}: weights, optimizer and "
            "data order continue exactly, random draws inside the model (dropout, noise) start from fresh seeds",
            stacklevel=3,
        )
        set_seed((config.seed + 7919 * epoch + ctx.rank) % 2**32)
    return epoch, list(state["history"])


__all__ = [
    "FILENAME",
    "checkpoint_path",
    "check_plain",
    "save_state",
    "load_state",
    "check_resumable",
    "restore_training",
]
