"""``learnq inspect FILE``: what a learnq model file holds and how big it is (see learnq.checkpoint, learnq.size).

Prints one row per tensor (name, shape, bits, granularity, method, stored bytes: those of its slices of the
file's blobs, entropy-coded bytes; a palettized tensor's bits per index and its palette's shape and dtype; the codec
and packed bytes when some codes are entropy-coded), the totals (naive, packed, the entropy bound of
``codec="ans"``, stored, file, header, entropy, zlib and float32 bytes, ratio vs float32) and the user metadata;
``--json`` prints the same as one object. A missing or bad file ends with exit status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json

from learnq.checkpoint import read
from learnq.cli.common import add_common, format_table, print_json

_MAX_VALUE = 70


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("inspect", help="show the tensors, sizes and metadata of a learnq model file",
                                   description="Show the tensors, sizes and metadata of a learnq model file.")
    parser.add_argument("file", help="a model file written by learnq (learnq.save)")
    add_common(parser)  # --seed is accepted (every command takes it) and changes nothing here
    parser.set_defaults(func=run)


def _short(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def run(args: argparse.Namespace) -> int:
    mf = read(args.file)
    report = mf.size
    if args.json:
        out = {"file": mf.path, "format_version": mf.version, "metadata": mf.metadata}
        out.update(report.to_dict())
        print_json(out)
        return 0
    rows = [[t.name, "x".join(str(s) for s in t.shape) or "scalar", t.bits if t.kind == "quantized" else t.dtype,
             t.granularity or "-", t.method or "-", t.stored_bytes, round(t.entropy_bits / 8)]
            for t in report.tensors]
    head = ["name", "shape", "bits", "granularity", "method", "bytes", "entropy B"]
    if any(t.codec != "packed" for t in report.tensors):  # entropy-coded codes (codec "ans"): packed size beside
        head += ["codec", "packed B"]
        rows = [[*row, t.codec, t.packed_bytes] for row, t in zip(rows, report.tensors, strict=True)]
    if any(t.palette for t in report.tensors):  # palettized tensors (DKM, k-means): bits per index, the LUT's shape
        head.append("palette (groups x k x d)")
        rows = [[*row, t.palette or "-"] for row, t in zip(rows, report.tensors, strict=True)]
    print(f"{mf.path}: learnq model file, format version {mf.version}, {len(report.tensors)} tensors")
    print(format_table(head, rows))
    print()
    totals = [["naive", round(report.naive_bytes)], ["packed", report.packed_bytes],
              ["entropy bound (ans)", round(report.bound_bytes)], ["stored", report.stored_bytes],
              ["file", report.file_bytes],
              ["header", report.header_bytes],
              ["entropy", round(report.entropy_bytes)], ["zlib", report.zlib_bytes],
              ["float32", report.float32_bytes], ["ratio vs float32", f"{report.ratio:.2f}x"]]
    print(format_table(["total", "bytes"], totals))
    if mf.metadata:
        print()
        print("metadata:")
        for key, value in mf.metadata.items():
            print(f"  {key}: {_short(value)}")
    return 0
