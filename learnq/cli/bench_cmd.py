"""``learnq bench FILE.onnx [--baseline FLOAT.onnx] [--threads 1 2] [--batch 1 64] [--rounds 7]``: latency and
throughput of an ONNX file in onnxruntime (CPU), and its speed-up over a baseline file (e.g. the float graph of the
same model), measured in interleaved rounds (:mod:`learnq.export.bench`). Timings depend on the machine and its
load: compare files measured in one run only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from learnq.cli.common import add_common, format_table, print_json
from learnq.errors import ConfigError
from learnq.export.bench import bench


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="latency and throughput of an ONNX file in onnxruntime, against a baseline file",
        description="Time an ONNX file with onnxruntime on the CPU (random inputs of its input shape), for every "
                    "thread count and batch size, in interleaved rounds with the baseline file; print median "
                    "latency, throughput and the speed-up over the baseline.")
    parser.add_argument("path", help="the ONNX file to measure")
    parser.add_argument("--baseline", default=None, help="an ONNX file to compare with (e.g. the float model)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op threads (default 1 2)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 64], help="batch sizes (default 1 64)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds; medians over them (default 7)")
    add_common(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    files = {"model": Path(args.path).expanduser()}
    if args.baseline:
        files["baseline"] = Path(args.baseline).expanduser()
    for path in files.values():
        if not path.is_file():
            raise ConfigError(f"{path} is not a file; give an ONNX file written by learnq export")
    for name, values in (("--threads", args.threads), ("--batch", args.batch)):
        if any(v < 1 for v in values):
            raise ConfigError(f"{name} values must be >= 1, got {values}")
    quiet = args.quiet or args.json or not sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        if not quiet:
            print(f"\rround {done}/{total}", end="" if done < total else "\n", file=sys.stderr)

    rows = bench({k: str(v) for k, v in files.items()}, threads=args.threads, batches=args.batch,
                 rounds=args.rounds, seed=args.seed, baseline="baseline" if args.baseline else None,
                 progress=progress)
    if args.json:
        print_json({"file": str(files["model"]), "baseline": args.baseline, "rows": rows})
        return 0
    headers = ["file", "threads", "batch", "latency ms", "samples/s"] + (["speedup"] if args.baseline else [])
    table = [[r["file"], r["threads"], r["batch"], 1e3 * r["latency_s"], r["throughput"]]
             + ([r["speedup"]] if args.baseline else []) for r in rows]
    print(format_table(headers, table))
    return 0
