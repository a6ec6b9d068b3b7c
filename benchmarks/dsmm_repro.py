"""Benchmark for issue 17: DSMM (Kundu et al. 2024, seeds/000) Table 1 and Table 3 on small networks, with the
temperature α recorded until it reaches its equilibrium α*.

Two protocols, each for LeNet-5 (``lenet``) and the zoo's MobileNetV2 (``mobilenetv2-small``, ``stem_stride=2``) on
``mnist5k`` (4,000 / 1,000 images, split by the seed), three regularizers, seeds 1-3:

* ``scratch`` (Table 1, DSMM¹ of Table 3): trained from initialisation with L2 (1x), heavy L2 (10x, instead of the
  1x) or L2 + DSMM (λ = 0.01, α₀ = 0.1, the paper's, A.1). SGD, momentum 0.9, cosine schedule, batch 64.
* ``finetune`` (Sec. 4.2, DSMM² of Table 3): the seed's ``scratch`` L2 model fine-tuned at a low learning rate for
  10 epochs (``--ft-epochs``; α reaches α* within 5 epochs in the pilot traces) with L2 (the control: same extra
  training), heavy L2, or L2 + DSMM.

α has its own optimizer group at ``--alpha-lr`` (DSMM's ``alpha_lr``): α moves by ``lr·λ·dL/dα`` per step, and the
paper's ImageNet runs (lr 0.4 to 1.0, hundreds of thousands of steps) have orders of magnitude more of that than a
network trained for a few thousand steps at lr 0.05; the per-epoch trace (``learnq.regularizers.dsmm_alpha``) shows
whether α has reached α* (BENCHMARKS.md, issue-17 section, for the pilot that chose the value).

Then PTQ of **every** layer (the paper's A.2: first and last included), BatchNorm folded, one step per tensor,
8-bit activations at every layer's input, W4A8 and W2A8: ``naive`` (min-max, symmetric grid), ``naive-affine``
(min-max, ``Δ = (max - min)/(2^b - 1)``: the range DSMM shrinks), ``mse``, ``mse+bc`` (bias correction), ``aciq``,
``kl``, ``adaround`` (the fast preset, 1,000 iterations per layer, as every stored row of it),
``adaround-10k`` (10,000 iterations per layer, the paper's and AIMET's default; its own row so that both are kept side
by side) and ``lapq`` (capped: ``--lapq-maxfev`` loss evaluations, Powell ``maxiter`` 1).

The trained float models are cached outside git, ``--cache`` (default ``~/.cache/learnq-bench/dsmm``):
``<protocol>/<model>/<reg>/seed<k>.safetensors`` (``learnq.save``, with the pipeline's metadata, so
``learnq eval`` / ``learnq.pipeline.run.rebuild`` read them back with their data split) and ``seed<k>.json``
(history, α trace, training summary). Results go to ``--out`` (``benchmarks/results/dsmm_repro.json``), rewritten
atomically after every trained model and every PTQ result, so an interrupted run resumes where it stopped; done
work is skipped. ``benchmarks/dsmm_report.py`` turns the JSON into tables and plots.

    python benchmarks/dsmm_repro.py --train-only --protocols scratch --models lenet --regs dsmm --seeds 1
    python benchmarks/dsmm_repro.py --eval-only --methods naive,mse,adaround --models lenet
    python benchmarks/dsmm_repro.py --quick            # smoke: 1 seed, 2+1 epochs, 1,000 images, cheap PTQ
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from dsmm_report import weight_summary  # benchmarks/dsmm_report.py

from learnq.atomic_file import write_atomic
from learnq.bn_fold import fold_batchnorm
from learnq.checkpoint import load, read, save
from learnq.grid import GridSpec
from learnq.pipeline.model_files import rebuild
from learnq.pipeline.models import model_from_spec, model_spec
from learnq.pipeline.recipe import Recipe
from learnq.pipeline.run import load_splits
from learnq.pipeline.train import evaluate, set_seed, train
from learnq.pipeline.training import prepare_training, training_summary
from learnq.ptq import quantize
from learnq.ptq.ptq_weight import quantize_weights
from learnq.regularizers.dsmm_alpha import plot_alpha_trace

RESULTS = Path(__file__).resolve().parent / "results" / "dsmm_repro.json"
CACHE = Path("~/.cache/learnq-bench/dsmm").expanduser()
DATA = {"name": "mnist5k", "calib_size": 512, "test_fraction": 0.2}
#: model -> network, lr, L2 strength (1x), scratch epochs; fine-tuning: --ft-epochs at --ft-lr-factor x lr
MODELS: dict[str, dict[str, Any]] = {
    "lenet": {"model": {"name": "lenet"}, "lr": 0.05, "l2": 5e-4, "epochs": 40},
    "mobilenetv2-small": {"model": {"name": "mobilenetv2-small", "args": {"stem_stride": 2}}, "lr": 0.05,
                          "l2": 4e-5, "epochs": 30},
}
REGS = ("l2", "l2-heavy", "dsmm")
PROTOCOLS = ("scratch", "finetune")
CONFIGS = ((4, 8), (2, 8))
#: PTQ row -> (learnq method, quantize() keyword arguments); "affine": the weight grid of naive-affine
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "naive": ("minmax", {}), "naive-affine": ("minmax", {"affine": True}), "mse": ("mse", {}),
    "mse+bc": ("mse", {"bias_correction": True}), "aciq": ("aciq", {}), "kl": ("kl", {}),
    "adaround": ("adaround", {}), "adaround-10k": ("adaround", {}), "lapq": ("lapq", {}),
}


def regularizers(model: str, reg: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The recipe's ``[[regularizers]]`` of one row: L2 1x, heavy L2 (10x, replaces it) or L2 + DSMM."""
    l2 = MODELS[model]["l2"]
    if reg == "l2-heavy":
        return [{"name": "l2-heavy", "strength": l2}]
    regs = [{"name": "l2", "strength": l2}]
    if reg == "dsmm":
        regs.append({"name": "dsmm", "strength": args.dsmm, "options": {"alpha_init": args.alpha_init,
                                                                      "alpha_lr": args.alpha_lr}})
    return regs


