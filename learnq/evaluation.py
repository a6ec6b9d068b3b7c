"""The classification objective (cross-entropy and accuracy) and model evaluation on a data set.

Targets are class indices of shape (N,) or class probabilities of shape (N, C); the model returns logits (N, C).
A sequence model (the language model of learnq.pipeline.models.transformer) returns logits (N, T, C) for targets
(N, T): the loss is the mean cross-entropy over all N·T positions and the "correct" count of a sequence is its share of
positions predicted right, so accuracy is per token. ``task_metrics`` adds what a language model reports: bits per
character (loss / ln 2) and perplexity (e^loss) of the loss in nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from learnq.errors import ConfigError, DataError


def split_batch(batch: object) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` of a collated batch; ``DataError`` for anything else."""
    if not isinstance(batch, (list, tuple)) or len(batch) != 2:
        kind = f"a sequence of {len(batch)}" if isinstance(batch, (list, tuple)) else type(batch).__name__
        raise DataError(f"each data set item must be an (input, target) pair, got {kind}")
    return batch[0], batch[1]


def task_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and the number of correct predictions (a 0-d tensor) of one batch."""
    if logits.ndim == 3 and target.ndim == 2 and not target.is_floating_point():  # (N, T, C) and (N, T)
        if target.shape != logits.shape[:2]:
            raise DataError(f"targets of shape {tuple(target.shape)} for sequence logits {tuple(logits.shape)}")
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())  # (N·T, C), (N·T): mean over positions
        correct = (logits.argmax(dim=2) == target).float().mean(dim=1).sum()  # sum over sequences of token accuracy
        return loss, correct
    if logits.ndim != 2:
        raise DataError(f"the model must return logits of shape (N, C) (or (N, T, C) for (N, T) targets), got shape "
                        f"{tuple(logits.shape)}")
    if target.ndim == 1 and not target.is_floating_point():
        if target.shape[0] != logits.shape[0]:
            raise DataError(f"{target.shape[0]} targets for {logits.shape[0]} inputs in a batch")
        labels = target
    elif target.shape == logits.shape and target.is_floating_point():
        labels = target.argmax(dim=1)
    else:
        raise DataError(
            "targets must be class indices (integer, shape (N,)) or class probabilities (float, shape (N, C)), "
            f"got {target.dtype} of shape {tuple(target.shape)} for logits of shape {tuple(logits.shape)}"
        )
    loss = F.cross_entropy(logits, target)
    correct = (logits.argmax(dim=1) == labels).sum()
    return loss, correct


@torch.no_grad()
def eval_sums(model: nn.Module, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """``[sum of per-sample loss, number correct, n]`` (float64, on ``device``) over ``loader``."""
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in loader:
        x, y = split_batch(batch)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        loss, correct = task_loss(model(x), y)
        n = x.shape[0]
        sums[0] += loss.double() * n
        sums[1] += correct
        sums[2] += n
    return sums


def metrics_from_sums(sums: torch.Tensor) -> dict:
    loss_sum, correct, n = (float(v) for v in sums.tolist())
    return {"loss": loss_sum / n, "accuracy": correct / n, "n": int(n)}


def task_metrics(metrics: dict, task: str) -> dict:
    """``metrics`` (from :func:`evaluate`) plus, for ``task == "language-model"``, ``bits_per_char`` (loss / ln 2)
    and ``perplexity`` (e^loss); other tasks unchanged. ``loss`` is the mean cross-entropy in nats per token."""
    if task != "language-model":
        return dict(metrics)
    loss = metrics["loss"]
    return {**metrics, "bits_per_char": loss / math.log(2), "perplexity": math.exp(loss) if loss < 700 else math.inf}


def evaluate(
    model: nn.Module,
    dataset_or_loader: Dataset | DataLoader,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> dict:
    """Mean cross-entropy, accuracy and sample count of ``model`` on a data set or loader.

    The model is moved to ``device`` and run in eval mode without gradients; its train/eval mode is restored
    afterwards. Returns ``{"loss": float, "accuracy": float in [0, 1], "n": int}``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(dataset_or_loader, DataLoader):
        loader = dataset_or_loader
    else:
        try:
            size = len(dataset_or_loader)  # type: ignore[arg-type]
        except TypeError:
            raise DataError("evaluate needs a Dataset with a length or a DataLoader") from None
        if size == 0:
            raise DataError("the evaluation data set is empty; give at least one (input, target) pair")
        loader = DataLoader(dataset_or_loader, batch_size=batch_size, shuffle=False)
    dev = torch.device(device)
    was_training = model.training
    model.to(dev)
    model.eval()
    try:
        sums = eval_sums(model, loader, dev)
    finally:
        model.train(was_training)
    if sums[2].item() == 0:
        raise DataError("the evaluation loader yielded no samples")
    return metrics_from_sums(sums)


__all__ = ["evaluate", "task_loss", "task_metrics", "split_batch", "eval_sums", "metrics_from_sums"]
