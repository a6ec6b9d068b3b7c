"""Benchmark for issue 5: learned quantization during training on ``mnist5k`` (the thesis's MNIST network).

``pareto``: accuracy against true model size for every training-time quantizer, each trained **from scratch** with
its quantizer attached (a ``[qat]`` recipe built from ``recipes/thesis-mnist5k.toml``: data, network, optimizer,
schedule), frozen, saved and reloaded: DiffQ (seeds/003) at several size penalties λ, STE fake-quant QAT and LSQ at
2, 3, 4 and 8 bits (per output channel), the thesis's nested layer (seeds/004) at several thresholds λ and loss
weights γ, plus the float32 model and per-channel min-max PTQ of it. Sizes: the true size (DiffQ's Eq. 12 for
DiffQ, codes plus float32 steps for the others, float tensors at 32 bits) and the learnq file's bytes. Writes
``benchmarks/results/qat.json``, ``qat.md`` and ``qat_pareto.png``.

``speed``: learnq's DiffQ side by side with the ``diffq`` package (0.2.4, ``DiffQuantizer``), which lives only in
``.venv-bench``: the same network, data, seed, λ and group size; accuracy, true size, train-step and eval times,
and the float32 step and eval, on the thesis MLP (the worst case: each weight used once per sample); then train step
and eval of two conv nets (``lenet`` on mnist5k, ``thesis-cifar`` on 3x32x32) at group sizes 8 and 16.
Run from ``.venv``: it loads the data, then runs ``qat_speed_worker.speed_worker`` under
``.venv-bench/bin/python`` (torch threads fixed, warm-up, interleaved rounds, medians). Writes
``benchmarks/results/qat_speed.json``.

    .venv/bin/python benchmarks/qat.py pareto            # 3 seeds, the recipe's 15 epochs (~10-20 min, 2 cores)
    .venv/bin/python benchmarks/qat.py pareto --quick    # smoke test: 1 seed, 2 epochs, fewer points
    .venv/bin/python benchmarks/qat.py speed             # ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "thesis-mnist5k.toml"
RESULTS = Path(__file__).resolve().parent / "results"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
THESIS_KB = (360.0, 50.0)  # seeds/004: MNIST model file 0.36 MB -> 0.05 MB
LAMBDAS = (1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)  # DiffQ's λ (loss per MB; the network is 0.09 MB at 8 bits)
DIFFQ_LR = 0.01  # bits-logit lr for from-scratch training (the default 1e-3 moves a logit < 1 in 15 epochs)


def configs(quick: bool, lambdas: tuple[float, ...] = LAMBDAS) -> list[tuple[str, dict[str, Any] | None]]:
    """(label, [qat] table or None for the float run) of every point."""
    out: list[tuple[str, dict[str, Any] | None]] = [("float", None)]
    for lam in ((1.0, 100.0) if quick else lambdas):
        out.append((f"diffq λ={lam:g}", {"method": "diffq", "options": {"penalty": lam, "quant_lr": DIFFQ_LR}}))
    for method in ("ste", "lsq"):
        for bits in ((2, 4) if quick else ((1, 2, 3, 4, 8) if method == "ste" else (2, 3, 4, 8))):  # LSQ: >= 2
            out.append((f"{method} w{bits}", {"method": method, "bits": bits, "granularity": "channel"}))
    nested = [(1e-10, {}), (1e-10, {"gamma_bins": 1e-2})] if quick else [
        (1e-10, {}), (1e-2, {}), (1e-1, {}), (1.0, {}), (1e-10, {"gamma_bins": 1e-2}), (1e-10, {"gamma_bins": 1e-1}),
        (1e-10, {"gamma_inverse": 1e-2}), (1.0, {"quant_lr": 1e-3}), (1e-10, {"gamma_bins": 1e-1, "quant_lr": 1e-3}),
        (1.0, {"gamma_bins": 1e-1, "gamma_deviation": 1.0, "quant_lr": 1e-3})]
    for lam, opts in nested:
        text = "".join(f", {k.replace('gamma_', 'γ_').replace('quant_lr', 'lr')}={v:g}" for k, v in opts.items())
        out.append((f"nested λ={lam:g}{text}", {"method": "nested", "granularity": "row",
                                                 "options": {"threshold": lam, **opts}}))
    return out


def run_point(label: str, qat: dict[str, Any] | None, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train one point with one seed through the recipe path; its rows (the float run adds its PTQ rows)."""
    from learnq.pipeline.recipe import Recipe, load_recipe
    from learnq.pipeline.run import run_recipe

    data = load_recipe(args.recipe).to_dict()
    data["train"].pop("seed")
    data["data"].pop("seed")
    data.update(seed=seed, name=f"qat-{seed}", report={"plots": False})
    if args.epochs is not None:
        data["train"]["epochs"] = args.epochs
    if args.limit is not None:
        data["data"]["limit"] = args.limit
    if qat is None:
        data["variants"] = [{"method": "float"}] + [{"method": "minmax", "bits": b, "granularity": "row"}
                                                    for b in args.ptq_bits]
    else:
        data["variants"] = []
        data["qat"] = qat
    recipe = Recipe.from_dict(data)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        result = run_recipe(recipe, out, report=False)
        training = json.loads((Path(out) / "metrics.json").read_text())["training"]
    rows = []
    for row, detail in zip(result.rows, result.details, strict=True):
        name = label if qat is not None or row["method"] == "float" else f"minmax w{row['bits']} (PTQ)"
        true_bits = (training["qat"]["true_size_mb"] * 2**23 if qat is not None else detail["naive_bytes"] * 8)
        rows.append({"label": name, "seed": seed, "method": row["method"], "bits": row["bits"],
                     "accuracy": row["accuracy"], "accuracy_before_save": detail["accuracy_before_save"],
                     "true_kb": true_bits / 8 / 1000, "file_kb": row["file_bytes"] / 1000,
                     "seconds": time.perf_counter() - t0})
    return rows


