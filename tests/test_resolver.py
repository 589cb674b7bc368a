"""One resolver, one serialisation: nested schedule blocks (flat form as sugar, clashes refused), the effective
scale as a named column, paths checked where objects meet (grid, guide models, metrics at t > 0), the stored
row carrying the resolved guider once, and stores of the earlier layout migrated without loss."""

import json
import sqlite3
import textwrap

import pytest
import torch

from conftest import GaussianDenoiser
from guidelab.experiments.config import load_sweep
from guidelab.experiments.runner import run_sweep
from guidelab.experiments.store import ResultStore
from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.guiders.registry import GUIDERS
from guidelab.guiders.schedules import rf_grid
from guidelab.models.guidance_weights import GuidanceWeights, save_weights
from guidelab.paths import get_path
from guidelab.recipe import ModelSpec, build_run_guider
from guidelab.sampling import sample
from guidelab.targets import get_target


def test_the_nested_block_and_the_flat_sugar_build_the_same_guider():
    flat = build_guider("apg", schedule="tv-cfg", scale=4.0, low=1.5, eta=0.2)
    nested = build_guider("apg", schedule={"name": "tv-cfg", "scale": 4.0, "low": 1.5}, eta=0.2)
    assert flat.config() == nested.config()
    assert nested.config()["schedule"] == {"name": "tv-cfg", "scale": 4.0, "low": 1.5, "high": None, "normalize": True}
    assert build_guider(**json.loads(json.dumps(nested.config()))).config() == nested.config()
    with pytest.raises(ValueError, match="scale"):  # a schedule parameter beside a nested block
        build_guider("apg", schedule={"name": "tv-cfg"}, scale=4.0)
    with pytest.raises(ValueError, match="schedule 'tv-cfg'.*lowest"):
        build_guider("cfg", schedule={"name": "tv-cfg", "lowest": 1.0})


def test_a_key_both_the_guider_and_its_schedule_take_is_an_error_in_the_flat_form():
    from guidelab.guiders.base import ScheduledGuider

    class Clash(ScheduledGuider):  # a guider with a parameter named like one of TV-CFG's
        name = "test-clash"

        def __init__(self, schedule=1.0, low: float = 0.0):
            super().__init__(schedule)
            self.low = low

        def combine(self, step, ctx, gamma):
            raise NotImplementedError

        def params(self):
            return {"low": self.low}

    GUIDERS[Clash.name] = Clash
    try:
        with pytest.raises(ValueError, match=r"^low: both guider 'test-clash' and schedule 'tv-cfg' take 'low'"):
            build_guider("test-clash", schedule="tv-cfg", scale=3.0, low=2.0)
        guider = build_guider("test-clash", schedule={"name": "tv-cfg", "scale": 3.0, "low": 2.0}, low=0.5)
        assert guider.low == 0.5 and guider.schedule.config()["low"] == 2.0  # the nested block says whose
    finally:
        del GUIDERS[Clash.name]


@pytest.mark.parametrize("path_name", ["rf", "ve", "vp-cosine"])
def test_the_effective_scale_is_the_rf_time_mean_of_the_schedule(path_name):
    path = get_path(path_name)
    grid = make_grid("edm", 12, path)
    s = rf_grid(grid, path)
    ds = (s[:-1] - s[1:]) / (s[0] - s[-1])
    lam = path.lam(grid[:-1])
    assert build_guider("cfg", scale=2.5).effective_scale(grid, path) == pytest.approx(2.5, abs=1e-12)
    assert build_guider("cfg++", scale=0.4).effective_scale(grid, path) == pytest.approx(0.4, abs=1e-12)  # its λ
    # TV-CFG is normalised so that Σ γ_i Δs_i = γ̄: its effective scale is γ̄ on every path
    assert build_guider("cfg", schedule="tv-cfg", scale=3.0).effective_scale(grid, path) == pytest.approx(3.0)
    # an interval: γ inside (λ_lo, λ_hi], 1 outside, weighted by Δs (by hand)
    inside = (lam > 0.3) & (lam <= 2.0)
    expected = float((torch.where(inside, 4.0, 1.0) * ds).sum())
    guider = build_guider("cfg", schedule="interval", scale=4.0, lam_lo=0.3, lam_hi=2.0)
    assert guider.effective_scale(grid, path) == pytest.approx(expected, abs=1e-12)
    assert build_guider("cfg", scale=[1.0, 3.0]).effective_scale(grid, path) == pytest.approx(2.0)  # sample mean


