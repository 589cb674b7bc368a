"""The tilted target ``p̃_γ(x | c) ∝ p(x | c)^γ p(x)^{1−γ}``: what guidance with scale γ was meant to sample, and
provably does not (Chidambaram et al., arXiv 2409.13074). A reference for metrics "against the tilted target".

With Bayes ``p(x | c) = p(c | x) p(x)/π_c`` the unnormalized log-density is

    log p̃_γ(x) = log p(x) + γ·(log p(c | x) − log π_c)            (= log p(x | c) at γ = 1, log p(x) at γ = 0)

and, as ``p(c | x) ≤ 1``, for γ ≥ 1 ``p̃_γ ∝ p(x | c)·p(c | x)^{γ−1}`` and for 0 ≤ γ ≤ 1 ``p̃_γ ∝ p(x)·p(c | x)^γ``:
rejection sampling from exact samples of p(x | c) (or p(x)) with acceptance ``p(c | x)^{γ−1}`` (or
``p(c | x)^γ``) is exact, and the normalizer is finite for every γ ≥ 0. For disjoint class supports (boxes)
``p(c | x) = 1`` on the class support, so the tilted target *is* the conditional for every γ > 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND
from guidelab.metrics.base import as_points, path_for, resolve_cond, seeded_generator
from guidelab.metrics.density import CellGrid, cell_masses
from guidelab.paths import NoisePath
from guidelab.validation import did_you_mean

__all__ = ["TiltedTarget"]


class TiltedTarget:
    """``p̃_γ(x | c) ∝ p(x | c)^γ p(x)^{1−γ}`` of an analytic target at time t (default 0, the data).

    Args:
        target: an analytic :class:`~guidelab.targets.base.Target`.
        cond: the class c (index or name).
        scale: the scale γ (Ho form; γ = 1 is the conditional).
        t: the time at which the target's densities are evaluated (a small t > 0 for box targets whose t = 0
            density is undefined).
        path: the path for t > 0 (default rectified flow).

    Metrics against it: distances to ``tilted.sample(n, seed=...)`` (energy, MMD, W2, PRDC);
    ``grid_divergences(x, tilted.log_unnormalized, grid, normalize=True)`` for KL/TV on a grid; the NLL is
    ``−mean(tilted.log_unnormalized(x)) + tilted.log_normalizer()``.
    """

    def __init__(self, target: object, cond: int | str, scale: float, *, t: float = 0.0, path: NoisePath | None = None):
        c = resolve_cond(target, cond)
        if c == NULL_COND:
            raise ValueError("cond: the tilted target needs a class, got the null condition")
        scale = float(scale)
        if not math.isfinite(scale):
            raise ValueError(f"scale: must be finite, got {scale}")
        self.target = target
        self.cond = c
        self.scale = scale
        self.t = float(t)
        self.path = path_for(t, path)
        self.log_prior = float(torch.log(target.class_prior[c]))  # type: ignore[attr-defined]

    def _time(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), self.t, dtype=x.dtype, device=x.device)

    def log_class_posterior(self, x: Tensor) -> Tensor:
        """log p(c | x), (n,)."""
        x = as_points(x, "x")
        return self.target.class_log_posterior(x, self._time(x), self.path)[:, self.cond]  # type: ignore[attr-defined]

    def log_unnormalized(self, x: Tensor) -> Tensor:
        """``log p(x) + γ(log p(c | x) − log π_c)``, (n,); −∞ where p(x) = 0 (or p(c | x) = 0 with γ > 0)."""
        x = as_points(x, "x")
        log_p = self.target.log_prob_t(x, self._time(x), self.path, None)  # type: ignore[attr-defined]
        if self.scale == 0:
            return log_p
        log_post = self.log_class_posterior(x)
        out = log_p + self.scale * (log_post - self.log_prior)
        return torch.where(
            torch.isfinite(log_p), torch.nan_to_num(out, nan=-math.inf, posinf=math.inf, neginf=-math.inf), log_p
        )

    def cell_masses(self, grid: CellGrid, *, quad_points: int = 4) -> Tensor:
        """Normalized masses of the grid cells (num_cells,) (normalized on the window: the window must hold
        essentially all the mass)."""
        return cell_masses(self.log_unnormalized, grid, quad_points=quad_points, normalize=True)

    def density_on_grid(self, grid: CellGrid, *, quad_points: int = 4) -> Tensor:
        """Cell-averaged normalized density (num_cells,) = mass / cell volume."""
        return self.cell_masses(grid, quad_points=quad_points) / grid.cell_volume

    def log_normalizer(self, num_samples: int = 100_000, *, seed: int = 0) -> float:
        """Monte Carlo ``log Z``, ``Z = ∫ p(x) (p(c | x)/π_c)^γ dx = E_{p(x)}[(p(c | x)/π_c)^γ]``, from exact samples of
        p(x) (seeded); for γ ≥ 1, ``Z = E_{p(x|c)}[(p(c | x)/π_c)^{γ−1}]`` (bounded integrand)."""
        gen = seeded_generator(seed)
        if self.scale >= 1:
            x = self.target.sample(num_samples, self.cond, gen).double()  # type: ignore[attr-defined]
            expo = self.scale - 1
        else:
            x = self.target.sample(num_samples, None, gen).double()  # type: ignore[attr-defined]
            expo = self.scale
        log_terms = expo * (self.log_class_posterior(x) - self.log_prior)
        return float(torch.logsumexp(log_terms, dim=0) - math.log(num_samples))

    def sample(
        self,
        n: int,
        *,
        seed: int = 0,
        method: Literal["auto", "rejection", "grid", "importance"] = "auto",
        grid: CellGrid | None = None,
        batch: int = 65536,
        max_proposals: int = 50_000_000,
        proposals_per_sample: int = 32,
    ) -> Tensor:
        """``n`` samples (n, D) float64 of the tilted target, seeded.

        Methods:
            rejection (exact, γ ≥ 0): propose exact samples of p(x | c) (γ ≥ 1) or p(x) (γ < 1) and accept with
                probability ``p(c | x)^{γ−1}`` (or ``p(c | x)^γ``), in batches of at most ``batch`` sized by the
                acceptance rate so far; raises after ``max_proposals``.
            grid (1D/2D, approximate to a cell): pick a cell by its normalized mass, then a uniform point in it.
            importance (any γ, approximate): sampling–importance–resampling from ``proposals_per_sample·n``
                proposals of p(x) with weights ``(p(c | x)/π_c)^γ``.
            auto: rejection for γ ≥ 0, else importance.
        """
        if n < 0:
            raise ValueError(f"n: must be ≥ 0, got {n}")
        methods = ("auto", "rejection", "grid", "importance")
        if method not in methods:
            raise ValueError(f"method: unknown sampling method {method!r}{did_you_mean(method, methods)}")
        if method == "auto":
            method = "rejection" if self.scale >= 0 else "importance"
        gen = seeded_generator(seed)
        if method == "grid":
            if grid is None:
                raise ValueError("grid: the grid method needs a CellGrid")
            return self._sample_grid(n, grid, gen)
        if method == "importance":
            return self._sample_importance(n, gen, proposals_per_sample)
        if self.scale < 0:
            raise ValueError(f"method: rejection needs scale ≥ 0 (bounded acceptance), got {self.scale}")
        return self._sample_rejection(n, gen, batch, max_proposals)

    def _sample_rejection(self, n: int, gen: torch.Generator, batch: int, max_proposals: int) -> Tensor:
        cond, expo = (self.cond, self.scale - 1) if self.scale >= 1 else (None, self.scale)
        kept: list[Tensor] = []
        have = proposed = 0
        while have < n:
            if proposed >= max_proposals:
                raise RuntimeError(
                    f"tilted sample: {have} of {n} accepted after {proposed} proposals (acceptance "
                    f"{have / max(proposed, 1):.2e}); use method='grid' or 'importance'"
                )
            rate = have / proposed if have > 0 else 0.5  # batch sized by the acceptance seen so far
            m = int(min(batch, max(1024, math.ceil(1.2 * (n - have) / rate))))
            x = self.target.sample(m, cond, gen).double()  # type: ignore[attr-defined]
            proposed += m
            log_accept = expo * self.log_class_posterior(x) if expo != 0 else torch.zeros(m, dtype=torch.float64)
            u = torch.rand(m, generator=gen, dtype=torch.float64)
            keep = torch.log(u) < log_accept
            kept.append(x[keep])
            have += int(keep.sum())
        return torch.cat(kept)[:n]

    def _sample_grid(self, n: int, grid: CellGrid, gen: torch.Generator) -> Tensor:
        masses = self.cell_masses(grid)
        cells = torch.multinomial(masses, n, replacement=True, generator=gen)
        idx, coords = cells, []
        for a in reversed(range(grid.dim)):
            coords.append(idx % grid.bins[a])
            idx = idx // grid.bins[a]
        k = torch.stack(coords[::-1], dim=1).double()  # (n, D) cell indices per axis
        lower = torch.tensor(grid.lower, dtype=torch.float64)
        widths = torch.tensor(grid.widths, dtype=torch.float64)
        return lower + (k + torch.rand(n, grid.dim, generator=gen, dtype=torch.float64)) * widths

    def _sample_importance(self, n: int, gen: torch.Generator, per_sample: int) -> Tensor:
        m = max(n * per_sample, 1)
        x = self.target.sample(m, None, gen).double()  # type: ignore[attr-defined]
        log_w = self.scale * self.log_class_posterior(x)
        w = torch.exp(log_w - torch.max(log_w))
        idx = torch.multinomial(w, n, replacement=True, generator=gen)
        return x[idx]

    def __repr__(self) -> str:
        return f"TiltedTarget({self.target!r}, cond={self.cond}, scale={self.scale}, t={self.t})"
