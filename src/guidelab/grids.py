"""Time grids for N sampling steps: ``t_0 = t_max > t_1 > … > t_{N−1} = t_min > t_N = 0``.

``t_min`` is the last time at which the denoiser is evaluated; the final step lands on the data (t = 0,
σ = 0), as in EDM's sampler. Kinds:

- ``uniform``: uniform in t from t_max to t_min (default ``t_min = t_max/N``: ``linspace(t_max, 0, N+1)``).
- ``shifted``: SD3's shift ``t = s·u/(1 + (s − 1)·u)`` of a uniform grid in u (Esser et al. 2024,
  arXiv 2403.03206); shift s > 1 spends more steps at high noise.
- ``geometric``: uniform in log λ (noise level σ/α) from λ(t_max) to λ(t_min): refines near the data.
- ``edm``: Karras et al.'s ρ-grid ``λ_i = (λ_max^{1/ρ} + i/(N−1)·(λ_min^{1/ρ} − λ_max^{1/ρ}))^ρ``
  (arXiv 2206.00364, Eq. 5), ρ = 7.

For the λ-based kinds, where λ(t_max) exceeds ``lam_cap`` (e.g. ∞ for rf or vp-cosine at t = 1) the grid
starts at t_max and its next point is λ = lam_cap. By default the edm grid caps at EDM's σ_max = 80 and the
geometric grid caps only an infinite λ(t_max), at 80 (a finite one, e.g. λ(1) ≈ 2·10⁴ on the OU path, is kept,
so that the first step is not a jump across most of the noise range).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from guidelab.paths import NoisePath
from guidelab.progress import counted
from guidelab.validation import did_you_mean

__all__ = ["GRIDS", "GRID_PARAMS", "check_grid_params", "make_grid"]

GRIDS: tuple[str, ...] = ("uniform", "shifted", "geometric", "edm")
GRID_PARAMS: dict[str, tuple[str, ...]] = {  # the parameters each kind of grid reads
    "uniform": (),
    "shifted": ("shift",),
    "geometric": ("lam_cap",),
    "edm": ("rho", "lam_cap"),
}


def check_grid_params(kind: str, params: dict[str, object]) -> None:
    """A ValueError naming the parameter when ``params`` holds one that a ``kind`` grid does not read (it would be
    ignored silently)."""
    used = GRID_PARAMS.get(kind)
    if used is None:
        return  # an unknown kind is reported by make_grid
    for key in params:
        if key not in used:
            users = [k for k, names in GRID_PARAMS.items() if key in names]
            hint = f" (it applies to {', '.join(users)})" if users else ""
            raise ValueError(f"grid_params: the {kind} grid does not use {key!r}{hint}{did_you_mean(key, used)}")


_DEFAULT_LAM_MIN = 0.002  # EDM's σ_min
_DEFAULT_LAM_CAP = 80.0  # EDM's σ_max


def _check(name: str, ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")


def make_grid(
    kind: str,
    steps: int,
    path: NoisePath,
    *,
    t_min: float | None = None,
    t_max: float = 1.0,
    rho: float = 7.0,
    shift: float = 3.0,
    lam_cap: float | None = None,
) -> Tensor:
    """The N + 1 times (float64) of an N-step grid of ``kind`` on ``path``. The tensor remembers the path in its
    ``noise_path`` attribute, and :func:`~guidelab.sampling.sample` refuses it for a denoiser on another path.

    Args:
        kind: one of ``uniform``, ``shifted``, ``geometric``, ``edm``.
        steps: number of steps N ≥ 1.
        path: the noise path (λ-based grids convert through ``path.t_of_lam``).
        t_min: last evaluation time, ``0 < t_min ≤ t_max``. Default: ``t_max/N`` for uniform, SD3's
            ``u_max/N`` before the shift for shifted, λ = 0.002 for geometric and edm.
        t_max: first time, ``0 < t_max ≤ 1``.
        rho: EDM ρ (edm only).
        shift: SD3 shift s > 0 (shifted only).
        lam_cap: largest finite noise level of λ-based grids (default: see the module docstring).
    """
    _check("grid", kind in GRIDS, f"unknown kind {kind!r}{did_you_mean(kind, GRIDS)}")
    _check(
        "steps",
        isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1,
        f"must be an integer ≥ 1, got {steps!r}",
    )
    _check("t_max", 0 < t_max <= 1, f"must lie in (0, 1], got {t_max}")
    _check("rho", rho > 0, f"must be > 0, got {rho}")
    _check("shift", shift > 0, f"must be > 0, got {shift}")
    if t_min is None:
        if kind == "uniform":
            t_min = t_max / steps
        elif kind == "shifted":  # SD3: shift the uniform u-grid that ends at u_max/N
            u_min = t_max / (shift - (shift - 1) * t_max) / steps
            t_min = shift * u_min / (1 + (shift - 1) * u_min)
        else:
            t_min = float(path.t_of_lam(torch.tensor(_DEFAULT_LAM_MIN, dtype=torch.float64)))
    _check("t_min", 0 < t_min <= t_max, f"must lie in (0, t_max={t_max}], got {t_min}")
    _check("t_min", steps == 1 or t_min < t_max, f"must be < t_max={t_max} for {steps} steps, got {t_min}")
    if lam_cap is None:
        lam_top = float(path.lam(torch.tensor(t_max, dtype=torch.float64)))
        lam_cap = lam_top if kind == "geometric" and math.isfinite(lam_top) else _DEFAULT_LAM_CAP
    _check("lam_cap", lam_cap > 0, f"must be > 0, got {lam_cap}")

    n = steps  # evaluation times t_0 … t_{N−1}; t_N = 0 is appended
    if n == 1:
        times = torch.tensor([t_max], dtype=torch.float64)
    elif kind == "uniform":
        times = torch.linspace(t_max, t_min, n, dtype=torch.float64)
    elif kind == "shifted":

        def unshift(t: float) -> float:
            return t / (shift - (shift - 1) * t)

        u = torch.linspace(unshift(t_max), unshift(t_min), n, dtype=torch.float64)
        times = shift * u / (1 + (shift - 1) * u)
    else:
        times = _lam_grid(kind, n, path, t_min, t_max, rho, lam_cap)
    grid = torch.cat([times, torch.zeros(1, dtype=torch.float64)])
    if not bool((grid[1:] < grid[:-1]).all()):
        raise ValueError(
            f"grid: {kind} grid with {counted(steps, 'step')} is not strictly decreasing; widen [t_min, t_max]"
        )
    grid.noise_path = path  # type: ignore[attr-defined]  # the path it was built for; sample() checks it
    return grid


def _lam_grid(kind: str, n: int, path: NoisePath, t_min: float, t_max: float, rho: float, lam_cap: float) -> Tensor:
    lam_max = float(path.lam(torch.tensor(t_max, dtype=torch.float64)))
    lam_min = float(path.lam(torch.tensor(t_min, dtype=torch.float64)))
    head: list[float] = []
    if not lam_max <= lam_cap:  # also catches ∞
        head, lam_max, n = [t_max], lam_cap, n - 1
        if lam_min >= lam_cap:
            raise ValueError(f"t_min: noise level λ(t_min)={lam_min:.4g} must be below lam_cap={lam_cap}")
    i = torch.linspace(0, 1, n, dtype=torch.float64)
    if kind == "geometric":
        lam = torch.exp(math.log(lam_max) + i * (math.log(lam_min) - math.log(lam_max)))
    else:  # edm
        lam = (lam_max ** (1 / rho) + i * (lam_min ** (1 / rho) - lam_max ** (1 / rho))) ** rho
    times = path.t_of_lam(lam).to(torch.float64)
    times[-1] = t_min  # exact endpoint despite the λ round trip
    if not head:
        times[0] = t_max
    return torch.cat([torch.tensor(head, dtype=torch.float64), times])
