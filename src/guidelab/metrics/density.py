"""Distances to an exact density on a grid (KL, total variation) and the negative log-likelihood under the
true conditional.

The grid estimator (1D and 2D; any low dimension works, the cost is ∏ bins·q^D density evaluations):
the window ``[lo, hi]`` per axis is cut into cells; the reference mass of cell j is the exact density
integrated over the cell, ``Q_j = ∫_cell p(x) dx``, by a q-point Gauss–Legendre rule per axis (exact for a
density constant on the cell, as a box density with edges on cell edges); the sample mass is the
histogram ``P̂_j = N_j/n``. Mass outside the window is one more cell: ``P̂_out`` is the fraction of
samples outside, ``Q_out = 1 − Σ_j Q_j`` (or 0 when the density is normalized on the window). Then

    KL(P̂ ‖ Q) = Σ_j P̂_j log(P̂_j/Q_j)          (∞ when a sample falls where Q_j = 0)
    KL(Q ‖ P̃) = Σ_j Q_j log(Q_j/P̃_j),   P̃_j = (N_j + a)/(n + a·B)   (add-a smoothing, default a = ½)
    TV = ½ Σ_j |P̂_j − Q_j|

Bias: binning can only lower a divergence (data processing inequality), so both are lower bounds of the
continuous ones as the sample size grows; at finite n the plug-in estimates are biased upward, for exact
samples ``E[KL(P̂ ‖ Q)] ≈ (B_occ − 1)/(2n)`` (B_occ occupied cells, Miller 1955) and
``E[TV] ≈ Σ_j √(Q_j(1 − Q_j)/(2πn))``. The returned ``kl_floor`` and ``tv_floor`` are those values
measured directly, as the mean over seeded multinomial draws of n exact samples from Q: a result is only
meaningful above its floor. ``KL(Q ‖ P̃)`` is dominated by the cells the samples never reach (the tails of
the truth), where the smoothing sets its value: compare it only between sample sets of equal size on the
same grid. ``kl`` is ∞ (``Infinity`` in JSON) when samples fall where the truth has no mass (outside a box
support), which the in-support fraction then quantifies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from guidelab.denoiser import NULL_COND
from guidelab.metrics.base import Record, as_points, chunk_rows, path_for, resolve_cond, seeded_generator
from guidelab.paths import NoisePath

__all__ = [
    "CellGrid",
    "GridDivergence",
    "Likelihood",
    "LogDensity",
    "cell_masses",
    "grid_divergences",
    "histogram",
    "negative_log_likelihood",
    "target_log_density",
]

LogDensity = Callable[[Tensor], Tensor]
"""A log-density ``x (m, D) -> log p(x) (m,)`` (−∞ outside the support)."""


@dataclass(frozen=True)
class CellGrid:
    """A regular grid of cells on the window ``lower ≤ x < upper`` (the last cell of each axis is closed).

    Cells are numbered row-major (the first axis varies slowest), as ``cell_index`` and :func:`cell_masses`.
    """

    lower: tuple[float, ...]
    upper: tuple[float, ...]
    bins: tuple[int, ...]

    def __post_init__(self) -> None:
        if not (len(self.lower) == len(self.upper) == len(self.bins)) or len(self.bins) == 0:
            raise ValueError(
                f"grid: lower, upper and bins need one entry per axis, got {self.lower}, {self.upper}, {self.bins}"
            )
        for a, (lo, hi, b) in enumerate(zip(self.lower, self.upper, self.bins, strict=True)):
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ValueError(f"grid: axis {a} needs finite lower < upper, got [{lo}, {hi}]")
            if int(b) != b or b < 1:
                raise ValueError(f"grid: axis {a} needs bins ≥ 1, got {b}")

    @classmethod
    def from_bounds(cls, bounds: Sequence[float] | Sequence[Sequence[float]], bins: int | Sequence[int]) -> CellGrid:
        """From ``(lo, hi)`` (1D) or ``[(lo_1, hi_1), (lo_2, hi_2), ...]`` and a bin count (or one per axis)."""
        if len(bounds) == 2 and all(isinstance(b, int | float) for b in bounds):
            bounds = [bounds]  # type: ignore[list-item]
        lower = tuple(float(b[0]) for b in bounds)  # type: ignore[index]
        upper = tuple(float(b[1]) for b in bounds)  # type: ignore[index]
        bins_t = tuple(int(bins) for _ in lower) if isinstance(bins, int) else tuple(int(b) for b in bins)
        return cls(lower, upper, bins_t)

    @property
    def dim(self) -> int:
        return len(self.bins)

    @property
    def num_cells(self) -> int:
        return int(np.prod(self.bins))

    @property
    def widths(self) -> tuple[float, ...]:
        return tuple((hi - lo) / b for lo, hi, b in zip(self.lower, self.upper, self.bins, strict=True))

    @property
    def cell_volume(self) -> float:
        return float(np.prod(self.widths))

    def edges(self, axis: int) -> Tensor:
        """Cell edges of ``axis``, (bins + 1,) float64."""
        return torch.linspace(self.lower[axis], self.upper[axis], self.bins[axis] + 1, dtype=torch.float64)

    def centers(self) -> Tensor:
        """Cell centers (num_cells, D), row-major."""
        axes = [0.5 * (e[1:] + e[:-1]) for e in (self.edges(a) for a in range(self.dim))]
        return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, self.dim)

    def cell_index(self, x: Tensor) -> Tensor:
        """The cell of each point (n,) int64, −1 outside the window."""
        x = as_points(x, "x")
        if x.shape[1] != self.dim:
            raise ValueError(f"x: expected dimension {self.dim} to match the grid, got {x.shape[1]}")
        lo = torch.tensor(self.lower, dtype=torch.float64, device=x.device)
        hi = torch.tensor(self.upper, dtype=torch.float64, device=x.device)
        bins = torch.tensor(self.bins, dtype=torch.long, device=x.device)
        inside = ((x >= lo) & (x <= hi)).all(dim=1)
        k = torch.floor((x - lo) / (hi - lo) * bins).long()
        k = torch.minimum(torch.clamp(k, min=0), bins - 1)  # x = upper goes to the last cell
        strides = torch.tensor([int(np.prod(self.bins[a + 1 :])) for a in range(self.dim)], device=x.device)
        return torch.where(inside, (k * strides).sum(dim=1), torch.full_like(k[:, 0], -1))


def histogram(x: Tensor, grid: CellGrid) -> tuple[Tensor, int]:
    """Counts per cell (num_cells,) float64 and the number of points outside the window."""
    idx = grid.cell_index(x)
    inside = idx >= 0
    counts = torch.bincount(idx[inside], minlength=grid.num_cells).double()
    return counts, int((~inside).sum())


def cell_masses(log_density: LogDensity, grid: CellGrid, *, quad_points: int = 4, normalize: bool = False) -> Tensor:
    """``∫_cell p(x) dx`` for every cell (num_cells,) float64, by a tensor-product Gauss–Legendre rule with
    ``quad_points`` nodes per axis and cell; ``normalize`` rescales the masses to sum to 1 (for a density
    known up to a constant, e.g. the tilted target, assuming negligible mass outside the window)."""
    if quad_points < 1:
        raise ValueError(f"quad_points: must be ≥ 1, got {quad_points}")
    xi, wi = np.polynomial.legendre.leggauss(quad_points)  # nodes on [−1, 1]
    nodes, weights = [], []
    for a in range(grid.dim):
        e = grid.edges(a).numpy()
        h = e[1:] - e[:-1]
        nodes.append(torch.from_numpy((e[:-1, None] + 0.5 * h[:, None] * (xi[None, :] + 1)).reshape(-1)))  # (B·q,)
        weights.append(torch.from_numpy((0.5 * h[:, None] * wi[None, :]).reshape(-1)))
    sizes = [n.numel() for n in nodes]
    total = int(np.prod(sizes))
    values = torch.empty(total, dtype=torch.float64)
    step = chunk_rows(total, grid.dim, budget=2**20)
    for lo in range(0, total, step):
        flat = torch.arange(lo, min(lo + step, total))
        coords, rest = [], flat
        for a in reversed(range(grid.dim)):  # unravel the row-major node index
            coords.append(nodes[a][rest % sizes[a]])
            rest = rest // sizes[a]
        pts = torch.stack(coords[::-1], dim=1)  # (m, D)
        logp = log_density(pts).reshape(-1).double().cpu()
        if logp.shape[0] != pts.shape[0]:
            raise ValueError(f"log_density: returned {logp.shape[0]} values for {pts.shape[0]} points")
        if torch.isnan(logp).any() or (logp == math.inf).any():
            raise ValueError("log_density: returned NaN or +inf on the grid")
        values[lo : lo + step] = torch.exp(logp)
    shape: list[int] = []
    for b in grid.bins:
        shape += [b, quad_points]
    dens = values.reshape(shape)
    for a in reversed(range(grid.dim)):  # multiply the weights of axis a and sum its q nodes
        w = weights[a].reshape(grid.bins[a], quad_points)
        view = [1] * dens.ndim
        view[2 * a], view[2 * a + 1] = grid.bins[a], quad_points
        dens = (dens * w.reshape(view)).sum(dim=2 * a + 1)
    masses = dens.reshape(-1)
    if normalize:
        z = masses.sum()
        if not z > 0:
            raise ValueError("log_density: zero mass on the grid window, cannot normalize")
        masses = masses / z
    return masses


@dataclass(frozen=True)
class GridDivergence(Record):
    """KL and TV between the histogram of samples and the exact cell masses (see the module docstring).

    Attributes:
        kl: KL(P̂ ‖ Q), samples against the truth (∞ when samples fall where the truth has no mass).
        kl_reverse: KL(Q ‖ P̃), truth against add-``pseudocount`` smoothed samples.
        tv: total variation ½Σ|P̂ − Q| (outside cell included).
        kl_floor, tv_floor: mean of ``kl`` and ``tv`` for n exact samples (multinomial draws from Q).
        sample_outside: fraction of samples outside the window; true_outside: Q_out.
        n: sample size; cells: number of cells in the window.
    """

    kl: float
    kl_reverse: float
    tv: float
    kl_floor: float
    tv_floor: float
    sample_outside: float
    true_outside: float
    n: int
    cells: int


def _kl(p: Tensor, q: Tensor) -> float:
    """Σ p log(p/q) over p > 0 (∞ where q = 0 < p); rows are cells."""
    support = p > 0
    if bool((q[support] <= 0).any()):
        return math.inf
    return float((p[support] * (torch.log(p[support]) - torch.log(q[support]))).sum())


def grid_divergences(
    x: Tensor,
    log_density: LogDensity,
    grid: CellGrid,
    *,
    normalize: bool = False,
    quad_points: int = 4,
    pseudocount: float = 0.5,
    floor_draws: int = 8,
    seed: int = 0,
) -> GridDivergence:
    """KL and total variation between the histogram of ``x`` and an exact density on a grid (see the module
    docstring for the estimator and its bias).

    Args:
        x: samples (n, D) (or (n,) in 1D).
        log_density: the exact log-density ``(m, D) -> (m,)``, e.g. :func:`target_log_density`.
        grid: the cells.
        normalize: normalize the masses on the window (unnormalized densities such as the tilted target).
        quad_points: Gauss–Legendre nodes per axis and cell.
        pseudocount: a in the smoothing of ``kl_reverse``.
        floor_draws: multinomial draws for the floors (0 skips them: NaN).
        seed: seeds the floor draws.
    """
    x = as_points(x, "x")
    n = x.shape[0]
    q_in = cell_masses(log_density, grid, quad_points=quad_points, normalize=normalize)
    q_out = 0.0 if normalize else max(0.0, 1.0 - float(q_in.sum()))
    q = torch.cat([q_in, torch.tensor([q_out], dtype=torch.float64)])
    q = q / q.sum()  # absorbs the quadrature error of Σ Q_j (≤ 1e-10 for smooth densities)
    counts, outside = histogram(x, grid)
    counts = torch.cat([counts.cpu(), torch.tensor([float(outside)], dtype=torch.float64)])  # beside q, on the CPU

    def divergences(c: Tensor) -> tuple[float, float, float]:
        p_hat = c / n
        smoothed = (c + pseudocount) / (n + pseudocount * c.numel())
        return _kl(p_hat, q), _kl(q, smoothed), float(0.5 * (p_hat - q).abs().sum())

    kl, kl_rev, tv = divergences(counts)
    kl_floor = tv_floor = math.nan
    if floor_draws > 0:
        gen = seeded_generator(seed)
        draws = torch.multinomial(q, n * floor_draws, replacement=True, generator=gen).reshape(floor_draws, n)
        floors = [divergences(torch.bincount(d, minlength=q.numel()).double()) for d in draws]
        kl_floor = float(np.mean([f[0] for f in floors]))
        tv_floor = float(np.mean([f[2] for f in floors]))
    return GridDivergence(
        kl=kl,
        kl_reverse=kl_rev,
        tv=tv,
        kl_floor=kl_floor,
        tv_floor=tv_floor,
        sample_outside=outside / n,
        true_outside=q_out,
        n=n,
        cells=grid.num_cells,
    )


def target_log_density(
    target: object, cond: int | str | None = None, *, t: float = 0.0, path: NoisePath | None = None
) -> LogDensity:
    """``x -> log p_t(x | cond)`` of an analytic target (``Target.log_prob_t``) at time ``t`` (default 0, the
    data; all paths agree there). For targets whose density is discontinuous (boxes) and whose t = 0
    evaluation is undefined, pass a small t (e.g. 1e-4) and a path."""
    c = resolve_cond(target, cond)
    p = path_for(t, path)

    def log_density(x: Tensor) -> Tensor:
        return target.log_prob_t(x, torch.full((x.shape[0],), float(t), dtype=x.dtype), p, c)  # type: ignore[attr-defined]

    return log_density


@dataclass(frozen=True)
class Likelihood(Record):
    """Negative log-likelihood of samples under the true conditional.

    Attributes:
        nll: ``−mean log p(x | c)`` over the samples inside the support (None when none is).
        out_of_support_fraction: fraction of samples outside the support (log p = −∞, or outside the box
            support for targets with ``support_contains``), excluded from ``nll``.
        n: sample size.
    """

    nll: float | None
    out_of_support_fraction: float
    n: int


def negative_log_likelihood(
    x: Tensor,
    target: object,
    cond: int | str | None = None,
    *,
    t: float = 0.0,
    path: NoisePath | None = None,
    chunk: int = 65536,
) -> Likelihood:
    """``NLL = −(1/|S|) Σ_{i ∈ S} log p_t(x_i | c)`` over the samples S inside the support, and the fraction
    outside reported separately (a density −∞ there would make the mean meaningless).

    At t = 0 (default) this is the exact data density. For box targets whose t = 0 evaluation is undefined,
    pass a small t; the support is then read from ``target.support_contains(x, cond)`` when the target has it.
    """
    x = as_points(x, "x")
    c = resolve_cond(target, cond)
    log_density = target_log_density(target, c, t=t, path=path)
    logp = torch.cat([log_density(x[lo : lo + chunk]).double() for lo in range(0, x.shape[0], chunk)])
    if bool(torch.isnan(logp).any()):
        raise ValueError(
            f"target: log p_t(x | c) is NaN at t={t} for {int(torch.isnan(logp).sum())} samples; use a small t > 0"
        )
    inside = torch.isfinite(logp)
    if hasattr(target, "support_contains"):
        inside &= target.support_contains(x, None if c == NULL_COND else c).reshape(-1).to(inside.device).bool()
    n_in = int(inside.sum())
    nll = float(-logp[inside].mean()) if n_in > 0 else None
    return Likelihood(nll=nll, out_of_support_fraction=1 - n_in / x.shape[0], n=x.shape[0])
