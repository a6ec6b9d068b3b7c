"""Did a retraining of ``benchmarks/dsmm_repro.py``'s float models reproduce the recorded ones? (issue 17, fifth
session: the model cache was lost with the machine.)

Per key of each retraining's results JSON (``dsmm_repro.py --train-only --out ...``, then ``--eval-only --methods
naive`` on it): recorded and retrained float accuracy, the recipes' equality, for DSMM whether the α trace is the
recorded one (and the first epoch where it is not), and every naive PTQ cell both JSON have. Prints a markdown table
and the counts. Nothing is trained or quantized here.

    python benchmarks/dsmm_retrain_check.py benchmarks/results/dsmm_retrain_s6.json [...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "dsmm_repro.json"


def first_alpha_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> int | None:
    """The first epoch whose per-layer α differs between two traces (None: the traces agree)."""
    return next((h["epoch"] for h, g in zip(a, b, strict=False) if h["alpha"] != g["alpha"]), None)


def compare(recorded: dict[str, Any], retrained: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    lines = ["| key | float recorded | retrained | equal | naive recorded / retrained | α differs from epoch |",
             "| --- | ---: | ---: | --- | --- | ---: |"]
    counts = {"models": 0, "same recipe": 0, "same float": 0, "same float and naive PTQ and α": 0}
    for key in sorted(retrained["train"]):
        rec, new = recorded["train"][key], retrained["train"][key]
        same_float = rec["float"] == new["float"]
        naive = {cfg: (r["accuracy"], new_r["accuracy"])
                 for cfg, new_r in retrained["ptq"].get(key, {}).get("naive", {}).items()
                 if (r := recorded["ptq"].get(key, {}).get("naive", {}).get(cfg))}
        alpha = (first_alpha_difference(rec["alpha_trace"], new.get("alpha_trace", []))
                 if "alpha_trace" in rec else None)
        counts["models"] += 1
        counts["same recipe"] += rec["recipe"] == new["recipe"]
        counts["same float"] += same_float
        counts["same float and naive PTQ and α"] += (same_float and alpha is None
                                                     and all(a == b for a, b in naive.values()))
        cells = ", ".join(f"{cfg} {a} / {b}" for cfg, (a, b) in sorted(naive.items()))
        lines.append(f"| {key} | {rec['float']} | {new['float']} | {'yes' if same_float else 'no'} | {cells} | "
                     f"{'' if 'alpha_trace' not in rec else (alpha if alpha is not None else 'never')} |")
    return lines, counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("retrained", type=Path, nargs="+")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    recorded = json.loads(args.results.read_text())
    for path in args.retrained:
        lines, counts = compare(recorded, json.loads(path.read_text()))
        print(f"## {path.name}\n")
        print("\n".join(lines))
        print("\n" + "; ".join(f"{k}: {v}" for k, v in counts.items()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
