"""The catalogue's API: registry round trips through JSON, reprs, validation, the describe/schedule views used by
the command line, per-trajectory state, and network evaluations actually made while sampling."""

import json

import pytest
import torch

from guidelab.grids import make_grid
from guidelab.guiders import (
    GUIDERS,
    SCHEDULES,
    build_guider,
    describe_guiders,
    describe_schedules,
    guider_parameters,
    schedule_table,
)
from guidelab.paths import SPACES, get_path
from guidelab.sampling import sample

ALL_METHODS = ["adamag", "adg", "apg", "beta-cfg", "cfg", "cfg++", "cfg-zero-star", "dynamic-thresholding"]
ALL_METHODS += ["mambo-g", "rescale", "tangential", "weak-model"]


class LinearGaussian:
    """x0 | c ~ N(μ_c, s_c² I) in 2-D: the exact posterior mean on any path."""

    prediction = "x0"

    def __init__(self, path):
        self.path = path

    def __call__(self, x, t, cond):
        c = self.path.coefficients(t.double()).expand_as(x)
        is_cond = (cond >= 0).reshape(-1, 1)
        mu = torch.where(is_cond, torch.tensor([2.0, -1.0]), torch.zeros(2)).to(x)
        s2 = torch.where(is_cond, torch.tensor(0.25), torch.tensor(4.0)).to(x)
        return mu + c.alpha * s2 / (c.alpha**2 * s2 + c.sigma**2) * (x - c.alpha * mu)


def test_every_method_of_the_catalogue_is_registered():
    assert set(ALL_METHODS) <= set(GUIDERS)  # other issues (learned weights) register more
    expected = ["constant", "interval", "negative-switch", "negative-window", "step-down", "step-up", "tv-cfg"]
    assert sorted(SCHEDULES) == [*expected, "tv-interval", "wang"]


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
def test_config_round_trips_through_json(name, schedule):
    params = {"schedule": schedule}
    if name == "cfg++" and schedule != "negative-window":
        params["scale"] = 0.5  # CFG++'s λ lies in [0, 1]
    if name == "beta-cfg" and schedule == "constant":
        params["scale"] = 2.0  # β-CFG's ω has no default (docs/methods.md §9)
    guider = build_guider(name, **params)
    config = guider.config()
    assert config["name"] == name
    again = build_guider(**json.loads(json.dumps(config, allow_nan=False)))
    assert again.config() == config
    assert type(again) is type(guider)
    text = repr(guider)
    assert text.startswith(type(guider).__name__ + "(")
    assert "name=" not in text


@pytest.mark.parametrize("name", ALL_METHODS)
def test_per_sample_scales_round_trip(name):
    scales = [0.2, 0.5, 0.9] if name == "cfg++" else [1.0, 2.0, 4.5]
    guider = build_guider(name, scale=scales)
    config = json.loads(json.dumps(guider.config()))
    assert config["schedule"]["scale"] == scales  # the schedule is a nested block
    assert build_guider(**config).config() == config


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("adamag", {"beta": -1.0}, "beta"),
        ("adamag", {"kappa": "big"}, "kappa"),
        ("adg", {"theta_max": 4.0}, "theta_max"),
        ("adg", {"norm_rescale": "yes"}, "norm_rescale"),
        ("apg", {"momentum": 1.5}, "momentum"),
        ("apg", {"norm_threshold": 0.0}, "norm_threshold"),
        ("beta-cfg", {"beta_a": 0.5, "scale": 2.0}, "beta_a"),
        ("cfg-zero-star", {"zero_init_steps": -1}, "zero_init_steps"),
        ("cfg-zero-star", {"zero_init_steps": 1.5}, "zero_init_steps"),
        ("dynamic-thresholding", {"percentile": 1.5}, "percentile"),
        ("mambo-g", {"space": "logits"}, "space"),
        ("rescale", {"phi": 2.0}, "phi"),
        ("tangential", {"space": "v"}, "space"),
        ("cfg", {"scale": float("nan")}, "scale"),
        ("cfg", {"schedule": "wang", "shape": "zigzag"}, "shape"),
        ("apg", {"lam_lo": 0.1}, "lam_lo"),
    ],
)
def test_bad_parameters_name_the_field(name, params, field):
    with pytest.raises(ValueError, match=field):
        build_guider(name, **params)


