"""The resumable loop of the recipe-path benchmarks that train base models and run variant rows from them
(``clustering.py``: DKM / k-means / LSQ / DiffQ rows on L2 and DSMM models, issue 14; ``text_table6.py``: DKM rows
of document 000 Table 6 on a text classifier, issue 16).

For each planned base (a recipe, the directory of its cached float model and the variants still to run), in order:
train it with ``learnq.pipeline.run.train_recipe`` (resuming from the cache when a checkpoint is there), report it,
then run each variant with ``run_variant`` (fine-tune or quantize, save, reload, evaluate) and report the row; the
caller records and saves its results in the two callbacks. No new base or row starts once ``budget`` seconds have
passed since the call, so each invocation fits one hold of a machine-wide lock and the next one resumes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

Plan = Iterable[tuple[Any, Any, Path, list[Any]]]  # (key, recipe, cache directory, variants to run)


def run_bases(plan: Plan, budget: float, on_trained: Callable[[Any, Any, float], None],
              on_row: Callable[[Any, Any, Any, dict[str, Any], float], None]) -> bool:
    """Train each planned base that has variants to run, then its variants; ``on_trained(key, trained, seconds)``
    and ``on_row(key, trained, variant, row, seconds)`` record them. Returns False when the budget stopped the loop."""
    from learnq.pipeline.run import run_variant, train_recipe

    start = time.monotonic()

    def spent() -> bool:
        if time.monotonic() - start > budget:
            print("budget spent; run again to continue", flush=True)
            return True
        return False

    for key, recipe, out, todo in plan:
        if not todo:
            continue
        if spent():
            return False
        t0 = time.monotonic()
        trained = train_recipe(recipe, out, resume=(out / "checkpoints" / "last.pt").exists())
        on_trained(key, trained, time.monotonic() - t0)
        for variant in todo:
            if spent():
                return False
            t0 = time.monotonic()
            row, _ = run_variant(trained, variant)
            on_row(key, trained, variant, row, time.monotonic() - t0)
    return True
