"""Benchmark for issue 14: weight clustering (DKM, post-training k-means) on the mnist5k LeNet, with and without DSMM.

Reproduces, at small scale, seeds/000 §4.4 / Fig. 3: DKM (Cho et al. 2021) with 1-, 2- and 4-bit scalar palettes and
2-bit/2-dim, 4-bit/4-dim vector palettes, fine-tuned from a float model trained with the baseline L2 or with DSMM
(λ = 0.01, α₀ = 0.1, the paper's values; the multi-dimensional DSMM with ``dims = 2`` for the vector runs: the paper
uses ``dims = d``, but learnq's DSMM needs every layer's weight count divisible by ``dims`` and LeNet's conv1 has 150
weights, so the 4-bit/4-dim row starts from the ``dims = 2`` model). Does DSMM help at 1-2 bits and not at 4? Beside DKM, on the L2 model: post-training k-means
(no training) at the same palettes, LSQ at 2 and 4 bits and DiffQ, for the accuracy/size front.

Everything runs through the recipe path (``learnq.pipeline``): the base recipe is
``recipes/regularizers-mnist5k.toml`` (LeNet-5, SGD, 20 epochs; ``--epochs`` overrides) with its
``[[regularizers]]`` swapped per base model, and every row is a ``[[variants]]`` entry run by
``learnq.pipeline.run.run_variant`` (quantize or fine-tune 3 epochs with Adam 1e-3, save, reload, evaluate the
reloaded file). The clustering rows leave ``features.conv1.weight`` (150 values, not a multiple of 4) in float in
every configuration, so that the scalar and vector rows palettize the same tensors. Float models are cached under
``~/.cache/learnq-bench/clustering/`` (train_recipe with resume), rows are appended to
``benchmarks/results/clustering.json`` after each one, and a run stops starting rows after ``--budget`` seconds, so
it resumes where it stopped (each invocation holds the machine-wide lock for at most ~10 minutes):

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/clustering.py --seeds 0 --budget 540
    .venv/bin/python benchmarks/clustering.py --report     # BENCHMARKS.md section + results/clustering.md

torch.set_num_threads(1) for everything (the rows report accuracy and size, not speed).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "regularizers-mnist5k.toml"
RESULTS = Path(__file__).resolve().parent / "results" / "clustering.json"
REPORT = Path(__file__).resolve().parent / "results" / "clustering.md"
CACHE = Path(os.environ.get("LEARNQ_BENCH_CACHE", Path.home() / ".cache" / "learnq-bench")) / "clustering"
EXCLUDE = 'select = { exclude = ["features.conv1.weight"] }'

# (label, TOML body of the variant); the clustering rows share EXCLUDE
DKM = {"dkm-1b": (1, 1), "dkm-2b": (2, 1), "dkm-4b": (4, 1), "dkm-2b2d": (2, 2), "dkm-4b4d": (4, 4)}
KMEANS = {"kmeans-1b": (1, 1), "kmeans-2b": (2, 1), "kmeans-4b": (4, 1), "kmeans-2b2d": (2, 2), "kmeans-4b4d": (4, 4)}
UNIFORM = {"lsq-2b": 'method = "lsq"\nbits = 2\n', "lsq-4b": 'method = "lsq"\nbits = 4\n',
           "diffq": 'method = "diffq"\noptions = { penalty = 10.0, quant_lr = 0.01 }\n'}
BASES: dict[str, dict[str, Any]] = {
    "l2": {"regularizers": [], "rows": [*DKM, *KMEANS, *UNIFORM]},
    "dsmm": {"regularizers": [("dsmm", 0.01, "{ alpha_init = 0.1 }")],
             "rows": ["dkm-1b", "dkm-2b", "dkm-4b", "kmeans-1b", "kmeans-2b", "kmeans-4b"]},
    "dsmm-d2": {"regularizers": [("dsmm", 0.01, "{ alpha_init = 0.1, dims = 2 }")],
                "rows": ["dkm-2b2d", "kmeans-2b2d", "dkm-4b4d", "kmeans-4b4d"]},
}  # no dims = 4 DSMM on LeNet: learnq's DSMM needs every layer's count divisible by dims, conv1 has 150 weights


def variant_toml(label: str) -> str:
    if label in DKM:
        bits, dim = DKM[label]
        body = f'method = "dkm"\nbits = {bits}\ngranularity = "tensor"\noptions = {{ dim = {dim} }}\n{EXCLUDE}\n'
    elif label in KMEANS:
        bits, dim = KMEANS[label]
        body = (f'method = "kmeans"\nwbits = {bits}\ngranularity = "tensor"\noptions = {{ dim = {dim} }}\n'
                f'{EXCLUDE}\n')
    else:
        body = UNIFORM[label]
    return f'[[variants]]\nname = "{label}"\n{body}\n'


def recipe_for(base: str, seed: int, epochs: int | None) -> Any:
    from learnq.pipeline.recipe import parse_recipe

    text = RECIPE.read_text(encoding="utf-8")
    head = text.split("[[variants]]")[0]
    for name, strength, options in BASES[base]["regularizers"]:
        head += f'\n[[regularizers]]\nname = "{name}"\nstrength = {strength}\noptions = {options}\n'
    head = head.replace('name = "regularizers-mnist5k"', f'name = "clustering-{base}"')
    if epochs is not None:
        head = head.replace("epochs = 20", f"epochs = {epochs}")
    head = head.replace("seed = 0", f"seed = {seed}", 1)
    body = '[[variants]]\nmethod = "float"\n\n' + "".join(variant_toml(r) for r in BASES[base]["rows"])
    return parse_recipe(head + "\n" + body + '\n[report]\nplots = false\n', source=f"clustering-{base}")


def load_results() -> dict[str, Any]:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text(encoding="utf-8"))
    return {"rows": [], "meta": {}}


def save_results(results: dict[str, Any]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tmp = RESULTS.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    tmp.replace(RESULTS)


def run(args: argparse.Namespace) -> None:
    from learnq.pipeline.run import run_variant, train_recipe

    torch.set_num_threads(1)
    start = time.monotonic()
    results = load_results()
    results["meta"] = {"torch": torch.__version__, "threads": 1, "machine": platform.machine(),
                       "epochs": args.epochs or 20, "recipe": str(RECIPE.relative_to(ROOT))}
    done = {(r["base"], r["seed"], r["name"]) for r in results["rows"]}
    for seed in args.seeds:
        for base in args.bases:
            recipe = recipe_for(base, seed, args.epochs)
            todo = [v for v in recipe.variants if (base, seed, v.label) not in done]
            if not todo:
                continue
            if time.monotonic() - start > args.budget:
                print("budget spent; run again to continue", flush=True)
                return
            t0 = time.monotonic()
            out = CACHE / f"{base}-e{args.epochs or 20}-seed{seed}"
            trained = train_recipe(recipe, out, resume=(out / "checkpoints" / "last.pt").exists())
            print(f"{base} seed {seed}: float {trained.test['accuracy']:.4f} ({time.monotonic() - t0:.0f} s)",
                  flush=True)
            for variant in todo:
                if time.monotonic() - start > args.budget:
                    print("budget spent; run again to continue", flush=True)
                    return
                t0 = time.monotonic()
                row, _ = run_variant(trained, variant)
                record = {"base": base, "seed": seed, "name": variant.label, "method": row["method"],
                          "bits": row["bits"], "accuracy": row["accuracy"], "file_bytes": row["file_bytes"],
                          "float_accuracy": trained.test["accuracy"], "seconds": time.monotonic() - t0}
                results["rows"].append(record)
                save_results(results)
                print(f"  {variant.label:12s} acc {row['accuracy']:.4f}  {row['file_bytes']} B  "
                      f"({record['seconds']:.0f} s)", flush=True)


def _mean(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.2f}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}"


def report() -> str:
    results = load_results()
    rows = results["rows"]
    seeds = sorted({r["seed"] for r in rows})
    lines = ["## Weight clustering: DKM and k-means palettes, with and without DSMM (issue 14)", "",
             "`benchmarks/clustering.py` (results: `benchmarks/results/clustering.json`): LeNet-5 on mnist5k "
             f"({results['meta'].get('epochs')} epochs SGD + L2 5e-4, or + DSMM λ = 0.01, α₀ = 0.1; multi-dim DSMM "
             "with dims = 2 for the 2-dim and 4-dim rows: dims = 4 does not divide conv1's 150 weights), then DKM fine-tuned 3 epochs (Adam 1e-3, τ = 0.05·std, 3 "
             "iterations per forward, one palette per tensor) or post-training k-means; `features.conv1.weight` "
             f"stays float in every clustering row. Seeds: {seeds}; test accuracy (%) of the reloaded file, "
             "mean ± std over seeds where there are several; 1 thread.", "",
             "| palette | DKM, L2 | DKM, DSMM | Δ DSMM | k-means, L2 | k-means, DSMM | file bytes (DKM, L2) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    dsmm_base = {"1b": "dsmm", "2b": "dsmm", "4b": "dsmm", "2b2d": "dsmm-d2", "4b4d": "dsmm-d2"}

    def acc(base: str, name: str) -> list[float]:
        return [r["accuracy"] for r in rows if r["base"] == base and r["name"] == name]

    for pal, dbase in dsmm_base.items():
        a, b = acc("l2", f"dkm-{pal}"), acc(dbase, f"dkm-{pal}")
        delta = f"{100 * (statistics.mean(b) - statistics.mean(a)):+.2f}" if a and b else "-"
        size = [r["file_bytes"] for r in rows if r["base"] == "l2" and r["name"] == f"dkm-{pal}"]
        lines.append(f"| {pal.replace('b', ' bit').replace('2d', ' / 2-dim').replace('4d', ' / 4-dim')} | "
                     f"{_mean(a)} | {_mean(b)} | {delta} | {_mean(acc('l2', f'kmeans-{pal}'))} | "
                     f"{_mean(acc(dbase, f'kmeans-{pal}'))} | {size[0] if size else '-'} |")
    floats = {base: sorted({r["float_accuracy"] for r in rows if r["base"] == base}) for base in BASES}
    lines += ["", "Float accuracy of the base models: " + ", ".join(
        f"{b} {_mean(v)}" for b, v in floats.items() if v) + ".", "",
        "Accuracy against file size on the L2 model (first seed; every quantized method, file of the reloaded model):",
        "", "| row | bits | accuracy % | file bytes |", "| --- | --- | --- | --- |"]
    first = [r for r in rows if r["base"] == "l2" and r["seed"] == (seeds[0] if seeds else 0)]
    for r in sorted(first, key=lambda r: r["file_bytes"]):
        lines.append(f"| {r['name']} | {r['bits']} | {100 * r['accuracy']:.2f} | {r['file_bytes']} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    parser.add_argument("--epochs", type=int, default=None, help="float training epochs (default: the recipe's 20)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds after which no new row starts")
    parser.add_argument("--report", action="store_true", help="write results/clustering.md and print it")
    args = parser.parse_args()
    if args.report:
        text = report()
        REPORT.write_text(text, encoding="utf-8")
        print(text)
        return
    run(args)


if __name__ == "__main__":
    main()
