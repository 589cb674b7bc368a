"""The report's figures: one function per figure, each returning PNG bytes.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through pyplot,
so nothing global (backend, open-figure registry) is touched and a figure is freed when its function
returns. Colours and markers come from the report's :class:`~guidelab.report.data.Catalog`: a method keeps
its colour in every figure.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from guidelab.progress import counted
from guidelab.report.data import BETTER, FLOORED, Line, Point, gamma_sort, gamma_text, pareto_front

__all__ = [
    "MAX_POINTS",
    "SampleImage",
    "ScheduleCurve",
    "axis_label",
    "distance_floor",
    "diversity_figure",
    "diversity_plot",
    "fd_accuracy_figure",
    "fd_accuracy_plot",
    "metric_gamma_figure",
    "metric_gamma_plot",
    "nfe_figure",
    "outside_count",
    "pareto_figure",
    "pareto_plot",
    "sample_view",
    "samples_figure",
    "samples_plot",
    "schedule_figure",
    "schedule_plot",
]

DPI = 100
MAX_POINTS = 2000  # samples drawn per panel
VIEW_MARGIN = 0.25  # sample panels show the target's data range widened by this fraction of its width per side
_GREY = "#9a9a9a"
_LABELS = {
    "energy_distance": "energy distance to exact p(x | c)",
    "class_fidelity": "class fidelity: mean exact p(c | x)",
    "class_accuracy": "class accuracy",
    "w2": "W2 distance to exact p(x | c)",
    "mmd2": "MMD² to exact p(x | c)",
    "vendi": "Vendi score (effective number of samples)",
    "within_mode_variance_ratio": "within-mode variance / exact",
    "weak_mode_weight": "share of samples in the weakest mode",
    "mode_weight_tv": "mode-weight TV distance",
    "mode_coverage": "mode coverage",
    "in_support": "fraction in the class support",
    "prdc.recall": "recall (PRDC)",
    "prdc.coverage": "coverage (PRDC)",
    "saturation": "saturation: fraction of 8-bit values at 0 or 255",
    "latent_rms": "RMS of the final latent",
    "pixel_diversity": "pixel diversity: mean pairwise RMS distance",
    "accuracy": "accuracy: the classifier's, on the samples",
    "fd": "Fréchet distance to real images (classifier features)",
}
# diversity metrics (first found first) and the value exact samples have: a metric name, a number or None
DIVERSITY = {
    "vendi": "vendi_true",
    "within_mode_variance_ratio": 1.0,
    "weak_mode_weight": "weak_mode_weight_true",
    "prdc.recall": None,
    "prdc.coverage": None,
}


def _require() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ValueError("report: needs matplotlib (pip install 'guidelab[plot]')") from None


def _figure(width: float, height: float) -> Any:
    _require()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    fig.set_facecolor("white")
    return fig


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=DPI)
    finally:
        fig.clear()
    return buf.getvalue()


def axis_label(metric: str, axis: str = "y") -> str:
    """A metric's axis label with the direction that is better: ``energy distance … (← better)``."""
    text = _LABELS.get(metric, metric.replace("_", " "))
    better = BETTER.get(metric)
    if better is None:
        return text
    if axis == "x":
        return f"{text}  ({'← lower' if better == '↓' else '→ higher'} is better)"
    return f"{text}  ({better} better)"


