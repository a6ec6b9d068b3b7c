"""Benchmark for issue 6: post-training quantization of float networks, every learnq PTQ method against PyTorch's
HistogramObserver, and LAPQ's Table 1 claim (seeds/001 §5.1: LAPQ beats MMSE and ACIQ at 4 bits).

Networks: a LeNet-5 (``learnq.pipeline.models.lenet``: conv1, conv2, fc1, fc2, fc3) trained in float on ``mnist5k``
(10 epochs, Adam) and on ``digits`` (8x8, 30 epochs), through ``train_recipe``; one float model per seed, cached in
``--cache`` (default ``$TMPDIR/learnq-bench-ptq``), so a rerun only quantizes. A seed is a whole replicate: data
split, 512-sample calibration set (drawn from the training split), initialisation, training and the PTQ seed.

Protocol (the paper's): weights and the inputs of the quantized layers, one step per tensor, symmetric weight grid;
the first and last layers stay in float for every method (LAPQ's default; ``skip_first_last=True`` for the others),
so every row quantizes conv2, fc1, fc2 and their inputs (post-ReLU, unsigned grid). Bit configurations W8A8, W4A8,
W4A4, W2A8, W32A4 (32: float). learnq rows are ``learnq.ptq.quantize(model, splits.calib, method=...)`` with the
method's defaults: minmax, mse (MMSE), aciq (Laplace), kl, each of mse and aciq also with bias correction (``+bc``;
it changes weights only, so there is no W32A4 ``+bc`` row), adaround (10,000 iterations per layer, the paper's,
MSE ranges), adaround-fast (the ``fast`` preset: 1,000 iterations) and
lapq (p in linspace(2, 4, 10), quadratic fit, Powell with maxiter 2, bias correction inside every evaluation).

Outside baseline, ``torch-hist``: the same layers fake-quantized with qparams from ``torch.ao.quantization.
HistogramObserver``: weights ``qint8`` per-tensor symmetric with quant_min/max = -2^(b-1), 2^(b-1)-1, activations
``quint8`` per-tensor affine with quant_min/max = 0, 2^b-1 observed over the calibration set on the model with
quantized weights (inputs of the same layers, by forward pre-hooks), then ``torch.fake_quantize_per_tensor_affine``.
Stock HistogramObserver searches its range for a 256-bin destination grid (``dst_nbins = 2^8`` from the dtype) at any
quant_min/max, so ``torch-hist-b`` is the same with ``dst_nbins = 2^b`` set after construction (its search then
targets the actual bit-width).

Writes ``benchmarks/results/ptq.json`` (every run: accuracy, calibration seconds, loss evaluations, chosen steps
per layer; the aggregates) and ``benchmarks/results/ptq.md`` (the tables).

    .venv/bin/python benchmarks/ptq.py            # 3 seeds x 2 networks (612 s on 2 busy cores, training included)
    .venv/bin/python benchmarks/ptq.py --quick    # smoke test: 1 seed, short training, W4A4 only, cheap options
    .venv/bin/python benchmarks/ptq.py --rows adaround,adaround-fast --merge   # re-measure rows, keep the others
    .venv/bin/python benchmarks/ptq.py --rows adaround --networks mnist5k --seed-list 0 --configs W4A8,W2A8 --merge
                                                   # one seed's cells at a time (each run under ~10 min)
    .venv/bin/python benchmarks/ptq.py --render --into benchmarks/BENCHMARKS.md   # tables -> ptq.md, issue-6 section
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.ao.quantization import HistogramObserver

from learnq.pipeline.model_files import rebuild
from learnq.pipeline.recipe import Recipe
from learnq.pipeline.run import MODEL_FILE, train_recipe
from learnq.pipeline.train import evaluate
from learnq.ptq import quantize

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = ((8, 8), (4, 8), (4, 4), (2, 8), (32, 4))
NETWORKS: dict[str, dict[str, Any]] = {
    "mnist5k": {"data": {"name": "mnist5k", "calib_size": 512, "test_fraction": 0.2}, "model": {"name": "lenet"},
                "train": {"epochs": 10, "batch_size": 64, "lr": 1e-3, "optimizer": "adam"}},
    "digits": {"data": {"name": "digits", "calib_size": 512, "test_fraction": 0.2}, "model": {"name": "lenet"},
               "train": {"epochs": 30, "batch_size": 32, "lr": 3e-3, "optimizer": "adam", "scheduler": "cosine"}},
}
#: row name -> (learnq PTQ method or "torch", keyword arguments); options the quick run overrides are in QUICK
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "minmax": ("minmax", {}), "mse": ("mse", {}), "mse+bc": ("mse", {"bias_correction": True}),
    "aciq": ("aciq", {}), "aciq+bc": ("aciq", {"bias_correction": True}), "kl": ("kl", {}),
    "adaround": ("adaround", {}), "adaround-fast": ("adaround", {"fast": True}), "lapq": ("lapq", {}),
    "torch-hist": ("torch", {"per_bits": False}), "torch-hist-b": ("torch", {"per_bits": True}),
}
QUICK = {"adaround": {"iterations": 100}, "lapq": {"p_count": 4, "maxiter": 1}}


def float_model(network: str, seed: int, cache: Path, epochs: int | None, limit: int | None) -> tuple[nn.Module, Any,
                                                                                                        dict]:
    """The float network of ``network`` trained with ``seed`` (from ``cache`` when it is there): model, splits,
    and the file's metadata (training seconds included)."""
    spec = NETWORKS[network]
    tag = f"{network}-seed{seed}" + (f"-e{epochs}" if epochs else "") + (f"-n{limit}" if limit else "")
    folder = cache / tag
    if not (folder / MODEL_FILE).is_file():
        data = {"name": f"bench-ptq-{tag}", "seed": seed, "data": dict(spec["data"]), "model": dict(spec["model"]),
                "train": dict(spec["train"]), "report": {"plots": False}}
        if epochs:
            data["train"]["epochs"] = epochs
        if limit:
            data["data"]["limit"] = limit
        start = time.perf_counter()
        train_recipe(Recipe.from_dict(data), folder)
        (folder / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.3f}\n")
    model, splits, meta = rebuild(folder / MODEL_FILE)
    model.eval()
    seconds = (folder / "train_seconds.txt").read_text().strip() if (folder / "train_seconds.txt").is_file() else "nan"
    return model, splits, {"train_seconds": float(seconds), "file": str(folder / MODEL_FILE)}


