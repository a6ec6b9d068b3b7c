"""What the trainer optimizes and how: the optimizer over the model's parameters plus extra param groups, and the
per-epoch learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from learnq.errors import ConfigError, ModelError
from learnq.pipeline.train.config import TrainConfig


def build_optimizer(
    model: nn.Module, config: TrainConfig, extra_params: list[dict] | None = None
) -> tuple[torch.optim.Optimizer, list[torch.Tensor]]:
    """The optimizer over the model's trainable parameters, with ``extra_params`` groups appended.

    A parameter named in an extra group is taken out of the model's group (so a model's bit logits or step sizes can
    get their own lr). Returns the optimizer and the extra parameters that are not in the model.
    """
    groups: list[dict] = []
    extra_ids: set[int] = set()
    for i, group in enumerate(extra_params or []):
        if not isinstance(group, Mapping) or "params" not in group:
            raise ConfigError(f"extra_params[{i}] must be a dict with a 'params' key (an optimizer param group)")
        params = [group["params"]] if isinstance(group["params"], torch.Tensor) else list(group["params"])
        for p in params:
            if not isinstance(p, torch.Tensor) or not p.requires_grad:
                raise ConfigError(f"extra_params[{i}]['params'] must hold tensors with requires_grad=True")
            if id(p) in extra_ids:
                raise ConfigError(f"extra_params[{i}] repeats a parameter of an earlier extra group")
            extra_ids.add(id(p))
        lr = group.get("lr", config.lr)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr < 0:
            raise ConfigError(f"extra_params[{i}]['lr'] must be a finite number >= 0, got {lr!r}")
        groups.append({**group, "params": params})
    model_params = [p for p in model.parameters() if p.requires_grad]
    main = [p for p in model_params if id(p) not in extra_ids]
    if main:
        groups.insert(0, {"params": main})
    if not groups:
        raise ModelError(
            "the model has no parameter with requires_grad=True and extra_params is empty: nothing to train"
        )
    model_ids = {id(p) for p in model.parameters()}
    external = [p for g in groups[1 if main else 0 :] for p in g["params"] if id(p) not in model_ids]
    if config.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    elif config.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    else:
        opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return opt, external


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch lr schedule named by ``config.scheduler`` (None for 'none')."""
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.lr_gamma)
    return None


__all__ = ["build_optimizer", "build_scheduler"]
