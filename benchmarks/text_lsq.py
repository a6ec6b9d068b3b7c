"""Why LSQ 4 bits trails STE QAT 4 bits on the text LM (issue 16; document 003 Table 2 has LSQ far ahead: 18.9 vs
29.9): a trace of LSQ's learned steps while training ``text.py``'s character GPT, at several lrs of the steps'
own AdamW group (``text.LSQ_STEP_LRS``; the model's lr 3e-3 is what LSQ got before, through ``param_groups()``).

LSQ (Esser et al. 2020, §2.2) scales the step's gradient by ``g = 1/sqrt(N·Q_p)`` so that, under SGD, the step's
relative update matches the weights'. Adam divides every gradient by its own running RMS, which cancels any constant
``g``: each update of the step is about ``lr`` whatever ``g`` is, and the steps here start at 0.004 to 0.012.
Recorded every ``EVERY`` optimizer steps, per quantized tensor: the step ``s``, the min-max step of the current
weights ``max|w|/Q_p`` (what STE QAT 4 bits uses), the fraction of weights LSQ clips, and the mean relative change
``|Δs|/s`` per update. Trained rows (perplexity of the reloaded file) go to ``results/text.json`` like ``text.py
train``'s; the traces to ``results/text_lsq.json``.

    flock /work/wt/train2.lock nice -n 10 .venv/bin/python benchmarks/text_lsq.py --only lsq4-slr3e-3 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text  # noqa: E402

TRACE = text.RESULTS / "text_lsq.json"
EVERY = 25


class StepTrace:
    """``on_step`` callback of :func:`text.train_one`: LSQ steps, min-max steps, clip fractions, relative moves."""

    def __init__(self) -> None:
        self.points: list[dict[str, Any]] = []
        self.previous: dict[str, float] = {}
        self.moves: dict[str, list[float]] = {}

    @torch.no_grad()
    def __call__(self, it: int, model: torch.nn.Module, handle) -> None:
        point: dict[str, Any] = {"iteration": it + 1, "tensors": {}}
        for a in handle.attachments:
            q = a.quantizer
            s = float(q.step.detach().float().mean())
            if a.name in self.previous:
                self.moves.setdefault(a.name, []).append(abs(s - self.previous[a.name]) / self.previous[a.name])
            self.previous[a.name] = s
            if it % EVERY == 0:
                w = a.original.detach().float()
                clipped = ((w / s > q.qp + 0.5) | (w / s < -q.qn - 0.5)).float().mean()
                point["tensors"][a.name] = {"step": s, "minmax_step": float(w.abs().max()) / q.qp,
                                            "clipped": float(clipped)}
        if point["tensors"]:
            point["mean_rel_move"] = {n: sum(m) / len(m) for n, m in self.moves.items() if m}
            self.moves = {}
            self.points.append(point)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(text.LSQ_STEP_LRS), help="comma-separated LSQ configurations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=float, default=float("inf"), help="seconds after which no new training starts")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    res = text.load_results()
    traces = json.loads(TRACE.read_text()) if TRACE.exists() else {}
    start, splits = time.monotonic(), None
    for name in args.only.split(","):
        key = f"{name}/seed{args.seed}"
        if key in res["train"] and key in traces:
            print(f"{key}: done already", flush=True)
            continue
        if time.monotonic() - start > args.budget:
            print("budget spent; run again to continue", flush=True)
            return
        splits = splits or text.data(args.seed)
        trace = StepTrace()
        row = text.train_one(name, args.seed, splits, on_step=trace)
        res["train"][key] = row
        text.save_results(res)
        traces[key] = {"quant_lr": row.get("quant_lr"), "every": EVERY, "points": trace.points}
        tmp = TRACE.with_suffix(".tmp")
        tmp.write_text(json.dumps(traces, indent=1) + "\n")
        tmp.replace(TRACE)
        print(f"{key}: ppl {row['perplexity']:.3f}, step lr {row.get('quant_lr')}, {row['train_seconds']} s",
              flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(text.ROOT))
    main()