def test_describe_guiders_lists_parameters_defaults_space_and_source():
    rows = {row["name"]: row for row in describe_guiders()}
    assert set(ALL_METHODS) <= set(rows)
    for name in ALL_METHODS:
        row = rows[name]
        assert row["space"] in SPACES
        assert row["source"].startswith("arXiv ")
        assert row["summary"]
        assert "\n" not in row["summary"]
        assert row["parameters"] == json.loads(json.dumps(row["parameters"]))
        assert row["parameters"] == {
            k: (list(v) if isinstance(v, tuple) else v) for k, v in guider_parameters(name).items()
        }
    assert rows["apg"]["parameters"] == {
        "schedule": "constant",
        "scale": 3.0,  # APG's documented default scale (docs/methods.md §9)
        "eta": 0.0,
        "momentum": -0.5,
        "norm_threshold": 15.0,
        "norm_dims": None,
        "momentum_form": "sum",
        "cfg_steps": 0,
        "cfg_scale": None,
    }
    assert rows["adamag"]["parameters"]["kappa"] == 4.0
    assert rows["cfg"]["parameters"]["scale"] == 3.0
    assert rows["cfg++"]["parameters"]["scale"] == 0.6
    assert rows["weak-model"]["parameters"]["scale"] == 2.0
    assert rows["beta-cfg"]["parameters"]["scale"] is None  # required
    assert rows["adamag"]["space"] == "velocity"
    assert rows["rescale"]["space_param"]
    assert not rows["adg"]["space_param"]
    assert "tv-cfg" in rows["apg"]["schedules"]
    assert rows["cfg"]["schedules"]
    schedules = {row["name"]: row for row in describe_schedules()}
    assert schedules["interval"]["parameters"] == {"scale": 2.0, "lam_lo": 0.19, "lam_hi": 1.61}
    assert schedules["tv-cfg"]["source"] == "arXiv 2509.22007"


def test_schedule_table_rows():
    path = get_path("rf")
    grid = make_grid("edm", 12, path)
    rows = schedule_table(build_guider("cfg", schedule="interval", scale=2.0), path, grid)
    assert [r["step"] for r in rows] == list(range(12))
    for r, t in zip(rows, grid[:-1], strict=True):
        lam = float(path.lam(t))
        inside = 0.19 < lam <= 1.61
        assert r["t"] == float(t)
        assert r["lam"] == lam
        assert r["gamma"] == (2.0 if inside else 1.0)
        assert r["passes"] == ("cond+uncond" if inside else "cond")
    zero = schedule_table(build_guider("cfg-zero-star", scale=3.0, zero_init_steps=2), "rf", grid)
    assert [r["passes"] for r in zero[:3]] == ["none", "none", "cond+uncond"]
    per_sample = schedule_table(build_guider("cfg", schedule="tv-cfg", scale=[1.0, 3.0]), path, grid)
    assert per_sample[0]["gamma"][0] == 1.0
    assert len(per_sample[0]["gamma"]) == 2


@pytest.mark.parametrize("name", ALL_METHODS)
@pytest.mark.parametrize("solver", ["euler", "heun", "ddim", "dpm++2m"])
def test_sampling_counts_one_evaluation_where_the_unconditional_pass_is_not_needed(name, solver):
    path = get_path("vp-cosine")
    grid = make_grid("uniform", 8, path)
    params = {"schedule": "negative-switch", "scale": 0.5 if name == "cfg++" else 3.0, "scale_late": 1.0}
    extra = {"zero_init_steps": 0} if name == "cfg-zero-star" else {}
    if name == "beta-cfg":
        extra = {"beta_a": 1.0, "beta_b": 1.0, "norm_power": 0.0}
    guider = build_guider(name, p_switch=0.5, **params, **extra)
    result = sample(LinearGaussian(path), guider, grid=grid, n=6, shape=(2,), cond=0, solver=solver, eta=0.0)
    assert result.num_diverged == 0
    assert torch.isfinite(result.x).all()
    guided_steps = 4  # p = i/7 < 0.5 for i = 0..3
    stage_factor = {"heun": 2}.get(solver, 1)
    expected = stage_factor * (8 + guided_steps) - (solver == "heun")  # Heun's last step has no corrector
    assert result.nfe == expected


def test_reset_before_each_batch_makes_apg_trajectories_reproducible():
    path = get_path("rf")
    grid = make_grid("uniform", 6, path)
    apg = build_guider("apg", scale=4.0, momentum=-0.5)
    den = LinearGaussian(path)
    first = sample(den, apg, grid=grid, n=5, shape=(2,), cond=0, seed=2)
    again = sample(den, apg, grid=grid, n=5, shape=(2,), cond=0, seed=2)
    torch.testing.assert_close(first.x, again.x, rtol=0, atol=0)
    other_batch = sample(den, apg, grid=grid, n=3, shape=(2,), cond=0, seed=2)
    assert other_batch.x.shape == (3, 2)
