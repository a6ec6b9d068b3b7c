"""Every post-training quantization method of :data:`learnq.ptq.registry.PTQ_METHODS` as a pipeline variant (LAPQ
seeds/001 §5 for the W/A bit configurations; METHODS.md §2 and §6).

A recipe asks for one with::

    [[variants]]
    method = "lapq"          # minmax, mse, lp, aciq, kl, adaround, lapq (`learnq list methods`)
    wbits = 4                # or bits; 32 leaves the weights in float (W32A4: activations only)
    abits = 4                # leave out for float activations (weights only)
    granularity = "tensor"   # the weight grid (the recipe's default is per channel)
    options = { maxiter = 1, calib_samples = 128 }

The variant builds the :class:`learnq.ptq.PTQ` config of its table (method, ``wbits``, ``abits``, granularity,
scheme, ``select``, the PTQ options below and the method's own) and runs ``learnq.ptq.quantize(model,
splits.calib, config, seed=..., device=...)`` on the pipeline's copy of the trained float model; the pipeline saves
the result (activation quantizers, folded BatchNorm pairs and the config are recorded in the file), reloads it and
evaluates the reloaded model. The row's ``bits`` are the weight bits, its ``abits`` the activation
bits (32: float).

``options`` holds the method's own keys (``PTQ_METHODS[name].options``, e.g. lapq's ``maxiter``, aciq's
``distribution``) and the keys of :data:`PTQ_OPTIONS`: the PTQ config's ``bias_correction``,
``variance_correction``, ``act_per_channel``, ``skip_first_last`` (unset: the method's default, LAPQ's is to leave
the first and last layers in float), with the config's defaults, and ``calib_samples`` (use only the first N
samples of the calibration split; 0: all of it).

``minmax`` is both the weight-only min-max PTQ of :mod:`learnq.pipeline.variants` (``bits_overrides`` and
``rounding`` honoured, no calibration) and the PTQ method: without ``abits`` and with the PTQ options at their
defaults it stays the former (same files as before), otherwise it runs ``learnq.ptq.quantize(method="minmax")``.
Rounding other than ``nearest`` and ``bits_overrides`` are refused for PTQ runs (``learnq.ptq`` has neither).

:func:`ptq_variant_info` is the variant of one PTQ method; :func:`learnq.pipeline.registry.register_ptq_variants`
registers one for every PTQ method (call it again after registering a PTQ method of your own).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

from learnq.errors import ConfigError
from learnq.grid import FLOAT_BITS
from learnq.pipeline.variants import VariantInfo, apply_minmax
from learnq.ptq.api import quantize
from learnq.ptq.config import PTQ
from learnq.ptq.context import PTQMethod

if TYPE_CHECKING:
    from learnq.pipeline.data import Splits
    from learnq.pipeline.sections import VariantSection

_CONFIG_OPTIONS = ("bias_correction", "variance_correction", "act_per_channel", "skip_first_last")
PTQ_OPTIONS: dict[str, Any] = {**{name: getattr(PTQ, name) for name in _CONFIG_OPTIONS}, "calib_samples": 0}
"""The pipeline's keys of a PTQ variant's ``options`` (arguments of ``learnq.ptq.quantize``), with their defaults."""


def _ptq_options(variant: VariantSection) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(quantize keyword arguments, method options)`` from the variant's validated options."""
    opts = dict(variant.options)
    common = {key: opts.pop(key, default) for key, default in PTQ_OPTIONS.items()}
    return common, opts


def uses_ptq(variant: VariantSection) -> bool:
    """Whether ``variant`` runs ``learnq.ptq.quantize`` (always, except a plain weight-only ``minmax``)."""
    if variant.method != "minmax" or variant.abits is not None:
        return True
    return any(variant.options.get(key, default) != default for key, default in PTQ_OPTIONS.items())


def validate_ptq_variant(variant: VariantSection, path: str) -> None:
    """Recipe-time checks of a PTQ variant: rounding, bits_overrides and the pipeline's option values."""
    if not uses_ptq(variant):
        return
    if variant.rounding != "nearest":
        raise ConfigError(f"{path}.rounding: learnq.ptq rounds to nearest; remove rounding = {variant.rounding!r}")
    if variant.bits_overrides:
        raise ConfigError(f"{path}.bits_overrides: not supported by PTQ method {variant.method!r}; use select "
                          "(e.g. exclude) to leave layers in float, or a weight-only minmax variant without abits")
    if variant.bits == FLOAT_BITS and variant.abits is None:
        raise ConfigError(f"{path}.abits: bits = 32 leaves the weights in float, so give abits (1 to 16) or "
                          "use method = \"float\"")
    common, _ = _ptq_options(variant)
    skip = common["skip_first_last"]
    if skip is not None and not isinstance(skip, bool):
        raise ConfigError(f"{path}.options.skip_first_last: expected bool, got {skip!r}")
    if common["calib_samples"] < 0:
        raise ConfigError(f"{path}.options.calib_samples: must be >= 0 (0: the whole calibration split), got "
                          f"{common['calib_samples']}")


def apply_ptq(model: nn.Module, splits: Splits, variant: VariantSection, seed: int, device: str) -> nn.Module:
    """Quantize ``model`` (the pipeline's copy) with ``learnq.ptq.quantize`` as ``variant`` says; returns the model."""
    if not uses_ptq(variant):
        return apply_minmax(model, splits, variant, seed, device)
    common, method_options = _ptq_options(variant)
    calib: Any = splits.calib
    n = common.pop("calib_samples")
    if n and n < len(calib):
        from torch.utils.data import Subset

        calib = Subset(calib, range(n))
    config = PTQ(method=variant.method, wbits=variant.weight_bits,
                 abits=FLOAT_BITS if variant.abits is None else variant.abits, granularity=variant.granularity,
                 scheme=variant.scheme, selection=variant.select, **common, options=method_options)
    result = quantize(model, calib, config, inplace=True, device=device, seed=seed, progress=False)
    return result.model


def ptq_variant_info(method: PTQMethod) -> VariantInfo:
    """The pipeline variant of PTQ method ``method``."""
    clash = set(method.options) & set(PTQ_OPTIONS)
    if clash:  # a programming error in the method's registration, not user input
        raise ValueError(f"PTQ method {method.name!r} has options named like the pipeline's: {sorted(clash)}")
    description = f"PTQ (learnq.ptq): {method.description}; wbits/abits, calibration set"
    if method.name == "minmax":
        description = ("min-max PTQ: weight-only per-channel min-max without abits (no calibration), "
                       "learnq.ptq.quantize with abits (weights and activations, calibration set)")
    return VariantInfo(method.name, description, apply_ptq, activations=True, needs_calibration=True,
                       options={**PTQ_OPTIONS, **method.options}, validate=validate_ptq_variant)


__all__ = ["PTQ_OPTIONS", "apply_ptq", "ptq_variant_info", "uses_ptq", "validate_ptq_variant"]
