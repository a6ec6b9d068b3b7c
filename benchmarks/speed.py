"""Speed benchmark for issue 7: model-file save and load time, and the speed table of ``BENCHMARKS.md``.

``measure``: save and load time of a learnq model file (DESIGN.md, "honest, bit-packed model files"; the codes are
packed as in DiffQ, seeds/003 §3.3) against the float model saved by ``torch.save`` of its ``state_dict`` and by
``safetensors.torch.save_file``. Two networks: ``thesis-mnist`` (seeds/004 §4.1, 784-112-10 dense) and ``resnet20``
(DiffQ's Table 1 CIFAR-10 network), quantized W4A8 with per-channel min-max weights
(``learnq.ptq.quantize(method="minmax", wbits=4, abits=8, granularity="channel")``; ResNet-20's BatchNorm folded, as
``quantize`` does by default). Weights are the seeded initial ones: save and load time do not depend on training.
Times: median of ``--repeats`` calls after one warm-up, ``torch.set_num_threads(--threads)``; the file is in the page
cache after the warm-up, so a load time is parsing, checking and decoding, not disk. "read" is the file into tensors
(``learnq.load(path)``, ``torch.load(weights_only=True)``, ``safetensors.torch.load_file``); "into model" adds putting
them into a freshly built model (``learnq.load(path, model)`` attaches the frozen quantized weights and activation
quantizers; the float files go through ``load_state_dict``). Writes ``benchmarks/results/speed.json``.

``render``: the "## Speed" section of ``BENCHMARKS.md`` (between the ``speed.py`` markers) from ``speed.json`` and
the other benchmarks' JSON files: pack/unpack against diffq's bitpack (``packing.json``), the QAT train step and
eval against float32 and the diffq package (``qat_speed.json``), PTQ calibration time (``ptq.json``), and the load
and save times above. A missing input file is an error naming the benchmark that writes it.

    .venv/bin/python benchmarks/speed.py measure            # ~8 min: the issue-12 ratio table, then save/load
    .venv/bin/python benchmarks/speed.py measure --quick    # 5 repeats, fewer rounds (smoke run, ~3 min)
    .venv/bin/python benchmarks/speed.py measure --only-table   # the issue-12 table (benchmarks/speed_table.py)
    .venv/bin/python benchmarks/speed.py measure --only-table --parts eval,diffq   # some of its parts (resumes)
    .venv/bin/python benchmarks/speed.py render             # rewrite the Speed section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

try:
    from bench_timing import machine, median_ms
    from speed_table import PARTS, floor_lines, measure_table, table_lines
except ImportError:  # imported as benchmarks.speed
    from benchmarks.bench_timing import machine, median_ms
    from benchmarks.speed_table import PARTS, floor_lines, measure_table, table_lines

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS_MD = Path(__file__).resolve().parent / "BENCHMARKS.md"
BEGIN, END = "<!-- speed.py render: begin -->", "<!-- speed.py render: end -->"
NETWORKS = {"thesis-mnist": ((1, 28, 28), 10), "resnet20": ((3, 32, 32), 10)}


def quantized_copy(model: nn.Module, input_shape: tuple[int, ...], device: str = "cpu") -> nn.Module:
    """``model`` quantized W4A8 (per-channel min-max weights) with 64 seeded random calibration inputs."""
    from learnq.ptq import quantize

    gen = torch.Generator().manual_seed(0)
    calib = torch.rand((64, *input_shape), generator=gen).to(device)
    return quantize(model, calib, method="minmax", wbits=4, abits=8, granularity="channel", progress=False,
                    device=device).model


def measure_network(name: str, repeats: int, folder: Path, device: str = "cpu") -> dict[str, Any]:
    """Save and load times (ms) and file sizes of one network: learnq W4A8 against the float32 files."""
    import learnq
    from learnq.pipeline.models import build_model

    shape, classes = NETWORKS[name]
    torch.manual_seed(0)
    template = build_model(name, shape, classes, device=device).eval()
    state = {k: v.contiguous() for k, v in template.state_dict().items()}
    quant = quantized_copy(copy.deepcopy(template), shape, device)
    paths = {"learnq": folder / f"{name}-w4a8.safetensors", "torch": folder / f"{name}.pt",
             "safetensors": folder / f"{name}.safetensors"}
    save = {"learnq": lambda: learnq.save(quant, paths["learnq"]),
            "torch": lambda: torch.save(state, paths["torch"]),
            "safetensors": lambda: safetensors.torch.save_file(state, paths["safetensors"])}
    fresh = lambda: copy.deepcopy(template)  # noqa: E731  (untimed: a new model for every "into model" call)
    read = {"learnq": lambda: learnq.load(paths["learnq"]),
            "torch": lambda: torch.load(paths["torch"], weights_only=True),
            "safetensors": lambda: safetensors.torch.load_file(paths["safetensors"])}
    into = {"learnq": lambda m: learnq.load(paths["learnq"], m),
            "torch": lambda m: m.load_state_dict(torch.load(paths["torch"], weights_only=True)),
            "safetensors": lambda m: m.load_state_dict(safetensors.torch.load_file(paths["safetensors"]))}
    out: dict[str, Any] = {"parameters": sum(p.numel() for p in template.parameters()), "files": {}}
    for kind in paths:
        row = {"save_ms": median_ms(save[kind], repeats)}
        row["bytes"] = paths[kind].stat().st_size
        row["read_ms"] = median_ms(read[kind], repeats)
        row["into_model_ms"] = median_ms(into[kind], repeats, setup=fresh)
        out["files"][kind] = row
        print(f"{name:13s} {kind:12s} {row['bytes'] / 1e3:9.1f} kB  save {row['save_ms']:7.3f} ms  "
              f"read {row['read_ms']:7.3f} ms  into model {row['into_model_ms']:7.3f} ms", flush=True)
    check = learnq.load(paths["learnq"], fresh())  # the loaded model computes what the quantized one does
    x = torch.rand((8, *shape), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        out["loaded_equals_quantized"] = bool(torch.equal(check(x), quant(x)))
    if not out["loaded_equals_quantized"]:
        raise RuntimeError(f"{name}: the model loaded from {paths['learnq']} does not compute what was saved")
    return out


def measure(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    before = machine()
    start = time.perf_counter()
    networks = {}
    out = Path(args.out)
    previous = None
    if args.parts != ",".join(PARTS) and out.is_file():  # a subset: the other rows come from the earlier run
        previous = json.loads(out.read_text()).get("table")
    table = measure_table(args.quick, tuple(args.parts.split(",")), previous) if not args.no_table else None
    with tempfile.TemporaryDirectory() as tmp:
        for name in ([] if args.only_table else args.networks.split(",")):
            if name not in NETWORKS:
                raise SystemExit(f"--networks: unknown network {name!r}; known: {', '.join(NETWORKS)}")
            networks[name] = measure_network(name, args.repeats, Path(tmp), args.device)
    command = " ".join(["python", "benchmarks/speed.py", *sys.argv[1:]])
    payload = {"benchmark": "model file save/load time", "command": command,
               "unit": f"milliseconds, median of {args.repeats} calls after one warm-up (file in the page cache)",
               "threads": args.threads, "quantization": "W4A8, per-channel min-max weights, 64 random calib inputs",
               "machine": before, "loadavg_end": list(os.getloadavg()), "seconds": time.perf_counter() - start,
               "networks": networks}
    if args.only_table and out.is_file():  # keep the save/load table of an earlier run
        old = json.loads(out.read_text())
        payload.update({k: old[k] for k in ("networks", "unit", "command", "machine", "loadavg_end") if k in old})
    if table is not None:
        payload["table"] = table
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {out} ({payload['seconds']:.0f} s)")


# -- render: the Speed section of BENCHMARKS.md ------------------------------------------------------------------
def _read(path: Path, writer: str) -> dict[str, Any]:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run {writer} first (or give its JSON with the matching option)")
    return json.loads(path.read_text(encoding="utf-8"))


def _load_text(loadavg: Any) -> str:
    if not loadavg:
        return "load average not recorded"
    values = loadavg if isinstance(loadavg, list) else [loadavg]
    return "load average " + " / ".join(f"{v:.1f}" for v in values[:3]) + (" (1/5/15 min)" if len(values) > 1 else "")


def _shown(path: str | Path) -> str:
    """``path`` relative to the repository when it is inside it (the tables name their source files)."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def files_table(speed: dict[str, Any]) -> list[str]:
    m = speed["machine"]
    lines = [f"**Model files: save and load** (`{speed['_path']}`, `{speed['command']}`; "
             f"{speed['unit']}; torch.set_num_threads({speed['threads']}); {m['cpu']}, {m['cores']} cores, "
             f"torch {m['torch']}; {_load_text(m['loadavg'])} at the start, "
             f"{_load_text(speed['loadavg_end'])} at the end). learnq: {speed['quantization']}; float32: the same "
             "network's state_dict.", "",
             "| network | file | kB | save ms | read ms | into model ms | read vs learnq |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    names = {"learnq": "learnq W4A8 (`learnq.save` / `learnq.load`)", "torch": "float32 `torch.save` (.pt)",
             "safetensors": "float32 `safetensors.torch`"}
    for net, info in speed["networks"].items():
        files = info["files"]
        for kind, row in files.items():
            ratio = row["read_ms"] / files["learnq"]["read_ms"]
            lines.append(f"| {net} ({info['parameters']:,} params) | {names.get(kind, kind)} | "
                         f"{row['bytes'] / 1e3:.1f} | {row['save_ms']:.3f} | {row['read_ms']:.3f} | "
                         f"{row['into_model_ms']:.3f} | {ratio:.2f}x |")
    return lines


