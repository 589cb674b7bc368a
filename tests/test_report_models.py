"""The report's sections for sweeps on a trained image model: the FD/accuracy Pareto front (checked against a brute
force), the metrics table with its real-vs-real floors, per-class image grids linked relative to the page, model
runs kept out of the exact-target sections, and a negative energy distance shown as "at the floor"."""

from __future__ import annotations

import math
import os
import re
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from guidelab.experiments.store import ResultStore
from guidelab.report import write_report
from guidelab.report.figures import fd_accuracy_plot
from guidelab.report.models import ClassMeanPoint, is_model_run

# (accuracy, FD) per (method, γ), averaged over the two classes; class "3" is +0.02 / −1 and class "7" −0.02 / +1
MEANS = {
    ("cfg", 1.0): (0.60, 20.0),
    ("cfg", 3.0): (0.80, 12.0),
    ("cfg", 5.0): (0.95, 30.0),
    ("apg", 1.0): (0.55, 10.0),
    ("apg", 3.0): (0.85, 11.0),
    ("apg", 5.0): (0.90, 25.0),
}
OFFSET = {"3": (0.02, -1.0), "7": (-0.02, 1.0)}
FD_FLOOR = {"3": 10.0, "7": 11.0}  # mean 10.5: apg at γ = 1 (FD 10) is at the floor
ERROR = "RuntimeError: CUDA out of memory <b>bold</b> " + "x" * 300
SCHEDULE = [{"step": 0, "t": 1.0, "lam": 0.0, "gamma": 1.0, "passes": "cond+uncond"}]


def _row(hash_: str, label: str, cond: str, gamma: float | None, seed: int, **extra) -> dict:
    schedule = [{**s, "gamma": gamma if gamma is not None else 1.0} for s in SCHEDULE]
    return {
        "hash": hash_,
        "sweep": "models-test",
        "status": "ok",
        "error": None,
        "target": "digits",
        "cond": cond,
        "path": "rectified-flow",
        "grid": "uniform",
        "steps": 8,
        "solver": "euler",
        "guider": label,
        "label": label,
        "seed": seed,
        "n": 16,
        "gamma": gamma,
        "nfe": 16,
        "diverged": 0,
        "wall_time_s": 0.1,
        "guider_config": {"name": label, "scale": gamma},
        "schedule": schedule,
        "config": {
            "reference": {"dataset": "digits", "split": "test"},
            "model": {"kind": "shipped", "name": "digits"},
            "n": 16,
            "steps": 8,
        },
        "metrics": {},
        **extra,
    }


def model_rows() -> list[dict]:
    """2 methods × 3 scales × 2 classes at seed 0, a second seed of one cell (same metrics) and one failed run."""
    rows = []
    for (label, gamma), (acc, fd) in MEANS.items():
        for cond, (da, dfd) in OFFSET.items():
            metrics = {
                "accuracy": acc + da,
                "confidence": acc,
                "fd": fd + dfd,
                "precision": 0.7,
                "recall": 0.5,
                "density": 0.9,
                "coverage": 0.6,
                "vendi": 4.0,
                "out_of_range": 0.01,
                "x0_rms": 0.8,
                "diverged_fraction": 0.0,
                "n_excluded": 0.0,
                "fd_floor": FD_FLOOR[cond],
                "accuracy_floor": 0.97,
                "precision_floor": 0.75,
                "recall_floor": 0.74,
                "vendi_floor": 6.0,
            }
            rows.append(_row(f"{label}-{gamma:g}-{cond}-0", label, cond, gamma, 0, metrics=metrics))
            if (label, gamma) == ("cfg", 3.0):
                rows.append(_row(f"{label}-{gamma:g}-{cond}-1", label, cond, gamma, 1, metrics=metrics))
    failed = _row("cfg-7-3-0", "cfg", "3", None, 0, status="error", error=ERROR, nfe=None, diverged=None)
    failed["guider_config"] = {"name": "cfg", "scale": 7.0}
    failed["schedule"] = []
    return [*rows, failed]


