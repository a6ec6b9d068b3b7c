"""Benchmark for issue 18 (first half): entropy-coded model files, ``learnq.save(..., codec="ans")``.

``sizes`` (accuracy-free; run under ``/work/wt/train.lock``): for every QAT and PTQ method of learnq on the mnist5k
LeNet (the cached float model of ``benchmarks/ptq.py``, ``~/.cache/learnq-bench/ptq/mnist5k-seed0``, when it is
there; else trained here) and the thesis MLP (``thesis-mnist``, hidden 112, trained here for ``--epochs``), plus the
text LM files of ``benchmarks/text.py`` when cached (document 003 Sec. 5.6's comparison: DiffQ vs QAT8 on a language
model): naive, packed, entropy bound, coded size of the model's tensors and of the files, the coded/bound ratio, and
the test accuracy of the reloaded ``ans`` file (which equals the packed file's: decoding is exact). QAT methods are
fine-tuned from the float model for ``--qat-epochs`` (short: sizes, not accuracy, are the point).

``speed`` (timings; run under ``/work/wt/bench.lock``): on the packed codes of some of those models (all quantized
tensors' packed code streams concatenated) and of 4M-weight Gaussian layers at 4, 2 and 8 bits: zlib (level 9), zstd
(level 19, ``zstandard``) and brotli (quality 11) against the two entropy coders of ``codec="ans"`` (constriction's
rANS, pcodec) and their per-tensor choice: bytes and decode MB/s (of packed codes out), and ``learnq.load`` of the
ans file (and of an rANS-only file, as written before pcodec joined) vs the packed file (goal: within 2x). One torch
thread, interleaved rounds, medians. zstandard and brotli are benchmark-only packages (``pip install zstandard
brotli``), not learnq dependencies.

    flock /work/wt/train.lock nice -n 10 .venv/bin/python benchmarks/entropy_codec.py sizes
    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/entropy_codec.py speed
    .venv/bin/python benchmarks/entropy_codec.py render       # results/entropy_codec.md + BENCHMARKS.md section

Writes ``benchmarks/results/entropy_codec.json`` (resumable: a finished row is kept) and ``entropy_codec.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
RESULTS = ROOT / "benchmarks" / "results"
OUT_JSON, OUT_MD = RESULTS / "entropy_codec.json", RESULTS / "entropy_codec.md"
CACHE = Path.home() / ".cache" / "learnq-bench"
LENET = CACHE / "ptq" / "mnist5k-seed0" / "model.safetensors"
TEXT = CACHE / "text"
WORK = Path(tempfile.gettempdir()) / "learnq-bench-entropy"
DOC003 = ("document 003 Sec. 5.6 (16-layer transformer LM, Table 2): QAT 8 bits 236 MB -> 150 MB after zlib; DiffQ "
          "113 MB naive -> 122 MB after zlib (\"the entropy is close to its maximal value\")")

PTQ_ROWS: list[tuple[str, str, int, dict]] = [
    *[(f"{m}-w{b}a8", m, b, {}) for m in ("minmax", "mse") for b in (8, 4, 2)],
    ("aciq-w4a8", "aciq", 4, {}), ("kl-w4a8", "kl", 4, {}), ("gptq-w4a8", "gptq", 4, {}),
    ("adaround-fast-w4a8", "adaround", 4, {"fast": True}), ("squant-w4a8", "squant", 4, {}),
    ("dfq-w4a8", "dfq", 4, {}), ("kmeans-w4a8", "kmeans", 4, {}), ("kmeans-w2a8", "kmeans", 2, {}),
]
QAT_ROWS: list[tuple[str, str, dict]] = [
    ("ste-w8", "ste", {"bits": 8}), ("ste-w4", "ste", {"bits": 4}), ("ste-w2", "ste", {"bits": 2}),
    ("lsq-w4", "lsq", {"bits": 4}), ("lsq-w2", "lsq", {"bits": 2}),
    ("diffq-λ1e-3", "diffq", {}), ("nested", "nested", {}),
    ("dkm-w2", "dkm", {"bits": 2}), ("dkm-w4", "dkm", {"bits": 4}), ("dorefa-w4", "dorefa", {"bits": 4}),
    ("quant_noise-w8", "quant_noise", {}), ("ipq", "ipq", {}),
]


# -- results file ---------------------------------------------------------------------------------------------------
def _load() -> dict:
    return json.loads(OUT_JSON.read_text()) if OUT_JSON.is_file() else {"sizes": {}, "speed": {}}


def _store(results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = OUT_JSON.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, OUT_JSON)


# -- models ---------------------------------------------------------------------------------------------------------
def _float_models(epochs: int) -> dict[str, tuple[Any, Any, str]]:
    from learnq.pipeline.model_files import rebuild
    from learnq.pipeline.recipe import Recipe
    from learnq.pipeline.run import MODEL_FILE, train_recipe

    out = {}
    if LENET.is_file():
        model, splits, _ = rebuild(LENET)
        out["lenet-mnist5k"] = (model, splits, f"cached float model {LENET} (10 epochs, benchmarks/ptq.py)")
    else:
        raise SystemExit(f"{LENET} missing: run benchmarks/ptq.py first (it trains and caches the LeNet)")
    folder = WORK / f"thesis-mnist5k-e{epochs}"
    if not (folder / MODEL_FILE).is_file():
        train_recipe(Recipe.from_dict({
            "name": "bench-entropy-thesis", "seed": 0,
            "data": {"name": "mnist5k", "calib_size": 512, "test_fraction": 0.2},
            "model": {"name": "thesis-mnist", "args": {"hidden": 112}},
            "train": {"epochs": epochs, "batch_size": 64, "lr": 1e-3, "optimizer": "adam"},
            "report": {"plots": False}}), folder)
    model, splits, _ = rebuild(folder / MODEL_FILE)
    out["thesis-mlp-mnist5k"] = (model, splits, f"trained here, {epochs} epochs (recipes/thesis-mnist5k.toml's net)")
    return out


def _qat(model, splits, method: str, options: dict, epochs: int):
    import learnq
    from learnq.quantizers import QAT_METHODS

    torch.manual_seed(0)
    model = copy.deepcopy(model).train()
    handle = learnq.prepare(model, QAT_METHODS[method](**options))
    params, _ = handle.split_parameters()
    opt = torch.optim.Adam([{"params": params, "lr": 1e-4}, *handle.param_groups()], lr=1e-4)
    x, y = splits.train.tensors
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            (F.cross_entropy(model(x[idx]), y[idx]) + handle.loss()).backward()
            opt.step()
    model.eval()
    handle.freeze()
    return model


def _ptq(model, splits, method: str, bits: int, options: dict):
    from learnq.ptq import PTQ, quantize

    return quantize(copy.deepcopy(model).eval(), splits.calib, PTQ(method=method, wbits=bits, abits=8,
                                                                   options=options), progress=False).model


def _accuracy(model, splits) -> float:
    from learnq.pipeline.train import evaluate

    return float(evaluate(model, splits.test, batch_size=500)["accuracy"])


def _quantized_totals(report) -> dict[str, float]:
    """Totals over the quantized tensors only: their packed, bound and stored bytes, and the codes-only parts."""
    q = [t for t in report.tensors if t.kind == "quantized"]
    return {"q_packed": sum(t.packed_bytes for t in q), "q_bound": sum(t.bound_bits for t in q) / 8,
            "q_stored": sum(t.stored_bytes for t in q), "q_entropy": sum(t.entropy_bits for t in q) / 8,
            "q_zlib": sum(t.zlib_bytes for t in q), "q_tensors": len(q),
            "q_coded_tensors": sum(t.codec != "packed" for t in q),
            "q_pco_tensors": sum(t.codec == "pco" for t in q),  # of those, pcodec-coded (the others rANS)
            "c_stored": sum(t.stored_bytes for t in q if t.codec != "packed"),  # the tensors stored coded: vs bound
            "c_bound": sum(t.bound_bits for t in q if t.codec != "packed") / 8}


@contextlib.contextmanager
def _only_rans():
    """Saves inside code every tensor with rANS (the coder before pcodec joined): the size the choice gives up."""
    from learnq import entropy_codec

    real = entropy_codec.encode
    entropy_codec.encode = lambda packed, streams: real(packed, streams, coder="ans")
    try:
        yield
    finally:
        entropy_codec.encode = real


def _row(model, splits, build, label: str) -> dict[str, Any]:
    import learnq

    WORK.mkdir(parents=True, exist_ok=True)
    p, a = WORK / f"{label}.packed.safetensors", WORK / f"{label}.ans.safetensors"
    rp = learnq.save(model, p, report=True)
    ra = learnq.save(model, a, report=True, codec="ans")
    with _only_rans():
        rr = learnq.save(model, p, report=True, codec="ans")
    fresh = build()
    learnq.load(a, fresh)
    acc = _accuracy(fresh.eval(), splits)
    qa = _quantized_totals(ra)
    row = {"naive_bytes": rp.naive_bytes, "packed_bytes": rp.packed_bytes, "bound_bytes": ra.bound_bytes,
           "coded_bytes": ra.stored_bytes, "entropy_bytes": rp.entropy_bytes, "zlib_bytes": rp.zlib_bytes,
           "packed_file": rp.file_bytes, "ans_file": ra.file_bytes, "rans_only_bytes": rr.stored_bytes,
           "coded_over_bound": ra.stored_bytes / ra.bound_bytes,
           "file_over_bound": ra.file_bytes / ra.bound_bytes, "accuracy_ans_file": acc, **qa,
           "q_coded_over_bound": qa["q_stored"] / qa["q_bound"] if qa["q_bound"] else None}
    p.unlink()
    return row


def _text_rows() -> dict[str, dict]:
    """The cached text-LM files (benchmarks/text.py), coded entry by entry (no model rebuilt: the data bytes of the
    file each codec writes, without the safetensors header)."""
    from learnq.accounting import report_for
    from learnq.file_layout import encode
    from learnq.model_file import read

    out = {}
    for path in sorted(TEXT.glob("*.safetensors")) if TEXT.is_dir() else []:
        mf = read(path)
        own = {k: v for k, v in mf.entries.items() if k not in mf.tied}
        rp = report_for(own)
        ra = report_for(own, encoded={k: encode(k, v, "ans") for k, v in own.items()})
        with _only_rans():
            rr = report_for(own, encoded={k: encode(k, v, "ans") for k, v in own.items()})
        qa = _quantized_totals(ra)
        out[f"text-lm/{path.stem}"] = {
            "naive_bytes": rp.naive_bytes, "packed_bytes": rp.packed_bytes, "bound_bytes": ra.bound_bytes,
            "coded_bytes": ra.stored_bytes, "entropy_bytes": rp.entropy_bytes, "zlib_bytes": rp.zlib_bytes,
            "packed_file": mf.file_bytes, "ans_file": None, "rans_only_bytes": rr.stored_bytes,
            "coded_over_bound": ra.stored_bytes / ra.bound_bytes,
            "file_over_bound": None, "accuracy_ans_file": None, **qa,
            "q_coded_over_bound": qa["q_stored"] / qa["q_bound"] if qa["q_bound"] else None}
    return out


def run_sizes(args: argparse.Namespace) -> None:
    from learnq.pipeline.models import model_from_spec
    from learnq.quantizers import QAT_METHODS

    torch.set_num_threads(1)
    results = _load()
    sizes = results.setdefault("sizes", {})
    results["sizes_setup"] = {"threads": 1, "qat_epochs": args.qat_epochs, "thesis_epochs": args.epochs,
                              "python": platform.python_version(), "torch": torch.__version__}
    models = _float_models(args.epochs)
    for net, (model, splits, source) in models.items():
        results["sizes_setup"][net] = source
        from learnq.model_file import read

        spec = read(LENET if net.startswith("lenet") else WORK / f"thesis-mnist5k-e{args.epochs}" /
                    "model.safetensors").metadata["model"]
        build = lambda spec=spec: model_from_spec(spec, device="cpu")  # noqa: E731
        rows = [(f"{net}/float", lambda m=model: m)]
        rows += [(f"{net}/ptq-{lab}", lambda m=model, s=splits, me=me, b=b, o=o: _ptq(m, s, me, b, o))
                 for lab, me, b, o in PTQ_ROWS]
        rows += [(f"{net}/qat-{lab}", lambda m=model, s=splits, me=me, o=o: _qat(m, s, me, o, args.qat_epochs))
                 for lab, me, o in QAT_ROWS if me in QAT_METHODS]
        for label, make in rows:
            if label in sizes and not args.redo and "rans_only_bytes" in sizes[label]:  # rows before pcodec: redone
                continue
            start = time.perf_counter()
            try:
                row = _row(make(), splits, build, label.replace("/", "_"))
            except Exception as exc:  # a method that fails on this net is reported, not fatal
                row = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            row["seconds"] = round(time.perf_counter() - start, 2)
            sizes[label] = row
            _store(results)
            print(f"{label}: {json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()})}",
                  flush=True)
    for label, row in _text_rows().items():
        sizes[label] = row
        print(f"{label}: {row['packed_bytes']} packed, {row['coded_bytes']} coded", flush=True)
    _store(results)


# -- speed ----------------------------------------------------------------------------------------------------------
def _codes_of(entries, coder: str | None = None) -> tuple[bytes, list, int, float]:
    """The packed codes of every quantized entry (concatenated), (Coded, streams) of each entry that codec="ans" stores
    coded (``coder``: forced to "ans" or "pco"; None: the per-tensor choice), the packed bytes of the others, and the
    entropy bound of all (bytes; a tensor's at most its packed codes, as in learnq's report)."""
    from learnq import entropy_codec
    from learnq.file_layout import encode
    from learnq.grid import QuantizedTensor

    packed, coded, packed_kept, bound = [], [], [], 0.0
    for name, value in entries.items():
        if isinstance(value, QuantizedTensor):
            enc = encode(name, value)
            packed.append(enc.codes.numpy().tobytes())
            c = entropy_codec.encode(enc.codes, enc.streams, coder=coder)
            bound += min(c.bound_bits / 8, enc.codes.numel())
            if c.nbytes < enc.codes.numel():  # as the file stores it: coded only where that is smaller
                coded.append((c, enc.streams))
            else:
                packed_kept.append(enc.codes.numel())
    return b"".join(packed), coded, sum(packed_kept), bound


def _median_times(fns: dict[str, Any], rounds: int) -> dict[str, float]:
    """Median seconds of each function (one call) over ``rounds`` interleaved rounds, each round starting one
    function later (bench_timing.interleaved)."""
    from bench_timing import interleaved

    return {k: statistics.median(v) for k, v in interleaved(fns, rounds).items()}


def _speed_case(label: str, model, build, rounds: int) -> dict[str, Any]:
    import brotli
    import zstandard

    import learnq
    from learnq import entropy_codec
    from learnq.model_file import read

    WORK.mkdir(parents=True, exist_ok=True)
    p, a, r = (WORK / f"speed-{label}.{kind}.safetensors" for kind in ("packed", "ans", "rans"))
    learnq.save(model, p)
    learnq.save(model, a, codec="ans")
    with _only_rans():
        learnq.save(model, r, codec="ans")
    entries = read(p).entries
    raw, chosen, kept, bound = _codes_of(entries)
    _, rans, rans_kept, _ = _codes_of(entries, "ans")
    _, pco, pco_kept, _ = _codes_of(entries, "pco")
    z = zlib.compress(raw, 9)
    zs = zstandard.ZstdCompressor(level=19).compress(raw)
    br = brotli.compress(raw, quality=11)
    dz = zstandard.ZstdDecompressor()

    def decoder(coded):
        def run():
            for c, streams in coded:
                entropy_codec.decode(c.coded, c.model, streams, codec=c.codec)
        return run

    fns = {"zlib": lambda: zlib.decompress(z), "zstd": lambda: dz.decompress(zs),
           "brotli": lambda: brotli.decompress(br), "rans": decoder(rans), "pco": decoder(pco),
           "chosen": decoder(chosen),
           "load_packed": lambda: learnq.load(p, build()), "load_ans": lambda: learnq.load(a, build()),
           "load_rans": lambda: learnq.load(r, build()), "build_only": build}
    for fn in fns.values():
        fn()  # warm-up
    t = _median_times(fns, rounds)
    mb = len(raw) / 1e6
    nbytes = {"chosen": sum(c.nbytes for c, _ in chosen) + kept,  # codes + models, packed where coding does not pay
              "rans": sum(c.nbytes for c, _ in rans) + rans_kept, "pco": sum(c.nbytes for c, _ in pco) + pco_kept}
    row = {"packed_codes_bytes": len(raw), "rounds": rounds, "bound_bytes": bound,
           "bytes": {"zlib-9": len(z), "zstd-19": len(zs), "brotli-11": len(br), "ans": nbytes["rans"],
                     "pco": nbytes["pco"], "chosen": nbytes["chosen"]},
           "coders": {"pco": sum(c.codec == entropy_codec.PCO for c, _ in chosen),
                      "ans": sum(c.codec == entropy_codec.ANS for c, _ in chosen)},
           "decode_MBps": {"zlib-9": mb / t["zlib"], "zstd-19": mb / t["zstd"], "brotli-11": mb / t["brotli"],
                           "ans": mb / t["rans"], "pco": mb / t["pco"], "chosen": mb / t["chosen"]},
           "load_seconds": {"packed": t["load_packed"], "ans": t["load_ans"], "rans_only": t["load_rans"],
                            "model_build": t["build_only"]},
           "load_ratio_ans_over_packed": t["load_ans"] / t["load_packed"],
           "load_ratio_without_build": (t["load_ans"] - t["build_only"]) / (t["load_packed"] - t["build_only"]),
           "load_ratio_rans_only": t["load_rans"] / t["load_packed"],
           "load_ratio_rans_only_without_build": (t["load_rans"] - t["build_only"]) /
                                                 (t["load_packed"] - t["build_only"]),
           "file_bytes": {"packed": p.stat().st_size, "ans": a.stat().st_size, "rans_only": r.stat().st_size}}
    for f in (p, a, r):
        f.unlink()
    return row


def _big_layer(bits: int):
    from torch import nn

    import learnq

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2048, 2048))
    with torch.no_grad():
        model[0].weight.normal_(0, 0.02)
    learnq.prepare(model, learnq.STE(bits=bits)).freeze()

    return model, _big_build


def _big_build():
    from torch import nn

    return nn.Sequential(nn.Linear(2048, 2048))


def run_speed(args: argparse.Namespace) -> None:
    from learnq.model_file import read
    from learnq.pipeline.models import model_from_spec

    torch.set_num_threads(1)
    results = _load()
    speed = results.setdefault("speed", {})
    results["speed_setup"] = {"threads": 1, "rounds": args.rounds, "load_average": os.getloadavg(),
                              "python": platform.python_version(), "torch": torch.__version__}
    models = _float_models(args.epochs)
    cases = []
    for net, (model, splits, _) in models.items():
        spec = read(LENET if net.startswith("lenet") else WORK / f"thesis-mnist5k-e{args.epochs}" /
                    "model.safetensors").metadata["model"]
        build = lambda spec=spec: model_from_spec(spec, device="cpu")  # noqa: E731
        cases.append((f"{net}/ptq-minmax-w8a8", lambda m=model, s=splits: _ptq(m, s, "minmax", 8, {}), build))
        cases.append((f"{net}/ptq-minmax-w4a8", lambda m=model, s=splits: _ptq(m, s, "minmax", 4, {}), build))
    for bits in (4, 2, 8):  # 4M weights: where the decoder's speed shows
        cases.append((f"linear-2048x2048/ste-w{bits} (Gaussian weights)", lambda b=bits: _big_layer(b)[0],
                      _big_build))
    for label, make, build in cases:
        if label in speed and not args.redo:
            continue
        row = _speed_case(label.replace("/", "_").replace(" ", "_"), make(), build, args.rounds)
        speed[label] = row
        _store(results)
        print(f"{label}: {json.dumps(row)}", flush=True)


# -- render ---------------------------------------------------------------------------------------------------------
def _kb(v: float | None) -> str:
    return "-" if v is None else f"{v / 1000:.1f}"


def render() -> str:
    results = _load()
    sizes, speed = results.get("sizes", {}), results.get("speed", {})
    lines = ["Sizes in kB (1000 bytes). *naive*: Σ bits·numel + steps (Eq. 12); *packed*: the model's tensors as "
             "`codec=\"packed\"` stores them; *bound*: Σ n·H over each tensor's code streams + the rANS histogram "
             "+ the other stored bytes; *coded*: the tensors as `codec=\"ans\"` stores them (per tensor pcodec "
             "where that is within 2 % of the bound, else the smaller of pcodec and rANS; a tensor whose coded form "
             "is not smaller stays packed); *rANS only*: the same with every tensor rANS-coded (the files before "
             "pcodec joined); *files*: on disk, header included. "
             "*zlib-1*: zlib level 1 of each tensor's packed codes + its other bytes (learnq's report). "
             "*coded/bound*: all tensors (a tensor that stays packed has its packed codes as its bound); "
             "*coded tensors: coded/bound*: the tensors stored coded only, what the coders add to the bound (below 1 "
             "where pcodec's bin table is smaller than the rANS histogram: 8- and 16-bit codes). *coded tensors*: "
             "coded / quantized, and (of those, pcodec-coded). "
             "Accuracy: the reloaded ans file on the test split (equal to the packed file's: decoding is exact). "
             "QAT rows: fine-tuned "
             f"{results.get('sizes_setup', {}).get('qat_epochs', '?')} epoch(s) from the float model.", "",
             "| model / method | naive | packed | zlib-1 | entropy bound | coded | rANS only | packed file | "
             "ans file | coded/bound | coded tensors: coded/bound | coded tensors (pco) | acc. |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for label, r in sizes.items():
        if "error" in r:
            lines.append(f"| {label} | error: {r['error'][:80]} | | | | | | | | | | | |")
            continue
        acc = "-" if r.get("accuracy_ans_file") is None else f"{100 * r['accuracy_ans_file']:.2f}"
        qr = f"{r['c_stored'] / r['c_bound']:.3f}" if r.get("c_bound") else "-"
        lines.append(f"| {label} | {_kb(r['naive_bytes'])} | {_kb(r['packed_bytes'])} | {_kb(r['zlib_bytes'])} | "
                     f"{_kb(r['bound_bytes'])} | {_kb(r['coded_bytes'])} | {_kb(r.get('rans_only_bytes'))} | "
                     f"{_kb(r['packed_file'])} | {_kb(r['ans_file'])} | "
                     f"{r['coded_over_bound']:.3f} | {qr} | {r['q_coded_tensors']}/{r['q_tensors']} "
                     f"({r.get('q_pco_tensors', '-')}) | {acc} |")
    if speed:
        setup = results.get("speed_setup", {})
        lines += ["", f"Decoders on the packed codes of all quantized tensors (one thread, {setup.get('rounds', '?')} "
                  f"interleaved rounds, medians; load average "
                  f"{', '.join(f'{x:.1f}' for x in setup.get('load_average', []))}). *rANS*, *pco*: every tensor "
                  "coded by that coder; *ans file*: the per-tensor choice as the file stores it (coded tensors "
                  "pco/rANS); bytes are coded bytes + models, tensors where coding does not pay kept packed. MB/s = "
                  "packed-code MB out per second. Load: `learnq.load(file, fresh model)` ÷ the packed file's, "
                  "with and without the model construction both share; *rANS-only file*: the files before pcodec "
                  "joined.", "",
                  "| codes of | packed B | bound B | zlib-9 B | zstd-19 B | brotli-11 B | rANS B | pco B | ans file B "
                  "(pco/rANS) | zlib MB/s | zstd MB/s | brotli MB/s | rANS MB/s | pco MB/s | load ans file ÷ packed "
                  "(without build) | load rANS-only file ÷ packed (without build) |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
                  "---: | ---: |"]
        for label, r in speed.items():
            b, v = r["bytes"], r["decode_MBps"]
            if "pco" not in b:  # a row of the rANS-only benchmark (before pcodec)
                continue
            lines.append(f"| {label} | {r['packed_codes_bytes']} | {r['bound_bytes']:.0f} | {b['zlib-9']} | "
                         f"{b['zstd-19']} | {b['brotli-11']} | {b['ans']} | {b['pco']} | {b['chosen']} "
                         f"({r['coders']['pco']}/{r['coders']['ans']}) | {v['zlib-9']:.0f} | {v['zstd-19']:.0f} | "
                         f"{v['brotli-11']:.0f} | {v['ans']:.1f} | {v['pco']:.0f} | "
                         f"{r['load_ratio_ans_over_packed']:.2f}x ({r['load_ratio_without_build']:.2f}x) | "
                         f"{r['load_ratio_rans_only']:.2f}x ({r['load_ratio_rans_only_without_build']:.2f}x) |")
    lines += ["", f"For comparison, {DOC003}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=("sizes", "speed", "render"))
    parser.add_argument("--epochs", type=int, default=5, help="thesis MLP float training epochs (default 5)")
    parser.add_argument("--qat-epochs", type=int, default=1, help="QAT fine-tuning epochs (default 1)")
    parser.add_argument("--rounds", type=int, default=7, help="timing rounds (default 7)")
    parser.add_argument("--redo", action="store_true", help="recompute rows already in the JSON")
    args = parser.parse_args()
    if args.what == "sizes":
        run_sizes(args)
    elif args.what == "speed":
        run_speed(args)
    text = render()
    OUT_MD.write_text(text)
    if args.what == "render":
        from md_section import replace_section

        replace_section(ROOT / "benchmarks" / "BENCHMARKS.md", "<!-- entropy_codec.py: begin -->",
                        "<!-- entropy_codec.py: end -->", text)
    print(text)


if __name__ == "__main__":
    main()
