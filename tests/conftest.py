"""Small closed-form denoisers written independently of guidelab.targets, for sampler tests; the ``compiled`` fixture
(the compiled guider combines on and off)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND, as_cond
from guidelab.paths import NoisePath


class GaussianDenoiser:
    """Exact x0-denoiser of N(mean, std²·I) (every condition the same): x_t ~ N(α·mean, (α²std² + σ²)I),
    E[x0|x_t] = mean + α·std²/(α²std² + σ²)·(x_t − α·mean)."""

    prediction = "x0"

    def __init__(self, path: NoisePath, mean: float = 0.7, std: float = 0.5):
        self.path, self.mean, self.std = path, mean, std
        self.calls = 0
        self.batch_sizes: list[int] = []

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        self.calls += 1
        self.batch_sizes.append(x_t.shape[0])
        c = self.path.coefficients(t.double()).expand_as(x_t)
        a, s = c.alpha.to(x_t), c.sigma.to(x_t)
        return self.mean + a * self.std**2 / (a**2 * self.std**2 + s**2) * (x_t - a * self.mean)


class TwoGaussians1D:
    """Exact x0-denoiser of ½N(1, 1) (class 0) + ½N(−1, 1) (class 1), Chidambaram et al. §3 (b).

    Under x_t = α·x0 + σ·ε: x_t | ± ~ N(±α, α² + σ²), P(+ | x_t) = sigmoid(2αx/(α² + σ²)),
    E[x0 | x_t, ±] = ±1 + α/(α² + σ²)·(x_t ∓ α).
    """

    prediction = "x0"

    def __init__(self, path: NoisePath):
        self.path = path

    def __call__(self, x_t: Tensor, t: Tensor, cond: Tensor | None) -> Tensor:
        cond = as_cond(cond, x_t.shape[0])
        c = self.path.coefficients(t.double()).expand_as(x_t)
        a, s = c.alpha.to(x_t), c.sigma.to(x_t)
        v = a**2 + s**2
        plus = 1 + a / v * (x_t - a)
        minus = -1 + a / v * (x_t + a)
        p_plus = torch.sigmoid(2 * a * x_t / v)
        mixture = p_plus * plus + (1 - p_plus) * minus
        c1 = cond.reshape(-1, *([1] * (x_t.ndim - 1)))
        return torch.where(c1 == NULL_COND, mixture, torch.where(c1 == 0, plus, minus))


@pytest.fixture(params=["compiled", "torch"])
def compiled(request, monkeypatch):
    """The kernels on (they must load here: numba is a dev dependency) or off (``_kernels = False``)."""
    from guidelab.guiders import fused_jit

    if request.param == "compiled":
        assert fused_jit.available()
    else:
        monkeypatch.setattr(fused_jit.KERNELS, "_kernels", False)
    return request.param == "compiled"