def test_the_learned_guiders_effective_scale_is_one_plus_the_mean_weight(tmp_path):
    file = tmp_path / "weights.pt"
    save_weights(GuidanceWeights(2, init_omega=0.75), file, {"class_names": ["a", "b"]})
    guider = build_guider("learned", checkpoint=str(file))
    path = get_path("rf")
    grid = make_grid("uniform", 8, path)
    table = guider.table(path, grid).double()
    ds = 1.0 / 8
    assert guider.effective_scale(grid, path, cond=1) == pytest.approx(1 + float(table[1].sum()) * ds)
    assert guider.effective_scale(grid, path) == pytest.approx(1 + float(table.sum(1).mean()) * ds)


def test_a_grid_built_for_another_path_is_refused():
    rf, ve = get_path("rf"), get_path("ve")
    with pytest.raises(ValueError, match=r"^grid: built by make_grid for path 'rf'"):
        sample(GaussianDenoiser(ve), None, grid=make_grid("uniform", 4, rf), n=2, shape=(1,))
    out = sample(GaussianDenoiser(ve), None, grid=make_grid("uniform", 4, ve), n=2, shape=(1,))
    assert out.x.shape == (2, 1)
    plain = torch.linspace(1, 0, 5, dtype=torch.float64)  # a hand-made grid carries no path: the user's call
    assert sample(GaussianDenoiser(ve), None, grid=plain, n=2, shape=(1,)).x.shape == (2, 1)


def test_guide_models_are_built_on_the_runs_path_and_checked_against_the_sampler():
    target = get_target("multimodal-2d")
    ve = get_path("ve")
    guider = build_run_guider(
        "weak-model", {"scale": 2.0, "guide_model": "weak"}, {"weak": ModelSpec(kind="score-error", delta=0.1)},
        target, ve,
    )  # fmt: skip
    assert guider.models["weak"].path is ve
    out = sample(target.denoiser(ve), guider, grid=make_grid("edm", 4, ve), n=4, shape=(2,), cond=0)
    assert out.x.shape == (4, 2)
    rf = get_path("rf")
    other = build_guider("weak-model", scale=2.0, guide_model="weak", models={"weak": target.denoiser(rf)})
    with pytest.raises(ValueError, match=r"^models\['weak'\]: the guide model is on path"):
        sample(target.denoiser(ve), other, grid=make_grid("edm", 4, ve), n=4, shape=(2,), cond=0)


SWEEP = """
name: resolved
targets: [{target: multimodal-2d, conds: [a]}]
paths: [ve]
grids: [{kind: edm, steps: 6}]
models: {weak: {kind: score-error, delta: 0.2}}
guiders:
  - {name: cfg, label: tv, params: {schedule: {name: tv-cfg, scale: [2.0, 4.0]}}}
  - {name: weak-model, params: {scale: 2.0, guide_model: weak}}
n: 32
metrics: [energy_distance, class_fidelity]
"""


