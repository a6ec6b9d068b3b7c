"""A tiny sweep recipe, a deterministic stand-in for the pipeline, and sweep workers started at the same moment.

``race_workers`` starts ``workers`` processes (this file run as a script) that, for each round, wait at a barrier
(a file the parent creates once every worker is ready) and then run :func:`learnq.pipeline.sweep.run_sweep` on that
round's storage, study and sweep directory with :func:`fake_runner`. Each writes what it ran or the error it died
with; the parent returns them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from recipe_util import tiny_recipe

BASE = tiny_recipe("tiny-sweep", seed=1, batch_size=64, lr=0.01)
VARIANT = """
[[variants]]
method = "minmax"
bits = 4
"""
SPACE = """
[sweep]
sampler = "random"
[sweep.space]
"variant.method" = ["minmax", "diffq", "float"]
"variant.bits" = [2, 3, 4, 8]
"variant.options.penalty" = { low = 1e-4, high = 1e-1, log = true }
"variant.options.epochs" = [1]
"train.lr" = { low = 0.001, high = 0.01 }
"""


def sweep_of(space: str = SPACE, variant: str = VARIANT, base: str = BASE):
    from learnq.pipeline.sweep_space import parse_sweep_recipe

    return parse_sweep_recipe(base + variant + space, "r.toml")


def fake_runner(recipe, out: Path):
    """A deterministic stand-in for run_recipe: accuracy and size from the variant's knobs; writes metrics.json."""
    from learnq.pipeline.run import RunResult

    v = recipe.variants[0]
    bits = v.bits or 5
    row = {"method": v.method, "bits": bits, "accuracy": round(0.5 + 0.05 * bits - 0.3 * recipe.train.lr, 6),
           "file": "m.safetensors", "file_bytes": 100 * bits + 7, "ratio": 1.0}
    (out / "metrics.json").write_text(json.dumps({"rows": [row]}))
    return RunResult(out=out, rows=[row], test={}, history=[])


def race_workers(rounds: list[tuple[str, str, Path]], trials: int, workers: int = 2,
                 timeout: float = 300) -> list[list[dict]]:
    """For each round ``(storage URL, study name, sweep directory)``, ``workers`` processes start ``run_sweep`` at
    the same moment. Returns per round one ``{"new": [...]}`` or ``{"error": "..."}`` per worker."""
    base = rounds[0][2].parent / "race"
    base.mkdir(parents=True, exist_ok=True)
    spec = base / "rounds.json"
    spec.write_text(json.dumps({"rounds": [[s, n, str(o)] for s, n, o in rounds], "trials": trials}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(spec), str(i)], env=env, stdout=subprocess.DEVNULL,
                              stderr=open(base / f"worker{i}.log", "wb"))  # noqa: SIM115 - the child owns it
             for i in range(workers)]
    deadline = time.monotonic() + timeout
    try:
        for k in range(len(rounds)):
            while not all((base / f"ready-{k}-{i}").exists() for i in range(workers)):
                if any(p.poll() not in (None, 0) for p in procs) or time.monotonic() > deadline:
                    logs = [(base / f"worker{i}.log").read_text() for i in range(workers)]
                    raise AssertionError(f"a sweep worker did not get ready: {logs}")
                time.sleep(0.01)
            (base / f"go-{k}").touch()
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [[json.loads((base / f"result-{k}-{i}.json").read_text()) for i in range(workers)]
            for k in range(len(rounds))]


def _worker(spec_path: str, index: str) -> None:
    import optuna

    from learnq.pipeline.sweep import run_sweep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = Path(spec_path).parent
    spec = json.loads(Path(spec_path).read_text())
    sweep = sweep_of()
    for k, (storage, study, out) in enumerate(spec["rounds"]):
        (base / f"ready-{k}-{index}").touch()
        while not (base / f"go-{k}").exists():
            time.sleep(0.0005)
        try:
            result = run_sweep(sweep, out, trials=spec["trials"], storage=storage, study=study, runner=fake_runner)
            record = {"new": result.new}
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test with it
            record = {"error": f"{type(exc).__name__}: {exc}"}
        (base / f"result-{k}-{index}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