def _shared_legend(axes, anchor) -> None:
    """One legend for every panel of a figure (each label once), outside ``anchor``."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    _legend_outside(anchor, handles, labels)


def _legend_outside(ax: Any, handles: list[Any] | None = None, labels: list[str] | None = None, **kw: Any) -> None:
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, **kw)


def _by_line(points: Sequence[Point]) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for p in points:
        out.setdefault(p.line.key, []).append(p)
    return out


def distance_floor(values: Sequence[float]) -> float | None:
    """The value at which a log axis draws distances at or below 0 ("at the noise floor"): a third of the
    smallest positive value (1e-3 when none is positive); None when no value is at or below 0."""
    finite = [v for v in values if math.isfinite(v)]
    if not any(v <= 0 for v in finite):
        return None
    positive = [v for v in finite if v > 0]
    return min(positive) / 3 if positive else 1e-3


def _draw_lines(
    ax: Any, points: Sequence[Point], x_metric: str, y_metric: str, x_floor: float | None = None
) -> list[tuple[float, float]]:
    """Each line's points (mean over seeds, ±1 std error bars), joined in γ order and labelled with γ; with
    ``x_floor``, x values at or below it are drawn at it (and their label says so)."""
    drawn: list[tuple[float, float]] = []
    for line_points in _by_line(points).values():
        line = line_points[0].line
        pts = sorted(line_points, key=lambda p: gamma_sort(p.gamma))
        xy = [(p.mean(x_metric), p.mean(y_metric), p) for p in pts]
        xy = [(x, y, p) for x, y, p in xy if math.isfinite(x) and math.isfinite(y)]
        if x_floor is not None:
            xy = [(max(x, x_floor), y, p) for x, y, p in xy]
        if not xy:
            continue
        xs, ys = [x for x, _, _ in xy], [y for _, y, _ in xy]
        ax.plot(xs, ys, color=line.color, linestyle=line.linestyle, linewidth=1.4, alpha=0.8, zorder=2)
        ax.scatter(xs, ys, color=line.color, marker=line.marker, s=42, zorder=3, label=line.name)
        xerr = [p.std(x_metric) for _, _, p in xy]
        yerr = [p.std(y_metric) for _, _, p in xy]
        if any(xerr) or any(yerr):
            ax.errorbar(xs, ys, xerr=xerr, yerr=yerr, fmt="none", ecolor=line.color, alpha=0.5, zorder=2)
        for x, y, p in xy:
            text = f"γ={gamma_text(p.gamma)}" if gamma_text(p.gamma) else ""
            if x_floor is not None and x <= x_floor:
                text += " (at floor)"
            if text:
                ax.annotate(
                    text,
                    (x, y),
                    xytext=(4, 5),
                    textcoords="offset points",
                    fontsize=7.5,
                    color=line.color,
                    zorder=4,
                )
        drawn.extend((x, y) for x, y, _ in xy)
    return drawn


def _log_ticks(axis: Any, lo: float, hi: float) -> None:
    """Major ticks of a log axis that never crowd: 1-2-5 over up to 2 decades, every decade up to 5, at most 6
    ticks beyond; no minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    decades = math.log10(hi / lo)
    if decades <= 2.2:
        locator = LogLocator(base=10, subs=(1.0, 2.0, 5.0))
    elif decades <= 5:
        locator = LogLocator(base=10, subs=(1.0,))
    else:
        locator = LogLocator(base=10, subs=(1.0,), numticks=6)
    axis.set_major_locator(locator)
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _maybe_log(ax: Any, which: str, values: Sequence[float]) -> bool:
    """Put ``which`` axis on a log scale when its values are positive and span more than a factor 20."""
    values = [v for v in values if math.isfinite(v)]
    if not values or min(values) <= 0 or max(values) / min(values) <= 20:
        return False
    getattr(ax, f"set_{which}scale")("log")
    _log_ticks(getattr(ax, f"{which}axis"), min(values), max(values))
    return True


