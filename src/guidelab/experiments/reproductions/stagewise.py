"""Reproduction ``stagewise``: the stage-wise dynamics of guidance (Jin, Shi & Gu 2025, arXiv 2509.22007;
docs/methods.md §1): early strong guidance kills global diversity (weak modes), late strong guidance kills fine
variation (within-mode variance), and TV-CFG, which moves the same Δt-weighted budget γ̄ to the middle stage,
is claimed to beat constant CFG.

On ``multimodal-2d`` (class "a": a strong mode and a weak mode of weight 0.25 near class "b"), rectified flow, Euler
on a uniform grid; every schedule starts from the same noise. Schedules at each γ: constant γ, ``step-down`` (γ for
the first 25% of steps, then γ/3, as in the official code; below 1 for γ < 3), ``step-up`` (the reverse) and
``tv-cfg`` with γ̄ = γ. Measured: the weak mode's weight and the mode-weight error (total variation to the true
weights 0.75/0.25) by exact component assignment, the within-mode variance ratio to the truth (mean over the two
modes), the exact class fidelity, and the weak mode's posterior mass along the trajectories. A stage map beside the
probes: γ applied only in one third of the path (``interval`` in λ = t/(1 − t): early t > 0.7, middle
0.3 < t ≤ 0.7, late t ≤ 0.3), 1 elsewhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from guidelab.diagnostics import mode_posterior_mass
from guidelab.experiments.reproductions import _plots
from guidelab.experiments.reproductions._common import Run, config_for
from guidelab.grids import make_grid
from guidelab.guiders import build_guider, schedule_table
from guidelab.metrics import class_fidelity, mode_weights, within_mode_variance
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import get_target

__all__ = ["SIZES", "StagewiseConfig", "stagewise"]

NAME = "stagewise"
SOURCE = "arXiv 2509.22007"
SCHEDULES = ("constant", "step-down", "step-up", "tv-cfg")
WEAK = 1  # component index of class a's weak mode
VARIANCE_MARGIN = 0.02  # smallest difference of variance ratios counted as a difference
STAGES = {"early": (0.7, 1.0), "middle": (0.3, 0.7), "late": (0.0, 0.3)}  # t ranges of the stage map


@dataclass(frozen=True)
class StagewiseConfig:
    """Sizes of one run.

    Attributes:
        n: samples per schedule (the same starting points for all).
        gammas: scales γ (γ̄ for TV-CFG); the claims must hold at every one.
        steps: Euler steps on the uniform grid.
        seed: seed of the starting noise.
    """

    n: int
    gammas: tuple[float, ...]
    steps: int = 32
    seed: int = 0


SIZES = {
    "ci": StagewiseConfig(n=4000, gammas=(3.0,)),
    "paper": StagewiseConfig(n=20000, gammas=(2.0, 3.0, 5.0, 9.0)),
}


# --- experiment -----------------------------------------------------------------------------------------------


def _run(target: Any, denoiser: Any, guider: Any, grid: torch.Tensor, n: int, seed: int) -> dict[str, Any]:
    """One setting from the common noise of ``seed``: sample k's noise depends only on (seed, k)."""
    res = sample(
        denoiser,
        guider,
        grid=grid,
        n=n,
        shape=(2,),
        seed=seed,
        dtype=torch.float64,
        cond=0,
        solver="euler",
        record_every=1,
    )
    x = res.x
    mw = mode_weights(x, target, 0)
    mv = within_mode_variance(x, target, 0)
    mass = mode_posterior_mass(res.trajectory, res.times, target, denoiser.path, 0)
    return {
        "weak_weight": mw.sample_weights[WEAK],
        "mode_weight_tv": mw.tv,
        "variance_ratio": mv.ratio,
        "variance_ratio_mean": float(np.mean([r if r is not None else np.nan for r in mv.ratio])),
        "class_fidelity": class_fidelity(x, target, 0).mean_posterior,
        "weak_posterior_mass": [m[WEAK] for m in mass.mass],
        "diverged": res.num_diverged,
        "_x": x,
    }


def _stage_map(target: Any, denoiser: Any, gamma: float, grid: torch.Tensor, n: int, seed: int) -> dict:
    """γ in one stage only (an ``interval`` in λ = t/(1 − t)), 1 elsewhere: weak-mode weight, variance, fidelity."""
    out = {}
    for stage, (t_lo, t_hi) in STAGES.items():
        lam_hi = None if t_hi >= 1 else t_hi / (1 - t_hi)
        guider = build_guider("cfg", schedule="interval", scale=gamma, lam_lo=t_lo / (1 - t_lo), lam_hi=lam_hi)
        r = _run(target, denoiser, guider, grid, n, seed)
        out[stage] = {k: r[k] for k in ("weak_weight", "variance_ratio_mean", "class_fidelity")}
    return out


def _claims(by_gamma: dict[str, dict[str, Any]], n: int) -> dict[str, bool]:
    margin = 3 * math.sqrt(0.25 * 0.75 / n)  # three binomial standard errors of the weak mode's weight
    early, late, tv_w, tv_v, fid = [], [], [], [], []
    for r in by_gamma.values():
        up, down, tv, const = r["step-up"], r["step-down"], r["tv-cfg"], r["constant"]
        early.append(down["weak_weight"] < up["weak_weight"] - margin)
        late.append(up["variance_ratio_mean"] < down["variance_ratio_mean"] - VARIANCE_MARGIN)
        tv_w.append(tv["mode_weight_tv"] < const["mode_weight_tv"] - margin)
        tv_v.append(abs(1 - tv["variance_ratio_mean"]) < abs(1 - const["variance_ratio_mean"]) - VARIANCE_MARGIN)
        fid.append(abs(tv["class_fidelity"] - const["class_fidelity"]) <= 0.01)
    return {
        "early_strong_guidance_costs_more_weak_mode_weight": all(early),
        "late_strong_guidance_shrinks_within_mode_variance_more": all(late),
        "tvcfg_lower_mode_weight_error_than_constant": all(tv_w),
        "tvcfg_within_mode_variance_closer_to_truth_than_constant": all(tv_v),
        "tvcfg_equal_class_fidelity": all(fid),
        "tvcfg_beats_constant": all(tv_w) and all(tv_v) and all(fid),
    }


