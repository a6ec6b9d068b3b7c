"""Benchmark for issue 4: do quantization-friendly regularizers keep accuracy under naive PTQ?

Reproduces, on ``mnist5k``, the comparison of DSMM (Kundu et al. 2024, seeds/000, Table 1, "Naïve" column: PTQ with
no advanced technique) and of the SymReg/SatNL supplement (Park et al. 2022, seeds/002): the same network is trained
with the baseline L2 (1x), heavy L2 (10x), DSMM, SymReg+SatNL, KURE and SymReg+SatNL+KURE (each method on top of
the baseline L2, as in the documents, except heavy L2 which replaces it), then quantized with naive per-tensor
min-max PTQ (``learnq.ptq.quantize(method="minmax", granularity="tensor")``) at 8, 4, 3 and 2-bit weights with
8-bit activations at the input of every conv/linear layer (the network's input included). Two weight grids are
measured: ``symmetric`` (``Δ = max|w|/(2^(b-1)-1)``, codes -2^(b-1)..2^(b-1)-1, learnq's default) and ``affine``
(``Δ = (max-min)/(2^b-1)``: the range ``max - min`` that DSMM shrinks sets the step).

DSMM is run twice: ``dsmm`` with the paper's ``λ = 0.01, α₀ = 0.1`` and ``dsmm-tuned`` with ``λ = 1, α₀ = 10`` (the
best 2-bit accuracy of a one-seed sweep, see BENCHMARKS.md). ``symreg`` and ``satnl`` alone are ablations of
SymReg+SatNL; ``symreg+satnl+asam`` (the supplement's optimizer, twice the training time) runs only when asked for.

Everything else is the recipe ``recipes/regularizers-mnist5k.toml`` (data, network, optimizer, schedule); the
script swaps its ``[[regularizers]]`` / ``[satnl]`` / ``[asam]`` sections per method and trains through
``train_recipe``, so the benchmark exercises the recipe path. Writes ``benchmarks/results/regularizers.json`` (every
run, the aggregates, DSMM's α per layer, SatNL's levels, weight statistics), ``regularizers.md`` (the tables),
``regularizers_hist.png`` (one layer's weights per method, first seed, outliers beyond 3σ in red) and
``regularizers_accuracy.png`` (accuracy against weight bits).

    .venv/bin/python benchmarks/regularizers.py --first-seed 1  # 3 seeds x 9 methods, 20 epochs (~15 min, 1 thread)
    .venv/bin/python benchmarks/regularizers.py --quick         # smoke test (~1 min): 1 seed, 2 epochs, 1,500 samples
    .venv/bin/python benchmarks/regularizers.py --methods dsmm-tuned --dsmm-tuned 0.3 --seeds 1 --out /tmp/sweep
"""

from __future__ import annotations

import argparse
import copy
import json
import math
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

from learnq.analysis.weights import plot_histograms, tensor_stats
from learnq.grid import GridSpec
from learnq.layers import weight_layers
from learnq.pipeline.data import get_dataset_info
from learnq.pipeline.models import model_from_spec, model_spec
from learnq.pipeline.recipe import Recipe, load_recipe
from learnq.pipeline.run import TrainedRun, load_splits, train_recipe
from learnq.pipeline.train import evaluate
from learnq.ptq import quantize
from learnq.ptq.ptq_weight import quantize_weights

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "regularizers-mnist5k.toml"
RESULTS = Path(__file__).resolve().parent / "results" / "regularizers"
BITS = (8, 4, 3, 2)
ABITS = 8
SCHEMES = ("symmetric", "affine")
#: method -> (regularizer names on top of, or instead of, the baseline, SatNL on?, ASAM on?)
METHODS: dict[str, tuple[tuple[str, ...], bool, bool]] = {
    "l2": (("l2",), False, False),
    "l2-heavy": (("l2-heavy",), False, False),
    "dsmm": (("l2", "dsmm"), False, False),
    "symreg+satnl": (("l2", "symreg"), True, False),
    "kure": (("l2", "kure"), False, False),
    "symreg+satnl+kure": (("l2", "symreg", "kure"), True, False),
    "dsmm-tuned": (("l2", "dsmm-tuned"), False, False),  # DSMM at --dsmm-tuned / --dsmm-tuned-alpha-init
    "symreg": (("l2", "symreg"), False, False),  # ablations of symreg+satnl
    "satnl": (("l2",), True, False),
    "symreg+satnl+asam": (("l2", "symreg"), True, True),  # the supplement's training set-up; not in the default set
}
DEFAULT_METHODS = ("l2", "l2-heavy", "dsmm", "dsmm-tuned", "symreg+satnl", "kure", "symreg+satnl+kure", "symreg",
                   "satnl")


