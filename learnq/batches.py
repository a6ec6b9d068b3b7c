"""Calibration and analysis data as batches: the one place learnq turns "some data" into input batches (no paper).

:func:`calibration_batches` takes a tensor of inputs, a Dataset of ``(input, target)`` pairs (or of inputs) or a
DataLoader, yields ``(inputs, targets or None)`` in order, and refuses empty data and inputs holding NaN or Inf
values (:class:`learnq.errors.DataError` naming the batch and sample) before they reach a quantizer.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from learnq.errors import ConfigError, DataError


def _check_finite(x: torch.Tensor, index: int, first: int, what: str) -> None:
    """DataError naming batch ``index`` (its samples from ``first``) when input ``x`` holds NaN or Inf: a data
    problem, reported before it reaches the quantizers (which would blame the weights or the ranges)."""
    if not (x.is_floating_point() or x.is_complex()):
        return
    bad = ~torch.isfinite(x).reshape(x.shape[0], -1)
    if not bool(bad.any()):
        return
    rows = bad.any(dim=1).nonzero().reshape(-1)
    raise DataError(f"{what}: input batch {index} (samples {first}..{first + x.shape[0] - 1}) has "
                    f"{int(bad.sum())} NaN or Inf value(s), the first in sample {first + int(rows[0])}"
                    f"{f' ({rows.numel()} samples)' if rows.numel() > 1 else ''}; clean or drop those samples")


def calibration_batches(data: object, batch_size: int = 256, *,
                        what: str = "calibration data") -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(inputs, targets or None)`` batches of a data set in order: a tensor of inputs, a Dataset of (input, target)
    pairs (or of inputs) or a DataLoader. Raises DataError when it yields nothing or an input holds NaN or Inf
    (naming the batch and sample); ``what`` names the data in errors.
    The one place learnq turns "some data" into batches for calibration and analyses."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if isinstance(data, torch.Tensor):
        if data.ndim == 0 or data.shape[0] == 0:
            raise DataError(f"the {what} tensor is empty; give at least one sample (shape (N, ...))")
        batches: object = ((data[i:i + batch_size], None) for i in range(0, data.shape[0], batch_size))
    elif isinstance(data, DataLoader):
        batches = data
    elif isinstance(data, Dataset):
        if not isinstance(data, IterableDataset):
            try:
                size = len(data)  # type: ignore[arg-type]
            except TypeError:
                raise DataError(f"the {what} set has no length; pass a DataLoader instead") from None
            if size == 0:
                raise DataError(f"the {what} set is empty; give at least one sample")
        batches = DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        raise DataError(f"{what} must be a tensor of inputs, a Dataset or a DataLoader, got {type(data).__name__}")
    seen = 0
    for index, batch in enumerate(batches):  # type: ignore[arg-type]
        if isinstance(batch, (list, tuple)):
            x, y = batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            x, y = batch, None
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{what} batches must hold tensors, got {type(x).__name__}")
        if x.shape[0] == 0:
            continue
        _check_finite(x, index, seen, what)
        seen += x.shape[0]
        yield x, y
    if seen == 0:
        raise DataError(f"the {what} yielded no samples; give at least one")


__all__ = ["calibration_batches"]