def _fraction_limits(values: Sequence[float]) -> tuple[float, float] | None:
    """Axis limits for a fraction in [0, 1] scaled to its values: a span of at least 0.002, padded by 8%, barely
    past 1 or 0 (a saturated fidelity sits just under the top, not on a fixed 0..1 axis)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return None
    lo, hi = min(values), max(values)
    pad = max(0.08 * (hi - lo), 0.001)
    return max(lo - pad, -pad / 4), min(hi + pad, 1 + pad / 4)


def _fraction_axis(ax: Any, which: str, values: Sequence[float], nbins: int) -> None:
    """Scale ``which`` axis to the fractions in ``values`` (:func:`_fraction_limits`), with at most ``nbins``
    plain tick labels (no offset, no crowding)."""
    from matplotlib.ticker import MaxNLocator

    limits = _fraction_limits(values)
    if limits is None:
        return
    getattr(ax, f"set_{which}lim")(*limits)
    getattr(ax, f"{which}axis").set_major_locator(MaxNLocator(nbins=nbins, min_n_ticks=2))
    ax.ticklabel_format(axis=which, useOffset=False, style="plain")


def _scale_axes(ax: Any, xs: list[float], ys: list[float], y_unit: bool = False) -> None:
    _maybe_log(ax, "x", xs)
    if y_unit:
        _fraction_axis(ax, "y", ys, nbins=6)
    else:
        _maybe_log(ax, "y", ys)
    if ax.get_yscale() == "linear":
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def _mark_floor(ax: Any, floor: float | None, axis: str = "x") -> None:
    if floor is None:
        return
    line = ax.axvline if axis == "x" else ax.axhline
    line(floor, color="#555", linestyle=":", linewidth=1.2, zorder=1, label="noise floor (values ≤ 0 drawn here)")


def pareto_figure(
    points: Sequence[Point], title: str, x_metric: str = "energy_distance", y_metric: str = "class_fidelity"
) -> bytes:
    """:func:`pareto_plot` as PNG bytes."""
    return _png(pareto_plot(points, title, x_metric, y_metric))


def pareto_plot(
    points: Sequence[Point], title: str, x_metric: str = "energy_distance", y_metric: str = "class_fidelity"
) -> Any:
    """Fidelity against distance to the true conditional, one line per method, γ on each point; the Pareto
    front (lower distance, higher fidelity) is the thick grey line with ringed points. Distances at or below
    0 (unbiased estimates at the noise floor) are drawn at :func:`distance_floor`, marked by a dotted line.
    Returns the matplotlib ``Figure``."""
    fig = _figure(8.6, 4.8)
    ax = fig.add_subplot()
    floor = distance_floor([p.mean(x_metric) for p in points]) if x_metric in FLOORED else None
    drawn = _draw_lines(ax, points, x_metric, y_metric, floor)
    _mark_floor(ax, floor)
    if drawn:
        front = [drawn[i] for i in pareto_front(drawn)]
        fx, fy = [x for x, _ in front], [y for _, y in front]
        ax.step(fx, fy, where="post", color="black", linewidth=7, alpha=0.12, zorder=1, solid_capstyle="round")
        ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="black", linewidths=1.2, zorder=5, label="Pareto front")
    _scale_axes(ax, [x for x, _ in drawn], [y for _, y in drawn], y_unit=True)
    ax.set_xlabel(axis_label(x_metric, "x"))
    ax.set_ylabel(axis_label(y_metric, "y"))
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_title("↖ better", fontsize=9, loc="right", color="#555")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return fig


_VIEW_FACTOR = 2.0  # the FD view reaches twice the worst of the front and the floor


def fd_accuracy_figure(
    points: Sequence[Point],
    front: Sequence[Point],
    title: str,
    fd_floor: float | None = None,
    accuracy_floor: float | None = None,
) -> bytes:
    """:func:`fd_accuracy_plot` as PNG bytes."""
    return _png(fd_accuracy_plot(points, front, title, fd_floor, accuracy_floor))


def fd_accuracy_plot(
    points: Sequence[Point],
    front: Sequence[Point],
    title: str,
    fd_floor: float | None = None,
    accuracy_floor: float | None = None,
) -> Any:
    """Fréchet distance (y, lower is better) against classifier accuracy (x, higher is better) of a trained image
    model's runs, one line per method joined in γ order with γ on each point; the points of ``front`` (the
    caller's Pareto front, :func:`~guidelab.report.data.pareto_front`) are ringed and joined by a thick grey line.
    ``fd_floor`` (real images against real images) is the dashed "real-vs-real floor" line, ``accuracy_floor``
    a dotted vertical line. FD gets a log axis when its values span more than a factor 20. The view reaches twice the
    highest FD of the front and the floor: points above it (a scale that broke a method) are named in a note on
    the plot, not drawn squashing the rest. Points without a finite FD and accuracy are left out. Returns the
    matplotlib ``Figure``."""
    fig = _figure(8.6, 4.8)
    ax = fig.add_subplot()
    drawn = _draw_lines(ax, points, "accuracy", "fd")
    if front:
        pts = sorted(front, key=lambda p: (p.mean("accuracy"), p.mean("fd")))
        fx, fy = [p.mean("accuracy") for p in pts], [p.mean("fd") for p in pts]
        ax.plot(fx, fy, color="black", linewidth=7, alpha=0.12, zorder=1, solid_capstyle="round")
        ax.scatter(fx, fy, s=150, facecolors="none", edgecolors="black", linewidths=1.2, zorder=5, label="Pareto front")
    ys = [y for _, y in drawn]
    if fd_floor is not None and math.isfinite(fd_floor):
        ax.axhline(fd_floor, color="black", linestyle="--", linewidth=1.0, alpha=0.7, label="real-vs-real floor")
        ax.annotate(
            "real-vs-real floor",
            (0.01, fd_floor),
            xycoords=("axes fraction", "data"),
            xytext=(0, 3),
            textcoords="offset points",
            fontsize=7.5,
            color="#333",
        )
        ys.append(fd_floor)
    xs = [x for x, _ in drawn]
    # the view: the front, the floor and what lies near them; a point far above them (a scale that broke the
    # method) would squash everything else into a strip, so it is left outside and named in a note
    anchors = [p.mean("fd") for p in front] + ([fd_floor] if fd_floor is not None and math.isfinite(fd_floor) else [])
    anchors = [a for a in anchors if math.isfinite(a) and a > 0]
    cap = _VIEW_FACTOR * max(anchors) if anchors else math.inf
    outside = [(x, y) for x, y in drawn if y > cap]
    if outside:
        kept = [(x, y) for x, y in drawn if y <= cap]
        xs = [x for x, _ in kept]
        ys = [y for _, y in kept] + [a for a in ys if a <= cap]
    if accuracy_floor is not None and math.isfinite(accuracy_floor):
        ax.axvline(accuracy_floor, color="#555", linestyle=":", linewidth=1.2, label="real images' accuracy")
        xs.append(accuracy_floor)
    _fraction_axis(ax, "x", xs, nbins=6)
    _maybe_log(ax, "y", ys)
    if ax.get_yscale() == "linear":
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    if outside:
        low = min(ys) if ys else 0.0
        ax.set_ylim(low - 0.05 * (cap - low) if ax.get_yscale() == "linear" else low / 1.15, cap)
        worst = max(outside, key=lambda p: p[1])
        ax.annotate(
            f"{len(outside)} point{'s' if len(outside) > 1 else ''} above the view (FD > {cap:.3g}; worst: "
            f"accuracy {worst[0]:.3g}, FD {worst[1]:.3g}); see the table",
            (0.01, 0.97),
            xycoords="axes fraction",
            va="top",
            fontsize=7.5,
            color="#a33",
        )
    ax.set_xlabel(axis_label("accuracy", "x"))
    ax.set_ylabel(axis_label("fd", "y"))
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_title("↘ better", fontsize=9, loc="right", color="#555")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return fig


def diversity_figure(points: Sequence[Point], title: str, metrics: Sequence[str], x_metric: str) -> bytes:
    """:func:`diversity_plot` as PNG bytes."""
    return _png(diversity_plot(points, title, metrics, x_metric))


def diversity_plot(points: Sequence[Point], title: str, metrics: Sequence[str], x_metric: str) -> Any:
    """One panel per diversity metric against ``x_metric`` (class fidelity where measured); a dashed line
    marks the value of exact samples of the true conditional. A metric spanning more than a factor 20 gets a
    log axis. Returns the matplotlib ``Figure``."""
    fig = _figure(4.2 * len(metrics) + 2.4, 4.2)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    unit_x = x_metric in ("class_fidelity", "class_accuracy", "in_support")
    floor = distance_floor([p.mean(x_metric) for p in points]) if x_metric in FLOORED else None
    for ax, metric in zip(axes, metrics, strict=True):
        drawn = _draw_lines(ax, points, x_metric, metric, floor)
        _mark_floor(ax, floor)
        truth = DIVERSITY.get(metric)
        if isinstance(truth, str):
            values = [p.mean(truth) for p in points]
            values = [v for v in values if math.isfinite(v)]
            truth = sum(values) / len(values) if values else None
        ys = [y for _, y in drawn]
        if isinstance(truth, float) and math.isfinite(truth):
            ax.axhline(truth, color="black", linestyle="--", linewidth=1.0, alpha=0.7, label="exact samples")
            ys.append(truth)
        if unit_x:
            _scale_axes(ax, [], ys)
            _fraction_axis(ax, "x", [x for x, _ in drawn], nbins=4)
        else:
            _scale_axes(ax, [x for x, _ in drawn], ys)
        ax.set_xlabel(axis_label(x_metric, "x"), fontsize=9)
        ax.set_ylabel(axis_label(metric, "y").replace("(", "\n(", 1) if len(metric) > 20 else axis_label(metric))
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11, x=0.0, ha="left")
    _shared_legend(axes, axes[-1])
    return fig


def metric_gamma_figure(points: Sequence[Point], title: str, metrics: Sequence[str]) -> bytes:
    """:func:`metric_gamma_plot` as PNG bytes."""
    return _png(metric_gamma_plot(points, title, metrics))


def metric_gamma_plot(points: Sequence[Point], title: str, metrics: Sequence[str]) -> Any:
    """One panel per metric against the guidance scale γ: each line's means over its runs (±1 std bars), joined
    in γ order. Points whose γ is not one number (per-sample scales) are left out. Returns the ``Figure``."""
    cols = min(len(metrics), 2)
    rows = -(-len(metrics) // cols)
    fig = _figure(4.8 * cols + 2.6, 3.3 * rows + 0.4)
    grid = fig.subplots(rows, cols, squeeze=False)
    axes = [ax for row in grid for ax in row]
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    axes = axes[: len(metrics)]
    for ax, metric in zip(axes, metrics, strict=True):
        for line_points in _by_line(points).values():
            line = line_points[0].line
            xy = [(gamma_sort(p.gamma), p.mean(metric), p.std(metric)) for p in line_points]
            xy = sorted((x, y, e) for x, y, e in xy if math.isfinite(x) and math.isfinite(y))
            if not xy:
                continue
            xs, ys, errs = [x for x, _, _ in xy], [y for _, y, _ in xy], [e for _, _, e in xy]
            ax.plot(xs, ys, color=line.color, linestyle=line.linestyle, linewidth=1.4, alpha=0.8, zorder=2)
            ax.scatter(xs, ys, color=line.color, marker=line.marker, s=42, zorder=3, label=line.name)
            if any(errs):
                ax.errorbar(xs, ys, yerr=errs, fmt="none", ecolor=line.color, alpha=0.5, zorder=2)
        ax.set_xlabel("guidance scale γ", fontsize=9)
        ax.set_title(axis_label(metric), fontsize=9, loc="left")
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.grid(True, alpha=0.3)
    fig.suptitle(title, fontsize=11, x=0.0, ha="left")
    _shared_legend(axes, axes[cols - 1])
    return fig


def nfe_figure(points: Sequence[Point], lines: Sequence[Line]) -> bytes:
    """Network evaluations per sample for every method and γ (one row per line)."""
    rows: list[tuple[Line, dict[float, list[str]]]] = []
    for line in lines:
        by_nfe: dict[float, list[str]] = {}
        for p in sorted((p for p in points if p.line.key == line.key), key=lambda p: gamma_sort(p.gamma)):
            for nfe in sorted({float(r["nfe"]) for r in p.rows if r.get("nfe") is not None}):
                by_nfe.setdefault(nfe, []).append(gamma_text(p.gamma))
        if by_nfe:
            rows.append((line, by_nfe))
    fig = _figure(8.6, 1.2 + 0.42 * max(len(rows), 1))
    ax = fig.add_subplot()
    for i, (line, by_nfe) in enumerate(rows):
        xs = list(by_nfe)
        ax.plot(xs, [i] * len(xs), color=line.color, linewidth=1.0, alpha=0.5)
        ax.scatter(xs, [i] * len(xs), color=line.color, marker=line.marker, s=48, zorder=3)
        for x, gammas in by_nfe.items():
            text = ", ".join(g for g in gammas if g)
            if text:
                ax.annotate(f"γ={text}", (x, i), xytext=(0, 7), textcoords="offset points", ha="center", fontsize=7.5)
    ax.set_yticks(range(len(rows)), [line.name for line, _ in rows])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.invert_yaxis()
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("network evaluations per sample, NFE  (← fewer is cheaper)")
    ax.set_title("cost: NFE per method and γ", fontsize=11, loc="left")
    ax.grid(True, axis="x", alpha=0.3)
    ax.margins(x=0.12)
    return _png(fig)


@dataclass
class ScheduleCurve:
    """One guider configuration's per-step plan (``schedule_table`` rows) and the grid's last time."""

    line: Line
    name: str
    table: list[dict[str, Any]]
    t_end: float


def schedule_figure(curves: Sequence[ScheduleCurve]) -> bytes:
    """:func:`schedule_plot` as PNG bytes."""
    return _png(schedule_plot(curves))


def schedule_plot(curves: Sequence[ScheduleCurve]) -> Any:
    """γ per step against time for each distinct guider configuration, one panel per method; filled markers
    evaluate both passes at that step, hollow ones the conditional pass only. Scales above 30 put the γ axis
    on a symmetric log scale (linear within ±1), so γ = 1 and γ = 1000 both stay readable. Returns the
    matplotlib ``Figure``."""
    panels: dict[str, list[ScheduleCurve]] = {}
    for c in curves:
        panels.setdefault(c.line.label, []).append(c)
    fig = _figure(8.6, 0.5 + 1.8 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True, sharey=True)[:, 0]
    for ax, (label, group) in zip(axes, panels.items(), strict=True):
        for k, c in enumerate(group):
            t = [row["t"] for row in c.table] + [c.t_end]
            gamma = [_mean_gamma(row["gamma"]) for row in c.table]
            style = ("-", "--", ":", "-.")[k % 4]
            ax.step(t, [*gamma, gamma[-1]], where="post", color=c.line.color, linestyle=style, label=c.name, lw=1.6)
            passes = [len(row["passes"].split("+")) if row["passes"] != "none" else 0 for row in c.table]
            two = [i for i, n in enumerate(passes) if n >= 2]
            one = [i for i, n in enumerate(passes) if n == 1]
            ax.scatter([t[i] for i in two], [gamma[i] for i in two], color=c.line.color, s=16, zorder=3)
            ax.scatter(
                [t[i] for i in one],
                [gamma[i] for i in one],
                facecolors="white",
                edgecolors=c.line.color,
                s=16,
                zorder=3,
            )
        ax.set_ylabel("γ")
        ax.set_title(label, fontsize=10, loc="left")
        ax.grid(True, alpha=0.3)
        _legend_outside(ax)
    axes[0].set_xlim(max(1.0, *(c.table[0]["t"] for c in curves)), min(0.0, *(c.t_end for c in curves)))
    values = [_mean_gamma(row["gamma"]) for c in curves for row in c.table]
    values = [v for v in values if math.isfinite(v)]
    if values and max(abs(v) for v in values) > 30:  # γ over decades: symlog, one tick per decade
        from matplotlib.ticker import FuncFormatter, SymmetricalLogLocator

        axes[0].set_yscale("symlog", linthresh=1.0, linscale=0.5)
        lo, hi = min(0.0, *values), max(1.0, *values)
        axes[0].set_ylim(lo - 0.1 * abs(lo), hi * 1.6)
        for ax in axes:
            ax.yaxis.set_major_locator(SymmetricalLogLocator(base=10, linthresh=1.0))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    elif values:  # one γ axis for all methods, from 0 (or below) to the largest scale
        lo, hi = min(0.0, *values), max(1.0, *values)
        axes[0].set_ylim(lo - 0.06 * (hi - lo), hi + 0.1 * (hi - lo))
    axes[-1].set_xlabel("time t  (noise → data; filled: conditional + unconditional pass, hollow: one pass)")
    return fig


def _mean_gamma(gamma: Any) -> float:
    if isinstance(gamma, list):
        values = [float(g) for g in gamma]
        return sum(values) / len(values) if values else math.nan
    try:
        return float(gamma)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class SampleImage:
    """One panel of a sample plot: a run's samples (n, D) and its title and colour."""

    title: str
    color: str
    x: np.ndarray