def quantized_layers(model: nn.Module) -> list[str]:
    """The conv/linear layers every row quantizes: all but the first and the last (definition order)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return names[1:-1]


# -- the outside baseline: torch.ao HistogramObserver --------------------------------------------------------------
def _observer(bits: int, signed: bool, per_bits: bool) -> HistogramObserver:
    if signed:
        obs = HistogramObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-2 ** (bits - 1),
                                quant_max=2 ** (bits - 1) - 1)
    else:
        obs = HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0,
                                quant_max=2 ** bits - 1)
    if per_bits:
        obs.dst_nbins = 2 ** bits  # the range search's destination grid: the real bit-width instead of 2^8
    return obs


def _fake(x: torch.Tensor, obs: HistogramObserver) -> torch.Tensor:
    scale, zero = obs.calculate_qparams()
    return torch.fake_quantize_per_tensor_affine(x, float(scale), int(zero), obs.quant_min, obs.quant_max)


def torch_histogram_ptq(model: nn.Module, calib: torch.Tensor, wbits: int, abits: int, *, per_bits: bool,
                        device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A copy of ``model`` with the selected layers' weights and inputs fake-quantized by HistogramObserver qparams."""
    model = copy.deepcopy(model).to(device).eval()
    layers = {name: model.get_submodule(name) for name in quantized_layers(model)}
    steps: dict[str, Any] = {}
    for name, layer in layers.items():
        if wbits < 32:
            obs = _observer(wbits, True, per_bits)
            obs(layer.weight.detach())
            layer.weight.data = _fake(layer.weight.detach(), obs)
            steps[f"{name}.weight"] = float(obs.calculate_qparams()[0])
    if abits < 32:
        observers = {name: _observer(abits, False, per_bits) for name in layers}
        handles = [layer.register_forward_pre_hook(lambda _m, args, o=observers[name]: (o(args[0]),))
                   for name, layer in layers.items()]
        with torch.no_grad():
            for batch in calib.split(256):
                model(batch.to(device))
        for h in handles:
            h.remove()
        for name, layer in layers.items():
            layer.register_forward_pre_hook(lambda _m, args, o=observers[name]: (_fake(args[0], o),))
            steps[f"{name}.input"] = float(observers[name].calculate_qparams()[0])
    return model, steps


