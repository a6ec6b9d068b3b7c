"""The Pareto front of accuracy against file size over run and sweep directories (``learnq report``; docs/sweep.md).

No paper. A point ``(accuracy, size)`` is on the front when no other point dominates it: at least as accurate and
at most as large, and strictly better in one of the two. Equal points do not dominate each other, so duplicates on
the front are all kept. :func:`collect_points` reads the rows of run directories (``metrics.json``, written by
``learnq run``) and of every trial of a sweep directory (``trial-<n>/``, written by ``learnq sweep``);
:func:`write_pareto_report` writes ``pareto.md`` (the front and all points, linked to their run directories and model
files with relative links) and ``pareto.png`` (matplotlib on an Agg canvas, see learnq.pipeline.report).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from learnq.errors import ConfigError
from learnq.pipeline.report import _figure, format_bytes, markdown_table
from learnq.pipeline.sweep_space import short_params

_TRIAL_DIR = re.compile(r"^trial-(\d+)$")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points of ``(accuracy, size)`` pairs (accuracy up, size down), ordered by
    increasing size (equal points by index). ``ConfigError`` for a value that is not a finite number."""
    for i, point in enumerate(points):
        if len(point) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in point):
            raise ConfigError(f"point {i}: expected (accuracy, size) finite numbers, got {point!r}")
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0], i))
    front: list[int] = []
    for i in order:
        acc, size = points[i]
        if not front:
            front.append(i)
            continue
        best_acc, best_size = points[front[-1]]
        if acc > best_acc or (acc == best_acc and size == best_size):
            front.append(i)
    return front


