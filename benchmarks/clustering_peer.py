"""learnq's DKM beside coremltools' DKMPalettizer (issue 14), on the same trained model, data and fine-tuning loop.

Starts from the L2 LeNet float model that ``benchmarks/clustering.py`` trained and cached (mnist5k, seed 0), and
fine-tunes a copy of it three ways with the same loop (Adam 1e-3, batch 64, ``--epochs`` epochs, the same batches):
float (the step-time baseline), learnq's ``DKM(bits, dim)`` (one palette per tensor, conv1 left in float as in
clustering.py) and coremltools' ``DKMPalettizer`` (``ModuleDKMPalettizerConfig(n_bits, cluster_dim,
weight_threshold=0, milestone=0)``, ``palettizer.step()`` after each optimizer step, ``finalize()``; its vectors run
along output channels and it leaves layers whose channel count ``cluster_dim`` does not divide in float). Reports
test accuracy (learnq: the model reloaded from its file; coremltools: the finalized torch model, since Core ML models
cannot run on Linux), the file size (learnq's model file; coremltools' ``mlprogram`` package from ``ct.convert``
with ``constexpr_lut_to_dense`` ops, the artifact that holds its palettes) and the mean training-step time of each
relative to the float step (same process, torch.set_num_threads(1), the three runs one after another).

Runs in the benchmark environment (benchmarks/envs/README.md), which has coremltools 9.0 beside torch 2.13.0:

    flock /work/wt/bench.lock nice -n 10 env PYTHONPATH=. /work/wt/bench-env/.venv-bench/bin/python \\
        benchmarks/clustering_peer.py
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import learnq
from learnq.attach import Selection

sys_path = Path(__file__).resolve().parent
RESULTS = sys_path / "results" / "clustering_peer.json"  # clustering_peer_digits.json for --data digits


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _finetune(model, x, y, epochs, seed, after_step=None) -> float:
    """Adam 1e-3, batch 64; returns the mean step time in seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    times = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], 64):
            idx = order[i:i + 64]
            t0 = time.perf_counter()
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
            if after_step is not None:
                after_step()
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def _tensors(ds) -> tuple[torch.Tensor, torch.Tensor]:
    return next(iter(torch.utils.data.DataLoader(ds, batch_size=len(ds))))


def _learnq_variants(specs: list[str]) -> dict[str, dict[str, float]]:
    """``name:key=value,key=value`` -> {name: DKM options} (``default:`` is DKM's defaults)."""
    out = {}
    for spec in specs:
        name, _, opts = spec.partition(":")
        out[name] = {k: float(v) if "." in v or "e" in v else int(v)
                     for k, v in (o.split("=") for o in opts.split(",") if o)}
    return out


BEGIN, END = "<!-- clustering_peer.py: begin -->", "<!-- clustering_peer.py: end -->"


