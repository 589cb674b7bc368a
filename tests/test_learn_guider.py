"""The ``learned`` guider: identities with CFG, the (t_{k+1}, t_k) query, per-sample classes, skipped
unconditional passes, checkpoint loading and the config round trip."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.guiders.learned import LearnedGuider
from guidelab.models.guidance_weights import GuidanceWeights, log_noise_level, save_weights
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import get_target


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def path():
    return get_path("rf")


@pytest.fixture(scope="module")
def exact(path):
    return get_target("multimodal-2d").denoiser(path)


@pytest.fixture(scope="module")
def grid(path):
    return make_grid("uniform", 10, path)


class PerClass(GuidanceWeights):
    """ω = values[c] whatever the times; records every call's (class, log λ_s, log λ_t) rows."""

    def __init__(self, values: list[float]):
        super().__init__(len(values))
        self.values = torch.tensor(values)
        self.calls: list[Tensor] = []

    def forward(self, cond: Tensor, log_lam_s: Tensor, log_lam_t: Tensor) -> Tensor:
        self.calls.append(torch.stack([cond.double(), log_lam_s.double(), log_lam_t.double()], dim=1))
        return torch.where(cond < 0, 0.0, self.values[cond.clamp(min=0)])


def test_constant_weight_equals_cfg(exact, grid) -> None:
    """An untrained network gives ω = init_omega everywhere: the learned guider is CFG with γ = 1 + ω."""
    guider = LearnedGuider.from_weights(GuidanceWeights(2, init_omega=0.7))
    labels = torch.tensor([0, 1] * 100)
    a = sample(exact, guider, grid=grid, n=200, shape=(2,), cond=labels, solver="ddim", seed=3)
    b = sample(exact, build_guider("cfg", scale=1.7), grid=grid, n=200, shape=(2,), cond=labels, solver="ddim", seed=3)
    torch.testing.assert_close(a.x, b.x, rtol=1e-5, atol=1e-5)
    assert a.nfe == b.nfe == 20


def test_per_sample_classes_and_query_times(path, exact, grid) -> None:
    net = PerClass([0.0, 1.0])
    guider = LearnedGuider.from_weights(net)
    labels = torch.tensor([0] * 50 + [1] * 50)
    a = sample(exact, guider, grid=grid, n=100, shape=(2,), cond=labels, solver="ddim", seed=4)
    gamma = torch.tensor([1.0] * 50 + [2.0] * 50, dtype=torch.float64)
    b = sample(
        exact, build_guider("cfg", scale=gamma), grid=grid, n=100, shape=(2,), cond=labels, solver="ddim", seed=4
    )
    torch.testing.assert_close(a.x, b.x)
    # one network call per sampling run, for every class at every step's (s, t) = (t_{k+1}, t_k)
    assert len(net.calls) == 1
    expected = torch.tensor(
        [[float(log_noise_level(path, grid[k + 1])), float(log_noise_level(path, grid[k]))] for k in range(10)],
        dtype=torch.float64,
    )
    rows = net.calls[0]
    for c in (0, 1):
        torch.testing.assert_close(rows[rows[:, 0] == c, 1:], expected)


def test_zero_weight_skips_the_unconditional_pass(exact, grid) -> None:
    net = GuidanceWeights(2, output="relu", init_omega=0.5)
    with torch.no_grad():
        net.head.bias.fill_(-1.0)  # ReLU(−1) = 0 everywhere
    result = sample(exact, LearnedGuider.from_weights(net), grid=grid, n=64, shape=(2,), cond=0, solver="ddim")
    assert result.nfe == 10  # one evaluation per step
    plain = sample(exact, None, grid=grid, n=64, shape=(2,), cond=0, solver="ddim")
    torch.testing.assert_close(result.x, plain.x)


def test_heun_corrector_uses_the_steps_weight(exact, grid) -> None:
    net = PerClass([0.5, 0.5])
    a = sample(exact, LearnedGuider.from_weights(net), grid=grid, n=32, shape=(2,), cond=1, solver="heun", seed=1)
    b = sample(exact, build_guider("cfg", scale=1.5), grid=grid, n=32, shape=(2,), cond=1, solver="heun", seed=1)
    torch.testing.assert_close(a.x, b.x)
    assert len(net.calls) == 1  # one table per run: the corrector stage does not query again


def test_checkpoint_round_trip_and_errors(tmp_path, path, grid) -> None:
    net = GuidanceWeights(2, init_omega=0.3)
    save_weights(net, tmp_path / "w" / "weights.pt", {"class_names": ["a", "b"], "path": path.config()})
    guider = build_guider("learned", checkpoint=str(tmp_path / "w" / "weights.pt"))
    assert guider.config() == {"name": "learned", "checkpoint": str(tmp_path / "w" / "weights.pt")}
    again = build_guider(**guider.config())
    assert isinstance(again, LearnedGuider) and again.class_names == ["a", "b"]
    from_folder = build_guider("learned", checkpoint=str(tmp_path / "w"))
    torch.testing.assert_close(from_folder.table(path, grid), guider.table(path, grid))
    torch.testing.assert_close(guider.table(path, grid), torch.full((2, 10), 0.3, dtype=torch.float64))
    rows = guider.schedule_rows(path, grid)
    assert len(rows) == 10 and rows[0]["t"] == 1.0 and rows[0]["t_next"] == pytest.approx(0.9)
    assert rows[3]["gamma[b]"] == pytest.approx(1 + rows[3]["omega[b]"]) == pytest.approx(1.3)
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        build_guider("learned", checkpoint=str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(ValueError, match="checkpoint"):
        build_guider("learned", checkpoint=str(tmp_path / "junk.pt"))
    with pytest.raises(ValueError, match="checkpoint"):
        build_guider("learned")


def test_plan_without_labels(path, grid) -> None:
    """``guidelab schedule`` plans without labels: passes are planned conservatively, guiding fails clearly."""
    from guidelab.guiders.base import Predictions, StepContext

    guider = LearnedGuider.from_weights(GuidanceWeights(2))
    ctx = StepContext(0, 10, 1.0, float("inf"), grid, path)
    assert [p.name for p in guider.passes(ctx)] == ["cond", "uncond"]
    x = torch.zeros(2, 2)
    preds = Predictions({"cond": (x, "x0"), "uncond": (x, "x0")}, x, path.coefficients(torch.tensor(0.5)).expand_as(x))
    with pytest.raises(ValueError, match="cond"):
        guider.guide(preds, ctx)
