"""Class-conditional Gaussian mixtures with full covariances: exact noisy densities and denoisers on any
path.

Under ``x_t = α·x0 + σ·ε`` a component ``N(μ_k, Σ_k)`` becomes ``x_t | k ~ N(α·μ_k, α²Σ_k + σ²I)`` and

    E[x0 | x_t, k] = μ_k + α·Σ_k (α²Σ_k + σ²I)⁻¹ (x_t − α·μ_k),
    E[x0 | x_t, c] = Σ_k r_k^{(c)} E[x0 | x_t, k],   r^{(c)} = softmax_k(log w_k^{(c)} + log p_t(x_t | k)).

With ``Σ_k = U_k diag(s_k) U_kᵀ`` everything is diagonal in the rotated residual ``y_k = U_kᵀ(x_t − α·μ_k)``:
``α²s + σ²`` are the variances and ``g = α·s/(α²s + σ²)`` the gains, so a batch is two GEMMs: all K
rotations at once ``x_t @ [U_1 … U_K]`` (D × K·D) and the back-projection ``Σ_k r_k U_k (g_k ⊙ y_k)`` as
(n, K·D) @ (K·D, D). See e.g. Karras et al. 2024 (arXiv 2406.02507) ``toy_example.py`` for the same exact
mixture denoiser written per component.

Near the data most responsibilities are exactly 0 (their weights flush below float's smallest normal), so the
back-projection runs over the nonzero ones only where they are few: one (P_k, D) @ (D, D) product per component k
over its P_k particles instead of the (n, K·D) GEMM, which halves the work at D = 64, K = 100.

**Singular covariances** (``allow_singular=True``): data on a low-dimensional affine subspace, e.g. rank r < D
with ``Σ_k = A_k A_kᵀ``, A_k (D, r). Every formula above holds for σ > 0 with the zero eigenvalues as they are: the
noisy covariance ``α²Σ_k + σ²I`` stays invertible and the gain is 0 off the support, so the denoiser projects onto
the component's subspace, ``E[x0 | x_t, k] = μ_k + α·A_k(α²A_kᵀA_k + σ²I_r)⁻¹A_kᵀ(x_t − α·μ_k)``. At σ = 0 the
density is degenerate (a point mass across the support's normal directions), so any evaluation there is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from guidelab.denoiser import NULL_COND
from guidelab.paths import NoisePath
from guidelab.targets import mixture_jit
from guidelab.targets._mixture_constants import _LOG_2PI
from guidelab.targets.base import FusedTarget, as_float_array, compiling, init_classes, path_time

__all__ = ["GaussianMixture"]


@dataclass(frozen=True)
class _Params:
    """Parameters cast to one dtype and device; ``*_all`` are the K blocks laid side by side (k-major)."""

    means: Tensor  # (K, D) μ_k
    scale: Tensor  # (K, D, D) U_k diag(√s_k), for sampling
    u_all: Tensor  # (D, K·D) [U_1 … U_K]
    m_all: Tensor  # (K·D,) U_kᵀ μ_k
    s_all: Tensor  # (K·D,) eigenvalues s_k
    log_weights: Tensor  # (C + 1, K) log w_k^{(c)}, last row unconditional


def _exp_flushed(d: Tensor, inplace: bool) -> Tensor:
    """e^d for d ≤ 0 with results below twice the smallest normal number flushed to 0 (−∞ gives 0).

    The weights e^{l_k − max l} of far components would otherwise be subnormal, which makes ``exp`` about 10× slower
    on x86 (a microcode assist per element): 14 ms of a 460 ms call at D = 64, K = 100, 2·10⁴ particles. Such a
    weight is below 2·10⁻³⁸ (float32) against a sum of at least 1, far below rounding."""
    tiny = torch.finfo(d.dtype).tiny
    floor = math.log(2 * tiny)
    d = d.clamp_(min=floor) if inplace else d.clamp(min=floor)  # e^{floor} ≈ 2·tiny: normal, fast
    r = d.exp_() if inplace else torch.exp(d)
    return F.threshold_(r, 4 * tiny, 0.0) if inplace else F.threshold(r, 4 * tiny, 0.0)


def _sq_norm(z: Tensor, fast: bool) -> Tensor:
    """Σ_j z_j² over the last dimension; ``fast`` reads z once (vector_norm) but is not autograd-safe at 0."""
    return torch.linalg.vector_norm(z, dim=-1).square_() if fast else (z * z).sum(-1)


class _SparseBackProjection:
    """The back-projection ``Σ_k r_k U_k diag(g_k) y_k`` over the nonzero responsibilities only.

    Far from the other components a particle's responsibilities are exactly 0 but for a few (``_exp_flushed`` flushes
    e^{l_k − max l} below 4·tiny to 0): then the dense (m, K·D) @ (K·D, D) GEMM spends all but a few of its K blocks
    multiplying zeros. Here the nonzero pairs (particle i, component k) of each chunk are gathered, their rows
    ``r_ik·z_ik`` (D,) kept, and at the end (or when they outgrow ``budget_rows``) grouped by component, multiplied
    by the component's (D, D) block of the back-projection, and added to the particles' means. A term whose weight
    is exactly 0 adds exactly 0, so the result equals the dense GEMM's up to the order of the sum (rounding).

    A chunk whose pairs exceed ``max_density`` of its m·K entries returns False from :meth:`add`: the dense GEMM is
    cheaper there (mixed components, e.g. at large σ).
    """

    def __init__(self, out: Tensor, w_back: Tensor, components: int, budget_rows: int, max_density: float):
        self.out, self.w_back = out, w_back  # (n, D) means so far, (K·D, D)
        self.max_density = max_density
        self.components, self.dim = components, out.shape[1]
        self.budget_rows = max(1, budget_rows)
        self._rows: list[Tensor] = []
        self._comps: list[Tensor] = []
        self._vals: list[Tensor] = []
        self._count = 0

    def add(self, lo: int, z: Tensor, r: Tensor, scale: Tensor | None = None) -> bool:
        """Keep the pairs of one chunk: z (m, K, D) residuals, r (m, K) weights of particles lo … lo + m − 1; ``scale``
        (m, K, D), if given, multiplies z elementwise. False (nothing kept) when the chunk is too dense."""
        pairs = torch.nonzero(r)  # (P, 2), by particle then component
        if pairs.shape[0] > self.max_density * r.numel():
            return False
        i, k = pairs.unbind(1)
        flat = i * self.components + k
        # index_select copies whole rows (advanced indexing goes element by element: 3–5× slower here)
        vals = z.reshape(-1, self.dim).index_select(0, flat)  # a copy: safe to scale in place
        if scale is not None:
            vals.mul_(scale.reshape(-1, self.dim).index_select(0, flat))
        self._vals.append(vals.mul_(r.reshape(-1).index_select(0, flat).unsqueeze(1)))
        self._rows.append(i.add_(lo))
        self._comps.append(k)
        self._count += pairs.shape[0]
        if self._count >= self.budget_rows:
            self.flush()
        return True

    def flush(self) -> None:
        """Add the kept pairs' back-projections to ``out``, one (P_k, D) @ (D, D) product per component."""
        if not self._vals:
            return
        comps = torch.cat(self._comps)
        order = torch.argsort(comps, stable=True)
        rows, vals = torch.cat(self._rows)[order], torch.cat(self._vals).index_select(0, order)
        self._rows, self._comps, self._vals, self._count = [], [], [], 0
        D, start = self.dim, 0
        back = torch.empty_like(vals)
        for k, count in enumerate(torch.bincount(comps, minlength=self.components).tolist()):
            if count:
                torch.mm(vals[start : start + count], self.w_back[k * D : (k + 1) * D], out=back[start : start + count])
                start += count
        self.out.index_add_(0, rows, back)