def report(path: Path) -> str:
    """Markdown of a results file: per palette and seed, each learnq variant beside coremltools."""
    import statistics

    out = json.loads(path.read_text(encoding="utf-8"))
    runs = out["runs"]
    lines = [f"`{Path(__file__).name}` (results: `benchmarks/results/{path.name}`, coremltools "
             f"{out.get('coremltools')}, {out['epochs']} fine-tuning epochs, 1 thread). Accuracy % of the reloaded "
             "learnq file / of coremltools' finalized model on the 1,000 test images of the seed's split; step = "
             "mean training step ÷ a float step of the same loop, same process.", "",
             "| palette | seed (base) | float | " + " | ".join(
                 f"learnq {v}" for v in dict.fromkeys(r["variant"] for r in runs if r["lib"] == "learnq"))
             + " | coremltools | learnq − coremltools | files B (learnq / coremltools) | step ÷ float (learnq / "
             "coremltools) |"]
    variants = list(dict.fromkeys(r["variant"] for r in runs if r["lib"] == "learnq"))
    lines.append("| --- " * (7 + len(variants)) + "|")
    diffs: dict[tuple[str, str], list[float]] = {}
    for bits, dim in dict.fromkeys((r["bits"], r["dim"]) for r in runs):
        for seed in sorted({r["seed"] for r in runs if (r["bits"], r["dim"]) == (bits, dim)}):
            sel = {(r["lib"], r["variant"]): r for r in runs if (r["bits"], r["dim"], r["seed"]) == (bits, dim, seed)}
            ct = sel.get(("coremltools", ""))
            cells = [f"{100 * sel[('learnq', v)]['accuracy']:.2f}" if ("learnq", v) in sel else "-" for v in variants]
            default = sel.get(("learnq", variants[0]))
            for v in variants:
                if ct and ("learnq", v) in sel:
                    palette = f"{bits} bit{'' if dim == 1 else f' / {dim}-dim'}"
                    diffs.setdefault((v, palette), []).append(sel[("learnq", v)]["accuracy"] - ct["accuracy"])
            base = Path(next(iter(sel.values()))["base"])
            lines.append(
                f"| {bits} bit{'' if dim == 1 else f' / {dim}-dim'} | {seed} ({base.parent.name}/{base.name}) | "
                f"{100 * next(iter(sel.values()))['float_accuracy']:.2f} | " + " | ".join(cells) + " | "
                + (f"{100 * ct['accuracy']:.2f}" if ct else "-") + " | "
                + (f"{100 * (default['accuracy'] - ct['accuracy']):+.2f}" if ct and default else "-") + " | "
                + (f"{default['file_bytes']:,} / {ct.get('file_bytes', 0):,}" if ct and default else "-") + " | "
                + (f"{default['step_vs_float']:.1f} / {ct['step_vs_float']:.1f}" if ct and default else "-") + " |")
    def spread(d: list[float]) -> str:
        return f" ± {100 * statistics.stdev(d):.2f}" if len(d) > 1 else ""

    lines += ["", "learnq − coremltools per palette and learnq variant, mean over seeds: " + "; ".join(
        f"{p} {v} {100 * statistics.mean(d):+.2f}{spread(d)} points (n={len(d)})" for (v, p), d in diffs.items())
        + "."]
    return "\n".join(lines) + "\n"


def write_report(path: Path) -> None:
    text = report(path)
    print(text)
    md_path = sys_path / "BENCHMARKS.md"
    md = md_path.read_text(encoding="utf-8")
    if BEGIN in md and END in md:
        block = f"{BEGIN}\n<!-- generated by benchmarks/clustering_peer.py --report -->\n{text}{END}"
        md_path.write_text(md[:md.index(BEGIN)] + block + md[md.index(END) + len(END):], encoding="utf-8")


