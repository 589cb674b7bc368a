"""diffusers' own guiders run as guidelab guiders (``diffusers:ClassName``, docs/methods.md §10): the same numbers as
guidelab's rules where the formulas agree, the documented difference (with its measured size) where they do not,
diffusers' start/stop windows as skipped unconditional passes, APG's momentum per trajectory, and the registry,
command line, sweep and pipeline faces.

Trajectory comparisons sample the exact denoiser of ``multimodal-2d`` in float64, re-expressed in the prediction
space under test (diffusers' guiders combine whatever the network outputs); ``rel`` is the largest difference of
the final samples over the largest sample coordinate.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from guidelab.cli import app
from guidelab.grids import make_grid
from guidelab.guiders import Predictions, StepContext, build_guider
from guidelab.guiders.diffusers_guiders import (
    DiffusersGuider,
    describe_diffusers_guiders,
    diffusers_guider_names,
    refused_diffusers_guiders,
)
from guidelab.guiders.reductions import EPS
from guidelab.guiders.registry import guider_parameters
from guidelab.paths import convert, get_path
from guidelab.sampling import sample
from guidelab.targets import get_target

ROOT = Path(__file__).resolve().parents[1]
TARGET = get_target("multimodal-2d")
GAMMA = 4.0
runner = CliRunner()
ACCEPTED = [
    "diffusers:AdaptiveProjectedGuidance",
    "diffusers:AdaptiveProjectedMixGuidance",
    "diffusers:ClassifierFreeGuidance",
    "diffusers:ClassifierFreeZeroStarGuidance",
    "diffusers:FrequencyDecoupledGuidance",
    "diffusers:MagnitudeAwareGuidance",
    "diffusers:TangentialClassifierFreeGuidance",
]
REFUSED = ["PerturbedAttentionGuidance", "SkipLayerGuidance", "SmoothedEnergyGuidance", "AutoGuidance", "LTX2Guidance"]
APG_PAPER = {"adaptive_projected_guidance_momentum": -0.5, "adaptive_projected_guidance_rescale": 15.0, "eta": 0.0}


class SpaceDenoiser:
    """The exact denoiser of ``multimodal-2d`` on ``path``, predicting in ``space``."""

    def __init__(self, path: str, space: str):
        self.inner = TARGET.denoiser(get_path(path))
        self.path, self.prediction, self.data_scale = self.inner.path, space, self.inner.data_scale

    def __call__(self, x_t, t, cond):
        c = self.path.coefficients(torch.as_tensor(t, dtype=torch.float64)).expand_as(x_t)
        return convert(self.inner(x_t, t, cond), "x0", self.prediction, x_t, c)


def run(guider, path="rf", space="x0", solver="euler", steps=12, n=256, dtype=torch.float64):
    den = SpaceDenoiser(path, space)
    grid = make_grid("uniform", steps, den.path)
    return sample(den, guider, grid=grid, n=n, shape=(2,), cond=0, solver=solver, seed=1, dtype=dtype)


def rel(a, b) -> float:
    return float((a.x - b.x).abs().max() / b.x.abs().max())


def compare(ours, theirs, **kw) -> tuple[float, int, int]:
    a, b = run(build_guider(*ours[:1], **ours[1]), **kw), run(build_guider(*theirs[:1], **theirs[1]), **kw)
    return rel(b, a), a.nfe, b.nfe


# --- the optional dependency -------------------------------------------------------------------------------------


def test_importing_the_guiders_does_not_import_diffusers():
    code = (
        "import sys, guidelab.guiders, guidelab.recipe\n"
        "from guidelab.guiders import build_guider\n"
        "build_guider('apg')\n"
        "assert 'diffusers' not in sys.modules, sorted(m for m in sys.modules if m.startswith('diffusers'))\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": ""}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


def test_the_accepted_and_refused_guiders_are_read_from_diffusers():
    assert diffusers_guider_names() == ACCEPTED
    assert set(refused_diffusers_guiders()) == {f"diffusers:{r}" for r in REFUSED}
    assert [r["name"] for r in describe_diffusers_guiders()] == ACCEPTED


# --- CFG: the same numbers as guidelab's cfg ---------------------------------------------------------------------


@pytest.mark.parametrize("space", ["x0", "eps", "velocity"])
@pytest.mark.parametrize("path", ["rf", "vp-cosine"])
@pytest.mark.parametrize("solver", ["euler", "heun", "ddim", "dpm++2m"])
def test_diffusers_cfg_is_guidelab_cfg_to_float64_rounding(space, path, solver):
    # diffusers combines in the denoiser's space, guidelab in x0: CFG is linear, so only rounding differs
    diff, ours, theirs = compare(
        ("cfg", {"scale": GAMMA}),
        ("diffusers:ClassifierFreeGuidance", {"guidance_scale": GAMMA}),
        path=path,
        space=space,
        solver=solver,
    )
    assert diff <= 1e-13
    assert ours == theirs


def test_original_formulation_is_the_ho_scale_plus_one():
    g = build_guider("diffusers:ClassifierFreeGuidance", guidance_scale=GAMMA - 1, use_original_formulation=True)
    assert rel(run(g), run(build_guider("cfg", scale=GAMMA))) <= 1e-13
    grid = make_grid("uniform", 12, get_path("rf"))
    assert g.effective_scale(grid, get_path("rf")) == GAMMA


# --- APG and APG-Mix --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["rf", "vp-cosine"])
@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_apg_original_formulation_in_x0_is_the_paper_rule(path, solver):
    # c + s·(Δ⊥ + η·Δ∥) with s = γ − 1 on an x0 model is guidelab's apg; Heun's corrector reads the momentum
    # without advancing it in both (measured ≤ 2e-11: the ε of the norm divisions)
    diff, ours, theirs = compare(
        ("apg", {"scale": GAMMA}),
        (
            "diffusers:AdaptiveProjectedGuidance",
            {"guidance_scale": GAMMA - 1, "use_original_formulation": True, **APG_PAPER},
        ),
        path=path,
        solver=solver,
    )
    assert diff <= 1e-9 and ours == theirs


@pytest.mark.parametrize(
    ("space", "params", "measured"),
    [
        ("x0", {"guidance_scale": GAMMA, **APG_PAPER}, 0.98),  # diffusers' default form: from u, u + γ·U
        ("eps", {"guidance_scale": GAMMA - 1, "use_original_formulation": True, **APG_PAPER}, 0.79),
        ("velocity", {"guidance_scale": GAMMA - 1, "use_original_formulation": True, **APG_PAPER}, 0.82),
        ("x0", {"guidance_scale": GAMMA}, 0.66),  # diffusers' defaults: η = 1, no momentum
    ],
)
def test_apg_differs_from_the_paper_rule_by_its_documented_amount(space, params, measured):
    diff, _, _ = compare(("apg", {"scale": GAMMA}), ("diffusers:AdaptiveProjectedGuidance", params), space=space)
    assert diff == pytest.approx(measured, abs=0.01)  # docs/methods.md §10


def test_apg_default_form_differs_by_the_parallel_part_at_one_step():
    """diffusers' default APG is ``u + γ·U``, the paper's ``c + (γ − 1)·U``: they differ by ``U − Δ = (η − 1)·Δ∥``
    (no momentum, no threshold)."""
    g = torch.Generator().manual_seed(0)
    x_t, c, u = (torch.randn(8, 2, dtype=torch.float64, generator=g) for _ in range(3))
    path = get_path("rf")
    preds = Predictions({"cond": (c, "x0"), "uncond": (u, "x0")}, x_t, path.coefficients(torch.tensor(0.5)))
    grid = torch.linspace(1, 0, 5, dtype=torch.float64)
    ctx = StepContext(2, 4, 0.5, 1.0, grid, path)
    eta = 0.3
    common = {"adaptive_projected_guidance_rescale": 0.0, "eta": eta}
    native = build_guider("diffusers:AdaptiveProjectedGuidance", guidance_scale=GAMMA, **common)
    paper = build_guider("apg", scale=GAMMA, eta=eta, momentum=0.0, norm_threshold=None)
    delta = c - u
    parallel = (delta * c).sum(1, keepdim=True) / (c * c).sum(1, keepdim=True) * c
    got = native.guide(preds, ctx).x0_hat - paper.guide(preds, ctx).x0_hat
    torch.testing.assert_close(got, (eta - 1) * parallel, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_apg_mix_is_guidelab_apg_with_cfg_steps(solver):
    # diffusers' start step S runs CFG while step ≤ S: guidelab's cfg_steps K = S + 1 (docs/methods.md §6)
    theirs = {
        "guidance_scale": 1.5,
        "adaptive_projected_guidance_scale": GAMMA - 1,
        "use_original_formulation": True,
        "adaptive_projected_guidance_start_step": 2,
    }
    ours = {"scale": GAMMA, "cfg_steps": 3, "cfg_scale": 2.5, "norm_threshold": 10.0}
    diff, n1, n2 = compare(("apg", ours), ("diffusers:AdaptiveProjectedMixGuidance", theirs), solver=solver)
    assert diff <= 1e-9 and n1 == n2
    if solver == "euler":  # diffusers' default form starts its APG steps from u (docs/methods.md §10)
        native = {"guidance_scale": 2.5, "adaptive_projected_guidance_scale": GAMMA}
        native["adaptive_projected_guidance_start_step"] = 2
        diff, _, _ = compare(("apg", ours), ("diffusers:AdaptiveProjectedMixGuidance", native))
        assert diff == pytest.approx(0.58, abs=0.01)


def test_a_corrector_stage_reads_the_momentum_without_advancing_it():
    guider = build_guider("diffusers:AdaptiveProjectedGuidance", guidance_scale=GAMMA, **APG_PAPER)
    g = torch.Generator().manual_seed(1)
    x_t, c, u = (torch.randn(4, 2, dtype=torch.float64, generator=g) for _ in range(3))
    path = get_path("rf")
    grid = torch.linspace(1, 0, 5, dtype=torch.float64)
    guider.reset(4)
    for stage, t in ((0, 0.75), (1, 0.5)):
        preds = Predictions({"cond": (c, "x0"), "uncond": (u, "x0")}, x_t, path.coefficients(torch.tensor(t)))
        guider.guide(preds, StepContext(0, 4, t, t / (1 - t), grid, path, stage=stage))
        if stage == 0:
            after_predictor = guider.diffusers_guider.momentum_buffer.running_average
    assert guider.diffusers_guider.momentum_buffer.running_average is after_predictor
    torch.testing.assert_close(after_predictor, c - u)


def test_apg_momentum_starts_again_for_every_run():
    guider = build_guider("diffusers:AdaptiveProjectedGuidance", guidance_scale=GAMMA, **APG_PAPER)
    first, second = run(guider), run(guider)
    assert torch.equal(first.x, second.x)
    fresh = run(build_guider(**guider.config()))
    assert torch.equal(first.x, fresh.x)
    no_momentum = {**APG_PAPER, "adaptive_projected_guidance_momentum": None}
    unmoved = run(build_guider("diffusers:AdaptiveProjectedGuidance", guidance_scale=GAMMA, **no_momentum))
    assert rel(first, unmoved) > 1e-3  # the momentum matters, so the equalities above test its reset


# --- CFG-Zero*, TCFG, MAMBO-G ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["rf", "vp-cosine"])
def test_cfg_zero_star_on_a_velocity_model_matches_up_to_diffusers_epsilon(path, monkeypatch):
    ours = ("cfg-zero-star", {"scale": GAMMA})
    theirs = ("diffusers:ClassifierFreeZeroStarGuidance", {"guidance_scale": GAMMA})
    diff, n_ours, n_theirs = compare(ours, theirs, path=path, space="velocity")
    # measured 4e-6 (rf), 2e-6 (vp-cosine): diffusers' s* = <c, u>/(||u||² + 1e-8), in float32; guidelab's ε is 1e-12
    assert 1e-8 < diff <= 2e-5
    assert n_theirs == n_ours + 2  # the zero-init step: no evaluation in guidelab, cond + uncond in diffusers
    import diffusers.guiders.classifier_free_zero_star_guidance as module

    def guidelab_scale(cond, uncond, eps=EPS):  # s* in float64 with guidelab's ε
        return (cond * uncond).sum(1, keepdim=True) / ((uncond**2).sum(1, keepdim=True) + EPS)

    monkeypatch.setattr(module, "cfg_zero_star_scale", guidelab_scale)
    diff, _, _ = compare(ours, theirs, path=path, space="velocity")
    assert diff <= 1e-12  # explained: with guidelab's s* the rules agree


def test_cfg_zero_star_in_another_space_is_another_rule():
    # diffusers zeroes and rescales whatever the model predicts; guidelab always works on the velocity
    for space, measured in (("x0", 1.16), ("eps", 3.37)):
        diff, _, _ = compare(
            ("cfg-zero-star", {"scale": GAMMA}),
            ("diffusers:ClassifierFreeZeroStarGuidance", {"guidance_scale": GAMMA}),
            space=space,
        )
        assert diff == pytest.approx(measured, abs=0.01)


def test_tangential_cfg_matches_in_the_same_space_up_to_diffusers_float32_svd():
    theirs = ("diffusers:TangentialClassifierFreeGuidance", {"guidance_scale": GAMMA})
    diff, _, _ = compare(("tangential", {"scale": GAMMA}), theirs, space="eps")
    assert diff <= 1e-4  # measured 2e-5: diffusers' SVD runs in float32
    diff, _, _ = compare(("tangential", {"scale": GAMMA, "space": "x0"}), theirs, space="x0")
    assert diff <= 1e-5  # measured 8e-7
    diff, _, _ = compare(("tangential", {"scale": GAMMA}), theirs, space="x0")
    assert diff == pytest.approx(0.51, abs=0.01)  # ε space (guidelab's default) against x0 (the model's)


def test_magnitude_aware_guidance_is_mambo_g_in_the_same_space():
    theirs = ("diffusers:MagnitudeAwareGuidance", {"guidance_scale": GAMMA, "alpha": 8.0})
    diff, _, _ = compare(("mambo-g", {"scale": GAMMA, "alpha": 8.0}), theirs, space="velocity")
    assert diff <= 1e-12
    diff, _, _ = compare(("mambo-g", {"scale": GAMMA, "alpha": 8.0, "space": "x0"}), theirs, space="x0")
    assert diff <= 1e-12
    diff, _, _ = compare(("mambo-g", {"scale": GAMMA, "alpha": 8.0}), theirs, space="x0")
    assert diff == pytest.approx(0.049, abs=0.002)  # velocity (guidelab's default) against x0 (the model's)


# --- windows and passes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("solver", "nfe"), [("euler", 8 + 4), ("heun", 15 + 8), ("dpm++2m", 8 + 4)])
def test_the_start_stop_window_skips_the_unconditional_pass(solver, nfe):
    # int(0.25·8) = 2 ≤ step < int(0.75·8) = 6: four guided steps; Heun evaluates every step twice but the last
    windowed = build_guider("diffusers:ClassifierFreeGuidance", guidance_scale=GAMMA, start=0.25, stop=0.75)
    out = run(windowed, solver=solver, steps=8)
    assert out.nfe == nfe
    plan = [p.name for p in windowed.passes(_ctx(3, 8))], [p.name for p in windowed.passes(_ctx(6, 8))]
    assert plan == (["cond", "uncond"], ["cond"])
    full = run(build_guider("cfg", scale=GAMMA), solver=solver, steps=8)
    unguided = run(build_guider("cfg", scale=1.0), solver=solver, steps=8)
    assert rel(out, full) > 1e-3 and rel(out, unguided) > 1e-3


def _ctx(i: int, steps: int) -> StepContext:
    grid = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    path = get_path("rf")
    return StepContext(i, steps, float(grid[i]), float(path.lam(grid[i])), grid, path)


@pytest.mark.parametrize("params", [{"enabled": False}, {"guidance_scale": 1.0}, {"start": 0.5, "stop": 0.5}])
def test_a_disabled_guider_is_the_conditional_model_at_one_pass_per_step(params):
    out = run(build_guider("diffusers:ClassifierFreeGuidance", **params), steps=8)
    unguided = run(build_guider("cfg", scale=1.0), steps=8)
    assert out.nfe == 8 and torch.equal(out.x, unguided.x)


def test_effective_scale_is_the_ho_scale_averaged_over_the_window():
    path = get_path("rf")
    grid = make_grid("uniform", 16, path)
    scale = {
        "cfg": build_guider("diffusers:ClassifierFreeGuidance", guidance_scale=GAMMA),
        "half": build_guider("diffusers:ClassifierFreeGuidance", guidance_scale=GAMMA, stop=0.5),
        "mix": build_guider(
            "diffusers:AdaptiveProjectedMixGuidance",
            guidance_scale=2.0,
            adaptive_projected_guidance_scale=6.0,
            adaptive_projected_guidance_start_step=7,
        ),
    }
    got = {k: g.effective_scale(grid, path) for k, g in scale.items()}
    assert got == pytest.approx({"cfg": GAMMA, "half": (GAMMA + 1) / 2, "mix": (8 * 2.0 + 8 * 6.0) / 16})


# --- registry, configuration and errors --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in ACCEPTED if n != "diffusers:FrequencyDecoupledGuidance"])
def test_config_round_trip_and_pickle(name):
    guider = build_guider(name)
    config = guider.config()
    assert config["name"] == name and isinstance(guider, DiffusersGuider)
    assert json.loads(json.dumps(config)) == config
    assert build_guider(**config).config() == config
    assert pickle.loads(pickle.dumps(guider)).config() == config
    assert set(config) - {"name"} == set(guider_parameters(name))


def test_parameters_are_checked_and_normalised():
    g = build_guider("diffusers:ClassifierFreeGuidance", guidance_scale=4, start=0)  # ints read as floats
    assert g.config()["guidance_scale"] == 4.0 and isinstance(g.config()["start"], float)
    with pytest.raises(ValueError, match=r"^guidance_scale: expected float, got 'x'$"):
        build_guider("diffusers:ClassifierFreeGuidance", guidance_scale="x")
    with pytest.raises(ValueError, match=r"^enabled: expected bool"):
        build_guider("diffusers:ClassifierFreeGuidance", enabled=1)
    with pytest.raises(ValueError, match=r"^guider 'diffusers:ClassifierFreeGuidance': unknown parameter 'scale'; "):
        build_guider("diffusers:ClassifierFreeGuidance", scale=4.0)
    with pytest.raises(ValueError, match=r"^guider: diffusers:ClassifierFreeGuidance: Expected `start`"):
        build_guider("diffusers:ClassifierFreeGuidance", start=2.0)


def test_an_unknown_class_lists_the_accepted_ones():
    with pytest.raises(ValueError, match=r"^guider: unknown diffusers guider 'diffusers:Nope'; accepted: ") as err:
        build_guider("diffusers:Nope")
    assert all(name in str(err.value) for name in ACCEPTED)
    with pytest.raises(ValueError, match=r"^guider: unknown name 'nope'; .*diffusers:ClassName"):
        build_guider("nope")


@pytest.mark.parametrize("short", REFUSED)
def test_guiders_that_perturb_the_network_are_refused_in_one_line(short):
    with pytest.raises(ValueError, match=rf"^guider: diffusers:{short} is not supported: it (perturbs|needs)") as err:
        build_guider(f"diffusers:{short}")
    assert "\n" not in str(err.value)


def test_frequency_decoupled_guidance_without_kornia_says_so():
    pytest.importorskip("diffusers")
    try:
        import kornia  # noqa: F401
    except ImportError:
        with pytest.raises(
            ValueError, match=r"^guider: diffusers:FrequencyDecoupledGuidance cannot be built: .*kornia"
        ):
            build_guider("diffusers:FrequencyDecoupledGuidance")
    else:  # pragma: no cover - kornia installed
        assert (
            build_guider("diffusers:FrequencyDecoupledGuidance").effective_scale(
                make_grid("uniform", 4, get_path("rf")), get_path("rf")
            )
            is None
        )


# --- command line, sweep and pipeline ----------------------------------------------------------------------------


def test_cli_sample_with_a_diffusers_guider(tmp_path, capsys):
    out = tmp_path / "s.npy"
    args = ["sample", "--target", "multimodal-2d", "--guider", "diffusers:ClassifierFreeGuidance", "--steps", "8"]
    result = runner.invoke(
        app, [*args, "--param", "guidance_scale=4", "--param", "stop=0.5", "--n", "64", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["nfe"] == 8 + 4
    assert sidecar["config"]["guider_config"] == {
        "name": "diffusers:ClassifierFreeGuidance",
        "guidance_scale": 4.0,
        "guidance_rescale": 0.0,
        "use_original_formulation": False,
        "start": 0.0,
        "stop": 0.5,
        "enabled": True,
    }
    assert sidecar["config"]["gamma"] == 2.5  # γ = 4 on the first half of the steps, 1 after
    assert "experimental" not in result.output  # diffusers' warning of every new guider instance is silenced


def test_cli_methods_lists_the_diffusers_guiders_apart():
    result = runner.invoke(app, ["methods", "--diffusers"])
    assert result.exit_code == 0, result.output
    assert all(name in result.output for name in ACCEPTED)
    assert "diffusers:PerturbedAttentionGuidance  refused: it perturbs the network" in result.output
    rows = json.loads(runner.invoke(app, ["methods", "--diffusers", "--json"]).output)
    assert [r["name"] for r in rows] == ACCEPTED
    result = runner.invoke(app, ["methods"])
    assert "diffusers:ClassifierFreeGuidance" not in result.output
    assert "guidelab methods --diffusers" in result.output


def test_a_sweep_runs_diffusers_beside_guidelab(tmp_path):
    from guidelab.experiments.config import load_sweep
    from guidelab.experiments.runner import run_sweep
    from guidelab.experiments.store import ResultStore

    (tmp_path / "sweep.yaml").write_text(
        "name: side-by-side\n"
        "targets: [{target: multimodal-2d, conds: [a]}]\n"
        "grids: [{kind: uniform, steps: 6}]\n"
        "guiders:\n"
        "  - {name: cfg, params: {scale: 3.0}}\n"
        "  - {name: 'diffusers:ClassifierFreeGuidance', params: {guidance_scale: 3.0}}\n"
        "n: 64\n"
        "metrics: [energy_distance]\n"
    )
    summary = run_sweep(load_sweep(tmp_path / "sweep.yaml"), tmp_path / "out")
    assert summary.failed == 0
    rows = {r["guider"]: r for r in ResultStore(tmp_path / "out" / "results.sqlite").rows()}
    ours, theirs = rows["cfg"], rows["diffusers:ClassifierFreeGuidance"]
    assert ours["gamma"] == theirs["gamma"] == 3.0 and ours["nfe"] == theirs["nfe"] == 12
    assert theirs["metrics"]["energy_distance"] == pytest.approx(ours["metrics"]["energy_distance"], rel=1e-4)


def test_on_a_stable_diffusion_pipeline_diffusers_cfg_is_the_pipeline():
    from guidelab.pipelines import generate
    from tiny_diffusers import make_sd

    pipe = make_sd(scheduler="ddim")
    pipe.set_progress_bar_config(disable=True)
    s = pipe.unet.config.sample_size
    lat = torch.randn((2, 4, s, s), generator=torch.Generator().manual_seed(1))
    prompts = ["a cat", "a dog on a hill"]
    ref = pipe(prompts, num_inference_steps=5, guidance_scale=4.5, latents=lat, output_type="latent").images
    out = generate(
        pipe, prompts, guider="diffusers:ClassifierFreeGuidance", params={"guidance_scale": 4.5}, steps=5,
        latents=lat, output_type="latent",
    )  # fmt: skip
    assert float((out.images - ref).abs().max() / ref.abs().max()) <= 1e-5  # ε combined as the pipeline does
    windowed = generate(
        pipe, prompts, guider="diffusers:ClassifierFreeGuidance", params={"guidance_scale": 4.5, "stop": 0.6},
        steps=5, latents=lat, output_type="latent",
    )  # fmt: skip
    assert out.nfe == 10 and windowed.nfe == 5 + 3
