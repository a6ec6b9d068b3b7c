"""Recipes: one TOML file that says what to train, how to quantize it and what to report (docs/pipeline.md).

No paper. A recipe is a typed, versioned dataclass tree (torchao style), serialisable to JSON and validated up front:
unknown keys, wrong types and unknown names are ``ConfigError`` naming the key path, e.g.
``train.epochs: expected int, got str`` or ``variants[1].method: unknown quantization method 'foo'``.

    [data]          name, root, seed, calib_size, test_fraction, limit, [data.options]
    [model]         name, [model.args]
    [train]         the fields of learnq.pipeline.train.TrainConfig
    [[variants]]    method, bits (or wbits), abits, granularity, scheme, rounding, name, bits_overrides,
                    [variants.select] (learnq.attach.Selection), [variants.options] (the method's own keys)
    [[regularizers]] name, strength, [regularizers.options]      (learnq.regularizers)
    [satnl]         learnable                                    (learnq.regularizers.SatNL, during training)
    [asam]          rho, eta                                     (learnq.optim.ASAM wraps the optimizer)
    [qat]           method, bits, granularity, bits_overrides, [qat.select], [qat.options]   (learnq.pipeline.qat)
    [report]        plots

Top-level keys: ``version`` (1), ``name``, ``description``, ``seed`` (the default of ``data.seed`` and
``train.seed``). ``load_recipe("digits")`` reads a built-in recipe (``learnq/recipes/*.toml``); anything else is a
path. ``recipe.with_seed(n)`` is what ``--seed n`` does: it sets every seed of the recipe to ``n``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from learnq.attach import Selection
from learnq.errors import ConfigError, LearnqError
from learnq.granularity import Granularity
from learnq.grid import GridSpec, check_bits
from learnq.pipeline import schema
from learnq.pipeline.data import get_dataset_info
from learnq.pipeline.models import MODELS, model_arguments
from learnq.pipeline.train.config import TrainConfig
from learnq.pipeline.variants import check_options, get_qat, get_variant

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

RECIPE_VERSION = 1
FLOAT_BITS = 32  # the bits a float32 baseline row reports
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class DataSection:
    """``[data]``: the arguments of ``learnq.pipeline.data.load_dataset``. ``seed`` None: the recipe's seed."""

    name: str = "digits"
    root: str | None = None
    seed: int | None = None
    calib_size: int = 512
    test_fraction: float = 0.2
    limit: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSection:
    """``[model]``: a registered model name and its keyword arguments (``learnq list models``)."""

    name: str = "mlp"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class VariantSection:
    """``[[variants]]``: one quantized model to make from the trained one (a report row and a file).

    bits: weight bits (``wbits`` is an alias; 32 with ``abits`` leaves the weights in float). abits: activation
    bits, for methods that quantize activations (learnq.pipeline.ptq_variants); left out: float activations.
    granularity / scheme / rounding / bits_overrides / select: the grid and which parameters it applies to.
    name: the row's label and file stem (default ``<method>-w<bits>``, ``<method>-w<bits>a<abits>`` with abits,
    ``float`` for the baseline).
    options: the method's own keys (see the method's registry entry).
    """

    method: str
    bits: int | None = None
    wbits: int | None = None
    abits: int | None = None
    granularity: str = "channel"
    scheme: str = "symmetric"
    rounding: str = "nearest"
    name: str | None = None
    bits_overrides: dict[str, int] = field(default_factory=dict)
    select: Selection = field(default_factory=Selection)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def weight_bits(self) -> int:
        """Bits of the weights (32 for a float baseline)."""
        return FLOAT_BITS if self.bits is None else self.bits

    @property
    def label(self) -> str:
        if self.name is not None:
            return self.name
        if self.bits is None:
            return self.method
        return f"{self.method}-w{self.bits}" + ("" if self.abits is None else f"a{self.abits}")

    def grid_spec(self) -> GridSpec:
        if self.bits is None:
            raise ConfigError(f"variant {self.label}: no bits given, so it has no grid")
        return GridSpec(bits=self.bits, scheme=self.scheme, granularity=self.granularity, rounding=self.rounding)


@dataclass
class RegularizerSection:
    """``[[regularizers]]``: a loss added during training (``learnq.regularizers.REGULARIZERS``)."""

    name: str
    strength: float | None = None
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class SatNLSection:
    """``[satnl]``: train through ``a·tanh(w/a)`` (``learnq.regularizers.SatNL``); the table's presence turns it on.

    learnable: ``a`` is a trained parameter (no weight decay) instead of the fixed initial ``max|w|`` of each layer.
    The saturation is baked into the weights after training, so the saved float model holds ``a·tanh(w/a)``.
    """

    learnable: bool = False


@dataclass
class ASAMSection:
    """``[asam]``: wrap the optimizer in ``learnq.optim.ASAM`` (two forward/backward passes per step).

    rho: neighbourhood radius ``ρ`` (> 0). eta: ``η`` in the weights' normalisation ``|w| + η`` (>= 0).
    """

    rho: float = 0.5
    eta: float = 0.01