def make_recipe(protocol: str, model: str, reg: str, seed: int, args: argparse.Namespace) -> Recipe:
    m = MODELS[model]
    epochs = (args.epochs or m["epochs"]) if protocol == "scratch" else args.ft_epochs
    lr = m["lr"] if protocol == "scratch" else m["lr"] * args.ft_lr_factor
    data = {"version": 1, "name": f"dsmm-repro-{protocol}-{model}-{reg}", "seed": seed,
            "data": {**DATA, **({"limit": args.limit} if args.limit else {})}, "model": copy.deepcopy(m["model"]),
            "train": {"epochs": epochs, "batch_size": 64, "lr": lr, "optimizer": "sgd", "momentum": 0.9,
                      "scheduler": "cosine"},
            "regularizers": regularizers(model, reg, args), "report": {"plots": False}}
    return Recipe.from_dict(data)


def model_file(cache: Path, protocol: str, model: str, reg: str, seed: int) -> Path:
    return cache / protocol / model / reg / f"seed{seed}.safetensors"


def key_of(protocol: str, model: str, reg: str, seed: int) -> str:
    return f"{protocol}/{model}/{reg}/seed{seed}"


def train_one(protocol: str, model: str, reg: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Train one configuration (fine-tuning starts from the seed's scratch L2 file); write its file and JSON."""
    recipe = make_recipe(protocol, model, reg, seed, args)
    path = model_file(args.cache, protocol, model, reg, seed)
    splits = load_splits(recipe)
    spec = model_spec(recipe.model.name, splits.input_shape, splits.num_classes, **recipe.model.args)
    set_seed(recipe.train.seed)
    net = model_from_spec(spec, device="cpu")
    init = None
    if protocol == "finetune":
        init = model_file(args.cache, "scratch", model, "l2", seed)
        if not init.is_file():
            raise SystemExit(f"fine-tuning needs {init}: train --protocols scratch --regs l2 first")
        load(init, net)
    start = time.perf_counter()
    parts = prepare_training(recipe, net, "cpu")
    result = train(net, splits.train, recipe.train, test_set=splits.test, progress=not args.quiet, **parts.kwargs)
    seconds = time.perf_counter() - start
    summary = training_summary(recipe, net, parts.regularizers, parts.traces)
    test = evaluate(net, splits.test, batch_size=256)
    meta_recipe = recipe.to_dict()
    meta_recipe.pop("variants", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(net, path, metadata={"model": spec, "data": splits.preprocessing, "recipe": meta_recipe,
                              "metrics": {"test": test, "epochs": len(result.history)}})
    record = {"key": key_of(protocol, model, reg, seed), "protocol": protocol, "model": model, "reg": reg,
              "seed": seed, "float": test["accuracy"], "train_seconds": seconds, "init": str(init) if init else None,
              "recipe": meta_recipe, "history": result.history, "training": summary, "file": str(path),
              "weights": weight_summary(read(path).entries)}
    write_atomic(path.with_suffix(".json"), (json.dumps(record, indent=1) + "\n").encode())
    trace = summary["regularizers"].get("dsmm", {}).get("trace")
    if trace:
        plot_alpha_trace(trace, path.with_name(f"seed{seed}_alpha.png"),
                         title=f"{protocol} {model} seed {seed}: α (solid) and α* (dashed) per layer")
    return record


def train_record(rec: dict[str, Any]) -> dict[str, Any]:
    """What the results JSON keeps of a training: everything but the history, plus DSMM's α trace (α, α*, dL/dα
    per layer per epoch) so that the report does not need the cache."""
    out = {k: v for k, v in rec.items() if k not in ("history", "training")}
    trace = rec.get("training", {}).get("regularizers", {}).get("dsmm", {}).get("trace")
    if trace:
        out["alpha_trace"] = trace
    return out


def backfill_weights(entry: dict[str, Any], path: Path, recorded_ptq: dict[str, Any] | None = None,
                     naive: Callable[[int, int], float] | None = None) -> bool:
    """Store ``weight_summary`` of the model file in a results entry recorded before the JSON kept it, when the
    file is that training's: same recipe and float accuracy in its JSON, for DSMM the same α trace, and (with
    ``naive``: wbits, abits -> test accuracy of the file's min-max PTQ) every recorded ``naive`` PTQ accuracy
    of ``recorded_ptq`` recomputed equal. A retraining on another machine reaches the recorded float accuracy
    of 1,000 test images by chance with other weights (the fifth session, BENCHMARKS.md issue 17: 2 of 18
    retrained LeNets, and L2 models have no α trace); else say why not and leave the entry."""
    side = json.loads(path.with_suffix(".json").read_text())
    trace = side.get("training", {}).get("regularizers", {}).get("dsmm", {}).get("trace")
    why = None
    if side.get("recipe") != entry.get("recipe") or side.get("float") != entry.get("float"):
        why = f"float {side.get('float')} against {entry.get('float')}, or another recipe"
    elif "alpha_trace" in entry and trace != entry["alpha_trace"]:
        why = "another α trace"
    elif naive is not None:
        for cfg, r in sorted((recorded_ptq or {}).get("naive", {}).items()):
            w, a = (int(b) for b in cfg[1:].split("A"))
            if (got := naive(w, a)) != r["accuracy"]:
                why = f"naive {cfg} {got} against {r['accuracy']}"
                break
    if why:
        print(f"{path}: not the recorded training of {entry['key']} ({why}): its weights are not recorded",
              flush=True)
        return False
    entry["weights"] = weight_summary(read(path).entries)
    if side.get("train_seconds") != entry.get("train_seconds"):
        entry["weights_from"] = ("a retraining with the recorded recipe that reached the recorded float accuracy, "
                                 "α trace and naive PTQ accuracies")
    return True


def ptq_one(path: Path, row: str, wbits: int, abits: int, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Quantize the model file ``path`` by PTQ row ``row`` at W``wbits``A``abits``; test accuracy and costs."""
    model, splits, _ = rebuild(path)
    method, kwargs = METHODS[row]
    kwargs = dict(kwargs)
    options: dict[str, Any] = {}
    if method == "adaround":
        options["iterations"] = 100 if args.quick else (10_000 if row == "adaround-10k" else 1000)
    if method == "lapq":
        options.update({"maxiter": 1, "maxfev": 20 if args.quick else args.lapq_maxfev})
    torch.manual_seed(seed)
    start, cpu = time.perf_counter(), time.process_time()
    if kwargs.pop("affine", False):  # two steps: fold BN, affine weights; then the activations on that model
        model = fold_batchnorm(copy.deepcopy(model).eval())
        quantize_weights(model, GridSpec(bits=wbits, scheme="affine", granularity="tensor"))
        result = quantize(model, splits.calib, method=method, wbits=32, abits=abits, granularity="tensor",
                          skip_first_last=False, seed=seed, progress=False)
    else:
        result = quantize(model, splits.calib, method=method, wbits=wbits, abits=abits, granularity="tensor",
                          skip_first_last=False, seed=seed, progress=False, **kwargs, **options)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    acc = evaluate(result.model, splits.test, batch_size=256)["accuracy"]
    return {"accuracy": acc, "seconds": seconds, "cpu_seconds": cpu, "loss_evals": result.loss_evals,
            "options": options, "skipped": result.skipped}


def load_results(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"benchmark": "dsmm_repro", "train": {}, "ptq": {}}


def save_results(path: Path, results: dict[str, Any], args: argparse.Namespace) -> None:
    results["settings"] = {"alpha_lr": args.alpha_lr, "alpha_init": args.alpha_init, "dsmm": args.dsmm,
                           "ft_epochs": args.ft_epochs, "ft_lr_factor": args.ft_lr_factor, "models": MODELS,
                           "data": DATA, "threads": args.threads, "torch": torch.__version__,
                           "python": platform.python_version(),
                           "ptq": "every layer, BatchNorm folded, per-tensor weights, 8-bit per-tensor activations; "
                                  "each result records its AdaRound iterations / LAPQ cap in 'options'"}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(results, indent=1) + "\n").encode())


def _csv(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if t not in known]
    if bad or not items:
        raise SystemExit(f"unknown or empty --{what}: {bad}; known: {', '.join(known)}")
    return items


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--protocols", default=",".join(PROTOCOLS))
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--regs", default=",".join(REGS))
    p.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3; the pilot used 0)")
    p.add_argument("--methods", default=",".join(METHODS), help="PTQ rows")
    p.add_argument("--train-only", action="store_true", help="train (and cache) the float models, no PTQ")
    p.add_argument("--eval-only", action="store_true", help="PTQ of cached models only (missing ones are skipped)")
    p.add_argument("--epochs", type=int, default=None, help="scratch epochs (default: per model, MODELS)")
    p.add_argument("--ft-epochs", type=int, default=10, help="fine-tuning epochs (default 10)")
    p.add_argument("--ft-lr-factor", type=float, default=0.1, help="fine-tuning lr / scratch lr (default 0.1)")
    p.add_argument("--dsmm", type=float, default=0.01, help="DSMM λ (default 0.01, the paper's)")
    p.add_argument("--alpha-init", type=float, default=0.1, help="DSMM α₀ (default 0.1, the paper's)")
    p.add_argument("--alpha-lr", type=float, default=50.0, help="lr of DSMM's α group (default 50, from the pilot)")
    p.add_argument("--configs", default=",".join(f"W{w}A{a}" for w, a in CONFIGS), help="PTQ bit configurations")
    p.add_argument("--adaround-fast", action="store_true",
                   help="accepted for the recorded commands: the row names the iterations ('adaround': 1,000, "
                        "'adaround-10k': 10,000)")
    p.add_argument("--lapq-maxfev", type=int, default=300, help="LAPQ's cap on Powell's loss evaluations")
    p.add_argument("--limit", type=int, default=None, help="at most this many training images")
    p.add_argument("--quick", action="store_true", help="smoke run: seed 1, 2 (+1) epochs, 1,000 images")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds: start no training or PTQ run after this; exit status {MORE} when work is left")
    args = p.parse_args(argv)
    args.protocols = _csv(args.protocols, PROTOCOLS, "protocols")
    args.models = _csv(args.models, list(MODELS), "models")
    args.regs = _csv(args.regs, REGS, "regs")
    args.methods = _csv(args.methods, list(METHODS), "methods")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    known = [f"W{w}A{a}" for w, a in CONFIGS]
    args.configs = [CONFIGS[known.index(c)] for c in _csv(args.configs, known, "configs")]
    if args.quick:
        args.seeds, args.epochs, args.ft_epochs, args.limit = [1], 2, 1, args.limit or 1000
    if args.train_only and args.eval_only:
        p.error("--train-only and --eval-only exclude each other")
    return args


MORE = 3  # exit status: --budget ran out with work left (rerun the same command to go on)


def out_of_time(t0: float, args: argparse.Namespace) -> bool:
    """True (after saying so) when ``--budget`` seconds have passed: stop before the next training or PTQ run."""
    if args.budget is None or time.perf_counter() - t0 < args.budget:
        return False
    print(f"--budget {args.budget:.0f} s spent: stopping with work left (exit {MORE}); rerun to resume", flush=True)
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    results = load_results(args.out)
    results.setdefault("commands", []).append(" ".join(["python", *sys.argv]))
    t0 = time.perf_counter()
    for protocol in args.protocols:
        for model in args.models:
            for reg in args.regs:
                for seed in args.seeds:
                    key = key_of(protocol, model, reg, seed)
                    path = model_file(args.cache, protocol, model, reg, seed)
                    if not args.eval_only and not path.is_file():
                        if out_of_time(t0, args):
                            return MORE
                        rec = train_one(protocol, model, reg, seed, args)
                        results["train"][key] = train_record(rec)
                        save_results(args.out, results, args)
                        print(f"[{time.perf_counter() - t0:6.0f}s] trained {key}: float {100 * rec['float']:.1f}% "
                              f"({rec['train_seconds']:.0f} s)", flush=True)
                    if args.train_only or not path.is_file():
                        continue
                    if key not in results["train"]:  # trained by an earlier run into the same cache
                        rec = json.loads(path.with_suffix(".json").read_text())
                        results["train"][key] = train_record(rec)
                    if "weights" not in results["train"][key] and backfill_weights(
                            results["train"][key], path, results["ptq"].get(key),
                            lambda w, a, p=path, s=seed: ptq_one(p, "naive", w, a, s, args)["accuracy"]):
                        save_results(args.out, results, args)
                    done = results["ptq"].setdefault(key, {})
                    for row in args.methods:
                        for w, a in args.configs:
                            cfg = f"W{w}A{a}"
                            if cfg in done.get(row, {}):
                                continue
                            if out_of_time(t0, args):
                                return MORE
                            r = ptq_one(path, row, w, a, seed, args)
                            done.setdefault(row, {})[cfg] = r
                            save_results(args.out, results, args)
                            print(f"[{time.perf_counter() - t0:6.0f}s] {key} {row:12s} {cfg}: "
                                  f"{100 * r['accuracy']:5.1f}%  ({r['seconds']:.1f} s, {r['loss_evals']} evals)",
                                  flush=True)
    print(f"done in {time.perf_counter() - t0:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    raise SystemExit(main())
