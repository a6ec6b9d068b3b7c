"""Sweep recipes: a recipe plus a ``[sweep]`` table of searchable knobs, resolved per trial (docs/sweep.md).

No paper. A sweep recipe is a recipe (docs/pipeline.md) that makes one quantized model (exactly one ``[[variants]]``
table, or a ``[qat]`` table) plus a ``[sweep]`` table naming the searchable knobs by their key path::

    [sweep]
    sampler = "tpe"                 # tpe | nsga2 | random (Optuna's multi-objective samplers)
    [sweep.space]
    "variant.method" = ["minmax", "diffq"]                        # a list: categorical choices
    "variant.bits" = [2, 3, 4, 8]
    "variant.options.penalty" = { low = 1e-4, high = 1e-1, log = true }   # a table: a range (ints: integer range)

Each trial samples the method knobs first, then only the knobs its method takes (a conditional space: a knob on
``bits`` is not sampled for a method that learns its widths, ``options.K`` only for methods with option ``K``); the
base table's fields the trial's method does not take are dropped. The resolved recipe runs through
:func:`learnq.pipeline.run.run_recipe` into ``OUT/trial-<number>/``; the objectives are the row's test accuracy
(maximised) and its model file's bytes (minimised). Every choice of every knob is validated with every method
choice when the recipe is read (:meth:`SweepRecipe.check`), so a bad space fails before anything trains.

Running the study is :mod:`learnq.pipeline.sweep`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from learnq.errors import ConfigError
from learnq.pipeline import schema
from learnq.pipeline.registry import QAT_SECTIONS, VARIANTS, validate_recipe
from learnq.pipeline.sections import Recipe, read_toml

SAMPLERS = ("tpe", "nsga2", "random")
_SEGMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*)(?:\[(\d+)\])?$")
_GRID_FIELDS = ("granularity", "scheme", "rounding", "bits_overrides", "select")
_MACHINE_KEYS = (("data", "root"), ("train", "device"))  # may differ between the workers of one study
_RUN_TIME_KEYS = ("trials", "max_failed", "heartbeat", "grace")  # [sweep] keys a resumed or second worker may change


@dataclass
class SweepSection:
    """``[sweep]``. space: knob path -> list of choices or ``{low, high, log, step}``. sampler: tpe | nsga2 |
    random; startup_trials: TPE's random trials before it models; population_size: NSGA-II's. trials: the default
    of ``--trials``. max_failed: failed trials (a LearnqError while running) before one call gives up. heartbeat /
    grace: seconds between a trial's heartbeats / without one before another worker fails and retries it."""

    space: dict[str, Any] = field(default_factory=dict)
    sampler: str = "tpe"
    startup_trials: int = 10
    population_size: int = 20
    trials: int | None = None
    max_failed: int = 3
    heartbeat: int = 60
    grace: int | None = None


@dataclass
class RangeSpec:
    """A range knob's table (``sweep.space."path" = {low, high, log, step}``)."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class Knob:
    """One searchable key: ``path`` as written, ``target`` its place in ``Recipe.to_dict()``; ``choices`` or a
    range (``low``/``high``, integers when both and ``step`` are ints)."""

    path: str
    target: tuple[str | int, ...]
    choices: tuple[Any, ...] | None = None
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: float | None = None
    integer: bool = False

    @property
    def is_method(self) -> bool:
        return self.target[-1] == "method" and _section_len(self.target) == len(self.target) - 1

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.path, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.path, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.path, self.low, self.high, step=self.step, log=self.log)

    def candidates(self) -> list[Any]:
        """The values checked when the recipe is read: every choice, or both ends of the range."""
        if self.choices is not None:
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.integer else [self.low, self.high]


def _section_len(target: tuple[str | int, ...]) -> int:
    """Length of the prefix naming a method's table: ``("variants", i)`` or ``("qat",)``; 0 for other keys."""
    if target[0] == "variants":
        return 2
    return 1 if target[0] == "qat" else 0


