"""Recipes: one TOML file that says what to train, how to quantize it and what to report (docs/pipeline.md). No paper.

A recipe is a typed, versioned dataclass tree (:mod:`learnq.pipeline.sections`: ``Recipe`` and its sections),
serialisable to JSON and validated up front against the method registries (:mod:`learnq.pipeline.registry`):
unknown keys, wrong types and unknown names are ``ConfigError`` naming the key path, e.g.
``train.epochs: expected int, got str`` or ``variants[1].method: unknown quantization method 'foo'``.

``load_recipe("digits")`` reads a built-in recipe (``learnq/recipes/*.toml``); anything else is a path.
:func:`parse_recipe` reads TOML text; a sweep recipe (one with a ``[sweep]`` table, which only
:mod:`learnq.pipeline.sweep_space` parses) is validated whole and its base recipe returned. The names of
:mod:`learnq.pipeline.sections` and :func:`validate_recipe` are importable from here too.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from learnq.errors import ConfigError
from learnq.pipeline.registry import validate_recipe
from learnq.pipeline.sections import (
    RECIPE_VERSION,
    ASAMSection,
    DataSection,
    ModelSection,
    QATSection,
    Recipe,
    RegularizerSection,
    ReportSection,
    SatNLSection,
    VariantSection,
    read_toml,
    recipe_fields,
)
from learnq.pipeline.sweep_space import sweep_from_dict


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with learnq (``learnq/recipes/*.toml``)."""
    folder = resources.files("learnq") / "recipes"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def parse_recipe(text: str, source: str = "recipe", default_name: str | None = None) -> Recipe:
    """Parse TOML ``text``; errors are ``ConfigError`` starting with ``source``.

    A sweep recipe (one with a ``[sweep]`` table, learnq.pipeline.sweep_space) is validated whole and its base recipe
    returned: ``learnq run`` on it runs the recipe as written, without searching.
    """
    data = read_toml(text, source, default_name)
    try:
        if "sweep" in data:
            return sweep_from_dict(data).recipe
        recipe = Recipe.from_dict(data)
        validate_recipe(recipe)
        return recipe
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


__all__ = ["RECIPE_VERSION", "Recipe", "DataSection", "ModelSection", "VariantSection", "RegularizerSection",
           "SatNLSection", "ASAMSection", "QATSection", "ReportSection", "load_recipe", "parse_recipe",
           "builtin_recipes", "read_toml", "recipe_fields", "validate_recipe"]
