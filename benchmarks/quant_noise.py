"""Benchmark for issue 14 (Quant-Noise, iPQ): DiffQ vs Quant-Noise (int8, int4, iPQ) vs iPQ vs STE QAT (8, 4 bits)
at small scale, the comparison of seeds/003 §5.2, Table 2 (a 16-layer transformer on Wikitext-103 there; the thesis
MNIST network on mnist5k here).

Everything is ``recipes/quant-noise-mnist5k.toml``: per seed (``Recipe.with_seed``: data split, initial weights and
training all follow it) one float model is trained (15 epochs), then each of its variants fine-tunes a copy for 3
epochs, is frozen, saved, reloaded and evaluated on the test split (the pipeline's ``run_variant``; the accuracy is the
reloaded file's, the size the file's bytes). ``torch.set_num_threads(1)``; the seconds per variant (fine-tuning,
save, reload, evaluation; wall clock on a shared 2-core machine) are recorded but are only indicative.

Results accumulate in ``benchmarks/results/quant_noise.json`` (one record per seed and variant; a finished one is
not rerun), so the runs can be split to hold the machine-wide lock briefly:

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/quant_noise.py --seeds 0
    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/quant_noise.py --seeds 1
    .venv/bin/python benchmarks/quant_noise.py --report     # quant_noise.md + the BENCHMARKS.md section
    .venv/bin/python benchmarks/quant_noise.py --quick --out /tmp/qn   # smoke test: 1 seed, 1,500 samples, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from learnq.pipeline.recipe import load_recipe
from learnq.pipeline.run import run_variant, train_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "quant-noise-mnist5k.toml"
RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS_MD = Path(__file__).resolve().parent / "BENCHMARKS.md"
BEGIN, END = "<!-- quant_noise:begin -->", "<!-- quant_noise:end -->"

DOCUMENT_ROWS = """seeds/003 Table 2 (16-layer transformer, Wikitext-103; perplexity, lower is better; model size):

| method (Table 2) | PPL | size |
| --- | --- | --- |
| Uncompressed | 18.1 | 942 MB |
| QAT 8 bits | 19.7 | 236 MB |
| QAT 4 bits | 29.9 | 118 MB |
| QN 8 bits† (Fan et al. 2021) | 18.7 | 236 MB |
| QN 4 bits† (Fan et al. 2021) | 19.5 | 118 MB |
| PQ† (Fan et al. 2021) | 20.7 | 38 MB |
| DiffQ (λ = 10, g = 16) | 18.6 | 113 MB |

