"""The worker of ``benchmarks/qat.py speed``, run under ``.venv-bench/bin/python`` (which has the ``diffq`` package):
learnq's DiffQ (seeds/003) side by side with diffq's ``DiffQuantizer`` on one network, data, seed and λ (accuracy,
true size, train-step and eval times, interleaved rounds, medians), and the conv nets' train step and eval.
``benchmarks/qat.py`` describes the benchmark and starts this worker.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

try:
    from bench_timing import interleaved, mean_call
except ImportError:  # imported as benchmarks.qat_speed_worker
    from benchmarks.bench_timing import interleaved, mean_call


def _interleaved(fns: dict[str, Any], rounds: int, warmup: int = 5, steps: int = 10) -> dict[str, dict[str, float]]:
    """Median over ``rounds`` interleaved rounds (bench_timing.interleaved, always in the given order, as every result
    so far) of the per-call wall and thread CPU time of each function (ms), each round's share ``steps`` calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = interleaved(fns, rounds, lambda fn: mean_call(fn, steps), rotate=False)
    return {k: {"wall_ms": 1e3 * statistics.median(w for w, _ in v), "cpu_ms": 1e3 * statistics.median(c for _, c in v)}
            for k, v in samples.items()}


def _command(args: argparse.Namespace) -> str:
    return "python benchmarks/qat.py speed " + " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in (
        "epochs", "seed", "penalties", "bits_lr", "threads", "rounds", "nets", "conv_rounds", "conv_steps"))


