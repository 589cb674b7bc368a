"""The under-conditioned denoiser is the exact denoiser of the leaky conditional, itself a Gaussian mixture.

``q(x | c) = (1 − ℓ)p(x | c) + ℓp(x)`` with ``p(x | c) = Σ_{k∈c} w_k N_k`` and ``p(x) = Σ_k π_{c(k)} w_k N_k`` is the
mixture of the same components with weights ``q_k = (1 − ℓ)·1[c(k) = c]·w_k + ℓ·π_{c(k)}·w_k``. That mixture is
built explicitly, and its posterior mean is also written out in numpy per component, as the references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from scipy.stats import multivariate_normal

from guidelab.paths import get_path
from guidelab.recipe import ModelSpec, SampleConfig, config_error_message
from guidelab.targets import GaussianMixture, UnderConditionedDenoiser, get_target

TIMES = (0.05, 0.3, 0.6, 0.95)


def _three_classes() -> GaussianMixture:
    """3 classes with unequal priors in 3-D, five full-covariance components."""
    rng = np.random.default_rng(0)
    means = rng.normal(scale=1.5, size=(5, 3))
    q, _ = np.linalg.qr(rng.normal(size=(5, 3, 3)))
    covs = np.einsum("kij,kj,klj->kil", q, rng.uniform(0.1, 0.6, size=(5, 3)), q)
    return GaussianMixture(means, covs, [0.3, 0.7, 1.0, 0.5, 0.5], [0, 0, 1, 2, 2], class_prior=[0.5, 0.3, 0.2])


TARGETS = {"multimodal-2d": lambda: get_target("multimodal-2d"), "three-classes": _three_classes}


def _weights(target: GaussianMixture, cond: int, leak: float) -> np.ndarray:
    """q_k of the leaky conditional of class ``cond`` (−1: the marginal's π_{c(k)}·w_k)."""
    w = torch.exp(target.log_component_weight).double().numpy()  # within each class
    classes = target.component_class.numpy()
    marginal = target.class_prior.double().numpy()[classes] * w
    if cond == -1:
        return marginal
    return (1 - leak) * (classes == cond) * w + leak * marginal


def _mixture_of(target: GaussianMixture, weights: np.ndarray) -> GaussianMixture:
    return GaussianMixture(target.means.numpy(), target.covariances.numpy(), weights, [0] * len(weights))


def _numpy_posterior_mean(
    target: GaussianMixture, weights: np.ndarray, x: np.ndarray, alpha: np.ndarray, sigma: np.ndarray
) -> np.ndarray:
    """Σ_k r_k(μ_k + αΣ_k(α²Σ_k + σ²I)⁻¹(x − αμ_k)), r_k ∝ q_k N(x; αμ_k, α²Σ_k + σ²I), one row at a time."""
    means, covs = target.means.numpy(), target.covariances.numpy()
    eye = np.eye(means.shape[1])
    out = np.empty_like(x)
    for i, (row, a, s) in enumerate(zip(x, alpha, sigma, strict=True)):
        logs, posts = [], []
        for q_k, mu, cov in zip(weights, means, covs, strict=True):
            var = a * a * cov + s * s * eye
            logs.append(math.log(q_k) + multivariate_normal(a * mu, var).logpdf(row) if q_k > 0 else -np.inf)
            posts.append(mu + a * cov @ np.linalg.solve(var, row - a * mu))
        r = np.exp(np.array(logs) - np.max(logs))
        out[i] = (r / r.sum()) @ np.array(posts)
    return out


def _inputs(dim: int, n: int = 24, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_t = 2.0 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    return x_t, torch.randint(-1, 3, (n,), generator=g)


@pytest.mark.parametrize("leak", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("path_name", ["rf", "vp-cosine"])
@pytest.mark.parametrize("name", list(TARGETS))
def test_equals_the_exact_denoiser_of_the_reweighted_mixture(name, path_name, leak):
    target, path = TARGETS[name](), get_path(path_name)
    model = UnderConditionedDenoiser(target, path, leak)
    x_t, cond = _inputs(target.dim)
    cond = cond.clamp(max=target.num_classes - 1)
    references = {c: _mixture_of(target, _weights(target, c, leak)) for c in [-1, *range(target.num_classes)]}
    for t in [*TIMES, "per-sample"]:
        times = (
            torch.linspace(0.04, 0.96, x_t.shape[0], dtype=torch.float64)
            if t == "per-sample"
            else torch.tensor(t, dtype=torch.float64)
        )
        got = model(x_t, times, cond)
        expected = torch.empty_like(x_t)
        for c, mixture in references.items():
            rows = cond == c
            t_rows = times[rows] if times.ndim else times
            expected[rows] = mixture.posterior_mean(x_t[rows], t_rows, path, 0)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
        if t == 0.3 or t == "per-sample":  # numpy per component, independent of guidelab.targets
            coeff = path.coefficients(times.expand(x_t.shape[0]))
            for c in references:
                rows = (cond == c).numpy()
                by_hand = _numpy_posterior_mean(
                    target,
                    _weights(target, c, leak),
                    x_t.numpy()[rows],
                    coeff.alpha.numpy()[rows],
                    coeff.sigma.numpy()[rows],
                )
                np.testing.assert_allclose(got.numpy()[rows], by_hand, rtol=0, atol=1e-10)


@pytest.mark.parametrize("path_name", ["rf", "vp-cosine"])
@pytest.mark.parametrize("name", list(TARGETS))
def test_the_null_class_is_the_exact_unconditional_denoiser(name, path_name):
    target, path = TARGETS[name](), get_path(path_name)
    model = UnderConditionedDenoiser(target, path, 0.4)
    x_t, _ = _inputs(target.dim)
    marginal = _mixture_of(target, _weights(target, -1, 0.4))
    for t in TIMES:
        time = torch.tensor(t, dtype=torch.float64)
        exact = target.posterior_mean(x_t, time, path, None)
        for cond in (None, torch.full((x_t.shape[0],), -1)):
            got = model(x_t, time, cond)
            assert torch.equal(got, exact)  # not merely close: the unconditional pass is the target's own
            torch.testing.assert_close(got, marginal.posterior_mean(x_t, time, path, 0), rtol=0, atol=1e-10)


def test_the_model_spec_builds_it_with_its_leak():
    target, path = get_target("multimodal-2d"), get_path("rf")
    built = ModelSpec(kind="under-conditioned", leak=0.3).build(target, path)
    x_t, cond = _inputs(2)
    cond = cond.clamp(max=1)
    t = torch.tensor(0.5, dtype=torch.float64)
    assert torch.equal(built(x_t, t, cond), UnderConditionedDenoiser(target, path, 0.3)(x_t, t, cond))


@pytest.mark.parametrize("leak", [0, 1, 0.0, 1.0, -0.2, 1.5, float("nan"), float("inf"), "0.5", None])
def test_leak_outside_the_open_unit_interval_is_refused_naming_leak(leak):
    with pytest.raises(ValueError, match=r"^leak: ") as err:
        UnderConditionedDenoiser(get_target("multimodal-2d"), get_path("rf"), leak)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("leak", [0, 1, -0.2])
def test_a_config_with_leak_outside_the_interval_names_model_leak(leak):
    with pytest.raises(ValidationError) as err:
        SampleConfig(target="multimodal-2d", model={"kind": "under-conditioned", "leak": leak})
    lines = config_error_message(err.value).splitlines()
    assert len(lines) == 1 and lines[0].startswith("model.leak: "), lines
