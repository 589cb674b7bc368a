"""Feynman–Kac correctors (arXiv 2503.02819): the one-step pins, the official update written out in numpy, the
refusals, per-class resampling, and samples of the exact tilted target p(x|c)^γ p(x)^(1−γ) on a 2-D mixture."""

import math

import numpy as np
import pytest
import torch

from guidelab.fkc import FKCConfig, effective_sample_size, log_weight_increment, systematic_resample
from guidelab.grids import make_grid
from guidelab.guiders.registry import build_guider
from guidelab.metrics import TiltedTarget
from guidelab.metrics.distances import energy_distance
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets.base import ExactDenoiser
from guidelab.targets.gaussian_mixture import GaussianMixture

EPS_C = torch.tensor([[0.3, -1.2, 0.5, 0.0]], dtype=torch.float64)
EPS_U = torch.tensor([[0.1, -0.7, 0.9, 0.2]], dtype=torch.float64)


def test_one_step_pins():
    assert float(log_weight_increment(EPS_C, EPS_U, 3.0, 2.0, 1.6)) == pytest.approx(0.656042, abs=1e-6)
    assert float(log_weight_increment(EPS_C, EPS_U, 3.0, 2.0, 1.6, "first-order")) == pytest.approx(0.588, abs=1e-12)
    idx = systematic_resample(torch.tensor([0.0, 1.0, -1.0, 0.5]), 0.3)
    assert idx.tolist() == [1, 1, 3, 0]


def official_increment(eps_c, eps_u, gamma, t_cur, t_next):
    """martaskrt/fkc-diffusion edm_sampler_new, in numpy: scores (D − x)/t², d_a = −γ(γ−1)·‖s_u − s_c‖²·dt·t_cur."""
    x = np.zeros_like(eps_c)
    d_c, d_u = x - t_cur * eps_c, x - t_cur * eps_u  # D = x − t·ε (VE)
    s_u, s_c = (d_u - x) / t_cur**2, (d_c - x) / t_cur**2
    norm = ((s_u - s_c) ** 2).reshape(len(x), -1).sum(1)
    return -gamma * (gamma - 1) * norm * (t_next - t_cur) * t_cur


def official_resample(logits, u):
    """sample_cat_sys in numpy, without its 1e-6 clip of the weights (which FKC here does not reproduce)."""
    bs = len(logits)
    pos = (u + np.arange(bs) / bs) % 1.0
    w = np.exp(logits - logits.max())
    ids = np.digitize(pos, np.cumsum(w / w.sum()), right=True)
    ids[ids == bs] -= 1
    return ids


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_first_order_increment_matches_the_official_code(dtype):
    rng = np.random.default_rng(0)
    eps_c, eps_u = rng.normal(size=(2, 6, 3, 4, 4)) * [[[[[1.0]]]], [[[[2.0]]]]]
    ec, eu = torch.tensor(eps_c).to(dtype), torch.tensor(eps_u).to(dtype)
    ours = log_weight_increment(ec, eu, 2.5, 3.0, 2.2, "first-order").numpy()
    ref = official_increment(ec.double().numpy(), eu.double().numpy(), 2.5, 3.0, 2.2)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    log_form = log_weight_increment(ec, eu, 2.5, 3.0, 2.2).numpy()
    np.testing.assert_allclose(log_form, ref * math.log(3.0 / 2.2) / (0.8 / 3.0), rtol=1e-10)


def test_systematic_resampling_matches_the_official_code():
    rng = np.random.default_rng(1)
    for _ in range(50):
        logits = rng.normal(size=16) * 3
        u = float(rng.random())
        assert systematic_resample(torch.tensor(logits), u).tolist() == official_resample(logits, u).tolist()
    assert effective_sample_size(torch.zeros(8)) == pytest.approx(8.0)
    assert effective_sample_size(torch.tensor([0.0, -math.inf, -math.inf])) == pytest.approx(1.0)


def two_class_mixture():
    """N((1, 0), I) ("+") and N((−1, 0), I) ("−"), priors ½: overlapping, so p(x|+)^γ p(x)^(1−γ) ≠ p(x|+)."""
    return GaussianMixture([[1.0, 0.0], [-1.0, 0.0]], np.stack([np.eye(2)] * 2), None, [0, 1], ["+", "-"])


