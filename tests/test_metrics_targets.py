"""Small closed-form targets for the metric and diagnostic tests, written independently of guidelab.targets'
families, and the checks that they are what they claim.

``UniformBoxes``: each component uniform on an axis-aligned box; under ``x_t = α·x0 + σ·ε`` one axis of a
component on [a, b] has ``p_t(x) = [Φ((x − αa)/σ) − Φ((x − αb)/σ)]/(α(b − a))`` (docs/methods.md §3).
"""

from __future__ import annotations

import math

import torch
from scipy import integrate, stats
from torch import Tensor

from guidelab.paths import get_path
from guidelab.targets.base import Target, init_classes, path_time


def log_diff_ndtr(u: Tensor, v: Tensor) -> Tensor:
    """log(Φ(u) − Φ(v)) for u ≥ v, using the mirrored form when both are positive."""
    flip = v > 0
    hi = torch.where(flip, -v, u)
    lo = torch.where(flip, -u, v)
    a, b = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return a + torch.log1p(-torch.exp(b - a).clamp(max=1.0))


class UniformBoxes(Target):
    """Uniform distributions on boxes ``[lows_k, highs_k]`` (K, D), one component each."""

    def __init__(self, lows, highs, component_class, class_names=None):
        self.lows = torch.as_tensor(lows, dtype=torch.float64)
        self.highs = torch.as_tensor(highs, dtype=torch.float64)
        self.dim = self.lows.shape[1]
        init_classes(self, self.lows.shape[0], None, component_class, class_names, None)
        self.name = "uniform-boxes"

    def _members(self, cond) -> Tensor:
        if cond is None:
            return torch.arange(self.num_components)
        return torch.nonzero(self.component_class == int(cond)).flatten()

    def sample(self, n, cond=None, generator=None):
        probs = torch.exp(self.log_mixture_weights(cond, 1)[0])
        k = torch.multinomial(probs, n, replacement=True, generator=generator)
        u = torch.rand(n, self.dim, generator=generator, dtype=torch.float64)
        return self.lows[k] + u * (self.highs[k] - self.lows[k])

    def component_log_prob_t(self, x_t, t, path):
        x = x_t.double()[:, None, :]  # (n, 1, D)
        time = path_time(path, t, x_t)
        a, s = time.alpha.double()[:, None, None], time.sigma.double()[:, None, None]
        lo, hi = self.lows[None], self.highs[None]
        if bool((s == 0).all()):
            inside = ((x >= lo) & (x <= hi)).all(dim=-1)
            log_vol = torch.log(hi - lo).sum(dim=-1)
            return torch.where(inside, -log_vol, torch.full_like(log_vol, -math.inf))
        per_axis = log_diff_ndtr((x - a * lo) / s, (x - a * hi) / s) - torch.log(a * (hi - lo))
        return per_axis.sum(dim=-1)

    def posterior_mean(self, x_t, t, path, cond):
        raise NotImplementedError("not needed by the metric tests")

    def support_contains(self, x, cond=None):
        x = x.double()[:, None, :]
        members = self._members(cond)
        inside = ((x >= self.lows[members][None]) & (x <= self.highs[members][None])).all(dim=-1)
        return inside.any(dim=1)

    def distance_to_support(self, x, cond=None):
        x = x.double()[:, None, :]
        members = self._members(cond)
        lo, hi = self.lows[members][None], self.highs[members][None]
        gap = torch.clamp(lo - x, min=0) + torch.clamp(x - hi, min=0)
        return torch.linalg.vector_norm(gap, dim=-1).min(dim=1).values


def chidambaram_boxes_1d(alpha1: float = 0.5, alpha2: float = 1.5) -> UniformBoxes:
    """p⁺ uniform on [α1, α2] (class 0), p⁻ on [−α2, −α1] (class 1) (arXiv 2409.13074 §3 (a))."""
    return UniformBoxes([[alpha1], [-alpha2]], [[alpha2], [-alpha1]], [0, 1], ["+", "-"])


def test_box_density_integrates_to_one_and_tends_to_uniform():
    boxes = chidambaram_boxes_1d()
    path = get_path("rf")
    for t in (0.0, 1e-3, 0.3):

        def density(x, t=t):
            xt = torch.tensor([[x]], dtype=torch.float64)
            return float(torch.exp(boxes.log_prob_t(xt, torch.tensor([t]), path, 0)))

        mass = integrate.quad(density, -4, 4, points=[0.5, 1.5], limit=200)[0]
        assert abs(mass - 1) < 1e-6
    x = torch.tensor([[0.7], [1.49], [1.6], [-1.0]], dtype=torch.float64)
    small = boxes.log_prob_t(x, torch.tensor([1e-5]), path, 0)
    exact = boxes.log_prob_t(x, torch.tensor([0.0]), path, 0)
    assert torch.allclose(small[:2], exact[:2], atol=1e-3)
    assert torch.isinf(exact[2:]).all()
    assert torch.allclose(exact[:2], torch.full((2,), -math.log(1.0), dtype=torch.float64))


def test_box_support_and_distance():
    boxes = chidambaram_boxes_1d()
    x = torch.tensor([[0.7], [1.6], [-1.0], [0.0]], dtype=torch.float64)
    assert boxes.support_contains(x, 0).tolist() == [True, False, False, False]
    assert boxes.support_contains(x, None).tolist() == [True, False, True, False]
    assert torch.allclose(boxes.distance_to_support(x, 0), torch.tensor([0.0, 0.1, 1.5, 0.5], dtype=torch.float64))


def test_log_diff_ndtr_matches_direct_difference():
    u = torch.tensor([0.5, 3.0, 9.0, -2.0], dtype=torch.float64)
    v = torch.tensor([-0.5, 2.0, 8.0, -3.0], dtype=torch.float64)
    direct = torch.log(torch.special.ndtr(u) - torch.special.ndtr(v))
    assert torch.allclose(log_diff_ndtr(u, v)[:2], direct[:2], rtol=1e-12)
    assert torch.allclose(log_diff_ndtr(u, v)[3], direct[3], rtol=1e-12)
    # far in the tail the direct difference underflows; the mirrored form stays exact
    ref = math.log(stats.norm.cdf(-8.0) - stats.norm.cdf(-9.0))
    assert abs(float(log_diff_ndtr(u, v)[2]) - ref) < 1e-9