# -- one run ---------------------------------------------------------------------------------------------------
def run_row(model: nn.Module, splits: Any, row: str, wbits: int, abits: int, seed: int, quick: bool,
            device: str) -> dict[str, Any]:
    method, kwargs = METHODS[row]
    torch.manual_seed(seed)
    start, cpu = time.perf_counter(), time.process_time()
    if method == "torch":
        quantized, steps = torch_histogram_ptq(model, splits.calib.tensors[0], wbits, abits, device=device, **kwargs)
        seconds, evals = time.perf_counter() - start, 0
    else:
        options = {**kwargs, **(QUICK.get(method, {}) if quick else {})}
        if quick and method == "adaround":
            options.pop("fast", None)  # QUICK's iterations replace the preset
        result = quantize(model, splits.calib, method=method, wbits=wbits, abits=abits, granularity="tensor",
                          skip_first_last=True, seed=seed, progress=False, device=device, **options)
        quantized, seconds, evals = result.model, result.calib_seconds, result.loss_evals
        steps = {layer["name"]: {k: layer[k] for k in ("w_alpha", "a_alpha") if k in layer} for layer in result.layers}
    cpu = time.process_time() - cpu
    acc = evaluate(quantized, splits.test, device=device, batch_size=256)["accuracy"]
    return {"row": row, "wbits": wbits, "abits": abits, "seed": seed, "accuracy": acc, "calib_seconds": seconds,
            "cpu_seconds": cpu, "loss_evals": evals, "steps": steps}


def _stat(values: list[float]) -> dict[str, Any]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """network -> row -> "W{w}A{a}" -> accuracy / calib_seconds / loss_evals statistics over seeds."""
    out: dict[str, Any] = {}
    for r in runs:
        cfg = f"W{r['wbits']}A{r['abits']}"
        out.setdefault(r["network"], {}).setdefault(r["row"], {}).setdefault(cfg, []).append(r)
    keys = ("accuracy", "calib_seconds", "cpu_seconds", "loss_evals")
    return {net: {row: {cfg: {k: _stat([x[k] for x in rs]) for k in keys} for cfg, rs in by_cfg.items()}
                  for row, by_cfg in rows.items()} for net, rows in out.items()}


