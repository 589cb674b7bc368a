"""ScoreErrorDenoiser: bounded, smooth, seeded score errors, independent per condition, carried exactly into
every prediction space."""

from __future__ import annotations

import math

import pytest
import torch

from guidelab.paths import SPACES, convert, get_path
from guidelab.targets import ScoreErrorDenoiser, get_target


class SpaceDenoiser:
    """The exact denoiser of a target, re-expressed in another prediction space (for the round trip)."""

    def __init__(self, target, path, prediction: str):
        self.inner = target.denoiser(path)
        self.path, self.prediction = path, prediction

    def __call__(self, x_t, t, cond):
        c = self.path.coefficients(torch.as_tensor(t, dtype=torch.float64)).expand_as(x_t)
        return convert(self.inner(x_t, t, cond), "x0", self.prediction, x_t, c)


def points(n: int, dim: int, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_error_bounded_by_delta_everywhere():
    base = get_target("multimodal-2d").denoiser(get_path("rf"))
    for delta, freq in [(0.5, 1.0), (2.0, 5.0), (0.1, 0.2)]:
        wrapped = ScoreErrorDenoiser(base, delta, seed=3, frequency_scale=freq)
        for scale in (0.1, 3.0, 100.0):
            x = points(2000, 2, scale)
            cond = torch.arange(2000) % 3 - 1
            err = wrapped.error(x, torch.rand(2000, dtype=torch.float64), cond)
            norms = err.norm(dim=-1)
            assert norms.max() <= delta
            assert norms.mean() > 0.1 * delta  # not vanishingly small on typical points


def test_zero_delta_is_identity():
    target = get_target("chidambaram-gauss-1d")
    for space in SPACES:
        base = SpaceDenoiser(target, get_path("vp-cosine"), space)
        x, t = points(50, 1), torch.full((50,), 0.4, dtype=torch.float64)
        assert torch.equal(ScoreErrorDenoiser(base, 0.0)(x, t, None), base(x, t, None))


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("path_name", ["rf", "vp-linear", "ve"])
def test_added_error_is_exactly_the_score_difference(space, path_name):
    """Converting the wrapped and the base predictions to score space differs by exactly δ·h."""
    path = get_path(path_name)
    target = get_target("multimodal-2d")
    base = SpaceDenoiser(target, path, space)
    wrapped = ScoreErrorDenoiser(base, 0.7, seed=1)
    n = 40
    x, t = points(n, 2, 1.0), torch.linspace(0.05, 0.95, n, dtype=torch.float64)
    cond = torch.arange(n) % 3 - 1
    c = path.coefficients(t).expand_as(x)
    score_wrapped = convert(wrapped(x, t, cond), space, "score", x, c)
    score_base = convert(base(x, t, cond), space, "score", x, c)
    torch.testing.assert_close(score_wrapped - score_base, wrapped.error(x, t, cond), rtol=1e-7, atol=1e-9)


def test_conditions_get_independent_errors_and_seeds_repeat():
    base = get_target("multimodal-2d").denoiser(get_path("rf"))
    x, t = points(500, 2), torch.full((500,), 0.5, dtype=torch.float64)
    wrapped = ScoreErrorDenoiser(base, 1.0, seed=7)
    e_null, e_a, e_b = (wrapped.error(x, t, c) for c in (None, 0, 1))
    for u, v in ((e_null, e_a), (e_null, e_b), (e_a, e_b)):
        assert (u - v).norm(dim=-1).mean() > 0.2
        corr = torch.corrcoef(torch.stack([u.flatten(), v.flatten()]))[0, 1]
        assert corr.abs() < 0.3  # independent fields, not a shared one
    # A batch mixing conditions gives each row the error of its own condition.
    mixed = torch.arange(500) % 3 - 1
    e_mixed = wrapped.error(x, t, mixed)
    ref = torch.where((mixed == -1)[:, None], e_null, torch.where((mixed == 0)[:, None], e_a, e_b))
    torch.testing.assert_close(e_mixed, ref, rtol=1e-12, atol=1e-14)  # GEMM blocking may differ by batch
    # Same seed, same numbers (a fresh wrapper); another seed, other numbers.
    torch.testing.assert_close(ScoreErrorDenoiser(base, 1.0, seed=7).error(x, t, 0), e_a, rtol=0, atol=0)
    assert not torch.allclose(ScoreErrorDenoiser(base, 1.0, seed=8).error(x, t, 0), e_a)
    # The guided error γ·e_c + (1 − γ)·e_u grows with γ because e_c and e_u differ.
    guided = [(g * e_a + (1 - g) * e_null).norm(dim=-1).mean() for g in (1.0, 3.0, 9.0)]
    assert guided[0] < guided[1] < guided[2]


@pytest.mark.parametrize("freq", [0.5, 2.0])
def test_error_is_smooth(freq):
    """Finite-difference gradients are bounded by δ·ν·√(2F·D)·const and scale with the frequency ν."""
    base = get_target("multimodal-2d").denoiser(get_path("rf"))
    delta, F, D = 0.8, 16, 2
    wrapped = ScoreErrorDenoiser(base, delta, seed=2, num_features=F, frequency_scale=freq)
    x = points(400, D, 2.0)
    t = torch.full((400,), 0.3, dtype=torch.float64)
    h = 1e-6
    grads = []
    for e in torch.eye(D, dtype=torch.float64):
        grads.append((wrapped.error(x + h * e, t, 0) - wrapped.error(x - h * e, t, 0)) / (2 * h))
    jac_norm = torch.stack(grads, dim=-1).flatten(1).norm(dim=-1)  # Frobenius norm of the Jacobian
    assert jac_norm.max() <= 3 * delta * freq * math.sqrt(2 * F * D)
    assert jac_norm.mean() > 0.05 * delta * freq
    # Continuity in the other sense: a step much smaller than 1/ν changes the error by much less than δ.
    step = wrapped.error(x + 1e-3 / freq, t, 0) - wrapped.error(x, t, 0)
    assert step.norm(dim=-1).max() < 0.05 * delta


def test_time_dependence_and_shapes():
    base = get_target("chidambaram-gauss-1d").denoiser(get_path("ou"))
    x = points(30, 1)
    steady = ScoreErrorDenoiser(base, 0.5, seed=0)
    torch.testing.assert_close(steady.error(x, 0.2, 0), steady.error(x, 0.9, 0), rtol=0, atol=0)
    moving = ScoreErrorDenoiser(base, 0.5, seed=0, time_frequency=3.0)
    assert not torch.allclose(moving.error(x, 0.2, 0), moving.error(x, 0.9, 0))
    # Image-shaped inputs: the error has the input's shape and its per-sample norm is below δ.
    img = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    err = steady.error(img, torch.full((4,), 0.5, dtype=torch.float64), None)
    assert err.shape == img.shape
    assert (err.flatten(1).norm(dim=-1) <= 0.5).all()
    out = steady(x.float(), torch.full((30,), 0.5), None)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert "delta=0.5" in repr(steady)


def test_bad_parameters_name_the_field():
    base = get_target("chidambaram-gauss-1d").denoiser(get_path("rf"))
    with pytest.raises(ValueError, match="delta: must be a finite number >= 0"):
        ScoreErrorDenoiser(base, -1.0)
    with pytest.raises(ValueError, match="num_features: must be a positive integer"):
        ScoreErrorDenoiser(base, 1.0, num_features=0)
    with pytest.raises(ValueError, match="frequency_scale: must be > 0"):
        ScoreErrorDenoiser(base, 1.0, frequency_scale=0.0)
    with pytest.raises(ValueError, match="base: a Denoiser needs attribute 'path'"):
        ScoreErrorDenoiser(object(), 1.0)  # type: ignore[arg-type]


def test_x0_space_error_is_bounded_at_pure_noise_and_consistent():
    """error_space='x0': ‖Δx0̂‖ < δ at every t, α = 0 included; the ε change is −α·Δx0/σ."""
    import torch

    from guidelab.paths import get_path
    from guidelab.targets import ScoreErrorDenoiser, get_target

    target, path = get_target("multimodal-2d"), get_path("rf")
    exact = target.denoiser(path)
    noisy = ScoreErrorDenoiser(exact, 0.3, seed=7, error_space="x0")
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cond = torch.zeros(256, dtype=torch.long)
    for t in (1.0, 0.5, 1e-3):
        tt = torch.full((256,), t, dtype=torch.float64)
        d_x0 = noisy(x, tt, cond) - exact(x, tt, cond)
        assert torch.isfinite(d_x0).all()
        assert float(d_x0.norm(dim=1).max()) < 0.3
        assert float(d_x0.norm(dim=1).max()) > 0.01
