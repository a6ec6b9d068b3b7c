"""The run report: a Markdown table of the variants and PNG plots (training curves, accuracy vs file size).

No paper. ``write_report(out, recipe=..., history=..., rows=..., test=...)`` writes ``report.md`` and, unless
``plots=False``, ``training.png`` and ``accuracy_vs_size.png``. Plots need matplotlib (the ``plots`` extra:
``pip install 'learnq[plots]'``); it is imported only when a plot is drawn, and drawn on an Agg canvas without
pyplot, so no global backend is changed and no window opens.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from learnq.errors import ConfigError

if TYPE_CHECKING:
    from learnq.pipeline.recipe import Recipe

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure attached to an Agg canvas; ConfigError if matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigError("plots need matplotlib, which is not installed; install it with "
                          "pip install 'learnq[plots]' (or set plots = false in the recipe's [report])") from exc
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - the loop always returns


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_report(*, recipe: Recipe, history: list[dict], rows: list[dict], test: dict,
                    plots: bool = True) -> str:
    """The text of ``report.md``."""
    parts = [f"# learnq run: {recipe.name}", ""]
    if recipe.description:
        parts += [recipe.description, ""]
    parts += [f"Data `{recipe.data.name}` (seed {recipe.data.seed}), model `{recipe.model.name}`, "
              f"{recipe.train.epochs} epochs of {recipe.train.optimizer} (lr {recipe.train.lr}, batch "
              f"{recipe.train.batch_size}), seed {recipe.seed}. Float model on the test split: accuracy "
              f"{100 * test['accuracy']:.2f}% (n = {test['n']}), loss {test['loss']:.4f}.", ""]
    if rows:
        acts = any(r.get("abits", 32) != 32 for r in rows)  # an activation-bits column when a row quantizes them
        table = [[r["method"], r["bits"], *([r.get("abits", 32)] if acts else []), f"{100 * r['accuracy']:.2f}",
                  f"`{r['file']}`", r["file_bytes"], format_bytes(r["file_bytes"]), f"{r['ratio']:.2f}x"]
                 for r in rows]
        parts += ["## Variants", "",
                  "Accuracy of each model reloaded from its file, on the test split; ratio = float32 bytes of the "
                  "model / file bytes.", "",
                  markdown_table(["method", "bits", *(["abits"] if acts else []), "accuracy %", "file", "bytes",
                                  "size", "ratio"], table), ""]
    if history:
        table = [[h["epoch"], f"{h['train_loss']:.4f}", f"{100 * h['train_acc']:.2f}",
                  "-" if h.get("test_loss") is None else f"{h['test_loss']:.4f}",
                  "-" if h.get("test_acc") is None else f"{100 * h['test_acc']:.2f}", f"{h['lr']:.3g}"]
                 for h in history]
        parts += ["## Training", "",
                  markdown_table(["epoch", "train loss", "train acc %", "test loss", "test acc %", "lr"], table), ""]
    if plots:
        parts += ["## Plots", "", "![training curves](training.png)", "",
                  "![accuracy vs file size](accuracy_vs_size.png)", ""]
    return "\n".join(parts)


def plot_training(history: list[dict], path: str | Path) -> Path:
    """Loss and accuracy per epoch (train and, when recorded, test) as a PNG."""
    fig = _figure(9, 3.5)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [h["epoch"] for h in history]
    for key, label, ax in (("train_loss", "train", ax_loss), ("test_loss", "test", ax_loss),
                           ("train_acc", "train", ax_acc), ("test_acc", "test", ax_acc)):
        values = [h.get(key) for h in history]
        if values and all(v is not None for v in values):
            ax.plot(epochs, values, marker="o", markersize=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def plot_accuracy_vs_size(rows: list[dict], path: str | Path) -> Path:
    """Test accuracy against file size (log scale), one labelled point per variant, as a PNG."""
    fig = _figure(6, 4)
    ax = fig.subplots()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["file_bytes"])
        ax.plot([r["file_bytes"] / 1024 for r in mine], [100 * r["accuracy"] for r in mine], marker="o",
                label=method, linestyle="-" if len(mine) > 1 else "none")
        for r in mine:
            ax.annotate(f"{r['bits']}b", (r["file_bytes"] / 1024, 100 * r["accuracy"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)
    if rows and all(r["file_bytes"] > 0 for r in rows):
        sizes = [r["file_bytes"] for r in rows]
        if max(sizes) / min(sizes) > 1.5 and math.isfinite(max(sizes)):
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("log")
            plain = FuncFormatter(lambda v, _pos: f"{v:g}")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
    ax.set(xlabel="file size (KiB)", ylabel="test accuracy (%)", title="accuracy vs size")
    ax.grid(True, alpha=0.3)
    if methods:
        ax.legend()
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def write_report(out: str | Path, *, recipe: Recipe, history: list[dict], rows: list[dict], test: dict,
                 plots: bool = True) -> list[Path]:
    """Write ``report.md`` (and the two PNGs unless ``plots=False``) in ``out``; returns the paths written."""
    out = Path(out)
    written = []
    if plots:  # draw first: a missing matplotlib fails before anything is written
        written.append(plot_training(history, out / "training.png"))
        written.append(plot_accuracy_vs_size(rows, out / "accuracy_vs_size.png"))
    md = out / "report.md"
    md.write_text(markdown_report(recipe=recipe, history=history, rows=rows, test=test, plots=plots),
                  encoding="utf-8")
    return [md, *written]


__all__ = ["PNG_SIGNATURE", "write_report", "markdown_report", "markdown_table", "plot_training",
           "plot_accuracy_vs_size", "format_bytes"]
