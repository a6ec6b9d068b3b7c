"""Benchmark learnq.packing against diffq's Cython ``bitpack`` (Défossez et al., 2022, DiffQ's storage step).

Times ``pack`` and ``unpack`` at 2, 3, 4, 8 and 16 bits on 1M and 8M random codes, reports the median of several
repeats, prints a table and writes ``benchmarks/results/packing.json``. Both libraries run with
``torch.set_num_threads(1)`` because diffq's bitpack is single-threaded.

diffq is optional: it lives in the benchmark environment (it pulls Cython and builds an extension)::

    make bench-env    # .venv-bench with diffq==0.2.4 and the other peers (benchmarks/envs/README.md)
    PYTHONPATH=. .venv-bench/bin/python benchmarks/packing.py

Without diffq the script still runs and reports learnq alone. diffq's ``bitpack.pack(x, nbits)`` takes any integer
tensor (cast to int16, so codes below 2**15 only: its 16-bit column is skipped) and returns int64 words;
``bitpack.unpack(packed, length)`` returns int16 codes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from functools import partial
from pathlib import Path

import torch

from learnq.packing import pack, unpack

try:
    from bench_timing import cpu_name, median_ms
except ImportError:  # imported as benchmarks.packing
    from benchmarks.bench_timing import cpu_name, median_ms

try:
    from diffq import bitpack as diffq_bitpack
except ImportError:  # diffq is an optional comparison, not a dependency
    diffq_bitpack = None

RESULTS = Path(__file__).resolve().parent / "results" / "packing.json"


def run(sizes: list[int], bit_widths: list[int], repeats: int, dtype: torch.dtype, seed: int) -> dict:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        for b in bit_widths:
            codes = torch.randint(0, 2**b, (n,), generator=gen, dtype=torch.int64).to(dtype)
            packed = pack(codes, b)
            if not torch.equal(unpack(packed, b, n), codes.to(torch.int32)):
                raise RuntimeError(f"learnq round trip failed at bits={b}, n={n}")
            row = {
                "numel": n,
                "bits": b,
                "learnq_pack_ms": median_ms(partial(pack, codes, b), repeats),
                "learnq_unpack_ms": median_ms(partial(unpack, packed, b, n), repeats),
                "learnq_bytes": packed.numel(),
            }
            if diffq_bitpack is not None and b < 16:  # diffq casts codes to int16: 16-bit codes do not fit
                dq = diffq_bitpack.pack(codes, b)
                if not torch.equal(diffq_bitpack.unpack(dq, n).to(torch.int32), codes.to(torch.int32)):
                    raise RuntimeError(f"diffq round trip failed at bits={b}, n={n}")
                row["diffq_pack_ms"] = median_ms(partial(diffq_bitpack.pack, codes, b), repeats)
                row["diffq_unpack_ms"] = median_ms(partial(diffq_bitpack.unpack, dq, n), repeats)
                row["diffq_bytes"] = dq.numel() * dq.element_size()
            rows.append(row)
            _print_row(row)
    return {
        "benchmark": "learnq.packing vs diffq.bitpack",
        "unit": "milliseconds, median of repeats after one warm-up call",
        "repeats": repeats,
        "input_dtype": str(dtype),
        "threads": torch.get_num_threads(),
        "diffq_available": diffq_bitpack is not None,
        "machine": {
            "cpu": cpu_name(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "load_average_1m": os.getloadavg()[0],  # the machine may be shared: high load inflates all timings
        },
        "rows": rows,
    }


def _fmt(row: dict, key: str) -> str:
    return f"{row[key]:9.2f}" if key in row else f"{'-':>9}"


def _print_header() -> None:
    print(f"{'numel':>9} {'bits':>4} | {'pack ms':>9} {'diffq':>9} | {'unpack ms':>9} {'diffq':>9} | ratio p/u")


def _print_row(row: dict) -> None:
    ratio = "-"
    if "diffq_pack_ms" in row:
        ratio = (
            f"{row['diffq_pack_ms'] / row['learnq_pack_ms']:.1f}x/"
            f"{row['diffq_unpack_ms'] / row['learnq_unpack_ms']:.1f}x"
        )
    print(
        f"{row['numel']:>9} {row['bits']:>4} | {_fmt(row, 'learnq_pack_ms')} {_fmt(row, 'diffq_pack_ms')} | "
        f"{_fmt(row, 'learnq_unpack_ms')} {_fmt(row, 'diffq_unpack_ms')} | {ratio}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 8_000_000], help="numbers of codes")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 8, 16], help="bit widths")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per case (median reported)")
    parser.add_argument("--dtype", default="int32", choices=["uint8", "int16", "int32", "int64"], help="code dtype")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the codes")
    parser.add_argument("--out", type=Path, default=RESULTS, help="JSON file to write")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if dtype == torch.uint8 and max(args.bits) > 8:
        parser.error("--dtype uint8 holds codes of at most 8 bits; drop the larger --bits")
    print(
        f"learnq.packing vs diffq.bitpack, torch {torch.__version__}, torch.set_num_threads(1), "
        f"{args.dtype} codes, median of {args.repeats}; diffq {'found' if diffq_bitpack else 'NOT installed'}"
    )
    _print_header()
    result = run(args.sizes, args.bits, args.repeats, dtype, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