class GaussianMixture(FusedTarget):
    """A class-conditional mixture of full-covariance Gaussians ``p(x | c) = Σ_{k ∈ c} w_k N(x; μ_k, Σ_k)``.

    Args:
        means: (K, D) component means μ_k.
        covariances: (K, D, D) symmetric positive-definite covariances Σ_k (positive semi-definite with
            ``allow_singular``).
        weights: (K,) non-negative component weights, normalized within each class (default equal).
        component_class: (K,) class index of every component (default: one class).
        class_names: one name per class (default ``"0"``, ``"1"``, ...).
        class_prior: (C,) non-negative class priors π_c, normalized (default uniform).
        name: identifier used in configs and reports.
        description: one line for listings.
        allow_singular: accept rank-deficient covariances (eigenvalues ≥ −1e-9·max, clamped to 0): data on a
            subspace; noisy densities and denoisers are then defined for σ > 0 only (ValueError naming ``t``).

    Attributes:
        max_chunk_bytes: bound on the working memory of one chunk of particles (default 200 MB).
        cache_chunk_bytes: on CPU, the size of a chunk's rotated residuals that keeps them in cache.
        sparse_max_density: the largest fraction of nonzero responsibilities in a chunk for which the
            back-projection runs over the nonzero ones only (default 1/6; 0 turns it off).
    """

    max_chunk_bytes: int = 200 * 2**20
    cache_chunk_bytes: int = 8 * 2**20
    compile_max_work: int = 64  # compiled 1.3–1.7× faster at K·D ≤ 64, slower at K·D ≥ 256 (base.py)
    # The compiled per-particle loop (mixture_jit) where K·D² ≤ jit_max_work and D ≤ jit_max_dim: measured 1.4–4.4×
    # the torch path there on 1 thread (D = 1–4, K = 2–256); at D = 8 it gained only 1.1–1.6× on 1 thread and lost
    # on 2 (0.6–0.7×), at D = 16 it lost on both (its D² multiply-adds per component are scalar against a GEMM's).
    jit_max_work: int = 256
    jit_max_dim: int = 4
    # The back-projection over the nonzero responsibilities only where a chunk has at most this fraction of them.
    # D = 64, K = 100, 2·10⁴ particles, 2 threads: 143 ms at 2.3% nonzero, 221 ms at 11.6%, 440 ms at 39.7%, against
    # 275 ms for the dense GEMM at all three: they meet near 19%.
    sparse_max_density: float = 1 / 6

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
        allow_singular: bool = False,
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
        top = np.maximum(s[:, -1], 1e-300)
        if allow_singular:
            for k in np.flatnonzero(s[:, 0] < -1e-9 * top):
                raise ValueError(f"covariances[{k}]: not positive semi-definite (smallest eigenvalue {s[k, 0]:.3g})")
            s = np.where(s <= 1e-12 * top[:, None], 0.0, s)  # round-off of the null space to exact zeros
            cov = np.einsum("kij,kj,klj->kil", U, s, U)
        else:
            for k in np.flatnonzero(s[:, 0] <= 1e-12 * top):
                raise ValueError(f"covariances[{k}]: not positive definite (smallest eigenvalue {s[k, 0]:.3g})")
        self.singular = bool((s[:, 0] == 0).any())
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
        self._jit_params: dict[str, np.ndarray] | None = None

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
        """Particles per chunk: ``arrays`` (n, K·D) work arrays fit ``max_chunk_bytes`` (and cache on CPU).

        On the CPU the cache budget grows with the square of torch's thread count: every operation on a chunk ends
        in a barrier of all threads, so each thread needs more work per chunk to amortize it (D = 64, K = 100 at
        2·10⁴ particles on 2 threads: 46–53% of a matmul's rate with 32 MB against 17–46% with 8 MB; 8 MB stays
        best on one thread)."""
        per_particle = arrays * self.num_components * self.dim * x_t.element_size()
        budget = self.max_chunk_bytes
        if x_t.device.type == "cpu":
            threads = 1 if compiling() else max(1, torch.get_num_threads())  # a traced graph takes no int from torch
            budget = min(budget, self.cache_chunk_bytes * arrays * threads * threads)
        return max(1, budget // per_particle)

    # --- the fused evaluation -----------------------------------------------------------------------

    def _evaluate(
        self, x_t: Tensor, t: Tensor | float, path: NoisePath, cond: Tensor | int | None, want_mean: bool
    ) -> tuple[Tensor | None, Tensor]:
        """Posterior mean (or None) and log p_t(x_t | c) (batch,), or per-component log p_t (batch, K) when
        ``cond`` is None and no mean is wanted. In place on the big work arrays unless autograd needs them."""
        self.check_input(x_t)
        n, D, K = x_t.shape[0], self.dim, self.num_components
        if self.uses_compiled_kernels(x_t, t):
            return self._evaluate_compiled(x_t, t, path, cond, want_mean)
        p = self._params(x_t.dtype, x_t.device)
        time = path_time(path, t, x_t)
        if self.singular and (time.sigma0 == 0 if time.shared else bool((time.sigma == 0).any())):
            raise ValueError("t: σ = 0 with a singular covariance: the density is degenerate there; evaluate at σ > 0")
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
            # The bias as one more input row against a column of ones in x: one GEMM, no pass to copy the bias in.
            w_fwd = torch.cat([w_fwd, b_fwd[None, :]])  # (D + 1, K·D)
        else:
            w_back_s = (p.u_all * p.s_all).T  # (K·D, D): U_k diag(s_k)
        means, log_probs = [], []
        step = self._chunk_size(x_t, 1 if time.shared else 3)
        # Without autograd, results go straight into the outputs (no concatenation at the end).
        direct = inplace and rows is not None
        mean_out = x_t.new_empty((n, D)) if direct and want_mean else None
        log_prob_out = x_t.new_empty((n, 1)) if direct else None
        # Without autograd, work in place in one reused buffer: fresh multi-MB arrays per chunk cost page faults.
        buf = x_t.new_empty((min(step, n), K * D)) if inplace and time.shared else None
        x_one = x_t.new_ones((min(step, n), D + 1)) if time.shared else None  # [x, 1] per chunk
        sparse = None
        # On the CPU only: on a GPU the dense GEMM is cheap, nonzero() waits for the device, and index_add_ adds a
        # particle's terms in a varying order (atomics). A traced graph keeps it too (data-dependent shapes).
        if direct and want_mean and self.sparse_max_density > 0 and x_t.device.type == "cpu" and not compiling():
            # a pair: its row and 2 indices, copied ~4 times over in the flush
            budget_rows = self.max_chunk_bytes // 16 // (D * x_t.element_size() + 16)
            w = w_back if time.shared else w_back_s
            sparse = _SparseBackProjection(mean_out, w, K, budget_rows, self.sparse_max_density)
        for lo in range(0, n, step):
            hi = min(lo + step, n)
            if time.shared:
                x = x_one[: hi - lo]
                if x_t.requires_grad:
                    x = torch.cat([x_t[lo:hi], x[:, D:]], dim=1)
                else:
                    x[:, :D] = x_t[lo:hi]
                z = torch.mm(x, w_fwd, out=buf[: hi - lo]) if buf is not None else torch.mm(x, w_fwd)
                z = z.view(-1, K, D)  # (m, K, D) whitened rotated residuals
                log_p = torch.add(const, _sq_norm(z, inplace), alpha=-0.5)  # (m, K)
            else:
                alpha = time.alpha[lo:hi, None]
                z, log_p, inv_std = self._per_sample_chunk(x_t[lo:hi], alpha, time.sigma[lo:hi, None], p, inplace)
            if rows is None:
                log_probs.append(log_p)
                continue
            log_w = p.log_weights[rows[lo:hi]]  # (m, K) log w_k^{(c)}, per chunk: (n, K) would add memory
            logits = log_p.add_(log_w) if inplace else log_w + log_p  # (m, K)
            # softmax written out (torch's is slow on CPU over a few components): e^{l_k − max l} sums to at least 1
            # (finite: every class has a component), and logsumexp = max l + log of that sum.
            top = logits.amax(-1, keepdim=True)
            r = _exp_flushed(logits.sub_(top) if inplace else logits - top, inplace)
            total = r.sum(-1, keepdim=True)
            r = r.div_(total) if inplace else r / total  # responsibilities r_k^{(c)}
            if direct:
                torch.log(total, out=log_prob_out[lo:hi]).add_(top)
            else:
                log_probs.append((top + torch.log(total)).squeeze(-1))
            if want_mean:
                if direct:  # Σ_k r_k(μ_k + U_k g_k y_k): the nonzero terms only where they are few
                    torch.mm(r, p.means, out=mean_out[lo:hi])
                    if sparse is not None and (
                        sparse.add(lo, z, r) if time.shared else sparse.add(lo, z, alpha * r, inv_std)
                    ):
                        continue
                if time.shared:
                    z = z.mul_(r[:, :, None]) if inplace else z * r[:, :, None]
                else:  # g·y = α·s·z/√var: fold α·r here and s into the back-projection
                    scale = (alpha * r)[:, :, None]
                    z = z.mul_(inv_std).mul_(scale) if inplace else z * inv_std * scale
                    w_back = w_back_s
                if direct:
                    mean_out[lo:hi].addmm_(z.reshape(-1, K * D), w_back)
                else:
                    means.append(torch.addmm(r @ p.means, z.reshape(-1, K * D), w_back))
        if direct:
            if sparse is not None:
                sparse.flush()
            return mean_out, log_prob_out.view(n)
        empty = x_t.new_empty((0,) if rows is not None else (0, K))
        log_prob = torch.cat(log_probs) if log_probs else empty
        mean = (torch.cat(means) if means else torch.empty_like(x_t)) if want_mean else None
        return mean, log_prob

    def uses_compiled_kernels(self, x_t: Tensor, t: Tensor | float | None = None) -> bool:
        """Whether a call on ``x_t`` takes the compiled per-particle loop (:mod:`guidelab.targets.mixture_jit`): on the
        CPU, float32 or float64 (computed in float64 either way, rounded once to float32 at the end), no autograd
        through ``x_t`` or ``t``, not traced by ``torch.compile``, at most :attr:`jit_max_work` = K·D² and
        :attr:`jit_max_dim` = D (above them the two GEMMs of the torch path are as fast or faster), numba available.
        The decision depends on the install, ``GUIDELAB_COMPILE`` and the inputs only (never on timing), so a seed
        gives the same numbers in every process."""
        return (
            x_t.device.type == "cpu"
            and x_t.dtype in (torch.float32, torch.float64)
            and x_t.shape[0] > 0
            and self.dim <= self.jit_max_dim
            and self.num_components * self.dim * self.dim <= self.jit_max_work
            and not (torch.is_grad_enabled() and (x_t.requires_grad or (isinstance(t, Tensor) and t.requires_grad)))
            and not compiling()
            and mixture_jit.available()
        )

    def _evaluate_compiled(
        self, x_t: Tensor, t: Tensor | float, path: NoisePath, cond: Tensor | int | None, want_mean: bool
    ) -> tuple[Tensor | None, Tensor]:
        """:meth:`_evaluate` by the compiled loop, in float64 (float32 inputs read as they are, results written in
        float32 once at the end)."""
        n, D, K = x_t.shape[0], self.dim, self.num_components
        x = x_t.detach().contiguous().numpy()
        time = path_time(path, t, x_t, dtype=torch.float64, full=False)
        if self.singular and (time.sigma0 == 0 if time.shared else bool((time.sigma == 0).any())):
            raise ValueError("t: σ = 0 with a singular covariance: the density is degenerate there; evaluate at σ > 0")
        q = self._jit_arrays()
        mode, labels = mixture_jit.mode_and_labels(self, cond, n, want_mean)
        out_mean = np.empty((n if want_mean else 0, D), dtype=x.dtype)
        out_lp = np.empty((n, K if mode == mixture_jit.COMPONENTS else 1), dtype=x.dtype)
        kernels = mixture_jit.KERNELS.get()
        if time.shared:
            a, s2 = time.alpha0, time.sigma0**2
            var = a * a * q["s_all"] + s2
            inv_std = 1.0 / np.sqrt(var)
            w_fwd = np.concatenate([q["u"] * inv_std[:, None], (-a * q["m_rot"] * inv_std)[:, None]], axis=1)
            const = -0.5 * (np.log(var).reshape(K, D).sum(-1) + D * _LOG_2PI)
            w_back = q["u"] * (a * q["s_all"] * inv_std)[:, None]
            args = (x, w_fwd, const, w_back, q["means"], q["log_weights"], labels, mode)
            mixture_jit.run(kernels.gaussian_shared, n, *args, out=(out_mean, out_lp))
        else:
            alpha, sigma = time.alpha.numpy(), time.sigma.numpy()
            args = (x, alpha, sigma, q["u"], q["m_rot"], q["s_all"], q["means"], q["log_weights"], labels, mode)
            mixture_jit.run(kernels.gaussian_per_sample, n, *args, out=(out_mean, out_lp))
        log_prob = torch.from_numpy(out_lp if mode == mixture_jit.COMPONENTS else out_lp.reshape(n))
        return (torch.from_numpy(out_mean) if want_mean else None), log_prob

    def _jit_arrays(self) -> dict[str, np.ndarray]:
        """The float64 parameters of the compiled loop: ``u`` (K·D, D) with u[kD + j, d] = U_k[d, j], ``m_rot``
        (K·D,) U_kᵀμ_k, ``s_all`` (K·D,), ``means`` (K, D), ``log_weights`` (C + 1, K)."""
        if getattr(self, "_jit_params", None) is None:
            p = self._params(torch.float64, torch.device("cpu"))
            self._jit_params = {
                "u": np.ascontiguousarray(p.u_all.T.numpy()),
                "m_rot": p.m_all.numpy(),
                "s_all": p.s_all.numpy(),
                "means": np.ascontiguousarray(p.means.numpy()),
                "log_weights": np.ascontiguousarray(p.log_weights.numpy()),
            }
        return self._jit_params

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
        spec = {
            "kind": "gaussian-mixture",
            "name": self.name,
            "description": self.description,
            "dim": self.dim,
            "classes": classes,
        }
        if self.singular:
            spec["allow_singular"] = True
        return spec

    def config(self) -> dict:
        """The built-in name, or the full spec for a mixture built from parameters or a file."""
        return dict(self._config) if self._config else self.to_spec()
