"""Latency and throughput of ONNX files in onnxruntime (CPU), several files measured in interleaved rounds so that
their ratios are fair on a shared machine: round r runs every (file, threads, batch) configuration once, in the
same order, and the figures are medians over rounds.

No paper. ``learnq bench`` prints them; ``benchmarks/ort.py`` uses them for the comparison with onnxruntime's
``quantize_static``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from learnq.errors import ConfigError


def _session(path: str | os.PathLike, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / NoSuchFile
        raise ConfigError(f"onnxruntime cannot load {path}: {exc}") from exc


def _input(session: Any, batch: int, seed: int) -> tuple[str, np.ndarray]:
    meta = session.get_inputs()[0]
    shape = list(meta.shape)
    if isinstance(shape[0], int) and shape[0] != batch:
        raise ConfigError(f"the ONNX input {meta.name!r} has a fixed batch size {shape[0]}; export it with a dynamic "
                          "batch to measure batch {batch}")
    if any(not isinstance(s, int) for s in shape[1:]):
        raise ConfigError(f"the ONNX input {meta.name!r} has dynamic sizes {shape[1:]} besides the batch")
    rng = np.random.default_rng(seed)
    return meta.name, rng.standard_normal([batch] + shape[1:]).astype(np.float32)


def bench(files: dict[str, str | os.PathLike], *, threads: Sequence[int] = (1, 2), batches: Sequence[int] = (1, 64),
          rounds: int = 7, min_seconds: float = 0.05, seed: int = 0, baseline: str | None = None,
          progress: Any = None) -> list[dict[str, Any]]:
    """Median latency (seconds per batch) and throughput (samples/s) of every file for every (threads, batch),
    interleaved. ``baseline``: the key of ``files`` the others are divided by (``speedup`` = baseline latency /
    latency). Each measurement repeats the run until ``min_seconds`` have passed (one warm-up run first)."""
    for name, value in (("rounds", rounds),):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    if baseline is not None and baseline not in files:
        raise ConfigError(f"baseline {baseline!r} is not one of the files {sorted(files)}")
    configs = [(t, b) for t in threads for b in batches]
    sessions = {(name, t): _session(path, t) for name, path in files.items() for t in threads}
    feeds = {(name, t, b): _input(sessions[(name, t)], b, seed) for name in files for t, b in configs}
    reps: dict[tuple[str, int, int], int] = {}
    for key, (inp, x) in feeds.items():  # warm-up; repetitions per measurement from one timed run
        s = sessions[(key[0], key[1])]
        s.run(None, {inp: x})
        start = time.perf_counter()
        s.run(None, {inp: x})
        reps[key] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    times: dict[tuple[str, int, int], list[float]] = {k: [] for k in feeds}
    for r in range(rounds):
        for key, (inp, x) in feeds.items():
            s, n = sessions[(key[0], key[1])], reps[key]
            start = time.perf_counter()
            for _ in range(n):
                s.run(None, {inp: x})
            times[key].append((time.perf_counter() - start) / n)
        if progress is not None:
            progress(r + 1, rounds)
    rows = []
    for (name, t, b), ts in times.items():
        latency = statistics.median(ts)
        row = {"file": name, "threads": t, "batch": b, "latency_s": latency, "throughput": b / latency,
               "rounds": rounds, "repeats": reps[(name, t, b)]}
        if baseline is not None:
            row["speedup"] = statistics.median(times[(baseline, t, b)]) / latency
        rows.append(row)
    return rows


__all__ = ["bench"]