(† trained with layer-drop 0.2.) The document's claims: Quant-Noise improves on QAT but is worse than DiffQ; PQ
compresses most but has the worst perplexity."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=None, help="variant labels (default: all of the recipe's)")
    p.add_argument("--quick", action="store_true", help="1,500 samples, 2 float epochs, 1 fine-tuning epoch")
    p.add_argument("--out", type=Path, default=RESULTS / "quant_noise.json")
    p.add_argument("--report", action="store_true", help="only write the tables from the results file")
    return p.parse_args(argv)


def load_results(path: Path) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {"recipe": str(RECIPE.relative_to(ROOT)), "threads": 1, "runs": {}}


def save_results(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    tmp.replace(path)


def run_seed(seed: int, args: argparse.Namespace, results: dict[str, Any]) -> None:
    recipe = load_recipe(str(RECIPE)).with_seed(seed)
    if args.quick:
        recipe.data.limit = 1500
        recipe.train.epochs = 2
        for v in recipe.variants:
            v.options = {**(v.options or {}), "epochs": 1} if v.method != "float" else v.options
    wanted = [v for v in recipe.variants if args.variants is None or v.label in args.variants]
    done = results["runs"].setdefault(str(seed), {})
    todo = [v for v in wanted if v.label not in done]
    if not todo:
        print(f"seed {seed}: all {len(wanted)} variants done", flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="learnq-qn-") as tmp:
        t0 = time.perf_counter()
        trained = train_recipe(recipe, tmp)
        print(f"seed {seed}: float model trained in {time.perf_counter() - t0:.0f} s, "
              f"accuracy {trained.test['accuracy']:.4f}", flush=True)
        for variant in todo:
            t0 = time.perf_counter()
            row, detail = run_variant(trained, variant)
            seconds = time.perf_counter() - t0
            done[variant.label] = {"method": row["method"], "bits": row["bits"], "accuracy": row["accuracy"],
                                   "file_bytes": row["file_bytes"], "ratio": row["ratio"],
                                   "stored_bytes": detail["stored_bytes"], "seconds": round(seconds, 1),
                                   "options": dict(variant.options or {})}
            save_results(args.out, results)
            print(f"seed {seed} {variant.label:8s} acc {row['accuracy']:.4f}  {row['file_bytes']:7d} B  "
                  f"{seconds:5.0f} s", flush=True)


def aggregate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Mean, std over seeds per variant, in the recipe's order."""
    order = [v.label for v in load_recipe(str(RECIPE)).variants]
    seen = {label for runs in results["runs"].values() for label in runs}
    labels = [label for label in order if label in seen] + sorted(seen - set(order))
    rows = []
    for label in labels:
        recs = [runs[label] for runs in results["runs"].values() if label in runs]
        accs = [r["accuracy"] for r in recs]
        rows.append({"variant": label, "method": recs[0]["method"], "bits": recs[0]["bits"], "seeds": len(recs),
                     "accuracy_mean": statistics.mean(accs),
                     "accuracy_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                     "file_bytes": statistics.mean(r["file_bytes"] for r in recs),
                     "ratio": statistics.mean(r["ratio"] for r in recs),
                     "seconds": statistics.median(r["seconds"] for r in recs)})
    return rows


def markdown(results: dict[str, Any]) -> str:
    rows = aggregate(results)
    seeds = ", ".join(sorted(results["runs"]))
    lines = ["## Quant-Noise, iPQ, DiffQ and STE QAT (issue 14)", "",
             f"`recipes/quant-noise-mnist5k.toml` (thesis MNIST network, hidden 112, mnist5k; one float model per "
             f"seed, 15 epochs; each variant fine-tuned from it for 3 epochs, then saved, reloaded and evaluated on "
             f"the 1,000-sample test split). Seeds {seeds}; accuracy mean ± std over seeds; file = the model file's "
             "bytes; seconds = median wall time of a variant (fine-tuning + save + reload + eval, 1 thread, shared "
             "2-core machine: indicative only). Command: `flock /work/wt/bench.lock nice -n 10 .venv/bin/python "
             "benchmarks/quant_noise.py --seeds S` per seed, then `--report`.", "",
             "| variant | method | bits | test accuracy | file | vs float32 | s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['method']} | {r['bits']} | {100 * r['accuracy_mean']:.2f} ± "
                     f"{100 * r['accuracy_std']:.2f} % | {r['file_bytes'] / 1024:.1f} KiB | {r['ratio']:.2f}x | "
                     f"{r['seconds']:.0f} |")
    by = {r["variant"]: r for r in rows}
    pairs = [("qn-int8", "ste-w8"), ("qn-int4", "ste-w4"), ("qn-int2", "ste-w2"), ("qn-ipq", "ipq-w8"),
             ("diffq", "ste-w4"), ("ipq-layerwise", "ipq-w8")]
    diffs = [f"{a} − {b}: {100 * (by[a]['accuracy_mean'] - by[b]['accuracy_mean']):+.2f} points"
             for a, b in pairs if a in by and b in by]
    if diffs:
        lines += ["", "Accuracy differences (mean over seeds): " + "; ".join(diffs) + "."]
    lines += ["", "bits: the code bits per stored index (iPQ and qn-ipq: 8 bits per block of 8 weights, i.e. 1 bit per "
              "weight plus a 256 × 8 float32 codebook for fc1; fc2 (140 blocks): 4 bits per block, a 16 × 8 "
              "codebook; DiffQ: the learned mean bits per weight).", "",
              DOCUMENT_ROWS, ""]
    return "\n".join(lines)


def write_report(results: dict[str, Any], out: Path) -> None:
    """``out``'s .md; the BENCHMARKS.md section only from the default results file."""
    md = markdown(results)
    out.with_suffix(".md").write_text(md)
    if out != RESULTS / "quant_noise.json":
        print(md)
        return
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    block = f"{BEGIN}\n{md}\n{END}"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    BENCHMARKS_MD.write_text(text)
    print(md)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    results = load_results(args.out)
    if not args.report:
        for seed in args.seeds:
            run_seed(seed, args, results)
    if args.report or args.out == RESULTS / "quant_noise.json":
        write_report(results, args.out)
    else:
        print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
