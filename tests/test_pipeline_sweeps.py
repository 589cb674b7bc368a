"""Sweeps on diffusers pipelines: a ``pipeline`` block in the sweep file, rows in the same store, images on disk, the
report's image grids linked by relative paths, the built-in image measures by hand, resume, and bad input as one
line with exit 2 before anything runs.

The pipelines are the tiny random ones of tests/test_pipelines.py (16×16 images), saved with ``save_pretrained``.
"""

from __future__ import annotations

import math
import re
import shutil
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guidelab.cli import main
from guidelab.experiments.config import PipelineRunSpec, load_sweep
from guidelab.experiments.image_measures import (
    latent_rms,
    pixel_diversity,
    resolve_image_metric,
    resolve_image_metrics,
    saturation,
)
from guidelab.experiments.runner import run_sweep
from guidelab.experiments.store import ResultStore
from guidelab.report import write_report
from tiny_diffusers import make_dit, make_sd

PROMPTS = ["a cat", "a dog on a hill"]
CALLS: list[tuple[object, np.ndarray]] = []  # what recording_metric was called with


def recording_metric(images, condition):
    """A user metric: records its arguments, returns a dict (stored as ``recording_metric.<key>``)."""
    CALLS.append((condition, np.array(images, copy=True)))
    return {"mean": float(np.mean(images)), "count": len(images)}


def bad_metric(images, condition):
    """A user metric that returns something that is not a number."""
    return "sharp"


METRIC = f"{__name__}:recording_metric"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    make_sd().save_pretrained(root / "sd")
    make_dit().save_pretrained(root / "dit")
    return root


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _sd_sweep(folders: Path, where: Path) -> Path:
    return _write(
        where / "sweep.yaml",
        f"""
name: sd-sweep
pipeline:
  folder: {folders / "sd"}
  prompts: {PROMPTS}
  negative_prompt: blurry
  n: 2
  steps: 3
  metrics: [saturation, latent_rms, pixel_diversity, "{METRIC}"]
guiders:
  - {{name: cfg, params: {{scale: [1, 3]}}}}
  - {{name: apg}}
seeds: [0]
""",
    )


@pytest.fixture(scope="module")
def sd_sweep(folders, tmp_path_factory):
    """The SD sweep, run once: (sweep file, output folder, summary, the metric's calls)."""
    where = tmp_path_factory.mktemp("sd-sweep")
    sweep = _sd_sweep(folders, where)
    CALLS.clear()
    summary = run_sweep(load_sweep(sweep), where / "out")
    return sweep, where / "out", summary, list(CALLS)


def test_a_pipeline_sweep_stores_one_row_per_run_with_its_measures(sd_sweep):
    _, out, summary, _ = sd_sweep
    assert (summary.total, summary.ran, summary.failed) == (6, 6, 0)  # (2 scales + apg) × 2 prompts
    rows = ResultStore(out / "results.sqlite").rows()
    assert len(rows) == 6 and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows]
    assert {r["cond"] for r in rows} == set(PROMPTS)
    assert {r["target"] for r in rows} == {"sd"}
    assert {(r["label"], r["gamma"], r["nfe"]) for r in rows} == {("cfg", 1.0, 3), ("cfg", 3.0, 6), ("apg", 3.0, 6)}
    for r in rows:
        assert r["solver"] == "ddim" and r["path"] == "discrete-vp" and r["steps"] == 3 and r["n"] == 2
        assert r["diverged"] == 0 and r["wall_time_s"] > 0
        assert r["guider_config"]["name"] == r["guider"]  # the resolved configuration, defaults included
        assert len(r["schedule"]) == 3 and {row["gamma"] for row in r["schedule"]} == {r["gamma"]}
        assert r["config"]["prompt"] == r["cond"] and r["config"]["negative_prompt"] == "blurry"
        metrics = r["metrics"]
        assert {"saturation", "latent_rms", "pixel_diversity", "n_excluded"} <= set(metrics)
        assert metrics["recording_metric.count"] == 2
        assert 0 <= metrics["saturation"] <= 1 and metrics["latent_rms"] > 0 and metrics["pixel_diversity"] > 0
    frame = ResultStore(out / "results.sqlite").frame()
    assert {"metric.saturation", "metric.recording_metric.mean", "gamma"} <= set(frame.columns)