def method_sections(method: str, args: argparse.Namespace) -> dict[str, Any]:
    """The recipe sections (``regularizers``, ``satnl``, ``asam``) of one method, with the strengths of ``args``."""
    names, satnl, asam = METHODS[method]
    regs: list[dict[str, Any]] = []
    for name in names:
        if name in ("l2", "l2-heavy"):
            regs.append({"name": name, "strength": args.l2})  # l2-heavy multiplies it by 10
        elif name == "dsmm":
            regs.append({"name": "dsmm", "strength": args.dsmm, "options": {"alpha_init": args.dsmm_alpha_init}})
        elif name == "dsmm-tuned":
            regs.append({"name": "dsmm", "strength": args.dsmm_tuned,
                         "options": {"alpha_init": args.dsmm_tuned_alpha_init}})
        elif name == "symreg":
            regs.append({"name": "symreg", "strength": args.symreg})
        elif name == "kure":
            regs.append({"name": "kure", "strength": args.kure, "options": {"target": 1.8}})
    return {"regularizers": regs, "satnl": {"learnable": args.satnl_learnable} if satnl else None,
            "asam": {"rho": args.asam_rho, "eta": 0.01} if asam else None}


def make_recipe(base: Recipe, method: str, seed: int, args: argparse.Namespace) -> Recipe:
    """``base`` with the method's training-time sections, no variants (the benchmark quantizes), one seed."""
    data = base.to_dict()
    data.update(method_sections(method, args))
    data["name"] = f"{base.name}-{method}"
    data["variants"] = []
    if args.epochs is not None:
        data["train"]["epochs"] = args.epochs
    if args.limit is not None:
        data["data"]["limit"] = args.limit
    data["train"].pop("seed")
    data["data"].pop("seed")
    data["seed"] = seed
    return Recipe.from_dict(data)


def default_layer(recipe: Recipe) -> str:
    """The second conv/linear layer of the recipe's network (the first if it has one): the histograms' layer."""
    info = get_dataset_info(recipe.data.name)
    if info.needs_root:
        raise SystemExit(f"give --layer: the data set {info.name} must be loaded to know the network's shape")
    splits = load_splits(recipe)
    spec = model_spec(recipe.model.name, splits.input_shape, splits.num_classes, **recipe.model.args)
    names = [name for name, _ in weight_layers(model_from_spec(spec))]
    return names[1] if len(names) > 1 else names[0]


def ptq_accuracy(trained: TrainedRun, bits: int, scheme: str) -> float:
    """Test accuracy after naive per-tensor min-max PTQ: ``bits``-bit weights, 8-bit activations.

    ``learnq.ptq.quantize`` takes grids with one clipping value (symmetric), so the affine grid is done in its two
    steps: the weights with ``learnq.ptq.ptq_weight.quantize_weights``, then ``quantize(wbits=32, abits=8)`` calibrates
    the activations on the model with quantized weights (the order ``quantize`` itself uses; for the symmetric grid
    the two routes give the same model).
    """
    model = trained.model
    if scheme != "symmetric":
        model = copy.deepcopy(model)
        quantize_weights(model, GridSpec(bits=bits, scheme=scheme, granularity="tensor"))
    result = quantize(model, trained.splits.calib, method="minmax", wbits=bits if scheme == "symmetric" else 32,
                      abits=ABITS, granularity="tensor", scheme="symmetric", progress=False)
    return evaluate(result.model, trained.splits.test)["accuracy"]