def run(target, path_name, solver, gamma, *, fkc=None, steps=50, n=2000, grid="uniform", eta=None, cond=0):
    path = get_path(path_name)
    return sample(
        ExactDenoiser(target, path),
        build_guider("cfg", scale=gamma),
        grid=make_grid(grid, steps, path),
        n=n,
        shape=(2,),
        cond=cond,
        solver=solver,
        eta=eta,
        seed=3,
        dtype=torch.float64,
        fkc=fkc,
    )


@pytest.mark.parametrize("gamma", [2.0, 3.0])
def test_fkc_samples_the_tilted_target_where_cfg_does_not(gamma):
    target = two_class_mixture()
    tilted = TiltedTarget(target, "+", gamma)
    ref = tilted.sample(2000, seed=1).double()
    floor = max(abs(energy_distance(tilted.sample(2000, seed=s).double(), ref)) for s in (7, 8, 9))
    fkc = run(target, "ve", "euler-maruyama", gamma, fkc=FKCConfig(), grid="edm")
    ode = run(target, "rf", "euler", gamma)
    sde = run(target, "ve", "euler-maruyama", gamma, grid="edm")
    d_fkc, d_ode, d_sde = (energy_distance(r.x, ref) for r in (fkc, ode, sde))
    assert fkc.nfe == 100 and fkc.resamplings == 49 and fkc.ess.shape == (49, 1)
    # FKC within a few two-sample floors (resampled particles are correlated); CFG misses by 10× more
    assert d_fkc < 8 * max(floor, 5e-4), (d_fkc, floor)
    assert min(d_ode, d_sde) > 10 * d_fkc, (d_ode, d_sde, d_fkc)
    mean = float(ref[:, 0].mean())
    assert abs(float(fkc.x[:, 0].mean()) - mean) < 0.06
    assert float(ode.x[:, 0].mean()) - mean > 0.2 and float(sde.x[:, 0].mean()) - mean > 0.2


def test_ddim_with_churn_and_the_first_order_form_also_correct():
    target = two_class_mixture()
    ref = TiltedTarget(target, "+", 2.0).sample(2000, seed=1).double()
    plain = energy_distance(run(target, "rf", "ddim", 2.0, eta=1.0).x, ref)
    for cfg in (FKCConfig(), FKCConfig("first-order"), FKCConfig(ess_threshold=0.5)):
        r = run(target, "rf", "ddim", 2.0, eta=1.0, fkc=cfg)
        assert energy_distance(r.x, ref) < plain / 5
    assert r.resamplings < 10  # ESS-triggered: few resamplings (always one at the last weighted step)


def test_particles_resample_within_their_class():
    target = two_class_mixture()
    cond = torch.tensor([0] * 300 + [1] * 300)
    r = run(target, "rf", "euler-ancestral", 3.0, fkc=FKCConfig(), n=600, steps=20, cond=cond)
    assert r.ess.shape == (19, 2) and r.resamplings == 38
    assert float(r.x[:300, 0].mean()) > 1.0 and float(r.x[300:, 0].mean()) < -1.0


@pytest.mark.parametrize(
    ("solver", "eta", "guider", "field"),
    [
        ("euler", None, {"name": "cfg"}, "solver"),
        ("ddim", 0.0, {"name": "cfg"}, "solver"),
        ("dpm++2m", None, {"name": "cfg"}, "solver"),
        ("ddim", 1.0, {"name": "apg"}, "guider"),
        ("ddim", 1.0, {"name": "cfg", "schedule": {"name": "interval", "scale": 3.0}}, "guider.schedule"),
    ],
)
def test_refusals_name_the_field(solver, eta, guider, field):
    path = get_path("rf")
    with pytest.raises(ValueError, match=f"^{field}:"):
        sample(
            ExactDenoiser(two_class_mixture(), path),
            build_guider(**guider),
            grid=make_grid("uniform", 5, path),
            n=4,
            shape=(2,),
            cond=0,
            solver=solver,
            eta=eta,
            fkc=FKCConfig(),
        )


