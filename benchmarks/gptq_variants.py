"""Issue 15: GPTQ's options against LAPQ at W4A8 on the mnist5k LeNet (the protocol of ``benchmarks/ptq_more.py
speed``: the float models of ``benchmarks/ptq.py``, 512 calibration samples, one step per tensor, symmetric weights,
8-bit activations, first and last layers in float, one torch thread).

Every variant runs on every seed (no choice after the fact); ``lapq`` (its defaults) runs once per seed in the same
process as the reference. Accuracy on the 1,000 test images (one image = 0.1 point). Variants (GPTQ options):

* ``default``: GPTQ's defaults (min-max weight grid, natural column order, damp 0.01, ``act_clip="mse"``);
* ``act-order``: columns in order of decreasing ``diag H`` (Frantar et al. 2023, the "act-order" heuristic);
* ``mse-grid``: the per-tensor weight step chosen by the MSE rule before GPTQ (``clip="mse"``, as Brevitas'
  ``MSE + GPTQ`` recipe does) instead of min-max;
* ``mse-grid+act-order``; ``bias-corr``: learnq's bias correction of each quantized layer after GPTQ
  (``bias_correction=True``); ``mse-grid+bias-corr``.

    flock /work/wt/train2.lock nice -n 10 .venv/bin/python benchmarks/gptq_variants.py run --seeds 0,1,2
    .venv/bin/python benchmarks/gptq_variants.py render
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [p for p in (str(HERE.parent), str(HERE)) if p not in sys.path]

import ptq as ptq_bench  # noqa: E402  (benchmarks/ptq.py: the float models)

from learnq.pipeline.train import evaluate  # noqa: E402
from learnq.ptq import quantize  # noqa: E402

RESULTS = HERE / "results" / "gptq_variants.json"
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "lapq": ("lapq", {}),
    "default": ("gptq", {}),
    "act-order": ("gptq", {"act_order": True}),
    "mse-grid": ("gptq", {"clip": "mse"}),
    "mse-grid+act-order": ("gptq", {"clip": "mse", "act_order": True}),
    "bias-corr": ("gptq", {"bias_correction": True}),
    "mse-grid+bias-corr": ("gptq", {"clip": "mse", "bias_correction": True}),
}


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    data = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    for seed in args.seeds:
        model, splits, _ = ptq_bench.float_model("mnist5k", seed, Path(args.cache), None, None)
        for name in args.variants:
            if any(r["seed"] == seed and r["variant"] == name for r in data["rows"]):
                continue
            method, options = VARIANTS[name]
            torch.manual_seed(seed)
            start = time.process_time()
            result = quantize(model, splits.calib, method=method, wbits=4, abits=8, seed=seed, progress=False,
                              granularity="tensor", skip_first_last=True, **options)
            cpu = time.process_time() - start
            acc = evaluate(result.model, splits.test, batch_size=256)["accuracy"]
            data["rows"].append({"seed": seed, "variant": name, "method": method, "options": options,
                                 "accuracy": acc, "cpu_seconds": cpu})
            print(f"seed {seed} {name:20s} {100 * acc:6.2f}%  ({cpu:.2f} s CPU)", flush=True)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=1) + "\n")
            os.replace(tmp, out)


def markdown(data: dict[str, Any]) -> str:
    rows = data["rows"]
    seeds = sorted({r["seed"] for r in rows})
    acc = {(r["variant"], r["seed"]): r["accuracy"] for r in rows}
    lines = ["**GPTQ variants against LAPQ at W4A8, mnist5k LeNet (ptq_more.py's speed protocol), test accuracy (%) "
             "per seed and GPTQ − LAPQ (points; 1 image = 0.1 point); every variant on every seed**", "",
             "| variant | options | " + " | ".join(f"seed {s}" for s in seeds) + " | − LAPQ per seed | mean − LAPQ |"
             " within 0.3 on |", "| --- | --- | " + " | ".join("---:" for _ in seeds) + " | ---: | ---: | ---: |"]
    for name, (_method, options) in VARIANTS.items():
        if not all((name, s) in acc for s in seeds):
            continue
        vals = " | ".join(f"{100 * acc[(name, s)]:.2f}" for s in seeds)
        if name == "lapq":
            lines.append(f"| lapq | defaults | {vals} | | | |")
            continue
        diffs = [100 * (acc[(name, s)] - acc[("lapq", s)]) for s in seeds if ("lapq", s) in acc]
        opts = ", ".join(f"{k}={v}" for k, v in options.items()) or "defaults"
        within = sum(d >= -0.3 - 1e-9 for d in diffs)
        lines.append(f"| {name} | {opts} | {vals} | {' / '.join(f'{d:+.2f}' for d in diffs)} | "
                     f"{statistics.fmean(diffs):+.2f} | {within} of {len(diffs)} |")
    lines += ["", "(`benchmarks/gptq_variants.py`; torch " + torch.__version__ + ", one thread; JSON: "
              "`benchmarks/results/gptq_variants.json`)"]
    return "\n".join(lines)


def render(args: argparse.Namespace) -> None:
    text = markdown(json.loads(Path(args.out).read_text()))
    print(text)
    doc_path = HERE / "BENCHMARKS.md"
    doc = doc_path.read_text()
    begin, end = "<!-- gptq_variants.py: begin -->", "<!-- gptq_variants.py: end -->"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc_path.write_text(head + begin + "\n" + text + "\n" + end + rest.split(end, 1)[1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("part", choices=("run", "render"))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "learnq-bench-ptq-more"))
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.variants = args.variants.split(",")
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(1)
    run(args) if args.part == "run" else render(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
