"""Learning ω by self-consistency (arXiv 2510.00815): what it learns on denoisers whose ideal guidance is known,
kill-and-resume to bit-identical weights, early stopping, validation, the config-driven denoisers, the reward."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from guidelab.experiments.reproductions.learned_guidance import UnderConditionedDenoiser
from guidelab.grids import make_grid
from guidelab.guiders.learned import LearnedGuider
from guidelab.learn import LearnConfig, learn, target_data
from guidelab.paths import get_path
from guidelab.targets import get_target
from guidelab.train import train_denoiser

SMALL = {"steps": 60, "batch_size": 32, "holdout": 128, "eval_every": 10, "patience": 0, "checkpoint_every": 20}


@pytest.fixture(scope="module")
def target():
    return get_target("multimodal-2d")


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_exact_denoiser_learns_no_guidance(target) -> None:
    """The paper's toy finding: on an exact denoiser the learned ω stays near 0 (starting from 0.5)."""
    config = LearnConfig(target="multimodal-2d", steps=150, batch_size=64, holdout=256, patience=0)
    result = learn(config)
    path = get_path("rf")
    table = LearnedGuider.from_weights(result.weights).table(path, make_grid("uniform", 16, path))
    assert float(table.max()) < 0.05, table
    assert result.history[-1]["holdout"] < result.history[0]["holdout"]


def test_recovers_the_ideal_weight_of_an_under_conditioned_denoiser(target) -> None:
    """x0̂'_c = x0̂_u + ρ_c(t)(x0̂_c − x0̂_u) is undone exactly by ω* = 1/ρ_c(t) − 1: per class, decaying in t.
    Checked where the class signal is strong (t ≥ 0.5); at low noise x0̂_c ≈ x0̂_u and ω barely matters."""
    path = get_path("rf")
    denoiser = UnderConditionedDenoiser(target.denoiser(path), [0.5, 0.8])
    config = LearnConfig(steps=300, batch_size=64, holdout=256, patience=0)
    result = learn(config, denoiser=denoiser, data=target_data(target), num_classes=2)
    grid = make_grid("uniform", 10, path, t_max=0.99)
    table = LearnedGuider.from_weights(result.weights).table(path, grid)
    for k in range(5):  # t from 0.99 to ~0.6
        for c in range(2):
            assert abs(float(table[c, k]) - denoiser.ideal_omega(c, float(grid[k]))) < 0.25, (c, k, table)
    assert float((table[0, :5] - table[1, :5]).min()) > 0.2  # class a (ρ = 0.5) needs more guidance than b


def _interrupt_at(step_to_fail: int):
    def callback(step: int, info: dict) -> None:
        if step == step_to_fail:
            raise KeyboardInterrupt

    return callback


def test_interrupted_run_resumes_to_identical_weights(tmp_path, target) -> None:
    full = learn(LearnConfig(target="multimodal-2d", out_dir=str(tmp_path / "full"), **SMALL))
    config = LearnConfig(target="multimodal-2d", out_dir=str(tmp_path / "cut"), **SMALL)
    with pytest.raises(KeyboardInterrupt):
        learn(config, callback=_interrupt_at(47))  # last checkpoint: step 40
    resumed = learn(config)
    assert resumed.resumed_from == 40
    assert _same_weights(full.weights.state_dict(), resumed.weights.state_dict())
    assert resumed.history == full.history and resumed.steps_done == 60
    # the files hold the same weights, and no temporary file was left behind
    a = LearnedGuider(str(tmp_path / "full")).weights.state_dict()
    b = LearnedGuider(str(tmp_path / "cut" / "weights.pt")).weights.state_dict()
    assert _same_weights(a, b)
    assert not [p for p in (tmp_path / "cut").iterdir() if p.name.startswith(".")]
    # resuming a finished run trains no further
    again = learn(config)
    assert again.resumed_from == 60 and _same_weights(again.weights.state_dict(), full.weights.state_dict())


_CHILD = textwrap.dedent(
    """
    import sys, time
    from guidelab.learn import LearnConfig, learn
    config = LearnConfig.model_validate_json(sys.argv[1])
    learn(config, callback=lambda step, info: time.sleep(0.02))
    """
)


