"""What a quantization method of the pipeline is: a variant (``[[variants]]``, applied to a copy of the trained
float model) or a ``[qat]`` section method (applied before training), and the two built-in variants. No paper of its
own: each entry points at the module that implements its method.

A variant is a function

    apply(model, splits, variant, seed, device) -> nn.Module

that receives a *copy* of the trained float model (on ``device``), the data ``Splits`` (``splits.calib`` is the
calibration set, drawn from the training data), the recipe's :class:`learnq.pipeline.sections.VariantSection` (bits,
grid, parameter selection, and the method's own ``options`` with defaults filled in) and the seed, and returns the
quantized model (the same object or a new one). The pipeline then saves it with ``learnq.save``, reloads the file and
evaluates the reloaded model. ``options`` holds the defaults of the method's own recipe keys; the type of each default
is the type a recipe must give (None: any value), so unknown or mistyped options are refused before anything runs
(:func:`learnq.checks.check_options`).

Defined here: ``float`` (the float32 baseline, nothing quantized) and ``minmax`` (weight-only min-max PTQ,
``learnq.ptq.quantize_weights``, METHODS.md §0; per-channel symmetric by default). Every other variant comes from a
method registry (:mod:`learnq.pipeline.qat_variants` for the QAT methods, :mod:`learnq.pipeline.ptq_variants` for
the PTQ methods); :mod:`learnq.pipeline.registry` registers them all and validates recipes against them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from learnq.attach import BitsRule
from learnq.ptq.ptq_weight import quantize_weights

if TYPE_CHECKING:  # annotations only
    from learnq.pipeline.data import Splits
    from learnq.pipeline.sections import VariantSection

VariantFn = Callable[["nn.Module", "Splits", "VariantSection", int, str], nn.Module]


@dataclass(frozen=True)
class VariantInfo:
    """One registered variant.

    quantizes: False for the float baseline (no bits; its report row says 32 bits).
    activations: the method can quantize activations (a recipe may give ``abits``).
    needs_calibration: the method reads ``splits.calib``.
    options: defaults of the method's own recipe keys (``[variants.options]``).
    learned_bits: the method learns its bit-widths (DiffQ, nested): ``bits`` is left out of the recipe and the row
    reports the stored code bits per quantized value instead.
    validate: ``validate(variant, path)``, the method's own recipe-time checks (``ConfigError`` naming ``path``).
    """

    name: str
    description: str  # one line, for `learnq list methods`
    apply: VariantFn
    quantizes: bool = True
    activations: bool = False
    needs_calibration: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)
    learned_bits: bool = False
    validate: Callable[[Any, str], None] | None = None


@dataclass(frozen=True)
class QATInfo:
    """What a recipe's ``[qat]`` section can name: a training-time method (one per QAT method of
    ``learnq.quantizers.QAT_METHODS``, :mod:`learnq.pipeline.qat_variants`, or any other that sets a model up
    before training).

    ``prepare(model, qat, seed, device)`` attaches its quantizers to ``model`` before training and returns a dict of
    keyword arguments for ``learnq.pipeline.train.train`` (``extra_losses``, ``extra_params``, ``optimizer_wrapper``)
    and optionally ``handle``: a ``learnq.QuantHandle`` the pipeline freezes after training. ``validate(qat, path)``:
    the method's own recipe-time checks.
    """

    name: str
    description: str
    prepare: Callable[..., dict[str, Any]]
    options: Mapping[str, Any] = field(default_factory=dict)
    validate: Callable[[Any, str], None] | None = None


def apply_float(model: nn.Module, splits: Splits, variant: VariantSection, seed: int, device: str) -> nn.Module:
    """The float32 baseline: the trained model unchanged."""
    return model


def apply_minmax(model: nn.Module, splits: Splits, variant: VariantSection, seed: int, device: str) -> nn.Module:
    """Weight-only min-max PTQ on ``variant.grid_spec()`` (per-channel symmetric unless the recipe says otherwise)."""
    rule = BitsRule(variant.weight_bits, dict(variant.bits_overrides)) if variant.bits_overrides else None
    quantize_weights(model, variant.grid_spec(), selection=variant.select, bits=rule, method="minmax")
    return model


FLOAT = VariantInfo("float", "float32 baseline: the trained model, nothing quantized", apply_float, quantizes=False)
MINMAX = VariantInfo("minmax", "weight-only min-max PTQ (per-channel symmetric by default), no calibration",
                     apply_minmax)

__all__ = ["FLOAT", "MINMAX", "QATInfo", "VariantFn", "VariantInfo", "apply_float", "apply_minmax"]
