"""Benchmark for issue 14: weight clustering (DKM, post-training k-means) on the mnist5k LeNet, with and without DSMM.

Reproduces, at small scale, seeds/000 §4.4 / Fig. 3: DKM (Cho et al. 2021) with 1-, 2- and 4-bit scalar palettes and
2-bit/2-dim, 4-bit/4-dim vector palettes, fine-tuned from a float model trained with the baseline L2 or with DSMM
(λ = 0.01, α₀ = 0.1, the paper's values; the multi-dimensional DSMM with ``dims = 2`` for the vector runs: the paper
uses ``dims = d``, but learnq's DSMM needs every layer's weight count divisible by ``dims`` and LeNet's conv1 has 150
weights, so the 4-bit/4-dim row starts from the ``dims = 2`` model). Does DSMM help at 1-2 bits and not at 4?
Beside DKM, on the L2 model: post-training k-means (no training) at the same palettes, LSQ at 2 and 4 bits and
DiffQ, for the accuracy/size front.

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
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "regularizers-mnist5k.toml"
DIGITS = ROOT / "recipes" / "digits.toml"  # --data digits: the demo's MLP (a pilot that fits outside the lock)
THESIS = ROOT / "recipes" / "thesis-mnist5k.toml"  # --data thesis: the thesis MLP (784-112-10) on mnist5k
SOURCES = {"mnist5k": RECIPE, "digits": DIGITS, "thesis": THESIS}
PREFIX = {"mnist5k": "", "digits": "digits-", "thesis": "thesis-"}  # of the cached float models and results files
RESULTS = Path(__file__).resolve().parent / "results" / "clustering.json"
REPORT = Path(__file__).resolve().parent / "results" / "clustering.md"
CACHE = Path(os.environ.get("LEARNQ_BENCH_CACHE", Path.home() / ".cache" / "learnq-bench")) / "clustering"
EXCLUDE = 'select = { exclude = ["features.conv1.weight"] }'

# (label, TOML body of the variant); the clustering rows share EXCLUDE
DKM = {"dkm-1b": (1, 1), "dkm-2b": (2, 1), "dkm-4b": (4, 1), "dkm-2b2d": (2, 2), "dkm-4b4d": (4, 4)}
KMEANS = {"kmeans-1b": (1, 1), "kmeans-2b": (2, 1), "kmeans-4b": (4, 1), "kmeans-2b2d": (2, 2), "kmeans-4b4d": (4, 4)}
UNIFORM = {"lsq-2b": 'method = "lsq"\nbits = 2\n', "lsq-4b": 'method = "lsq"\nbits = 4\n',
           "diffq": 'method = "diffq"\noptions = { penalty = 10.0, quant_lr = 0.01 }\n',
           # stronger size penalties: DiffQ points near the 1-2 bit sizes of the palettes (the equal-size front)
           "diffq-p100": 'method = "diffq"\noptions = { penalty = 100.0, quant_lr = 0.01 }\n',
           "diffq-p1000": 'method = "diffq"\noptions = { penalty = 1000.0, quant_lr = 0.01 }\n'}
BASES: dict[str, dict[str, Any]] = {
    "l2": {"regularizers": [], "rows": [*DKM, *KMEANS, *UNIFORM]},
    "dsmm": {"regularizers": [("dsmm", None)],
             "rows": ["dkm-1b", "dkm-2b", "dkm-4b", "kmeans-1b", "kmeans-2b", "kmeans-4b"]},
    "dsmm-d2": {"regularizers": [("dsmm", 2)],
                "rows": ["dkm-2b2d", "kmeans-2b2d", "dkm-4b4d", "kmeans-4b4d"]},
}  # no dims = 4 DSMM on LeNet: learnq's DSMM needs every layer's count divisible by dims, conv1 has 150 weights
DIGITS_BASES: dict[str, dict[str, Any]] = {  # the MLPs' weights (64x64, 10x64; 112x784, 10x112) take dims = 4
    **BASES, "dsmm-d2": {**BASES["dsmm-d2"], "rows": ["dkm-2b2d", "kmeans-2b2d"]},
    "dsmm-d4": {"regularizers": [("dsmm", 4)],
                "rows": ["dkm-4b4d", "kmeans-4b4d"]},
}


def bases(data: str) -> dict[str, dict[str, Any]]:
    return BASES if data == "mnist5k" else DIGITS_BASES


def results_path(data: str) -> Path:
    return RESULTS if data == "mnist5k" else RESULTS.with_name(f"clustering_{data}.json")


def variant_toml(label: str) -> str:
    if label in DKM:
        bits, dim = DKM[label]
        body = f'method = "dkm"\nbits = {bits}\ngranularity = "tensor"\noptions = {{ dim = {dim} }}\n{EXCLUDE}\n'
    elif label in KMEANS:
        bits, dim = KMEANS[label]
        body = (f'method = "kmeans"\nwbits = {bits}\ngranularity = "tensor"\noptions = {{ dim = {dim} }}\n'
                f'{EXCLUDE}\n')
    else:  # the uniform rows leave the same tensor in float: every row quantizes the same weights (equal-size front)
        body = f"{UNIFORM[label]}{EXCLUDE}\n"
    return f'[[variants]]\nname = "{label}"\n{body}\n'


DSMM = {"strength": 0.01, "alpha_init": 0.1}  # the paper's λ and α₀; --dsmm LAMBDA ALPHA changes them


def base_label(base: str) -> str:
    """The base's name in the results: ``dsmm@λ,α₀`` when DSMM is not at the paper's values."""
    if base == "l2" or (DSMM["strength"], DSMM["alpha_init"]) == (0.01, 0.1):
        return base
    return f"{base}@{DSMM['strength']:g},{DSMM['alpha_init']:g}"


def recipe_for(base: str, seed: int, epochs: int | None, data: str = "mnist5k") -> Any:
    from learnq.pipeline.recipe import parse_recipe

    text = SOURCES[data].read_text(encoding="utf-8")
    head = text.split("[[variants]]")[0]
    if data != "mnist5k":  # the MLP recipes have no regularizer: the baseline gets the same L2 as the LeNet one
        head += '\n[[regularizers]]\nname = "l2"\nstrength = 5e-4\n'
        head = head.replace(f'name = "{SOURCES[data].stem}"\ndescription', 'name = "regularizers-mnist5k"\ndescription',
                            1)
        head = head.replace("epochs = 15", "epochs = 20")
    for name, dims in bases(data)[base]["regularizers"]:
        extra = "" if dims is None else f", dims = {dims}"
        head += (f'\n[[regularizers]]\nname = "{name}"\nstrength = {DSMM["strength"]}\n'
                 f'options = {{ alpha_init = {DSMM["alpha_init"]}{extra} }}\n')
    head = head.replace('name = "regularizers-mnist5k"', f'name = "clustering-{base}"')
    if epochs is not None:
        head = head.replace("epochs = 20", f"epochs = {epochs}")
    head = head.replace("seed = 0", f"seed = {seed}", 1)
    rows = [r for r in bases(data)[base]["rows"] if data == "mnist5k" or r not in UNIFORM]
    body = '[[variants]]\nmethod = "float"\n\n' + "".join(variant_toml(r) for r in rows)
    return parse_recipe(head + "\n" + body + '\n[report]\nplots = false\n', source=f"clustering-{base}")


def load_results(data: str = "mnist5k") -> dict[str, Any]:
    if results_path(data).exists():
        return json.loads(results_path(data).read_text(encoding="utf-8"))
    return {"rows": [], "meta": {}}


def save_results(results: dict[str, Any], data: str = "mnist5k") -> None:
    path = results_path(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    tmp.replace(path)


def run(args: argparse.Namespace) -> None:
    from recipe_rows import run_bases

    torch.set_num_threads(1)
    results = load_results(args.data)
    recipe_file = SOURCES[args.data]
    results["meta"] = {"torch": torch.__version__, "threads": 1, "machine": platform.machine(), "data": args.data,
                       "epochs": args.epochs or 20, "recipe": str(recipe_file.relative_to(ROOT))}
    done = {(r["base"], r["seed"], r["name"]) for r in results["rows"]}

    def plan():
        for seed in args.seeds:
            for base in args.bases:
                recipe = recipe_for(base, seed, args.epochs, args.data)
                label = base_label(base)
                todo = [v for v in recipe.variants if (label, seed, v.label) not in done
                        and (args.rows is None or v.label in args.rows or v.method == "float")]
                out = CACHE / f"{PREFIX[args.data]}{label}-e{args.epochs or 20}-seed{seed}"
                yield (label, seed), recipe, out, todo

    def on_trained(key, trained, seconds):
        print(f"{key[0]} seed {key[1]}: float {trained.test['accuracy']:.4f} ({seconds:.0f} s)", flush=True)

    def on_row(key, trained, variant, row, seconds):
        record = {"base": key[0], "seed": key[1], "name": variant.label, "method": row["method"],
                  "bits": row["bits"], "accuracy": row["accuracy"], "file_bytes": row["file_bytes"],
                  "float_accuracy": trained.test["accuracy"], "seconds": seconds}
        results["rows"].append(record)
        save_results(results, args.data)
        print(f"  {variant.label:12s} acc {row['accuracy']:.4f}  {row['file_bytes']} B  ({seconds:.0f} s)",
              flush=True)

    run_bases(plan(), args.budget, on_trained, on_row)


def _mean(values: list[float], n: bool = False) -> str:
    if not values:
        return "-"
    tail = f" (n={len(values)})" if n else ""
    if len(values) == 1:
        return f"{100 * values[0]:.2f}{tail}"
    return f"{100 * statistics.mean(values):.2f} ± {100 * statistics.stdev(values):.2f}{tail}"


# seeds/000's own numbers for each palette (Table 6: MobileBERT on QNLI, DKM baseline → DKM + DSMM; Fig. 3 has no
# numbers in the text, only its claims, quoted)
DOCUMENT_000 = {
    "1b": "Table 6 (MobileBERT, QNLI): 61.34 → 61.49 (+0.15); Fig. 3: DSMM \"significantly improves\" 1-bit DKM",
    "2b": "Table 6: 80.12 → 80.87 (+0.75); Fig. 3: \"significantly improves\" 2-bit DKM",
    "4b": "Fig. 3: \"no significant difference\" at 4 bits",
    "2b2d": "Fig. 3 (multi-dim DSMM): > +1 average (ResNet-18), +2 to +5 (MobileNet-V1)",
    "4b4d": "Fig. 3 (multi-dim DSMM): > +1 average (ResNet-18), +2 to +5 (MobileNet-V1)",
}
BEGIN, END = "<!-- clustering.py: begin -->", "<!-- clustering.py: end -->"
BENCHMARKS_MD = Path(__file__).resolve().parent / "BENCHMARKS.md"


def _paired(rows: list[dict], a: tuple[str, str], b: tuple[str, str]) -> list[float]:
    """b - a per seed, over the seeds that have both rows."""
    acc = {(r["base"], r["name"], r["seed"]): r["accuracy"] for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    return [acc[(*b, s)] - acc[(*a, s)] for s in seeds if (*a, s) in acc and (*b, s) in acc]


def _paired_text(d: list[float]) -> str:
    """``mean ± std`` of per-seed differences (points), the seeds where it is > 0 and each seed's value."""
    if not d:
        return "-"
    if len(d) == 1:
        return f"{100 * d[0]:+.2f}"
    return (f"{100 * statistics.mean(d):+.2f} ± {100 * statistics.stdev(d):.2f} ({sum(x > 0 for x in d)}/{len(d)} "
            f"seeds > 0: {' / '.join(f'{100 * x:+.1f}' for x in d)})")