def test_config_checks_and_round_trip():
    with pytest.raises(ValueError, match="^fkc.ess_threshold:"):
        FKCConfig(ess_threshold=0.0)
    with pytest.raises(ValueError, match="^fkc.increment:"):
        FKCConfig(increment="exact")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="^fkc.clamp:"):
        FKCConfig(clamp=-1.0)
    with pytest.raises(ValueError, match=r"^fkc.threshold: unknown key; did you mean 'ess_threshold'\? accepted: "):
        FKCConfig.from_config({"threshold": 0.5})
    cfg = FKCConfig(increment="first-order", ess_threshold=0.5, clamp=1.0)
    assert FKCConfig.from_config(cfg.config()) == cfg
    assert FKCConfig.from_config(True) == FKCConfig() and FKCConfig.from_config(None) is None


def test_cli_sample_with_fkc_writes_ess_and_resamplings(tmp_path):
    import json

    from typer.testing import CliRunner

    from guidelab.cli import app

    out = tmp_path / "s.npy"
    args = ["sample", "--target", "multimodal-2d", "--cond", "a", "--steps", "8", "--solver", "euler-ancestral"]
    result = CliRunner().invoke(app, [*args, "--fkc-param", "ess_threshold=0.9", "--n", "32", "--out", str(out)])
    assert result.exit_code == 0, result.output
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert len(sidecar["fkc_ess"]) == 7 and len(sidecar["fkc_ess"][0]) == 1
    assert sidecar["fkc_resamplings"] >= 1
    assert sidecar["config"]["fkc"] == {"increment": "log", "ess_threshold": 0.9, "clamp": None}
    refused = CliRunner().invoke(app, ["sample", "--target", "multimodal-2d", "--fkc", "--out", str(out)])
    assert refused.exit_code == 2 and "solver: FKC resampling" in refused.output


def test_sweep_field_reaches_every_run_and_plain_hashes_do_not_move(tmp_path):
    from guidelab.experiments.config import SweepConfig
    from guidelab.recipe import SampleConfig

    base = {"targets": [{"target": "multimodal-2d", "conds": ["a"]}], "guiders": [{"name": "cfg"}]}
    plain = SweepConfig(**base, solvers=["ddim"], eta=1.0).runs()
    with_fkc = SweepConfig(**base, solvers=["ddim"], eta=1.0, fkc={"increment": "first-order"}).runs()
    assert with_fkc[0].sample.fkc == {"increment": "first-order", "ess_threshold": None, "clamp": None}
    assert plain[0].sample.fkc is None and plain[0].hash != with_fkc[0].hash
    # the hash of a run without FKC is the hash of its settings without the field (stores written before it)
    import hashlib
    import json

    spec = plain[0]
    blob = {"sample": spec.sample.model_dump(exclude={"fkc"}), "metrics": sorted(spec.metrics), "reference_n": None}
    old = hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert spec.hash == old
    with pytest.raises(ValueError, match="solver: FKC"):
        SampleConfig(target="multimodal-2d", solver="ddim", fkc={})


def test_second_order_ancestral_solver_and_the_official_clamp():
    """dpm++2s-ancestral evaluates a midpoint (stage 1): only the step's first evaluation weights. With the
    official centring and clamp the run still corrects most of CFG's overshoot."""
    target = two_class_mixture()
    ref = TiltedTarget(target, "+", 3.0).sample(2000, seed=1).double()
    plain = energy_distance(run(target, "rf", "dpm++2s-ancestral", 3.0, steps=25).x, ref)
    for cfg in (FKCConfig(), FKCConfig(clamp=1.0)):
        r = run(target, "rf", "dpm++2s-ancestral", 3.0, steps=25, fkc=cfg)
        assert r.nfe == 96 and r.resamplings == 24
        assert energy_distance(r.x, ref) < plain / 3, (energy_distance(r.x, ref), plain)