def test_the_user_metric_sees_each_runs_prompt_and_the_saved_images(sd_sweep):
    _, out, _, calls = sd_sweep
    rows = ResultStore(out / "results.sqlite").rows()
    assert len(calls) == 6
    assert sorted(c for c, _ in calls) == sorted(PROMPTS * 3)
    by_mean = {}
    for condition, images in calls:
        assert images.shape == (2, 16, 16, 3) and images.dtype == np.float32
        assert images.min() >= 0 and images.max() <= 1
        by_mean[(condition, float(np.mean(images)))] = images
    for r in rows:
        images = by_mean[(r["cond"], r["metrics"]["recording_metric.mean"])]
        run_dir = out / "runs" / r["hash"]
        saved = np.stack([np.asarray(Image.open(run_dir / f"image_{i:03d}.png")) for i in range(2)])
        assert np.array_equal(saved, np.rint(images * 255).astype(np.uint8))  # the PNGs are the images measured
        with Image.open(run_dir / "grid.png") as grid:
            assert grid.size == (32, 16)  # n = 2 images side by side
        assert r["metrics"]["saturation"] == saturation(images)
        assert r["metrics"]["pixel_diversity"] == pytest.approx(pixel_diversity(images), rel=1e-12)
        assert (run_dir / "run.json").is_file()


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.grids: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("data-figure") == "image-grid":
            self.grids.append(a["src"])


def _grid_sources(html: Path) -> list[str]:
    parser = _Images()
    parser.feed(html.read_text())
    return parser.grids


def test_the_report_shows_each_runs_grid_by_a_relative_path_that_survives_a_move(sd_sweep, tmp_path):
    _, out, _, _ = sd_sweep
    moved = tmp_path / "moved" / "sweep-out"
    shutil.copytree(out, moved)
    report = write_report(moved)
    text = report.read_text()
    assert "Images: sd" in text and "Image measures vs γ" in text
    sources = _grid_sources(report)
    hashes = {r["hash"] for r in ResultStore(moved / "results.sqlite").rows()}
    assert len(sources) == 6  # rows: cfg γ=1, cfg γ=3, apg; columns: the two prompts
    assert {re.fullmatch(r"runs/([0-9a-f]{16})/grid\.png", s).group(1) for s in sources} == hashes
    assert all(not Path(s).is_absolute() and (report.parent / s).is_file() for s in sources)
    for prompt in PROMPTS:
        assert f'<th scope="col">{prompt}</th>' in text
    # a report written elsewhere links the same files from there
    elsewhere = write_report(moved, tmp_path / "reports" / "r.html")
    assert all((elsewhere.parent / s).resolve().is_file() for s in _grid_sources(elsewhere))
    assert all(s.startswith("../moved/sweep-out/runs/") for s in _grid_sources(elsewhere))


def test_a_resumed_pipeline_sweep_skips_finished_runs(folders, tmp_path):
    sweep = _sd_sweep(folders, tmp_path)
    out = tmp_path / "out"
    seen = []

    def killed_after_two(row):
        seen.append(row["hash"])
        if len(seen) == 2:
            raise KeyboardInterrupt  # the sweep dies after its second row is committed

    with pytest.raises(KeyboardInterrupt):
        run_sweep(load_sweep(sweep), out, on_row=killed_after_two)
    assert len(ResultStore(out / "results.sqlite").rows()) == 2
    CALLS.clear()
    resumed = run_sweep(load_sweep(sweep), out)
    assert (resumed.total, resumed.skipped, resumed.ran, resumed.failed) == (6, 2, 4, 0)
    assert len(CALLS) == 4  # the finished runs were not measured again
    rows = ResultStore(out / "results.sqlite").rows()
    assert len(rows) == 6 and len({r["hash"] for r in rows}) == 6
    assert {r["hash"] for r in rows[:2]} == set(seen)
    again = run_sweep(load_sweep(sweep), out)
    assert (again.skipped, again.ran) == (6, 0)


