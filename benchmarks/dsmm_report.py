"""Tables and plots of ``benchmarks/dsmm_repro.py`` (issue 17; DSMM, seeds/000, Table 1 and Table 3).

Reads the results JSON and the cached models' JSON files (α traces) and writes ``dsmm_repro.md`` (float accuracy,
α against its equilibrium α*, PTQ accuracy as mean ± std over seeds, paired differences DSMM - L2 and heavy L2 - L2
per seed with their sign counts, weight statistics as the results JSON records them) and ``dsmm_repro_alpha.png``
(α/α* per layer against the epoch, the first seed of each protocol and model, one panel each). Nothing here
trains or quantizes.

    python benchmarks/dsmm_report.py [--results benchmarks/results/dsmm_repro.json] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import torch

from learnq.analysis.weights import tensor_stats

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- dsmm_report.py: begin -->", "<!-- dsmm_report.py: end -->"
REGS = ("l2", "l2-heavy", "dsmm")
ROWS = ("naive", "naive-affine", "mse", "mse+bc", "aciq", "kl", "adaround", "adaround-10k", "lapq")
#: how a PTQ row is printed: the JSON's "adaround" rows ran the fast preset (each records its iterations)
LABELS = {"adaround": "adaround (1k it.)", "adaround-10k": "adaround (10k it.)"}
CONFIGS = ("W4A8", "W2A8")


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: list[float], n_seeds: int = 0) -> str:
    """Mean ± std in %; one value is marked "(1 seed)" unless the whole table has one seed (``n_seeds``)."""
    if not values:
        return ""
    m, s = mean_std([100 * v for v in values])
    if len(values) > 1:
        return f"{m:.1f} ± {s:.1f}"
    return f"{m:.1f}" if n_seeds == 1 else f"{m:.1f} (1 seed)"


def seeds_of(results: dict[str, Any], protocol: str, model: str) -> list[int]:
    seeds = {int(k.rsplit("seed", 1)[1]) for k in results["train"] if k.startswith(f"{protocol}/{model}/")}
    return sorted(seeds)


def trace_of(cache: Path, protocol: str, model: str, seed: int,
             results: dict[str, Any] | None = None) -> list[dict[str, Any]] | None:
    """DSMM's α trace of one training: from the results JSON, else from the cached model's JSON."""
    kept = (results or {}).get("train", {}).get(f"{protocol}/{model}/dsmm/seed{seed}", {}).get("alpha_trace")
    if kept:
        return kept
    path = cache / protocol / model / "dsmm" / f"seed{seed}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())["training"]["regularizers"]["dsmm"]["trace"]


def settle_epoch(trace: list[dict[str, Any]], tol: float = 0.1) -> int | None:
    """First epoch from which every layer's |α/α* - 1| stays <= tol to the end (None: never)."""
    ok = [all(s is not None and abs(h["alpha"][k] / s - 1) <= tol for k, s in h["alpha_star"].items())
          for h in trace]
    for i in range(len(ok)):
        if all(ok[i:]):
            return trace[i]["epoch"]
    return None


def pilot_summary(pilot: Path) -> list[dict[str, Any]]:
    """The α-lr pilot (seed 0, scratch, ``<pilot>/alr<lr>/scratch/<model>/dsmm/seed0.json``): per α lr and model, the
    epoch from which α stays within 10 % of α*, and max |dL/dα| over layers at a few epochs."""
    out = []
    for path in sorted(pilot.glob("alr*/scratch/*/dsmm/seed0.json")):
        rec = json.loads(path.read_text())
        trace = rec["training"]["regularizers"]["dsmm"]["trace"]
        grads = {h["epoch"]: max(abs(g) for g in h["grad"].values()) for h in trace}
        last = trace[-1]
        out.append({"alpha_lr": float(path.parts[-5][3:]), "model": path.parts[-3], "float": rec["float"],
                    "epochs": last["epoch"], "settle_epoch": settle_epoch(trace),
                    "max_abs_grad": {str(e): grads[e] for e in (0, 1, 5, 10, last["epoch"]) if e in grads},
                    "alpha_end": last["alpha"], "alpha_star_end": last["alpha_star"]})
    return sorted(out, key=lambda r: (r["model"], r["alpha_lr"]))


def pilot_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| model | α lr | epochs | float % | max over layers of \\|dL/dα\\| at epoch 1 / 5 / 10 / end | "
             "α range at the end | α* range at the end | epoch from which every layer is within 10 % of α* |",
             "| --- | ---: | ---: | ---: | --- | --- | --- | ---: |"]
    for r in rows:
        g = r["max_abs_grad"]
        a, s = list(r["alpha_end"].values()), [v for v in r["alpha_star_end"].values() if v]
        lines.append(f"| {r['model']} | {r['alpha_lr']:g} | {r['epochs']} | {100 * r['float']:.1f} | "
                     + " / ".join(f"{g[k]:.3f}" if k in g else "-" for k in ("1", "5", "10", str(r["epochs"])))
                     + f" | {min(a):.2f} - {max(a):.2f} | {min(s):.2f} - {max(s):.2f} | "
                     f"{'never' if r['settle_epoch'] is None else r['settle_epoch']} |")
    return lines