def stagewise(size: str = "ci", out_dir: str | Path = "stagewise") -> dict[str, Any]:
    """Run the reproduction at ``size`` (``ci`` or ``paper``); write ``stagewise.json`` and PNGs to ``out_dir``;
    return the result dict (``results``, ``claims``, ``notes``)."""
    cfg = config_for(NAME, size, SIZES)
    path = get_path("rf")
    grid = make_grid("uniform", cfg.steps, path)
    target = get_target("multimodal-2d")
    denoiser = target.denoiser(path)
    settings = {"target": "multimodal-2d", "cond": "a", "path": "rf", "grid": "uniform", "solver": "euler"}
    with Run(NAME, SOURCE, size, out_dir, cfg, settings) as run:
        baseline = _run(target, denoiser, build_guider("cfg", scale=1.0), grid, cfg.n, cfg.seed)
        by_gamma: dict[str, dict[str, Any]] = {}
        schedules: dict[str, dict[str, list[float]]] = {}
        stage_map: dict[str, dict[str, dict[str, float]]] = {}
        for gamma in cfg.gammas:
            key = f"{gamma:g}"
            by_gamma[key], schedules[key] = {}, {}
            for name in SCHEDULES:
                guider = build_guider("cfg", schedule=name, scale=gamma)
                by_gamma[key][name] = _run(target, denoiser, guider, grid, cfg.n, cfg.seed)
                schedules[key][name] = [r["gamma"] for r in schedule_table(guider, path, grid)]
            stage_map[key] = _stage_map(target, denoiser, gamma, grid, cfg.n, cfg.seed)
        claims = _claims(by_gamma, cfg.n)
        times = grid[:-1].tolist()
        _plot(by_gamma, baseline, schedules, times, cfg, run.figure_path("stages"))
        for row in [baseline, *(r for g in by_gamma.values() for r in g.values())]:
            row.pop("_x")
        results = {
            "true_weak_weight": float(target.log_component_weight[WEAK].exp()),
            "gamma_1": baseline,
            "by_gamma": by_gamma,
            "schedules": schedules,
            "stage_map": stage_map,
            "times": times,
        }
        if not claims["tvcfg_within_mode_variance_closer_to_truth_than_constant"]:
            run.notes.append(
                "TV-CFG does not keep within-mode variance closer to the truth than constant CFG here: its peak "
                "(2γ̄ − 1, rescaled) sits at mid-trajectory, and on this target (mode widths 0.3-0.5) the middle stage "
                "0.3 < t ≤ 0.7 is where guidance shrinks within-mode variance most (stage_map), not the late one."
            )
        return run.finish(results, claims)


# --- figures --------------------------------------------------------------------------------------------------


def _plot(by_gamma, baseline, schedules, times, cfg: StagewiseConfig, file: Path) -> None:
    key = f"{cfg.gammas[len(cfg.gammas) // 2]:g}"
    row = by_gamma[key]
    fig, axes = _plots.new_figure(2, 4, width=3.0, height=2.8)
    for j, name in enumerate(SCHEDULES):
        ax = axes[0][j]
        x = row[name]["_x"].numpy()[:3000]
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.4)
        r = row[name]
        ax.set_title(f"{name} γ={key}: weak {r['weak_weight']:.3f}, var {r['variance_ratio_mean']:.2f}", fontsize=8)
        ax.set_xlim(-3.5, 3.0)
        ax.set_ylim(-2.5, 3.0)
    ax = axes[1][0]
    for name in SCHEDULES:
        ax.step(times, schedules[key][name], where="post", label=name)
    ax.invert_xaxis()
    ax.set_xlabel("t (1 = noise)")
    ax.set_ylabel("γ")
    ax.legend(fontsize=7)
    ax = axes[1][1]
    ax.plot([*times, 0.0], baseline["weak_posterior_mass"], color="k", ls="--", label="γ = 1")
    for name in SCHEDULES:
        ax.plot([*times, 0.0], row[name]["weak_posterior_mass"], label=name)
    ax.invert_xaxis()
    ax.set_xlabel("t (1 = noise)")
    ax.set_ylabel("weak-mode posterior mass")
    ax.legend(fontsize=7)
    g = [float(k) for k in by_gamma]
    for ax, metric, label in (
        (axes[1][2], "weak_weight", "weak-mode weight (truth 0.25)"),
        (axes[1][3], "variance_ratio_mean", "within-mode variance / truth"),
    ):
        for name in SCHEDULES:
            ax.plot(g, [by_gamma[k][name][metric] for k in by_gamma], marker="o", ms=4, label=name)
        ax.axhline(baseline[metric], color="k", ls="--", lw=0.8, label="γ = 1")
        ax.set_xlabel("γ (γ̄ for tv-cfg)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    for a in axes.flat:
        a.grid(alpha=0.3)
    fig.suptitle(f"stage-wise guidance on multimodal-2d (rf, Euler, {cfg.steps} uniform steps)", fontsize=9)
    _plots.save(fig, file)