def packing_table(packing: dict[str, Any]) -> list[str]:
    m = packing["machine"]
    lines = [f"**Bit packing against diffq's `bitpack`** (`{packing['_path']}`, `benchmarks/packing.py`; "
             f"median of {packing['repeats']} calls after one warm-up, {packing['input_dtype']} codes, torch threads "
             f"{packing['threads']}; {m['cpu']}, {m['cores'] if 'cores' in m else m['cpu_count']} cores, torch "
             f"{m['torch']}; {_load_text(m['load_average_1m'])} (1 min) when it started).", ""]
    if not packing["diffq_available"]:
        lines.append("diffq was not installed when this ran: learnq alone.")
        lines.append("")
    lines += ["| codes | bits | learnq pack ms | diffq pack ms | diffq / learnq | learnq unpack ms | diffq unpack ms | "
              "diffq / learnq |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in packing["rows"]:
        dq = "diffq_pack_ms" in r
        lines.append(f"| {r['numel']:,} | {r['bits']} | {r['learnq_pack_ms']:.2f} | "
                     f"{r['diffq_pack_ms']:.2f} | {r['diffq_pack_ms'] / r['learnq_pack_ms']:.1f}x | "
                     if dq else f"| {r['numel']:,} | {r['bits']} | {r['learnq_pack_ms']:.2f} | - | - | ")
        lines[-1] += (f"{r['learnq_unpack_ms']:.2f} | {r['diffq_unpack_ms']:.2f} | "
                      f"{r['diffq_unpack_ms'] / r['learnq_unpack_ms']:.1f}x |" if dq else
                      f"{r['learnq_unpack_ms']:.2f} | - | - |")
    return lines


def qat_tables(qat: dict[str, Any]) -> list[str]:
    m = qat["meta"]
    lines = [f"**QAT step: learnq DiffQ against float32 and the `diffq` {m['diffq']} package** "
             f"(`{qat['_path']}`, `{m['command']}`; thesis-mnist network, group size "
             f"{m['group_size']}; median per-call wall time of {m['rounds']} interleaved rounds of 10 calls; "
             f"torch threads {m['threads']}, {m['cores']} cores, torch {m['torch']}; "
             f"{_load_text(m.get('loadavg'))}). Train step = forward, backward, Adam step.", "",
             "| batch | float32 ms | learnq DiffQ ms | diffq package ms | learnq / float32 | package / float32 | "
             "package / learnq |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for batch, t in qat["train_step"].items():
        f, lq, dq = (t[k]["wall_ms"] for k in ("float", "learnq", "diffq"))
        lines.append(f"| {batch} | {f:.2f} | {lq:.2f} | {dq:.2f} | {lq / f:.2f}x | {dq / f:.2f}x | {dq / lq:.2f}x |")
    names = {"float": "float32", "learnq": "learnq DiffQ, trained model (eval mode)",
             "learnq-loaded": "learnq DiffQ loaded from its file", "diffq": "diffq package (eval mode)",
             "learnq-loaded, parametrize.cached()": "learnq loaded, under `parametrize.cached()`"}
    lines += ["", "| eval (no grad) | forward of 256 images, ms | vs float32 | test split (1,000 images), ms | "
              "vs float32 |", "| --- | ---: | ---: | ---: | ---: |"]
    b256, split = qat["eval"]["batch256"], qat["eval"]["test_split"]
    for key in dict.fromkeys([*b256, *split]):
        cells = []
        for table in (b256, split):
            if key in table:
                cells += [f"{table[key]['wall_ms']:.3f}", f"{table[key]['wall_ms'] / table['float']['wall_ms']:.2f}x"]
            else:
                cells += ["-", "-"]
        lines.append(f"| {names.get(key, key)} | " + " | ".join(cells) + " |")
    return lines + conv_tables(qat.get("conv", {}))


def conv_tables(conv: dict[str, Any]) -> list[str]:
    """The conv nets of ``qat.py speed`` (when it measured them): per network and batch, each contender's wall time
    per call in ms and, in brackets, its ratio to the float32 model's."""
    lines: list[str] = []
    for part, title in (("train_step", "train step"), ("eval", "eval (no grad)")):
        kinds = list(dict.fromkeys(k for net in conv.values() for t in net.get(part, {}).values() for k in t))
        if not kinds:
            continue
        lines += ["", f"| conv net, {title} | batch | " + " | ".join(kinds) + " |", "| --- | ---: |" + " ---: |" *
                  len(kinds)]
        for name, net in conv.items():
            for batch, t in net.get(part, {}).items():
                base = t.get("float", {}).get("wall_ms")
                cells = [("-" if k not in t else f"{t[k]['wall_ms']:.2f}" +
                          (f" ({t[k]['wall_ms'] / base:.2f}x)" if base else "")) for k in kinds]
                params = f" ({net['params']:,} params)" if "params" in net else ""
                lines.append(f"| {name}{params} | {batch} | " + " | ".join(cells) + " |")
    if lines:
        lines[0:0] = ["", "Conv nets (each weight reused at every output position), ms per call (x float32); "
                      "`g8`, `g16`: group size. The package leaves some tensors in float (`diffq_left_float` in the "
                      "JSON)."]
    return lines


def ptq_table(ptq: dict[str, Any]) -> list[str]:
    summary = ptq["summary"]
    columns = [(net, cfg) for net in summary for cfg in ("W4A8", "W4A4")
               if any(cfg in cells for cells in summary[net].values())]
    rows = list(dict.fromkeys(row for net in summary for row in summary[net]))
    lines = [f"**PTQ calibration time** (`{ptq['_path']}`, `{ptq['command']}`; LeNet-5, 512 calibration "
             "images, conv2, fc1, fc2 and their inputs "
             f"quantized; mean over {len(ptq['seeds'])} seed(s) of the wall time / the process's CPU time in "
             f"seconds / calibration-loss evaluations; torch threads {ptq['threads']}; "
             f"{_load_text(ptq['load_average']['start'])} at the start, {_load_text(ptq['load_average']['end'])} "
             "at the end). The accuracies are in the issue-6 section below.", "",
             "| method | " + " | ".join(f"{net} {cfg}" for net, cfg in columns) + " |",
             "| --- |" + " ---: |" * len(columns)]
    for row in rows:
        cells = []
        for net, cfg in columns:
            s = summary[net].get(row, {}).get(cfg)
            cells.append("" if s is None else f"{s['calib_seconds']['mean']:.2f} / {s['cpu_seconds']['mean']:.2f} / "
                                              f"{s['loss_evals']['mean']:.0f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def section(speed: dict[str, Any], packing: dict[str, Any], qat: dict[str, Any], ptq: dict[str, Any]) -> str:
    intro = ("Generated by `benchmarks/speed.py render` from the benchmarks' JSON files (rerun by `make bench`); "
             "every table names the file and command it comes from. **The machine is shared**: 2 CPU cores used "
             "by several developers at once, so the load average is given next to each set of numbers; ratios "
             "measured side by side in one process (interleaved rounds) are more reliable than absolute times, "
             "which move by up to 25 % between runs.")
    table = table_lines(speed["table"]) + [""] if "table" in speed else []
    floors_path = RESULTS / "speed_floors.json"
    if "table" in speed and floors_path.is_file():
        table += floor_lines(speed["table"], json.loads(floors_path.read_text())) + [""]
    parts = [intro, "", *table, *files_table(speed), "", *packing_table(packing), "", *qat_tables(qat), "",
             *ptq_table(ptq)]
    wrap = {"width": 118, "break_long_words": False, "break_on_hyphens": False}
    return "\n".join(line if line.startswith("|") or not line else textwrap.fill(line, **wrap)
                     for line in parts) + "\n"


def render(args: argparse.Namespace) -> None:
    speed, packing, qat, ptq = (_read(Path(path), writer) | {"_path": _shown(path)} for path, writer in (
        (args.speed, "benchmarks/speed.py measure"),
        (args.packing, "benchmarks/packing.py (under .venv-bench for the diffq columns)"),
        (args.qat_speed, "benchmarks/qat.py speed"), (args.ptq, "benchmarks/ptq.py")))
    text = section(speed, packing, qat, ptq)
    into = Path(args.into)
    if not into.exists():
        into.write_text(f"## Speed\n\n{BEGIN}\n{text}{END}\n", encoding="utf-8")
    else:
        from md_section import replace_section  # benchmarks/md_section.py (this script's folder is on sys.path)

        replace_section(into, BEGIN, END, text)
    print(text)
    print(f"wrote the Speed section of {into}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure", help="save/load time of learnq files against torch.save and safetensors")
    m.add_argument("--repeats", type=int, default=31, help="timed calls per case (median; default 31)")
    m.add_argument("--quick", action="store_true", help="5 repeats")
    m.add_argument("--networks", default=",".join(NETWORKS), help=f"comma-separated subset of {', '.join(NETWORKS)}")
    m.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    m.add_argument("--device", default="cpu")
    m.add_argument("--only-table", action="store_true", help="only the issue-12 ratio table (keeps the JSON's rest)")
    m.add_argument("--no-table", action="store_true", help="only the save/load times per network")
    m.add_argument("--parts", default=",".join(PARTS),
                   help="the parts of the issue-12 table to measure (the others are kept from --out): "
                        f"comma-separated subset of {','.join(PARTS)}")
    m.add_argument("--out", default=str(RESULTS / "speed.json"), help="JSON output (default results/speed.json)")
    m.set_defaults(func=measure)
    r = sub.add_parser("render", help="rewrite the Speed section of BENCHMARKS.md from the results JSON files")
    r.add_argument("--speed", default=str(RESULTS / "speed.json"))
    r.add_argument("--packing", default=str(RESULTS / "packing.json"))
    r.add_argument("--qat-speed", default=str(RESULTS / "qat_speed.json"))
    r.add_argument("--ptq", default=str(RESULTS / "ptq.json"))
    r.add_argument("--into", default=str(BENCHMARKS_MD),
                   help="Markdown file holding the speed.py markers (a new file gets the section alone)")
    r.set_defaults(func=render)
    args = p.parse_args(argv)
    if getattr(args, "quick", False):
        args.repeats = 5
    if getattr(args, "repeats", 1) < 1:
        p.error("--repeats must be at least 1")
    return args


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    ns = parse_args()
    ns.func(ns)
