"""Plots of learned guidance weights: ω per class against t (``guidelab schedule --plot`` and the
``learned-guidance`` reproduction's figure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from guidelab.io import save_figure_atomic
from guidelab.paths import NoisePath, get_path
from guidelab.progress import counted

__all__ = ["plot_learned_schedule", "plot_omega"]


def plot_omega(schedules: dict[str, dict[str, Any]], file: str | Path, title: str = "learned guidance weights") -> None:
    """Plot ω per class against t, one panel per entry of ``schedules`` (``{"t": [...], "omega": {class:
    [...]}, "ideal": {class: [...]}?}``), with matplotlib's Agg backend; written atomically."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(schedules)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    for ax, label in zip(axes[0], panels, strict=True):
        entry = schedules[label]
        for k, (name, values) in enumerate(entry["omega"].items()):
            ax.plot(entry["t"], values, marker="o", ms=3, color=f"C{k}", label=f"learned ω, class {name}")
            ideal = (entry.get("ideal") or {}).get(name)
            if ideal is not None:
                ax.plot(entry["t"], ideal, ls="--", color=f"C{k}", label=f"ideal ω*, class {name}")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("t (1 = noise)")
        ax.invert_xaxis()
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(r"$\omega(c,\ t_{k+1},\ t_k)$")
    for ax, label in zip(axes[0], panels, strict=True):
        if ax is axes[0][0] or schedules[label].get("ideal"):
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    try:
        save_figure_atomic(fig, file, dpi=110)
    finally:
        plt.close(fig)


def plot_learned_schedule(
    guider: Any, path: NoisePath | str, grid: Tensor, file: str | Path, title: str | None = None
) -> dict[str, Any]:
    """Plot a learned guider's ω per class against t on ``grid`` (``guidelab schedule --plot``); returns the
    plotted data. ``guider`` is a :class:`~guidelab.guiders.learned.LearnedGuider` or a checkpoint path."""
    from guidelab.guiders.learned import LearnedGuider

    if not isinstance(guider, LearnedGuider):
        guider = LearnedGuider(str(guider))
    path = get_path(path)
    grid = torch.as_tensor(grid, dtype=torch.float64)
    table = guider.table(path, grid)
    names = guider.class_names if guider.weights.conditional else ["all"]
    entry = {"t": grid[:-1].tolist(), "omega": {name: table[c].tolist() for c, name in enumerate(names)}}
    label = Path(guider.checkpoint).name if guider.checkpoint else "learned"
    plot_omega(
        {label: entry}, file, title=title or f"learned ω per class ({path.name}, {counted(grid.numel() - 1, 'step')})"
    )
    return entry
