"""The timing scaffolding of the speed benchmarks (``speed.py``, ``speed_table.py``, ``speed_floors.py``,
``packing.py``): how a path is timed against its baseline, and what each timing records about the machine.

The project's rule (BRIEF, "speed goes to benchmarks/ as ratios against a baseline in the same process (interleaved
rounds, median)"): :func:`interleaved` is the one loop of rounds (every function once per round, through a
measurement: :func:`per_call`'s median, :func:`mean_call`'s wall and thread CPU time per call, or what the function
returns; the order rotating by one each round, or fixed); :func:`ratio_row` times two sides in it, per round the
per-call median of each side, and reports the median and the minimum of the rounds' ratios; :func:`median_ms` is one
side alone (median after a warm-up). ``entropy_codec.py``, ``ptq_more.py``, ``qat_speed_worker.py`` and
``mse_search_check.py`` run their rounds on :func:`interleaved` too. The machine is shared (2 cores, several people), so
every part of a run records its duration and the load average at its start and end (:func:`timed_part`,
:func:`load_range`) and every result file the CPU, versions and load (:func:`machine`). The scripts fix the torch
threads themselves (``torch.set_num_threads(1)`` unless an option says otherwise) and run under the machine's bench
lock (``flock /work/wt/bench.lock nice -n 10 ...``).
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch

ROOT = Path(__file__).resolve().parents[1]
T = TypeVar("T")


def per_call(fn: Callable[..., Any], calls: int, setup: Callable[[], Any] | None = None) -> float:
    """Median wall time (s) of ``calls`` calls of ``fn``; with ``setup`` (untimed) each call gets ``fn(setup())``."""
    times = []
    for _ in range(calls):
        arg = setup() if setup else None
        start = time.perf_counter()
        fn(arg) if setup else fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mean_call(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    """Wall and thread CPU seconds per call of ``calls`` back-to-back calls of ``fn`` (the mean: for calls too short
    to time one by one, e.g. a training step of a small network)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - wall) / calls, (time.thread_time() - cpu) / calls


def interleaved(fns: Mapping[str, Callable[[], Any]], rounds: int,
                measure: Callable[[Callable[[], Any]], T] | None = None, *, rotate: bool = True) -> dict[str, list[T]]:
    """``rounds`` interleaved rounds: in each, every function of ``fns`` once through ``measure`` (None: one call's
    wall seconds). Round r starts with the r-th function (``rotate``: none always runs first, right after another's
    allocations; with two functions the order alternates) or always in the given order. Returns each function's
    measurements in round order."""
    measure = measure or (lambda fn: per_call(fn, 1))
    keys = list(fns)
    out: dict[str, list[T]] = {k: [] for k in keys}
    for r in range(rounds):
        shift = r % len(keys) if rotate and keys else 0
        for k in keys[shift:] + keys[:shift]:
            out[k].append(measure(fns[k]))
    return out


def median_ms(fn: Callable[..., Any], repeats: int, setup: Callable[[], Any] | None = None, warmup: int = 1) -> float:
    """Median wall time (ms) of ``fn`` over ``repeats`` calls after ``warmup`` untimed calls (page cache, lazy
    initialisation); ``setup`` as in :func:`per_call`."""
    for _ in range(warmup):
        per_call(fn, 1, setup)
    return 1e3 * per_call(fn, repeats, setup)


def ratio_row(learnq_fn: Callable, base_fn: Callable, rounds: int, calls: int, setup: Callable | None = None,
              warmup: int = 2) -> dict[str, Any]:
    """Interleaved rounds (:func:`interleaved`, learnq first in even rounds): per round the per-call median of each
    side; the ratios' median and minimum."""
    for _ in range(warmup):
        per_call(learnq_fn, 1, setup)
        per_call(base_fn, 1, setup)
    t = interleaved({"learnq": learnq_fn, "baseline": base_fn}, rounds, lambda fn: per_call(fn, calls, setup))
    lq, base = t["learnq"], t["baseline"]
    ratios = [a / b for a, b in zip(lq, base, strict=True)]
    return {"learnq_ms": 1e3 * statistics.median(lq), "baseline_ms": 1e3 * statistics.median(base),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "rounds": rounds, "calls": calls}


@contextmanager
def timed_part(record: dict[str, Any], part: str, **fields: Any) -> Iterator[None]:
    """Time the block as part ``part`` of a run: ``record[part]`` gets its seconds, the load average (1/5/15 min) at
    its start and end, and ``fields``. Nothing is recorded when the block raises."""
    start, load = time.perf_counter(), list(os.getloadavg())
    yield
    record[part] = {"seconds": time.perf_counter() - start, "loadavg_start": load,
                    "loadavg_end": list(os.getloadavg()), **fields}


def load_range(parts: Mapping[str, Mapping[str, Any]]) -> tuple[float, float] | None:
    """The lowest and highest 1-minute load average at the starts and ends of the recorded parts (None: none)."""
    loads = [p["loadavg_start"][0] for p in parts.values()] + [p["loadavg_end"][0] for p in parts.values()]
    return (min(loads), max(loads)) if loads else None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, Any]:
    """CPU, cores, versions and the load average: the machine is shared, so every timing carries its load."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "commit": commit, "loadavg": list(os.getloadavg()),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


__all__ = ["cpu_name", "interleaved", "load_range", "machine", "mean_call", "median_ms", "per_call", "ratio_row",
           "timed_part"]
