"""Adopt a float model trained by another benchmark into ``dsmm_repro.py``'s cache (issue 17), when, and only when,
its recipe is the one ``dsmm_repro.py`` would train: the same data, model, train, regularizers and seed.

``benchmarks/dsmm_ptq_table1.py`` (issue 15) trains MobileNetV2-small with ``learnq.pipeline.run.train_recipe``
(``<folder>/model.safetensors``, ``recipe.json``, ``metrics.json``), the same loading, seeding, initialisation and
training loop as ``dsmm_repro.train_one``. This script compares the two recipe dicts (exits 2 naming the first
difference), copies the model file into ``<cache>/<protocol>/<model>/<reg>/seed<k>.safetensors`` and writes the
cache JSON: ``file`` names the source (as the seed-0 pilot copies do), ``history`` and ``training`` are the
source's ``metrics.json`` (that training's own record), ``float`` is re-measured on the copied file, and
``train_seconds`` is the sum of the source history's epoch seconds (``train_seconds_from`` says so).

    python benchmarks/dsmm_adopt.py ~/.cache/learnq-bench/i15/mobilenetv2-small/l2/seed1 \
        --protocol scratch --model mobilenetv2-small --reg l2 --seed 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dsmm_repro  # noqa: E402

from learnq.atomic_file import write_atomic  # noqa: E402
from learnq.pipeline.model_files import rebuild  # noqa: E402
from learnq.pipeline.train import evaluate  # noqa: E402

COMPARED = ("seed", "data", "model", "train", "regularizers")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="folder with model.safetensors, recipe.json, metrics.json")
    p.add_argument("--protocol", default="scratch", choices=dsmm_repro.PROTOCOLS)
    p.add_argument("--model", required=True, choices=list(dsmm_repro.MODELS))
    p.add_argument("--reg", required=True, choices=dsmm_repro.REGS)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--cache", type=Path, default=dsmm_repro.CACHE)
    args = p.parse_args(argv)
    repro = dsmm_repro.parse_args(["--quiet"])  # dsmm_repro's defaults: α lr, λ, epochs
    want = dsmm_repro.make_recipe(args.protocol, args.model, args.reg, args.seed, repro).to_dict()
    have = json.loads((args.source / "recipe.json").read_text())
    for field in COMPARED:
        if want.get(field) != have.get(field):
            print(f"error: {args.source}: recipe field {field!r} differs: {have.get(field)!r} here, "
                  f"{want.get(field)!r} in dsmm_repro.py; train it with dsmm_repro.py instead", file=sys.stderr)
            return 2
    dest = dsmm_repro.model_file(args.cache, args.protocol, args.model, args.reg, args.seed)
    if dest.exists():
        print(f"error: {dest} exists; remove it first to adopt {args.source}", file=sys.stderr)
        return 2
    metrics = json.loads((args.source / "metrics.json").read_text())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.stem}.adopting.safetensors")
    shutil.copyfile(args.source / "model.safetensors", tmp)
    try:
        model, splits, _ = rebuild(tmp)
        test = evaluate(model, splits.test, batch_size=256)
    except BaseException:
        tmp.unlink()
        raise
    record = {"key": dsmm_repro.key_of(args.protocol, args.model, args.reg, args.seed), "protocol": args.protocol,
              "model": args.model, "reg": args.reg, "seed": args.seed, "float": test["accuracy"],
              "train_seconds": sum(h["seconds"] for h in metrics["history"]),
              "train_seconds_from": "sum of the source history's epoch seconds", "init": None,
              "recipe": {k: v for k, v in have.items() if k != "variants"}, "history": metrics["history"],
              "training": metrics["training"], "file": str(args.source / "model.safetensors"),
              "adopted": f"copied by benchmarks/dsmm_adopt.py; recipe fields {', '.join(COMPARED)} identical to "
                         "dsmm_repro.py's; the source's metrics.json test accuracy was "
                         f"{metrics['test']['accuracy']}"}
    write_atomic(dest.with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode())
    tmp.replace(dest)
    print(f"adopted {args.source} as {dest}: float {100 * test['accuracy']:.1f} % "
          f"(source metrics {100 * metrics['test']['accuracy']:.1f} %)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