def test_killed_process_resumes_to_identical_weights(tmp_path, target) -> None:
    """SIGKILL a learning process after its first checkpoint; resuming gives the uninterrupted weights."""
    settings = {**SMALL, "steps": 300, "checkpoint_every": 10}
    out = tmp_path / "killed"
    config = LearnConfig(target="multimodal-2d", out_dir=str(out), **settings)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    child = subprocess.Popen([sys.executable, "-c", _CHILD, config.model_dump_json()], env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint.pt").exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    resumed = learn(config)
    assert resumed.resumed_from is not None and 0 < resumed.resumed_from < 300
    full = learn(LearnConfig(target="multimodal-2d", out_dir=str(tmp_path / "full"), **settings))
    assert _same_weights(full.weights.state_dict(), resumed.weights.state_dict())


def test_early_stopping_keeps_the_best_held_out_weights(target) -> None:
    config = LearnConfig(
        target="multimodal-2d", steps=2000, batch_size=32, holdout=128, eval_every=5, patience=3, lr=0.05
    )
    result = learn(config)
    assert result.stopped_early and result.steps_done < 2000
    holdouts = [h["holdout"] for h in result.history]
    assert result.best_holdout == min(holdouts)
    assert result.best_step == result.history[holdouts.index(min(holdouts))]["step"]
    assert len(holdouts) - 1 - holdouts.index(min(holdouts)) >= 3


def test_config_errors_name_the_field(tmp_path) -> None:
    for bad, field in [
        ({"beta": 2.5}, "beta"),
        ({"particles": 0}, "particles"),
        ({"output": "tanh"}, "output"),
        ({"lr": 0}, "lr"),
        ({"unknown": 1}, "unknown"),
    ]:
        with pytest.raises(ValidationError, match=field):
            LearnConfig(target="multimodal-2d", **bad)
    with pytest.raises(ValidationError, match="s_min"):
        LearnConfig(target="multimodal-2d", s_min=0.5, delta=0.3, zeta=0.2)
    with pytest.raises(ValidationError, match="model"):
        LearnConfig(denoiser="mlp")
    with pytest.raises(ValidationError, match="reward"):
        LearnConfig(target="multimodal-2d", reward_weight=1.0)
    with pytest.raises(ValueError, match="target"):
        learn(LearnConfig(steps=1))
    learn(LearnConfig(target="multimodal-2d", out_dir=str(tmp_path), **{**SMALL, "steps": 10}))
    with pytest.raises(ValueError, match="beta"):
        learn(LearnConfig(target="multimodal-2d", out_dir=str(tmp_path), beta=1.5, **{**SMALL, "steps": 10}))


def test_config_driven_denoisers(tmp_path, target) -> None:
    small = {**SMALL, "steps": 10}
    train_denoiser(target, "rf", steps=5, batch_size=32, hidden=16, seed=0, out=tmp_path / "mlp.pt")
    mlp = learn(LearnConfig(denoiser="mlp", model=str(tmp_path / "mlp.pt"), out_dir=str(tmp_path / "a"), **small))
    assert mlp.meta["class_names"] == ["a", "b"] and mlp.meta["path"] == {"name": "rf"}
    err = learn(LearnConfig(target="multimodal-2d", denoiser="score-error", score_error=0.2, zeta=0.01, **small))
    agnostic = learn(
        LearnConfig(target="chidambaram-gauss-1d", path="vp-cosine", conditional=False, zeta=0.01, **small)
    )
    assert not agnostic.weights.conditional
    for result in (mlp, err, agnostic):
        assert all(torch.isfinite(torch.tensor(h["holdout"])) for h in result.history)
    assert (tmp_path / "a" / "history.json").is_file() and (tmp_path / "a" / "config.json").is_file()


def test_reward_raises_the_weight() -> None:
    """With R = log p(c | x0̂) the loss pays for class confidence, so ω grows with γ_R (overlapping classes:
    ½N(1, 1) + ½N(−1, 1), where the reward is far from saturated)."""
    common = {"target": "chidambaram-gauss-1d", "steps": 100, "batch_size": 64, "holdout": 128, "patience": 0}
    path = get_path("rf")
    grid = make_grid("uniform", 8, path)
    means = []
    for weight in (0.0, 0.5, 2.0):
        config = LearnConfig(reward="log-posterior" if weight else "none", reward_weight=weight, **common)
        means.append(float(LearnedGuider.from_weights(learn(config).weights).table(path, grid).mean()))
    assert means[0] < 0.05 and means[1] > means[0] + 0.1 and means[2] > means[1] + 0.3, means


def test_non_finite_denoiser_output_is_a_clear_error(target) -> None:
    path = get_path("rf")

    class Broken:
        prediction = "x0"

        def __init__(self) -> None:
            self.path = path

        def __call__(self, x_t, t, cond):
            return torch.full_like(x_t, float("nan"))

    with pytest.raises(ValueError, match="non-finite"):
        learn(LearnConfig(**{**SMALL, "steps": 2}), denoiser=Broken(), data=target_data(target), num_classes=2)


def test_the_old_name_lam_of_the_repulsion_weight_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="repulsion"):
        config = LearnConfig(target="multimodal-2d", lam=0.5)
    assert config.repulsion == 0.5
    with pytest.raises(ValueError, match="lam"):
        LearnConfig(target="multimodal-2d", lam=0.5, repulsion=0.5)
