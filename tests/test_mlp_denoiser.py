"""The small conditional MLP denoiser and its training: protocol, preconditioning closed form, determinism,
learning progress against the exact denoiser, atomic checkpoints."""

from __future__ import annotations

import pytest
import torch

from guidelab.denoiser import Denoiser
from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.models.mlp import MLPDenoiser
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import get_target
from guidelab.train import load_denoiser, sample_data, save_denoiser, train_denoiser


@pytest.fixture(scope="module")
def gauss1d():
    return get_target("chidambaram-gauss-1d")


@pytest.mark.parametrize("path_name", ["rf", "vp-cosine", "ve"])
def test_untrained_network_is_the_gaussian_denoiser(path_name: str) -> None:
    """F_θ ≡ 0 at initialisation: x0̂ = α·σ_d²/(α²σ_d² + σ²)·x_t, the exact denoiser of N(0, σ_d²·I)."""
    path = get_path(path_name)
    model = MLPDenoiser(3, 2, path, sigma_data=0.7).double()
    x_t = torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.rand(64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t[:2] = torch.tensor([0.0, 1.0])
    c = path.coefficients(t)
    gain = (c.alpha * 0.49 / (c.alpha**2 * 0.49 + c.sigma**2))[:, None]
    out = model(x_t, t, torch.zeros(64, dtype=torch.long))
    torch.testing.assert_close(out, gain * x_t, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(out).all()


def test_protocol_shapes_and_labels() -> None:
    model = MLPDenoiser(2, 3, "rf")
    assert isinstance(model, Denoiser)
    assert model.prediction == "x0"
    x = torch.randn(5, 2)
    out = model(x, torch.full((5,), 0.5), torch.tensor([0, 1, 2, -1, 0]))
    assert out.shape == (5, 2) and out.dtype == torch.float32
    assert model(x, torch.tensor(0.3), None).shape == (5, 2)  # scalar t, unconditional
    with pytest.raises(ValueError, match="cond"):
        model(x, torch.full((5,), 0.5), torch.tensor([0, 1, 3, -1, 0]))
    with pytest.raises(ValueError, match="x_t"):
        model(torch.randn(5, 3), torch.full((5,), 0.5), None)
    with pytest.raises(ValueError, match="hidden"):
        MLPDenoiser(2, 3, "rf", hidden=0)


def test_training_is_deterministic_and_leaves_global_rng(gauss1d) -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = train_denoiser(gauss1d, "rf", steps=15, batch_size=64, hidden=32, seed=3).model
    assert torch.equal(torch.random.get_rng_state(), before)
    b = train_denoiser(gauss1d, "rf", steps=15, batch_size=64, hidden=32, seed=3).model
    c = train_denoiser(gauss1d, "rf", steps=15, batch_size=64, hidden=32, seed=4).model
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_training_approaches_the_exact_denoiser(gauss1d) -> None:
    """Error of x0̂ against the exact posterior mean E[x0 | x_t, c] falls with training steps (fixed eval set)."""
    path = get_path("rf")
    exact = gauss1d.denoiser(path)
    gen = torch.Generator().manual_seed(7)
    x0, labels = sample_data(gauss1d, 4000, gen)
    t = 0.05 + 0.9 * torch.rand(4000, generator=gen, dtype=torch.float64)
    c = path.coefficients(t)
    x_t = (c.alpha[:, None] * x0 + c.sigma[:, None] * torch.randn(x0.shape, generator=gen, dtype=torch.float64)).float()
    labels = torch.where(torch.arange(4000) % 3 == 0, -1, labels)  # conditional and unconditional
    truth = exact(x_t.double(), t, labels).float()

    def error(steps: int) -> float:
        model = train_denoiser(gauss1d, path, steps=steps, batch_size=128, hidden=64, seed=0).model
        return float((model(x_t, t.float(), labels) - truth).pow(2).mean())

    e0, e1 = error(0), error(300)
    assert e1 < 0.25 * e0, (e0, e1)


def test_save_load_round_trip(tmp_path, gauss1d) -> None:
    result = train_denoiser(
        gauss1d, "vp-cosine", steps=5, batch_size=32, hidden=16, depth=1, seed=0, out=tmp_path / "m.pt"
    )
    loaded = load_denoiser(tmp_path / "m.pt")
    assert loaded.config() == result.model.config()
    assert loaded.path.name == "vp-cosine"
    x = torch.randn(8, 1)
    t = torch.rand(8)
    cond = torch.tensor([0, 1] * 4)
    assert torch.equal(loaded(x, t, cond), result.model(x, t, cond))
    assert (tmp_path / "m.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.pt"]  # no temporary files left
    save_denoiser(loaded, tmp_path / "again.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="checkpoint"):
        load_denoiser(tmp_path / "bad.pt")
    with pytest.raises(FileNotFoundError, match="checkpoint"):
        load_denoiser(tmp_path / "missing.pt")


def test_samples_under_cfg(gauss1d) -> None:
    model = train_denoiser(gauss1d, "rf", steps=50, batch_size=128, hidden=32, seed=0).model
    path = model.path
    result = sample(
        model,
        build_guider("cfg", scale=2.0),
        grid=make_grid("uniform", 8, path),
        n=256,
        shape=(1,),
        cond=0,
        solver="ddim",
        seed=0,
    )
    assert result.nfe == 16 and result.num_diverged == 0
    assert torch.isfinite(result.x).all()
    assert float(result.x.mean()) > 0.5  # class 0 is N(1, 1), guided outward
