"""Matplotlib helpers of the reproductions: Agg canvas, no pyplot state, atomic PNG writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from guidelab.io import save_figure_atomic

__all__ = ["band", "new_figure", "save", "shade_interval"]


def new_figure(nrows: int = 1, ncols: int = 1, *, width: float = 3.6, height: float = 3.0, **kwargs: Any) -> tuple:
    """A figure of ``nrows × ncols`` panels (each ``width × height`` inches) on the Agg canvas and its axes
    as a 2-d array."""
    import logging

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # mathtext looks for STIX and Computer Modern fonts and logs a line per family it falls back from (DejaVu has
    # the glyphs): twenty lines a run that bury the claims
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **kwargs)
    return fig, axes


def save(fig: Any, file: str | Path, dpi: int = 110) -> None:
    """Write ``fig`` as PNG to ``file`` atomically (temporary file in the same folder, then rename)."""
    save_figure_atomic(fig, file, dpi=dpi, format="png")


def band(
    ax: Any, x: Sequence[float], mean: Sequence[float], sd: Sequence[float], *, label: str, color: Any = None
) -> None:
    """A mean curve with a ±1 s.d. band."""
    x, m, s = (np.asarray(v, dtype=float) for v in (x, mean, sd))
    (line,) = ax.plot(x, m, label=label, color=color, lw=1.4)
    ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.18, lw=0)


def shade_interval(ax: Any, lo: float, hi: float, *, vertical: bool = True, label: str | None = None) -> None:
    """Shade the class support [lo, hi] (a vertical band, or a horizontal one)."""
    span = ax.axvspan if vertical else ax.axhspan
    span(lo, hi, color="0.85", zorder=0, label=label)
