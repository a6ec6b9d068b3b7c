"""Shared matplotlib helpers for the analysis plots (weight histograms, layer-wise KL, step robustness).

No paper. matplotlib is the optional ``plots`` extra (``pip install 'learnq[plots]'``); it is imported only when a
figure is drawn, and every figure is drawn on its own Agg canvas without pyplot, so no global backend is changed,
no window opens and nothing is left in pyplot's figure registry.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from learnq.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Colours of successive series (matplotlib's tab10, written out so no style state is read).
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
OUTLIER_COLOR = "#d62728"


def require_matplotlib() -> Any:
    """The ``matplotlib`` module; ``ConfigError`` telling how to install it when it is missing."""
    try:
        import matplotlib
        from matplotlib.backends import backend_agg  # noqa: F401 - checks the Agg backend is there too
    except ImportError as exc:
        raise ConfigError("analysis plots need matplotlib, which is not installed; install it with "
                          "pip install 'learnq[plots]'") from exc
    return matplotlib


def new_figure(width: float, height: float, dpi: int = 100) -> Any:
    """A matplotlib ``Figure`` of ``width`` x ``height`` inches attached to an Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not (width > 0 and height > 0):
        raise ConfigError(f"figure size must be positive, got {width} x {height} inches")
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, cols) of a grid holding ``n`` panels, at most ``max_cols`` wide."""
    if n < 1:
        raise ConfigError("there is nothing to plot (no layer selected)")
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def series_color(i: int) -> str:
    return COLORS[i % len(COLORS)]


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG to ``path`` (parent directories are created); ``ConfigError`` if it cannot be written."""
    out = Path(path).expanduser()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png")
    except OSError as exc:
        raise ConfigError(f"cannot write the plot {out}: {exc}") from exc
    return out


__all__ = ["PNG_SIGNATURE", "COLORS", "OUTLIER_COLOR", "require_matplotlib", "new_figure", "grid_shape",
           "series_color", "save_png"]
