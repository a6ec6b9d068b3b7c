"""DKM's memory on a 4M-weight layer (issue 14): peak memory and time of one training step, chunked vs unchunked.

DKM's ``n × k`` attention (Cho et al. 2021) is its known limit: a 2048×2048 layer (4,194,304 weights) at 4 bits has
a 4M × 16 attention matrix (256 MiB in float32) per iteration, and autograd through it keeps several of them.
learnq's DKM (``learnq/quantizers/dkm.py``) runs the centroid iterations without autograd and the differentiable
update and soft weights in chunks of rows recomputed in the backward (``learnq/clustering.py``), so memory is
bounded by the chunk. Each configuration runs in a fresh process; the peak resident memory of one training step
(forward + backward of ``W̃.sum()``, from the prepared quantizer) is ``VmHWM`` after resetting it
(``/proc/self/clear_refs``), minus the resident memory before the step. torch.set_num_threads(1); median of
``--repeats`` steps. Linux only (``/proc``).

    flock /work/wt/bench.lock nice -n 10 .venv/bin/python benchmarks/dkm_memory.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "dkm_memory.json"


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def child(bits: int, dim: int, chunked: bool, repeats: int, side: int) -> dict:
    import torch

    from learnq.quantizers.dkm import DKMQuantizer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(side, side) * 0.02)
    n = w.numel() // dim
    chunk = (1 << 22) if chunked else n * (2**bits) * dim  # one chunk: the whole n × k attention at once
    q = DKMQuantizer(w.detach(), bits, dim, __import__("learnq").granularity.Granularity("tensor"), tau=0.05,
                     iters=3, chunk_elements=chunk)
    q.train()
    times, peaks = [], []
    for _ in range(repeats):
        w.grad = None
        before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        t0 = time.perf_counter()
        q.train_forward(w).sum().backward()
        times.append(time.perf_counter() - t0)
        peaks.append(_status("VmHWM") - before)
    times.sort()
    peaks.sort()
    return {"bits": bits, "dim": dim, "weights": w.numel(), "chunked": chunked, "rows_per_chunk": q.rows,
            "step_seconds": times[len(times) // 2], "peak_step_bytes": peaks[-1],
            "attention_bytes": n * 2**bits * 4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=4, type=int, metavar=("BITS", "DIM", "CHUNKED", "SIDE"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--side", type=int, default=2048)
    args = parser.parse_args()
    if args.child:
        bits, dim, chunked, side = args.child
        print(json.dumps(child(bits, dim, bool(chunked), args.repeats, side)))
        return
    rows = []
    for bits, dim in ((4, 1), (2, 1), (4, 4)):
        for chunked in (1, 0):
            proc = subprocess.run([sys.executable, __file__, "--child", str(bits), str(dim), str(chunked),
                                   str(args.side), "--repeats", str(args.repeats)], capture_output=True, text=True)
            if proc.returncode:
                rows.append({"bits": bits, "dim": dim, "chunked": bool(chunked), "error": proc.stderr[-300:]})
            else:
                rows.append(json.loads(proc.stdout))
            print(rows[-1], flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"threads": 1, "rows": rows}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