def main() -> None:
    import sys

    sys.path.insert(0, str(sys_path))
    from clustering import CACHE, recipe_for

    from learnq.pipeline.models import model_from_spec, model_spec
    from learnq.pipeline.run import load_splits

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data", default="mnist5k", choices=["mnist5k", "digits"])
    parser.add_argument("--base", default=None, help="the cached float model: a run directory (its "
                        "model.safetensors) or a .safetensors file; '{seed}' is replaced by the seed (default: "
                        "clustering.py's L2 model, seed 0: l2-e10-seed0 for mnist5k, digits-l2-e15-seed0 for digits)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="data split and fine-tuning seeds (the base must have been trained on that split)")
    parser.add_argument("--configs", nargs="+", default=["2x1", "4x4", "2x2"], help="BITSxDIM")
    parser.add_argument("--learnq", nargs="+", default=["default:"],
                        help="learnq DKM variants NAME:key=value,... (e.g. tau02:tau=0.02)")
    parser.add_argument("--learnq-exclude", nargs="*", default=[],
                        help="weights learnq's DKM also leaves float (beside features.conv1.weight), e.g. the "
                        "layers coremltools leaves float at cluster_dim 4, for a step-time comparison on the same "
                        "layers")
    parser.add_argument("--no-coremltools", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--report", action="store_true", help="only print the table of --out (BENCHMARKS.md block)")
    args = parser.parse_args()
    if args.report:
        write_report(args.out or RESULTS)
        return
    torch.set_num_threads(1)
    epochs = 10 if args.data == "mnist5k" else 15
    if args.base is None:
        args.base = str(CACHE / f"{'' if args.data == 'mnist5k' else 'digits-'}l2-e{epochs}-seed0")
    path = args.out or (RESULTS if args.data == "mnist5k" else RESULTS.with_name("clustering_peer_digits.json"))
    out = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    if out.get("data") != args.data or "runs" not in out:  # the old single-seed layout is not resumed
        out = {"data": args.data, "epochs": args.epochs, "threads": 1, "runs": []}
    done = {(r["seed"], r["lib"], r.get("variant", ""), r["bits"], r["dim"]) for r in out["runs"]}
    import coremltools as ct
    from coremltools.optimize.torch.palettization import (
        DKMPalettizer,
        DKMPalettizerConfig,
        ModuleDKMPalettizerConfig,
    )

    out["coremltools"] = ct.__version__
    tmp = Path(tempfile.mkdtemp(prefix="clustering-peer-"))

    def record(row: dict) -> None:
        out["runs"].append(row)
        print(row, flush=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1), encoding="utf-8")

    for seed in args.seeds:
        recipe = recipe_for("l2", seed, epochs, args.data)
        splits = load_splits(recipe)
        (x, y), (xt, yt) = _tensors(splits.train), _tensors(splits.test)
        base_path = Path(args.base.format(seed=seed))
        if base_path.is_dir():
            base_path = base_path / "model.safetensors"

        def base(recipe=recipe, splits=splits, base_path=base_path):
            torch.manual_seed(0)
            m = model_from_spec(model_spec(recipe.model.name, splits.input_shape, splits.num_classes,
                                           **recipe.model.args))
            return learnq.load(base_path, m)

        model = base()
        float_acc = _accuracy(model, xt, yt)
        float_step = _finetune(model, x, y, 1, seed=seed)
        common = {"seed": seed, "base": str(base_path), "float_accuracy": float_acc}
        for cfg in args.configs:
            bits, dim = (int(v) for v in cfg.split("x"))
            for name, opts in _learnq_variants(args.learnq).items():
                if (seed, "learnq", name, bits, dim) in done:
                    continue
                model = base()
                learnq.prepare(model, learnq.DKM(bits=bits, dim=dim, **opts),
                               selection=Selection(exclude=("features.conv1.weight", *args.learnq_exclude)))
                step = _finetune(model, x, y, args.epochs, seed=seed)
                model.eval()
                learnq.save(model, tmp / f"learnq_{cfg}.safetensors")
                loaded = learnq.load(tmp / f"learnq_{cfg}.safetensors", base())
                record({**common, "lib": "learnq", "variant": name, "options": opts, "bits": bits, "dim": dim,
                        "excluded": ["features.conv1.weight", *args.learnq_exclude],
                        "accuracy": _accuracy(loaded, xt, yt),
                        "file_bytes": _size(tmp / f"learnq_{cfg}.safetensors"), "step_ms": 1e3 * step,
                        "step_vs_float": step / float_step})
            if args.no_coremltools or (seed, "coremltools", "", bits, dim) in done:
                continue
            torch.manual_seed(seed)
            module_cfg = ModuleDKMPalettizerConfig(n_bits=bits, cluster_dim=dim, weight_threshold=0, milestone=0)
            palettizer = DKMPalettizer(base(), DKMPalettizerConfig(global_config=module_cfg))
            q = palettizer.prepare(inplace=True)
            step = _finetune(q, x, y, args.epochs, seed=seed, after_step=palettizer.step)
            final = palettizer.finalize(inplace=False)
            row = {**common, "lib": "coremltools", "variant": "", "bits": bits, "dim": dim,
                   "accuracy": _accuracy(final, xt, yt), "step_ms": 1e3 * step, "step_vs_float": step / float_step}
            row["palettized"] = [n.split("._COREML_")[0] for n in final.state_dict() if n.endswith("/lut")]
            try:
                traced = torch.jit.trace(final.eval(), xt[:1])
                ml = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=tuple(xt[:1].shape))],
                                convert_to="mlprogram", minimum_deployment_target=ct.target.iOS18)
                ml.save(str(tmp / f"ct_{cfg}.mlpackage"))
                row["file_bytes"] = _size(tmp / f"ct_{cfg}.mlpackage")
            except Exception as exc:  # noqa: BLE001 - a peer's converter: record why there is no file
                row["file_error"] = repr(exc)[:300]
            record(row)
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
