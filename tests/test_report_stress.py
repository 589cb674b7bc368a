"""The report of a sweep with outliers (issue 11 §4): cfg at γ = 1 … 1000 and beta-cfg (norm_power 2) at γ = 10, 30
on multimodal-2d. Samples far outside the target, a partly and a fully diverged run, and a distance at or below 0
must not break it: sample panels keep the target's range and count what lies outside, diverged runs are listed,
no negative distance is printed, log axes keep their tick labels apart, the fidelity axis fits its data and the
run table scrolls in its box. The last test (slow) looks at the page in headless Chromium."""

from __future__ import annotations

import itertools
import re
import textwrap
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guidelab.experiments.config import load_sweep
from guidelab.experiments.runner import run_sweep
from guidelab.experiments.store import ResultStore
from guidelab.report import figures, write_report
from guidelab.report.data import Catalog, aggregate, find_stores, load_runs
from guidelab.report.tables import AT_FLOOR
from guidelab.targets import get_target

SWEEP = """
name: stress
targets:
  - {target: multimodal-2d, conds: [a]}
grids: [{kind: uniform, steps: 8}]
guiders:
  - {name: cfg, params: {scale: [1.0, 3.0, 100.0, 1000.0]}}
  - {name: beta-cfg, params: {scale: [10.0, 30.0], norm_power: 2.0}}
n: 32
metrics: [energy_distance, class_fidelity, vendi, within_mode_variance]
"""
NEGATIVE_ED = -0.0042  # an unbiased energy distance below 0: "at the floor", never printed


@pytest.fixture(scope="module")
def stress(tmp_path_factory) -> tuple[Path, Path, str]:
    """The stress sweep with cfg γ = 1's energy distance set below 0; the report written once."""
    tmp = tmp_path_factory.mktemp("stress")
    (tmp / "sweep.yaml").write_text(textwrap.dedent(SWEEP))
    out = tmp / "out"
    run_sweep(load_sweep(tmp / "sweep.yaml"), out)
    store = ResultStore(out / "results.sqlite")
    first = next(r for r in store.rows() if r["label"] == "cfg" and r["gamma"] == 1.0)
    store.put({**first, "metrics": {**first["metrics"], "energy_distance": NEGATIVE_ED}})
    html = write_report(out)
    return out, html, html.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def points(stress) -> list[Any]:
    out, _, _ = stress
    rows = load_runs(find_stores(out))
    return aggregate([r for r in rows if r["status"] == "ok"], Catalog(rows))


def _rows(out: Path) -> dict[tuple[str, float], dict[str, Any]]:
    return {(r["label"], r["gamma"]): r for r in ResultStore(out / "results.sqlite").rows()}


def test_the_sweep_has_the_outliers_it_is_for(stress):
    out, _, _ = stress
    rows = _rows(out)
    assert rows["cfg", 1000.0]["diverged"] == 32 and "energy_distance" not in rows["cfg", 1000.0]["metrics"]
    assert 0 < rows["beta-cfg", 30.0]["diverged"] < 32
    x = np.load(out / "runs" / rows["beta-cfg", 10.0]["hash"] / "samples.npy")
    assert np.abs(x).max() > 10 * get_target("multimodal-2d").data_scale


def _tick_boxes(fig: Any, axis: Any) -> list[Any]:
    renderer = fig.canvas.get_renderer()
    return [t.get_window_extent(renderer) for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]