def run_one(base: Recipe, method: str, seed: int, args: argparse.Namespace, layer: str) -> dict[str, Any]:
    """Train one method with one seed, quantize it at every bit-width and grid; the JSON record of the run."""
    recipe = make_recipe(base, method, seed, args)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="learnq-bench-") as out:
        trained = train_recipe(recipe, out)
    train_seconds = time.perf_counter() - start
    ptq = {scheme: {str(b): ptq_accuracy(trained, b, scheme) for b in BITS} for scheme in args.schemes}
    weights = {n: m.weight.detach().clone() for n, m in weight_layers(trained.model)}
    stats = {n: {k: v for k, v in tensor_stats(w, f"{n}.weight").items() if k != "histogram"}
             for n, w in weights.items()}
    return {"method": method, "seed": seed, "float": trained.test["accuracy"], "ptq": ptq,
            "train_seconds": train_seconds, "history": [{k: h[k] for k in ("epoch", "train_loss", "test_acc", "extra")}
                                                       for h in trained.history],
            "training": trained.training, "weight_stats": stats, "_layer_weight": weights[layer]}


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def aggregate(runs: list[dict[str, Any]], methods: list[str], schemes: list[str]) -> dict[str, Any]:
    """Per method: float and PTQ accuracy (mean, sample std over seeds), DSMM α and SatNL levels per layer."""
    out: dict[str, Any] = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        entry: dict[str, Any] = {"float": _mean_std([r["float"] for r in mine]),
                                 "ptq": {s: {str(b): _mean_std([r["ptq"][s][str(b)] for r in mine]) for b in BITS}
                                         for s in schemes}}
        dsmm = [r["training"]["regularizers"]["dsmm"]["alpha"] for r in mine if "dsmm" in r["training"]["regularizers"]]
        if dsmm:
            entry["dsmm_alpha"] = {layer: _mean_std([a[layer] for a in dsmm]) for layer in dsmm[0]}
        satnl = [r["training"]["satnl"]["scales"] for r in mine if r["training"]["satnl"]]
        if satnl:
            entry["satnl_scale"] = {layer: _mean_std([a[layer] for a in satnl]) for layer in satnl[0]}
        layers = list(mine[0]["weight_stats"])
        entry["weights"] = {layer: {k: _mean_std([float(r["weight_stats"][layer][k] or 0.0) for r in mine])["mean"]
                                    for k in ("range", "abs_max", "std", "kurtosis", "range_asymmetry", "outliers")}
                            for layer in layers}
        out[method] = entry
    return out