def pareto(rows: list[dict]) -> list[tuple[str, int, float, int, bool]]:
    """L2 rows per method: (name, mean file bytes, mean accuracy, seeds, on the accuracy/size front)."""
    names = sorted({r["name"] for r in rows if r["base"] == "l2"})
    points = []
    for name in names:
        rs = [r for r in rows if r["base"] == "l2" and r["name"] == name]
        points.append((name, round(statistics.mean(r["file_bytes"] for r in rs)),
                       statistics.mean(r["accuracy"] for r in rs), len(rs)))
    return [(*p, not any(q[1] <= p[1] and q[2] > p[2] for q in points)) for p in sorted(points, key=lambda p: p[1])]


def report(data: str = "mnist5k") -> str:
    results = load_results(data)
    rows = results["rows"]
    seeds = sorted({r["seed"] for r in rows})
    lam, alpha = DSMM["strength"], DSMM["alpha_init"]
    if data == "mnist5k":
        setup = (f"LeNet-5 on mnist5k ({results['meta'].get('epochs')} epochs SGD + L2 5e-4, or + DSMM λ = {lam:g}, "
                 f"α₀ = {alpha:g}; multi-dim DSMM with dims = 2 for the 2-dim and 4-dim rows: dims = 4 does not "
                 "divide conv1's 150 weights); `features.conv1.weight` stays float in every quantized row; 1,000 "
                 "test images (one image = 0.1 point)")
    elif data == "thesis":
        setup = (f"the thesis MLP (784-112-10, seeds/004 Sec. 4.1) on mnist5k ({results['meta'].get('epochs')} epochs "
                 f"Adam 1e-3 + L2 5e-4, or + DSMM λ = {lam:g}, α₀ = {alpha:g}; multi-dim DSMM with dims = d for the "
                 "d-dim rows); both weights palettized; 1,000 test images (one image = 0.1 point)")
    else:
        setup = (f"the demo's MLP on digits ({results['meta'].get('epochs')} epochs Adam + L2 5e-4, or + DSMM "
                 f"λ = {lam:g}, α₀ = {alpha:g}; multi-dim DSMM with dims = d for the d-dim rows); 359 test images, "
                 "one image is 0.28 point")
    lines = [f"`benchmarks/clustering.py --data {data}` (results: `{results_path(data).relative_to(ROOT)}`): {setup}, "
             "then DKM fine-tuned 3 epochs (Adam 1e-3, τ = 0.05·std, 3 iterations per forward, one palette per "
             f"tensor) or post-training k-means. Seeds: {seeds} (n = seeds per cell where they differ); test accuracy "
             "(%) of the reloaded file, mean ± std over seeds; Δ DSMM = mean ± std of the per-seed differences "
             "DSMM − L2 (points; each seed's value after the colon); 1 thread.",
             "", "| palette | DKM, L2 | DKM, DSMM | Δ DSMM (DKM) | k-means, L2 | k-means, DSMM | Δ DSMM (k-means) "
             "| file bytes (DKM, L2) | document 000, DKM → DKM + DSMM |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    dsmm_base = {"1b": "dsmm", "2b": "dsmm", "4b": "dsmm", "2b2d": "dsmm-d2",
                 "4b4d": "dsmm-d2" if data == "mnist5k" else "dsmm-d4"}

    def acc(base: str, name: str) -> list[float]:
        return [r["accuracy"] for r in rows if r["base"] == base and r["name"] == name]

    def delta(method: str, pal: str, dbase: str) -> str:
        d = _paired(rows, ("l2", f"{method}-{pal}"), (dbase, f"{method}-{pal}"))
        return _paired_text(d)

    varied = len({len(acc(b, n)) for b in {"l2", *dsmm_base.values()} for n in {r["name"] for r in rows}} - {0}) > 1
    for pal, dbase in dsmm_base.items():
        dbase = base_label(dbase)
        size = [r["file_bytes"] for r in rows if r["base"] == "l2" and r["name"] == f"dkm-{pal}"]
        lines.append(f"| {pal.replace('b', ' bit').replace('2d', ' / 2-dim').replace('4d', ' / 4-dim')} | "
                     f"{_mean(acc('l2', f'dkm-{pal}'), varied)} | {_mean(acc(dbase, f'dkm-{pal}'), varied)} | "
                     f"{delta('dkm', pal, dbase)} | {_mean(acc('l2', f'kmeans-{pal}'), varied)} | "
                     f"{_mean(acc(dbase, f'kmeans-{pal}'), varied)} | {delta('kmeans', pal, dbase)} | "
                     f"{size[0] if size else '-'} | {DOCUMENT_000[pal]} |")
    floats = {}
    for base in bases(data):
        label = base_label(base)
        per_seed = {r["seed"]: r["float_accuracy"] for r in rows if r["base"] == label}
        if per_seed:
            floats[label] = list(per_seed.values())
    l2_names = {r["name"] for r in rows if r["base"] == "l2"}
    full = [s for s in seeds if {r["name"] for r in rows if r["base"] == "l2" and r["seed"] == s} == l2_names]
    float_rows = [{"base": r["base"], "name": "float", "seed": r["seed"], "accuracy": r["float_accuracy"]}
                  for r in rows]
    float_delta = ", ".join(f"{b} − l2 {_paired_text(_paired(float_rows, ('l2', 'float'), (b, 'float')))}"
                            for b in floats if b != "l2")
    lines += ["", "Float accuracy of the base models: " + ", ".join(
        f"{b} {_mean(v, varied)}" for b, v in floats.items()) + f"; paired by seed: {float_delta} (document 000 "
        "Table 6, pre-trained MobileBERT: 90.41 → 90.83 with DSMM).", "",
        f"Accuracy against file size on the L2 model, mean over seeds {full} (the seeds that have every row), every "
        "method quantizing the same tensors (front = no smaller-or-equal file is more accurate):", "",
        "| row | file bytes | accuracy % | seeds | on the front |", "| --- | --- | --- | --- | --- |"]
    for name, size, accuracy, n, front in pareto([r for r in rows if r["seed"] in full]):
        lines.append(f"| {name} | {size} | {100 * accuracy:.2f} | {n} | {'yes' if front else ''} |")
    return "\n".join(lines) + "\n"


