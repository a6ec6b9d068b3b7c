"""Benchmark for issue 16: document 003's Table 2 (DiffQ on a transformer language model) at small scale.

``train``: a small character GPT (``gpt``: tied token embedding / output head, learned positions, pre-LayerNorm
blocks) on ``shakespeare-char``, trained **from scratch** with each weight quantizer attached to every linear layer
and both embeddings (the tied one: one quantizer, one noise sample, stored once): float32, STE QAT at 8 and 4 bits
with a layer-wise (per tensor) min-max range as in document 003 §5 ("QAT"), LSQ at 4 bits, and DiffQ (group size 16,
Gaussian noise) at two size penalties λ; every quantized configuration also with 8-bit per-channel activations
during training (``<name>-a8``, the paper's setting: input quantizers with moving-average ranges, ``text_act.py``).
Each model is frozen, saved, reloaded and evaluated from the file on the validation works. Reported: validation
perplexity (and bits per character), the true model size (DiffQ: Eq. 12 per tensor; the others: codes plus float32
steps; float tensors at 32 bits) and the model file's bytes. DiffQ's learned bits per layer group go to a histogram
(document 003 Fig. 3), ``text_bits.png``.

``ptq``: post-training quantization of the float model of seed 0 (learnq.ptq.quantize, 128 calibration windows):
W8A8, W4A8 per output channel and grouped (groups of 32), W4A16 (weights only; activations float), with min-max and
MSE clipping (AdaRound for W4A16, 300 iterations per weight instead of 1,000 to fit the lock), activations 8-bit
per channel as in document 003 Table 2. LayerNorm, softmax and the attention's matrix products stay float.

One thread (``torch.set_num_threads(1)``), results appended per configuration to ``benchmarks/results/text.json``
(a rerun skips what is there; ``--budget`` seconds: no new training starts after), so each call fits in the
machine-wide lock's ~10 minutes:

    flock /work/wt/train.lock nice -n 10 .venv/bin/python benchmarks/text.py train --only lsq4,qat8-a8 --seed 0
    flock /work/wt/train.lock nice -n 10 .venv/bin/python benchmarks/text.py ptq
    flock /work/wt/train.lock nice -n 10 .venv-bench/bin/python benchmarks/text.py peer   # optimum-quanto W8 / W4
    flock /work/wt/train.lock nice -n 10 .venv-bench/bin/python benchmarks/text.py peer-torchao   # torchao W8 / W4
    .venv/bin/python benchmarks/text.py report      # text_report.py: text.md, text_bits.png, BENCHMARKS.md section
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
OUT = RESULTS / "text.json"
CACHE = Path.home() / ".cache" / "learnq-bench" / "text"
MODEL = {"n_layer": 4, "n_head": 4, "n_embd": 64, "dropout": 0.0}
DATA = {"block_size": 64, "heldout": "validation"}
TRAIN = {"limit": 6000, "epochs": 3, "batch_size": 32, "lr": 3e-3, "weight_decay": 0.1, "grad_clip": 1.0}
DIFFQ_BITS_LR = 1e-2  # bits-logit lr (as benchmarks/qat.py: the default 1e-3 barely moves a logit in a short run)
QUANT_LR: dict[str, float] = {}  # configuration -> lr of the quantizers' own group (default: the method's default_lr)
CONFIGS: dict[str, dict[str, Any] | None] = {
    "float": None,
    "qat8": {"method": "ste", "bits": 8, "granularity": "tensor"},
    "qat4": {"method": "ste", "bits": 4, "granularity": "tensor"},
    "lsq4": {"method": "lsq", "bits": 4, "granularity": "tensor"},
    "diffq5": {"method": "diffq", "group_size": 16, "penalty": 5.0},
    "diffq10": {"method": "diffq", "group_size": 16, "penalty": 10.0},
    # Quant-Noise (Fan et al. 2021; document 003 Table 2 "QN 8 / 4 bits"): fairseq's scalar Quant-Noise, each weight
    # quantized with probability p = 0.5 (`--quant-noise-scalar 0.5` of its README; blocks of 1), min-max per tensor
    "qn8": {"method": "quant_noise", "bits": 8, "granularity": "tensor", "rate": 0.5, "block_size": 1},
    "qn4": {"method": "quant_noise", "bits": 4, "granularity": "tensor", "rate": 0.5, "block_size": 1},
}
CONFIGS.update({f"{k}-a8": v for k, v in CONFIGS.items() if v is not None})  # + 8-bit activations (text_act.py)
# LSQ's step lr (text_lsq.py traces these): the model's AdamW lr (LSQ's default before this benchmark) and lower
LSQ_STEP_LRS = {"lsq4-slr3e-3": 3e-3, "lsq4-slr3e-4": 3e-4, "lsq4-slr3e-5": 3e-5, "lsq4-slr1e-5": 1e-5}
CONFIGS.update({k: CONFIGS["lsq4"] for k in LSQ_STEP_LRS})
QUANT_LR.update(LSQ_STEP_LRS)
LABELS = {"float": "Uncompressed", "qat8": "QAT 8 bits", "qat4": "QAT 4 bits", "lsq4": "LSQ 4 bits",
          "diffq5": "DiffQ (λ = 5, g = 16)", "diffq10": "DiffQ (λ = 10, g = 16)",
          "qn8": "Quant-Noise 8 bits (p = 0.5)", "qn4": "Quant-Noise 4 bits (p = 0.5)"}
LABELS.update({f"{k}-a8": f"{v}, A8" for k, v in LABELS.items() if k != "float"})
LABELS.update({k: f"LSQ 4 bits, step lr {lr:g}" for k, lr in LSQ_STEP_LRS.items()})
PTQS = [  # (label, PTQ config fields)
    ("W8A8 minmax", {"method": "minmax", "wbits": 8, "abits": 8}),
    ("W8A8 mse", {"method": "mse", "wbits": 8, "abits": 8}),
    ("W4A8 minmax", {"method": "minmax", "wbits": 4, "abits": 8}),
    ("W4A8 mse", {"method": "mse", "wbits": 4, "abits": 8}),
    ("W4A8 mse group:32", {"method": "mse", "wbits": 4, "abits": 8, "granularity": "group:32"}),
    ("W4A16 minmax", {"method": "minmax", "wbits": 4, "abits": 32}),
    ("W4A16 mse", {"method": "mse", "wbits": 4, "abits": 32}),
    ("W4A16 mse group:32", {"method": "mse", "wbits": 4, "abits": 32, "granularity": "group:32"}),
    ("W4A16 adaround", {"method": "adaround", "wbits": 4, "abits": 32, "options": {"iterations": 300}}),
]
def load_results() -> dict[str, Any]:
    if OUT.exists():
        return json.loads(OUT.read_text())
    return {"meta": {}, "train": {}, "ptq": {}}


def save_results(res: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    res["meta"].update({"torch": torch.__version__, "python": platform.python_version(), "threads": 1,
                        "model": MODEL, "data": DATA, "train": TRAIN, "diffq_bits_lr": DIFFQ_BITS_LR})
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1) + "\n")
    tmp.replace(OUT)


def data(seed: int):
    from learnq.pipeline.data import load_dataset

    return load_dataset("shakespeare-char", seed=seed, calib_size=128, limit=TRAIN["limit"], **DATA)


def new_model(splits):
    from learnq.pipeline.models.transformer import build_gpt

    return build_gpt(splits.input_shape, splits.num_classes, **MODEL)


def perplexity(model, dataset) -> dict[str, float]:
    from learnq.evaluation import evaluate, task_metrics

    m = task_metrics(evaluate(model, dataset, batch_size=256), "language-model")
    return {"loss": m["loss"], "bits_per_char": m["bits_per_char"], "perplexity": m["perplexity"]}


def selection():
    from learnq.attach import Selection

    return Selection(types=("linear", "embedding"))


def train_one(name: str, seed: int, splits, on_step=None) -> dict[str, Any]:
    """Train, freeze, save, reload and evaluate configuration ``name``; ``on_step(i, model, handle)`` (optional) is
    called after every optimizer step (``text_lsq.py`` traces LSQ's steps with it)."""
    import learnq
    from learnq.quantizers import resolve_config

    torch.manual_seed(seed)
    model = new_model(splits)
    qat = CONFIGS[name]
    handle = None
    if qat is not None:
        handle = learnq.prepare(model, resolve_config(qat), selection=selection())
    params = handle.split_parameters()[0] if handle else list(model.parameters())
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": TRAIN["weight_decay"]}, {"params": rest, "weight_decay": 0.0}]
    tracker = None
    if name.endswith("-a8"):
        from text_act import RangeTracker

        tracker = RangeTracker(model)
    quant_groups = []
    if handle is not None:
        quant_groups = handle.param_groups(lr=DIFFQ_BITS_LR if qat["method"] == "diffq" else QUANT_LR.get(name))
        groups += quant_groups
    quant_lr = quant_groups[0].get("lr", TRAIN["lr"]) if quant_groups else None
    opt = torch.optim.AdamW(groups, lr=TRAIN["lr"])
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=TRAIN["batch_size"], shuffle=True, generator=gen)
    steps = TRAIN["epochs"] * len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    start = time.perf_counter()
    model.train()
    it = 0
    for _ in range(TRAIN["epochs"]):
        for x, y in loader:
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            if handle is not None:
                loss = loss + handle.loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, TRAIN["grad_clip"])
            opt.step()
            sched.step()
            if tracker is not None:
                tracker.update()
            if on_step is not None:
                on_step(it, model, handle)
            it += 1
    if tracker is not None:
        tracker.close()
    seconds = time.perf_counter() - start
    model.eval()
    row: dict[str, Any] = {"config": name, "seed": seed, "train_seconds": round(seconds, 1),
                           "abits": 8 if tracker is not None else None}
    if quant_groups:
        row["quant_lr"] = quant_lr  # the initial lr of the quantizers' own parameters (cosine schedule as the rest)
    if handle is not None:
        row["trained_size_mb"] = float(handle.size_mb())
        row["true_size_mb"] = handle.true_size_mb()
        if qat["method"] == "diffq":
            row["bits"] = {n: q.summary_bits() for n, q in handle.quantizers.items()}
            row["numel"] = {n: q.numel for n, q in handle.quantizers.items()}
        handle.freeze()
    else:
        row["true_size_mb"] = sum(p.numel() * 32 for p in model.parameters()) / 2**23
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}-seed{seed}.safetensors"
    learnq.save(model, path, metadata={"config": name, "seed": seed})
    fresh = new_model(splits)
    learnq.load(path, fresh)
    row.update(perplexity(fresh, splits.test))
    row["file_bytes"] = path.stat().st_size
    return row


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    res = load_results()
    names = args.only.split(",") if args.only else list(CONFIGS)
    start = time.monotonic()
    for seed in args.seeds:
        splits = None
        for name in names:
            key = f"{name}/seed{seed}"
            if key in res["train"]:
                print(f"{key}: done already", flush=True)
                continue
            if time.monotonic() - start > args.budget:
                print("budget spent; run again to continue", flush=True)
                return
            splits = splits or data(seed)
            row = train_one(name, seed, splits)
            res["train"][key] = row
            save_results(res)
            print(f"{key}: ppl {row['perplexity']:.3f}, {row['true_size_mb'] * 1024:.1f} KB, "
                  f"{row['train_seconds']} s", flush=True)