def _cell(stat: dict[str, float]) -> str:
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def markdown(summary: dict[str, Any], schemes: list[str], n_seeds: int, layer: str, config: dict[str, Any]) -> str:
    """The accuracy tables (one per weight grid), α per layer and the weight statistics, as Markdown."""
    lines = []
    for scheme in schemes:
        lines += [f"**Test accuracy (%), naive per-tensor min-max PTQ, {scheme} weight grid, 8-bit activations "
                  f"(mean ± std over {n_seeds} seed(s))**", "",
                  "| method | float | " + " | ".join(f"W{b}A{ABITS}" for b in BITS) + " |",
                  "| --- | ---: | " + " | ".join("---:" for _ in BITS) + " |"]
        for method, entry in summary.items():
            cells = [_cell(entry["float"])] + [_cell(entry["ptq"][scheme][str(b)]) for b in BITS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    dsmm = {m: e["dsmm_alpha"] for m, e in summary.items() if "dsmm_alpha" in e}
    for method, alphas in dsmm.items():
        key = "dsmm" if method == "dsmm" else "dsmm_tuned"
        setting = f"λ = {config[key]:g}, α₀ = {config[key + '_alpha_init']:g}"
        lines += [f"**DSMM temperature α per layer after training ({method}: {setting}; mean ± std over seeds)**", "",
                  "| layer | α |", "| --- | ---: |"]
        lines += [f"| {layer} | {a['mean']:.3g} ± {a['std']:.2g} |" for layer, a in alphas.items()]
        lines.append("")
    lines += [f"**Weights of `{layer}` after training (mean over seeds)**", "",
              "| method | range | max abs | std | kurtosis | range asymmetry | values beyond 3σ |",
              "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for method, entry in summary.items():
        w = entry["weights"][layer]
        lines.append(f"| {method} | {w['range']:.3g} | {w['abs_max']:.3g} | {w['std']:.3g} | {w['kurtosis']:.2f} | "
                     f"{w['range_asymmetry']:+.2f} | {w['outliers']:.0f} |")
    return "\n".join(lines) + "\n"


def plot_accuracy(summary: dict[str, Any], schemes: list[str], path: Path) -> None:
    """Accuracy against weight bits, one panel per grid, one line per method (error bars: std over seeds)."""
    from learnq.analysis.plots import new_figure, save_png, series_color

    fig = new_figure(5.2 * len(schemes), 4)
    axes = fig.subplots(1, len(schemes), squeeze=False)[0]
    for ax, scheme in zip(axes, schemes, strict=True):
        bits = sorted(BITS)
        for i, (method, entry) in enumerate(summary.items()):
            stats = [entry["ptq"][scheme][str(b)] for b in bits] + [entry["float"]]
            ax.errorbar(range(len(stats)), [100 * s["mean"] for s in stats], yerr=[100 * s["std"] for s in stats],
                        label=method, color=series_color(i), marker="o", capsize=3, linewidth=1.2)
        ax.set_xticks(range(len(bits) + 1), [f"W{b}" for b in bits] + ["float"])
        ax.set(ylabel="test accuracy (%)", title=f"per-tensor min-max, {scheme} grid, A{ABITS}", ylim=(0, 100))
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, default 3")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are FIRST..FIRST+N-1 (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recipe's)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 2 epochs, 1,500 training samples")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated subset of: {', '.join(METHODS)}")
    p.add_argument("--schemes", default=",".join(SCHEMES), help="weight grids: symmetric, affine or both")
    p.add_argument("--recipe", default=str(RECIPE), help="base recipe (data, model, training)")
    p.add_argument("--limit", type=int, default=None, help="at most this many training samples")
    p.add_argument("--layer", default=None, help="layer of the histograms (default: the second conv/linear layer)")
    p.add_argument("--l2", type=float, default=5e-4, help="L2 strength (1x); l2-heavy uses 10x (default 5e-4)")
    p.add_argument("--dsmm", type=float, default=0.01, help="DSMM strength λ (default 0.01, the paper's)")
    p.add_argument("--dsmm-alpha-init", type=float, default=0.1, help="DSMM initial α (default 0.1, the paper's)")
    p.add_argument("--dsmm-tuned", type=float, default=1.0, help="DSMM λ of the dsmm-tuned row (default 1.0)")
    p.add_argument("--dsmm-tuned-alpha-init", type=float, default=10.0,
                   help="DSMM initial α of the dsmm-tuned row (default 10, the paper's fixed-α value)")
    p.add_argument("--symreg", type=float, default=0.1, help="SymReg strength (default 0.1)")
    p.add_argument("--kure", type=float, default=1.0, help="KURE strength (default 1.0, the reference README's)")
    p.add_argument("--satnl-learnable", action="store_true", help="train SatNL's saturation levels")
    p.add_argument("--asam-rho", type=float, default=0.5, help="ASAM ρ for symreg+satnl+asam (default 0.5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: 2 is slower on a busy machine)")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="only rewrite the .md and _accuracy.png of a saved results JSON")
    p.add_argument("--out", default=str(RESULTS), help="output prefix (default benchmarks/results/regularizers)")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    args.schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    bad = [m for m in args.methods if m not in METHODS] + [s for s in args.schemes if s not in SCHEMES]
    if bad or not args.methods or not args.schemes or args.seeds < 1 or args.first_seed < 0:
        p.error(f"unknown or empty --methods/--schemes {bad}, --seeds < 1 or --first-seed < 0")
    if args.quick:
        args.seeds, args.epochs, args.limit = 1, 2, args.limit or 1500
    return args


