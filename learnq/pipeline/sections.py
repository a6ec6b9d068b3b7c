"""A recipe as data: the typed, versioned dataclass tree of one TOML recipe file (torchao style), serialisable to
JSON (docs/pipeline.md). No paper.

Building one (:meth:`Recipe.from_dict`, :func:`read_toml`) checks keys and types only, with ``ConfigError`` naming
the key path (``train.epochs: expected int, got str``); whether the names it holds exist (methods, models, data
sets) and their options are valid is :func:`learnq.pipeline.registry.validate_recipe`'s; reading a file or a
built-in recipe is :mod:`learnq.pipeline.recipe`'s.

    [data]          name, root, seed, calib_size, test_fraction, limit, [data.options]
    [model]         name, [model.args]
    [train]         the fields of learnq.pipeline.train.TrainConfig
    [[variants]]    method, bits (or wbits), abits, granularity, scheme, rounding, name, bits_overrides,
                    [variants.select] (learnq.attach.Selection), [variants.options] (the method's own keys)
    [[regularizers]] name, strength, [regularizers.options]      (learnq.regularizers)
    [satnl]         learnable                                    (learnq.regularizers.SatNL, during training)
    [asam]          rho, eta                                     (learnq.optim.ASAM wraps the optimizer)
    [qat]           method, bits, granularity, bits_overrides, [qat.select], [qat.options] (pipeline.qat_variants)
    [report]        plots

Top-level keys: ``version`` (1), ``name``, ``description``, ``seed`` (the default of ``data.seed`` and
``train.seed``). ``recipe.with_seed(n)`` is what ``--seed n`` does: it sets every seed of the recipe to ``n``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from learnq.attach import Selection
from learnq.errors import ConfigError
from learnq.grid import FLOAT_BITS, GridSpec
from learnq.pipeline import schema
from learnq.pipeline.train.config import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

RECIPE_VERSION = 1


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
    codec: how its file stores the codes: ``packed`` (default) or ``ans`` (entropy-coded, docs/entropy.md).
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
    codec: str = "packed"

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
    """``[qat]``: quantizers attached before training (``learnq.pipeline.registry.QAT_SECTIONS``, one per QAT method
    of ``learnq.quantizers.QAT_METHODS``, registered from ``learnq.pipeline.qat_variants``; docs/qat.md). The trained
    model is the quantized model: a ``[qat]`` recipe has no ``[[variants]]``. bits_overrides: parameter-name globs
    -> fixed bits; select: which parameters (default: the method's own choice)."""

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
    """A whole recipe; :func:`learnq.pipeline.recipe.load_recipe` reads and validates one, :meth:`from_dict` builds one
    from plain data (validated by :func:`learnq.pipeline.registry.validate_recipe`, as every run does)."""

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
        """Build from plain data (types and keys checked, nothing looked up in a registry: validation is
        :func:`learnq.pipeline.registry.validate_recipe`). ``data.seed`` and ``train.seed`` default to the top-level
        ``seed``; a variant's ``wbits`` becomes its ``bits``."""
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
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; ``Recipe.from_dict(r.to_dict()) == r``."""
        return schema.to_dict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def with_seed(self, seed: int) -> Recipe:
        """A copy whose every seed (top level, data, training) is ``seed`` (what ``--seed`` does)."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError(f"seed: must be an integer >= 0, got {seed!r}")
        out = Recipe.from_dict(self.to_dict())
        out.seed = seed
        out.data.seed = seed
        out.train.seed = seed
        return out


def read_toml(text: str, source: str = "recipe", default_name: str | None = None) -> dict[str, Any]:
    """The table of a recipe's TOML ``text`` (``name`` defaulting to ``default_name``); ConfigError if not TOML."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    if default_name is not None and "name" not in data:
        data["name"] = default_name
    return data


def recipe_fields() -> dict[str, list[str]]:
    """Section -> its keys (for documentation and error messages)."""
    sections = {"recipe": Recipe, "data": DataSection, "model": ModelSection, "train": TrainConfig,
                "variants": VariantSection, "regularizers": RegularizerSection, "satnl": SatNLSection,
                "asam": ASAMSection, "qat": QATSection, "report": ReportSection}
    return {name: [f.name for f in dataclasses.fields(cls)] for name, cls in sections.items()}


__all__ = ["RECIPE_VERSION", "Recipe", "DataSection", "ModelSection", "VariantSection", "RegularizerSection",
           "SatNLSection", "ASAMSection", "QATSection", "ReportSection", "read_toml", "recipe_fields"]
