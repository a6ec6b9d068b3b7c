"""Optimizer wrappers: ASAM (adaptive sharpness-aware minimization), used to train quantization-robust models."""

from __future__ import annotations

from learnq.optim.asam import ASAM, is_weight_name

__all__ = ["ASAM", "is_weight_name"]