def test_a_metric_that_returns_no_number_fails_its_run_and_the_sweep_goes_on(folders, tmp_path):
    sweep = _write(
        tmp_path / "s.yaml",
        f"pipeline: {{folder: {folders / 'sd'}, prompts: [a, b], n: 1, steps: 2, "
        f"metrics: [saturation, '{__name__}:bad_metric']}}\nguiders: [{{name: cfg}}]\n",
    )
    summary = run_sweep(load_sweep(sweep), tmp_path / "out")
    assert (summary.ran, summary.failed) == (2, 2)
    rows = ResultStore(tmp_path / "out" / "results.sqlite").rows()
    assert all("bad_metric" in r["error"] and "float" in r["error"] for r in rows)
    text = write_report(tmp_path / "out").read_text()
    assert "All 2 runs on sd failed" in text and "bad_metric" in text


def test_a_dit_sweep_takes_class_ids_and_names(folders, tmp_path):
    sweep = _write(
        tmp_path / "dit.yaml",
        f"""
pipeline: {{folder: {folders / "dit"}, class_labels: [1, cat], n: 2, steps: 3, solver: [ddim, dpm++2m]}}
guiders: [{{name: cfg, params: {{scale: [1, 4]}}}}]
""",
    )
    config = load_sweep(sweep)
    runs = config.runs()
    assert all(isinstance(r, PipelineRunSpec) for r in runs) and len(runs) == 8
    summary = run_sweep(config, tmp_path / "out")
    assert (summary.ran, summary.failed) == (8, 0)
    rows = ResultStore(tmp_path / "out" / "results.sqlite").rows()
    assert {(r["cond"], r["config"]["class_label"]) for r in rows} == {("1", 1), ("cat", 3)}
    assert {r["solver"] for r in rows} == {"ddim", "dpm++2m"}
    assert all((tmp_path / "out" / "runs" / r["hash"] / "grid.png").is_file() for r in rows)
    assert all(r["config"]["family"] == "dit" for r in rows)
    sources = _grid_sources(write_report(tmp_path / "out"))
    assert len(sources) == 8  # rows: cfg γ ∈ {1, 4} × two solvers; columns: the two classes


# --- the built-in measures by hand ----------------------------------------------------------------------------


def test_saturation_counts_channel_values_at_the_ends_of_8_bits():
    images = np.zeros((3, 2, 2, 3), dtype=np.float32)  # image 0: all 0 (12 values saturated)
    images[1] = 0.5  # none
    images[2, 0] = 1.0  # 6 values at 255
    images[2, 1] = 0.4 / 255  # rounds to 0 in 8 bits: 6 more
    assert saturation(images) == (12 + 0 + 12) / 36
    images[2, 1] = 0.6 / 255  # rounds to 1: not saturated
    assert saturation(images) == (12 + 0 + 6) / 36


def test_pixel_diversity_is_the_mean_pairwise_rms_distance():
    images = np.zeros((3, 2, 2, 3), dtype=np.float32)
    images[1] = 0.5
    images[2, 0] = 1.0
    images[2, 1] = 0.25
    d01 = 0.5
    d02 = math.sqrt((6 * 1.0**2 + 6 * 0.25**2) / 12)
    d12 = math.sqrt((6 * 0.5**2 + 6 * 0.25**2) / 12)
    assert pixel_diversity(images) == pytest.approx((d01 + d02 + d12) / 3, rel=1e-12)
    assert math.isnan(pixel_diversity(images[:1]))


def test_latent_rms_is_the_mean_per_sample_root_mean_square():
    latents = np.zeros((2, 1, 1, 2), dtype=np.float32)
    latents[0, 0, 0] = [3.0, 4.0]
    assert latent_rms(latents) == pytest.approx(math.sqrt(12.5) / 2, rel=1e-12)