def write_benchmarks(text: str, data: str = "mnist5k") -> None:
    """Replace the block between BEGIN and END in BENCHMARKS.md (the issue-14 section holds the markers; the thesis
    MLP's block is marked ``clustering.py thesis``)."""
    md = BENCHMARKS_MD.read_text(encoding="utf-8")
    begin, end = (BEGIN, END) if data == "mnist5k" else (BEGIN.replace(".py", f".py {data}"),
                                                         END.replace(".py", f".py {data}"))
    if begin not in md or end not in md:
        raise SystemExit(f"BENCHMARKS.md has no {begin} ... {end} block in the issue-14 section")
    block = f"{begin}\n<!-- generated by benchmarks/clustering.py --data {data} --report -->\n{text}{end}"
    md = md[:md.index(begin)] + block + md[md.index(end) + len(end):]
    BENCHMARKS_MD.write_text(md, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--data", default="mnist5k", choices=list(SOURCES),
                        help="mnist5k (LeNet-5, the benchmark), thesis (the thesis MLP on mnist5k) or digits (the "
                        "demo's MLP, a pilot)")
    parser.add_argument("--bases", nargs="+", default=None, choices=list(DIGITS_BASES))
    parser.add_argument("--dsmm", nargs=2, type=float, metavar=("LAMBDA", "ALPHA0"), default=None,
                        help="DSMM strength and initial temperature (default: the paper's 0.01 and 0.1)")
    parser.add_argument("--epochs", type=int, default=None, help="float training epochs (default: the recipe's 20)")
    parser.add_argument("--rows", nargs="+", default=None,
                        help="only these rows (e.g. the DKM and k-means rows for extra seeds; default: all)")
    parser.add_argument("--budget", type=float, default=540.0, help="seconds after which no new row starts")
    parser.add_argument("--report", action="store_true", help="write results/clustering.md and print it")
    args = parser.parse_args()
    if args.bases is None:
        args.bases = list(bases(args.data))
    if args.dsmm:
        DSMM["strength"], DSMM["alpha_init"] = args.dsmm
    if args.report:
        text = report(args.data)
        tag = "" if base_label("dsmm") == "dsmm" else f"_dsmm{DSMM['strength']:g}_{DSMM['alpha_init']:g}"
        path = results_path(args.data)
        path.with_name(f"{path.stem}{tag}.md").write_text(text, encoding="utf-8")
        if args.data != "digits" and not tag:
            write_benchmarks(text, args.data)
        print(text)
        return
    run(args)


if __name__ == "__main__":
    main()