def parse_target(path: str) -> tuple[str | int, ...]:
    """``"variant.options.penalty"`` -> ``("variants", 0, "options", "penalty")``; ``"regularizers[1].strength"``
    -> ``("regularizers", 1, "strength")``."""
    out: list[str | int] = []
    for segment in path.split("."):
        match = _SEGMENT.match(segment)
        if match is None:
            raise ConfigError(f'sweep.space."{path}": {segment!r} is not a key; write dotted keys such as '
                              '"variant.bits", "train.lr" or "regularizers[0].strength"')
        out.append(match.group(1))
        if match.group(2) is not None:
            out.append(int(match.group(2)))
    if out[0] == "variant":
        out[0:1] = ["variants", 0]
    return tuple(out)


def parse_knob(path: str, value: Any) -> Knob:
    where = f'sweep.space."{path}"'
    target = parse_target(path)
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: no choices; give at least one value")
        for i, choice in enumerate(value):
            if not isinstance(choice, (str, int, float, bool)):
                raise ConfigError(f"{where}[{i}]: choices must be strings, numbers or booleans, got "
                                  f"{schema.type_name(choice)}")
        if len(set(map(repr, value))) != len(value):
            raise ConfigError(f"{where}: a choice is listed twice; list each once")
        return Knob(path, target, choices=tuple(value))
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected an array of choices or a table {{low, high, log, step}}, got "
                          f"{schema.type_name(value)}")
    spec = schema.from_dict(RangeSpec, value, where)
    if not spec.low < spec.high:
        raise ConfigError(f"{where}: low ({spec.low:g}) must be below high ({spec.high:g})")
    if spec.log and spec.low <= 0:
        raise ConfigError(f"{where}: a log range needs low > 0, got {spec.low:g}")
    if spec.log and spec.step is not None:
        raise ConfigError(f"{where}: give log or step, not both")
    if spec.step is not None and spec.step <= 0:
        raise ConfigError(f"{where}.step: must be > 0, got {spec.step:g}")
    integer = all(isinstance(value.get(k), int) for k in ("low", "high")) and isinstance(value.get("step", 1), int)
    return Knob(path, target, low=spec.low, high=spec.high, log=spec.log, step=spec.step, integer=integer)


def _get(d: Any, target: tuple[str | int, ...]) -> Any:
    for key in target:
        d = d[key]
    return d


def _method_info(section: Mapping[str, Any], kind: str) -> tuple[Any, Mapping[str, Any]]:
    """(the method's VariantInfo or None, its options) for a ``variants[i]`` (kind "variants") or ``qat`` table."""
    method = section.get("method")
    info = VARIANTS.get(method) if isinstance(method, str) else None
    if kind == "qat":
        qat = QAT_SECTIONS.get(method) if isinstance(method, str) else None
        return info, (qat.options if qat is not None else {})
    return info, (info.options if info is not None else {})


def _takes(info: Any, field_name: str) -> bool:
    """Whether a method (VariantInfo; None: unknown, so everything) takes field ``field_name`` of its table."""
    if info is None:
        return True
    if field_name in ("bits", "wbits"):
        return info.quantizes and not info.learned_bits
    if field_name == "abits":
        return info.activations
    if field_name in _GRID_FIELDS:
        return info.quantizes
    return True


def _prune(section: dict[str, Any], kind: str) -> None:
    """Drop the fields of a method table that its (just changed) method does not take."""
    info, options = _method_info(section, kind)
    for name in ("bits", "wbits", "abits"):
        if name in section and not _takes(info, name):
            section[name] = None
    if "bits_overrides" in section and not _takes(info, "bits_overrides"):
        section["bits_overrides"] = {}
    section["options"] = {k: v for k, v in (section.get("options") or {}).items() if k in options}


def _applies(knob: Knob, d: Mapping[str, Any]) -> bool:
    """Whether the trial's method (in resolved dict ``d``) takes the key ``knob`` changes."""
    n = _section_len(knob.target)
    if n == 0 or knob.is_method:
        return True
    info, options = _method_info(_get(d, knob.target[:n]), str(knob.target[0]))
    field_name = knob.target[n]
    if field_name == "options" and len(knob.target) > n + 1:
        return knob.target[n + 1] in options
    return _takes(info, str(field_name))


