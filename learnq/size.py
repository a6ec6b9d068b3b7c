"""Model sizes, honestly: naive, stored, entropy-coded and zlib-compressed (DiffQ seeds/003 §3.3, Eq. 12).

:func:`size_report` gives the per-tensor sizes and totals of a model (as :func:`learnq.save` would write it), of a
read :class:`learnq.model_file.ModelFile`, or of a model file on disk; the accounting itself (what each number
means) is :mod:`learnq.accounting`, whose names this module re-exports.
"""

from __future__ import annotations

import os

from torch import nn

from learnq.accounting import SizeReport, TensorSize, entropy_bits, report_for, tensor_size
from learnq.errors import ConfigError
from learnq.model_file import ModelFile, read
from learnq.quantized import model_entries


def size_report(model_or_file: nn.Module | ModelFile | str | os.PathLike) -> SizeReport:
    """Sizes of a model (as :func:`learnq.save` would write it), of a read :class:`ModelFile`, or of a file path."""
    if isinstance(model_or_file, nn.Module):
        return report_for(model_entries(model_or_file))
    if isinstance(model_or_file, (str, os.PathLike)):
        model_or_file = read(model_or_file)
    if isinstance(model_or_file, ModelFile):
        return report_for(model_or_file.entries, model_or_file.file_bytes)
    raise ConfigError(f"size_report takes a model, a ModelFile or a path, got {type(model_or_file).__name__}")


__all__ = ["SizeReport", "TensorSize", "entropy_bits", "report_for", "size_report", "tensor_size"]