def speed_worker(args: argparse.Namespace) -> None:
    """Under .venv-bench: float32, learnq DiffQ and diffq's DiffQuantizer on one network, data, seed and λ."""
    import contextlib
    import copy
    import pickle

    import diffq
    import torch.nn.functional as F
    from torch import nn
    from torch.nn.utils import parametrize

    import learnq
    from learnq.pipeline.models import model_from_spec, model_spec

    torch.set_num_threads(args.threads)
    data = torch.load(args.data, weights_only=True)
    if "mlp" not in args.nets.split(","):  # conv nets only: keep the MLP results of the JSON
        results = json.loads(Path(args.out).read_text()) if Path(args.out).exists() else {}
        results["conv"] = conv_speed(args, data)
        results.setdefault("meta", {})["conv_command"] = _command(args)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
        return
    torch.manual_seed(args.seed)
    init = model_from_spec(model_spec("thesis-mnist", (1, 28, 28), 10))
    group, batch, kinds = 8, 64, ("float", "learnq", "diffq")
    setups: dict[str, Any] = {}

    def make(kind: str, lam: float) -> tuple[nn.Module, Any, Any, float]:
        model = copy.deepcopy(init)
        if kind == "float":
            return model, torch.optim.Adam(model.parameters(), lr=1e-3), None, lam
        if kind == "learnq":
            handle = learnq.prepare(model, learnq.DiffQ(group_size=group, penalty=lam))
            groups = [{"params": handle.split_parameters()[0]}, *handle.param_groups(lr=args.bits_lr)]
            return model, torch.optim.Adam(groups, lr=1e-3), handle, lam
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)  # the package: optimizer first, then the quantizer
        quantizer = diffq.DiffQuantizer(model, group_size=group, min_size=0.0, exclude=["bias"])
        quantizer.setup_optimizer(opt, lr=args.bits_lr)  # bits logits: own lr, no weight decay (as learnq's group)
        return model, opt, quantizer, lam

    def step_fn(kind: str, x: torch.Tensor, y: torch.Tensor) -> Any:
        model, opt, q, lam = setups[kind]

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            if kind == "learnq":
                loss = loss + q.loss()  # λ·M(b), M in MB (Eq. 8)
            elif kind == "diffq":
                loss = loss + lam * q.model_size()  # the package README's loss
            loss.backward()
            opt.step()
        return step

    params = sum(p.numel() for p in init.parameters())
    results: dict[str, Any] = {"accuracy": {}}
    for lam in (float(v) for v in args.penalties.split(",")):  # same init, batches and noise seed for all three
        record: dict[str, Any] = {"accuracy": {}, "true_size_mb": {}, "train_seconds": {}}
        for kind in kinds:
            setups[kind] = make(kind, lam)
            model, _, q, _ = setups[kind]
            order = torch.Generator().manual_seed(args.seed)
            torch.manual_seed(args.seed)
            model.train()
            t0 = time.perf_counter()
            for _ in range(args.epochs):
                perm = torch.randperm(len(data["train_y"]), generator=order)
                for i in range(0, len(perm), batch):
                    step_fn(kind, data["train_x"][perm[i:i + batch]], data["train_y"][perm[i:i + batch]])()
            record["train_seconds"][kind] = time.perf_counter() - t0
            model.eval()
            with torch.no_grad():
                n_test = len(data["test_y"])
                pred = torch.cat([model(data["test_x"][i:i + 256]).argmax(1) for i in range(0, n_test, 256)])
            record["accuracy"][kind] = float((pred == data["test_y"]).float().mean())
            record["true_size_mb"][kind] = (4 * params / 2**20 if kind == "float" else
                                            q.true_size_mb() if kind == "learnq" else q.true_model_size())
        quantizer = setups["diffq"][2]
        record["diffq_pickle_mb"] = len(pickle.dumps(quantizer.get_quantized_state(packed=True))) / 2**20
        with tempfile.TemporaryDirectory() as tmp:
            report = learnq.save(setups["learnq"][0], Path(tmp) / "m.safetensors", report=True)
            record["learnq_file_mb"] = report.file_bytes / 2**20
        quants = setups["learnq"][2].quantizers.values()  # mean rounded bits per quantized weight
        pkg = [quantizer._get_bits(qp.logit).round().clamp(1, 15) for qp in quantizer._qparams]
        record["bits"] = {"learnq": sum(float((q.group_counts * q.rounded_bits()).sum()) for q in quants) /
                          sum(q.numel for q in quants), "diffq": float(torch.cat(pkg).mean())}
        results["accuracy"][f"{lam:g}"] = record
        print(f"λ={lam:g}: {json.dumps(record)}", flush=True)

    results["train_step"] = {}
    for b in (64, 256, 1024):
        x, y = data["train_x"][:b], data["train_y"][:b]
        for kind in kinds:
            setups[kind][0].train()
        results["train_step"][str(b)] = _interleaved({k: step_fn(k, x, y) for k in kinds}, args.rounds)
    xe = data["test_x"][:256]
    with tempfile.TemporaryDirectory() as tmp:  # the quantized model as a user gets it: saved, then loaded
        learnq.save(setups["learnq"][0].eval(), Path(tmp) / "q.safetensors")
        loaded = copy.deepcopy(init)
        learnq.load(Path(tmp) / "q.safetensors", loaded)
    evals: dict[str, Any] = {}
    for kind in kinds:
        setups[kind][0].eval()
    models = {"float": setups["float"][0], "learnq": setups["learnq"][0], "learnq-loaded": loaded.eval(),
              "diffq": setups["diffq"][0]}
    def full(m: nn.Module, cached: bool = False) -> Any:
        def run() -> None:  # the test split in batches of 256; cached: under parametrize.cached() (one dequantize)
            with parametrize.cached() if cached else contextlib.nullcontext():
                for i in range(0, len(data["test_y"]), 256):
                    m(data["test_x"][i:i + 256])
        return run

    with torch.no_grad():
        evals["batch256"] = _interleaved({k: (lambda m=m: m(xe)) for k, m in models.items()}, args.rounds)
        split = {k: full(m) for k, m in models.items()} | {"learnq-loaded, parametrize.cached()": full(loaded, True)}
        evals["test_split"] = _interleaved(split, max(5, args.rounds // 3), warmup=2)
    results["eval"] = evals
    results["conv"] = conv_speed(args, data)
    results["meta"] = {"threads": args.threads, "torch": torch.__version__, "diffq": "0.2.4", "group_size": group,
                       "penalties": args.penalties, "bits_lr": args.bits_lr, "epochs": args.epochs,
                       "seed": args.seed, "batch": batch, "rounds": args.rounds, "python": platform.python_version(),
                       "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                       "command": _command(args)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


CONV_NETS = (("lenet", (1, 28, 28)), ("thesis-cifar", (3, 32, 32)))  # mnist5k images; synthetic 3x32x32


def conv_speed(args: argparse.Namespace, data: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Under .venv-bench: train step and eval of conv nets (each weight reused at every position: the realistic
    case), float32 vs learnq DiffQ vs the package at group sizes 8 and 16, batches 64 and 256. ``lenet`` on
    mnist5k images, ``thesis-cifar`` on synthetic 3x32x32 inputs (timing does not depend on the values)."""
    import copy

    import diffq
    import torch.nn.functional as F

    import learnq
    from learnq.pipeline.models import model_from_spec, model_spec

    out: dict[str, Any] = {}
    for net, shape in CONV_NETS:
        if net not in args.nets.split(","):
            continue
        torch.manual_seed(args.seed)
        init = model_from_spec(model_spec(net, shape, 10))
        if shape[0] == 1:
            xs, ys = data["train_x"][:256], data["train_y"][:256]
        else:
            xs, ys = torch.randn(256, *shape), torch.randint(0, 10, (256,))
        models: dict[str, Any] = {"float": (copy.deepcopy(init), None)}
        record_skip: dict[str, list[str]] = {}
        opts: dict[str, Any] = {}
        for g in (8, 16):
            m = copy.deepcopy(init)
            models[f"learnq g{g}"] = (m, learnq.prepare(m, learnq.DiffQ(group_size=g, penalty=1e-3)))
            m = copy.deepcopy(init)  # the package refuses a tensor its group size does not divide: left float there
            skip = [n for n, p in m.named_parameters() if p.numel() % g]
            record_skip[f"diffq g{g}"] = skip
            opts[f"diffq g{g}"] = torch.optim.Adam(m.parameters(), lr=1e-3)  # the package: optimizer first
            models[f"diffq g{g}"] = (m, diffq.DiffQuantizer(m, group_size=g, min_size=0.0, exclude=["bias", *skip]))
            models[f"diffq g{g}"][1].setup_optimizer(opts[f"diffq g{g}"], lr=args.bits_lr)
        steps: dict[str, Any] = {}
        for kind, (m, q) in models.items():
            if kind.startswith("learnq"):
                opt = torch.optim.Adam([{"params": q.split_parameters()[0]}, *q.param_groups(lr=args.bits_lr)],
                                       lr=1e-3)
            else:
                opt = opts.get(kind) or torch.optim.Adam(m.parameters(), lr=1e-3)
            steps[kind] = (m, q, opt)

        def step_fn(kind: str, x: torch.Tensor, y: torch.Tensor, setups: dict[str, Any] = steps) -> Any:
            m, q, opt = setups[kind]

            def step() -> None:
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(m(x), y)
                if kind.startswith("learnq"):
                    loss = loss + q.loss()
                elif kind.startswith("diffq"):
                    loss = loss + 1e-3 * q.model_size()
                loss.backward()
                opt.step()
            return step

        record: dict[str, Any] = {"params": sum(p.numel() for p in init.parameters()), "train_step": {}, "eval": {},
                                  "diffq_left_float": record_skip}
        for b in (64, 256):
            for m, _ in models.values():
                m.train()
            fns = {k: step_fn(k, xs[:b], ys[:b]) for k in models}
            record["train_step"][str(b)] = _interleaved(fns, args.conv_rounds, warmup=2, steps=args.conv_steps)
            print(f"{net} train batch {b}: {json.dumps(record['train_step'][str(b)])}", flush=True)
        evals: dict[str, Any] = {}
        for kind, (m, _) in models.items():
            m.eval()
            evals[kind] = m
            if kind.startswith("learnq"):  # as a user gets it: saved, then loaded into the plain network
                with tempfile.TemporaryDirectory() as tmp:
                    learnq.save(m, Path(tmp) / "q.safetensors")
                    loaded = copy.deepcopy(init)
                    learnq.load(Path(tmp) / "q.safetensors", loaded)
                evals[f"{kind} loaded"] = loaded.eval()
        with torch.no_grad():
            for b in (64, 256):
                fns = {k: (lambda m=m, x=xs[:b]: m(x)) for k, m in evals.items()}
                record["eval"][str(b)] = _interleaved(fns, args.conv_rounds, warmup=2, steps=args.conv_steps)
                print(f"{net} eval batch {b}: {json.dumps(record['eval'][str(b)])}", flush=True)
        out[net] = record
    return out
