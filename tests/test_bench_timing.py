"""The timing scaffolding the speed benchmarks share (benchmarks/bench_timing.py), on a fake clock: what is timed,
in which order, and what a ratio row and a part record hold. No wall-clock time is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_timing  # noqa: E402


class _Clock:
    """``time.perf_counter`` that moves only when a timed function says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(bench_timing.time, "perf_counter", c)
    return c


def test_per_call_is_the_median_and_setup_is_untimed(clock):
    costs = iter([3.0, 1.0, 2.0])
    made = []

    def setup():
        clock.now += 100.0  # untimed: before the start is read
        made.append(1)
        return len(made)

    def fn(arg):
        clock.now += next(costs)

    assert bench_timing.per_call(fn, 3, setup) == 2.0 and made == [1, 1, 1]


def test_ratio_row_interleaves_rounds_and_reports_median_and_min(clock):
    order = []
    lq_costs = iter([0, 0, 4.0, 6.0, 8.0])  # two warm-up calls, then one call per round
    base_costs = iter([0, 0, 2.0, 2.0, 2.0])

    def lq():
        order.append("lq")
        clock.now += next(lq_costs)

    def base():
        order.append("base")
        clock.now += next(base_costs)

    row = bench_timing.ratio_row(lq, base, rounds=3, calls=1)
    # warm-up lq, base twice; then rounds alternate which side goes first
    assert order == ["lq", "base", "lq", "base", "lq", "base", "base", "lq", "lq", "base"]
    assert row == {"learnq_ms": 6000.0, "baseline_ms": 2000.0, "ratio_median": 3.0, "ratio_min": 2.0, "rounds": 3,
                   "calls": 1}


def test_interleaved_rotates_the_order_and_passes_each_measurement_through(clock):
    order = []

    def make(name, cost):
        def fn():
            order.append(name)
            clock.now += cost
        return fn

    fns = {"a": make("a", 1.0), "b": make("b", 2.0), "c": make("c", 3.0)}
    assert bench_timing.interleaved(fns, 4) == {"a": [1.0] * 4, "b": [2.0] * 4, "c": [3.0] * 4}  # one call's seconds
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]  # each round starts one later
    order.clear()
    calls = bench_timing.interleaved(fns, 2, lambda fn: (fn(), len(order))[1], rotate=False)
    assert order == ["a", "b", "c", "a", "b", "c"] and calls == {"a": [1, 4], "b": [2, 5], "c": [3, 6]}
    assert bench_timing.interleaved({}, 3) == {}


def test_mean_call_is_wall_and_thread_cpu_per_call(clock, monkeypatch):
    cpu = _Clock()
    monkeypatch.setattr(bench_timing.time, "thread_time", cpu)
    costs = iter([1.0, 2.0, 6.0])

    def fn():
        cost = next(costs)
        clock.now += cost
        cpu.now += cost / 2

    assert bench_timing.mean_call(fn, 3) == (3.0, 1.5)


def test_median_ms_warms_up_first(clock):
    costs = iter([50.0, 0.001, 0.003, 0.002])

    def fn():
        clock.now += next(costs)

    assert bench_timing.median_ms(fn, 3) == pytest.approx(2.0)  # the 50 s warm-up is not counted


def test_timed_part_records_seconds_load_and_fields_and_nothing_on_error(clock):
    record: dict = {}
    with bench_timing.timed_part(record, "eval", rounds=7):
        clock.now += 1.5
    assert record["eval"]["seconds"] == 1.5 and record["eval"]["rounds"] == 7
    assert len(record["eval"]["loadavg_start"]) == 3 and len(record["eval"]["loadavg_end"]) == 3
    with pytest.raises(RuntimeError), bench_timing.timed_part(record, "file"):
        raise RuntimeError("interrupted")
    assert "file" not in record
    parts = {"a": {"loadavg_start": [2.0], "loadavg_end": [5.0]}, "b": {"loadavg_start": [1.0], "loadavg_end": [3.0]}}
    assert bench_timing.load_range(parts) == (1.0, 5.0) and bench_timing.load_range({}) is None
