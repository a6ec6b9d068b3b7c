"""``learnq analyze {weights,kl,robustness} RUN_OR_MODEL_FILE``: the weight and quantization analyses of a model file.

* ``weights``: per-layer weight statistics (learnq.analysis.weights; DSMM Fig. 2, supplement Fig. 2A) ->
  ``weights.json`` and ``histograms.png``;
* ``kl``: layer-wise KL divergence of the outputs before and after naive min-max PTQ at ``--bits`` (or against the
  model of another file, ``--quantized``) (learnq.analysis.kl; supplement Fig. 1A) -> ``kl-w<B>.json``/``.png``;
* ``robustness``: accuracy with every weight step scaled by each ``--factors`` value around its optimum
  (learnq.analysis.robustness; supplement Fig. 5A) -> ``robustness-w<B>[-<step>][-per-layer].json``/``.png``.

The network is rebuilt from the file's pipeline metadata (``model``; ``kl`` and ``robustness`` also need ``data``)
and its weights loaded with ``learnq.load``; a file saved from user code has no such metadata and is refused with a
message. Files go to ``--out`` (default: ``analysis/`` beside the model file).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

import learnq
from learnq.cli.common import add_common, format_table, print_json, show_progress
from learnq.errors import CheckpointError, ConfigError

_SPLITS = ("test", "calib", "train")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze", help="weight statistics and histograms, layer-wise KL, robustness to the weight step",
        description="Analyses of a model file written by learnq train/run (or a run directory's model).")
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS")
    sub.required = True

    p = sub.add_parser("weights", help="per-layer weight statistics (JSON) and histograms (PNG)",
                       description="Range, std, kurtosis, asymmetry and outliers of every conv/linear weight, and "
                                   "a grid of histograms (DSMM Fig. 2).")
    _common(p, seed=False)
    p.add_argument("--seed", type=int, default=0,
                   help="random seed (accepted like every command's; the weight statistics use no randomness)")
    p.add_argument("--bins", type=int, default=100, help="histogram bins per layer (default 100)")
    p.add_argument("--outlier-sigma", type=float, default=3.0,
                   help="a weight with |w - mean| > K std is an outlier (default 3)")
    p.add_argument("--log", action="store_true", help="log-scale counts (shows the sparse tails)")
    p.add_argument("--layers", nargs="+", default=None, metavar="GLOB",
                   help="only these weights (globs on the weight or layer name): in the table, weights.json and "
                        "the plot alike")
    p.set_defaults(func=run_weights)

    p = sub.add_parser("kl", help="layer-wise KL divergence of outputs before/after quantization",
                       description="KL(float || quantized) of every conv/linear layer's output distribution "
                                   "(supplement Fig. 1A).")
    _common(p, seed=True)
    p.add_argument("--bits", type=int, default=8, help="weight bits of the naive min-max PTQ (default 8)")
    _grid_args(p)
    p.add_argument("--quantized", default=None, metavar="FILE",
                   help="compare with the model of this file (e.g. a run's variant) instead of naive PTQ")
    p.add_argument("--samples", type=int, default=512, help="inputs to run (default 512)")
    p.add_argument("--kl-bins", type=int, default=256, help="histogram bins per layer (default 256)")
    p.add_argument("--smoothing", type=float, default=0.5, help="pseudo-count added to every bin (default 0.5)")
    p.add_argument("--log", action="store_true", help="log-scale KL axis")
    p.set_defaults(func=run_kl)

    p = sub.add_parser("robustness", help="accuracy when the weight step is scaled around its optimum",
                       description="Accuracy with every weight's step scaled by each factor (supplement Fig. 5A).")
    _common(p, seed=True)
    p.add_argument("--bits", type=int, default=4, help="weight bits (default 4)")
    _grid_args(p)
    p.add_argument("--factors", default="0.5,0.625,0.75,0.875,1,1.25,1.5,1.75,2",
                   help="comma-separated step factors (default 0.5,...,2)")
    p.add_argument("--step", choices=("minmax", "mse", "aciq", "kl"), default="minmax",
                   help="the rule giving the optimal step (default minmax)")
    p.add_argument("--per-layer", action="store_true", help="scale one layer at a time (others at their optimum)")
    p.set_defaults(func=run_robustness)


def _common(p: argparse.ArgumentParser, *, seed: bool) -> None:
    p.add_argument("path", help="a model file written by learnq train/run, or a run directory")
    p.add_argument("--out", default=None, metavar="DIR", help="output directory (default: analysis/ beside the file)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_common(p, seed=seed)
    if seed:
        p.add_argument("--split", choices=_SPLITS, default="test", help="data split to run on (default test)")


def _grid_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheme", choices=("symmetric", "affine", "lapq"), default="symmetric",
                   help="grid scheme (default symmetric)")
    p.add_argument("--granularity", default="tensor", help="tensor (default), channel, or group:G")


# -- loading -----------------------------------------------------------------------------------------------------
def load_model(path: str | os.PathLike, device: str = "cpu") -> tuple[nn.Module, Path, dict]:
    """The network of a pipeline model file (rebuilt from its ``model`` metadata, weights via ``learnq.load``),
    the file's path and its metadata. ``CheckpointError`` for a file without pipeline metadata."""
    from learnq.checkpoint import read
    from learnq.pipeline.model_files import resolve_model_file
    from learnq.pipeline.models import model_from_spec

    device = _check_device(device)
    p = resolve_model_file(path)
    meta = read(p).metadata
    if "model" not in meta:
        raise CheckpointError(f"{p} has no pipeline metadata ('model' missing): it was saved from user code, so "
                              "learnq cannot rebuild its network; analyse it from Python with "
                              "learnq.analysis.weights.weight_stats(learnq.load(path, model))")
    model = model_from_spec(meta["model"], device="cpu")
    learnq.load(p, model, device=device)
    return model, p, meta


