"""The report in a real browser: headless Chromium renders every image, runs the page's script without a console
error, and sorts the run table on a header click.

Slow: it may install Debian's ``chromium`` (as root, with apt-get) and starts the browser three times.
Skipped, with the reason, only where Chromium is missing and cannot be installed here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import textwrap
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from guidelab.experiments.config import load_sweep
from guidelab.experiments.runner import run_sweep
from guidelab.experiments.store import ResultStore
from guidelab.report import write_report

pytestmark = pytest.mark.slow

SWEEP = """
name: browser-test
targets:
  - {target: multimodal-2d, conds: [a]}
  - {target: chidambaram-uniform-1d, conds: [pos]}
grids: [{kind: uniform, steps: 6}]
guiders:
  - {name: cfg, params: {scale: [1.0, 3.0]}}
  - {name: apg, params: {scale: [3.0]}}
n: 64
metrics: [energy_distance, class_fidelity, vendi, within_mode_variance]
"""
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=10000",
)
# appended to a copy of the report: click the "wall s" header twice and record the column after each click
SORT_PROBE = """<script>
window.addEventListener("load", function () {
  var heads = Array.prototype.slice.call(document.querySelectorAll("#runs-table thead th"));
  var col = heads.findIndex(function (h) { return h.textContent.trim() === "energy_distance \\u2193"; });
  function column() {
    return Array.prototype.map.call(document.querySelectorAll("#runs-table tbody tr"), function (r) {
      return r.cells[col].getAttribute("data-v");
    }).join(";");
  }
  heads[col].querySelector("button").click();
  document.body.dataset.sortedUp = column();
  heads[col].querySelector("button").click();
  document.body.dataset.sortedDown = column();
});
</script></body>"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200)
        if done.returncode != 0:
            pytest.skip(f"chromium is missing and `{' '.join(cmd)}` failed: {done.stderr.strip()[-400:]}")
    found = shutil.which("chromium")
    if not found:
        pytest.skip("apt-get installed chromium but no `chromium` command is on PATH")
    return found


@pytest.fixture(scope="module")
def chromium() -> str:
    return _chromium()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    (tmp / "sweep.yaml").write_text(textwrap.dedent(SWEEP))
    out = tmp / "out"
    run_sweep(load_sweep(tmp / "sweep.yaml"), out)
    store = ResultStore(out / "results.sqlite")
    base = store.rows()[0]
    store.put({**base, "hash": "f" * 16, "status": "error", "error": "RuntimeError: <b>boom</b>", "metrics": {}})
    return write_report(out)


def _run(chromium: str, tmp: Path, *args: str) -> tuple[str, str]:
    profile = tmp / f"profile-{time.monotonic_ns()}"
    done = subprocess.run(
        [chromium, *FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


class _Body(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.attrs: dict[str, str] = {}
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body":
            self.attrs = {k: v or "" for k, v in attrs}
        elif tag == "img":
            self.images += 1


def _body(html: str) -> _Body:
    parser = _Body()
    parser.feed(html)
    return parser


def _console_lines(stderr: str, url: str) -> list[str]:
    return [line for line in stderr.splitlines() if ("CONSOLE" in line and url in line) or "Uncaught" in line]


def test_every_image_renders_without_console_errors(chromium, report, tmp_path):
    url = report.resolve().as_uri()
    start = time.perf_counter()
    dom, stderr = _run(chromium, tmp_path, "--dump-dom", url)
    elapsed = time.perf_counter() - start
    body = _body(dom)
    source_images = _body(report.read_text(encoding="utf-8")).images
    assert source_images >= 8
    assert body.attrs.get("data-images-count") == str(source_images), body.attrs
    assert body.attrs.get("data-images-ok") == "true", body.attrs
    assert "data-js-errors" not in body.attrs, body.attrs["data-js-errors"]
    assert not _console_lines(stderr, url)
    assert elapsed < 120


def test_screenshot(chromium, report, tmp_path):
    shot = tmp_path / "report.png"
    _run(chromium, tmp_path, "--window-size=1280,4000", f"--screenshot={shot}", report.resolve().as_uri())
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert shot.stat().st_size > 50_000  # a blank page is a few kB


def test_header_click_sorts_the_run_table(chromium, report, tmp_path):
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text(encoding="utf-8").replace("</body>", SORT_PROBE), encoding="utf-8")
    url = probe.resolve().as_uri()
    dom, stderr = _run(chromium, tmp_path, "--dump-dom", url)
    body = _body(dom).attrs
    assert not _console_lines(stderr, url)

    def values(key: str) -> list[str]:
        return body[key].split(";")

    up, down = values("data-sorted-up"), values("data-sorted-down")
    numbers_up = [float(v) for v in up if v]
    numbers_down = [float(v) for v in down if v]
    assert len(up) == 7 and up[-1] == "" and down[-1] == ""  # the failed run has no metric: last both ways
    assert numbers_up == sorted(numbers_up) and len(numbers_up) == 6
    assert numbers_down == sorted(numbers_down, reverse=True)
    assert re.fullmatch(r"[0-9.e+-]+", up[0])


MODEL_SWEEP = """
name: browser-digits
model: {kind: shipped, name: digits}
reference: {dataset: digits, conds: [3, 8]}
grids: [{kind: uniform, steps: 6}]
guiders:
  - {name: cfg, params: {scale: [1.0, 3.0]}}
  - {name: apg, params: {scale: [3.0]}}
n: 24
"""


@pytest.fixture(scope="module")
def model_report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("browser-model")
    (tmp / "sweep.yaml").write_text(textwrap.dedent(MODEL_SWEEP))
    run_sweep(load_sweep(tmp / "sweep.yaml"), tmp / "out")
    return write_report(tmp / "out", tmp / "pages" / "report.html")  # the grids are linked from another folder


def test_a_trained_model_report_shows_its_image_grids_and_the_pareto_plot(chromium, model_report, tmp_path):
    url = model_report.resolve().as_uri()
    dom, stderr = _run(chromium, tmp_path, "--dump-dom", url)
    body = _body(dom)
    assert body.attrs.get("data-images-ok") == "true", body.attrs  # every image, linked grids included, loaded
    assert "data-js-errors" not in body.attrs
    assert not _console_lines(stderr, url)
    assert dom.count('data-figure="model-grid"') == 6  # 2 classes × 3 settings
    assert 'data-figure="model-pareto"' in dom
    shot = tmp_path / "model.png"
    _run(chromium, tmp_path, "--window-size=1280,3000", f"--screenshot={shot}", url)
    assert shot.stat().st_size > 50_000
