"""``learnq report SWEEP_OR_RUN_DIRS... --out DIR``: the Pareto front (accuracy up, file bytes down) of every model
in the run directories and sweep directories given, as ``pareto.md`` and ``pareto.png`` (learnq.pipeline.pareto).
"""

from __future__ import annotations

import argparse

from learnq.cli.common import add_common, format_table, print_json
from learnq.pipeline.pareto import write_pareto_report
from learnq.pipeline.report import format_bytes


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report", help="Pareto front (accuracy vs file size) of run and sweep directories: pareto.md, pareto.png",
        description="Collect the rows of every run directory (learnq run) and of every trial of every sweep "
                    "directory (learnq sweep) given, compute the Pareto front (accuracy up, file bytes down) and "
                    "write pareto.png and pareto.md (the front and all models, linked to their runs and files).")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run directories and/or sweep directories")
    parser.add_argument("--out", required=True, help="directory for pareto.md and pareto.png")
    add_common(parser)  # --seed and --quiet are accepted (every command takes them); nothing here is random
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = write_pareto_report(args.dirs, args.out)
    if args.json:
        print_json(report)
        return 0
    points = report["points"]
    body = [[points[i]["method"], points[i]["bits"], f"{100 * points[i]['accuracy']:.2f}%",
             format_bytes(points[i]["file_bytes"]), points[i]["run"]] for i in report["front"]]
    print(format_table(["method", "bits", "test acc", "file size", "run"], body))
    print(f"\n{len(report['front'])} of {len(points)} models on the Pareto front"
          + (f"; {len(report['skipped'])} unfinished trial directories skipped" if report["skipped"] else ""))
    print(f"wrote {', '.join(report['files'])}")
    return 0