def claim_check(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """LAPQ against mse(+bc) and aciq(+bc) per network and 4-bit configuration: paired per seed (same float model)."""
    index = {(r["network"], r["row"], r["wbits"], r["abits"], r["seed"]): r["accuracy"] for r in runs}
    out = []
    for net, row, w, a, seed in index:
        if row != "lapq" or 4 not in (w, a):
            continue
        for other in ("mse", "mse+bc", "aciq", "aciq+bc", "torch-hist-b"):
            key = (net, other, w, a, seed)
            if key in index:
                out.append({"network": net, "config": f"W{w}A{a}", "seed": seed, "other": other,
                            "lapq": index[(net, row, w, a, seed)], "other_accuracy": index[key]})
    return out


def _acc_cell(stat: dict[str, Any]) -> str:
    """Mean ± std in %; a cell measured on one seed says so (its std is not 0, it is unknown)."""
    if stat["n"] == 1:
        return f"{100 * stat['mean']:.2f} (1 seed)"
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def markdown(summary: dict[str, Any], floats: dict[str, list[float]], claims: list[dict[str, Any]], n_seeds: int,
             configs: list[tuple[int, int]]) -> str:
    cfgs = [f"W{w}A{a}" for w, a in configs]
    lines: list[str] = []
    for net, rows in summary.items():
        fl = _stat(floats[net])
        lines += [f"**{net} LeNet: test accuracy (%), mean ± std over {n_seeds} seed(s); float32 "
                  f"{100 * fl['mean']:.2f} ± {100 * fl['std']:.2f}**", "",
                  "| method | " + " | ".join(cfgs) + " |", "| --- | " + " | ".join("---:" for _ in cfgs) + " |"]
        for row, by_cfg in rows.items():
            cells = [_acc_cell(by_cfg[c]["accuracy"]) if c in by_cfg else "" for c in cfgs]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines += ["", f"**{net}: calibration wall time / CPU time of the process (s, mean over seeds) / loss "
                  "evaluations**", "",
                  "| method | " + " | ".join(cfgs) + " |", "| --- | " + " | ".join("---:" for _ in cfgs) + " |"]
        for row, by_cfg in rows.items():
            cells = [f"{by_cfg[c]['calib_seconds']['mean']:.2f} / {by_cfg[c]['cpu_seconds']['mean']:.2f} / "
                     f"{by_cfg[c]['loss_evals']['mean']:.0f}"
                     if c in by_cfg else "" for c in cfgs]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    if claims:
        lines += ["**LAPQ vs the others at 4 bits, paired by seed: seeds where LAPQ is better / equal / worse; mean "
                  "difference in points**", "", "| network | config | vs | better | equal | worse | mean diff |",
                  "| --- | --- | --- | ---: | ---: | ---: | ---: |"]
        groups: dict[tuple[str, str, str], list[float]] = {}
        for c in claims:
            groups.setdefault((c["network"], c["config"], c["other"]), []).append(c["lapq"] - c["other_accuracy"])
        for (net, cfg, other), diffs in groups.items():
            better, equal = sum(d > 0 for d in diffs), sum(d == 0 for d in diffs)
            lines.append(f"| {net} | {cfg} | {other} | {better} | {equal} | {len(diffs) - better - equal} | "
                         f"{100 * statistics.fmean(diffs):+.2f} |")
        lines.append("")
    return "\n".join(lines)


def _cell(r: dict[str, Any]) -> tuple[str, int, str, int, int]:
    return r["network"], r["seed"], r["row"], r["wbits"], r["abits"]


def merge_previous(path: Path, runs: list[dict[str, Any]], trainings: list[dict[str, Any]], rows: list[str],
                   configs: list[tuple[int, int]] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The previous JSON's runs outside the cells measured now (a cell: network, seed, row, bit configuration;
    the cells of this run are its trainings' (network, seed) x ``rows`` x ``configs``, default every config), plus
    the new runs. Keeping runs of a (network, seed) needs the same float model: refuses when its test accuracy
    differs from the previous run's (then rerun all rows of that network)."""
    old = json.loads(path.read_text())
    before = {(t["network"], t["seed"]): t["float"] for t in old["floats"]}
    cfgs = set(configs if configs is not None else CONFIGS)
    now = {(t["network"], t["seed"], row, w, a) for t in trainings for row in rows for w, a in cfgs}
    for t in trainings:
        keeps = any(_cell(r) not in now and (r["network"], r["seed"]) == (t["network"], t["seed"])
                    for r in old["runs"])
        if keeps and before.get((t["network"], t["seed"])) != t["float"]:
            raise SystemExit(f"--merge: {t['network']} seed {t['seed']} float accuracy {t['float']} differs from "
                             f"{before.get((t['network'], t['seed']))} in {path}: not the same model; rerun all rows")
    kept = [r for r in old["runs"] if _cell(r) not in now]
    order = {row: i for i, row in enumerate(METHODS)}
    nets = list(dict.fromkeys([t["network"] for t in old["floats"]] + [t["network"] for t in trainings]))
    merged = sorted(kept + runs, key=lambda r: (nets.index(r["network"]), r["seed"],
                                                CONFIGS.index((r["wbits"], r["abits"])), order[r["row"]]))
    done = {(t["network"], t["seed"]) for t in trainings}
    floats = [t for t in old["floats"] if (t["network"], t["seed"]) not in done] + trainings
    return merged, sorted(floats, key=lambda t: (nets.index(t["network"]), t["seed"]))


def render(path: Path, into: Path | None = None) -> int:
    """``--render``: the tables of ``path`` (ptq.json) into the .md beside it, from its runs; with ``into``
    (BENCHMARKS.md) also between its ``<!-- ptq.py: begin -->`` / ``end`` lines (the issue-6 section)."""
    data = json.loads(path.read_text())
    runs = data["runs"]
    floats: dict[str, list[float]] = {}
    for t in data["floats"]:
        floats.setdefault(t["network"], []).append(t["float"])
    configs = [c for c in CONFIGS if any((r["wbits"], r["abits"]) == c for r in runs)]
    text = markdown(aggregate(runs), floats, claim_check(runs), len({t["seed"] for t in data["floats"]}), configs)
    path.with_suffix(".md").write_text(text + "\n")
    if into is not None:
        from md_section import replace_section  # benchmarks/md_section.py

        replace_section(into, "<!-- ptq.py: begin -->", "<!-- ptq.py: end -->", text)
    print(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, W4A4 only, cheap AdaRound/LAPQ")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-list", default=None,
                        help="comma-separated seeds instead of 0..--seeds-1 (with --merge)")
    parser.add_argument("--configs", default=None,
                        help="comma-separated bit configurations, e.g. W4A8,W2A8 (default: all; with --merge)")
    parser.add_argument("--networks", default="mnist5k,digits")
    parser.add_argument("--rows", default=",".join(METHODS), help="comma-separated rows (methods)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "learnq-bench-ptq"),
                        help="folder of the trained float models (reused by later runs)")
    parser.add_argument("--out", default=str(RESULTS), help="folder for ptq.json and ptq.md")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: least hurt by a busy machine)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other rows' runs of the existing JSON (same float models: checked) and "
                             "replace only --rows")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite ptq.md from the existing ptq.json (nothing trained or quantized)")
    parser.add_argument("--into", type=Path, default=None,
                        help="with --render: also write the tables between the ptq.py markers of this file")
    args = parser.parse_args(argv)
    if args.render:
        return render(Path(args.out) / "ptq.json", args.into)
    torch.set_num_threads(args.threads)
    seeds = [0] if args.quick else list(range(args.seeds))
    configs = [(4, 4)] if args.quick else list(CONFIGS)
    if args.seed_list:
        seeds = [int(x) for x in args.seed_list.split(",")]
    if args.configs:
        names = [f"W{w}A{a}" for w, a in CONFIGS]
        bad = [c for c in args.configs.split(",") if c not in names]
        if bad:
            parser.error(f"unknown --configs {bad}; known: {', '.join(names)}")
        configs = [CONFIGS[names.index(c)] for c in args.configs.split(",")]
    if (args.seed_list or args.configs) and not args.merge:
        parser.error("--seed-list / --configs measure part of the table: give --merge (keep the rest of the JSON)")
    epochs, limit = (3, 1500) if args.quick else (None, None)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in METHODS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(METHODS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "ptq-quick" if args.quick else "ptq"
    runs: list[dict[str, Any]] = []
    floats: dict[str, list[float]] = {}
    trainings: list[dict[str, Any]] = []
    start, load_start = time.perf_counter(), os.getloadavg()
    for net in args.networks.split(","):
        for seed in seeds:
            model, splits, info = float_model(net, seed, Path(args.cache), epochs, limit)
            fl = evaluate(model, splits.test, device=args.device, batch_size=256)["accuracy"]
            floats.setdefault(net, []).append(fl)
            trainings.append({"network": net, "seed": seed, "float": fl, "n_test": len(splits.test),
                              "n_calib": len(splits.calib), **info})
            print(f"{net} seed {seed}: float {100 * fl:.2f}% (n = {len(splits.test)})", flush=True)
            if args.merge:  # fail now, not after the rows: merging needs the same float models
                merge_previous(out / f"{stem}.json", [], trainings[-1:], rows, configs)
            for w, a in configs:
                for row in rows:
                    if w == 32 and row.endswith("+bc"):
                        continue  # bias correction changes weights only
                    r = run_row(model, splits, row, w, a, seed, args.quick, args.device)
                    r["network"] = net
                    runs.append(r)
                    print(f"  W{w}A{a} {row:13s} {100 * r['accuracy']:6.2f}%  {r['calib_seconds']:7.2f} s  "
                          f"{r['cpu_seconds']:7.2f} cpu s  {r['loss_evals']:4d} evals", flush=True)
    if args.merge:
        runs, trainings = merge_previous(out / f"{stem}.json", runs, trainings, rows, configs)
        seeds = sorted({t["seed"] for t in trainings})
        configs = [c for c in CONFIGS if any((r["wbits"], r["abits"]) == c for r in runs)]
        floats = {}
        for t in trainings:
            floats.setdefault(t["network"], []).append(t["float"])
    summary = aggregate(runs)
    claims = claim_check(runs)
    payload = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "seeds": seeds,
               "configs": [f"W{w}A{a}" for w, a in configs], "networks": NETWORKS,
               "rows": list(dict.fromkeys(r["row"] for r in runs)),
               "torch": torch.__version__, "platform": platform.platform(), "threads": args.threads,
               "load_average": {"start": load_start, "end": os.getloadavg()},
               "wall_seconds": time.perf_counter() - start, "floats": trainings, "summary": summary,
               "claims": claims, "runs": runs}
    if args.merge:  # every command that measured part of the merged table, oldest first
        old = json.loads((out / f"{stem}.json").read_text())
        payload["commands"] = [*old.get("commands", [old["command"]]), payload["command"]]
        payload["notes"] = old.get("notes", [])
    (out / f"{stem}.json").write_text(json.dumps(payload, indent=1) + "\n")
    text = markdown(summary, floats, claims, len(seeds), configs)
    (out / f"{stem}.md").write_text(text + "\n")
    print(text)
    print(f"wrote {out / (stem + '.json')} and {out / (stem + '.md')} in {payload['wall_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