def ptq(args: argparse.Namespace) -> None:
    import learnq
    from learnq.ptq import PTQ, quantize

    torch.set_num_threads(1)
    res = load_results()
    splits = data(0)
    path = CACHE / "float-seed0.safetensors"
    float_model = new_model(splits)
    learnq.load(path, float_model)
    float_model.eval()
    calib = splits.calib.tensors[0] if hasattr(splits.calib, "tensors") else splits.calib
    for label, fields in PTQS:
        if label in res["ptq"] or (args.only and not any(o in label for o in args.only.split(","))):
            continue
        start = time.perf_counter()
        cfg = PTQ(**fields, act_per_channel=True, selection=selection())
        result = quantize(float_model, calib, cfg, progress=False)
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / "m.safetensors"
            report = learnq.save(result.model, file)
            fresh = new_model(splits)
            learnq.load(file, fresh)
            row = {"config": fields, "seconds": round(seconds, 1), "file_bytes": file.stat().st_size,
                   "true_size_mb": report.naive_bits / 2**23,
                   "skipped": result.skipped, **perplexity(fresh, splits.test)}
        res["ptq"][label] = row
        save_results(res)
        print(f"{label}: ppl {row['perplexity']:.3f} ({seconds:.0f} s)", flush=True)


def peer(args: argparse.Namespace) -> None:
    """optimum-quanto weight-only int8 / int4 of the same float model (run with ``.venv-bench/bin/python``)."""
    import copy

    from optimum.quanto import freeze, qint4, qint8
    from optimum.quanto import quantize as quanto_quantize

    import learnq

    torch.set_num_threads(1)
    res = load_results()
    splits = data(0)
    float_model = new_model(splits)
    learnq.load(CACHE / "float-seed0.safetensors", float_model)
    float_model.eval()
    res.setdefault("peer", {})
    for label, wtype in (("quanto W8 (qint8, per channel)", qint8),
                         ("quanto W4 (qint4: groups of 128, per channel where in_features < 128)", qint4)):
        model = copy.deepcopy(float_model)
        start = time.perf_counter()
        quanto_quantize(model, weights=wtype)  # nn.Linear layers (the tied output layer too, not the embeddings)
        freeze(model)
        seconds = time.perf_counter() - start
        row = {"seconds": round(seconds, 1), **perplexity(model, splits.test),
               "note": "optimum-quanto 0.2.7: linear layers only (embeddings float; the tied head quantized "
                       "on its own)"}
        res["peer"][label] = row
        save_results(res)
        print(f"{label}: ppl {row['perplexity']:.3f}", flush=True)