def _subsample(x: np.ndarray, k: int = MAX_POINTS) -> np.ndarray:
    x = x[np.isfinite(x).all(axis=1)]
    if x.shape[0] <= k:
        return x
    idx = np.random.default_rng(0).choice(x.shape[0], size=k, replace=False)
    return x[np.sort(idx)]


def sample_view(
    data_range: tuple[float, float] | None, arrays: Sequence[np.ndarray], dims: int
) -> list[tuple[float, float]]:
    """The range a sample panel shows, per coordinate (the first ``dims``): the target's ``data_range`` widened by
    :data:`VIEW_MARGIN` of its width on each side, so runs that blow up to 1e5 never squash the others; without
    a data range, the 0.5-99.5% quantiles of ``arrays`` (pass the exact samples first and alone when there are
    some), padded by 8%."""
    if data_range is not None:
        lo, hi = (float(v) for v in data_range)
        pad = VIEW_MARGIN * max(hi - lo, 1e-3)
        return [(lo - pad, hi + pad)] * dims
    finite = [a[np.isfinite(a).all(axis=1)][:, :dims] for a in arrays if a.size]
    stacked = np.concatenate(finite, axis=0) if finite else np.zeros((0, dims))
    if stacked.size == 0:
        return [(-1.0, 1.0)] * dims
    lo, hi = np.quantile(stacked, 0.005, axis=0), np.quantile(stacked, 0.995, axis=0)
    pad = 0.08 * np.maximum(hi - lo, 1e-3)
    return [(float(a - p), float(b + p)) for a, b, p in zip(lo, hi, pad, strict=True)]


