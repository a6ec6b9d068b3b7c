"""The ``learnq`` command.

Each subcommand lives in its own module of this package and exposes ``add_parser(subparsers)`` and
``run(args) -> int``. To add a command, write the module and add its name to ``COMMANDS``.
Every user error (``learnq.errors.LearnqError``) ends the command with exit status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from learnq import __version__
from learnq.errors import LearnqError

# module name (in learnq.cli) of each subcommand, in the order `learnq --help` lists them
COMMANDS: list[str] = ["demo", "run_cmd", "train_cmd", "eval_cmd", "quantize_cmd", "inspect_cmd", "list_cmd",
                       "analyze_cmd", "sweep_cmd", "report_cmd", "export_cmd",
                       "bench_cmd"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="learnq", description="Make neural networks small without making them wrong.")
    parser.add_argument("--version", action="version", version=f"learnq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"learnq.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except LearnqError as exc:
        print(f"learnq {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"learnq {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