def peer_torchao(args: argparse.Namespace) -> None:
    """torchao weight-only int8 / int4 of the same float model (``quantize_``; run with ``.venv-bench/bin/python``):
    int8 per output channel (``Int8WeightOnlyConfig``), int4 per output channel and in groups of 32
    (``IntxWeightOnlyConfig``, the CPU path; ``Int4WeightOnlyConfig`` needs a CUDA or bf16 tinygemm layout)."""
    import copy

    import torchao
    from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    import learnq

    torch.set_num_threads(1)
    res = load_results()
    splits = data(0)
    float_model = new_model(splits)
    learnq.load(CACHE / "float-seed0.safetensors", float_model)
    float_model.eval()
    res.setdefault("peer", {})
    for label, cfg in (("torchao W8 (Int8WeightOnly, per channel)", Int8WeightOnlyConfig()),
                       ("torchao W4 (IntxWeightOnly int4, per channel)",
                        IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerAxis(0))),
                       ("torchao W4 (IntxWeightOnly int4, groups of 32)",
                        IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)))):
        model = copy.deepcopy(float_model)
        start = time.perf_counter()
        quantize_(model, cfg)  # nn.Linear layers (the tied output layer too, on its own; the embeddings stay float)
        seconds = time.perf_counter() - start
        with torch.no_grad():
            row = {"seconds": round(seconds, 1), **perplexity(model, splits.test),
                   "note": f"torchao {torchao.__version__}: linear layers only (embeddings float; the tied head "
                           "quantized on its own)"}
        res["peer"][label] = row
        save_results(res)
        print(f"{label}: ppl {row['perplexity']:.3f}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the Table 2 configurations (resumes)")
    t.add_argument("--only", default=None, help=f"comma-separated configurations of {list(CONFIGS)}")
    t.add_argument("--seed", dest="seeds", type=int, action="append", help="seed (repeatable), default 0")
    t.add_argument("--budget", type=float, default=float("inf"), help="seconds after which no new training starts")
    t.set_defaults(func=train)
    q = sub.add_parser("ptq", help="PTQ of the float model of seed 0 (resumes)")
    q.add_argument("--only", default=None, help="comma-separated label fragments")
    q.set_defaults(func=ptq)
    pe = sub.add_parser("peer", help="optimum-quanto weight-only int8/int4 of the float model (.venv-bench)")
    pe.set_defaults(func=peer)
    pt = sub.add_parser("peer-torchao", help="torchao weight-only int8/int4 of the float model (.venv-bench)")
    pt.set_defaults(func=peer_torchao)
    r = sub.add_parser("report", help="write text.md and text_bits.png from text.json (text_report.py)")
    r.set_defaults(func=lambda _args: __import__("text_report").report())
    args = p.parse_args(argv)
    if getattr(args, "seeds", 0) is None:
        args.seeds = [0]
    return args


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    ns = parse_args()
    ns.func(ns)
