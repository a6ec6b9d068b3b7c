"""Benchmark for issue 17: learnq side by side with the peer quantization libraries users would choose instead
(AIMET, NNCF, Brevitas, torchao, optimum-quanto), on the same float LeNet-5, data and 512 calibration images.

Per seed, the float model is trained once through learnq's pipeline (``lenet`` on ``mnist5k``: 4,000 / 1,000 split,
10 epochs Adam lr 1e-3, batch 64; the recipe of ``benchmarks/ptq.py``; cached in ``--cache``, default
``$TMPDIR/learnq-bench-peers``), and its weights, training, calibration and test tensors are written next to it
(``peers-*.safetensors``): every library reads exactly these. Then, per seed and library, one subprocess
(``python -m peer_runs.worker``): learnq's rows under ``.venv/bin/python``, each peer's under
``.venv-bench/bin/python`` (the peers never enter learnq's environment; benchmarks/envs/README.md). The rows
(library x method x setting: ``benchmarks/peer_runs/plan.py``) record the accuracy of the quantized model in memory
and of its artifact saved to disk and reloaded into a freshly built model, the artifact's bytes, how each layer's
weight is stored in it (dtype, bits per weight, code range: does it really hold low-bit codes?), and the wall time
of the quantization call(s) only (training included for QAT; not imports, data, saving or evaluation), interleaved in
the same process with learnq's MSE PTQ at the same setting: the ratio of the two medians is the "time ÷ learnq MSE"
column (fast methods: ``--rounds`` interleaved rounds after a warm-up call; the others one round per seed; the
table shows the median over seeds). One torch thread on both sides.

Results go to ``--out`` (default ``benchmarks/results/peers.json``) after every row, so an interrupted run resumes
(rows already "ok" or "not supported" are kept; ``--fresh`` reruns all). A full run then renders the tables:
``--render`` rewrites the block between ``<!-- peers.py render: begin/end -->`` in README.md ("learnq and the
alternatives") and in benchmarks/BENCHMARKS.md ("Peers") from the JSON, and nothing else.

    .venv/bin/python benchmarks/peers.py                     # 3 seeds, every library (~40 min on 2 busy cores)
    .venv/bin/python benchmarks/peers.py --quick             # smoke: 1 seed, small data, a few rows per library
    .venv/bin/python benchmarks/peers.py --render            # README.md + BENCHMARKS.md from results/peers.json
    .venv/bin/python benchmarks/peers.py --only learnq,nncf --seeds 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path[:0] = [p for p in (str(ROOT), str(BENCH)) if p not in sys.path]

from peer_runs import render  # noqa: E402
from peer_runs.common import DATA_FILE, INFO_FILE, STATE_FILE  # noqa: E402
from peer_runs.plan import LIBRARIES, rows_for  # noqa: E402
from peer_runs.worker import INFO, ROW  # noqa: E402

RESULTS = BENCH / "results" / "peers.json"
README, BENCHMARKS = ROOT / "README.md", BENCH / "BENCHMARKS.md"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
FLOAT_RECIPE = {"data": {"name": "mnist5k", "calib_size": 512, "test_fraction": 0.2}, "model": {"name": "lenet"},
                "train": {"epochs": 10, "batch_size": 64, "lr": 1e-3, "optimizer": "adam"}}
FULL = {"rounds": 3, "qat_epochs": 3, "qat_lr": 1e-3, "adaround_iterations": 2000, "quick": False}
QUICK = {"rounds": 1, "qat_epochs": 1, "qat_lr": 1e-3, "adaround_iterations": 50, "quick": True}
QUICK_ROWS = {"learnq": ("minmax/W4A8", "mse/W4A8", "adaround/W4A8", "gptq/W4A8", "lsq/W2A8-QAT"),
              "aimet": ("quantsim/W4A8",), "nncf": ("compress_weights/W8A32", "quantize/W4A8"),
              "brevitas": ("stats_bc/W4A8",), "torchao": ("int8_weight_only/W8A32",), "quanto": ("quantize/W4A8",)}


def prepare(seed: int, cache: Path, quick: bool) -> Path:
    """Train (or reuse) the seed's float LeNet and write the tensors every library reads; the folder."""
    import torch
    from safetensors.torch import save_file

    from learnq.pipeline.model_files import MODEL_FILE, rebuild
    from learnq.pipeline.recipe import Recipe
    from learnq.pipeline.run import train_recipe
    from learnq.pipeline.train import evaluate

    folder = cache / (f"mnist5k-seed{seed}" + ("-quick" if quick else ""))
    if (folder / INFO_FILE).is_file():
        return folder
    torch.set_num_threads(1)
    if not (folder / MODEL_FILE).is_file():
        spec = json.loads(json.dumps(FLOAT_RECIPE))
        if quick:
            spec["train"]["epochs"], spec["data"]["limit"] = 3, 1500
        start = time.perf_counter()
        train_recipe(Recipe.from_dict({"name": f"bench-peers-{seed}", "seed": seed, **spec,
                                       "report": {"plots": False}}), folder)
        (folder / "train_seconds.txt").write_text(f"{time.perf_counter() - start:.3f}\n")
    model, splits, meta = rebuild(folder / MODEL_FILE)
    model.eval()
    tensors = {}
    for split in ("train", "calib", "test"):
        x, y = getattr(splits, split).tensors
        tensors[f"x_{split}"], tensors[f"y_{split}"] = x.contiguous(), y.contiguous()
    save_file(tensors, str(folder / DATA_FILE))
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(folder / STATE_FILE))
    acc = evaluate(model, splits.test, batch_size=256)["accuracy"]
    info = {"seed": seed, "model": meta["model"], "float_accuracy": acc, "float_bytes": (folder / STATE_FILE)
            .stat().st_size, "sizes": {k: len(v) for k, v in tensors.items() if k.startswith("y_")}}
    (folder / INFO_FILE).write_text(json.dumps(info, indent=1))
    return folder