@dataclass
class SweepRecipe:
    """A recipe with its ``[sweep]`` table; build with :func:`load_sweep_recipe` / :func:`parse_sweep_recipe`."""

    recipe: Recipe
    sweep: SweepSection
    knobs: list[Knob]

    def apply(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``Recipe.to_dict()`` with knob values (keyed by knob path) set, not validated: method knobs first (the
        fields the new method does not take are dropped), then the others."""
        d = self.recipe.to_dict()
        by_path = {k.path: k for k in self.knobs}
        for path in sorted(values, key=lambda p: not by_path[p].is_method):
            knob = by_path[path]
            _get(d, knob.target[:-1])[knob.target[-1]] = values[path]
            if knob.is_method:
                _prune(_get(d, knob.target[:-1]), str(knob.target[0]))
        return d

    def resolve(self, values: Mapping[str, Any], name: str | None = None) -> Recipe:
        """The recipe with knob values set (:meth:`apply`), validated; ``name`` renames it."""
        d = self.apply(values)
        if name is not None:
            d["name"] = name
        recipe = Recipe.from_dict(d)
        validate_recipe(recipe)
        return recipe

    def sample(self, trial: Any) -> dict[str, Any]:
        """The trial's knob values: method knobs, then every other knob the trial's method takes."""
        values = {k.path: k.suggest(trial) for k in self.knobs if k.is_method}
        d = self.apply(values)
        for knob in self.knobs:
            if not knob.is_method and _applies(knob, d):
                values[knob.path] = knob.suggest(trial)
        return values

    def with_seed(self, seed: int) -> SweepRecipe:
        return SweepRecipe(self.recipe.with_seed(seed), self.sweep, self.knobs)

    def fingerprint(self) -> dict[str, Any]:
        """What every worker of one study must agree on: the recipe without machine-specific keys, the space and
        the sampler (not the run-time keys trials, max_failed, heartbeat, grace)."""
        d = self.recipe.to_dict()
        for section, key in _MACHINE_KEYS:
            d[section].pop(key, None)
        sweep = {k: v for k, v in schema.to_dict(self.sweep).items() if k not in _RUN_TIME_KEYS}
        return {"recipe": d, "sweep": sweep}

    def check(self) -> None:
        """For every combination of method choices: resolve the recipe with every knob the methods take at its
        first choice (low end), then with each other choice (range end) of each knob in turn. ``ConfigError``
        naming the knob and value that makes an invalid recipe, or a knob that no searched method takes."""
        method_knobs = [k for k in self.knobs if k.is_method]
        combos: list[dict[str, Any]] = [{}]
        for knob in method_knobs:
            combos = [{**c, knob.path: v} for c in combos for v in knob.candidates()]
        used: set[str] = set()
        for combo in combos:
            d = self.apply(combo)
            takes = [k for k in self.knobs if not k.is_method and _applies(k, d)]
            first = {**combo, **{k.path: k.candidates()[0] for k in takes}}
            try:
                self.resolve(first)
            except ConfigError as exc:
                raise ConfigError(f"sweep.space: with {describe(first)}: {exc}") from exc
            for knob in takes:
                used.add(knob.path)
                for value in knob.candidates()[1:]:
                    try:
                        self.resolve({**first, knob.path: value})
                    except ConfigError as exc:
                        raise ConfigError(f'sweep.space."{knob.path}": value {value!r} with '
                                          f"{describe(combo) or 'the recipe as is'}: {exc}") from exc
        for knob in self.knobs:
            if not knob.is_method and knob.path not in used:
                base = _get(self.recipe.to_dict(), knob.target[:_section_len(knob.target)])["method"]
                searched = "; ".join(f"{k.path}: {', '.join(map(str, k.choices or ()))}" for k in method_knobs)
                raise ConfigError(f'sweep.space."{knob.path}": no searched method takes this key '
                                  f"({searched or 'method ' + base}); remove it")


def describe(values: Mapping[str, Any]) -> str:
    """``a = 1, b = 'x'``."""
    return ", ".join(f"{k} = {v!r}" for k, v in values.items())


def short_params(params: Mapping[str, Any]) -> str:
    """Knob values for tables: the method table's ``method`` and ``bits`` left out (rows show them), its prefix and
    ``options.`` dropped, floats to 3 digits: ``granularity=channel, penalty=0.0123, train.lr=0.003``."""
    out = []
    for path, value in params.items():
        target = parse_target(path)
        n = _section_len(target)
        if n and len(target) == n + 1 and target[n] in ("method", "bits", "wbits"):
            continue
        rest = [str(t) for t in target[n:]]
        name = ".".join(rest[1:] if n and rest[0] == "options" and len(rest) > 1 else rest) if n else path
        out.append(f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}")
    return ", ".join(out)


def sweep_from_dict(data: Mapping[str, Any]) -> SweepRecipe:
    """Build and validate a sweep recipe from a parsed TOML/JSON table (the recipe's keys plus ``sweep``)."""
    data = dict(data)
    if "sweep" not in data:
        raise ConfigError("sweep: missing; a sweep recipe needs a [sweep] table with a [sweep.space] of knobs")
    section = schema.from_dict(SweepSection, data.pop("sweep"), "sweep")
    recipe = Recipe.from_dict(data)
    validate_recipe(recipe)
    if section.sampler not in SAMPLERS:
        raise ConfigError(f"sweep.sampler: unknown sampler {section.sampler!r}; use one of {', '.join(SAMPLERS)}")
    for name, minimum in (("startup_trials", 0), ("population_size", 2), ("max_failed", 1), ("heartbeat", 1),
                          ("grace", 1), ("trials", 1)):
        value = getattr(section, name)
        if value is not None and value < minimum:
            raise ConfigError(f"sweep.{name}: must be >= {minimum}, got {value}")
    if not section.space:
        raise ConfigError("sweep.space: empty; name at least one knob, e.g. \"variant.bits\" = [2, 4, 8]")
    rows = len(recipe.variants) + (recipe.qat is not None)
    if rows != 1:
        raise ConfigError(f"sweep: a trial is one model (its accuracy and size are the objectives), so the recipe "
                          f"needs exactly one [[variants]] table or a [qat] table; it has {len(recipe.variants)} "
                          "[[variants]]" + (" and a [qat]" if recipe.qat is not None else ""))
    base = recipe.to_dict()
    knobs = []
    for path, value in section.space.items():
        knob = parse_knob(path, value)
        try:
            container = _get(base, knob.target[:-1])
        except (KeyError, IndexError, TypeError):
            container = None
        if not isinstance(container, dict):
            where = ".".join(str(t) for t in knob.target[:-1])
            raise ConfigError(f'sweep.space."{path}": the recipe has no table {where} for this key to change; add '
                              "it to the recipe (a [qat] table, a [[regularizers]] entry...) or fix the path")
        knobs.append(knob)
    sweep = SweepRecipe(recipe, section, knobs)
    sweep.check()
    return sweep


def parse_sweep_recipe(text: str, source: str = "recipe", default_name: str | None = None) -> SweepRecipe:
    """Parse TOML ``text``; errors are ``ConfigError`` starting with ``source``."""
    data = read_toml(text, source, default_name)
    try:
        return sweep_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def load_sweep_recipe(path: str | os.PathLike) -> SweepRecipe:
    """Read a sweep recipe file (a recipe with a ``[sweep]`` table)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"no sweep recipe file {str(path)!r}; give a .toml recipe with a [sweep] table "
                          "(e.g. recipes/digits-sweep.toml)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read recipe {p}: {exc}") from exc
    return parse_sweep_recipe(text, str(p), default_name=p.stem)


__all__ = ["SweepSection", "RangeSpec", "Knob", "SweepRecipe", "SAMPLERS", "parse_target", "parse_knob",
           "sweep_from_dict", "parse_sweep_recipe", "load_sweep_recipe", "describe",
           "short_params"]
