"""Reproduction ``chidambaram-edge``: guidance piles samples at the far edge of the class support (Chidambaram et
al., arXiv 2409.13074, Th. 1 and 2; docs/methods.md §3).

Setting of the paper: the OU path ``x_τ = e^{−τ}x0 + √(1 − e^{−2τ})ε`` with horizon T = 10, exact scores, 1000 steps,
guided score ``γ∇log p_t(x|+) + (1 − γ)∇log p_t(x)`` (CFG; w = γ − 1), class "pos" (support [α1, α2] = [1, 2], per
axis in 2D). Integrator: Euler on the probability-flow ODE (first order). Every γ starts from the same noise.

Where the samples are read: the sampler's output at t = 0, after the final Euler step from t_min to 0 (the ODE
integrated to the data, as in the paper). The guided denoised estimate x0̂ at t_min (what a final denoising step
would return) is reported beside it: it lies in the support in every setting measured, so the support losses below
come from the ODE's last steps, not from the guided denoiser.

Measured on ``chidambaram-uniform-1d``/``-2d``: the median and the fraction within ``edge_band`` of α2 as γ grows
(geometric grid: uniform in log λ over the whole path, from λ(t = 1) ≈ 2.2e4 down to 0.002; it matches the exact
ODE solution of the Gaussian case to 0.005), and the in-support fraction against γ on a uniform grid (t_min = 1/N:
λ ≈ 0.14 at the last evaluation) and the geometric one. On ``chidambaram-gauss-1d``: the mean and ``P(x ≥ √w)``
against w. For this ODE the exact large-w limit is x ≈ c∞·√w with c∞ = y(∞) of ``dy/dv = 1 − tanh(vy)``, y(0) = 0
(≈ 0.933, solved below with scipy), so ``P(x ≥ √w)`` grows only while the mean exceeds √w (up to w ≈ 15-30) and
cannot tend to 1; ``P(x ≥ √w/2)`` is reported beside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from guidelab.denoiser import Denoiser
from guidelab.experiments.reproductions import _plots
from guidelab.experiments.reproductions._common import Run, config_for, is_nondecreasing, per_copy, sample_copies
from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.metrics import class_far_edge, distance_to_far_edge, distance_to_support, in_support_fraction
from guidelab.paths import NoisePath, get_path
from guidelab.targets import get_target

__all__ = ["SIZES", "EdgeConfig", "chidambaram_edge", "guided_samples", "ou_grid"]

NAME = "chidambaram-edge"
SOURCE = "arXiv 2409.13074"
HORIZON = 10.0
GRIDS = ("uniform", "geometric")


@dataclass(frozen=True)
class EdgeConfig:
    """Sizes of one run.

    Attributes:
        n: samples per γ on the uniform targets (the same n starting points for every γ).
        gammas: the scales γ (Ho form, w = γ − 1); must hold 1 and 16 (w = 15).
        grids_2d: grids run on the 2D target (both grids always run on the 1D one).
        gauss_n: samples per γ on the Gaussian target.
        steps: sampler steps.
        edge_band: a sample is at the far edge when |x − α2| ≤ edge_band on every axis (10% of the support width).
        seed: seed of the starting noise.
    """

    n: int
    gammas: tuple[float, ...]
    grids_2d: tuple[str, ...]
    gauss_n: int
    steps: int = 1000
    edge_band: float = 0.1
    seed: int = 0


SIZES = {
    "ci": EdgeConfig(n=100, gammas=(1.0, 2.0, 4.0, 8.0, 16.0), grids_2d=("geometric",), gauss_n=200),
    "paper": EdgeConfig(
        n=2000, gammas=(1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0), grids_2d=GRIDS, gauss_n=4000
    ),
}


# --- experiment -----------------------------------------------------------------------------------------------


def ou_grid(kind: str, steps: int, path: NoisePath) -> Tensor:
    """A grid on the OU path; a geometric one spans the whole path in log λ (no cap: the default cap λ = 80 would
    cover τ ∈ [4.4, 10] in one step, which misses part of the early guidance push)."""
    return make_grid(kind, steps, path, lam_cap=math.inf) if kind == "geometric" else make_grid(kind, steps, path)


def guided_samples(
    denoiser: Denoiser, path: NoisePath, grid: Tensor, gammas: tuple[float, ...], n: int, dim: int, seed: int
) -> tuple[Tensor, Tensor, int]:
    """CFG samples of class 0 for every γ from the same n starting points, Euler on the probability-flow ODE, float64.

    Returns the samples at t = 0 (G, n, dim), the guided x0̂ at the last evaluation t_min (G, n, dim), and the number
    of diverged samples.
    """
    G = len(gammas)
    steps = grid.numel() - 1
    res = sample_copies(
        denoiser,
        build_guider("cfg", scale=per_copy(gammas, n)),
        G,
        n,
        0,
        grid=grid,
        shape=(dim,),
        seed=seed,
        solver="euler",
        record_every=max(1, steps - 1),
    )
    assert res.x0_trajectory is not None  # recorded: [t_0, t_min, 0]
    return res.x.reshape(G, n, dim), res.x0_trajectory[-2].reshape(G, n, dim), res.num_diverged


def _box_stats(x: Tensor, x0_hat: Tensor, target: Any, band: float) -> dict[str, Any]:
    """Median, spread, edge and support statistics of one γ's samples (n, D) of class 0."""
    far = class_far_edge(target, 0)
    d = distance_to_far_edge(x, far)  # (n, D), ≥ 0 inside the edge, < 0 beyond it
    q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype), dim=0)
    sd = distance_to_support(x, target, 0)
    return {
        "median": q[1].tolist(),
        "iqr": (q[2] - q[0]).tolist(),
        "edge_band_fraction": float((d.abs() <= band).all(dim=1).double().mean()),
        "beyond_edge_fraction": (d < 0).double().mean(dim=0).tolist(),
        "in_support": sd.in_support_fraction,
        "mean_distance_outside": sd.mean_outside,
        "in_support_x0_hat_t_min": in_support_fraction(x0_hat, target, 0),
    }