def run_worker(library: str, folder: Path, items: list[str], options: dict, threads: int, log: Path,
               on_row) -> dict:
    """Run one library's rows of one seed in a subprocess; ``on_row(row)`` for each finished row; its INFO."""
    python = sys.executable if LIBRARIES[library][1] == ".venv" else str(BENCH_PYTHON)
    tmp = Path(tempfile.mkdtemp(prefix=f"peers-{library}-"))
    argv = [python, "-m", "peer_runs.worker", "--library", library, "--folder", str(folder), "--tmp", str(tmp),
            "--options", json.dumps(options), "--rows", ",".join(items), "--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCH)])}
    info: dict = {}
    with open(log, "a") as fh:
        fh.write(f"\n=== {' '.join(argv)}\n")
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=fh, text=True)
        for line in proc.stdout:
            if line.startswith(ROW):
                on_row(json.loads(line[len(ROW):]))
            elif line.startswith(INFO):
                info = json.loads(line[len(INFO):])
            else:
                fh.write(line)
        code = proc.wait()
    subprocess.run(["rm", "-rf", str(tmp)], check=False)
    if code != 0:
        print(f"  worker {library} exited with {code}; see {log}", flush=True)
    return info


def write(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, path)


def do_render(results: Path, readme: Path = README, benchmarks: Path = BENCHMARKS) -> None:
    payload = json.loads(results.read_text())
    for path, block in ((readme, render.readme_block(payload)), (benchmarks, render.benchmarks_block(payload))):
        path.write_text(render.replace_block(path.read_text(), block, str(path)))
        print(f"rendered {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, 1,500 images, a few rows per library")
    p.add_argument("--render", action="store_true", help="only rewrite the README.md and BENCHMARKS.md blocks")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--only", default=",".join(LIBRARIES), help=f"subset of {','.join(LIBRARIES)}")
    p.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS.relative_to(ROOT)}; "
                                                         "with --quick $TMPDIR/learnq-peers-quick.json)")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "learnq-bench-peers")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fresh", action="store_true", help="ignore the rows already in --out")
    p.add_argument("--no-render", action="store_true", help="do not render at the end of a full run")
    args = p.parse_args(argv)
    out = args.out or (Path(tempfile.gettempdir()) / "learnq-peers-quick.json" if args.quick else RESULTS)
    if args.render:
        do_render(out)
        return 0
    libraries = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in libraries if x not in LIBRARIES]
    if unknown:
        p.error(f"--only: unknown {unknown}; known: {', '.join(LIBRARIES)}")
    if any(LIBRARIES[x][1] != ".venv" for x in libraries) and not BENCH_PYTHON.is_file():
        p.error(f"{BENCH_PYTHON} is missing: `make bench-env` creates it (benchmarks/envs/README.md)")
    options = QUICK if args.quick else FULL
    seeds = [0] if args.quick else list(range(args.seeds))
    out.parent.mkdir(parents=True, exist_ok=True)
    old = {} if args.fresh or not out.is_file() else json.loads(out.read_text())
    keep = [r for r in old.get("rows", []) if r["status"] in ("ok", "not supported") and old.get("options") == options]
    payload: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *(sys.argv if argv is None else ["benchmarks/peers.py",
                                                                                        *argv])]),
        "seeds": seeds, "threads": args.threads, "options": options, "platform": platform.platform(),
        "load_average": {"start": os.getloadavg()}, "versions": old.get("versions", {}), "float": {},
        "timing": "wall time (time.perf_counter) of the quantization call(s) only: imports, data, saving and "
                  "evaluation excluded, training included for QAT; learnq's MSE PTQ at the same setting timed "
                  "in the same process, interleaved", "rows": keep}
    log = out.with_suffix(".log")
    start = time.perf_counter()
    folders = {}
    for seed in seeds:
        print(f"seed {seed}: float model", flush=True)
        folders[seed] = prepare(seed, args.cache, args.quick)
    infos = [json.loads((folders[s] / INFO_FILE).read_text()) for s in seeds]
    payload["float"] = {"accuracy": [i["float_accuracy"] for i in infos], "bytes": infos[0]["float_bytes"],
                        "model": infos[0]["model"], "sizes": infos[0]["sizes"]}
    write(out, payload)
    done = {(r["library"], r["method"], r["setting"], r["seed"]) for r in keep}
    for seed in seeds:
        for library in libraries:
            items = [f"{m.key}/{s}" for m, s, _ in rows_for(library)]
            if args.quick:
                items = [i for i in items if i in QUICK_ROWS[library]]
            items = [i for i in items if (library, *i.split("/"), seed) not in done]
            if not items:
                continue
            print(f"seed {seed}: {library}: {len(items)} rows", flush=True)

            def on_row(row: dict) -> None:
                payload["rows"].append(row)
                write(out, payload)
                acc = "" if row["acc_artifact"] is None else f"{100 * row['acc_artifact']:.2f}%"
                ratio = "" if row["ratio"] is None else f"{row['ratio']:.2f}x MSE"
                print(f"  {row['method']:18} {row['setting']:9} {row['status']:13} {acc:7} {ratio:10} "
                      f"{row['bytes'] or '':>7} {row['low_bit'] or row['error'][:90]}", flush=True)

            info = run_worker(library, folders[seed], items, options, args.threads, log, on_row)
            if info:
                payload["versions"][library] = info
    payload["load_average"]["end"] = os.getloadavg()
    payload["wall_seconds"] = time.perf_counter() - start + old.get("wall_seconds", 0.0) * bool(keep)
    write(out, payload)
    bad = [r for r in payload["rows"] if r["status"] == "error"]
    print(f"wrote {out} ({len(payload['rows'])} rows, {len(bad)} errors) in {time.perf_counter() - start:.0f} s")
    if args.quick:
        md = out.with_suffix(".md")
        md.write_text(render.readme_block(payload) + "\n\n" + render.benchmarks_block(payload) + "\n")
        print(f"wrote {md}")
    elif out == RESULTS and not args.no_render:
        do_render(out)
    for r in bad:
        print(f"ERROR {r['library']}/{r['method']}/{r['setting']}/seed{r['seed']}: {r['error']}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
