"""``learnq eval RUN_DIR_OR_MODEL_FILE``: rebuild a pipeline model and its test data from the file, evaluate it.

The file's metadata (written by ``learnq train`` / ``run``) names the model and its arguments and the data set with
its preprocessing, so no user code is needed. A file saved from user code (``learnq.save`` on your own model) has no
such metadata: load it with ``learnq.load(path, model)``.
"""

from __future__ import annotations

import argparse

from learnq.cli.common import print_json
from learnq.cli.run_cmd import add_seed
from learnq.pipeline.model_files import evaluate_file
from learnq.pipeline.train import set_seed


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate a model file (or a run directory's model) on its test split",
        description="Rebuild the network and its test split from a model file written by learnq train/run and "
                    "print its test accuracy and loss.")
    parser.add_argument("path", help="a model file (.safetensors) written by learnq train/run, or a run directory")
    parser.add_argument("--device", default="cpu", help="torch device to evaluate on (default: cpu)")
    add_seed(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    set_seed(0 if args.seed is None else args.seed)
    result = evaluate_file(args.path, device=args.device)
    if args.json:
        print_json(result)
        return 0
    print(f"{result['file']}: {result['model']} on {result['data']} ({result['method']}, {result['bits']} bits)")
    print(f"test accuracy {100 * result['accuracy']:.2f}% (n = {result['n']}), loss {result['loss']:.4f}")
    if "perplexity" in result:  # a language model: loss in nats per character
        print(f"bits per character {result['bits_per_char']:.4f}, perplexity {result['perplexity']:.3f}")
    return 0
