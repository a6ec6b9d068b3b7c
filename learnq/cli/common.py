"""Options and output helpers shared by every subcommand (--json, --seed, --quiet)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_common(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars only on a terminal, and never with --quiet or --json."""
    return not (getattr(args, "quiet", False) or getattr(args, "json", False)) and sys.stderr.isatty()


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False, default=str))


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