def _inside(x: np.ndarray, view: Sequence[tuple[float, float]]) -> np.ndarray:
    inside = np.isfinite(x).all(axis=1)
    for d, (lo, hi) in enumerate(view):
        with np.errstate(invalid="ignore"):
            inside &= (x[:, d] >= lo) & (x[:, d] <= hi)
    return inside


def outside_count(x: np.ndarray, view: Sequence[tuple[float, float]]) -> int:
    """How many samples (rows of ``x``, (n, D)) a panel showing ``view`` cannot show: a coordinate outside its
    range, or not finite."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return int((~_inside(x, view)).sum())


def samples_figure(
    exact: np.ndarray | None,
    rows: Sequence[Sequence[SampleImage]],
    title: str,
    view: Sequence[tuple[float, float]] | None = None,
) -> bytes:
    """:func:`samples_plot` as PNG bytes."""
    return _png(samples_plot(exact, rows, title, view))


def samples_plot(
    exact: np.ndarray | None,
    rows: Sequence[Sequence[SampleImage]],
    title: str,
    view: Sequence[tuple[float, float]] | None = None,
) -> Any:
    """Samples of selected runs (colour) over exact samples of the true conditional (grey), one row of panels
    per method line (a single wrapped row when every line shows one run): histograms for 1-D targets,
    scatter plots of the first two coordinates otherwise; at most ``MAX_POINTS`` points per panel.

    Every panel shows ``view`` (per coordinate; default: :func:`sample_view` of the exact samples, else of the
    runs) and says how many of its samples lie outside it; in scatter plots those are drawn as ``x`` on the
    border they crossed. Returns the matplotlib ``Figure``.
    """
    runs = [
        [SampleImage(p.title, p.color, np.asarray(p.x, dtype=np.float64).reshape(len(p.x), -1)) for p in r]
        for r in rows
        if r
    ]
    flat = [p for r in runs for p in r]
    if not flat:
        raise ValueError("samples_figure: no runs to draw")
    ref = None if exact is None else _subsample(np.asarray(exact, dtype=np.float64).reshape(len(exact), -1))
    dim = (ref if ref is not None else flat[0].x).shape[1]
    dims = 1 if dim == 1 else 2
    if view is None:
        view = sample_view(None, [ref] if ref is not None and len(ref) else [r.x for r in flat], dims)
    view = list(view)[:dims]
    head: list[SampleImage | None] = [None] if ref is not None else []
    if max(len(r) for r in runs) == 1 or len(flat) <= 3:  # wrap: exact, then every run
        items = head + flat
        ncols = min(4, len(items))
        layout = [items[i : i + ncols] for i in range(0, len(items), ncols)]
    else:  # exact alone in the first column of the first row; a method per row
        ncols = len(head) + max(len(r) for r in runs)
        layout = [(head if i == 0 else [False] * len(head)) + list(r) for i, r in enumerate(runs)]
    nrows = len(layout)
    fig = _figure(2.7 * ncols, 2.6 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=dims == 2)
    smallest = min(max(int(np.isfinite(r.x).all(axis=1).sum()), 1) for r in flat)
    bins = np.linspace(view[0][0], view[0][1], int(np.clip(2 * math.sqrt(smallest), 12, 40)) + 1)
    for i, j in np.ndindex(nrows, ncols):
        ax = axes[i, j]
        item = layout[i][j] if j < len(layout[i]) else False
        if item is False:
            ax.set_visible(False)
            continue
        if item is not None:
            inside = _inside(item.x, view)
            shown = _subsample(item.x[inside])
            beyond = _subsample(item.x[~inside])
        if dims == 1:
            if ref is not None:
                ax.hist(ref[:, 0], bins=bins, density=True, color=_GREY, alpha=0.45)
            if item is not None and len(shown):
                ax.hist(shown[:, 0], bins=bins, density=True, histtype="stepfilled", color=item.color, alpha=0.25)
                ax.hist(shown[:, 0], bins=bins, density=True, histtype="step", color=item.color, linewidth=1.5)
            ax.set_yticks([])
        else:
            if ref is not None:
                ax.scatter(ref[:, 0], ref[:, 1], s=3, color=_GREY, alpha=0.35 if item is not None else 0.8, lw=0)
            if item is not None:
                ax.scatter(shown[:, 0], shown[:, 1], s=4, color=item.color, alpha=0.7, lw=0)
                if len(beyond):  # on the border they crossed
                    edge = np.column_stack([np.clip(beyond[:, d], *view[d]) for d in range(2)])
                    ax.scatter(edge[:, 0], edge[:, 1], s=14, marker="x", color=item.color, alpha=0.6, lw=0.8)
            ax.set_ylim(*view[1])
            ax.tick_params(labelleft=True)
        ax.set_xlim(*view[0])
        if item is None:
            ax.set_title(f"exact p(x | c), {counted(len(ref), 'sample')}", fontsize=8.5, color="#333")
        else:
            n = item.x.shape[0]
            ax.set_title(f"{item.title}\n{n - int(inside.sum())} of {n} outside view", fontsize=8.5, color=item.color)
        ax.tick_params(labelsize=7, labelbottom=True)
    coords = "x" if dims == 1 else "x₁ (x), x₂ (y)"
    extra = f"; first two of {dim} coordinates" if dim > 2 else ""
    fig.suptitle(
        f"{title}  —  grey: exact samples; colour: run; ×: beyond the view  [{coords}{extra}]",
        fontsize=10,
        x=0.0,
        ha="left",
    )
    return fig
