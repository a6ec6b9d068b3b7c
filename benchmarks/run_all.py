"""Rerun every benchmark of BENCHMARKS.md (``make bench``), in order, and regenerate its Speed section.

The steps, each a separate process (so one benchmark's threads, seeds and imports cannot leak into the next):

1. ``packing``      ``benchmarks/packing.py``: learnq.packing against diffq's ``bitpack``; run by
   ``.venv-bench/bin/python`` (the only environment with the ``diffq`` package), learnq on ``PYTHONPATH``.
2. ``speed``        ``benchmarks/speed.py measure``: model-file save and load time.
3. ``regularizers`` ``benchmarks/regularizers.py --first-seed 1`` (issue 4: 9 methods x 3 seeds), then the ASAM
   row (``--methods symreg+satnl+asam``) into ``regularizers_asam``.
4. ``qat``          ``benchmarks/qat.py pareto`` (issue 5) and ``benchmarks/qat.py speed`` (learnq's DiffQ against
   the diffq package; qat.py starts ``.venv-bench/bin/python`` itself).
5. ``ptq``          ``benchmarks/ptq.py`` (issue 6).
6. ``peers``        ``benchmarks/peers.py`` (issue 17): learnq side by side with AIMET, NNCF, Brevitas, torchao and
   optimum-quanto (each in ``.venv-bench``); a full run also renders its README.md and BENCHMARKS.md tables.
7. ``render``       ``benchmarks/speed.py render``: the Speed section of BENCHMARKS.md from the JSON files above.

The per-issue sections of BENCHMARKS.md are readings written by hand from ``results/*.md``, which the benchmarks
rewrite; at the end the script lists the result files that changed (``git diff --stat``) so that the readings can be
checked against the new numbers. The one-seed DSMM/KURE strength sweep (``regularizers_sweep``) is a tuning run and
is not repeated (its JSON holds the command of every point).

``--quick`` runs every benchmark's smoke mode and writes everything, the Speed section included, under
``--out-dir`` (default ``$TMPDIR/learnq-bench-quick``), leaving ``benchmarks/results`` and BENCHMARKS.md alone.
Without ``.venv-bench`` the script stops, unless ``--without-diffq`` is given (then packing runs learnq alone and
``qat speed`` and ``peers`` are skipped). A failing step stops the run (``--keep-going``: run the rest) and the
script exits 1, naming it.

    .venv/bin/python benchmarks/run_all.py            # full: about 80 min on 2 shared cores
    .venv/bin/python benchmarks/run_all.py --quick    # smoke: a few minutes
    .venv/bin/python benchmarks/run_all.py --only packing,speed,render
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
NAMES = ("packing", "speed", "regularizers", "qat", "ptq", "peers", "render")


@dataclass(frozen=True)
class Step:
    """One command of one benchmark: ``name`` (the benchmark), ``label`` (what is printed), the argv."""

    name: str
    label: str
    argv: list[str]


def steps(quick: bool, out: Path, python: str, with_diffq: bool) -> list[Step]:
    """The commands of a full (``quick=False``, results in ``benchmarks/results``) or quick run (results in ``out``)."""
    q = ["--quick"] if quick else []
    packing_py = str(BENCH_PYTHON) if with_diffq else python
    packing = [packing_py, str(BENCH / "packing.py"), "--out", str(out / "packing.json")]
    if quick:
        packing += ["--sizes", "1000000", "--repeats", "3"]
    regularizers = [python, str(BENCH / "regularizers.py"), *q, "--out", str(out / "regularizers")]
    if not quick:
        regularizers[2:2] = ["--first-seed", "1"]  # the reported seeds 1-3 (seed 0 chose dsmm-tuned's strength)
    qat_speed = [python, str(BENCH / "qat.py"), "speed", "--out", str(out / "qat_speed.json")]
    if quick:
        qat_speed += ["--epochs", "1", "--rounds", "3", "--conv-rounds", "2", "--conv-steps", "1"]
    ptq_json = out / ("ptq-quick.json" if quick else "ptq.json")
    render = [python, str(BENCH / "speed.py"), "render", "--speed", str(out / "speed.json"),
              "--packing", str(out / "packing.json"), "--qat-speed", str(out / "qat_speed.json"),
              "--ptq", str(ptq_json), "--into", str(out / "speed.md" if quick else BENCH / "BENCHMARKS.md")]
    plan = [
        Step("packing", "packing.py" + ("" if with_diffq else " (learnq alone: --without-diffq)"), packing),
        Step("speed", "speed.py measure", [python, str(BENCH / "speed.py"), "measure", *q, "--out",
                                          str(out / "speed.json")]),
        Step("regularizers", "regularizers.py", regularizers),
        Step("qat", "qat.py pareto", [python, str(BENCH / "qat.py"), "pareto", *q, "--out", str(out / "qat")]),
        Step("ptq", "ptq.py", [python, str(BENCH / "ptq.py"), *q, "--out", str(out)]),
        Step("render", "speed.py render", render),
    ]
    if not quick:  # the ASAM row of the issue-4 table: a separate run with the same seeds and recipe
        plan.insert(3, Step("regularizers", "regularizers.py (ASAM row)",
                            [python, str(BENCH / "regularizers.py"), "--first-seed", "1", "--methods",
                             "symreg+satnl+asam", "--out", str(out / "regularizers_asam")]))
    if with_diffq:
        plan.insert(next(i for i, s in enumerate(plan) if s.name == "ptq"), Step("qat", "qat.py speed", qat_speed))
        peers = [python, str(BENCH / "peers.py"), *q, "--out", str(out / ("peers-quick.json" if quick else
                                                                         "peers.json"))]
        plan.insert(next(i for i, s in enumerate(plan) if s.name == "render"), Step("peers", "peers.py", peers))
    return plan


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run(plan: list[Step], keep_going: bool) -> list[tuple[Step, int, float]]:
    """Run ``plan`` in order, printing each command, its output and its wall time; (step, exit code, seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done: list[tuple[Step, int, float]] = []
    for i, step in enumerate(plan, 1):
        shown = " ".join(a[len(str(ROOT)) + 1:] if a.startswith(str(ROOT) + os.sep) else a for a in step.argv)
        print(f"\n=== [{i}/{len(plan)}] {step.name}: {step.label}\n    {shown}  "
              f"(load average {os.getloadavg()[0]:.1f})", flush=True)
        start = time.perf_counter()
        try:
            code = subprocess.run(step.argv, cwd=ROOT, env=env, check=False).returncode
        except OSError as exc:
            print(f"    cannot start {step.argv[0]}: {exc}", flush=True)
            code = 127
        seconds = time.perf_counter() - start
        done.append((step, code, seconds))
        status = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"=== {step.name}: {step.label}: {status} in {_minutes(seconds)}", flush=True)
        if code != 0 and not keep_going:
            break
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="every benchmark's smoke mode; results under --out-dir")
    p.add_argument("--out-dir", default=None,
                   help="where the results go (default: benchmarks/results; with --quick $TMPDIR/learnq-bench-quick)")
    p.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of: {', '.join(NAMES)}")
    p.add_argument("--without-diffq", action="store_true",
                   help="run without .venv-bench: packing measures learnq alone, qat speed is skipped")
    p.add_argument("--keep-going", action="store_true", help="after a failing benchmark, run the others")
    args = p.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in only if n not in NAMES]
    if unknown or not only:
        p.error(f"--only: unknown or empty {unknown}; known: {', '.join(NAMES)}")
    with_diffq = not args.without_diffq
    if with_diffq and not BENCH_PYTHON.is_file():
        p.error(f"{BENCH_PYTHON} is missing: the diffq side-by-side runs need it (`make bench` creates it: "
                "torch==2.13.0, then diffq==0.2.4 safetensors tqdm); or pass --without-diffq")
    if args.out_dir is not None:
        out = Path(args.out_dir).resolve()
    else:
        out = Path(tempfile.gettempdir()) / "learnq-bench-quick" if args.quick else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    plan = [s for s in steps(args.quick, out, sys.executable, with_diffq) if s.name in only]
    print(f"learnq benchmarks ({'quick' if args.quick else 'full'}): {len(plan)} commands, results in {out}; "
          f"{os.cpu_count()} cores, load average {' / '.join(f'{v:.1f}' for v in os.getloadavg())}", flush=True)
    start = time.perf_counter()
    done = run(plan, args.keep_going)
    print(f"\n{'benchmark':<14} {'command':<46} {'result':<16} wall")
    for step, code, seconds in done:
        print(f"{step.name:<14} {step.label:<46} {'ok' if code == 0 else f'FAILED ({code})':<16} {_minutes(seconds)}")
    not_run = plan[len(done):]
    for step in not_run:
        print(f"{step.name:<14} {step.label:<46} {'not run':<16} -")
    print(f"total {_minutes(time.perf_counter() - start)}")
    failed = [s.name + ": " + s.label for s, code, _ in done if code != 0]
    if out == RESULTS:
        diff = subprocess.run(["git", "diff", "--stat", "--", str(RESULTS), str(BENCH / "BENCHMARKS.md"),
                               str(ROOT / "README.md")], cwd=ROOT,
                              capture_output=True, text=True, check=False).stdout.strip()
        print("\nchanged result files (check the readings in BENCHMARKS.md against them):\n" + (diff or "none"))
    if failed:
        print(f"\nFAILED: {'; '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