def _check_device(device: str) -> str:
    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from exc


def _out_dir(args: argparse.Namespace, model_file: Path) -> Path:
    out = Path(args.out).expanduser() if args.out else model_file.parent / "analysis"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the output directory {out}: {exc}") from exc
    return out


def _write_json(path: Path, obj: Any) -> None:
    try:
        path.write_text(json.dumps(obj, indent=2, default=str) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc


def _data(args: argparse.Namespace) -> tuple[nn.Module, Path, Any, dict]:
    """The model, its file, the data split ``--split`` and the file's metadata."""
    from learnq.pipeline.model_files import rebuild, resolve_model_file
    from learnq.pipeline.train import set_seed

    set_seed(args.seed)
    args.device = _check_device(args.device)
    model, splits, meta = rebuild(args.path, device=args.device)
    return model, resolve_model_file(args.path), getattr(splits, args.split), meta


def _check_positive(value: float, option: str) -> None:
    if not value > 0:
        raise ConfigError(f"{option} must be > 0, got {value}")


# -- commands ----------------------------------------------------------------------------------------------------
def run_weights(args: argparse.Namespace) -> int:
    from learnq.analysis.weights import plot_histograms, select_stats, weight_stats

    model, model_file, meta = load_model(args.path, args.device)
    stats = select_stats(weight_stats(model, outlier_sigma=args.outlier_sigma, bins=args.bins), args.layers)
    out = _out_dir(args, model_file)
    png = plot_histograms(stats, out / "histograms.png", log=args.log,
                          title=f"{meta['model']['name']}: {model_file.name}")
    result = {"file": str(model_file), "model": meta["model"]["name"], "outlier_sigma": args.outlier_sigma,
              "bins": args.bins, "selected": args.layers, "layers": stats}
    _write_json(out / "weights.json", result)
    if args.json:
        print_json({**result, "files": [str(out / "weights.json"), str(png)]})
        return 0
    rows = [[s["name"], "x".join(map(str, s["shape"])), s["range"], s["std"], s["kurtosis"], s["skewness"],
             s["range_asymmetry"], s["outliers"]] for s in stats]
    print(format_table(["weight", "shape", "range", "std", "kurtosis", "skewness", "(max+min)/range",
                        f">{args.outlier_sigma:g}σ"], rows))
    print(f"\nwrote {out / 'weights.json'} and {png}")
    return 0


def run_kl(args: argparse.Namespace) -> int:
    from learnq.analysis.kl import layer_kl, plot_kl, quantized_copy

    _check_positive(args.smoothing, "--smoothing")
    model, model_file, data, meta = _data(args)
    if args.quantized:
        quant, qfile, qmeta = load_model(args.quantized, args.device)
        if qmeta["model"] != meta["model"]:
            raise ConfigError(f"--quantized {qfile} holds another network than {model_file}; compare two versions "
                              "of one network (e.g. a run's model.safetensors and one of its variants)")
        against = str(qfile)
    else:
        quant = quantized_copy(model, args.bits, scheme=args.scheme, granularity=args.granularity)
        against = f"minmax ({args.scheme}, {args.granularity})"
    kl = layer_kl(model, quant, data, bins=args.kl_bins, smoothing=args.smoothing, max_samples=args.samples,
                  seed=args.seed, device=args.device)
    out = _out_dir(args, model_file)
    stem = "kl-" + (Path(args.quantized).stem if args.quantized else f"w{args.bits}")
    png = plot_kl(kl, out / f"{stem}.png", log=args.log, title=f"KL(float || {against})")
    result = {"file": str(model_file), "quantized": against, "bits": None if args.quantized else args.bits,
              "split": args.split, "samples": args.samples, "bins": args.kl_bins, "smoothing": args.smoothing,
              "seed": args.seed, "kl": kl}
    _write_json(out / f"{stem}.json", result)
    if args.json:
        print_json({**result, "files": [str(out / f"{stem}.json"), str(png)]})
        return 0
    print(format_table(["layer", "KL (nats)"], [[name, value] for name, value in kl.items()]))
    print(f"\nwrote {out / f'{stem}.json'} and {png}")
    return 0


def _factors(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"--factors {text!r} must be comma-separated numbers, e.g. 0.5,1,2") from None
    if not values:
        raise ConfigError("--factors is empty; give comma-separated numbers, e.g. 0.5,1,2")
    return values


def run_robustness(args: argparse.Namespace) -> int:
    from learnq.analysis.robustness import plot_robustness, step_robustness
    from learnq.pipeline.train import evaluate

    factors = _factors(args.factors)
    model, model_file, data, _ = _data(args)
    float_metrics = evaluate(model, data, device=args.device)
    rows = step_robustness(model, data, factors, args.bits, step=args.step, scheme=args.scheme,
                           granularity=args.granularity, per_layer=args.per_layer, device=args.device,
                           progress=show_progress(args))
    out = _out_dir(args, model_file)
    stem = f"robustness-w{args.bits}" + ("" if args.step == "minmax" else f"-{args.step}") + (
        "-per-layer" if args.per_layer else "")
    png = plot_robustness(rows, out / f"{stem}.png", float_accuracy=float_metrics["accuracy"])
    result = {"file": str(model_file), "bits": args.bits, "step": args.step, "scheme": args.scheme,
              "granularity": args.granularity, "split": args.split, "per_layer": args.per_layer,
              "float": float_metrics, "rows": rows}
    _write_json(out / f"{stem}.json", result)
    if args.json:
        print_json({**result, "files": [str(out / f"{stem}.json"), str(png)]})
        return 0
    print(f"float accuracy {100 * float_metrics['accuracy']:.2f}% (n = {float_metrics['n']})")
    print(format_table(["layer", "factor", "accuracy %", "loss"],
                       [[r["layer"], r["factor"], 100 * r["accuracy"], r["loss"]] for r in rows]))
    print(f"\nwrote {out / f'{stem}.json'} and {png}")
    return 0
