"""``learnq sweep RECIPE --trials N``: a multi-objective Optuna search (accuracy up, file bytes down) over the knobs
the recipe's ``[sweep]`` table marks searchable (learnq.pipeline.sweep; docs/sweep.md).

Each trial is a run directory ``OUT/trial-<n>/``; the study is stored in ``--storage`` (default
``sqlite:///OUT/study.db``), so a killed sweep resumes with the same command and workers on several machines share
one study through a database URL (PostgreSQL) and the same ``--study``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from learnq.cli.common import format_table, print_json
from learnq.cli.run_cmd import add_seed
from learnq.pipeline.report import format_bytes
from learnq.pipeline.sweep import SweepResult, load_sweep_recipe, run_sweep
from learnq.pipeline.sweep_space import short_params


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep", help="Pareto search (accuracy vs file size) over a recipe's [sweep] knobs, on Optuna",
        description="Search the knobs a recipe's [sweep.space] names (method, bits, penalties...) with a seeded "
                    "multi-objective Optuna sampler: each trial trains and quantizes one model in OUT/trial-<n>/; "
                    "objectives: test accuracy of the reloaded file (up) and its bytes (down). Rerun the same "
                    "command to resume; --trials counts completed trials in total.")
    parser.add_argument("recipe", help="a recipe file (.toml) with a [sweep] table (e.g. recipes/digits-sweep.toml)")
    parser.add_argument("--trials", type=int, default=None,
                        help="completed trials in total, over every run and worker (default: the recipe's "
                             "sweep.trials)")
    parser.add_argument("--storage", default=None,
                        help="Optuna database URL shared by the workers, e.g. "
                             "postgresql+psycopg://user:pw@host/db (pip install 'learnq[postgres]'; default: "
                             "sqlite:///OUT/study.db)")
    parser.add_argument("--study", default=None, help="study name in the storage (default: the recipe's name)")
    parser.add_argument("--out", default=None, help="sweep directory (default: runs/<recipe name>-sweep)")
    add_seed(parser)
    parser.set_defaults(func=run)


def trials_table(result: SweepResult) -> str:
    front = set(result.front)
    body = []
    for t in result.trials:
        if t["state"] == "pruned":  # a sampled duplicate of a finished trial, never run
            continue
        done = t["state"] == "complete"
        params = short_params(t["params"])
        method = t["method"] or next((v for k, v in t["params"].items() if k.endswith(".method")), "-")
        state = t["state"] if t["retried_as"] is None else f"{t['state']} (rerun as {t['retried_as']})"
        body.append([t["number"], state, "*" if t["number"] in front else "", method,
                     t["bits"] if done else "-", f"{100 * t['accuracy']:.2f}%" if done else "-",
                     format_bytes(t["file_bytes"]) if done else "-", params or "-"])
    return format_table(["trial", "state", "front", "method", "bits", "test acc", "file size", "params"], body)


def _quiet_optuna() -> None:
    """One line per trial is ours; optuna keeps its warnings (a missing optuna is reported by run_sweep)."""
    try:
        import optuna
    except ImportError:
        return
    optuna.logging.set_verbosity(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    sweep = load_sweep_recipe(args.recipe)
    if args.seed is not None:
        sweep = sweep.with_seed(args.seed)
    out = Path(args.out) if args.out is not None else Path("runs") / f"{sweep.recipe.name}-sweep"
    _quiet_optuna()
    quiet = args.quiet or args.json
    result = run_sweep(sweep, out, trials=args.trials, storage=args.storage, study=args.study,
                       log=None if quiet else lambda line: print(line, file=sys.stderr, flush=True))
    if args.json:
        print_json({"study": result.study, "storage": result.storage, "out": str(result.out),
                    "trials": result.trials, "front": result.front, "new": result.new})
        return 0
    print(trials_table(result))
    done = sum(t["state"] == "complete" for t in result.trials)
    print(f"\nstudy {result.study!r} in {result.storage}: {done} complete trials ({len(result.new)} run now), "
          f"{len(result.front)} on the Pareto front (*)")
    print(f"run directories in {result.out}; report: learnq report {result.out} --out {result.out / 'report'}")
    return 0