def _uniform_target(name: str, grids: tuple[str, ...], cfg: EdgeConfig, path: NoisePath) -> dict[str, Any]:
    target = get_target(name)
    out: dict[str, Any] = {"far_edge": class_far_edge(target, 0)}
    for kind in grids:
        grid = ou_grid(kind, cfg.steps, path)
        x, x0_hat, diverged = guided_samples(target.denoiser(path), path, grid, cfg.gammas, cfg.n, target.dim, cfg.seed)
        out[kind] = {
            "t_min": float(grid[-2]),
            "lam_min": float(path.lam(grid[-2])),
            "diverged": diverged,
            "by_gamma": [_box_stats(x[k], x0_hat[k], target, cfg.edge_band) for k in range(len(cfg.gammas))],
            "_samples": x,  # dropped before writing
        }
    return out


def ode_limit_constant() -> float:
    """c∞ = y(∞) for ``dy/dv = 1 − tanh(vy)``, y(0) = 0: the exact guided ODE on ``½N(1,1) + ½N(−1,1)`` ends at
    x ≈ c∞·√w for large w (substitute x = √w·y, u = e^{−τ} = v/√w in ``dx/du = 1 + w(1 − tanh(ux))``)."""
    from scipy.integrate import solve_ivp

    sol = solve_ivp(lambda v, y: 1 - np.tanh(v * y), (0.0, 200.0), [0.0], rtol=1e-10, atol=1e-12)
    return float(sol.y[0, -1])


def _gauss(cfg: EdgeConfig, path: NoisePath) -> dict[str, Any]:
    target = get_target("chidambaram-gauss-1d")
    grid = ou_grid("geometric", cfg.steps, path)
    x, _, diverged = guided_samples(target.denoiser(path), path, grid, cfg.gammas, cfg.gauss_n, 1, cfg.seed)
    rows = []
    for k, gamma in enumerate(cfg.gammas):
        xs, w = x[k, :, 0], gamma - 1
        rows.append(
            {
                "w": w,
                "mean": float(xs.mean()),
                "sd": float(xs.std()),
                "p_above_sqrt_w": float((xs >= math.sqrt(w)).double().mean()),
                "p_above_half_sqrt_w": float((xs >= 0.5 * math.sqrt(w)).double().mean()),
                "mean_over_sqrt_w": float(xs.mean()) / math.sqrt(w) if w > 0 else None,
            }
        )
    return {"grid": "geometric", "diverged": diverged, "by_gamma": rows, "_samples": x}


