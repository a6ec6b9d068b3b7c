"""The registry of quantization variants a recipe (``[[variants]]``) or the demo can ask for.

No paper of its own: each entry points at the module that implements its method. A variant is a function

    apply(model, splits, variant, seed, device) -> nn.Module

that receives a *copy* of the trained float model (on ``device``), the data ``Splits`` (``splits.calib`` is the
calibration set, drawn from the training data), the recipe's :class:`learnq.pipeline.recipe.VariantSection` (bits,
grid, parameter selection, and the method's own ``options`` with defaults filled in) and the seed, and returns the
quantized model (the same object or a new one). The pipeline then saves it with ``learnq.checkpoint.save``, reloads
the file and evaluates the reloaded model.

Registered here: ``float`` (the float32 baseline, nothing quantized) and ``minmax`` (weight-only min-max PTQ,
``learnq.ptq.quantize_weights``, METHODS.md §0; per-channel symmetric by default). Later methods register themselves
with :func:`register_variant` (in this file, so that ``learnq list methods`` and recipe validation see them), e.g.::

    register_variant(VariantInfo("lapq", "LAPQ: loss-aware PTQ (seeds/001)", apply_lapq,
                                 options={"p_grid": 10, "powell_iters": 2}, needs_calibration=True))

``options`` holds the defaults of the method's own recipe keys; the type of each default is the type a recipe
must give (None: any value), so unknown or mistyped options are refused before anything runs.
``QAT_METHODS`` is the matching registry for a recipe's ``[qat]`` section (quantizers attached before training).
The training-time quantizers (``nested``, ``diffq``, ``ste``, ``lsq``) register themselves in both registries from
:mod:`learnq.pipeline.qat_variants`, and the PTQ methods of ``learnq.ptq`` (``minmax`` with ``abits``, ``mse``, ``lp``,
``aciq``, ``kl``, ``adaround``, ``lapq``) from :mod:`learnq.pipeline.ptq_variants`, both imported at the end of this
module.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from learnq.attach import BitsRule
from learnq.errors import ConfigError
from learnq.pipeline.schema import type_name
from learnq.ptq.ptq_weight import quantize_weights

if TYPE_CHECKING:  # only for annotations: recipe.py imports this module
    from learnq.pipeline.data import Splits
    from learnq.pipeline.recipe import VariantSection

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
    """One training-time quantization method for a recipe's ``[qat]`` section.

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


VARIANTS: dict[str, VariantInfo] = {}
QAT_METHODS: dict[str, QATInfo] = {}


def register_variant(info: VariantInfo, *, replace: bool = False) -> VariantInfo:
    """Add ``info`` to :data:`VARIANTS` (``ConfigError`` if the name is taken and ``replace`` is False)."""
    if info.name in VARIANTS and not replace:
        raise ConfigError(f"a variant named {info.name!r} is already registered; pass replace=True to override it")
    VARIANTS[info.name] = info
    return info


def register_qat(info: QATInfo, *, replace: bool = False) -> QATInfo:
    """Add ``info`` to :data:`QAT_METHODS` (``ConfigError`` if the name is taken and ``replace`` is False)."""
    if info.name in QAT_METHODS and not replace:
        raise ConfigError(f"a QAT method named {info.name!r} is already registered; pass replace=True to override it")
    QAT_METHODS[info.name] = info
    return info


def get_variant(name: str) -> VariantInfo:
    """The registry entry of variant ``name``; ``ConfigError`` listing the known ones otherwise."""
    if not isinstance(name, str) or name not in VARIANTS:
        raise ConfigError(f"unknown quantization method {name!r}; registered methods: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def get_qat(name: str) -> QATInfo:
    """The registry entry of QAT method ``name``; ``ConfigError`` otherwise."""
    if not isinstance(name, str) or name not in QAT_METHODS:
        known = ", ".join(QAT_METHODS) if QAT_METHODS else "none is registered yet"
        raise ConfigError(f"unknown QAT method {name!r}; registered QAT methods: {known}")
    return QAT_METHODS[name]


def check_options(defaults: Mapping[str, Any], options: Mapping[str, Any], path: str) -> dict[str, Any]:
    """``options`` checked against ``defaults`` (unknown key or a type other than the default's: ``ConfigError``
    naming ``path.key``); returns the defaults overridden by ``options``."""
    for key, value in options.items():
        where = f"{path}.{key}"
        if key not in defaults:
            known = ", ".join(defaults) if defaults else "none"
            raise ConfigError(f"{where}: unknown option; this method's options are: {known}")
        default = defaults[key]
        if default is None:
            continue
        expected: tuple[type, ...] = (float, int) if isinstance(default, float) else (type(default),)
        wrong_bool = isinstance(value, bool) and not isinstance(default, bool)
        if wrong_bool or not isinstance(value, expected):
            raise ConfigError(f"{where}: expected {type_name(default)}, got {type_name(value)} ({value!r})")
    return {**defaults, **options}


def apply_variant(model: nn.Module, splits: Splits, variant: VariantSection, seed: int = 0,
                  device: str = "cpu") -> nn.Module:
    """Run the registered method of ``variant`` on ``model`` (changed in place: pass a copy) and return the result."""
    info = get_variant(variant.method)
    out = info.apply(model, splits, variant, seed, device)
    if not isinstance(out, nn.Module):
        raise TypeError(f"variant {info.name!r} returned {type(out).__name__}, not an nn.Module")  # a bug, not input
    return out


# -- the built-in variants ---------------------------------------------------------------------------------------


def apply_float(model: nn.Module, splits: Splits, variant: VariantSection, seed: int, device: str) -> nn.Module:
    """The float32 baseline: the trained model unchanged."""
    return model


def apply_minmax(model: nn.Module, splits: Splits, variant: VariantSection, seed: int, device: str) -> nn.Module:
    """Weight-only min-max PTQ on ``variant.grid_spec()`` (per-channel symmetric unless the recipe says otherwise)."""
    rule = BitsRule(variant.weight_bits, dict(variant.bits_overrides)) if variant.bits_overrides else None
    quantize_weights(model, variant.grid_spec(), selection=variant.select, bits=rule, method="minmax")
    return model


register_variant(VariantInfo("float", "float32 baseline: the trained model, nothing quantized", apply_float,
                             quantizes=False))
register_variant(VariantInfo("minmax", "weight-only min-max PTQ (per-channel symmetric by default), no calibration",
                             apply_minmax))


# the training-time quantizers (learnq.pipeline.qat_variants) and every PTQ method of learnq.ptq (ptq_variants:
# minmax with abits, mse, lp, aciq, kl, adaround, lapq) register themselves; both modules import the names above
from learnq.pipeline import ptq_variants as _ptq_variants  # noqa: E402,F401
from learnq.pipeline import qat_variants as _qat  # noqa: E402,F401

__all__ = ["VARIANTS", "QAT_METHODS", "VariantInfo", "QATInfo", "VariantFn", "register_variant", "register_qat",
           "get_variant", "get_qat", "check_options", "apply_variant", "apply_float", "apply_minmax"]