def test_metric_specs_resolve_or_say_why_not():
    assert resolve_image_metric("saturation").name == "saturation"
    user = resolve_image_metric(METRIC)
    assert user.name == "recording_metric"
    with pytest.raises(ValueError, match="cannot import module 'no.such'"):
        resolve_image_metric("no.such:fn")
    with pytest.raises(ValueError, match="has no 'nope'"):
        resolve_image_metric(f"{__name__}:nope")
    with pytest.raises(ValueError, match="not a function"):
        resolve_image_metric(f"{__name__}:PROMPTS")
    with pytest.raises(ValueError, match="unknown metric 'bogus'"):
        resolve_image_metric("bogus")
    with pytest.raises(ValueError, match=r"metrics\[1\]: .* as metrics\[0\]"):
        resolve_image_metrics(["saturation", f"{__name__}:saturation"])


# --- bad input: one line naming the field, exit 2, nothing written ---------------------------------------------


def _case(folders: Path, text: str) -> str:
    return text.replace("{sd}", str(folders / "sd")).replace("{dit}", str(folders / "dit"))


BAD = [
    ("pipeline: {folder: {sd}/../no-such-folder, prompts: [a]}\nguiders: [{name: cfg}]", "pipeline.folder"),
    ("pipeline: {folder: {sd}, prompts: [a], metrics: ['no.such:fn']}\nguiders: [{name: cfg}]", "pipeline.metrics[0]"),
    ("pipeline: {folder: {sd}, prompts: [a]}\nguiders: [{name: cgf}]", "guiders[0]"),
    ("pipeline: {folder: {dit}, prompts: [a cat]}\nguiders: [{name: cfg}]", "pipeline.prompts"),
    ("pipeline: {folder: {sd}, class_labels: [1]}\nguiders: [{name: cfg}]", "pipeline.class_labels"),
    ("pipeline: {folder: {dit}, class_labels: [1000]}\nguiders: [{name: cfg}]", "pipeline.class_labels"),
    ("pipeline: {folder: {dit}, class_labels: [zebra]}\nguiders: [{name: cfg}]", "pipeline.class_labels"),
    ("pipeline: {folder: {sd}, prompts: [a], solver: rk4}\nguiders: [{name: cfg}]", "pipeline.solver"),
    (
        "pipeline: {folder: {sd}, prompts: [a, b], negative_prompt: [x]}\nguiders: [{name: cfg}]",
        "pipeline.negative_prompt",
    ),
    ("pipeline: {folder: {sd}, prompts: [a]}\nsolvers: [ddim]\nguiders: [{name: cfg}]", "solvers"),
    ("pipeline: {folder: {sd}, prompts: [a], steps: 0}\nguiders: [{name: cfg}]", "pipeline.steps"),
    ("pipeline: {folder: {sd}}\nguiders: [{name: cfg}]", "pipeline.prompts"),
    ("pipeline: {folder: {sd}, prompts: [a], device: warp}\nguiders: [{name: cfg}]", "pipeline.device"),
    ("pipeline: {folder: {sd}, prompts: [a], dtype: float16}\nguiders: [{name: cfg}]", "pipeline.dtype"),
    ("pipeline: {folder: {sd}, prompts: [a]}\n", "guiders"),
    ("guiders: [{name: cfg}]\n", "targets"),
]


