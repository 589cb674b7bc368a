"""Reproduction ``chidambaram-score-error``: any nonzero score error plus a large enough guidance scale puts samples
outside the support (Chidambaram et al., arXiv 2409.13074, Th. 3; docs/methods.md §3).

On ``chidambaram-uniform-1d`` (class "pos" on [1, 2]), OU path T = 10, Euler on the probability-flow ODE over a fine
geometric grid (log-uniform in λ down to 0.002), samples read at t = 0 as in ``chidambaram-edge``. Every γ starts from
the same noise. Two error models, each a smooth bounded field h (‖h‖ < 1) of
:class:`~guidelab.targets.ScoreErrorDenoiser`, drawn independently for the conditional and the unconditional model
(so the guided error grows like γ·δ) and pooled over several seeds of the field:

- ``score``: ``ScoreErrorDenoiser`` itself, an error δ·h in the score, of the same size at every noise level.
- ``eps``: the same field as an error δ·h in the noise prediction ε̂ (a score error δ·h/σ_t), the way a network
  trained on ε or x0 errs: it does not fade as σ_t → 0.

Out of support means farther than ``tol = 2σ(t_min)`` from the support: the final Euler step from t_min leaves a
residual noise of about σ(t_min)/2, so the sampler cannot place a sample more precisely (with exact scores at
γ = 16 about 40% of the samples lie beyond α2, at a typical distance σ(t_min)/2, the edge pile-up of
``chidambaram-edge``). The strict fraction (tol = 0) and the mean distance to the support are reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guidelab.experiments.reproductions import _plots
from guidelab.experiments.reproductions._common import Run, config_for, slope
from guidelab.experiments.reproductions.chidambaram_edge import HORIZON, guided_samples, ou_grid
from guidelab.paths import get_path
from guidelab.targets import ScoreErrorDenoiser, get_target

__all__ = ["SIZES", "EpsErrorDenoiser", "ScoreErrorConfig", "score_error"]

NAME = "chidambaram-score-error"
SOURCE = "arXiv 2409.13074"


@dataclass(frozen=True)
class ScoreErrorConfig:
    """Sizes of one run.

    Attributes:
        n: samples per γ and error seed.
        gammas: the scales γ (Ho form), increasing, the first 1.
        deltas: error sizes δ > 0 per error model (``score``, ``eps``); exact scores are always run.
        error_seeds: seeds of the error field (results pooled over them).
        steps: geometric-grid steps.
        seed: seed of the starting noise (error seed k uses seed + k).
    """

    n: int
    gammas: tuple[float, ...]
    deltas: dict[str, tuple[float, ...]]
    error_seeds: tuple[int, ...]
    steps: int = 1000
    seed: int = 0


SIZES = {
    "ci": ScoreErrorConfig(
        n=40,
        gammas=(1.0, 2.0, 4.0, 8.0, 16.0),
        deltas={"score": (0.5,), "eps": (0.1,)},
        error_seeds=(0, 1, 2, 3),
        steps=500,
    ),
    "paper": ScoreErrorConfig(
        n=250,
        gammas=(1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0),
        deltas={"score": (0.25, 0.5, 1.0), "eps": (0.05, 0.1, 0.25)},
        error_seeds=tuple(range(8)),
    ),
}


# --- experiment -----------------------------------------------------------------------------------------------


class EpsErrorDenoiser:
    """An x0-prediction denoiser with a bounded error δ·h in its noise prediction ε̂ (a score error δ·h/σ_t), h the
    field of :class:`~guidelab.targets.ScoreErrorDenoiser` (independent per condition): ``x0̂ ← x0̂ + (σ/α)·δ·h``."""

    prediction = "x0"

    def __init__(self, base: Any, delta: float, seed: int = 0):
        if base.prediction != "x0":
            raise ValueError(f"base: needs an x0-prediction denoiser, got {base.prediction!r}")
        self.base, self.path = base, base.path
        self.field = ScoreErrorDenoiser(base, delta, seed=seed)

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        c = self.path.coefficients(torch.as_tensor(t, dtype=torch.float64)).expand_as(x_t)
        return self.base(x_t, t, cond) + (c.sigma / c.alpha).to(x_t.dtype) * self.field.error(x_t, t, cond)


ERRORS = {"score": ScoreErrorDenoiser, "eps": EpsErrorDenoiser}


def _rows(d: torch.Tensor, gammas: tuple[float, ...], tol: float) -> list[dict[str, Any]]:
    """Per γ: out-of-support fractions and distances from the distances d (G, samples)."""
    return [
        {
            "gamma": gamma,
            "out_of_support": float((d[g] > tol).double().mean()),
            "out_of_support_strict": float((d[g] > 0).double().mean()),
            "mean_distance": float(d[g].mean()),
            "q95_distance": float(torch.quantile(d[g], 0.95)),
        }
        for g, gamma in enumerate(gammas)
    ]


def _claims(rows: dict[str, list[dict[str, Any]]], cfg: ScoreErrorConfig) -> dict[str, bool]:
    log_gamma = np.log(cfg.gammas).tolist()
    claims = {"exact_scores_stay_in_support": max(r["out_of_support"] for r in rows["exact"]) <= 0.02}
    for key, r in rows.items():
        if key != "exact":
            out = [row["out_of_support"] for row in r]
            grows = out[-1] - out[0] >= 0.1 and slope(log_gamma, out) > 0
            claims[f"{key}_out_of_support_grows_with_gamma"] = grows
    return claims


def score_error(size: str = "ci", out_dir: str | Path = "chidambaram-score-error") -> dict[str, Any]:
    """Run the reproduction at ``size`` (``ci`` or ``paper``); write ``chidambaram-score-error.json`` and PNGs to
    ``out_dir``; return the result dict (``results``, ``claims``, ``notes``)."""
    cfg = config_for(NAME, size, SIZES)
    path = get_path("ou", horizon=HORIZON)
    grid = ou_grid("geometric", cfg.steps, path)
    tol = 2 * float(path.coefficients(grid[-2]).sigma)
    target = get_target("chidambaram-uniform-1d")
    settings = {
        "target": "chidambaram-uniform-1d",
        "cond": "pos",
        "path": {"name": "ou", "horizon": HORIZON},
        "grid": "geometric",
        "solver": "euler (probability-flow ODE)",
        "samples_read": "at t = 0, after the final Euler step from t_min",
        "out_of_support_tolerance": tol,
    }
    with Run(NAME, SOURCE, size, out_dir, cfg, settings) as run:
        rows: dict[str, list[dict[str, Any]]] = {}
        samples: dict[str, np.ndarray] = {}
        diverged = 0
        settings_list = [("exact", "score", 0.0, cfg.error_seeds[:1])]
        settings_list += [(f"{m}_delta_{d:g}", m, d, cfg.error_seeds) for m, ds in cfg.deltas.items() for d in ds]
        for key, model, delta, seeds in settings_list:
            dist, xs = [], []
            for k, error_seed in enumerate(seeds):
                denoiser = ERRORS[model](target.denoiser(path), delta, seed=error_seed)
                n = cfg.n * (len(cfg.error_seeds) if delta == 0 else 1)
                x, _, bad = guided_samples(denoiser, path, grid, cfg.gammas, n, 1, cfg.seed + k)
                diverged += bad
                dist.append(torch.stack([target.distance_to_support(x[g], 0) for g in range(len(cfg.gammas))]))
                xs.append(x[..., 0])
            rows[key] = _rows(torch.cat(dist, dim=1), cfg.gammas, tol)
            samples[key] = torch.cat(xs, dim=1).numpy()
        results = {"tolerance": tol, "diverged": diverged, "by_error": rows}
        claims = _claims(rows, cfg)
        run.notes += [
            "With exact scores the strict out-of-support fraction reaches ~0.5 at γ = 16 (samples piled at α2, within "
            "σ(t_min) of it); beyond tol = 2σ(t_min) it stays near 0.",
            "The out-of-support fraction saturates at large γ at the share of error fields (pooled over seeds) that "
            "push outward at α2: the field's sign there decides whether the guided error moves the edge pile-up out "
            "of the support or into it.",
            "Score-space error: with a time-independent field the long, nearly drift-free high-noise phase of the OU "
            "ODE (τ ∈ [3, 10]) lets the guided error collapse samples onto the field's sinks, so the fraction jumps "
            "by error seed rather than growing smoothly; its effect fades near the data (Δx0̂ = σ²·Δs/α).",
        ]
        _plot(rows, samples, cfg, tol, run.figure_path("curves"))
        return run.finish(results, claims)


# --- figures --------------------------------------------------------------------------------------------------


def _plot(rows: dict[str, list[dict[str, Any]]], samples: dict[str, np.ndarray], cfg, tol: float, file: Path) -> None:
    fig, axes = _plots.new_figure(1, 3, width=3.6, height=3.0)
    for j, (key, r) in enumerate(rows.items()):
        g = [row["gamma"] for row in r]
        color = f"C{j}"
        axes[0][0].plot(g, [row["out_of_support"] for row in r], marker="o", ms=3, color=color, label=key)
        axes[0][0].plot(g, [row["out_of_support_strict"] for row in r], ls=":", color=color)
        axes[0][1].plot(g, [max(row["mean_distance"], 1e-7) for row in r], marker="o", ms=3, color=color)
    axes[0][0].set_ylabel(f"fraction farther than {tol:.1e} (dotted: > 0)")
    axes[0][1].set_ylabel("mean distance to the support")
    axes[0][1].set_yscale("log")
    for ax in axes[0][:2]:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("γ")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    ax = axes[0][2]
    _plots.shade_interval(ax, 1.0, 2.0)
    bins = np.linspace(1.97, 2.03, 61)
    for j, (key, x) in enumerate(samples.items()):
        ax.hist(x[-1], bins=bins, histtype="step", density=True, color=f"C{j}", label=key)
    ax.set_title(f"samples near α2 = 2 at γ = {cfg.gammas[-1]:g}", fontsize=8)
    ax.set_xlim(bins[0], bins[-1])
    ax.legend(fontsize=7)
    fig.suptitle("score error × guidance → samples off the support [1, 2] (OU T = 10, geometric grid)", fontsize=9)
    _plots.save(fig, file)