def _claims(results: dict[str, Any], cfg: EdgeConfig) -> dict[str, bool]:
    claims: dict[str, bool] = {}
    w15 = cfg.gammas.index(16.0)
    for tag in ("1d", "2d"):
        res = results[f"uniform_{tag}"]
        alpha2 = res["far_edge"]
        geo = res["geometric"]["by_gamma"]
        axes = range(len(alpha2))
        med = [[s["median"][a] for s in geo] for a in axes]
        band = [s["edge_band_fraction"] for s in geo]
        claims[f"{tag}_median_moves_to_far_edge"] = all(
            is_nondecreasing(med[a], tol=0.01) and med[a][-1] >= alpha2[a] - 0.05 and med[a][0] <= alpha2[a] - 0.3
            for a in axes
        )
        claims[f"{tag}_concentrates_at_far_edge"] = (
            is_nondecreasing(band, tol=0.02) and band[-1] >= 0.75 and band[0] <= 0.3
        )
        if "uniform" in res:
            uni = [s["in_support"] for s in res["uniform"]["by_gamma"]]
            geo_in = [s["in_support"] for s in geo]
            claims[f"{tag}_uniform_grid_loses_most_at_w15"] = uni[w15] < 0.5 and uni[0] >= 0.85
            claims[f"{tag}_grids_differ_at_w15"] = geo_in[w15] - uni[w15] >= 0.25
    g = results["gauss_1d"]["by_gamma"]
    means = [r["mean"] for r in g]
    claims["gauss_mean_grows_with_w"] = is_nondecreasing(means) and means[-1] - means[0] >= 1.0
    p = [r["p_above_sqrt_w"] for r in g if r["w"] >= 1]
    claims["gauss_p_above_sqrt_w_grows_with_w"] = is_nondecreasing(p, tol=0.02) and p[-1] > p[0]
    claims["gauss_p_above_sqrt_w_tends_to_1"] = p[-1] >= 0.95  # Th. 2: P(x ≥ √w) ≥ 1 − e^{−Ω(w)}
    half = [r["p_above_half_sqrt_w"] for r in g if r["w"] >= 1]
    claims["gauss_p_above_half_sqrt_w_grows_with_w"] = is_nondecreasing(half, tol=0.02) and half[-1] >= 0.95
    return claims


def chidambaram_edge(size: str = "ci", out_dir: str | Path = "chidambaram-edge") -> dict[str, Any]:
    """Run the reproduction at ``size`` (``ci`` or ``paper``); write ``chidambaram-edge.json`` and PNGs to
    ``out_dir``; return the result dict (``results``, ``claims``, ``notes``)."""
    cfg = config_for(NAME, size, SIZES)
    if 1.0 not in cfg.gammas or 16.0 not in cfg.gammas:
        raise ValueError(f"gammas: must hold 1 and 16 (w = 15), got {cfg.gammas}")
    path = get_path("ou", horizon=HORIZON)
    settings = {
        "path": {"name": "ou", "horizon": HORIZON},
        "solver": "euler (probability-flow ODE)",
        "guider": "cfg",
        "cond": "pos",
        "samples_read": "at t = 0, after the final Euler step from t_min",
        "edge_grid": "geometric",
    }
    with Run(NAME, SOURCE, size, out_dir, cfg, settings) as run:
        results: dict[str, Any] = {
            "uniform_1d": _uniform_target("chidambaram-uniform-1d", GRIDS, cfg, path),
            "uniform_2d": _uniform_target("chidambaram-uniform-2d", cfg.grids_2d, cfg, path),
            "gauss_1d": _gauss(cfg, path),
        }
        c_inf = ode_limit_constant()
        results["gauss_1d"]["ode_limit_mean_over_sqrt_w"] = c_inf
        claims = _claims(results, cfg)
        run.notes += [
            "Samples are the Euler ODE output at t = 0; the guided x0̂ at t_min is in the support in every setting "
            "(in_support_x0_hat_t_min), so support losses come from the last ODE steps.",
            "Geometric grid: the samples beyond α2 lie within ~σ(t_min)/2 ≈ 0.001 of it (mean_distance_outside); "
            "the uniform grid's last evaluation is at σ ≈ 0.14 and its samples overshoot α2 by ~0.1-0.2.",
            f"Gaussian: the exact ODE gives x ≈ {c_inf:.3f}·√w for large w, so P(x ≥ √w) does not tend to 1 "
            "(claim gauss_p_above_sqrt_w_tends_to_1) and falls again beyond w ≈ 15-30; P(x ≥ √w/2) does tend to 1.",
        ]
        _plot_samples(results, cfg, run.figure_path("samples"))
        _plot_curves(results, cfg, run.figure_path("support"))
        _plot_gauss(results["gauss_1d"], cfg, run.figure_path("gauss"))
        for key in ("uniform_1d", "uniform_2d"):
            for kind in GRIDS:
                results[key].get(kind, {}).pop("_samples", None)
        results["gauss_1d"].pop("_samples")
        return run.finish(results, claims)


# --- figures --------------------------------------------------------------------------------------------------


def _pick(gammas: tuple[float, ...], k: int = 5) -> list[int]:
    """Up to k indices spread over the γ list, first and last included."""
    idx = np.unique(np.round(np.linspace(0, len(gammas) - 1, min(k, len(gammas)))).astype(int))
    return [int(i) for i in idx]