@pytest.mark.parametrize(("text", "field"), BAD, ids=[field for _, field in BAD])
def test_bad_pipeline_sweeps_are_one_line_naming_the_field_and_exit_2(folders, tmp_path, capsys, text, field):
    sweep = _write(tmp_path / "bad.yaml", _case(folders, text))
    with pytest.raises(SystemExit) as info:
        main(["run", str(sweep), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
    assert info.value.code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


def test_a_pipeline_sweep_takes_no_workers(folders, tmp_path, capsys):
    sweep = _write(
        tmp_path / "s.yaml", _case(folders, "pipeline: {folder: {sd}, prompts: [a]}\nguiders: [{name: cfg}]")
    )
    with pytest.raises(SystemExit) as info:
        main(["run", str(sweep), "--out", str(tmp_path / "out"), "--workers", "2"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("error: workers: a sweep on a pipeline runs in this process"), err
    assert not (tmp_path / "out").exists()


def test_the_cli_runs_a_pipeline_sweep_and_its_report(folders, tmp_path, capsys):
    sweep = _write(
        tmp_path / "s.yaml",
        _case(folders, "pipeline: {folder: {sd}, prompts: [a], n: 2, steps: 2}\nguiders: [{name: cfg}]\n"),
    )
    main(["run", str(sweep), "--out", str(tmp_path / "out")])
    assert "1 run: 0 already done, 1 ran, 0 failed" in capsys.readouterr().out
    main(["run", str(sweep), "--out", str(tmp_path / "out")])
    assert "1 run: 1 already done, 0 ran, 0 failed" in capsys.readouterr().out
    main(["report", str(tmp_path / "out")])
    sources = _grid_sources(tmp_path / "out" / "report.html")
    assert len(sources) == 1 and (tmp_path / "out" / sources[0]).is_file()
    with sqlite3.connect(tmp_path / "out" / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM runs WHERE status = 'ok'").fetchone() == (1,)


def test_diffusers_apg_beside_guidelab_apg_on_one_pipeline(folders, tmp_path):
    """A sweep puts diffusers' implementation beside guidelab's on the same pipeline, noise and measures: both rows
    are stored, and the report shows the two (different by design: diffusers' APG is ``u + γ·U`` in the model's ε,
    the paper's ``c + (γ − 1)·U`` in x0; docs/methods.md §10) side by side, with their own grids and measures."""
    sweep = _write(
        tmp_path / "sweep.yaml",
        f"""
name: apg-two-ways
pipeline:
  folder: {folders / "sd"}
  prompts: [a cat]
  n: 2
  steps: 4
guiders:
  - {{name: apg, params: {{scale: 3.0, eta: 0.0}}}}
  - {{name: "diffusers:AdaptiveProjectedGuidance", params: {{guidance_scale: 3.0, eta: 0.0}}}}
seeds: [0]
""",
    )
    out = tmp_path / "out"
    summary = run_sweep(load_sweep(sweep), out)
    assert (summary.ran, summary.failed) == (2, 0)
    rows = {r["guider"]: r for r in ResultStore(out / "results.sqlite").rows()}
    assert set(rows) == {"apg", "diffusers:AdaptiveProjectedGuidance"}
    ours, theirs = rows["apg"], rows["diffusers:AdaptiveProjectedGuidance"]
    assert ours["gamma"] == theirs["gamma"] == 3.0 and ours["nfe"] == theirs["nfe"] == 8
    assert ours["metrics"]["latent_rms"] != pytest.approx(theirs["metrics"]["latent_rms"], rel=1e-4)  # the difference
    text = write_report(out).read_text()
    assert "diffusers:AdaptiveProjectedGuidance" in text and len(_grid_sources(out / "report.html")) == 2


def test_the_report_marks_a_grid_whose_images_diverged(folders, tmp_path):
    """A random DiT's latents leave the divergence bound at 8 steps: the cell says so and is drawn as not-samples."""
    sweep = _write(
        tmp_path / "sweep.yaml",
        f"""
name: dit-diverges
pipeline:
  folder: {folders / "dit"}
  class_labels: [cat]
  n: 2
  steps: 8
guiders:
  - {{name: cfg, params: {{scale: 4.0}}}}
seeds: [0]
""",
    )
    out = tmp_path / "out"
    run_sweep(load_sweep(sweep), out)
    (row,) = ResultStore(out / "results.sqlite").rows()
    assert row["diverged"] > 0
    text = write_report(out).read_text()
    assert '<figure class="diverged">' in text and "diverged: frozen latents, not samples" in text
