"""Benchmark for issue 18: which entropy coder each code tensor gets, and what every candidate costs against the bound.

For every quantized tensor of the model files ``benchmarks/entropy_codec.py sizes`` leaves in its work folder (the
``*.ans.safetensors`` of every PTQ/QAT row, mnist5k LeNet and thesis MLP) and of the cached text-LM files
(``~/.cache/learnq-bench/text``, benchmarks/text.py): its packed bytes, Σ n·H (bytes, no model), the rANS bound
(Σ n·H + the histogram, :func:`learnq.entropy_codec.bound_bits`), and the bytes of constriction's rANS, pcodec
(level 8, classic mode, no delta) and zstd level 1 on the packed codes (zstandard, benchmark-only: the candidate
with Huffman-coded literals), and the per-tensor choice ``codec="ans"`` makes. No timings (those are
``entropy_codec.py speed``'s, under the bench lock); sizes are deterministic.

    .venv/bin/python benchmarks/entropy_coders.py        # results/entropy_coders.json + .md

Summary per coder: total bytes over the total bound and over Σ n·H, the largest per-tensor ratio to the bound on the
tensors of at least 4 kB of packed codes (where decode time matters) and on all, and the most bytes a tensor is
above 1.05x its bound (the goal: ≤ 1.05x the bound plus fixed metadata).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from entropy_codec import TEXT, WORK  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
BIG = 4096  # packed bytes


def _files() -> list[Path]:
    return sorted(WORK.glob("*.ans.safetensors")) + (sorted(TEXT.glob("*.safetensors")) if TEXT.is_dir() else [])


def scan() -> list[dict]:
    import zstandard

    from learnq import entropy_codec
    from learnq.code_packing import split_streams
    from learnq.errors import LearnqError
    from learnq.file_layout import encode
    from learnq.grid import QuantizedTensor
    from learnq.model_file import read

    zc = zstandard.ZstdCompressor(level=1)
    rows = []
    for path in _files():
        try:
            entries = read(path).entries
        except LearnqError as exc:  # a leftover file of an older learnq in the work folder
            print(f"skipped {path.name}: {exc}", flush=True)
            continue
        for name, value in entries.items():
            if not isinstance(value, QuantizedTensor):
                continue
            enc = encode(name, value)
            if not enc.codes.numel():
                continue
            counts = [torch.unique(s, return_counts=True)[1].double().numpy()
                      for s in split_streams(enc.codes, enc.streams)]
            h = sum(float(-(c * np.log2(c / c.sum())).sum()) for c in counts if c.size) / 8  # Σ n·H, bytes
            rans = entropy_codec.encode(enc.codes, enc.streams, coder="ans")
            pco = entropy_codec.encode(enc.codes, enc.streams, coder="pco")
            chosen = entropy_codec.encode(enc.codes, enc.streams)
            rows.append({"file": path.name, "tensor": name, "streams": enc.streams, "packed": enc.codes.numel(),
                         "entropy": h, "bound": rans.bound_bits / 8, "rans": rans.nbytes, "pco": pco.nbytes,
                         "zstd-1": len(zc.compress(enc.codes.numpy().tobytes())), "chosen": chosen.nbytes,
                         "chosen_coder": chosen.codec[0]})
    return rows


def summary(rows: list[dict]) -> dict:
    out = {"tensors": len(rows), "big_tensors": sum(r["packed"] >= BIG for r in rows),
           "chosen_pco": sum(r["chosen_coder"] == "pco" for r in rows)}
    for k in ("rans", "pco", "zstd-1", "chosen"):
        ratio = np.array([r[k] / r["bound"] for r in rows])
        big = np.array([r["packed"] >= BIG for r in rows])
        out[k] = {"total_over_bound": sum(r[k] for r in rows) / sum(r["bound"] for r in rows),
                  "total_over_entropy": sum(r[k] for r in rows) / sum(r["entropy"] for r in rows),
                  "max_over_bound_big": float(ratio[big].max()), "max_over_bound_all": float(ratio.max()),
                  "max_bytes_over_1.05_bound": float(max(r[k] - 1.05 * r["bound"] for r in rows))}
    return out


def render(s: dict) -> str:
    lines = [f"{s['tensors']} code tensors ({s['big_tensors']} of ≥ {BIG} packed bytes) of the benchmark's model "
             f"files; the choice of `codec=\"ans\"` codes {s['chosen_pco']} with pcodec, the others with rANS.", "",
             "| coder | total ÷ bound | total ÷ Σ n·H | max ÷ bound, tensors ≥ 4 kB | max ÷ bound, all | "
             "most bytes above 1.05x bound |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    names = {"rans": "constriction rANS", "pco": "pcodec (level 8)", "zstd-1": "zstd level 1 (packed codes)",
             "chosen": "per-tensor choice (`codec=\"ans\"`)"}
    for k, label in names.items():
        v = s[k]
        lines.append(f"| {label} | {v['total_over_bound']:.4f} | {v['total_over_entropy']:.4f} | "
                     f"{v['max_over_bound_big']:.4f} | {v['max_over_bound_all']:.3f} | "
                     f"{v['max_bytes_over_1.05_bound']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    torch.set_num_threads(1)
    rows = scan()
    s = summary(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(json.dumps(r, ensure_ascii=False) for r in rows)  # one line a tensor
    (RESULTS / "entropy_coders.json").write_text(
        f'{{"summary": {json.dumps(s, indent=1, ensure_ascii=False)},\n"tensors": [\n{lines}\n]}}\n')
    text = render(s)
    (RESULTS / "entropy_coders.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
