"""The exact Gaussian-mixture denoiser as it was before issue 17 (guidelab e405afc, src/guidelab/targets/
gaussian_mixture.py, verbatim below this docstring): the oracle the faster paths must equal to 1e-10 relative in
float64 (tests/test_targets_speed.py). Not imported by the library."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND
from guidelab.paths import NoisePath
from guidelab.targets.base import FusedTarget, as_float_array, init_classes, path_time

__all__ = ["GaussianMixture"]

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class _Params:
    """Parameters cast to one dtype and device; ``*_all`` are the K blocks laid side by side (k-major)."""

    means: Tensor  # (K, D) μ_k
    scale: Tensor  # (K, D, D) U_k diag(√s_k), for sampling
    u_all: Tensor  # (D, K·D) [U_1 … U_K]
    m_all: Tensor  # (K·D,) U_kᵀ μ_k
    s_all: Tensor  # (K·D,) eigenvalues s_k
    log_weights: Tensor  # (C + 1, K) log w_k^{(c)}, last row unconditional


def _sq_norm(z: Tensor, fast: bool) -> Tensor:
    """Σ_j z_j² over the last dimension; ``fast`` reads z once (vector_norm) but is not autograd-safe at 0."""
    return torch.linalg.vector_norm(z, dim=-1).square_() if fast else (z * z).sum(-1)


class GaussianMixture(FusedTarget):
    """A class-conditional mixture of full-covariance Gaussians ``p(x | c) = Σ_{k ∈ c} w_k N(x; μ_k, Σ_k)``.

    Args:
        means: (K, D) component means μ_k.
        covariances: (K, D, D) symmetric positive-definite covariances Σ_k.
        weights: (K,) non-negative component weights, normalized within each class (default equal).
        component_class: (K,) class index of every component (default: one class).
        class_names: one name per class (default ``"0"``, ``"1"``, ...).
        class_prior: (C,) non-negative class priors π_c, normalized (default uniform).
        name: identifier used in configs and reports.
        description: one line for listings.

    Attributes:
        max_chunk_bytes: bound on the working memory of one chunk of particles (default 200 MB).
        cache_chunk_bytes: on CPU, the size of a chunk's rotated residuals that keeps them in cache.
    """

    max_chunk_bytes: int = 200 * 2**20
    cache_chunk_bytes: int = 8 * 2**20

    def __init__(
        self,
        means: object,
        covariances: object,
        weights: object | None = None,
        component_class: object | None = None,
        class_names: list[str] | None = None,
        class_prior: object | None = None,
        *,
        name: str = "gaussian-mixture",
        description: str = "",
    ):
        mu = as_float_array(means, "means", 2)
        K, D = mu.shape
        if K < 1 or D < 1:
            raise ValueError(f"means: need at least one component and one dimension, got shape {mu.shape}")
        cov = as_float_array(covariances, "covariances", 3)
        if cov.shape != (K, D, D):
            raise ValueError(f"covariances: expected shape ({K}, {D}, {D}) to match means, got {cov.shape}")
        asym = np.abs(cov - cov.transpose(0, 2, 1)).max(axis=(1, 2))
        scale = np.abs(cov).max(axis=(1, 2))
        for k in np.flatnonzero(asym > 1e-9 * np.maximum(scale, 1e-300)):
            raise ValueError(f"covariances[{k}]: not symmetric (largest asymmetry {asym[k]:.3g})")
        cov = 0.5 * (cov + cov.transpose(0, 2, 1))
        s, U = np.linalg.eigh(cov)  # Σ_k = U_k diag(s_k) U_kᵀ, s ascending
        for k in np.flatnonzero(s[:, 0] <= 1e-12 * np.maximum(s[:, -1], 1e-300)):
            raise ValueError(f"covariances[{k}]: not positive definite (smallest eigenvalue {s[k, 0]:.3g})")
        init_classes(self, K, weights, component_class, class_names, class_prior)
        self.dim = D
        self.name = str(name)
        self.description = str(description)
        self.means = torch.from_numpy(mu)
        self.covariances = torch.from_numpy(cov)
        self.eigenvalues = torch.from_numpy(s)  # (K, D)
        self.eigenvectors = torch.from_numpy(U)  # (K, D, D), columns are eigenvectors
        self._config: dict | None = None
        self._cache: dict[tuple[torch.dtype, torch.device], _Params] = {}

    # --- parameters per dtype/device ----------------------------------------------------------------

    def _params(self, dtype: torch.dtype, device: torch.device) -> _Params:
        key = (dtype, torch.device(device))
        if key not in self._cache:
            K, D = self.num_components, self.dim
            U, s, mu = self.eigenvectors, self.eigenvalues, self.means
            params = _Params(
                means=mu,
                scale=U * s.sqrt()[:, None, :],
                u_all=U.permute(1, 0, 2).reshape(D, K * D),  # [d, k·D + j] = U_k[d, j]
                m_all=torch.einsum("kdj,kd->kj", U, mu).reshape(K * D),  # U_kᵀ μ_k
                s_all=s.reshape(K * D),
                log_weights=self.log_weight_table(),
            )
            self._cache[key] = _Params(*(p.to(dtype=dtype, device=device) for p in vars(params).values()))
        return self._cache[key]

    def _chunk_size(self, x_t: Tensor, arrays: int) -> int:
        """Particles per chunk: ``arrays`` (n, K·D) work arrays fit ``max_chunk_bytes`` (and cache on CPU)."""
        per_particle = arrays * self.num_components * self.dim * x_t.element_size()
        budget = self.max_chunk_bytes
        if x_t.device.type == "cpu":
            budget = min(budget, self.cache_chunk_bytes * arrays)
        return max(1, budget // per_particle)

    # --- the fused evaluation -----------------------------------------------------------------------

    def _evaluate(
        self, x_t: Tensor, t: Tensor | float, path: NoisePath, cond: Tensor | int | None, want_mean: bool
    ) -> tuple[Tensor | None, Tensor]:
        """Posterior mean (or None) and log p_t(x_t | c) (batch,), or per-component log p_t (batch, K) when
        ``cond`` is None and no mean is wanted. In place on the big work arrays unless autograd needs them."""
        self.check_input(x_t)
        n, D, K = x_t.shape[0], self.dim, self.num_components
        p = self._params(x_t.dtype, x_t.device)
        time = path_time(path, t, x_t)
        rows = None if cond is None and not want_mean else self.cond_rows(cond, n, x_t.device)
        inplace = not (torch.is_grad_enabled() and x_t.requires_grad)
        if time.shared:
            a, s2 = time.alpha0, time.sigma0**2
            var = a * a * p.s_all + s2  # (K·D,) α²s + σ²
            inv_std = var.rsqrt()
            w_fwd = p.u_all * inv_std  # (D, K·D): z = (U_kᵀx − α·U_kᵀμ_k)/√(α²s + σ²)
            b_fwd = -a * p.m_all * inv_std
            const = -0.5 * (torch.log(var).view(K, D).sum(-1) + D * _LOG_2PI)  # (K,)
            w_back = (p.u_all * (a * p.s_all * inv_std)).T  # (K·D, D): U_k diag(g_k·√var_k), g = αs/var
        else:
            w_back_s = (p.u_all * p.s_all).T  # (K·D, D): U_k diag(s_k)
        means, log_probs = [], []
        step = self._chunk_size(x_t, 1 if time.shared else 3)
        # Without autograd, work in place in one reused buffer: fresh multi-MB arrays per chunk cost page faults.
        buf = x_t.new_empty((min(step, n), K * D)) if inplace and time.shared else None
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            if time.shared:
                x = x_t[lo:hi]
                z = (
                    torch.addmm(b_fwd, x, w_fwd, out=buf[: hi - lo])
                    if buf is not None
                    else torch.addmm(b_fwd, x, w_fwd)
                )
                z = z.view(-1, K, D)  # (m, K, D) whitened rotated residuals
                log_p = torch.add(const, _sq_norm(z, inplace), alpha=-0.5)  # (m, K)
            else:
                alpha = time.alpha[lo:hi, None]
                z, log_p, inv_std = self._per_sample_chunk(x_t[lo:hi], alpha, time.sigma[lo:hi, None], p, inplace)
            if rows is None:
                log_probs.append(log_p)
                continue
            logits = p.log_weights[rows[lo:hi]] + log_p  # (m, K)
            r = torch.softmax(logits, dim=-1)  # responsibilities r_k^{(c)}
            # logsumexp = logits_k − log r_k at any k; at the argmax r_k ≥ 1/K, so the log is well conditioned.
            log_probs.append(logits.amax(-1) - torch.log(r.amax(-1)))
            if want_mean:
                if time.shared:
                    z = z.mul_(r[:, :, None]) if inplace else z * r[:, :, None]
                else:  # g·y = α·s·z/√var: fold α·r here and s into the back-projection
                    scale = (alpha * r)[:, :, None]
                    z = z.mul_(inv_std).mul_(scale) if inplace else z * inv_std * scale
                    w_back = w_back_s
                means.append(torch.addmm(r @ p.means, z.reshape(-1, K * D), w_back))  # Σ_k r_k(μ_k + U_k g_k y_k)
        empty = x_t.new_empty((0,) if rows is not None else (0, K))
        log_prob = torch.cat(log_probs) if log_probs else empty
        mean = (torch.cat(means) if means else torch.empty_like(x_t)) if want_mean else None
        return mean, log_prob

    def _per_sample_chunk(
        self, x: Tensor, alpha: Tensor, sigma: Tensor, p: _Params, inplace: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Whitened residuals z (m, K, D), log p_t (m, K) and 1/√var (m, K, D) for per-sample α, σ (m, 1)."""
        K, D = self.num_components, self.dim
        y = torch.addmm(-alpha * p.m_all, x, p.u_all)  # (m, K·D) y = U_kᵀ(x − α·μ_k)
        inv_std = torch.addcmul(sigma * sigma, alpha * alpha, p.s_all).rsqrt_()  # (m, K·D) 1/√(α²s + σ²)
        log_det = -2 * torch.log(inv_std).view(-1, K, D).sum(-1)  # (m, K) Σ_j log(α²s_j + σ²)
        z = (y.mul_(inv_std) if inplace else y * inv_std).view(-1, K, D)
        log_p = -0.5 * (_sq_norm(z, inplace) + log_det + D * _LOG_2PI)
        return z, log_p, inv_std.view(-1, K, D)

    # --- the Target interface -----------------------------------------------------------------------

    def sample(
        self,
        n: int,
        cond: int | str | None = None,
        generator: torch.Generator | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Exact samples (n, D) of p(x | c): k ~ w^{(c)}, then ``x = μ_k + U_k diag(√s_k) ξ``, ξ ~ N(0, I)."""
        k = self.draw_components(n, cond, generator)
        gen_device = k.device
        p = self._params(torch.float64, gen_device)
        xi = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=gen_device)
        x = torch.empty_like(xi)
        step = max(1, self.max_chunk_bytes // (8 * self.dim * self.dim))
        for lo in range(0, n, step):
            kk = k[lo : lo + step]
            x[lo : lo + step] = p.means[kk] + torch.einsum("nij,nj->ni", p.scale[kk], xi[lo : lo + step])
        return x.to(dtype=dtype, device=device if device is not None else gen_device)

    # --- moments and config -------------------------------------------------------------------------

    def mean(self, cond: int | str | None = None) -> Tensor:
        """E[x | c] (D,) in float64."""
        c = NULL_COND if cond is None else self.class_index(cond)
        w = torch.exp(self._params(torch.float64, torch.device("cpu")).log_weights[c])
        return w @ self.means

    def covariance(self, cond: int | str | None = None) -> Tensor:
        """Cov[x | c] = Σ_k w_k (Σ_k + μ_k μ_kᵀ) − m mᵀ, (D, D) in float64."""
        c = NULL_COND if cond is None else self.class_index(cond)
        w = torch.exp(self._params(torch.float64, torch.device("cpu")).log_weights[c])
        m = w @ self.means
        second = torch.einsum("k,kij->ij", w, self.covariances + self.means[:, :, None] * self.means[:, None, :])
        return second - m[:, None] * m[None, :]

    def to_spec(self) -> dict:
        """A ``TargetSpec``-shaped dict (kind gaussian-mixture) that rebuilds this mixture."""
        prior = self.class_prior.tolist()
        weights = torch.exp(self.log_component_weight).tolist()
        classes = []
        for c, name in enumerate(self.class_names):
            members = torch.nonzero(self.component_class == c).flatten().tolist()
            components = [
                {"weight": weights[k], "mean": self.means[k].tolist(), "cov": self.covariances[k].tolist()}
                for k in members
            ]
            classes.append({"name": name, "prior": prior[c], "components": components})
        return {
            "kind": "gaussian-mixture",
            "name": self.name,
            "description": self.description,
            "dim": self.dim,
            "classes": classes,
        }

    def config(self) -> dict:
        """The built-in name, or the full spec for a mixture built from parameters or a file."""
        return dict(self._config) if self._config else self.to_spec()