def _plot_samples(results: dict[str, Any], cfg: EdgeConfig, file: Path) -> None:
    cols = _pick(cfg.gammas)
    rows = [("uniform_1d", "uniform"), ("uniform_1d", "geometric"), ("uniform_2d", "geometric")]
    fig, axes = _plots.new_figure(len(rows), len(cols), width=2.6, height=2.3)
    for r, (key, kind) in enumerate(rows):
        x = results[key][kind]["_samples"].numpy()
        for c, k in enumerate(cols):
            ax = axes[r][c]
            if x.shape[-1] == 1:
                _plots.shade_interval(ax, 1.0, 2.0)
                ax.hist(x[k, :, 0], bins=np.linspace(0.8, 2.4, 41), color="C0")
                ax.set_yticks([])
            else:
                ax.add_patch(_rectangle())
                ax.scatter(x[k, :, 0], x[k, :, 1], s=3, alpha=0.6)
                ax.set_xlim(0.8, 2.3)
                ax.set_ylim(0.8, 2.3)
            ax.set_title(f"{key[-2:]} {kind}, γ = {cfg.gammas[k]:g}", fontsize=8)
    fig.suptitle("class 'pos' samples by γ (support [1, 2] shaded), OU T = 10, Euler, 1000 steps", fontsize=9)
    _plots.save(fig, file)


def _rectangle() -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((1.0, 1.0), 1.0, 1.0, color="0.85", zorder=0)


def _plot_curves(results: dict[str, Any], cfg: EdgeConfig, file: Path) -> None:
    fig, axes = _plots.new_figure(1, 3, width=3.6, height=3.0)
    g = list(cfg.gammas)
    for key, style in (("uniform_1d", "-"), ("uniform_2d", "--")):
        for kind, color in (("uniform", "C3"), ("geometric", "C0")):
            if kind not in results[key]:
                continue
            rows = results[key][kind]["by_gamma"]
            label = f"{key[-2:]}, {kind} grid"
            axes[0][0].plot(g, [s["in_support"] for s in rows], style, marker="o", ms=3, color=color, label=label)
            if kind == "geometric":
                med = [s["median"][0] for s in rows]
                axes[0][1].plot(g, med, style, marker="o", ms=3, color=color, label=label)
                axes[0][2].plot(g, [s["edge_band_fraction"] for s in rows], style, marker="o", ms=3, label=key[-2:])
    axes[0][0].set_ylabel("in-support fraction")
    axes[0][1].axhline(2.0, color="0.5", lw=0.8)
    axes[0][1].set_ylabel("median (axis 1)")
    axes[0][2].set_ylabel(f"fraction with |x − α2| ≤ {cfg.edge_band:g}")
    for ax in axes[0]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("γ")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("far-edge concentration and the time grid (chidambaram-uniform)", fontsize=9)
    _plots.save(fig, file)


def _plot_gauss(res: dict[str, Any], cfg: EdgeConfig, file: Path) -> None:
    rows = res["by_gamma"]
    w = np.array([r["w"] for r in rows])
    fig, axes = _plots.new_figure(1, 3, width=3.6, height=3.0)
    ax = axes[0][0]
    ax.plot(w, [r["mean"] for r in rows], marker="o", ms=3, label="sample mean")
    ww = np.linspace(0, w.max(), 200)
    ax.plot(ww, np.sqrt(ww), ls="--", color="0.4", label="√w")
    ax.plot(ww, res["ode_limit_mean_over_sqrt_w"] * np.sqrt(ww), ls=":", color="0.4", label="c∞·√w (ODE limit)")
    ax.set_xlabel("w = γ − 1")
    ax.legend(fontsize=7)
    ax = axes[0][1]
    ax.plot(w, [r["p_above_sqrt_w"] for r in rows], marker="o", ms=3, label="P(x ≥ √w)")
    ax.plot(w, [r["p_above_half_sqrt_w"] for r in rows], marker="s", ms=3, label="P(x ≥ √w/2)")
    ax.set_xlabel("w = γ − 1")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax = axes[0][2]
    x = res["_samples"].numpy()
    for k in _pick(cfg.gammas, 4):
        ax.hist(x[k, :, 0], bins=50, histtype="step", density=True, label=f"w = {cfg.gammas[k] - 1:g}")
    ax.set_xlabel("x")
    ax.legend(fontsize=7)
    for a in axes[0]:
        a.grid(alpha=0.3)
    fig.suptitle("½N(1,1) + ½N(−1,1), class 'pos': mean and P(x ≥ √w) against w", fontsize=9)
    _plots.save(fig, file)
