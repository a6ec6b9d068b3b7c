"""The trainer's configuration (``TrainConfig``), its result (``TrainResult``) and the callable types it accepts."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from learnq.errors import ConfigError

OPTIMIZERS = ("adam", "sgd", "adamw")
SCHEDULERS = ("none", "cosine", "step")

LossTerm = Callable[[nn.Module], torch.Tensor]
"""An extra loss term: called with the (unwrapped) model at every step, returns a scalar added to the task loss."""

Callback = Callable[[dict, nn.Module], "bool | None"]
"""Called on every process after each epoch (and its checkpoint) with that epoch's history record and the model;
returning True stops training after this epoch (rank 0's answer counts)."""


@dataclass
class TrainConfig:
    """How to train: optimizer, schedule, batch, seed, device.

    ``batch_size`` is the global batch: under torchrun it is split evenly over the processes. Schedulers step once per
    epoch: ``cosine`` anneals the lr of every group to 0 over ``epochs``; ``step`` multiplies it by ``lr_gamma`` every
    ``lr_step_size`` epochs (None: a third of the epochs). ``momentum`` is SGD's momentum (Adam/AdamW keep their
    default betas). ``ddp_find_unused_parameters`` is passed to DistributedDataParallel for models with parameters
    that get no gradient in some steps.
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"  # adam|sgd|adamw
    momentum: float = 0.9
    weight_decay: float = 0.0
    scheduler: str = "none"  # none|cosine|step
    seed: int = 0
    device: str = "cpu"
    grad_clip: float | None = None
    lr_step_size: int | None = None
    lr_gamma: float = 0.1
    ddp_find_unused_parameters: bool = False

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first field with a bad value."""
        _int(self.epochs, "epochs", minimum=1)
        _int(self.batch_size, "batch_size", minimum=1)
        _real(self.lr, "lr", low=0.0, low_open=True)
        _choice(self.optimizer, "optimizer", OPTIMIZERS)
        _real(self.momentum, "momentum", low=0.0, high=1.0)
        if self.momentum == 1.0:
            raise ConfigError("momentum must be in [0, 1), got 1.0")
        _real(self.weight_decay, "weight_decay", low=0.0)
        _choice(self.scheduler, "scheduler", SCHEDULERS)
        _int(self.seed, "seed", minimum=0)
        if self.seed > 2**32 - 1024:
            raise ConfigError(f"seed must be < {2**32 - 1024}, got {self.seed}")
        if not isinstance(self.device, (str, torch.device)):
            raise ConfigError(f"device must be a string such as 'cpu' or 'cuda:0', got {self.device!r}")
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ConfigError(f"device must be a torch device such as 'cpu' or 'cuda:0', got {self.device!r}") from None
        if self.grad_clip is not None:
            _real(self.grad_clip, "grad_clip", low=0.0, low_open=True)
        if self.lr_step_size is not None:
            _int(self.lr_step_size, "lr_step_size", minimum=1)
        _real(self.lr_gamma, "lr_gamma", low=0.0, low_open=True)
        if not isinstance(self.ddp_find_unused_parameters, bool):
            raise ConfigError(f"ddp_find_unused_parameters must be a bool, got {self.ddp_find_unused_parameters!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain values only (JSON- and checkpoint-safe)."""
        out = dataclasses.asdict(self)
        out["device"] = str(self.device)
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a mapping (a recipe's ``[train]`` table); unknown keys raise ``ConfigError``; validated."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown training option(s) {unknown}; valid options: {sorted(known)}")
        config = cls(**dict(values))
        config.validate()
        return config

    @property
    def step_size(self) -> int:
        """Epochs between lr decays of the ``step`` scheduler."""
        return self.lr_step_size if self.lr_step_size is not None else max(1, self.epochs // 3)


@dataclass
class TrainResult:
    """The trained model and one history record per epoch.

    Each record: ``epoch`` (1-based), ``train_loss`` and ``train_acc`` (task loss and accuracy over the epoch's
    training batches, at the weights of each step, before its update), ``test_loss`` and ``test_acc`` (None without a
    test set), ``extra`` (name -> mean over the epoch's steps of each extra loss term), ``lr`` (first group's lr
    during the epoch) and ``seconds``.
    """

    history: list[dict]
    model: nn.Module
    resumed_from_epoch: int | None = None  # with resume: the epochs the checkpoint had done (training went on after)


def _int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ConfigError(f"{name} must be an int >= {minimum}, got {value}")


def _real(value: Any, name: str, low: float, high: float | None = None, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    bad = not math.isfinite(v) or v < low or (low_open and v == low) or (high is not None and v > high)
    if bad:
        lo = f"> {low}" if low_open else f">= {low}"
        hi = f" and <= {high}" if high is not None else ""
        raise ConfigError(f"{name} must be a finite number {lo}{hi}, got {value!r}")


def _choice(value: Any, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")


__all__ = ["TrainConfig", "TrainResult", "LossTerm", "Callback", "OPTIMIZERS", "SCHEDULERS"]
