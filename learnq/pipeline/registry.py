"""The pipeline's method registries and the validation of recipes against them (docs/pipeline.md). No paper.

Two registries, filled here from the method registries of the library, so nothing else restates a method:

* :data:`VARIANTS` (what a recipe's ``[[variants]]`` can name): ``float`` and the weight-only ``minmax``
  (:mod:`learnq.pipeline.variants`), every PTQ method of :data:`learnq.ptq.registry.PTQ_METHODS`
  (:mod:`learnq.pipeline.ptq_variants`; ``minmax`` becomes the PTQ one, weight-only without ``abits``) and every QAT
  method of :data:`learnq.quantizers.QAT_METHODS` (:mod:`learnq.pipeline.qat_variants`, fine-tuning);
* :data:`QAT_SECTIONS` (what a recipe's ``[qat]`` section can name): every QAT method (attached before training).

:func:`register_variant` / :func:`register_qat` add entries of your own (``replace=True`` to override one);
:func:`register_ptq_variants` / :func:`register_qat_variants` make a PTQ / QAT method registered later (at run time,
not in its registry's tuple) a variant too. :func:`validate_recipe` checks
everything about a recipe that needs no data (names exist, values are in range, options are known, with
``ConfigError`` naming the key path, e.g. ``variants[1].method: unknown quantization method 'foo'``) and completes
the methods' options with their defaults.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from contextlib import contextmanager

from torch import nn

from learnq.checks import check_options
from learnq.entropy_codec import check_codec
from learnq.errors import ConfigError, LearnqError
from learnq.granularity import Granularity
from learnq.grid import FLOAT_BITS, check_bits
from learnq.pipeline.data import Splits, get_dataset_info
from learnq.pipeline.models import MODELS, model_arguments
from learnq.pipeline.ptq_variants import apply_ptq, ptq_variant_info
from learnq.pipeline.qat_variants import qat_entries
from learnq.pipeline.sections import (
    RECIPE_VERSION,
    ASAMSection,
    DataSection,
    ModelSection,
    Recipe,
    RegularizerSection,
    VariantSection,
)
from learnq.pipeline.train.config import TrainConfig
from learnq.pipeline.variants import FLOAT, MINMAX, QATInfo, VariantInfo
from learnq.ptq import registry as ptq_registry

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

VARIANTS: dict[str, VariantInfo] = {}
QAT_SECTIONS: dict[str, QATInfo] = {}


def register_variant(info: VariantInfo, *, replace: bool = False) -> VariantInfo:
    """Add ``info`` to :data:`VARIANTS` (``ConfigError`` if the name is taken and ``replace`` is False)."""
    if info.name in VARIANTS and not replace:
        raise ConfigError(f"a variant named {info.name!r} is already registered; pass replace=True to override it")
    VARIANTS[info.name] = info
    return info


def register_qat(info: QATInfo, *, replace: bool = False) -> QATInfo:
    """Add ``info`` to :data:`QAT_SECTIONS` (``ConfigError`` if the name is taken and ``replace`` is False)."""
    if info.name in QAT_SECTIONS and not replace:
        raise ConfigError(f"a QAT method named {info.name!r} is already registered; pass replace=True to override it")
    QAT_SECTIONS[info.name] = info
    return info


def register_ptq_variants() -> list[str]:
    """Register a variant for every PTQ method that has none yet (``minmax`` replaces the weight-only one);
    returns the names registered by this call."""
    done = []
    for name, method in ptq_registry.PTQ_METHODS.items():
        current = VARIANTS.get(name)
        if current is not None and current.apply is apply_ptq:
            continue
        if current is not None and name != "minmax":
            raise ConfigError(f"PTQ method {name!r} clashes with the pipeline variant of that name; rename one")
        register_variant(ptq_variant_info(method), replace=name == "minmax")
        done.append(name)
    return done


def register_qat_variants() -> list[str]:
    """Register the ``[qat]`` method and the variant of every QAT method that has none yet; returns the names
    registered by this call."""
    done = []
    sections, variants = qat_entries()
    for section, variant in zip(sections, variants, strict=True):
        if section.name in QAT_SECTIONS and variant.name in VARIANTS:
            continue
        if variant.name in VARIANTS:
            raise ConfigError(f"QAT method {variant.name!r} clashes with the pipeline variant of that name; rename one")
        register_qat(section)
        register_variant(variant)
        done.append(variant.name)
    return done


register_variant(FLOAT)
register_variant(MINMAX)
register_ptq_variants()
register_qat_variants()


def get_variant(name: str) -> VariantInfo:
    """The registry entry of variant ``name``; ``ConfigError`` listing the known ones otherwise."""
    if not isinstance(name, str) or name not in VARIANTS:
        raise ConfigError(f"unknown quantization method {name!r}; registered methods: {', '.join(VARIANTS)}")
    return VARIANTS[name]


def get_qat(name: str) -> QATInfo:
    """The registry entry of ``[qat]`` method ``name``; ``ConfigError`` otherwise."""
    if not isinstance(name, str) or name not in QAT_SECTIONS:
        known = ", ".join(QAT_SECTIONS) if QAT_SECTIONS else "none is registered yet"
        raise ConfigError(f"unknown QAT method {name!r}; registered QAT methods: {known}")
    return QAT_SECTIONS[name]


def apply_variant(model: nn.Module, splits: Splits, variant: VariantSection, seed: int = 0,
                  device: str = "cpu") -> nn.Module:
    """Run the registered method of ``variant`` on ``model`` (changed in place: pass a copy) and return the result."""
    info = get_variant(variant.method)
    out = info.apply(model, splits, variant, seed, device)
    if not isinstance(out, nn.Module):
        raise TypeError(f"variant {info.name!r} returned {type(out).__name__}, not an nn.Module")  # a bug, not input
    return out


# -- validation ----------------------------------------------------------------------------------------------------
@contextmanager
def _at(path: str):
    """Re-raise a LearnqError from the block as ConfigError prefixed with the key path."""
    try:
        yield
    except LearnqError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith(path) else f"{path}: {text}") from exc


def _check_int(value: int, path: str, minimum: int) -> None:
    if value < minimum:
        raise ConfigError(f"{path}: must be >= {minimum}, got {value}")


def validate_recipe(recipe: Recipe) -> None:
    """Every check that needs no data: names exist, values are in range, options are known."""
    if recipe.version > RECIPE_VERSION or recipe.version < 1:
        raise ConfigError(f"version: this learnq reads recipe version {RECIPE_VERSION}, the recipe says "
                          f"{recipe.version}; upgrade learnq or write a version {RECIPE_VERSION} recipe")
    _check_int(recipe.seed, "seed", 0)
    _validate_data(recipe.data)
    _validate_model(recipe.model)
    try:
        recipe.train.validate()
    except ConfigError as exc:  # TrainConfig's messages start with the field name: "epochs must be ..."
        field_name, _, rest = str(exc).partition(" ")
        known = field_name in {f.name for f in dataclasses.fields(TrainConfig)}
        raise ConfigError(f"train.{field_name}: {rest}" if known else f"train: {exc}") from exc
    labels: dict[str, int] = {}
    for i, variant in enumerate(recipe.variants):
        path = f"variants[{i}]"
        _validate_variant(variant, path)
        if variant.label in labels:
            other = labels[variant.label]
            raise ConfigError(f"{path}: its name {variant.label!r} is also the name of variants[{other}]; give one "
                              "of them another `name` (it names the file)")
        labels[variant.label] = i
    for i, reg in enumerate(recipe.regularizers):
        _validate_regularizer(reg, f"regularizers[{i}]")
    if recipe.asam is not None:
        _validate_asam(recipe.asam)
    if recipe.qat is not None:
        with _at("qat.method"):
            info = get_qat(recipe.qat.method)
        check_options(info.options, recipe.qat.options, "qat.options", owner=f"QAT method {recipe.qat.method!r}")
        if info.validate is not None:
            info.validate(recipe.qat, "qat")
        if recipe.variants:
            raise ConfigError("variants: a recipe with [qat] trains the quantized model itself (model.safetensors is "
                              "its row); remove the [[variants]] tables, or drop [qat] and name the QAT method in a "
                              "[[variants]] table (which fine-tunes the float model) to compare with float and PTQ")


def _validate_data(data: DataSection) -> None:
    with _at("data.name"):
        info = get_dataset_info(data.name)
    if data.seed is not None:
        _check_int(data.seed, "data.seed", 0)
    _check_int(data.calib_size, "data.calib_size", 1)
    if data.limit is not None:
        _check_int(data.limit, "data.limit", 1)
    if not 0.0 < data.test_fraction < 1.0:
        raise ConfigError(f"data.test_fraction: must be between 0 and 1 (exclusive), got {data.test_fraction}")
    if info.needs_root and data.root is None and info.default_root is None:
        raise ConfigError(f"data.root: data set {info.name} is read from a directory; give its folder as data.root")
    if not info.needs_root and data.root is not None:
        raise ConfigError(f"data.root: data set {info.name} is built in and takes no root; remove data.root")
    for key in data.options:
        if key not in info.options:
            known = ", ".join(info.options) if info.options else "none"
            raise ConfigError(f"data.options.{key}: unknown option of data set {info.name}; its options: {known}")


def _validate_model(model: ModelSection) -> None:
    if model.name not in MODELS:
        raise ConfigError(f"model.name: unknown model {model.name!r}; known models: {', '.join(sorted(MODELS))}")
    accepted = model_arguments(model.name)
    for key in model.args:
        if key not in accepted:
            raise ConfigError(f"model.args.{key}: model {model.name!r} has no such argument; its arguments: "
                              f"{', '.join(accepted) or 'none'}")


def _validate_variant(variant: VariantSection, path: str) -> None:
    with _at(f"{path}.method"):
        info = get_variant(variant.method)
    if info.quantizes:
        float_weights = info.activations and variant.bits == FLOAT_BITS and variant.abits is not None  # W32A<b>
        if variant.bits is None and not info.learned_bits:
            raise ConfigError(f"{path}.bits: missing; method {variant.method!r} needs a bit-width (1 to 16)")
        if variant.bits is not None and not float_weights:
            with _at(f"{path}.bits"):
                check_bits(variant.bits)
        with _at(f"{path}.granularity"):
            Granularity.parse(variant.granularity)
        if variant.bits is not None and not float_weights:
            with _at(path):
                variant.grid_spec()
        for pattern, bits in variant.bits_overrides.items():
            with _at(f"{path}.bits_overrides.{pattern}"):
                check_bits(bits)
    elif variant.bits is not None or variant.bits_overrides:
        raise ConfigError(f"{path}.bits: method {variant.method!r} quantizes nothing; remove bits")
    if variant.abits is not None:
        if not info.activations:
            raise ConfigError(f"{path}.abits: method {variant.method!r} quantizes weights only; remove abits")
        with _at(f"{path}.abits"):
            check_bits(variant.abits)
    with _at(f"{path}.codec"):
        check_codec(variant.codec)
    if not _LABEL.match(variant.label):
        raise ConfigError(f"{path}.name: {variant.label!r} is not a valid file stem; use letters, digits, '-', "
                          "'_', '.' and '+'")
    variant.options = check_options(info.options, variant.options, f"{path}.options",
                                    owner=f"method {variant.method!r}")
    if info.validate is not None:
        info.validate(variant, path)


def _validate_regularizer(reg: RegularizerSection, path: str) -> None:
    try:
        from learnq.regularizers import REGULARIZERS
    except ImportError as exc:  # pragma: no cover - the package ships learnq.regularizers
        raise ConfigError(f"{path}: regularizers are not available in this installation ({exc})") from exc
    if reg.name not in REGULARIZERS:
        raise ConfigError(f"{path}.name: unknown regularizer {reg.name!r}; known: {', '.join(REGULARIZERS)}")
    if reg.strength is not None and reg.strength < 0:
        raise ConfigError(f"{path}.strength: must be >= 0, got {reg.strength}")
    accepted = [p for p in inspect.signature(REGULARIZERS[reg.name].__init__).parameters
                if p not in ("self", "model", "strength")]
    for key in reg.options:
        if key not in accepted:
            raise ConfigError(f"{path}.options.{key}: regularizer {reg.name!r} has no such option; its options: "
                              f"{', '.join(accepted) or 'none'} (and strength, a key of its own)")


def _validate_asam(asam: ASAMSection) -> None:
    from learnq.regularizers.base import check_positive

    with _at("asam.rho"):
        check_positive(asam.rho, "rho")
    with _at("asam.eta"):
        check_positive(asam.eta, "eta", allow_zero=True)


__all__ = ["QAT_SECTIONS", "VARIANTS", "apply_variant", "get_qat", "get_variant", "register_ptq_variants",
           "register_qat", "register_qat_variants", "register_variant", "validate_recipe"]