def test_resampling_permutes_every_particle_state_together():
    """One corrector step on hand-made particles: the states and the divergence flags move with the same
    indices (a particle's row and its flag stay together), indices stay inside their class group, and the
    permutation is the systematic resampling of the step's increments (official ``sample_cat_sys``)."""
    from types import SimpleNamespace

    n = 8
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    guider = build_guider("cfg", scale=3.0)
    corrector = FKCConfig().start(guider, labels, solver="euler-maruyama", stochastic=True, seed=11)
    eps_u = torch.zeros(n, 2, dtype=torch.float64)
    eps_c = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.2], [0.5, 0.5]] * 2, dtype=torch.float64)
    corrector.guider.last = (0, eps_c, eps_u)
    lam = {0: 2.0, 1: 1.6}
    model = SimpleNamespace(steps=4, t=lambda i: i, lam=lambda t: lam[t], context=lambda i: SimpleNamespace(index=i))
    x = torch.arange(n, dtype=torch.float64)[:, None].repeat(1, 2)  # row i holds i: its identity
    flags = torch.tensor([False, True, False, False, False, False, True, False])
    monitor = SimpleNamespace(diverged=flags.clone())
    out = corrector.correct(model, 0, x.clone(), monitor)
    idx = out[:, 0].long()
    assert not torch.equal(idx, torch.arange(n))  # the step did resample
    assert torch.equal(monitor.diverged, flags[idx])  # each flag moved with its particle
    assert bool((labels[idx] == labels).all())  # resampled within the class
    assert not bool(flags[idx].any())  # diverged particles carry weight −∞: never chosen
    # the same indices from the increments written out (group by group, offsets from the corrector's stream)
    rng = np.random.default_rng(np.random.SeedSequence([11, 0xF4C]))
    inc = 3.0 * 2.0 * eps_c.square().sum(1) * math.log(2.0 / 1.6)
    inc[flags] = -math.inf
    for g in (0, 1):
        members = torch.nonzero(labels == g).reshape(-1)
        expect = members[systematic_resample(inc[members], float(rng.random()))]
        assert torch.equal(idx[members], expect)
    assert corrector.resamplings == 2 and torch.all(corrector.log_w == 0)


def test_a_sweep_run_with_fkc_records_ess_and_resamplings_in_its_sidecar_and_store(tmp_path):
    """The store row carries the lowest ESS and the resamplings, the run's sidecar the ESS per step; both equal
    what :func:`sample` gives for the same settings."""
    import json

    from guidelab.experiments.config import SweepConfig
    from guidelab.experiments.runner import run_sweep
    from guidelab.experiments.store import ResultStore
    from guidelab.targets import get_target

    sweep = SweepConfig(
        targets=[{"target": "multimodal-2d", "conds": ["a"]}],
        paths=["ve"],
        grids=[{"kind": "edm", "steps": 10}],
        solvers=["euler-maruyama"],
        guiders=[{"name": "cfg", "params": {"scale": 2.0}}],
        fkc={"clamp": 1.0, "ess_threshold": 0.8},
        n=200,
        metrics=["energy_distance"],
    )
    run_sweep(sweep, tmp_path)
    (row,) = ResultStore(tmp_path / "results.sqlite").rows()
    sidecar = json.loads((tmp_path / "runs" / row["hash"] / "run.json").read_text())["resolved"]
    target, path = get_target("multimodal-2d"), get_path("ve")
    direct = sample(ExactDenoiser(target, path), build_guider("cfg", scale=2.0), grid=make_grid("edm", 10, path),
                    n=200, shape=(2,), cond=0, solver="euler-maruyama", seed=0,
                    fkc=FKCConfig(clamp=1.0, ess_threshold=0.8))  # fmt: skip
    assert np.allclose(sidecar["fkc_ess"], direct.ess.numpy(), rtol=1e-6)
    assert sidecar["fkc_resamplings"] == direct.resamplings == row["metrics"]["fkc_resamplings"]
    assert 1 <= direct.resamplings < 9  # the threshold skipped some steps
    assert row["metrics"]["fkc_min_ess"] == pytest.approx(float(direct.ess.min()), rel=1e-6)


@pytest.mark.parametrize(
    ("param", "line"),
    [
        ("clampp=1", "error: fkc.clampp: unknown key; did you mean 'clamp'? accepted: increment, ess_threshold, clamp"),
        ("clamp=-1", "error: fkc.clamp: must be a finite number > 0"),
        ("ess_threshold=2", "error: fkc.ess_threshold: must lie in (0, 1]"),
    ],
)
def test_cli_fkc_errors_name_the_field_once(param, line, tmp_path, capsys):
    from guidelab.cli import main

    args = ["sample", "--target", "multimodal-2d", "--cond", "a", "--solver", "euler-maruyama", "--t-max", "0.99",
            "--fkc-param", param, "--n", "8", "--out", str(tmp_path / "x.npy")]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main(args)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(line), err
    assert "fkc: fkc" not in err
