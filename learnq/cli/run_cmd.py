"""``learnq run RECIPE``: train, quantize every variant, evaluate each reloaded file, write metrics and the report.

See learnq.pipeline.run for the run directory's files and docs/pipeline.md for the recipe format. The helpers here
(recipe and run-directory options, the results table) are shared by ``learnq demo`` and ``learnq train``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from learnq.cli.common import add_common, format_table, print_json, show_progress
from learnq.pipeline.recipe import Recipe, load_recipe
from learnq.pipeline.report import format_bytes
from learnq.pipeline.run import RunResult, run_recipe


def add_seed(parser: argparse.ArgumentParser) -> None:
    """``--json``, ``--quiet`` and a ``--seed`` that, when given, overrides every seed of the recipe."""
    add_common(parser, seed=False)
    parser.add_argument("--seed", type=int, default=None,
                        help="random seed; overrides every seed of the recipe (same seed, same result)")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("recipe", help="a recipe file (.toml) or the name of a built-in recipe (e.g. digits)")
    parser.add_argument("--out", default=None, help="run directory (default: runs/<recipe name>)")
    parser.add_argument("--resume", action="store_true", help="continue training from the run directory's checkpoint")
    add_seed(parser)


def resolve_recipe(name: str, seed: int | None) -> Recipe:
    recipe = load_recipe(name)
    return recipe if seed is None else recipe.with_seed(seed)


def default_out(recipe: Recipe, out: str | None) -> Path:
    return Path(out) if out is not None else Path("runs") / recipe.name


def rows_table(rows: list[dict]) -> str:
    """The results table: method, bits, test accuracy, file size, compression ratio vs float32 (and the activation
    bits, after the weight bits, when a row quantizes activations)."""
    acts = any(r.get("abits", 32) != 32 for r in rows)
    body = [[r["method"], r["bits"], *([r.get("abits", 32)] if acts else []), f"{100 * r['accuracy']:.2f}%",
             format_bytes(r["file_bytes"]), f"{r['ratio']:.2f}x", r["file"]] for r in rows]
    head = ["method", "bits", *(["abits"] if acts else []), "test acc", "file size", "vs float32", "file"]
    return format_table(head, body)


def resumed_line(done: int, epochs: int) -> str:
    """What ``--resume`` did: from which epoch training went on."""
    left = (f"trained epoch {epochs}" if done + 1 == epochs else f"trained epochs {done + 1}..{epochs}"
            if done < epochs else "nothing left to train")
    return f"resumed after epoch {done} of {epochs} (from checkpoints/last.pt); {left}"


def print_result(result: RunResult, args: argparse.Namespace) -> None:
    if not result.is_main:
        return
    if args.json:
        payload = {"rows": result.rows, "out": str(result.out)}
        if getattr(args, "resume", False):
            payload["resumed_from_epoch"] = result.resumed_from_epoch
        print_json(payload)
        return
    print(rows_table(result.rows))
    print(f"\nfiles in {result.out}; report: {result.out / 'report.md'}")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run", help="train a recipe, quantize each variant, evaluate the reloaded files, write a report",
        description="Train the recipe's model, make each [[variants]] entry (quantize, save, reload, evaluate on the "
                    "test split) and write metrics.json, report.md and plots in the run directory.")
    add_run_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    recipe = resolve_recipe(args.recipe, args.seed)
    result = run_recipe(recipe, default_out(recipe, args.out), resume=args.resume, progress=show_progress(args))
    if result.is_main and not args.json and result.resumed_from_epoch is not None:
        print(resumed_line(result.resumed_from_epoch, recipe.train.epochs))
    print_result(result, args)
    return 0