def exact_rows() -> list[dict]:
    """Two exact-target runs; the first has a negative (unbiased, under the noise floor) energy distance."""
    rows = []
    for k, (gamma, ed) in enumerate(((1.0, -0.0031), (3.0, 0.0215))):
        row = _row(f"exact-{k}", "cfg", "a", gamma, 0, metrics={"energy_distance": ed, "class_fidelity": 0.9 + k / 20})
        row.update(target="multimodal-2d", config={"n": 16, "steps": 8})
        rows.append(row)
    return rows


def write_sweep(folder: Path, rows: list[dict]) -> None:
    import matplotlib.pyplot as plt

    store = ResultStore(folder / "results.sqlite")
    for row in rows:
        store.put(row)
        if row["status"] == "ok" and is_model_run(row):
            (folder / "runs" / row["hash"]).mkdir(parents=True)
            plt.imsave(folder / "runs" / row["hash"] / "grid.png", np.linspace(0, 1, 32).reshape(4, 8), cmap="gray")


class Page(HTMLParser):
    """Sections (id → HTML text), image sources and the Pareto table's (label, γ) rows."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text
        self.sections = dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, flags=re.S))
        self.img_srcs: list[str] = []
        self.figures: list[tuple[str, str]] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.figures.append((a.get("data-figure", ""), a.get("data-key", "")))
            if a.get("data-figure") == "model-grid":
                self.img_srcs.append(a["src"])

    def front(self) -> set[tuple[str, str]]:
        table = re.search(r'<table class="best front">(.*?)</table>', self.text, flags=re.S)
        assert table, "no Pareto front table"
        return set(re.findall(r'<tr data-label="([^"]+)" data-gamma="([^"]+)">', table.group(1)))

    def visible(self) -> str:
        text = re.sub(r"<(script|style)>.*?</\1>", " ", self.text, flags=re.S)
        return " ".join(unescape(re.sub(r"<[^>]*>", " ", text)).split())


def brute_force_front() -> set[tuple[str, str]]:
    """(label, γ) whose (accuracy, FD) no other point matches or beats in both with one strictly better."""
    front = set()
    for key, (acc, fd) in MEANS.items():
        beaten = any(a >= acc and f <= fd and (a > acc or f < fd) for other, (a, f) in MEANS.items() if other != key)
        if not beaten:
            front.add((key[0], f"{key[1]:g}"))
    return front


@pytest.fixture(scope="module")
def model_report(tmp_path_factory):
    """The model sweep alone, its report written into the sweep folder and into another folder."""
    tmp = tmp_path_factory.mktemp("models")
    write_sweep(tmp / "sweep", model_rows())
    inside = write_report(tmp / "sweep")
    outside = write_report(tmp / "sweep", tmp / "elsewhere" / "deep" / "r.html")
    return tmp, Page(inside.read_text(encoding="utf-8")), Page(outside.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def mixed_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    write_sweep(tmp / "sweep", [*exact_rows(), *model_rows()])
    return Page(write_report(tmp / "sweep").read_text(encoding="utf-8"))


def test_model_section_exists_with_its_figure(model_report):
    _, page, _ = model_report
    assert "model-0" in page.sections and "shipped model digits on digits" in page.sections["model-0"]
    assert "reference: the digits test split" in page.sections["model-0"]
    assert ("model-pareto", "digits") in page.figures
    assert "indistinguishable from real data at this sample size" in page.visible()
    assert not [s for s in page.sections if s.startswith("group-")]  # no exact-target section for model runs


def test_pareto_table_lists_exactly_the_non_dominated_points(model_report):
    _, page, _ = model_report
    expected = brute_force_front()
    assert expected == {("apg", "1"), ("apg", "3"), ("apg", "5"), ("cfg", "5")}  # the fixture is what we think
    assert page.front() == expected


def test_front_of_class_means_weighs_classes_equally():
    rows = [
        {"cond": "3", "metrics": {"fd": 1.0}},
        {"cond": "3", "metrics": {"fd": 1.0}},
        {"cond": "7", "metrics": {"fd": 4.0}},
    ]
    point = ClassMeanPoint(None, 1.0, rows)  # type: ignore[arg-type]
    assert point.mean("fd") == pytest.approx(2.5)  # not 2.0, the mean over runs
    assert point.classes == 2


def test_grid_cells_link_the_lowest_seed_relative_to_the_report(model_report):
    tmp, inside, outside = model_report
    ok = [r for r in model_rows() if r["status"] == "ok"]
    first = {r["hash"] for r in ok if r["seed"] == 0}
    for page, report_dir in ((inside, tmp / "sweep"), (outside, tmp / "elsewhere" / "deep")):
        linked = {Path(os.path.normpath(report_dir / src)) for src in page.img_srcs}
        assert linked == {tmp / "sweep" / "runs" / h / "grid.png" for h in first}
        assert all(not src.startswith("/") for src in page.img_srcs)
    assert "runs/cfg-3-3-0/grid.png" in inside.img_srcs
    assert "../../sweep/runs/cfg-3-3-0/grid.png" in outside.img_srcs


def test_grid_tables_are_methods_by_scales_with_failures_and_gaps(model_report):
    _, page, _ = model_report
    tables = dict(re.findall(r'<table class="images model-grids" data-cond="([^"]+)">(.*?)</table>', page.text, re.S))
    assert set(tables) == {"3", "7"}
    heads = {c: re.findall(r'<th scope="col">scale ([^<]+)</th>', t) for c, t in tables.items()}
    assert heads == {"3": ["1", "3", "5", "7"], "7": ["1", "3", "5"]}  # sorted; the failed run's scale in class 3
    cfg7 = re.search(r'<tr data-label="cfg">.*?<td data-gamma="7">(.*?)</td>', tables["3"], re.S).group(1)
    assert "failed: RuntimeError: CUDA out of memory &lt;b&gt;bold&lt;/b&gt;" in cfg7 and "…" in cfg7
    apg7 = re.search(r'<tr data-label="apg">.*?<td data-gamma="7">(.*?)</td>', tables["3"], re.S).group(1)
    assert re.fullmatch(r'<span class="muted">—</span>', apg7)
    assert "<b>bold" not in page.text  # escaped
    caption = re.search(r'data-key="apg-1-3-0".*?<figcaption>(.*?)</figcaption>', page.text, re.S).group(1)
    assert "accuracy 0.57" in caption and "FD at the floor (9)" in caption


def test_metrics_table_has_the_floor_row_and_marks_fd_at_the_floor(model_report):
    _, page, _ = model_report
    table = re.search(r'<table class="runs sortable model-metrics">(.*?)</table>', page.text, re.S).group(1)
    head, body = table.split("</thead>")
    floor = re.search(r'<tr class="floor-row">(.*?)</tr>', head, re.S).group(1)
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", floor)
    assert cells[0] == "real data (floor)" and "10.5" in cells and "0.97" in cells
    assert len(re.findall(r"<tr data-label=", body)) == len(MEANS)
    apg1 = re.search(r'<tr data-label="apg" data-gamma="1">(.*?)</tr>', body, re.S).group(1)
    assert "at the floor (10)" in apg1
    cfg3 = re.search(r'<tr data-label="cfg" data-gamma="3">(.*?)</tr>', body, re.S).group(1)
    assert "at the floor" not in cfg3 and ">12<" in cfg3


def test_floor_line_in_the_figure():
    fig = fd_accuracy_plot([], [], "t", fd_floor=10.5)
    floors = [line for line in fig.axes[0].get_lines() if line.get_label() == "real-vs-real floor"]
    assert len(floors) == 1 and list(floors[0].get_ydata()) == [10.5, 10.5]
    assert floors[0].get_linestyle() == "--"


def test_mixed_folder_keeps_model_runs_out_of_exact_sections(mixed_report):
    page = mixed_report
    groups = {s: body for s, body in page.sections.items() if s.startswith("group-")}
    assert len(groups) == 1
    (body,) = groups.values()
    assert "multimodal-2d" in body and "digits" not in body
    assert ("pareto", "multimodal-2d|a") in page.figures and ("model-pareto", "digits") in page.figures
    assert not [key for kind, key in page.figures if kind == "pareto" and key.startswith("digits")]
    overview = page.sections["overview"]
    assert overview.count('href="#model-0"') == 2 and overview.count('href="#group-0"') == 1
    runs = re.findall(r'<tr class="run (?:ok|error)" data-hash="([^"]+)"', page.sections["runs"])
    assert len(runs) == len(exact_rows()) + len(model_rows())


def test_negative_energy_distance_is_at_the_floor(mixed_report):
    page = mixed_report
    cell = re.search(r'<td class="num floor" data-v="-0.0031" title="([^"]*)">([^<]*)</td>', page.text)
    assert cell and cell.group(2) == "at the floor" and "-0.0031" in unescape(cell.group(1))
    visible = page.visible()
    assert "0.0031" not in visible and "0.0215" in visible
    assert not re.search(r"(^|\s)[-−]0\.00\d", visible)
    assert math.isclose(float(re.search(r'data-v="(0\.0215)"', page.text).group(1)), 0.0215)


def test_a_scheduled_run_sits_in_the_column_of_the_scale_it_was_given():
    from guidelab.report.models import _setting_gamma

    interval = {"gamma": 1.4375, "guider_config": {"name": "cfg", "schedule": {"name": "interval", "scale": 2.0}}}
    assert _setting_gamma(interval) == 2.0  # the nominal scale, not the effective mean
    plain = {"gamma": 3.0, "guider_config": {"name": "apg", "scale": 3.0}}
    assert _setting_gamma(plain) == 3.0
    failed = {"gamma": None, "guider_config": {"name": "cfg"}, "params": {"scale": 7.0}}
    assert _setting_gamma(failed) == 7.0


def test_settings_name_lines_only_where_they_vary_within_a_target():
    from guidelab.report.data import Catalog

    def row(target, steps, label="cfg"):
        return {"status": "ok", "target": target, "label": label, "params": {"scale": 2.0},
                "config": {"path": "rf", "steps": steps, "solver": "heun"}}  # fmt: skip

    across = Catalog([row("digits", 12), row("multimodal-2d", 32)])
    assert across.varying == [] and [line.name for line in across.lines] == ["cfg"]
    within = Catalog([row("digits", 12), row("digits", 32), row("multimodal-2d", 32)])
    assert within.varying == ["steps"]
    assert sorted(line.name for line in within.lines) == ["cfg (steps=12)", "cfg (steps=32)"]


def test_cost_and_schedules_draw_one_figure_per_sweep(tmp_path):
    other = [{**r, "hash": "x" + r["hash"], "sweep": "second"} for r in model_rows()]
    write_sweep(tmp_path / "sweep", [*model_rows(), *other])
    text = write_report(tmp_path / "sweep").read_text()
    sweeps = {r["sweep"] for r in model_rows()} | {"second"}
    assert len(sweeps) == 2
    for kind in ("nfe", "schedule"):
        keys = set(re.findall(rf'data-figure="{kind}" data-key="([^"]+)"', text))
        assert keys == sweeps, kind  # never one line across two sweeps


def test_a_far_point_is_named_outside_the_view_not_squashing_the_front(tmp_path):
    from guidelab.report.data import Catalog, aggregate, load_runs
    from guidelab.report.models import front_points

    far = [_row(f"cfg-{c}-9-0", "cfg", c, 9.0, 0) for c in ("3", "7")]
    for row in far:
        row["metrics"].update(accuracy=0.3, fd=500.0)
    write_sweep(tmp_path / "sweep", [*model_rows(), *far])
    rows = [r for r in load_runs([tmp_path / "sweep" / "results.sqlite"]) if r["status"] == "ok"]
    catalog = Catalog(rows)
    points = [ClassMeanPoint(p.line, p.gamma, p.rows) for p in aggregate(rows, catalog)]
    front = front_points(points)
    fig = fd_accuracy_plot(points, front, "t", fd_floor=10.5)
    ax = fig.axes[0]
    cap = 2 * max([p.mean("fd") for p in front] + [10.5])
    assert ax.get_ylim()[1] == pytest.approx(cap) and cap < 500  # the view ends at twice the front's worst
    assert ax.get_xlim()[0] > 0.3  # the far point's accuracy does not stretch the x axis either
    notes = [t.get_text() for t in ax.texts if "above the view" in t.get_text()]
    assert len(notes) == 1 and "1 point above the view" in notes[0] and "FD 500" in notes[0]
    plain = fd_accuracy_plot([p for p in points if p.gamma != 9.0], front, "t", fd_floor=10.5)
    assert not [t for t in plain.axes[0].texts if "above the view" in t.get_text()]  # nothing far: no note
