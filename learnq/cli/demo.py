"""``learnq demo``: ``learnq run`` on a built-in recipe (``digits`` by default) in a fresh temporary directory.

Trains a small MLP on scikit-learn's 8x8 digits, then reports the float32 baseline, per-channel min-max weight
quantization at 8, 4 and 2 bits, the training-time quantizers (STE and LSQ at 2 bits, DiffQ and the nested
learned-scale layer with learned widths, each fine-tuned from the float model) and PTQ of weights and activations at
W4A4 (MSE, ACIQ, LAPQ), weight clustering (DKM at 2 bits and at 4 bits / 4-dim vectors, post-training k-means at
2 bits): test accuracy of each model reloaded from its file, file size and compression ratio vs
float32. ``--json`` prints ``{"rows": [{"method", "bits", "accuracy", "file", "file_bytes", "ratio"}, ...],
"out": DIR}`` (``file`` is relative to ``out``).
"""

from __future__ import annotations

import argparse
import tempfile

from learnq.cli.common import show_progress
from learnq.cli.run_cmd import add_seed, print_result, resolve_recipe
from learnq.pipeline.run import run_recipe
from learnq.pipeline.train import is_main_process


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="train on digits, quantize it every way learnq knows, print accuracy and file sizes",
        description="Train a small network on the digits data set, quantize it (min-max at 8, 4 and 2 bits; STE, "
                    "LSQ, DiffQ and the nested layer fine-tuned; MSE, ACIQ and LAPQ at W4A4; DKM and k-means "
                    "palettes), save and reload each file, and print test accuracy, file size and compression "
                    "ratio vs float32.")
    parser.add_argument("--out", default=None, help="run directory (default: a new temporary directory, printed)")
    parser.add_argument("--recipe", default="digits", help="built-in recipe name or recipe file (default: digits)")
    add_seed(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    recipe = resolve_recipe(args.recipe, args.seed)
    out = args.out if args.out is not None else tempfile.mkdtemp(prefix="learnq-demo-")
    if not args.json and is_main_process():
        print(f"learnq demo: recipe {recipe.name}, run directory {out}", flush=True)
    result = run_recipe(recipe, out, progress=show_progress(args))
    print_result(result, args)
    return 0