def alpha_table(results: dict[str, Any], cache: Path, models: list[str], protocols: list[str]) -> list[str]:
    lines = ["| protocol | model | seed | epochs | α/α* at the end: median (min - max over layers) | "
             "α range at the end | α* range at the end | epoch from which every layer is within 10 % of α* |",
             "| --- | --- | ---: | ---: | --- | --- | --- | ---: |"]
    for protocol in protocols:
        for model in models:
            for seed in seeds_of(results, protocol, model):
                trace = trace_of(cache, protocol, model, seed, results)
                if not trace:
                    continue
                last = trace[-1]
                ratios = [last["alpha"][k] / s for k, s in last["alpha_star"].items() if s]
                alphas, stars = list(last["alpha"].values()), [s for s in last["alpha_star"].values() if s]
                settle = settle_epoch(trace)
                lines.append(f"| {protocol} | {model} | {seed} | {last['epoch']} | {statistics.median(ratios):.3f} "
                             f"({min(ratios):.3f} - {max(ratios):.3f}) | {min(alphas):.2f} - {max(alphas):.2f} | "
                             f"{min(stars):.2f} - {max(stars):.2f} | {'never' if settle is None else settle} |")
    return lines


def accuracy_tables(results: dict[str, Any], models: list[str], protocols: list[str]) -> list[str]:
    lines: list[str] = []
    for protocol in protocols:
        for model in models:
            seeds = seeds_of(results, protocol, model)
            if not seeds:
                continue
            head = " | ".join(f"{r} {c}" for c in CONFIGS for r in REGS)
            quantized = [sd for sd in seeds if all(results["ptq"].get(f"{protocol}/{model}/{r}/seed{sd}")
                                                   for r in REGS)]
            what = "one seed, no std" if len(seeds) == 1 else "mean ± std"
            lines += [f"**{protocol}, {model}: test accuracy (%), {what}; PTQ over the seeds quantized for every "
                      f"regularizer so far, {quantized}; float over seeds {seeds}** (float: "
                      + ", ".join(f"{r} {cell(_floats(results, protocol, model, r, seeds), len(seeds))}"
                                  for r in REGS) + ")",
                      "", f"| PTQ | {head} |", "| --- |" + " ---: |" * (len(CONFIGS) * len(REGS))]
            for row in ROWS:
                cells = [cell(_accs(results, protocol, model, r, quantized, row, c), len(quantized))
                         for c in CONFIGS for r in REGS]
                if any(cells):
                    lines.append(f"| {LABELS.get(row, row)} | " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def _floats(results: dict[str, Any], protocol: str, model: str, reg: str, seeds: list[int]) -> list[float]:
    out = [results["train"].get(f"{protocol}/{model}/{reg}/seed{s}", {}).get("float") for s in seeds]
    return [v for v in out if v is not None]


def _acc(results: dict[str, Any], protocol: str, model: str, reg: str, seed: int, row: str, cfg: str) -> float | None:
    return results["ptq"].get(f"{protocol}/{model}/{reg}/seed{seed}", {}).get(row, {}).get(cfg, {}).get("accuracy")


def _accs(results: dict[str, Any], protocol: str, model: str, reg: str, seeds: list[int], row: str,
          cfg: str) -> list[float]:
    out = [_acc(results, protocol, model, reg, s, row, cfg) for s in seeds]
    return [v for v in out if v is not None]


def paired_table(results: dict[str, Any], models: list[str], protocols: list[str], other: str) -> list[str]:
    """``other`` - L2 per seed (same split, same initialisation; fine-tuning: the same starting model)."""
    lines = [f"| protocol | model | PTQ | config | {other} - l2 per seed (points) | mean ± std | better / equal / "
             "worse |", "| --- | --- | --- | --- | --- | ---: | ---: |"]
    for protocol in protocols:
        for model in models:
            seeds = seeds_of(results, protocol, model)
            rows = [("float", None)] + [(row, cfg) for row in ROWS for cfg in CONFIGS]
            for row, cfg in rows:
                diffs = []
                for s in seeds:
                    if row == "float":
                        a, b = (results["train"].get(f"{protocol}/{model}/{r}/seed{s}", {}).get("float")
                                for r in (other, "l2"))
                    else:
                        a, b = (_acc(results, protocol, model, r, s, row, cfg) for r in (other, "l2"))
                    if a is not None and b is not None:
                        diffs.append(100 * (a - b))
                if not diffs:
                    continue
                lines.append(f"| {protocol} | {model} | {LABELS.get(row, row)} | {cfg or '-'} | "
                             f"{paired_cells(diffs)} |")
    return lines


def paired_cells(diffs: list[float]) -> str:
    """The three cells of a paired row: the per-seed differences, mean ± std ("(1 seed)" alone) and the counts
    better / equal / worse."""
    m, sd = mean_std(diffs)
    spread = f"{m:+.1f} ± {sd:.1f}" if len(diffs) > 1 else f"{m:+.1f} (1 seed)"
    signs = f"{sum(d > 0 for d in diffs)} / {sum(d == 0 for d in diffs)} / {sum(d < 0 for d in diffs)}"
    return ", ".join(f"{d:+.1f}" for d in diffs) + f" | {spread} | {signs}"


def iterations_table(results: dict[str, Any], models: list[str], protocols: list[str]) -> list[str]:
    """AdaRound at 10,000 against 1,000 iterations on the same model file (same seed, calibration set and data):
    per regularizer and config, 10k - 1k per seed, and the mean CPU seconds of each."""
    lines = ["| protocol | model | reg | config | 10k - 1k per seed (points) | mean ± std | better / equal / worse | "
             "CPU s per run, 10k / 1k |", "| --- | --- | --- | --- | --- | ---: | ---: | ---: |"]
    for protocol in protocols:
        for model in models:
            for reg in REGS:
                for cfg in CONFIGS:
                    diffs, cpu = [], {"adaround-10k": [], "adaround": []}
                    for s in seeds_of(results, protocol, model):
                        cells = results["ptq"].get(f"{protocol}/{model}/{reg}/seed{s}", {})
                        a, b = (cells.get(r, {}).get(cfg) for r in ("adaround-10k", "adaround"))
                        if a and b:
                            diffs.append(100 * (a["accuracy"] - b["accuracy"]))
                            cpu["adaround-10k"].append(a["cpu_seconds"])
                            cpu["adaround"].append(b["cpu_seconds"])
                    if not diffs:
                        continue
                    lines.append(f"| {protocol} | {model} | {reg} | {cfg} | {paired_cells(diffs)} | "
                                 f"{statistics.fmean(cpu['adaround-10k']):.0f} / "
                                 f"{statistics.fmean(cpu['adaround']):.0f} |")
    return lines if len(lines) > 2 else []


def weight_summary(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Of a float model file's unfolded conv/linear weights: the mean over layers of the range, of max|w|/std and of
    the kurtosis, and the total count of weights beyond 3σ. ``dsmm_repro.py`` stores it in the results JSON with
    each training, so that the report does not need the model files."""
    stats = [tensor_stats(t, n) for n, t in tensors.items()
             if n.endswith(".weight") and t.dim() in (2, 4) and t.numel() > 1]
    return {"mean_range": statistics.fmean(st["range"] for st in stats),
            "mean_absmax_over_std": statistics.fmean(st["abs_max"] / st["std"] for st in stats),
            "mean_kurtosis": statistics.fmean(st["kurtosis"] for st in stats),
            "beyond_3sigma": float(sum(st["outliers"] for st in stats))}


WEIGHT_COLUMNS = ("mean_range", "mean_absmax_over_std", "mean_kurtosis", "beyond_3sigma")


def weights_of(results: dict[str, Any], protocol: str, model: str, reg: str, seed: int) -> dict[str, float] | None:
    """One training's weight summary as the results JSON records it (``dsmm_repro.py`` stores it when it trains, or
    backfills it from a cached file only after checking that the file is the recorded training); never from a
    cached file directly: a file of the same name may be another training (a retraining on another CPU is)."""
    return results["train"].get(f"{protocol}/{model}/{reg}/seed{seed}", {}).get("weights") or None


def weight_table(models: list[str], protocols: list[str], results: dict[str, Any]) -> list[str]:
    """Per protocol, model and regularizer, means over the seeds the results have for that protocol and model (not
    every file the shared cache holds) of ``weight_summary``; the seeds column names those whose weights the results
    JSON records."""
    lines = ["| protocol | model | reg | seeds | mean range | mean max\\|w\\|/σ | mean kurtosis | weights beyond 3σ |",
             "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
    for protocol in protocols:
        for model in models:
            for reg in REGS:
                found = {s: w for s in seeds_of(results, protocol, model)
                         if (w := weights_of(results, protocol, model, reg, s))}
                if found:
                    cols = [statistics.fmean(w[c] for w in found.values()) for c in WEIGHT_COLUMNS]
                    lines.append(f"| {protocol} | {model} | {reg} | {', '.join(map(str, found))} | {cols[0]:.3g} | "
                                 f"{cols[1]:.2f} | {cols[2]:.2f} | {cols[3]:.0f} |")
    return lines if len(lines) > 2 else ["(no training's weights are recorded in the results JSON)"]


def first_trace(cache: Path, protocol: str, model: str,
                results: dict[str, Any]) -> tuple[int, list[dict[str, Any]]] | None:
    """The α trace of the first seed of (protocol, model) that has one, with that seed."""
    for seed in seeds_of(results, protocol, model):
        trace = trace_of(cache, protocol, model, seed, results)
        if trace:
            return seed, trace
    return None


def plot_alpha(cache: Path, models: list[str], protocols: list[str], path: Path,
               results: dict[str, Any]) -> Path | None:
    """α/α* per layer against the epoch, one panel per protocol and model, for the first seed each has."""
    from learnq.analysis.plots import new_figure, save_png, series_color

    found = [(p, m, first_trace(cache, p, m, results)) for p in protocols for m in models]
    panels = [(p, m, f[0], f[1]) for p, m, f in found if f]
    if not panels:
        return None
    fig = new_figure(5.0 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (protocol, model, seed, trace) in zip(axes, panels, strict=True):
        layers = list(trace[0]["alpha"])
        epochs = [h["epoch"] for h in trace]
        for i, layer in enumerate(layers):
            ratio = [h["alpha"][layer] / h["alpha_star"][layer] if h["alpha_star"][layer] else float("nan")
                     for h in trace]
            ax.plot(epochs, ratio, color=series_color(i), linewidth=1.0, label=layer if len(layers) <= 6 else None)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set(xlabel="epoch", ylabel="α / α*", yscale="log", title=f"{protocol}, {model}, seed {seed}")
        ax.grid(True, alpha=0.3, which="both")
        if len(layers) <= 6:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", type=Path, default=HERE / "results" / "dsmm_repro.json")
    p.add_argument("--cache", type=Path, default=Path("~/.cache/learnq-bench/dsmm").expanduser())
    p.add_argument("--out", type=Path, default=None, help="output stem (default: next to --results)")
    p.add_argument("--into", type=Path, default=None,
                   help="also write the tables between the dsmm_report.py markers of this file (BENCHMARKS.md)")
    p.add_argument("--pilot", type=Path, default=None,
                   help="the α-lr pilot's cache (alr<lr>/scratch/<model>/dsmm/seed0.json): its summary is stored in "
                        "the results JSON ('pilot') and reported")
    args = p.parse_args(argv)
    results = json.loads(args.results.read_text())
    if args.pilot is not None:
        results["pilot"] = {"source": "python benchmarks/dsmm_repro.py --seeds 0 --protocols scratch --regs dsmm "
                                      "--alpha-lr <lr> --cache <pilot>/alr<lr> (before issue 17's runs)",
                            "runs": pilot_summary(args.pilot)}
        args.results.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    stem = args.out or args.results.with_suffix("")
    keys = list(results["train"])
    protocols = [x for x in ("scratch", "finetune") if any(k.startswith(x + "/") for k in keys)]
    models = list(dict.fromkeys(k.split("/")[1] for k in keys))
    torch.set_num_threads(1)
    lines = [f"<!-- generated by benchmarks/dsmm_report.py from {args.results.name}; commands: "
             + " ; ".join(results.get("commands", [])[-3:]) + " -->", "",
             *(["**Pilot: the lr of α's optimizer group (scratch, seed 0, λ = 0.01, α₀ = 0.1; weights at lr 0.05)**",
                "", *pilot_table(results["pilot"]["runs"]), ""] if results.get("pilot") else []),
             "**DSMM temperature α against its equilibrium α* (from the weights, `learnq.regularizers.dsmm_alpha`)**",
             "", *alpha_table(results, args.cache, models, protocols), "", *accuracy_tables(results, models, protocols),
             "**Paired by seed: DSMM - L2 (points)**", "", *paired_table(results, models, protocols, "dsmm"), "",
             "**Paired by seed: heavy L2 - L2 (points)**", "", *paired_table(results, models, protocols, "l2-heavy"),
             "", *(["**AdaRound: 10,000 against 1,000 iterations per layer, paired by seed (points)**", "", *its, ""]
                   if (its := iterations_table(results, models, protocols)) else []),
             "**Weights after training (unfolded conv/linear weights; means over seeds)**", "",
             *weight_table(models, protocols, results), ""]
    md = stem.with_name(stem.name + ".md")
    md.write_text("\n".join(lines) + "\n", encoding="utf-8")
    png = plot_alpha(args.cache, models, protocols, stem.with_name(stem.name + "_alpha.png"), results)
    if args.into is not None:
        from md_section import replace_section  # benchmarks/md_section.py

        replace_section(args.into, BEGIN, END, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {md}" + (f" and {png}" if png else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