def _md_header(payload: dict[str, Any]) -> str:
    return f"<!-- {payload['command']} ({payload['seconds'] / 60:.1f} min) -->\n\n"


def render(path: Path) -> None:
    """Rewrite the Markdown table and the accuracy plot of a saved JSON (no training; the histograms need the
    weights, which the JSON does not hold)."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    config, summary = payload["config"], payload["summary"]
    stem = path.with_name(path.name.removesuffix(".json"))
    table = markdown(summary, config["schemes"], config["seeds"], payload["layer"], config)
    stem.with_name(stem.name + ".md").write_text(_md_header(payload) + table, encoding="utf-8")
    plot_accuracy(summary, config["schemes"], stem.with_name(stem.name + "_accuracy.png"))
    print(table)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        render(Path(args.render))
        return 0
    torch.set_num_threads(args.threads)
    base = load_recipe(args.recipe)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    layer = args.layer or default_layer(base)
    hist_weights: dict[str, torch.Tensor] = {}
    for method in args.methods:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run = run_one(base, method, seed, args, layer)
            weight = run.pop("_layer_weight")
            if seed == args.first_seed:
                hist_weights[method] = weight
            runs.append(run)
            ptq = "  ".join(f"{s[:3]} " + "/".join(f"{100 * run['ptq'][s][str(b)]:.1f}" for b in BITS)
                            for s in args.schemes)
            print(f"[{time.perf_counter() - start:6.0f}s] {method:18s} seed {seed}: float {100 * run['float']:.1f}  "
                  f"W{'/'.join(map(str, BITS))}A8 {ptq}  ({run['train_seconds']:.0f}s)", flush=True)
    summary = aggregate(runs, args.methods, args.schemes)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "render")}
    table = markdown(summary, args.schemes, args.seeds, layer, config)
    print()
    print(table)
    total = time.perf_counter() - start
    payload = {
        "benchmark": "regularizers", "command": "python benchmarks/regularizers.py " + " ".join(sys.argv[1:]),
        "config": config, "recipe": base.to_dict(), "bits": list(BITS), "abits": ABITS, "layer": layer,
        "ptq": "learnq.ptq.quantize(method='minmax', granularity='tensor', abits=8): weights and conv/linear inputs; "
               "affine weights by learnq.ptq.ptq_weight.quantize_weights, then quantize(wbits=32, abits=8)",
        "std": "sample standard deviation over seeds (n - 1)", "seconds": total,
        "commit": _git_commit(),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": args.threads,
                    "cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        "summary": summary, "runs": runs,
    }
    json_path = out.with_name(out.name + ".json")
    json_path.write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
    md_path = out.with_name(out.name + ".md")
    md_path.write_text(_md_header(payload) + table, encoding="utf-8")
    records = [tensor_stats(w, f"{method}: {layer}.weight") for method, w in hist_weights.items()]
    plot_histograms(records, out.with_name(out.name + "_hist.png"), log=True, max_cols=3,
                    title=f"{layer}.weight after training (seed {args.first_seed}); red: beyond 3σ")
    plot_accuracy(summary, args.schemes, out.with_name(out.name + "_accuracy.png"))
    print(f"wrote {json_path}, {md_path} and the PNGs ({total / 60:.1f} min)")
    if any(not math.isfinite(r["float"]) for r in runs):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
