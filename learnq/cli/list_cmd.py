"""``learnq list models|datasets|methods|recipes``: what is registered, one line of description each.

``methods`` reads every method registry that exists in this installation: the quantization variants a recipe's
``[[variants]]`` can name (learnq.pipeline.registry), the training regularizers of ``[[regularizers]]``
(learnq.regularizers) and the QAT methods of ``[qat]``; a registry that is not there yet is skipped.
"""

from __future__ import annotations

import argparse
import importlib

from learnq.cli.common import print_json
from learnq.cli.run_cmd import add_seed

KINDS = ("models", "datasets", "methods", "recipes")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("list", help="list registered models, data sets, methods or built-in recipes",
                                   description="List what is registered, with one line of description each.")
    parser.add_argument("kind", choices=KINDS, help="what to list")
    add_seed(parser)
    parser.set_defaults(func=run)


def _models() -> list[dict]:
    from learnq.pipeline.models import MODELS

    return [{"name": m.name, "description": m.description} for m in MODELS.values()]


def _datasets() -> list[dict]:
    from learnq.pipeline.data import DATASETS

    return [{"name": d.name, "description": d.description} for d in DATASETS.values()]


def _optional(module: str, attr: str) -> object | None:
    """``module.attr`` if that module exists in this installation, else None."""
    try:
        return getattr(importlib.import_module(module), attr, None)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module.startswith(exc.name):
            return None
        raise


def _methods() -> list[dict]:
    from learnq.pipeline.registry import QAT_SECTIONS, VARIANTS

    rows = [{"name": v.name, "kind": "variant", "description": v.description} for v in VARIANTS.values()]
    regularizers = _optional("learnq.regularizers", "REGULARIZERS") or {}
    rows += [{"name": name, "kind": "regularizer", "description": getattr(cls, "description", "")}
             for name, cls in regularizers.items()]
    rows += [{"name": q.name, "kind": "qat", "description": q.description} for q in QAT_SECTIONS.values()]
    return rows


def _recipes() -> list[dict]:
    from learnq.pipeline.recipe import builtin_recipes, load_recipe

    return [{"name": name, "description": load_recipe(name).description} for name in builtin_recipes()]


def run(args: argparse.Namespace) -> int:
    rows = {"models": _models, "datasets": _datasets, "methods": _methods, "recipes": _recipes}[args.kind]()
    if args.json:
        print_json({args.kind: rows})
        return 0
    headers = ["name", "kind", "description"] if args.kind == "methods" else ["name", "description"]
    cells = [headers] + [[str(r[h]) for h in headers] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0
