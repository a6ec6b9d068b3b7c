"""Benchmark for issue 13: do learnq's calibration choices under the integer target beat onnxruntime's
``quantize_static`` calibrators on a test set where they can show? Paired per seed and per image.

The ``accuracy`` stage of ``benchmarks/ort.py`` runs on digits (359 test images per seed), where every W8A8 row sits
at float accuracy. Here: MobileNetV2-small (stem stride 2) trained on mnist5k (1x28x28, 4,000 training / 1,000 test
images per seed, each seed its own training and split; Adam 3e-3, cosine, ``--epochs`` epochs), the same 512
calibration images for every row, W8A8 (int8 weights per output channel, uint8 activations). Rows:

* ``float``: the float network (torch).
* ``ort-minmax`` / ``ort-entropy`` / ``ort-percentile``: ``quantize_static(QDQ, per_channel=True, QUInt8
  activations, QInt8 weights)`` with ``CalibrationMethod.MinMax`` / ``Entropy`` / ``Percentile`` (onnxruntime's
  defaults: 128 bins for entropy, the 99.999th percentile).
* ``learnq-int-<rule>``: ``quantize(method=<rule>, wbits=8, abits=8, granularity="channel", target="onnxruntime")``
  for rule in minmax, mse, aciq, kl (the rule clips the weights per channel and the target's activation ranges);
  ``learnq-int-kl-act``: min-max weights, KL activation ranges (what ORT's Entropy calibrator does: KL on
  activations only), by re-calibrating the ``minmax`` model's target with
  ``learnq.act.integer_graph.attach_integer_target(model, calib, clip="kl")``; ``learnq-int-adaround``: AdaRound
  (``fast=True``: 1,000 iterations per layer) with MSE activation ranges. (Bias correction is refused under the
  target: ``PTQ`` raises "not expressible in the integer kernels".)

Every row's accuracy is onnxruntime's on its graph (all optimisations, 1 thread); learnq rows also record how many
test images learnq's own integer simulation classifies differently from onnxruntime (0 expected). Each row stores
which test images it gets right, so the report gives per-seed differences and the pooled discordant pairs against
``ort-minmax`` (images one row gets right and the other wrong) with an exact two-sided sign test.

    flock /work/wt/train.lock nice -n 10 .venv/bin/python benchmarks/ort_calib.py run --seeds 0
    flock /work/wt/train.lock nice -n 10 .venv/bin/python benchmarks/ort_calib.py run --seeds 1,2
    .venv/bin/python benchmarks/ort.py report     # the section of BENCHMARKS.md (reads ort_calib.json)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from ort import ort_quantize  # noqa: E402  (benchmarks/ort.py: the same quantize_static call)

from learnq.pipeline.model_files import rebuild  # noqa: E402
from learnq.pipeline.recipe import Recipe  # noqa: E402
from learnq.pipeline.run import MODEL_FILE, train_recipe  # noqa: E402
from learnq.ptq import quantize  # noqa: E402

JSON = ROOT / "results" / "ort_calib.json"
MODEL = {"name": "mobilenetv2-small", "args": {"stem_stride": 2}}
DATA = {"name": "mnist5k", "calib_size": 512, "test_fraction": 0.2}
ORT_ROWS = {"ort-minmax": "MinMax", "ort-entropy": "Entropy", "ort-percentile": "Percentile"}
LEARNQ_ROWS = {"learnq-int-minmax": {"method": "minmax"}, "learnq-int-mse": {"method": "mse"},
               "learnq-int-aciq": {"method": "aciq"}, "learnq-int-kl": {"method": "kl"},
               "learnq-int-kl-act": {"method": "minmax"},  # then the target re-calibrated with clip "kl" (below)
               "learnq-int-adaround": {"method": "adaround", "fast": True}}
ROWS = ("float", *ORT_ROWS, *LEARNQ_ROWS)


def load() -> dict[str, Any]:
    return json.loads(JSON.read_text()) if JSON.is_file() else {"seeds": {}}


def save(res: dict[str, Any]) -> None:
    JSON.parent.mkdir(exist_ok=True)
    tmp = JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, JSON)


def float_model(seed: int, cache: Path, epochs: int) -> tuple[torch.nn.Module, Any, float]:
    folder = cache / f"mobilenetv2-small-mnist5k-e{epochs}-seed{seed}"
    if not (folder / MODEL_FILE).is_file():
        recipe = {"name": "bench-ort-calib", "seed": seed, "data": dict(DATA), "model": MODEL,
                  "train": {"epochs": epochs, "batch_size": 64, "lr": 3e-3, "optimizer": "adam",
                            "scheduler": "cosine"}, "report": {"plots": False}}
        start = time.perf_counter()
        train_recipe(Recipe.from_dict(recipe), folder)
        (folder / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.3f}\n")
    model, splits, _ = rebuild(folder / MODEL_FILE)
    return model.eval(), splits, float((folder / "train_seconds.txt").read_text())


def ort_predictions(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i:i + 256].numpy()})[0].argmax(1)
                           for i in range(0, len(x), 256)])


def torch_predictions(model: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)]).numpy()


def run(args: argparse.Namespace) -> None:
    from learnq.act.integer_graph import attach_integer_target
    from learnq.export import to_onnx

    torch.set_num_threads(1)
    res = load()
    files = args.files
    files.mkdir(parents=True, exist_ok=True)
    rows = args.rows or list(ROWS)
    began = time.perf_counter()
    for seed in args.seeds:
        model, splits, train_s = float_model(seed, args.cache, args.epochs)
        calib = splits.calib.tensors[0].float()
        x, y = (t for t in splits.test.tensors)
        x, y = x.float(), y.numpy()
        entry = res["seeds"].setdefault(str(seed), {"train_seconds": train_s, "epochs": args.epochs,
                                                    "n": len(y), "rows": {}})
        flt = files / f"s{seed}.float.onnx"
        torch.onnx.export(model, calib[:1], str(flt), opset_version=13, dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        for row in rows:
            if row in entry["rows"]:
                continue
            if time.perf_counter() - began > args.budget:
                print(f"budget of {args.budget:.0f} s spent: stopping before seed {seed} {row}", flush=True)
                return
            start = time.perf_counter()
            out: dict[str, Any] = {}
            if row == "float":
                pred = torch_predictions(model, x)
            elif row in ORT_ROWS:
                path = files / f"s{seed}.{row}.onnx"
                ort_quantize(flt, path, calib, "qdq", calibrate=ORT_ROWS[row])
                pred = ort_predictions(path, x)
            else:
                result = quantize(model, calib, wbits=8, abits=8, granularity="channel", target="onnxruntime",
                                  progress=False, **LEARNQ_ROWS[row])
                if row == "learnq-int-kl-act":
                    attach_integer_target(result.model, calib, clip="kl")
                path = files / f"s{seed}.{row}.onnx"
                to_onnx(result.model, calib[:64], path, verify=False)
                pred = ort_predictions(path, x)
                out["learnq_differs_from_ort"] = int((torch_predictions(result.model, x) != pred).sum())
            right = pred == y
            entry["rows"][row] = {**out, "accuracy": float(right.mean()), "right": "".join("1" if r else "0"
                                                                                          for r in right),
                                  "seconds": time.perf_counter() - start}
            print(f"seed {seed} {row}: {100 * right.mean():.2f}% ({time.perf_counter() - start:.1f} s)"
                  + (f", learnq vs ORT differ on {out['learnq_differs_from_ort']}" if out else ""), flush=True)
            save(res)


def _sign_test(b: int, c: int) -> float:
    """Exact two-sided binomial (sign / McNemar) p-value of b vs c discordant pairs."""
    from scipy.stats import binomtest

    return 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)


def report_lines() -> list[str]:
    """The subsection of the issue's BENCHMARKS.md section (``benchmarks/ort.py report`` calls it)."""
    res = load()
    seeds = {s: e for s, e in sorted(res["seeds"].items(), key=lambda kv: int(kv[0]))
             if "ort-minmax" in e["rows"]}
    if not seeds:
        return []
    epochs = "/".join(str(e) for e in sorted({e["epochs"] for e in seeds.values()}))
    out = [f"### Calibration on a larger test set: MobileNetV2-small on mnist5k, {len(seeds)} seeds "
           "(`benchmarks/ort_calib.py`)", "",
           f"Each seed its own training (mnist5k 1x28x28, stem stride 2, {epochs} epochs, Adam) and its own 1,000 test "
           "images; W8A8 per-channel, the same 512 calibration images for every row; accuracy is onnxruntime's on "
           "each row's graph. Δ: per-seed accuracy minus `ort-minmax`'s (pt); b / c: test images (pooled over seeds) "
           "the row gets right and `ort-minmax` wrong / the reverse; p: exact two-sided sign test on b vs c. "
           "learnq ≠ ORT: images where learnq's own integer simulation and onnxruntime's graph disagree; pooled and "
           "Δ over the seeds a row ran on.", "",
           "| row | " + " | ".join(f"seed {s}" for s in seeds) + " | pooled | Δ per seed (pt) | mean Δ | b / c | p "
           "| learnq ≠ ORT |", "|" + " --- |" * (len(seeds) + 7)]
    ref = {s: e["rows"]["ort-minmax"]["right"] for s, e in seeds.items()}
    for row in ROWS:
        if not any(row in e["rows"] for e in seeds.values()):
            continue
        cells, deltas, b, c, right, n, differ = [], [], 0, 0, 0, 0, 0
        for s, e in seeds.items():
            if row not in e["rows"]:
                cells.append("-")
                continue
            r = e["rows"][row]
            cells.append(f"{100 * r['accuracy']:.1f}%")
            deltas.append(100 * (r["accuracy"] - e["rows"]["ort-minmax"]["accuracy"]))
            b += sum(1 for u, v in zip(r["right"], ref[s], strict=True) if u == "1" and v == "0")
            c += sum(1 for u, v in zip(r["right"], ref[s], strict=True) if u == "0" and v == "1")
            right += r["right"].count("1")
            n += len(r["right"])
            differ += r.get("learnq_differs_from_ort", 0)
        lq = str(differ) if row.startswith("learnq") else "-"
        out.append(f"| {row} | " + " | ".join(cells) + f" | {100 * right / n:.2f}% ({right}/{n}) | "
                   + " / ".join(f"{d:+.1f}" for d in deltas) + f" | {np.mean(deltas):+.2f} | {b} / {c} | "
                   f"{_sign_test(b, c):.2f} | {lq} |")
    same = sum(e["rows"]["ort-entropy"]["right"] == ref[s] for s, e in seeds.items() if "ort-entropy" in e["rows"])
    out += ["", f"`ort-entropy` gets the same test images right as `ort-minmax` on {same} of {len(seeds)} seeds: with "
            "quantize_static's defaults onnxruntime's entropy calibrator (HistogramCalibrater, num_bins = "
            "num_quantized_bins = 128) searches thresholds from the full range only (its candidate loop runs from "
            "num_quantized_bins/2 to num_bins/2). learnq's `kl` (TensorRT's 2048-bin search) picks small ranges "
            "here: 25-35 % of the observed range on post-ReLU edges, half of whose values are 0, and 6 % of max|w| "
            "on some 9-weight depthwise channels, hence the collapse of both KL rows; `-kl-act` keeps min-max "
            "weights."]
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("run", "report"))
    parser.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0, 1, 2])
    parser.add_argument("--rows", type=lambda s: s.split(","), help="comma-separated subset of the rows")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--budget", type=float, default=480.0, help="seconds: no new row starts after them")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "learnq-bench" / "ort")
    parser.add_argument("--files", type=Path,
                        default=Path(os.environ.get("TMPDIR", "/tmp")) / "learnq-bench-ort" / "calib")
    args = parser.parse_args(argv)
    if args.rows and set(args.rows) - set(ROWS):
        parser.error(f"unknown rows {sorted(set(args.rows) - set(ROWS))}; known: {', '.join(ROWS)}")
    torch.manual_seed(0)
    if args.stage == "run":
        run(args)
    else:
        print("\n".join(report_lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