@dataclass
class QATSection:
    """``[qat]``: quantizers attached before training (``learnq.pipeline.variants.QAT_METHODS``, registered by
    ``learnq.pipeline.qat``; docs/qat.md). The trained model is the quantized model: a ``[qat]`` recipe has no
    ``[[variants]]``. bits_overrides: parameter-name globs -> fixed bits; select: which parameters (default: the
    method's own choice)."""

    method: str
    bits: int | None = None
    granularity: str = "channel"
    bits_overrides: dict[str, int] = field(default_factory=dict)
    select: Selection = field(default_factory=Selection)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportSection:
    """``[report]``: plots=false writes report.md only (no matplotlib needed)."""

    plots: bool = True


@dataclass
class Recipe:
    """A whole recipe; build with :func:`load_recipe` or :meth:`from_dict` (both validate)."""

    version: int = RECIPE_VERSION
    name: str = "recipe"
    description: str = ""
    seed: int = 0
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    variants: list[VariantSection] = field(default_factory=list)
    regularizers: list[RegularizerSection] = field(default_factory=list)
    satnl: SatNLSection | None = None
    asam: ASAMSection | None = None
    qat: QATSection | None = None
    report: ReportSection = field(default_factory=ReportSection)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """Build and validate. ``data.seed`` and ``train.seed`` default to the top-level ``seed``."""
        recipe = schema.from_dict(cls, data)
        train_table = data.get("train", {})
        if "seed" not in train_table:
            recipe.train.seed = recipe.seed
        if recipe.data.seed is None:
            recipe.data.seed = recipe.seed
        for variant in recipe.variants:
            if variant.wbits is not None:
                if variant.bits is not None and variant.bits != variant.wbits:
                    raise ConfigError(f"variants[{recipe.variants.index(variant)}]: bits={variant.bits} and "
                                      f"wbits={variant.wbits} disagree; give one of them")
                variant.bits, variant.wbits = variant.wbits, None
        validate_recipe(recipe)
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; ``Recipe.from_dict(r.to_dict()) == r``."""
        return schema.to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def with_seed(self, seed: int) -> Recipe:
        """A copy whose every seed (top level, data, training) is ``seed`` (what ``--seed`` does)."""
        out = Recipe.from_dict(self.to_dict())
        out.seed = seed
        out.data.seed = seed
        out.train.seed = seed
        validate_recipe(out)
        return out


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
        check_options(info.options, recipe.qat.options, "qat.options")
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
    if not _LABEL.match(variant.label):
        raise ConfigError(f"{path}.name: {variant.label!r} is not a valid file stem; use letters, digits, '-', "
                          "'_', '.' and '+'")
    variant.options = check_options(info.options, variant.options, f"{path}.options")
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


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with learnq (``learnq/recipes/*.toml``)."""
    folder = resources.files("learnq") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def read_toml(text: str, source: str = "recipe", default_name: str | None = None) -> dict[str, Any]:
    """The table of a recipe's TOML ``text`` (``name`` defaulting to ``default_name``); ConfigError if not TOML."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    if default_name is not None and "name" not in data:
        data["name"] = default_name
    return data


def parse_recipe(text: str, source: str = "recipe", default_name: str | None = None) -> Recipe:
    """Parse TOML ``text``; errors are ``ConfigError`` starting with ``source``.

    A sweep recipe (one with a ``[sweep]`` table, learnq.pipeline.sweep_space) is validated whole and its base recipe
    returned: ``learnq run`` on it runs the recipe as written, without searching.
    """
    data = read_toml(text, source, default_name)
    try:
        if "sweep" in data:
            from learnq.pipeline.sweep_space import sweep_from_dict  # imports this module: import here

            return sweep_from_dict(data).recipe
        return Recipe.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def load_recipe(path_or_name: str | Path) -> Recipe:
    """Read a recipe file, or the built-in recipe of that name (``"digits"``)."""
    path = Path(path_or_name).expanduser()
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read recipe {path}: {exc}") from exc
        return parse_recipe(text, str(path), default_name=path.stem)
    name = str(path_or_name)
    if name in builtin_recipes():
        text = (resources.files("learnq") / "recipes" / f"{name}.toml").read_text(encoding="utf-8")
        return parse_recipe(text, f"built-in recipe {name}", default_name=name)
    if path.exists():
        raise ConfigError(f"recipe {path} is not a file; give a .toml recipe file")
    raise ConfigError(f"no recipe file {str(path_or_name)!r} and no built-in recipe of that name; built-in recipes: "
                      f"{', '.join(builtin_recipes())}")


def recipe_fields() -> dict[str, list[str]]:
    """Section -> its keys (for documentation and error messages)."""
    sections = {"recipe": Recipe, "data": DataSection, "model": ModelSection, "train": TrainConfig,
                "variants": VariantSection, "regularizers": RegularizerSection, "satnl": SatNLSection,
                "asam": ASAMSection, "qat": QATSection, "report": ReportSection}
    return {name: [f.name for f in dataclasses.fields(cls)] for name, cls in sections.items()}


__all__ = ["RECIPE_VERSION", "Recipe", "DataSection", "ModelSection", "VariantSection", "RegularizerSection",
           "SatNLSection", "ASAMSection", "QATSection", "ReportSection", "load_recipe", "parse_recipe",
           "builtin_recipes", "validate_recipe", "recipe_fields"]
