"""The typed config of a training-time quantization method and the QAT method registry (DESIGN.md, "configs are
typed dataclasses with a version, serialisable to JSON; one entry point applies a config"; METHODS.md sections 4-6).

A method is one file (``learnq/quantizers/<method>.py``) holding its quantizer (a
:class:`learnq.quantizers.base.WeightQuantizer`) and its config, a frozen dataclass deriving from :class:`QATConfig`,
plus one entry in the registry tuple of ``learnq/quantizers/__init__.py``. The config says everything the rest of
learnq needs to know about the method, so nothing else restates it:

* ``method`` / ``description`` / ``default_lr``: its name, one line for ``learnq list methods``, the lr of its own
  parameters' optimizer group;
* its dataclass fields are its options: recipes take every field except ``bits``, ``granularity``,
  ``bits_overrides`` and ``selection`` (which are recipe keys of their own) and except fields marked
  ``metadata={"recipe": False}``; ``metadata={"recipe_default": v}`` gives a recipe default other than the field's;
* ``learns_bits``: it learns its bit-widths (no ``bits`` field; recipes must leave ``bits`` out);
* :meth:`QATConfig.from_granularity`: the config fields for a recipe's ``granularity`` string;
* :meth:`QATConfig.build`: the quantizer of one parameter; :meth:`QATConfig.loss`: the method's extra loss over its
  quantizers (``handle.loss()``); :meth:`QATConfig.default_selection`: which parameters it takes by default.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from learnq.attach import Selection
from learnq.checks import check_int, selection_from_dict, selection_to_dict
from learnq.errors import ConfigError, LearnqError
from learnq.granularity import Granularity

if TYPE_CHECKING:  # annotations only
    from learnq.quantizers.base import WeightQuantizer

CONFIG_VERSION = 1
RECIPE_KEYS = ("bits", "granularity", "bits_overrides", "selection")  # fields that are recipe keys, not options

QAT_METHODS: dict[str, type[QATConfig]] = {}
"""Method name -> its config class; filled by :func:`register_qat_method` (``learnq/quantizers/__init__.py`` registers
the built-in methods, one line each)."""


def register_qat_method(config: type[QATConfig], *, replace: bool = False) -> type[QATConfig]:
    """Add a config class to :data:`QAT_METHODS` under ``config.method`` (ConfigError if taken and not ``replace``)."""
    if not (isinstance(config, type) and issubclass(config, QATConfig)) or not config.method:
        raise ConfigError(f"a QAT method is a QATConfig subclass with a method name, got {config!r}")
    if config.method in QAT_METHODS and not replace:
        raise ConfigError(f"a QAT method named {config.method!r} is already registered; pass replace=True")
    QAT_METHODS[config.method] = config
    return config


def parse_granularity(raw: str) -> Granularity:
    """``Granularity.parse`` with its error as a ConfigError."""
    try:
        return Granularity.parse(raw)
    except LearnqError as exc:
        raise ConfigError(str(exc)) from exc


@dataclass(frozen=True)
class QATConfig:
    """Base of the typed method configs. ``bits_overrides`` maps parameter-name globs to fixed bit-widths (e.g.
    ``{"0.weight": 8}`` keeps the first layer at 8 bits); ``selection`` chooses the parameters (default per method).
    """

    method: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_lr: ClassVar[float | None] = None  # lr of the quantizer parameters' group (None: the model's lr)
    learns_bits: ClassVar[bool] = False  # the method learns its bit-widths (recipes give no ``bits``)
    bits_overrides: dict[str, int] = field(default_factory=dict, kw_only=True)
    selection: Selection | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        name = type(self).__name__
        if not isinstance(self.bits_overrides, Mapping):
            raise ConfigError(f"{name}.bits_overrides must be a dict of name glob -> bits, got {self.bits_overrides!r}")
        for pattern, bits in self.bits_overrides.items():
            if not isinstance(pattern, str):
                raise ConfigError(f"{name}.bits_overrides keys must be name globs (str), got {pattern!r}")
            check_int(name, f"bits_overrides[{pattern!r}]", bits, 1, 16)
        object.__setattr__(self, "bits_overrides", dict(self.bits_overrides))
        if self.selection is not None and not isinstance(self.selection, Selection):
            object.__setattr__(self, "selection", selection_from_dict(self.selection))
        self.validate()

    # -- what a method implements -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check every field; raise ConfigError naming the field."""

    def default_selection(self) -> Selection:
        return Selection()

    def build(self, name: str, x: torch.Tensor, bits: int | None) -> WeightQuantizer:
        """The quantizer for parameter ``name`` whose current (pre-quantizer) value is ``x``; ``bits`` is its
        override from ``bits_overrides`` or None."""
        raise NotImplementedError

    def loss(self, quantizers: Sequence[WeightQuantizer]) -> torch.Tensor | None:
        """The method's extra training loss over its quantizers (``handle.loss()``), None for none."""
        return None

    @classmethod
    def from_granularity(cls, raw: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """The config fields for a recipe's ``granularity`` string (``options``: the recipe's method options);
        ConfigError naming what the method takes. This default is for a ``granularity`` field taking ``tensor``
        or ``channel`` (one range or step per output channel)."""
        gran = parse_granularity(raw)
        if gran.kind == "tensor":
            return {"granularity": "tensor"}
        if gran.kind == "axis" and gran.axis == 0:
            return {"granularity": "channel"}
        raise ConfigError(f"{cls.method} takes 'tensor' or 'channel' (one range per output channel), not {raw!r}")

    # -- derived from the fields --------------------------------------------------------------------------------
    @classmethod
    def recipe_options(cls) -> dict[str, Any]:
        """The method's recipe options and their recipe defaults (its fields, see the module docstring)."""
        out: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in RECIPE_KEYS or not f.metadata.get("recipe", True):
                continue
            default = f.default if f.default_factory is MISSING else f.default_factory()
            out[f.name] = f.metadata.get("recipe_default", default)
        return out

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "version": CONFIG_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = selection_to_dict(value) if f.name == "selection" else (
                dict(value) if isinstance(value, dict) else value)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QATConfig:
        """Inverse of :meth:`to_dict`; on the base class, dispatches on ``data["method"]`` (:data:`QAT_METHODS`)."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"a QAT config must be a dict, got {type(data).__name__}")
        data = dict(data)
        method = data.pop("method", cls.method or None)
        version = data.pop("version", CONFIG_VERSION)
        if version != CONFIG_VERSION:
            raise ConfigError(f"QAT config version {version!r} is not supported (this learnq reads {CONFIG_VERSION})")
        target = cls
        if not cls.method:
            if method not in QAT_METHODS:
                raise ConfigError(f"QAT method {method!r} is unknown; use one of {', '.join(QAT_METHODS)}")
            target = QAT_METHODS[method]
        elif method != cls.method:
            raise ConfigError(f"config for method {method!r} given to {cls.__name__} ({cls.method!r})")
        known = {f.name: f for f in fields(target)}
        unknown = set(data) - set(known)
        if unknown:
            raise ConfigError(f"{target.__name__} has no field(s) {sorted(unknown)}; known: {sorted(known)}")
        missing = [n for n, f in known.items() if f.default is MISSING and f.default_factory is MISSING
                   and n not in data]
        if missing:
            raise ConfigError(f"{target.__name__} needs field(s) {missing}")
        return target(**data)


def resolve_config(config: QATConfig | Mapping[str, Any] | str) -> QATConfig:
    """A config as given to ``learnq.prepare``: a config, its dict, or a method name (its defaults)."""
    if isinstance(config, QATConfig):
        return config
    if isinstance(config, str):
        if config not in QAT_METHODS:
            raise ConfigError(f"QAT method {config!r} is unknown; use one of {', '.join(QAT_METHODS)}")
        return QAT_METHODS[config]()
    if isinstance(config, Mapping):
        return QATConfig.from_dict(config)
    raise ConfigError(f"method_config must be a QAT config (learnq.STE, LSQ, Nested, DiffQ), a dict or a method "
                      f"name, got {type(config).__name__}")


__all__ = ["CONFIG_VERSION", "QAT_METHODS", "QATConfig", "RECIPE_KEYS", "parse_granularity", "register_qat_method",
           "resolve_config"]