def assert_ticks_apart(fig: Any) -> None:
    """No two visible tick labels of one axis overlap (each axis has at least two)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            boxes = _tick_boxes(fig, axis)
            if not boxes:
                continue  # a histogram's hidden density axis
            assert len(boxes) >= 2, f"{ax.get_title()}: fewer than two tick labels"
            for a, b in itertools.combinations(boxes, 2):
                assert not a.overlaps(b), f"{ax.get_title()!r}: tick labels overlap"


def test_sample_panels_keep_the_targets_range_and_count_what_lies_outside(stress):
    out, _, text = stress
    rows = _rows(out)
    lo, hi = get_target("multimodal-2d").data_range
    view = figures.sample_view((lo, hi), [], 2)
    width = hi - lo
    assert view == [(lo - 0.25 * width, hi + 0.25 * width)] * 2
    far = np.load(out / "runs" / rows["beta-cfg", 10.0]["hash"] / "samples.npy")
    near = np.load(out / "runs" / rows["cfg", 1.0]["hash"] / "samples.npy")
    blown = np.array([[3e5, -3e5], [np.nan, 0.0]])  # a sample at ±3e5 and a non-finite one
    panels = [
        [figures.SampleImage("near", "#1f77b4", near)],
        [figures.SampleImage("far", "#d62728", np.concatenate([far, blown]))],
    ]
    fig = figures.samples_plot(None, panels, "stress", view)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    for ax in shown:  # every panel: the target's range, not ±3e5
        assert ax.get_xlim() == pytest.approx(view[0]) and ax.get_ylim() == pytest.approx(view[1])
    outside_far = figures.outside_count(np.concatenate([far, blown]), view)
    assert outside_far == figures.outside_count(far, view) + 2
    titles = [ax.get_title() for ax in shown]
    assert f"{figures.outside_count(near, view)} of {len(near)} outside view" in titles[0]
    assert f"{outside_far} of {len(far) + 2} outside view" in titles[1]
    assert_ticks_apart(fig)
    # the report: the same counts in the panel note, and the caption names the range shown
    k = figures.outside_count(far, view)
    assert k > 0 and f"beta-cfg γ=10: {k} of 32" in unescape(text)
    assert "Samples outside the shown range" in text and "data range" in text


class _Tables(HTMLParser):
    """Cell texts per table class, row by row; and the class/style of the run table's container."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.runs_parent: str = ""
        self._stack: list[str] = []
        self._div: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "div":
            self._div.append(a.get("class", ""))
        elif tag == "table":
            name = a.get("id") or a.get("class", "")
            self._stack.append(name)
            self.tables.setdefault(name, [])
            if a.get("id") == "runs-table":
                self.runs_parent = self._div[-1] if self._div else ""
        elif tag == "tr" and self._stack:
            self.tables[self._stack[-1]].append([])
        elif tag == "td" and self._stack:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._div:
            self._div.pop()
        elif tag == "table" and self._stack:
            self._stack.pop()
        elif tag == "td" and self._cell is not None and self._stack:
            self.tables[self._stack[-1]][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def _tables(text: str) -> _Tables:
    parser = _Tables()
    parser.feed(text)
    return parser


def test_diverged_runs_are_listed_and_the_fully_diverged_one_does_not_vanish(stress):
    _, _, text = stress
    rows = [r for r in _tables(text).tables["best diverged"] if r]
    by_run = {(r[0], r[1]): r for r in rows}
    assert set(by_run) == {("cfg", "1000"), ("beta-cfg", "30")}
    assert by_run["cfg", "1000"][4] == "32 of 32" and "every sample diverged" in by_run["cfg", "1000"][5]
    assert re.fullmatch(r"\d+ of 32", by_run["beta-cfg", "30"][4])
    assert "Not in the plot" in text and "cfg γ=1000" in unescape(text)
    assert "in 1 every sample diverged" in text


def test_no_negative_distance_is_printed(stress):
    _, _, text = stress
    tables = _tables(text).tables
    cells = [c for name in ("runs-table", "best") for row in tables.get(name, []) for c in row]
    assert AT_FLOOR in cells
    assert not [c for c in cells if re.match(r"^[-−]\d", c)]
    visible = re.sub(r"<[^>]*>", " ", re.sub(r"<(script|style)>.*?</\1>", " ", text, flags=re.S))
    assert "0.0042" not in visible  # only the sort value (data-v) keeps the number
    assert 'data-v="-0.0042"' in text


def test_log_distance_axis_clips_to_a_marked_floor(points):
    fig = figures.pareto_plot(points, "stress")
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    floor = figures.distance_floor([p.mean("energy_distance") for p in points])
    positive = [p.mean("energy_distance") for p in points if p.mean("energy_distance") > 0]
    assert floor == pytest.approx(min(positive) / 3)
    assert ax.get_xlim()[0] <= floor
    marks = [ln for ln in ax.get_lines() if ln.get_label().startswith("noise floor")]
    assert len(marks) == 1 and marks[0].get_xdata()[0] == pytest.approx(floor)
    assert any("at floor" in t.get_text() for t in ax.texts)
    assert_ticks_apart(fig)


def test_fidelity_axis_fits_the_data(points):
    fig = figures.pareto_plot(points, "stress")
    lo, hi = fig.axes[0].get_ylim()
    values = [p.mean("class_fidelity") for p in points if np.isfinite(p.mean("class_fidelity"))]
    assert min(values) > 0.98  # the case: every fidelity in 0.98..1
    assert lo >= min(values) - 0.01 and lo > 0.9 and hi <= 1.001 and hi > max(values)
    div = figures.diversity_plot(points, "stress", ["vendi", "within_mode_variance_ratio"], "class_fidelity")
    for ax in div.axes[:2]:
        assert ax.get_xlim()[0] > 0.9 and ax.get_xlim()[1] <= 1.001
    assert div.axes[1].get_yscale() == "log"  # the variance ratio spans more than a factor 20
    assert_ticks_apart(div)


def test_log_ticks_never_crowd():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for lo, hi in ((0.1, 100.0), (1e-3, 1e3), (1e-6, 1e5), (0.05, 3.0)):
        fig = Figure(figsize=(4.2, 3.0), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([lo, hi], [0, 1])
        figures._scale_axes(ax, [lo, hi], [])
        assert ax.get_xscale() == "log"
        assert_ticks_apart(fig)


def test_schedule_axis_goes_symlog_over_decades(stress):
    out, _, _ = stress
    rows = load_runs(find_stores(out))
    catalog = Catalog(rows)
    curves = [
        figures.ScheduleCurve(catalog.line(r), f"γ={r['gamma']}", r["schedule"], 0.0) for r in rows if r["schedule"]
    ]
    fig = figures.schedule_plot(curves)
    assert all(ax.get_yscale() == "symlog" for ax in fig.axes)
    assert fig.axes[0].get_ylim()[1] >= 1000
    assert_ticks_apart(fig)


def test_run_table_scrolls_inside_its_box(stress):
    _, _, text = stress
    assert _tables(text).runs_parent == "scroll"
    rule = re.search(r"\.scroll\s*\{([^}]*)\}", text)
    assert rule and re.search(r"overflow:\s*auto", rule.group(1)) and re.search(r"max-height:\s*\d", rule.group(1))


@pytest.mark.slow
def test_stress_report_in_the_browser(stress, tmp_path):
    """Headless Chromium renders every image without a console error; the screenshot is kept in
    ``$GUIDELAB_SCREENSHOT_DIR`` (when set) for a person to look at."""
    import os
    import shutil

    from test_report_browser import _body, _chromium, _console_lines, _run

    chromium = _chromium()
    _, html, _ = stress
    url = html.resolve().as_uri()
    dom, stderr = _run(chromium, tmp_path, "--dump-dom", url)
    body = _body(dom).attrs
    assert body.get("data-images-ok") == "true", body
    assert "data-js-errors" not in body
    assert not _console_lines(stderr, url)
    shot = tmp_path / "stress.png"
    _run(chromium, tmp_path, "--window-size=1280,6000", f"--screenshot={shot}", url)
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 50_000
    keep = os.environ.get("GUIDELAB_SCREENSHOT_DIR")
    if keep:
        shutil.copy(shot, Path(keep) / "stress-report.png")