def test_the_stored_row_carries_the_resolved_guider_once_with_its_effective_scale(tmp_path, monkeypatch):
    (tmp_path / "s.yaml").write_text(textwrap.dedent(SWEEP))
    config = load_sweep(tmp_path / "s.yaml")
    assert len(config.runs()) == 3  # a list inside the nested block is a sweep axis too
    run_sweep(config, tmp_path / "out")
    rows = ResultStore(tmp_path / "out" / "results.sqlite").rows()
    assert [r["status"] for r in rows] == ["ok"] * 3
    for row in rows:
        assert "params" not in row and "params" not in row["config"] and "guider" not in row["config"]
        assert row["guider_config"]["name"] == row["guider"]
        assert isinstance(row["guider_config"]["schedule"], dict)
        assert len(row["schedule"]) == 6 and row["schedule"][0]["step"] == 0
    tv = sorted((r for r in rows if r["label"] == "tv"), key=lambda r: r["gamma"])
    assert [r["gamma"] for r in tv] == pytest.approx([2.0, 4.0])  # γ̄, named
    assert [r["guider_config"]["schedule"]["scale"] for r in tv] == [2.0, 4.0]
    # the demo's headline reads the named column (a margin of 1 lets every setting reach the fidelity bar)
    from rich.console import Console

    from guidelab import demo

    monkeypatch.setattr(demo, "FIDELITY_MARGIN", 1.0)
    console = Console(record=True, width=140)
    demo.print_headline(console, tmp_path / "out")
    text = console.export_text()
    best_tv = min(tv, key=lambda r: r["metrics"]["energy_distance"])
    line = next(li for li in text.splitlines() if li.startswith("│ tv "))
    assert f"{best_tv['gamma']:.4g}" in line and "│     - │" not in line


def test_a_store_of_the_earlier_layout_is_migrated_without_loss(tmp_path):
    file = tmp_path / "results.sqlite"
    db = sqlite3.connect(file)
    db.execute(
        "CREATE TABLE runs (hash TEXT PRIMARY KEY, sweep TEXT NOT NULL, status TEXT NOT NULL, error TEXT, target TEXT, "
        "cond TEXT, path TEXT, grid TEXT, steps INTEGER, solver TEXT, guider TEXT, label TEXT, seed INTEGER, "
        "n INTEGER, nfe INTEGER, diverged INTEGER, wall_time_s REAL, params TEXT NOT NULL, metrics TEXT NOT NULL, "
        "config TEXT NOT NULL, finished_at TEXT NOT NULL DEFAULT (datetime('now')))"
    )
    old = [
        ("h1", {"scale": 3.0, "schedule": "interval", "lam_lo": 0.2}, {"energy_distance": 0.5}),
        ("h2", {"scale": [1.0, 2.0]}, {"energy_distance": 0.25}),
    ]
    for h, params, metrics in old:
        db.execute(
            "INSERT INTO runs (hash, sweep, status, guider, label, params, metrics, config) VALUES (?,?,?,?,?,?,?,?)",
            (
                h,
                "s",
                "ok",
                "cfg",
                "cfg",
                json.dumps(params),
                json.dumps(metrics),
                json.dumps({"params": params, "n": 8}),
            ),
        )
    db.commit()
    db.close()
    rows = {r["hash"]: r for r in ResultStore(file).rows()}
    assert set(rows) == {"h1", "h2"}
    assert rows["h1"]["guider_config"] == {"name": "cfg", "scale": 3.0, "schedule": "interval", "lam_lo": 0.2}
    assert rows["h1"]["gamma"] == 3.0 and rows["h2"]["gamma"] is None
    assert rows["h1"]["metrics"] == {"energy_distance": 0.5} and rows["h1"]["config"] == {"n": 8}
    assert build_guider(**rows["h1"]["guider_config"]).config()["schedule"]["name"] == "interval"
    ResultStore(file).put({**rows["h2"], "hash": "h3"})  # the migrated store takes new rows
    assert len(ResultStore(file).rows()) == 3


def test_every_guider_gives_an_effective_scale_or_none(tmp_path):
    file = tmp_path / "weights.pt"
    save_weights(GuidanceWeights(2, init_omega=0.5), file, {"class_names": ["a", "b"]})
    path = get_path("rf")
    grid = make_grid("uniform", 6, path)
    for name in GUIDERS:
        params = {"checkpoint": str(file)} if name == "learned" else {"scale": 0.5 if name == "cfg++" else 2.0}
        value = build_guider(name, **params).effective_scale(grid, path, cond=0)
        expected = 1.5 if name == "learned" else params.get("scale")
        if name == "fbg":  # scale is FBG_CFG's offset; before a run L = 0, so γ_FBG = 1/π (π = 0.999)
            expected = 1 / 0.999 + (2.0 - 1)
        assert value == pytest.approx(expected, rel=0.05 if name == "learned" else 1e-12), name