def _rows(metrics_path: Path) -> list[dict] | None:
    try:
        data = json.loads(metrics_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{metrics_path}: unreadable ({exc})") from exc
    rows = data.get("rows") if isinstance(data, dict) else None
    return rows if isinstance(rows, list) else None


def _points_of_run(run: Path, trial: dict | None = None) -> list[dict]:
    rows = _rows(run / "metrics.json") or []
    points = []
    for j, row in enumerate(rows):
        missing = [k for k in ("method", "bits", "accuracy", "file", "file_bytes") if k not in row]
        if missing:
            raise ConfigError(f"{run / 'metrics.json'}: rows[{j}] lacks {', '.join(missing)}; was it written by "
                              "learnq run?")
        point = {k: row[k] for k in ("method", "bits", "accuracy", "file_bytes", "file")}
        point.update(ratio=row.get("ratio"), run=str(run), trial=None, params=None)
        if trial is not None:
            point.update(trial=trial.get("number"), params=trial.get("params"))
        points.append(point)
    return points


def collect_points(dirs: Sequence[str | os.PathLike]) -> tuple[list[dict], list[str]]:
    """Every row of every run directory given, and of every trial of every sweep directory given.

    Returns the points ``{method, bits, accuracy, file_bytes, file, ratio, run, trial, params}`` and the trial
    directories skipped because they hold no rows (a trial still running, failed or killed). ``ConfigError`` for a
    path that is neither kind of directory.
    """
    points: list[dict] = []
    skipped: list[str] = []
    seen: set[Path] = set()
    for raw in dirs:
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise ConfigError(f"{path}: no such directory; give run directories (learnq run) or sweep directories "
                              "(learnq sweep)")
        if path.resolve() in seen:
            continue
        seen.add(path.resolve())
        if (path / "metrics.json").is_file():
            if _rows(path / "metrics.json") is None:
                raise ConfigError(f"{path}: its metrics.json has no rows (written by learnq train?); run the recipe "
                                  "with learnq run to make and evaluate its variants")
            points += _points_of_run(path)
            continue
        trials = sorted((int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := _TRIAL_DIR.match(p.name)))
        if not trials:
            raise ConfigError(f"{path}: neither a run directory (no metrics.json; learnq run writes one) nor a sweep "
                              "directory (no trial-<n>/ directories; learnq sweep writes them)")
        for _, trial_dir in trials:
            if not (trial_dir / "metrics.json").is_file() or not _rows(trial_dir / "metrics.json"):
                skipped.append(str(trial_dir))
                continue
            info_path = trial_dir / "trial.json"
            info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else None
            points += _points_of_run(trial_dir, info)
    return points, skipped


def _label(point: dict) -> str:
    bits = point["bits"]
    return f"{point['method']} {bits:g}b" if isinstance(bits, (int, float)) else str(point["method"])


def _link(target: Path, out: Path, text: str) -> str:
    rel = Path(os.path.relpath(target.resolve(), out.resolve())).as_posix()
    return f"[{text}](<{rel}>)" if " " in rel else f"[{text}]({rel})"


def _run_name(point: dict) -> str:
    return f"trial {point['trial']}" if point.get("trial") is not None else Path(point["run"]).name


def markdown_pareto(points: list[dict], front: list[int], out: str | os.PathLike, *, skipped: Sequence[str] = (),
                    plot: bool = True) -> str:
    """The text of ``pareto.md``; links are relative to ``out`` (where the file goes)."""
    out = Path(out)
    on_front = set(front)

    def cells(i: int) -> list[Any]:
        p = points[i]
        run = Path(p["run"])
        params = short_params(p.get("params") or {})
        return [i, p["method"], p["bits"], f"{100 * p['accuracy']:.2f}", p["file_bytes"], format_bytes(p["file_bytes"]),
                "-" if p.get("ratio") is None else f"{p['ratio']:.2f}x", _link(run, out, _run_name(p)),
                _link(run / p["file"], out, p["file"]), params or "-"]

    headers = ["#", "method", "bits", "accuracy %", "bytes", "size", "ratio", "run", "file", "params"]
    runs = len({p["run"] for p in points})
    parts = ["# Pareto front: accuracy vs file size", "",
             f"{len(points)} models from {runs} run directories; {len(front)} on the front (no other model is at "
             "least as accurate and at most as large, and better in one). Accuracy: the model reloaded from its "
             "file, on its test split; size: the file's bytes on disk.", ""]
    if plot:
        parts += ["![accuracy vs file size, Pareto front highlighted](pareto.png)", ""]
    parts += ["## Front", "", "By increasing size.", "", markdown_table(headers, [cells(i) for i in front]), "",
              "## All models", "",
              markdown_table(["front", *headers], [["yes" if i in on_front else "", *cells(i)]
                                                   for i in range(len(points))]), ""]
    if skipped:
        parts += ["## Skipped", "", "Trial directories without rows (running, failed or killed):", ""]
        parts += [f"- {_link(Path(s), out, Path(s).name)}" for s in skipped] + [""]
    return "\n".join(parts)


def plot_pareto(points: list[dict], front: list[int], path: str | os.PathLike) -> Path:
    """Every point (colour: method; annotation: bits), the front as a staircase with its points labelled."""
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    methods = list(dict.fromkeys(p["method"] for p in points))
    colors = {m: f"C{i % 10}" for i, m in enumerate(methods)}
    on_front = set(front)
    for method in methods:
        mine = [p for p in points if p["method"] == method]
        ax.scatter([p["file_bytes"] / 1024 for p in mine], [100 * p["accuracy"] for p in mine], s=22, alpha=0.6,
                   color=colors[method], label=method)
    if front:
        xs = [points[i]["file_bytes"] / 1024 for i in front]
        ys = [100 * points[i]["accuracy"] for i in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1, alpha=0.7, label="Pareto front")
        ax.scatter(xs, ys, s=70, facecolors="none", edgecolors="black", linewidths=1.5)
    for i, p in enumerate(points):
        text = _label(p) if i in on_front else f"{p['bits']:g}b" if isinstance(p["bits"], (int, float)) else ""
        ax.annotate(text, (p["file_bytes"] / 1024, 100 * p["accuracy"]), textcoords="offset points",
                    xytext=(5, 4 if i in on_front else -9), fontsize=8 if i in on_front else 6,
                    color="black" if i in on_front else "0.4")
    sizes = [p["file_bytes"] for p in points if p["file_bytes"] > 0]
    if sizes and max(sizes) / min(sizes) > 1.5:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
    ax.set(xlabel="model file size (KiB)", ylabel="test accuracy (%)", title="accuracy vs size: Pareto front")
    ax.grid(True, alpha=0.3)
    if points:
        ax.legend(fontsize=8)
    fig.tight_layout()
    target = Path(path)
    fig.savefig(target, format="png")
    return target


def write_pareto_report(dirs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                        plot: bool = True) -> dict[str, Any]:
    """``learnq report``: collect the points of ``dirs``, write ``pareto.md`` (and ``pareto.png``) in ``out``.

    Returns ``{"out", "files", "points", "front" (indices into points, by increasing size), "skipped"}``.
    ``ConfigError`` if there is no point at all.
    """
    points, skipped = collect_points(dirs)
    if not points:
        raise ConfigError(f"no rows in {', '.join(map(str, dirs))}: no run or trial there has finished")
    front = pareto_front([(p["accuracy"], p["file_bytes"]) for p in points])
    target = Path(out).expanduser()
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out {target} is a file; give a directory for the report")
    target.mkdir(parents=True, exist_ok=True)
    files = []
    if plot:  # draw first: a missing matplotlib fails before anything is written
        files.append(plot_pareto(points, front, target / "pareto.png"))
    md = target / "pareto.md"
    md.write_text(markdown_pareto(points, front, target, skipped=skipped, plot=plot), encoding="utf-8")
    return {"out": str(target), "files": [str(md), *map(str, files)], "points": points, "front": front,
            "skipped": skipped}


__all__ = ["pareto_front", "collect_points", "markdown_pareto", "plot_pareto", "write_pareto_report"]
