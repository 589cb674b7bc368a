"""The static HTML report: self-contained, one figure per expected plot, one table row per run; it survives
failed runs, NaN and missing metrics, a single run, only errors, and a folder with only a reproduction."""

from __future__ import annotations

import base64
import json
import math
import re
import sqlite3
import textwrap
from html.parser import HTMLParser
from pathlib import Path

import pytest

from guidelab.experiments.config import load_sweep
from guidelab.experiments.runner import run_sweep
from guidelab.experiments.store import ResultStore
from guidelab.report import report_command, write_report
from guidelab.report.data import find_reproductions, pareto_front
from guidelab.report.html import PNG_SIGNATURE

SWEEP = """
name: report-test
targets:
  - {target: multimodal-2d, conds: [a]}
  - {target: chidambaram-uniform-1d, conds: [pos]}
grids: [{kind: uniform, steps: 6}]
solvers: [euler]
guiders:
  - {name: cfg, params: {scale: [1.0, 3.0]}}
  - {name: apg, params: {scale: [3.0]}}
seeds: [0]
n: 64
metrics: [energy_distance, class_fidelity, vendi, within_mode_variance]
"""
GROUPS = ("multimodal-2d|a", "chidambaram-uniform-1d|pos")


class Page(HTMLParser):
    """The parts of the report the tests check."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.urls: list[str] = []
        self.body: dict[str, str] = {}
        self.run_rows: list[dict[str, str]] = []
        self.tables: list[str] = []
        self.scripts_with_src = 0
        self.error_cells: list[str] = []
        self._in_runs = False
        self._in_err = False
        self._cell_text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for key in ("src", "href"):
            if key in a:
                self.urls.append(a[key])
        if tag == "img":
            self.images.append(a)
        elif tag == "body":
            self.body = a
        elif tag == "script" and "src" in a:
            self.scripts_with_src += 1
        elif tag == "table":
            self.tables.append(a.get("id", ""))
            self._in_runs = a.get("id") == "runs-table"
        elif tag == "tr" and self._in_runs and "run" in a.get("class", "").split():
            self.run_rows.append(a)
        elif tag == "td" and self._in_runs and a.get("class") == "err":
            self._in_err, self._cell_text = True, ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_runs = False
        elif tag == "td" and self._in_err:
            self._in_err = False
            self.error_cells.append(self._cell_text)

    def handle_data(self, data: str) -> None:
        if self._in_err:
            self._cell_text += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def figures_of(page: Page) -> list[tuple[str, str]]:
    return [(img["data-figure"], img["data-key"]) for img in page.images]


def check_images(page: Page) -> None:
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        assert base64.b64decode(img["src"][len(prefix) :], validate=True).startswith(PNG_SIGNATURE)
        assert img["alt"]


def check_self_contained(path: Path, page: Page) -> None:
    assert not [u for u in page.urls if re.match(r"\s*(https?:)?//", u)], "external URL in src/href"
    assert page.scripts_with_src == 0
    assert not re.search(r"(src|href)\s*=\s*[\"']?\s*https?://", path.read_text(encoding="utf-8"))


def write(tmp: Path, text: str) -> Path:
    file = tmp / "sweep.yaml"
    file.write_text(textwrap.dedent(text))
    return file


def tiny_png() -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1.5), dpi=50)
    FigureCanvasAgg(fig)
    fig.add_subplot().plot([0, 1], [1, 0])
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def add_reproduction(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    claims = {"edge_concentration": True, "variance_shrinks": False, "ratio": 0.42, "detail": {"passed": True, "m": 3}}
    (folder / "toy_repro.json").write_text(json.dumps({"reproduction": "toy-repro", "claims": claims}))
    (folder / "toy_repro.png").write_bytes(tiny_png())
    (folder / "not_a_repro.json").write_text(json.dumps({"rows": []}))


@pytest.fixture(scope="module")
def sweep_report(tmp_path_factory):
    """The tiny sweep, plus a failed run (with markup in its error), a run with NaN and missing metrics and no
    samples, and a reproduction in a subfolder; the report written once."""
    tmp = tmp_path_factory.mktemp("report")
    out = tmp / "out"
    run_sweep(load_sweep(write(tmp, SWEEP)), out)
    store = ResultStore(out / "results.sqlite")
    base = store.rows()[0]
    store.put(
        {**base, "hash": "f" * 16, "status": "error", "error": "RuntimeError: boom <script>alert(1)</script> & co",
         "nfe": None, "diverged": None, "metrics": {}, "label": "broken", "params": {"scale": 2.0}}
    )  # fmt: skip
    store.put(
        {**base, "hash": "e" * 16, "status": "ok", "label": "nan-run", "params": {"scale": 5.0},
         "metrics": {"energy_distance": math.nan, "vendi": math.inf}}
    )  # fmt: skip
    add_reproduction(out / "repro" / "toy")
    html = write_report(out)
    return out, html, parse(html)


def test_report_is_written_self_contained_and_parses(sweep_report):
    out, html, page = sweep_report
    assert html == out / "report.html"
    assert html.stat().st_size < 10_000_000
    assert page.body.get("data-expect-table") == "true"
    check_self_contained(html, page)
    check_images(page)


def test_one_image_per_expected_figure(sweep_report):
    _, _, page = sweep_report
    expected = [(kind, key) for key in GROUPS for kind in ("pareto", "diversity", "samples")]
    expected += [("nfe", "all"), ("schedule", "all"), ("reproduction", "toy-repro")]
    assert sorted(figures_of(page)) == sorted(expected)


def test_table_has_one_row_per_run_with_errors(sweep_report):
    out, html, page = sweep_report
    rows = ResultStore(out / "results.sqlite").rows()
    assert len(page.run_rows) == len(rows) == 8
    assert {r["data-hash"] for r in page.run_rows} == {r["hash"] for r in rows}
    assert sum("error" in r["class"].split() for r in page.run_rows) == 1
    assert "RuntimeError: boom <script>alert(1)</script> & co" in page.error_cells
    text = html.read_text(encoding="utf-8")
    assert "<script>alert(1)" not in text  # escaped, not injected
    assert "runs-table" in page.tables
    assert "toy-repro" in text and "variance_shrinks" in text and "✗ not reproduced" in text and "✓ holds" in text
    assert "2 of 3 checks hold" in text


def test_single_run_with_missing_metrics(tmp_path):
    text = (
        SWEEP.replace("  - {target: chidambaram-uniform-1d, conds: [pos]}\n", "")
        .replace("  - {name: apg, params: {scale: [3.0]}}\n", "")
        .replace("scale: [1.0, 3.0]", "scale: [3.0]")
        .replace(
            "metrics: [energy_distance, class_fidelity, vendi, within_mode_variance]", "metrics: [energy_distance]"
        )
    )
    run_sweep(load_sweep(write(tmp_path, text)), tmp_path / "out")
    html = write_report(tmp_path / "out", tmp_path / "elsewhere" / "r.html")
    assert html == tmp_path / "elsewhere" / "r.html"
    page = parse(html)
    check_images(page)
    check_self_contained(html, page)
    # no class fidelity: no Pareto plot, no diversity plot, each said so
    assert sorted(figures_of(page)) == sorted(
        [("samples", "multimodal-2d|a"), ("nfe", "all"), ("schedule", "all")]
    )  # fmt: skip
    assert len(page.run_rows) == 1
    body = html.read_text(encoding="utf-8")
    assert "No fidelity/distance plot" in body and "No diversity plot" in body
    assert "1 run (1 ok, 0 failed)" in body and "1 run, 1 ok." in body and "1 runs" not in body


def test_only_errors(tmp_path):
    text = SWEEP.replace("solvers: [euler]", "solvers: [euler-maruyama]")  # singular at t = 1 on rf: every run fails
    summary = run_sweep(load_sweep(write(tmp_path, text)), tmp_path / "out")
    assert summary.failed == summary.total == 6
    html = write_report(tmp_path / "out")
    page = parse(html)
    check_images(page)
    assert len(page.run_rows) == 6
    assert all("error" in r["class"].split() for r in page.run_rows)
    assert all("t_max" in e for e in page.error_cells)
    assert {kind for kind, _ in figures_of(page)} <= {"schedule"}  # a schedule needs no finished run
    assert "All 3 runs of multimodal-2d" in html.read_text(encoding="utf-8")


def test_reproduction_only_folder_and_cli_function(tmp_path, capsys):
    add_reproduction(tmp_path / "learned")
    html = report_command(tmp_path)
    assert capsys.readouterr().out.strip() == str(html)
    page = parse(html)
    check_images(page)
    assert figures_of(page) == [("reproduction", "toy-repro")]
    assert page.run_rows == [] and page.body.get("data-expect-table") == "false"


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="dir: no such folder"):
        write_report(tmp_path / "missing")
    with pytest.raises(ValueError, match="no runs"):
        write_report(tmp_path)


def test_pareto_front():
    xy = [(0.1, 0.5), (0.2, 0.9), (0.3, 0.8), (0.05, 0.2), (0.2, 0.9 - 1e-7), (math.inf, 1.0)]
    # (0.3, 0.8) is beaten by (0.2, 0.9); fidelities within 1e-4 tie, so both (0.2, ·) stay
    assert pareto_front(xy) == [3, 0, 1, 4, 5]


def test_reproduction_figures_go_to_their_json(tmp_path):
    folder = tmp_path / "repros"
    folder.mkdir()
    for name in ("a", "b_long"):
        (folder / f"{name}.json").write_text(json.dumps({"claims": {"ok": True}}))
    for name in ("a_fig", "b_long_x", "zzz"):
        (folder / f"{name}.png").write_bytes(tiny_png())
    hidden = tmp_path / "sweep" / "runs" / "0123"  # a sweep's run folders are never searched
    hidden.mkdir(parents=True)
    (tmp_path / "sweep" / "results.sqlite").touch()
    (hidden / "x.json").write_text(json.dumps({"claims": {}}))
    found = {r.title: [p.name for p in r.figures] for r in find_reproductions(tmp_path)}
    assert found == {"a": ["a_fig.png"], "b_long": ["b_long_x.png"], "other figures in repros/": ["zzz.png"]}


def test_a_reproduction_folder_alone_shows_its_claims_and_notes_not_the_sweep_text(tmp_path):
    """A folder with only a reproduction: the header counts the reproduction (no '0 runs'), the sweep's exact-target
    explainer is left out, plain pass/fail claims have no empty value column, and the notes that say why a claim
    did not reproduce are in the page."""
    import json

    from guidelab.report import write_report

    data = {"reproduction": "toy", "claims": {"a_holds": True, "b_fails": False},
            "notes": ["b fails because the model is already at accuracy 1 <here>"], "figures": []}  # fmt: skip
    (tmp_path / "toy.json").write_text(json.dumps(data))
    html = write_report(tmp_path).read_text(encoding="utf-8")
    assert "1 reproduction;" in html and "0 runs" not in html
    assert "analytic target" not in html and "✗ not reproduced" in html and "✓ holds" in html
    assert "<th>value</th>" not in html
    assert "b fails because the model is already at accuracy 1 &lt;here&gt;" in html


def test_a_report_on_an_unfinished_sweep_says_how_many_runs_are_missing(tmp_path, sweep_report):
    """A sweep stopped before its end (here: rows taken out of its store, as after Ctrl-C) gets a note naming how
    many of its runs are missing and how to finish it; a finished sweep, a store without ``sweep.json`` and an
    unreadable ``sweep.json`` get none, and the report is still written."""
    _, html, _ = sweep_report
    assert "is unfinished" not in html.read_text(encoding="utf-8")  # every run of its sweep.json is stored
    text = SWEEP.replace("  - {target: chidambaram-uniform-1d, conds: [pos]}\n", "").replace(
        "metrics: [energy_distance, class_fidelity, vendi, within_mode_variance]", "metrics: [energy_distance]"
    )
    for name in ("one", "two"):
        run_sweep(load_sweep(write(tmp_path, text.replace("report-test", f"sweep-{name}"))), tmp_path / name)
    for name, dropped in (("one", 1), ("two", 2)):
        with sqlite3.connect(tmp_path / name / "results.sqlite") as db:
            db.execute(f"DELETE FROM runs WHERE rowid IN (SELECT rowid FROM runs ORDER BY rowid LIMIT {dropped})")
    body = write_report(tmp_path).read_text(encoding="utf-8")
    assert "3 runs (3 ok, 0 failed), 3 more not run yet (an unfinished sweep)" in body  # the header's counts
    assert "Sweep sweep-one in " in body and "1 of its 3 runs is not in the store" in body
    from typer.testing import CliRunner

    from guidelab.cli import app

    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 0 and "report written to" in result.stdout
    err = result.stderr
    assert "note: sweep sweep-one in " in err and "(1 of its 3 runs not stored)" in err and "(2 of its 3" in err
    assert "Sweep sweep-two in " in body and "2 of its 3 runs are not in the store" in body
    (tmp_path / "one" / "sweep.json").write_text("{not json")
    (tmp_path / "two" / "sweep.json").unlink()
    body = write_report(tmp_path).read_text(encoding="utf-8")
    assert "is unfinished" not in body and len(parse(tmp_path / "report.html").run_rows) == 3
