"""Issue 15: the MSE clipping search from sorted values (``learnq/sorted_mse.py``) against the exhaustive search it
replaced, on the mnist5k LeNet of ``benchmarks/ptq_more.py`` (its cached float models, seeds 0-2).

``old`` is the previous search, rebuilt from learnq's own pieces: the quantization error of each of the 100 grid
candidates on every value (``clipping._lp_batch`` without sorted rows, float32, as before) and 30 golden-section
steps (``clipping._refine_golden``); it replaces ``CLIP_METHODS["mse"]`` and ``["lp"]`` for the ``old`` runs, so
every caller (weights of ``method="mse"``, activation ranges of every method) uses it.

``time``: the activation samples the input quantizers of a GPTQ W4A8 run keep (3 quantizers, 32,768 values each,
unsigned 8-bit grid), searched by ``clip_mse`` (new) and ``old``, ``--rounds`` interleaved rounds in this process
(one torch thread); median seconds per search and the ratio; also α and the error of both.
``accuracy``: ``mse`` and ``gptq`` (defaults, ``act_clip="mse"``) at ``--configs`` and ``lapq`` (defaults; its Lp
sweep over p in 2..4 includes p = 2, where the search changed) at ``--lapq-configs`` on ``--seeds``, each with the new
and the old search (also patched into LAPQ's module), same model, calibration set and seed: test accuracy (1000
images) and the paired difference.

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/mse_search_check.py time
    flock /work/wt/train2.lock nice -n 10 .venv/bin/python benchmarks/mse_search_check.py accuracy --seeds 0,1,2
    .venv/bin/python benchmarks/mse_search_check.py render

Results: ``benchmarks/results/mse_search_check.json`` (+ ``.md``; the section between the markers
``<!-- mse_search_check.py: begin/end -->`` of BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE.parent), str(HERE)) if p not in sys.path]

import ptq as ptq_bench  # noqa: E402  (benchmarks/ptq.py: the float models)
from bench_timing import interleaved  # noqa: E402

from learnq import clipping  # noqa: E402
from learnq.grid import GridSpec  # noqa: E402
from learnq.pipeline.train import evaluate  # noqa: E402
from learnq.ptq import quantize  # noqa: E402

OUT = HERE / "results" / "mse_search_check.json"
BEGIN, END = "<!-- mse_search_check.py: begin -->", "<!-- mse_search_check.py: end -->"
CACHE = Path(tempfile.gettempdir()) / "learnq-bench-ptq-more"


def old_clip_lp(x: torch.Tensor, spec: GridSpec, p: float = 2.0, *, grid: int = 100, refine: int = 30) -> torch.Tensor:
    """The previous Lp search: every grid candidate on all the values, then golden-section steps."""
    rows, mask = clipping._rows(x, spec)
    top = clipping._top(rows, spec)
    live = top > 0
    if not bool(live.any()):
        return top.contiguous()
    cand = top.unsqueeze(1) * (torch.arange(1, grid + 1, dtype=torch.float32) / grid)
    errs = clipping._lp_batch(rows, mask, cand, spec, [float(p)])[0]
    best = errs.argmin(dim=1)
    idx = torch.arange(rows.shape[0])
    alpha, best_err = cand[idx, best], errs[idx, best]
    lo, hi = top * (best.float() / grid), top * ((best + 2).clamp(max=grid).float() / grid)
    alpha = clipping._refine_golden(rows, mask, spec, float(p), lo, hi, alpha, best_err, refine)
    return torch.where(live, alpha, top).contiguous()


def old_clip_mse(x: torch.Tensor, spec: GridSpec) -> torch.Tensor:
    return old_clip_lp(x, spec, 2.0)


def old_clip_lp_many(x: torch.Tensor, spec: GridSpec, ps: list[float], *, grid: int = 100,
                     refine: int = 30) -> list[torch.Tensor]:
    """The previous ``clip_lp_many``: ``old_clip_lp`` at each norm (the same α's: it shared the grid errors only)."""
    return [old_clip_lp(x, spec, p, grid=grid, refine=refine) for p in ps]


@contextmanager
def search(which: str):
    """``new``: learnq as it is; ``old``: the previous search registered for "mse" and "lp"."""
    from learnq.ptq import lapq  # LAPQ imports clip_lp and clip_lp_many by name

    saved, saved_lapq = dict(clipping.CLIP_METHODS), (lapq.clip_lp, lapq.clip_lp_many)
    if which == "old":
        clipping.CLIP_METHODS.update({"mse": old_clip_mse, "lp": old_clip_lp})
        lapq.clip_lp, lapq.clip_lp_many = old_clip_lp, old_clip_lp_many
    try:
        yield
    finally:
        clipping.CLIP_METHODS.clear()
        clipping.CLIP_METHODS.update(saved)
        lapq.clip_lp, lapq.clip_lp_many = saved_lapq


def _config(text: str) -> tuple[int, int, str]:
    head, _, granularity = text.partition("/")
    w, a = head.upper().removeprefix("W").split("A")
    return int(w), int(a), granularity or "tensor"


def load() -> dict[str, Any]:
    return json.loads(OUT.read_text()) if OUT.is_file() else {"time": [], "accuracy": []}


def save(data: dict[str, Any]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, OUT)


def _search(fn: Any, sample: torch.Tensor, spec: GridSpec, alphas: dict[str, float], key: str) -> None:
    alphas[key] = float(fn(sample, spec))


def run_time(args: argparse.Namespace, data: dict[str, Any]) -> None:
    model, splits, _ = ptq_bench.float_model("mnist5k", args.seed, CACHE, None, None)
    result = quantize(model, splits.calib, method="gptq", wbits=4, abits=8, seed=args.seed, progress=False,
                      granularity="tensor", skip_first_last=True)
    samples = [(name, m.input_quantizer.sample, m.input_quantizer.grid_spec())
               for name, m in result.model.named_modules() if getattr(m, "input_quantizer", None) is not None]
    fns = {"new": clipping.clip_mse, "old": old_clip_mse}
    for name, sample, spec in samples:
        alphas: dict[str, float] = {}
        # interleaved rounds, always new then old (as the stored rows): one search's seconds, its α kept
        times = interleaved({k: partial(_search, fn, sample, spec, alphas, k) for k, fn in fns.items()}, args.rounds,
                            rotate=False)
        row = {"seed": args.seed, "layer": name, "values": sample.numel(), "spec": spec.to_dict(),
               "rounds": args.rounds, "load_average": os.getloadavg(),
               **{f"{k}_seconds": statistics.median(v) for k, v in times.items()},
               **{f"{k}_alpha": a for k, a in alphas.items()},
               **{f"{k}_error": float(clipping.lp_error(sample, a, spec)) for k, a in alphas.items()}}
        data["time"].append(row)
        print(f"{name}: new {1e3 * row['new_seconds']:.1f} ms, old {1e3 * row['old_seconds']:.1f} ms "
              f"(x{row['old_seconds'] / row['new_seconds']:.1f}); α {alphas['new']:.5f} / {alphas['old']:.5f}",
              flush=True)
    save(data)


def run_accuracy(args: argparse.Namespace, data: dict[str, Any]) -> None:
    for seed in args.seeds:
        model, splits, _ = ptq_bench.float_model("mnist5k", seed, CACHE, None, None)
        for cfg in args.configs:
            w, a, granularity = _config(cfg)
            for method in args.methods + (args.lapq if cfg in args.lapq_configs else []):
                if any(r["seed"] == seed and r["config"] == cfg and r["method"] == method for r in data["accuracy"]):
                    continue
                row: dict[str, Any] = {"seed": seed, "config": cfg, "method": method}
                for which in ("new", "old"):
                    with search(which):
                        start = time.perf_counter()
                        res = quantize(model, splits.calib, method=method, wbits=w, abits=a, seed=seed,
                                       progress=False, granularity=granularity, skip_first_last=True)
                        row[f"{which}_seconds"] = time.perf_counter() - start
                    row[which] = evaluate(res.model, splits.test, batch_size=256)["accuracy"]
                data["accuracy"].append(row)
                print(f"seed {seed} {cfg:13s} {method:5s} new {100 * row['new']:.2f} % old {100 * row['old']:.2f} % "
                      f"({row['new_seconds']:.2f} / {row['old_seconds']:.2f} s)", flush=True)
                save(data)


def markdown(data: dict[str, Any]) -> str:
    lines = []
    if data["time"]:
        lines += ["**The MSE range search on the activation samples of a GPTQ W4A8 run (mnist5k LeNet; unsigned "
                  "8-bit grid, 32,768 values per quantizer): median seconds of interleaved rounds in one process, "
                  "one torch thread; α and mean squared error of each search**", "",
                  "| seed | layer | rounds | new ms | old ms | old ÷ new | α new | α old | error new ÷ old − 1 |",
                  "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in data["time"]:
            lines.append(f"| {r['seed']} | {r['layer']} | {r['rounds']} | {1e3 * r['new_seconds']:.1f} | "
                         f"{1e3 * r['old_seconds']:.1f} | {r['old_seconds'] / r['new_seconds']:.1f} | "
                         f"{r['new_alpha']:.4f} | {r['old_alpha']:.4f} | "
                         f"{r['new_error'] / r['old_error'] - 1:+.1e} |")
        lines.append("")
    if data["accuracy"]:
        lines += ["**Accuracy with the new and the old search (same float model, calibration set and seed; "
                  "benchmarks/ptq.py's protocol: first and last layers in float), test accuracy (%), 1000 images: "
                  "0.1 point is one image**", "", "| config | method | seed | new | old | new − old |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in sorted(data["accuracy"], key=lambda r: (r["config"], r["method"], r["seed"])):
            lines.append(f"| {r['config']} | {r['method']} | {r['seed']} | {100 * r['new']:.2f} | {100 * r['old']:.2f} "
                         f"| {100 * (r['new'] - r['old']):+.2f} |")
        diffs = [100 * (r["new"] - r["old"]) for r in data["accuracy"]]
        same = sum(abs(d) < 1e-9 for d in diffs)
        lines += ["", f"{len(diffs)} pairs: {same} identical, mean difference {statistics.fmean(diffs):+.3f} points, "
                  f"largest |difference| {max(abs(d) for d in diffs):.2f} points.", ""]
    lines.append(f"(`benchmarks/mse_search_check.py`; torch {torch.__version__}, one thread; JSON: "
                 "`benchmarks/results/mse_search_check.json`)")
    return "\n".join(lines)


def render(data: dict[str, Any]) -> None:
    text = markdown(data)
    OUT.with_suffix(".md").write_text(text + "\n")
    print(text)
    bench = HERE / "BENCHMARKS.md"
    doc = bench.read_text()
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        bench.write_text(head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=("time", "accuracy", "render"))
    p.add_argument("--seed", type=int, default=0, help="time: the seed of the float model")
    p.add_argument("--rounds", type=int, default=7, help="time: interleaved rounds")
    p.add_argument("--seeds", default="0,1,2", help="accuracy: seeds")
    p.add_argument("--configs", default="W4A8,W4A4,W2A8,W4A4/channel", help="accuracy: configurations")
    p.add_argument("--methods", default="mse,gptq", help="accuracy: PTQ methods")
    p.add_argument("--lapq-configs", default="W4A8", help="accuracy: the configurations LAPQ also runs at (its "
                   "Lp sweep starts from the p = 2 search among others)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.configs = args.configs.split(",")
    args.methods = args.methods.split(",")
    args.lapq_configs = [c for c in args.lapq_configs.split(",") if c]
    args.lapq = ["lapq"]
    data = load()
    if args.part == "time":
        run_time(args, data)
    elif args.part == "accuracy":
        run_accuracy(args, data)
    render(data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
