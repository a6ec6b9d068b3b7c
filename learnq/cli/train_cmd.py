"""``learnq train RECIPE``: train the recipe's model and write the run directory (no quantization).

Writes ``recipe.json``, ``model.safetensors`` (with the metadata ``learnq eval`` needs), ``metrics.json`` and
``checkpoints/last.pt`` (``--resume`` continues from it). Data-parallel on N processes::

    torchrun --standalone --nproc_per_node=N -m learnq train RECIPE --out DIR

Only rank 0 writes files and prints.
"""

from __future__ import annotations

import argparse

from learnq.cli.common import print_json, show_progress
from learnq.cli.run_cmd import add_run_options, default_out, resolve_recipe, resumed_line
from learnq.pipeline.run import MODEL_FILE, train_recipe


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a recipe's model and write model.safetensors, metrics.json and checkpoints",
        description="Train the model a recipe describes; write the resolved recipe, the model file, metrics.json "
                    "and per-epoch checkpoints (for --resume) in the run directory. Works under torchrun (DDP).")
    add_run_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    recipe = resolve_recipe(args.recipe, args.seed)
    trained = train_recipe(recipe, default_out(recipe, args.out), resume=args.resume, progress=show_progress(args))
    if not trained.is_main:
        return 0
    model_file = trained.out / MODEL_FILE
    if args.json:
        print_json({"out": str(trained.out), "model": str(model_file), "test": trained.test,
                    "history": trained.history, "resumed_from_epoch": trained.resumed_from_epoch})
        return 0
    if trained.resumed_from_epoch is not None:
        print(resumed_line(trained.resumed_from_epoch, recipe.train.epochs))
    last = trained.history[-1] if trained.history else {}
    print(f"trained {recipe.model.name} on {recipe.data.name}: {len(trained.history)} epochs, train loss "
          f"{last.get('train_loss', float('nan')):.4f}")
    print(f"test accuracy {100 * trained.test['accuracy']:.2f}% (n = {trained.test['n']}), "
          f"loss {trained.test['loss']:.4f}")
    if "perplexity" in trained.test:  # a language model
        print(f"bits per character {trained.test['bits_per_char']:.4f}, perplexity {trained.test['perplexity']:.3f}")
    print(f"wrote {model_file} and {trained.out / 'metrics.json'}")
    return 0
