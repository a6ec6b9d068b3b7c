"""Benchmark for issue 15 (GPTQ, AdaQuant, QDrop): GPTQ's time and accuracy against LAPQ and MSE, and seeds/002
Table 2A at small scale (baseline vs SymReg+SatNL(+KURE) trained networks under ACIQ, AdaQuant and QDrop).

``speed``: the protocol of ``benchmarks/ptq.py`` (LeNet-5 on mnist5k, 10 epochs Adam, 512 calibration samples from
the training split; one step per tensor, symmetric weights; first and last layers in float for every method, so each
row quantizes conv2, fc1, fc2 and their inputs). Per seed and configuration, ``mse``, ``gptq`` and ``lapq`` (every
method with its defaults) run ``--rounds`` interleaved rounds in this one process (one torch thread) and the median
wall time of ``learnq.ptq.quantize`` is kept; ``gptq/lapq`` and ``gptq/mse`` are the ratios of those medians on the
same seed. ``adaround``, ``adaquant`` and ``qdrop`` (defaults) run one round each for their accuracy and time.

``table2a``: the network of ``benchmarks/regularizers.py`` (LeNet-5, mnist5k, 20 epochs SGD, L2 5e-4; its recipe
``recipes/regularizers-mnist5k.toml``) trained with the baseline (``l2``), ``symreg+satnl`` and
``symreg+satnl+kure`` (that benchmark's strengths), then quantized with ``aciq``, ``adaquant`` and ``qdrop`` (their
defaults) at W4A8, W3A8 and W2A8, every conv/linear layer and its input, one step per tensor, symmetric grid.

Trained float models are cached in ``--cache`` (default ``$TMPDIR/learnq-bench-ptq-more``); results go to
``benchmarks/results/ptq_more.json`` after every row (a rerun skips rows already there), and ``render`` writes
``ptq_more.md`` and the section between ``<!-- ptq_more.py render: begin/end -->`` of BENCHMARKS.md.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/ptq_more.py speed --seeds 0 --configs W4A8
    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/ptq_more.py table2a --seeds 0 --trainings l2
    .venv/bin/python benchmarks/ptq_more.py render
    .venv/bin/python benchmarks/ptq_more.py speed --quick --out /tmp/pm.json     # smoke test (1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE.parent), str(HERE)) if p not in sys.path]

import ptq as ptq_bench  # noqa: E402  (benchmarks/ptq.py: the float models of the speed part)
import regularizers as reg_bench  # noqa: E402  (benchmarks/regularizers.py: the trainings of Table 2A)
from bench_timing import interleaved  # noqa: E402

from learnq.pipeline.model_files import rebuild  # noqa: E402
from learnq.pipeline.recipe import load_recipe  # noqa: E402
from learnq.pipeline.run import MODEL_FILE, train_recipe  # noqa: E402
from learnq.pipeline.train import evaluate  # noqa: E402
from learnq.ptq import quantize  # noqa: E402

RESULTS = HERE / "results" / "ptq_more.json"
BENCHMARKS = HERE / "BENCHMARKS.md"
TIMED = ("mse", "gptq", "lapq")
#: ``--variants``: rows timed with the others under another name: (method, options)
VARIANTS = {"gptq-act-minmax": ("gptq", {"act_clip": "minmax"})}
ONCE = ("adaround", "adaquant", "qdrop")
TRAININGS = ("l2", "symreg+satnl", "symreg+satnl+kure")
TABLE_METHODS = ("aciq", "adaquant", "qdrop")
QUICK = {"adaround": {"iterations": 20}, "adaquant": {"iterations": 20}, "qdrop": {"iterations": 20},
         "lapq": {"p_count": 4, "maxiter": 1}}
#: seeds/002 Table 2A, ResNet-18 on ImageNet, top-1 (%): FP, W4/FP, W3/FP, W2/FP (weights only) per PTQ and training
DOC_TABLE_2A = {
    ("aciq", "l2"): (70.54, 47.44, None, None), ("aciq", "symreg+satnl"): (70.92, 69.22, 49.06, None),
    ("aciq", "symreg+satnl+kure"): (70.33, 69.85, 67.59, None),
    ("adaquant", "l2"): (70.54, 69.29, 66.18, 3.23), ("adaquant", "symreg+satnl"): (70.92, 70.36, 68.84, 48.39),
    ("adaquant", "symreg+satnl+kure"): (70.33, 69.96, 69.21, 63.16),
    ("qdrop", "l2"): (70.54, 70.15, 69.39, 66.40), ("qdrop", "symreg+satnl"): (70.92, 70.69, 70.06, 66.98),
    ("qdrop", "symreg+satnl+kure"): (70.33, 70.18, 69.86, 67.77),
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {"speed": [], "table2a": [], "floats": []}


def save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def _config(text: str) -> tuple[int, int, str]:
    """``W4A8`` (one step per tensor, ptq.py's protocol) or ``W4A8/channel`` (per output channel, learnq's
    default grid): weight bits, activation bits, granularity."""
    head, _, granularity = text.partition("/")
    w, a = head.upper().removeprefix("W").split("A")
    return int(w), int(a), granularity or "tensor"


def timed_quantize(model, splits, method: str, wbits: int, abits: int, seed: int, quick: bool,
                   **kwargs: Any) -> dict[str, Any]:
    method, extra = VARIANTS.get(method, (method, {}))
    options = {**(QUICK.get(method, {}) if quick else {}), **extra, **kwargs}
    torch.manual_seed(seed)
    start, cpu = time.perf_counter(), time.process_time()
    result = quantize(model, splits.calib, method=method, wbits=wbits, abits=abits, seed=seed, progress=False,
                      **options)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    acc = evaluate(result.model, splits.test, batch_size=256)["accuracy"]
    return {"accuracy": acc, "seconds": seconds, "cpu_seconds": cpu, "loss_evals": result.loss_evals}


# -- speed ---------------------------------------------------------------------------------------------------------
def run_speed(args: argparse.Namespace, data: dict[str, Any], out: Path) -> None:
    epochs, limit = (3, 1500) if args.quick else (None, None)
    for seed in args.seeds:
        model, splits, info = ptq_bench.float_model("mnist5k", seed, args.cache, epochs, limit)
        fl = evaluate(model, splits.test, batch_size=256)["accuracy"]
        if not any(f["part"] == "speed" and f["seed"] == seed for f in data["floats"]):
            data["floats"].append({"part": "speed", "training": "adam", "seed": seed, "float": fl, **info})
        for cfg in args.configs:
            w, a, granularity = _config(cfg)
            have = {(r["seed"], r["config"], r["method"], r.get("tag", "")) for r in data["speed"]}
            timed = (*TIMED, *args.variants)
            todo = [m for m in (*timed, *(() if args.tag else ONCE)) if (seed, cfg, m, args.tag) not in have]
            if not todo:
                continue
            common = {"granularity": granularity, "skip_first_last": True}
            # interleaved rounds, always in the same order (as every row so far): the load hits every method alike
            runs: dict[str, list[dict[str, Any]]] = {m: [] for m in todo} | interleaved(
                {m: partial(timed_quantize, model, splits, m, w, a, seed, args.quick, **common) for m in todo
                 if m in timed}, args.rounds, lambda fn: fn(), rotate=False)
            for m in todo:
                if m in ONCE:
                    runs[m].append(timed_quantize(model, splits, m, w, a, seed, args.quick, **common))
                rs = runs[m]
                row = {"seed": seed, "config": cfg, "method": m, "accuracy": rs[0]["accuracy"],
                       "seconds": statistics.median(r["seconds"] for r in rs),
                       "all_seconds": [r["seconds"] for r in rs],
                       "cpu_seconds": statistics.median(r["cpu_seconds"] for r in rs),
                       "loss_evals": rs[0]["loss_evals"], "rounds": len(rs), "float": fl,
                       "load_average": os.getloadavg(), **({"tag": args.tag, "commit": _commit()} if args.tag else {})}
                data["speed"].append(row)
                print(f"seed {seed} {cfg} {m:9s} {100 * row['accuracy']:6.2f}%  {row['seconds']:7.2f} s "
                      f"(median of {len(rs)})", flush=True)
            save(out, data)


def _commit() -> str:
    import subprocess

    if os.environ.get("BENCH_COMMIT"):  # a run from a copy of the tree names the commit it copied
        return os.environ["BENCH_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# -- table 2A ------------------------------------------------------------------------------------------------------
def trained(training: str, seed: int, cache: Path, quick: bool):
    folder = cache / f"t2a-{training}-seed{seed}" if not quick else cache / f"t2a-{training}-seed{seed}-quick"
    if not (folder / MODEL_FILE).is_file():
        reg_args = reg_bench.parse_args(["--epochs", "2", "--limit", "1500"] if quick else [])
        recipe = reg_bench.make_recipe(load_recipe(reg_bench.RECIPE), training, seed, reg_args)
        start = time.perf_counter()
        train_recipe(recipe, folder)
        (folder / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.3f}\n")
    model, splits, _ = rebuild(folder / MODEL_FILE)
    model.eval()
    return model, splits


def run_table(args: argparse.Namespace, data: dict[str, Any], out: Path) -> None:
    for seed in args.seeds:
        for training in args.trainings:
            model, splits = trained(training, seed, args.cache, args.quick)
            fl = evaluate(model, splits.test, batch_size=256)["accuracy"]
            if not any(f["part"] == "table2a" and f["seed"] == seed and f["training"] == training
                       for f in data["floats"]):
                data["floats"].append({"part": "table2a", "training": training, "seed": seed, "float": fl})
            for method in args.methods:
                for bits in args.bits:
                    key = (training, seed, method, bits)
                    if key in {(r["training"], r["seed"], r["method"], r["wbits"]) for r in data["table2a"]}:
                        continue
                    r = timed_quantize(model, splits, method, bits, 8, seed, args.quick, granularity="tensor",
                                       skip_first_last=False)
                    data["table2a"].append({"training": training, "seed": seed, "method": method, "wbits": bits,
                                            "abits": 8, "float": fl, **r})
                    print(f"seed {seed} {training:18s} {method:9s} W{bits}A8 {100 * r['accuracy']:6.2f}% "
                          f"({r['seconds']:.1f} s)", flush=True)
                    save(out, data)


# -- render --------------------------------------------------------------------------------------------------------
def _ms(values: list[float]) -> str:
    if not values:
        return ""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f}"


def _cpu_ratio(row: dict[str, Any], base: dict[str, Any]) -> str:
    return f"{row['cpu_seconds'] / base['cpu_seconds']:.3f}" if row.get("cpu_seconds") and base.get("cpu_seconds") \
        else "-"


def markdown(data: dict[str, Any]) -> str:
    lines: list[str] = []
    every = data["speed"]
    speed = [r for r in every if not r.get("tag")]
    if speed:
        seeds = sorted({r["seed"] for r in speed})
        cfgs = list(dict.fromkeys(r["config"] for r in speed))
        fl = [f["float"] for f in data["floats"] if f["part"] == "speed"]
        lines += [f"**GPTQ against LAPQ and MSE: mnist5k LeNet (benchmarks/ptq.py's protocol: per-tensor steps, first "
                  f"and last layers in float), test accuracy (%), mean ± std over seeds {seeds}; float "
                  f"{_ms(fl)}**", "", "| method | " + " | ".join(cfgs) + " | seconds (" + cfgs[0] + ", median) |",
                  "| --- | " + " | ".join("---:" for _ in cfgs) + " | ---: |"]
        for m in (*TIMED, *ONCE):
            cells = [_ms([r["accuracy"] for r in speed if r["method"] == m and r["config"] == c]) for c in cfgs]
            secs = [r["seconds"] for r in speed if r["method"] == m and r["config"] == cfgs[0]]
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {statistics.median(secs):.2f} |" if secs else "")
        lines += ["", "**GPTQ's wall time ÷ LAPQ's and ÷ MSE's, per seed and configuration (medians of the "
                  "interleaved rounds in one process, one torch thread); accuracy difference GPTQ − LAPQ (points). "
                  "code: `first` = the first GPTQ (each layer's input captured whole, then its Hessian, then a "
                  "calibration pass for the activations); `streamed` = each batch's input streamed into a float64 "
                  "Hessian sum and into the activation observers (no calibration pass), one Cholesky per layer; "
                  "`sorted-mse` = that, with the MSE range search from sorted values (learnq/sorted_mse.py); "
                  "`s5-fast`, `s5-fast2` = that, with a conv layer's Hessian as one matrix product of its patch rows, "
                  "the column loop on numpy views and numpy's searchsorted in the range search (same files); "
                  "`s6` = that code on another machine (AMD EPYC, AVX-512; its own float models of the same recipe); "
                  "`s6-syrk`, `s6-syrk7` = there, each batch's Σ X Xᵀ as one BLAS syrk (numpy) instead of a matrix "
                  "product. "
                  "`cpu gptq/lapq`: the same ratio of the medians of process CPU time (less sensitive to the "
                  "machine's load than wall time)**",
                  "", "| code | seed | config | rounds | gptq s | lapq s | mse s | gptq/lapq | cpu gptq/lapq "
                  "| gptq/mse | gptq − lapq |",
                  "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        index = {(r["seed"], r["config"], r["method"], r.get("tag", "")): r for r in every}
        for (seed, cfg, m, tag), r in index.items():
            if m != "gptq" or (seed, cfg, "lapq", tag) not in index or (seed, cfg, "mse", tag) not in index:
                continue
            lq, ms = index[(seed, cfg, "lapq", tag)], index[(seed, cfg, "mse", tag)]
            code = f"{tag} ({r.get('commit', '?')})" if tag else "first"
            for v in VARIANTS:  # a variant timed in the same rounds: its own line
                if (seed, cfg, v, tag) in index:
                    rv = index[(seed, cfg, v, tag)]
                    lines.append(f"| {code}, {v} | {seed} | {cfg} | {rv['rounds']} | {rv['seconds']:.2f} | "
                                 f"{lq['seconds']:.2f} | {ms['seconds']:.2f} | "
                                 f"{rv['seconds'] / lq['seconds']:.3f} | {_cpu_ratio(rv, lq)} | "
                                 f"{rv['seconds'] / ms['seconds']:.2f} | "
                                 f"{100 * (rv['accuracy'] - lq['accuracy']):+.2f} |")
            lines.append(f"| {code} | {seed} | {cfg} | {r['rounds']} | {r['seconds']:.2f} | {lq['seconds']:.2f} | "
                         f"{ms['seconds']:.2f} | {r['seconds'] / lq['seconds']:.3f} | {_cpu_ratio(r, lq)} | "
                         f"{r['seconds'] / ms['seconds']:.2f}"
                         f" | {100 * (r['accuracy'] - lq['accuracy']):+.2f} |")
        lines.append("")
    table = data["table2a"]
    if table:
        bits = sorted({r["wbits"] for r in table}, reverse=True)
        seeds = sorted({r["seed"] for r in table})
        lines += [f"**seeds/002 Table 2A at small scale: LeNet-5 on mnist5k (20 epochs SGD), all layers, per-tensor "
                  f"symmetric weights, 8-bit activations; test accuracy (%), mean ± std over seeds {seeds}. Right: the "
                  "document's ResNet-18 ImageNet row (weights only, W/FP)**", "",
                  "| PTQ | training | float | " + " | ".join(f"W{b}A8" for b in bits) + " | doc FP | " +
                  " | ".join(f"doc W{b}/FP" for b in bits) + " |",
                  "| --- | --- | ---: | " + " | ".join("---:" for _ in bits) + " | ---: | " +
                  " | ".join("---:" for _ in bits) + " |"]
        for m in TABLE_METHODS:
            for t in TRAININGS:
                rows = [r for r in table if r["method"] == m and r["training"] == t]
                if not rows:
                    continue
                fl = [f["float"] for f in data["floats"] if f["part"] == "table2a" and f["training"] == t]
                doc = DOC_TABLE_2A[(m, t)]
                docs = {4: doc[1], 3: doc[2], 2: doc[3]}
                cells = [_ms([r["accuracy"] for r in rows if r["wbits"] == b]) for b in bits]
                lines.append(f"| {m} | {t} | {_ms(fl)} | " + " | ".join(cells) + f" | {doc[0]:.2f} | " +
                             " | ".join("-" if docs.get(b) is None else f"{docs[b]:.2f}" for b in bits) + " |")
        lines.append("")
    lines.append(f"(`benchmarks/ptq_more.py`; torch {torch.__version__}, one thread; {platform.machine()}; JSON: "
                 "`benchmarks/results/ptq_more.json`)")
    return "\n".join(lines)


def render(data: dict[str, Any], out: Path, benchmarks: Path | None) -> None:
    text = markdown(data)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    if benchmarks is None or not benchmarks.is_file():
        return
    begin, end = "<!-- ptq_more.py render: begin -->", "<!-- ptq_more.py render: end -->"
    doc = benchmarks.read_text()
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1]
        benchmarks.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("speed", "table2a", "render"))
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--configs", default="W4A8", help="speed: configurations, e.g. W4A8,W4A4,W2A8")
    p.add_argument("--rounds", type=int, default=3, help="speed: interleaved rounds of mse/gptq/lapq (default 3)")
    p.add_argument("--trainings", default=",".join(TRAININGS), help="table2a: trainings")
    p.add_argument("--methods", default=",".join(TABLE_METHODS), help="table2a: PTQ methods")
    p.add_argument("--bits", default="4,3,2", help="table2a: weight bits (activations 8)")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "learnq-bench-ptq-more"))
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--quick", action="store_true", help="smoke test: small data, short training, cheap options")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--variants", default="", help="speed: also time these rows (" + ", ".join(
        f"{k} = {m} with {o}" for k, (m, o) in VARIANTS.items()) + ")")
    p.add_argument("--tag", default="", help="speed: re-measure mse/gptq/lapq as new rows with this tag (and the "
                   "commit), e.g. after a change to GPTQ; the methods run once are not repeated")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.configs = args.configs.split(",")
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown --variants {unknown}; known: {list(VARIANTS)}")
    args.trainings = args.trainings.split(",")
    args.methods = args.methods.split(",")
    args.bits = [int(b) for b in args.bits.split(",")]
    args.cache = Path(args.cache)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = load(out)
    data.setdefault("commands", []).append(" ".join([Path(sys.executable).name, *sys.argv]))
    if args.part == "speed":
        run_speed(args, data, out)
    elif args.part == "table2a":
        run_table(args, data, out)
    save(out, data)
    render(data, out, BENCHMARKS if out.resolve() == RESULTS.resolve() else None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
