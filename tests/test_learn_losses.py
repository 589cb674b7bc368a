"""Learn to Guide (arXiv 2510.00815) building blocks: the energy-distance loss against brute force, the
guided stochastic DDIM step against the exact DDPM posterior, time pairs, and the ω network."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from guidelab.learn.losses import energy_distance_loss, guided_ddim_step, sample_time_pairs
from guidelab.models.guidance_weights import GuidanceWeights, log_noise_level
from guidelab.paths import get_path


def _brute_force(xm: torch.Tensor, xt: torch.Tensor, beta: float, lam: float) -> torch.Tensor:
    out = []
    for b in range(xm.shape[0]):
        m, k = xm.shape[1], xt.shape[1]
        cross = sum(float(torch.linalg.norm(xm[b, j] - xt[b, i])) ** beta for j in range(m) for i in range(k)) / (m * k)
        pairs = [(j, i) for j, i in itertools.product(range(m), range(m)) if j != i]
        within = sum(float(torch.linalg.norm(xm[b, j] - xm[b, i])) ** beta for j, i in pairs) / len(pairs)
        out.append(cross - 0.5 * lam * within)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize(("beta", "lam"), [(1.75, 1.0), (1.0, 0.5), (2.0, 1.0)])
def test_energy_distance_loss_matches_brute_force(beta: float, lam: float) -> None:
    gen = torch.Generator().manual_seed(0)
    xm = torch.randn(3, 4, 2, generator=gen, dtype=torch.float64)
    xt = torch.randn(3, 5, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(
        energy_distance_loss(xm, xt, beta=beta, repulsion=lam, eps=0.0), _brute_force(xm, xt, beta, lam)
    )


def test_l2_variant_is_a_mean_squared_distance() -> None:
    gen = torch.Generator().manual_seed(1)
    xm = torch.randn(6, 4, 3, generator=gen, dtype=torch.float64)
    xt = torch.randn(6, 4, 3, generator=gen, dtype=torch.float64)
    expected = (xm[:, :, None] - xt[:, None]).pow(2).sum(-1).mean(dim=(1, 2))
    torch.testing.assert_close(energy_distance_loss(xm, xt, beta=2.0, repulsion=0.0), expected)


def test_energy_distance_loss_is_proper_in_expectation() -> None:
    """For 0 < β < 2, λ = 1 the expected loss is smallest when the model particles share the true law."""
    gen = torch.Generator().manual_seed(2)
    truth = torch.randn(20000, 4, 2, generator=gen, dtype=torch.float64)
    losses = {}
    for scale in (0.6, 1.0, 1.5):
        model = scale * torch.randn(20000, 4, 2, generator=gen, dtype=torch.float64)
        losses[scale] = float(energy_distance_loss(model, truth).mean())
    assert losses[1.0] < losses[0.6] - 0.02 and losses[1.0] < losses[1.5] - 0.02, losses


def test_energy_distance_loss_gradient_is_finite_at_coincident_points() -> None:
    x = torch.zeros(1, 3, 2, dtype=torch.float64, requires_grad=True)
    energy_distance_loss(x, torch.zeros(1, 3, 2, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_energy_distance_loss_rejects_bad_input() -> None:
    x = torch.zeros(2, 3, 2)
    with pytest.raises(ValueError, match="beta"):
        energy_distance_loss(x, x, beta=2.5)
    with pytest.raises(ValueError, match="repulsion"):
        energy_distance_loss(x, x, repulsion=-0.1)
    with pytest.raises(ValueError, match="m ≥ 2"):
        energy_distance_loss(torch.zeros(2, 1, 2), x)


@pytest.mark.parametrize("path_name", ["rf", "vp-cosine"])
def test_churn_one_step_with_the_oracle_is_the_exact_posterior(path_name: str) -> None:
    """With x0̂ = x0 and η = 1 the step is q(x_s | x_t, x0), so from x_t ~ N(α_t x0, σ_t²) it lands on
    x_s ~ N(α_s x0, σ_s²) exactly (Monte Carlo check of mean and variance)."""
    path = get_path(path_name)
    s, t = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.7, dtype=torch.float64)
    cs, ct = path.coefficients(s), path.coefficients(t)
    gen = torch.Generator().manual_seed(3)
    n = 200_000
    x0 = torch.full((n, 1), 1.7, dtype=torch.float64)
    x_t = ct.alpha * x0 + ct.sigma * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=gen, dtype=torch.float64)
    omega = torch.tensor(0.8, dtype=torch.float64)  # any ω: with c = u = x0 the guided prediction is x0
    x_s, x0_hat = guided_ddim_step(x_t, x0, x0, omega, ct.alpha, ct.sigma, cs.alpha, cs.sigma, noise, eta=1.0)
    torch.testing.assert_close(x0_hat, x0)
    assert abs(float(x_s.mean()) - float(cs.alpha) * 1.7) < 4 * float(cs.sigma) / math.sqrt(n)
    assert abs(float(x_s.var()) / float(cs.sigma) ** 2 - 1) < 0.02


def test_guided_step_matches_the_samplers_ddim_at_eta_zero_and_is_differentiable() -> None:
    gen = torch.Generator().manual_seed(4)
    x_t, c, u, noise = (torch.randn(5, 2, generator=gen, dtype=torch.float64) for _ in range(4))
    a_t, s_t, a_s, s_s = (torch.tensor(v, dtype=torch.float64) for v in (0.4, 0.9, 0.8, 0.6))
    omega = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    x_s, x0_hat = guided_ddim_step(x_t, c, u, omega, a_t, s_t, a_s, s_s, noise, eta=0.0)
    x0_ref = u + 1.5 * (c - u)
    torch.testing.assert_close(x0_hat.detach(), x0_ref)
    torch.testing.assert_close(x_s.detach(), a_s * x0_ref + s_s * (x_t - a_t * x0_ref) / s_t)
    (grad,) = torch.autograd.grad(x_s.sum(), omega)
    h = 1e-6
    plus = guided_ddim_step(x_t, c, u, omega.detach() + h, a_t, s_t, a_s, s_s, noise, 0.0)[0].sum()
    minus = guided_ddim_step(x_t, c, u, omega.detach() - h, a_t, s_t, a_s, s_s, noise, 0.0)[0].sum()
    assert abs(float(grad) - float(plus - minus) / (2 * h)) < 1e-6


def test_time_pairs_follow_the_rule() -> None:
    gen = torch.Generator().manual_seed(5)
    s, t = sample_time_pairs(50_000, gen, delta=0.1, zeta=0.05, s_min=0.02)
    assert float(s.min()) >= 0.02 and float(s.max()) <= 1 - 0.05 - 0.1 + 1e-12
    assert float((t - s).min()) >= 0.1 - 1e-12 and float(t.max()) <= 0.95 + 1e-12
    assert abs(float(s.mean()) - (0.02 + 0.85) / 2) < 0.01  # s uniform on [s_min, 1 − ζ − δ]
    with pytest.raises(ValueError, match="delta"):
        sample_time_pairs(4, gen, delta=0.6, zeta=0.5)


@pytest.mark.parametrize("output", ["softplus", "relu"])
def test_weights_are_nonnegative_start_at_init_and_zero_for_null(output: str) -> None:
    net = GuidanceWeights(3, output=output, init_omega=0.7)
    cond = torch.tensor([0, 1, 2, -1])
    log_s, log_t = torch.tensor([-3.0, 0.0, 1.0, 2.0]), torch.tensor([0.0, 1.0, 5.0, 12.0])
    torch.testing.assert_close(net(cond, log_s, log_t), torch.tensor([0.7, 0.7, 0.7, 0.0]))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 3.0, generator=torch.Generator().manual_seed(6))
    omega = net(cond, log_s, log_t)
    assert (omega >= 0).all() and omega[3] == 0
    with pytest.raises(ValueError, match="cond"):
        net(torch.tensor([3]), log_s[:1], log_t[:1])
    rebuilt = GuidanceWeights.from_config(net.config())
    rebuilt.load_state_dict(net.state_dict())
    torch.testing.assert_close(rebuilt(cond, log_s, log_t), omega)


def test_agnostic_weights_ignore_the_class_and_config_checks() -> None:
    net = GuidanceWeights(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(generator=torch.Generator().manual_seed(7))
    log_s, log_t = torch.full((3,), -1.0), torch.full((3,), 0.5)
    omega = net(torch.tensor([0, 5, 9]), log_s, log_t)
    assert torch.allclose(omega, omega[0].expand(3))
    with pytest.raises(ValueError, match="output"):
        GuidanceWeights(2, output="tanh")
    with pytest.raises(ValueError, match="init_omega"):
        GuidanceWeights(2, init_omega=0.0)


@pytest.mark.parametrize("path_name", ["rf", "vp-cosine", "ve", "ou"])
def test_log_noise_level_is_finite_over_the_whole_path(path_name: str) -> None:
    path = get_path(path_name)
    t = torch.tensor([0.0, 1e-4, 0.5, 0.999, 1.0], dtype=torch.float64)
    log_lam = log_noise_level(path, t)
    assert torch.isfinite(log_lam).all() and (log_lam[1:] >= log_lam[:-1]).all()
    torch.testing.assert_close(log_lam[2], torch.log(path.lam(t[2])))