def pareto_front(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points no other point beats on both size (smaller or equal) and accuracy (higher or equal)."""
    front = [p for p in points if not any(q is not p and q["true_kb"] <= p["true_kb"] and q["accuracy"] >=
                                          p["accuracy"] and (q["true_kb"], q["accuracy"]) != (p["true_kb"],
                                                                                              p["accuracy"])
                                          for q in points)]
    return sorted(front, key=lambda p: p["true_kb"])


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and std) over seeds of each label's accuracy, bits and sizes, in first-seen order."""
    out = []
    base = {r["seed"]: r["accuracy"] for r in runs if r["label"] == "float"}
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        acc = [r["accuracy"] for r in mine]
        delta = [r["accuracy"] - base[r["seed"]] for r in mine if r["seed"] in base]  # paired: same seed and split
        out.append({"label": label, "method": mine[0]["method"], "seeds": len(mine),
                    "accuracy": statistics.mean(acc), "accuracy_std": statistics.pstdev(acc),
                    "delta": statistics.mean(delta) if delta else None,
                    "delta_std": statistics.pstdev(delta) if delta else None,
                    "bits": statistics.mean(r["bits"] for r in mine),
                    "true_kb": statistics.mean(r["true_kb"] for r in mine),
                    "file_kb": statistics.mean(r["file_kb"] for r in mine),
                    "exact": all(r["accuracy"] == r["accuracy_before_save"] for r in mine)})
    return out


def plot(summary: list[dict[str, Any]], front: list[dict[str, Any]], path: Path) -> None:
    """Accuracy (mean over seeds) against true size, one line per method; points far below the float model are drawn
    as triangles on the lower edge, labelled with their accuracy."""
    from matplotlib.ticker import FuncFormatter

    from learnq.pipeline.report import _figure

    fig = _figure(8, 5)
    ax = fig.subplots()
    top = max(100 * s["accuracy"] for s in summary)
    floor = min(100 * s["accuracy"] for s in summary if s["method"] != "minmax") - 1.0
    colors = {"float": "black", "minmax": "grey", "diffq": "tab:blue", "ste": "tab:orange", "lsq": "tab:green",
              "nested": "tab:red"}
    for method, color in colors.items():
        pts = sorted((s for s in summary if s["method"] == method), key=lambda s: s["true_kb"])
        if not pts:
            continue
        ys = [max(floor, 100 * p["accuracy"]) for p in pts]
        ax.plot([p["true_kb"] for p in pts], ys, color=color, marker="o", ms=5, lw=0 if method == "nested" else 0.8,
                alpha=0.9, label="min-max PTQ" if method == "minmax" else method)
        for p, y in zip(pts, ys, strict=True):
            if y > 100 * p["accuracy"]:
                ax.plot([p["true_kb"]], [y], marker="v", color=color, ms=9)
                ax.annotate(f"{100 * p['accuracy']:.1f}%", (p["true_kb"], y), xytext=(6, 2),
                            textcoords="offset points", fontsize=8, color=color)
    ax.plot([p["true_kb"] for p in front], [100 * p["accuracy"] for p in front], color="purple", marker="*", ms=12,
            ls="--", lw=1, label="Pareto front (all methods)")
    ax.axvline(THESIS_KB[1], color="tab:red", lw=0.8, ls=":", label="thesis: 0.36 MB -> 50 kB")
    base = next((s for s in summary if s["method"] == "float"), None)
    if base is not None:
        ax.axhline(100 * base["accuracy"], color="black", lw=0.6, ls=":")
    ax.set_xscale("log")
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(plain)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_ylim(floor - 0.3, top + 0.5)
    ax.set(xlabel="true model size (kB, log scale)", ylabel="test accuracy (%), mean over seeds",
           title="mnist5k, thesis MNIST network: accuracy vs true size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, format="png")


def markdown(summary: list[dict[str, Any]], front: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    float_row = next(s for s in summary if s["label"] == "float")
    lines = [f"Command: `{meta['command']}`; {meta['seeds']} seed(s), {meta['epochs']} epochs, "
             f"{meta['minutes']:.1f} min on {meta['machine']}.", "",
             "| method | bits/weight | accuracy % (± std) | vs float, same seed (pt) | true size kB | file kB | "
             "x smaller (true) | front |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    on_front = {p["label"] for p in front}
    for s in summary:
        bits = f"{s['bits']:.2f}" if s["method"] in ("diffq", "nested") else f"{s['bits']:g}"
        delta = "-" if s["delta"] is None else f"{100 * s['delta']:+.2f} ± {100 * s['delta_std']:.2f}"
        lines.append(f"| {s['label']} | {bits} | {100 * s['accuracy']:.2f} ± {100 * s['accuracy_std']:.2f} | {delta} | "
                     f"{s['true_kb']:.1f} | {s['file_kb']:.1f} | {float_row['true_kb'] / s['true_kb']:.1f} | "
                     f"{'*' if s['label'] in on_front else ''} |")
    return "\n".join(lines) + "\n"


def pareto(args: argparse.Namespace) -> None:
    stem = args.out or str(RESULTS / ("qat_quick" if args.quick else "qat"))
    if args.replot:  # redraw the figure and table of an earlier run from its JSON
        saved = json.loads(Path(f"{stem}.json").read_text())
        plot(saved["summary"], saved["front"], Path(f"{stem}_pareto.png"))
        Path(f"{stem}.md").write_text(markdown(saved["summary"], saved["front"], saved["meta"]))
        return
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    lambdas = tuple(float(v) for v in args.lambdas.split(","))
    only = None if args.only is None else args.only.split(",")
    points = [c for c in configs(args.quick, lambdas) if only is None or any(o in c[0] for o in only)]
    runs: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        for label, qat in points:
            rows = run_point(label, qat, seed, args)
            runs += rows
            for r in rows:
                print(f"seed {seed} {r['label']:<32} bits {r['bits']:>6.2f} acc {100 * r['accuracy']:6.2f} "
                      f"true {r['true_kb']:7.1f} kB file {r['file_kb']:7.1f} kB ({r['seconds']:.0f} s)", flush=True)
    summary = summarize(runs)
    front = pareto_front(summary)
    meta = {"command": " ".join(["python", "benchmarks/qat.py", *sys.argv[1:]]), "seeds": args.seeds,
            "epochs": args.epochs or "the recipe's", "minutes": (time.perf_counter() - t0) / 60,
            "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
                       f"torch {torch.__version__}, {args.threads} thread(s)"}
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps({"meta": meta, "runs": runs, "summary": summary, "front": front},
                                               indent=2) + "\n")
    Path(f"{stem}.md").write_text(markdown(summary, front, meta))
    plot(summary, front, Path(f"{stem}_pareto.png"))
    print(markdown(summary, front, meta))


# -- speed: learnq's DiffQ and the diffq package ------------------------------------------------------------------


def speed(args: argparse.Namespace) -> None:
    """Load mnist5k with learnq (this environment), then time everything in .venv-bench (which has diffq)."""
    from learnq.pipeline.data import load_dataset

    if not BENCH_PYTHON.exists():
        raise SystemExit(f"{BENCH_PYTHON} is missing: the diffq package is installed only in .venv-bench")
    splits = load_dataset("mnist5k", seed=args.seed, calib_size=512, test_fraction=0.2)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "mnist5k.pt"
        torch.save({k: t for k, t in zip(("train_x", "train_y"), splits.train.tensors, strict=True)} |
                   {k: t for k, t in zip(("test_x", "test_y"), splits.test.tensors, strict=True)}, data)
        out = Path(args.out or RESULTS / "qat_speed.json")
        cmd = [str(BENCH_PYTHON), __file__, "speed-worker", "--data", str(data), "--out", str(out),
               "--threads", str(args.threads), "--epochs", str(args.epochs), "--seed", str(args.seed),
               "--penalties", args.penalties, "--bits-lr", str(args.bits_lr), "--rounds", str(args.rounds),
               "--nets", args.nets, "--conv-rounds", str(args.conv_rounds), "--conv-steps", str(args.conv_steps)]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def run_speed_worker(args: argparse.Namespace) -> None:
    """``speed-worker`` (under .venv-bench): :func:`qat_speed_worker.speed_worker`."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from qat_speed_worker import speed_worker

    speed_worker(args)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("pareto", help="accuracy vs true size of every QAT method (from scratch)")
    a.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1), default 3")
    a.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's 15)")
    a.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2 epochs, 1,500 samples, fewer points")
    a.add_argument("--only", default=None, help="comma-separated label fragments: run only matching points")
    a.add_argument("--lambdas", default=",".join(f"{v:g}" for v in LAMBDAS), help="DiffQ's penalties λ")
    a.add_argument("--recipe", default=str(RECIPE), help="base recipe (data, model, training)")
    a.add_argument("--limit", type=int, default=None, help="at most this many training samples")
    a.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    a.add_argument("--out", default=None, help="output stem (default benchmarks/results/qat)")
    a.add_argument("--replot", action="store_true", help="only redraw the PNG and table from the stem's JSON")
    a.set_defaults(func=pareto, ptq_bits=(8, 4, 3, 2))
    for name in ("speed", "speed-worker"):
        s = sub.add_parser(name, help="learnq DiffQ vs the diffq package" if name == "speed" else argparse.SUPPRESS)
        s.add_argument("--epochs", type=int, default=15, help="training epochs of the accuracy comparison")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--penalties", default="0.001,10", help="λ of both: the package README's, the recipe's")
        s.add_argument("--bits-lr", type=float, default=0.01, help="lr of the bits logits, both (default 0.01)")
        s.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
        s.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds of 10 steps")
        s.add_argument("--nets", default="mlp,lenet,thesis-cifar",
                       help="networks: mlp (accuracy + timing), lenet, thesis-cifar (timing); without mlp the JSON's "
                            "MLP results are kept")
        s.add_argument("--conv-rounds", type=int, default=9, help="interleaved rounds for the conv nets")
        s.add_argument("--conv-steps", type=int, default=2, help="calls per round for the conv nets")
        s.add_argument("--out", default=None, help="JSON output (default benchmarks/results/qat_speed.json)")
        s.add_argument("--data", default=None, help=argparse.SUPPRESS)
        s.set_defaults(func=speed if name == "speed" else run_speed_worker)
    args = p.parse_args(argv)
    if getattr(args, "quick", False):
        args.seeds, args.epochs, args.limit = 1, args.epochs or 2, args.limit or 1500
    return args


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    ns = parse_args()
    ns.func(ns)
