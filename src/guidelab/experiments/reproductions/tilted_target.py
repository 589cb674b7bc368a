"""Reproduction ``tilted-target``: does CFG with scale γ sample the tilted target ``p(x | c)^γ p(x)^(1−γ)``? No —
neither as an ODE nor as an SDE (Chidambaram et al., arXiv 2409.13074); a Feynman–Kac corrector on the SDE does
(Skreta et al., arXiv 2503.02819; :mod:`guidelab.fkc`).

Target: the 2-D mixture N((1, 0), I) ("+") and N((−1, 0), I) ("−"), priors ½, class "+" (the classes overlap, so
the tilted target differs clearly from the conditional; the one of tests/test_fkc.py). Exact denoisers. Compared
with exact samples of the tilted target (:class:`~guidelab.metrics.TiltedTarget`, rejection from p(x | c)):

- ``cfg-ode``: CFG, rectified flow, Euler (the probability-flow ODE), uniform grid;
- ``cfg-sde``: CFG, VE, Euler–Maruyama (the reverse SDE), EDM grid;
- ``fkc``: the same SDE sampler with :class:`~guidelab.fkc.FKCConfig` defaults (log increment, resampling per step).

Every sampler takes the same number of steps and starts from the same seed. Metric: the energy distance (unbiased,
:func:`~guidelab.metrics.distances.energy_distance`) to a reference set of n exact tilted samples, against the
two-sample *floor*: the largest |energy distance| between the reference and ``floor_repeats`` further independent
exact sets of the same n (what a perfect sampler would score). Also the mean along the class axis (x₁) against the
exact tilted mean (quadrature of the tilted marginal along x₁: the x₂ factor N(0, 1) is the same in both
components, so it cancels), the number of distinct FKC particles, the NFE and the wall time per method.

Claims: CFG (ODE) and CFG (SDE) are each > ``miss_factor`` (5) × the floor at every γ ≥ 2; FKC is within
``fkc_factor`` (8) × the floor at every γ; FKC's NFE equals the SDE sampler's. FKC is judged on the median over
``fkc_replicates`` independent populations, and 8 rather than ~1 because its particles are correlated: resampling
at every step makes the population descend from few early ancestors, so the whole population's mean moves
together. The recorded ``effective_size_from_mean_error`` (the n of i.i.d. samples whose mean would have the same
squared error) is ~100–1000 of n = 2000 at ci size, and single populations range from below the floor to ~65×
it at γ = 3 (recorded as ``ratio_to_floor_max``). At ci size the FKC median is 0.8–2.3× the floor, CFG (SDE)
10–100× and CFG (ODE) 16–320×. The same comparison runs on ``multimodal-2d`` (class "a", judged by the same
claims, prefixed ``multimodal_2d_``); at ``paper`` size γ = 5 is added and n and the steps grow.

``multimodal-2d``: class b barely overlaps class a, so the tilted target keeps the conditional's 3:1 mode weights
while CFG starves the weaker mode (0.15 instead of 0.25 at γ = 3). There FKC's weights are heavy-tailed: at some
steps a few particles near class b carry increments far above the rest, the ESS collapses (10⁻³) and FKC as the
paper writes it is no better than CFG. The official code centres each step's increments and clamps them to ±1
(``second_clamp``): with it the ESS stays above 0.9 and FKC reaches the floor. One unclamped population per γ is
recorded beside it (``fkc_unclamped``), and a note compares them. Measured at ci size (100 steps, NFE 200): CFG
(ODE) 35–230× the floor, CFG (SDE) 11–61×, clamped FKC median 0.0–2.7× (worst population 4.7×); unclamped FKC
2.9×, 109×, 89× at γ = 1.5, 2, 3 (min ESS 0.98, 0.065, 0.0019). The 100 steps matter: at 50 steps the clamp
still helps but single populations reach 12× the floor at γ = 3.
At paper size (n = 8000, 200 steps) the floor is 4× lower, and the weak mode's share moves by ±0.04–0.09 between
FKC populations at γ ≥ 3 (the particles descend from few ancestors): FKC's median is 11× (γ 3) and 62× (γ 5) the
floor, against 320× and 680× for CFG (SDE), and ``multimodal_2d_fkc_within_k_floor`` is false there.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from guidelab.experiments.reproductions import _plots
from guidelab.experiments.reproductions._common import Run, _one_thread, config_for
from guidelab.fkc import FKCConfig
from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.metrics import TiltedTarget
from guidelab.metrics.base import resolve_cond
from guidelab.metrics.distances import energy_distance
from guidelab.paths import get_path
from guidelab.sampling import sample
from guidelab.targets import get_target
from guidelab.targets.base import ExactDenoiser
from guidelab.targets.gaussian_mixture import GaussianMixture

__all__ = ["METHODS", "SIZES", "TiltedConfig", "compare", "judge", "tilted_target", "two_class_mixture"]

NAME = "tilted-target"
SOURCE = "arXiv 2409.13074, 2503.02819"
METHODS = ("cfg-ode", "cfg-sde", "fkc")
SOLVERS = {  # method -> (path, grid, solver)
    "cfg-ode": ("rf", "uniform", "euler"),
    "cfg-sde": ("ve", "edm", "euler-maruyama"),
    "fkc": ("ve", "edm", "euler-maruyama"),
}


@dataclass(frozen=True)
class TiltedConfig:
    """Sizes of one run.

    Attributes:
        n: samples per method and γ (and the size of every exact set).
        gammas: the scales γ (Ho form), increasing.
        steps: sampler steps (every method).
        floor_repeats: independent exact sets compared with the reference for the floor.
        miss_factor: "misses": energy distance > miss_factor × floor (judged at γ ≥ 2).
        fkc_factor: "within": FKC's energy distance ≤ fkc_factor × floor (judged at every γ).
        fkc_replicates: independent FKC populations per γ (seeds seed, seed + 1, ...); judged on their median.
        second_target: also run ``multimodal-2d`` (class "a"), judged by the same claims (prefixed
            ``multimodal_2d_``), with FKC's official clamp ``second_clamp`` and ``second_steps`` steps; one population
            without the clamp is recorded beside it (``fkc_unclamped``, results only).
        second_steps: steps on ``multimodal-2d`` (every method).
        second_clamp: FKC's ``clamp`` on ``multimodal-2d``.
        seed: sampler seed (exact sets use seeds 1000 + ...).
    """

    n: int
    gammas: tuple[float, ...]
    steps: int
    floor_repeats: int = 5
    fkc_replicates: int = 5
    miss_factor: float = 5.0
    fkc_factor: float = 8.0
    second_target: bool = False
    second_steps: int = 100
    second_clamp: float | None = 1.0
    seed: int = 3


SIZES = {
    "ci": TiltedConfig(n=2000, gammas=(1.5, 2.0, 3.0), steps=50, second_target=True),
    "paper": TiltedConfig(
        n=8000,
        gammas=(1.5, 2.0, 3.0, 5.0),
        steps=100,
        floor_repeats=8,
        fkc_replicates=8,
        second_target=True,
        second_steps=200,
    ),
}


def two_class_mixture() -> GaussianMixture:
    """N((1, 0), I) ("+") and N((−1, 0), I) ("−"), priors ½: overlapping, so p(x|+)^γ p(x)^(1−γ) ≠ p(x|+)."""
    return GaussianMixture([[1.0, 0.0], [-1.0, 0.0]], np.stack([np.eye(2)] * 2), None, [0, 1], ["+", "-"])


# --- experiment -----------------------------------------------------------------------------------------------


def _sample(
    target: Any, cond: Any, gamma: float, method: str, cfg: TiltedConfig, fkc: FKCConfig | None, seed: int
) -> Any:
    path_name, grid, solver = SOLVERS[method]
    path = get_path(path_name)
    return sample(
        ExactDenoiser(target, path),
        build_guider("cfg", scale=gamma),
        grid=make_grid(grid, cfg.steps, path),
        n=cfg.n,
        shape=(target.dim,),
        cond=resolve_cond(target, cond),
        solver=solver,
        seed=seed,
        dtype=torch.float64,
        fkc=fkc if method == "fkc" else None,
    )


def class_axis_density(tilted: TiltedTarget, xs: Tensor) -> Tensor:
    """The tilted marginal along x₁ at points ``xs`` (m,), normalized by the trapezoid rule (two-class mixture:
    the x₂ factor is common to both components and cancels)."""
    pts = torch.stack([xs, torch.zeros_like(xs)], dim=1)
    logd = tilted.log_unnormalized(pts)
    d = torch.exp(logd - logd.max())
    return d / torch.trapezoid(d, xs)


def compare(
    target: Any,
    cond: Any,
    cfg: TiltedConfig,
    *,
    fkc: FKCConfig | None = FKCConfig(),  # noqa: B008 (frozen)
    class_axis: bool = True,
    unclamped: bool = False,
) -> list[dict]:
    """Per γ: the floor, and per method the energy distance to the exact reference, its ratio to the floor, the
    mean along x₁ (``class_axis``), the share of each of the class's components (``mode_weights``, by the most
    likely component; ``exact_mode_weights`` from 50,000 exact tilted samples), NFE and wall time. The ``fkc`` slot
    runs ``fkc_replicates`` independent populations with the corrector ``fkc`` (seeds ``seed + r``; the first is
    the one the CFG samplers share): its ``ratio_to_floor`` is their median, ``replicates`` holds each.
    ``fkc=None`` runs that slot without the corrector (the plain SDE sampler): the control that a claim about FKC
    must fail. ``unclamped`` adds one population of ``fkc`` without its clamp (``fkc_unclamped``). Runs on one
    torch thread (as in :class:`Run`)."""
    with _one_thread():
        return [_compare_one(target, cond, g, cfg, fkc, class_axis, unclamped) for g in cfg.gammas]


def mode_weights(target: GaussianMixture, cond: Any, x: Tensor) -> list[float]:
    """The share of samples ``x`` (n, D) whose most likely component (by the component densities, equal weights)
    is each of class ``cond``'s components, in the target's component order; samples nearer another class's
    component count in none."""
    label = resolve_cond(target, cond)
    members = torch.nonzero(target.component_class == label).reshape(-1)
    logp = torch.stack([
        torch.distributions.MultivariateNormal(target.means[k], target.covariances[k]).log_prob(x.double())
        for k in range(target.means.shape[0])
    ], dim=1)  # fmt: skip
    best = logp.argmax(dim=1)
    return [float((best == k).double().mean()) for k in members.tolist()]


def _compare_one(
    target: Any, cond: Any, g: float, cfg: TiltedConfig, fkc: FKCConfig | None, class_axis: bool, unclamped: bool
) -> dict:
    xs = torch.linspace(-10.0, 12.0, 8801, dtype=torch.float64)
    tilted = TiltedTarget(target, cond, g)
    ref = tilted.sample(cfg.n, seed=1000).double()
    repeats = [energy_distance(tilted.sample(cfg.n, seed=1001 + r).double(), ref) for r in range(cfg.floor_repeats)]
    floor = max(abs(v) for v in repeats)
    exact_weights = mode_weights(target, cond, tilted.sample(50_000, seed=999))
    row: dict[str, Any] = {"gamma": g, "floor": floor, "floor_repeats": repeats, "exact_mode_weights": exact_weights}
    if class_axis:
        dens = class_axis_density(tilted, xs)
        mu = float(torch.trapezoid(xs * dens, xs))
        row["tilted_mean_x1"] = mu
        row["tilted_sd_x1"] = float(torch.trapezoid((xs - mu) ** 2 * dens, xs)) ** 0.5
        row["exact_reference_mean_x1"] = float(ref[:, 0].mean())
    slots: list[tuple[str, str, FKCConfig | None, int]] = [(m, m, fkc, cfg.fkc_replicates if m == "fkc" else 1)
                                                          for m in METHODS]  # fmt: skip
    if unclamped and fkc is not None:
        slots.append(("fkc_unclamped", "fkc", dataclasses.replace(fkc, clamp=None), 1))
    for key, method, fkc_config, replicates in slots:
        outs = []
        for r in range(replicates):
            start = time.perf_counter()
            res = _sample(target, cond, g, method, cfg, fkc_config, cfg.seed + r)
            wall = time.perf_counter() - start
            x = res.x.double()
            d = energy_distance(x, ref)
            out = {"energy_distance": d, "ratio_to_floor": d / floor, "nfe": int(res.nfe), "wall_time_s": wall,
                   "diverged": int(res.diverged.sum()), "mean": x.mean(dim=0).tolist(),
                   "mode_weights": mode_weights(target, cond, x)}  # fmt: skip
            if class_axis:
                out["mean_x1"] = float(x[:, 0].mean())
                out["mean_x1_error"] = out["mean_x1"] - row["tilted_mean_x1"]
            if method == "fkc":
                out["distinct_fraction"] = torch.unique(x, dim=0).shape[0] / cfg.n
                out["resamplings"] = res.resamplings
                out["min_ess"] = None if res.ess is None else float(res.ess.min())
            outs.append(out)
        if key != "fkc":
            row[key] = outs[0]
            continue
        ratios = [o["ratio_to_floor"] for o in outs]
        row["fkc"] = {**outs[0], "fkc": fkc and fkc.config(), "ratio_to_floor": float(np.median(ratios)),
                      "energy_distance": float(np.median([o["energy_distance"] for o in outs])),
                      "ratio_to_floor_max": max(ratios), "replicates": outs}  # fmt: skip
        if class_axis:
            # effective size of a population from its mean's squared error (exact mean and sd known): n for
            # i.i.d. samples; resampling correlates the particles and lowers it
            z2 = [((o["mean_x1"] - mu) / row["tilted_sd_x1"]) ** 2 + o["mean"][1] ** 2 for o in outs]
            row["fkc"]["mean_x1"] = float(np.mean([o["mean_x1"] for o in outs]))
            row["fkc"]["mean_x1_error"] = row["fkc"]["mean_x1"] - mu
            row["fkc"]["effective_size_from_mean_error"] = 2 * len(outs) / float(np.sum(z2))
    return row


def judge(rows: list[dict], cfg: TiltedConfig) -> tuple[dict[str, bool], dict[str, Any]]:
    """The four claims and their margins (a margin > 1 holds) from :func:`compare`'s rows."""
    judged = [r for r in rows if r["gamma"] >= 2]
    margins: dict[str, Any] = {}
    claims: dict[str, bool] = {}
    for method in ("cfg-ode", "cfg-sde"):
        worst = min(r[method]["ratio_to_floor"] for r in judged)
        key = f"{method.replace('-', '_')}_misses_tilted_target"
        margins[key] = {"min_ratio_to_floor_gamma_ge_2": worst, "required": cfg.miss_factor,
                        "margin": worst / cfg.miss_factor}  # fmt: skip
        claims[key] = worst > cfg.miss_factor
    worst = max(r["fkc"]["ratio_to_floor"] for r in rows)
    margins["fkc_within_k_floor"] = {
        "max_over_gamma_of_median_ratio_to_floor": worst,
        "k": cfg.fkc_factor,
        "margin": cfg.fkc_factor / worst if worst > 0 else 1e9,
        "worst_single_population_ratio": max(r["fkc"]["ratio_to_floor_max"] for r in rows),
        "replicates": cfg.fkc_replicates,
    }
    claims["fkc_within_k_floor"] = worst <= cfg.fkc_factor
    same = all(r["fkc"]["nfe"] == r["cfg-sde"]["nfe"] for r in rows)
    margins["fkc_nfe_equals_sde_nfe"] = {"fkc": [r["fkc"]["nfe"] for r in rows],
                                         "cfg-sde": [r["cfg-sde"]["nfe"] for r in rows]}  # fmt: skip
    claims["fkc_nfe_equals_sde_nfe"] = same
    return claims, margins


def tilted_target(size: str = "ci", out_dir: str | Path = "tilted-target") -> dict[str, Any]:
    """Run the reproduction at ``size`` (``ci`` or ``paper``); write ``tilted-target.json`` and PNGs to ``out_dir``;
    return the result dict (``results``, ``claims``, ``notes``)."""
    cfg = config_for(NAME, size, SIZES)
    settings = {"target": "N((±1, 0), I), priors 1/2", "cond": "+", "methods": {m: dict(zip(("path", "grid", "solver"),
                s, strict=True)) for m, s in SOLVERS.items()}, "fkc": FKCConfig().config(),
                "floor": "max |energy distance| of floor_repeats exact sets to the exact reference"}  # fmt: skip
    with Run(NAME, SOURCE, size, out_dir, cfg, settings) as run:
        target = two_class_mixture()
        rows = compare(target, "+", cfg)
        claims, margins = judge(rows, cfg)
        results: dict[str, Any] = {"mixture": rows, "margins": margins}
        if cfg.second_target:
            cfg2 = dataclasses.replace(cfg, steps=cfg.second_steps)
            fkc2 = FKCConfig(clamp=cfg.second_clamp)
            rows2 = compare(get_target("multimodal-2d"), "a", cfg2, fkc=fkc2, class_axis=False, unclamped=True)
            claims2, margins2 = judge(rows2, cfg2)
            results["multimodal_2d"] = {"steps": cfg.second_steps, "fkc": fkc2.config(), "rows": rows2,
                                        "margins": margins2}  # fmt: skip
            claims.update({f"multimodal_2d_{k}": v for k, v in claims2.items()})
            margins.update({f"multimodal_2d_{k}": v for k, v in margins2.items()})
            run.notes.append(_unclamped_note(rows2, cfg2))
        for key, ok in claims.items():
            if not ok:
                run.notes.append(f"not reproduced: {key}: {margins[key]}")
        g3 = next((g for g in cfg.gammas if g == 3.0), cfg.gammas[-1])
        panel = _panel_samples(target, g3, cfg)
        _plot_distance(results, cfg, run.figure_path("energy-distance"))
        _plot_class_axis(panel, g3, cfg, run.figure_path("class-axis"))
        return run.finish(results, claims)


def _unclamped_note(rows: list[dict], cfg: TiltedConfig) -> str:
    """What the official clamp does on ``multimodal-2d``, from the one unclamped population per γ."""
    parts = [f"γ {r['gamma']:g}: {r['fkc_unclamped']['ratio_to_floor']:.3g}× the floor, min ESS "
             f"{r['fkc_unclamped']['min_ess']:.2g} (clamped: {r['fkc']['replicates'][0]['ratio_to_floor']:.3g}×, "
             f"{r['fkc']['replicates'][0]['min_ess']:.2g})" for r in rows]  # fmt: skip
    return (f"multimodal-2d ({cfg.steps} steps): the classes barely overlap, so without the official clamp of the "
            "increments a few particles take most of the weight at some steps and FKC is no better than CFG; one "
            "population each, same seed: " + "; ".join(parts))  # fmt: skip


def _panel_samples(target: Any, gamma: float, cfg: TiltedConfig) -> dict[str, Any]:
    tilted = TiltedTarget(target, "+", gamma)
    xs = torch.linspace(-4.0, 7.0, 1101, dtype=torch.float64)
    out = {m: _sample(target, "+", gamma, m, cfg, FKCConfig(), cfg.seed).x.double()[:, 0].numpy() for m in METHODS}
    out["exact"] = tilted.sample(cfg.n, seed=1000).double()[:, 0].numpy()
    out["xs"], out["density"] = xs.numpy(), class_axis_density(tilted, xs).numpy()
    out["conditional"] = np.exp(-0.5 * (xs.numpy() - 1) ** 2) / np.sqrt(2 * np.pi)
    return out


# --- figures --------------------------------------------------------------------------------------------------

COLORS = {"cfg-ode": "C0", "cfg-sde": "C1", "fkc": "C2"}


def _plot_distance(results: dict[str, Any], cfg: TiltedConfig, file: Path) -> None:
    blocks = [("mixture N((±1,0), I), class +", results["mixture"])]
    if "multimodal_2d" in results:
        blocks.append(("multimodal-2d, class a", results["multimodal_2d"]["rows"]))
    fig, axes = _plots.new_figure(1, len(blocks), width=5.2, height=3.6)
    for ax, (title, rows) in zip(axes[0], blocks, strict=True):
        g = [r["gamma"] for r in rows]
        floor = [r["floor"] for r in rows]
        low = min(floor) / 10
        for m in METHODS:
            label = f"fkc (median of {cfg.fkc_replicates} populations, bar: range)" if m == "fkc" else m
            ax.plot(g, [max(r[m]["energy_distance"], low) for r in rows], "-o", ms=4, color=COLORS[m], label=label)
        for r in rows:
            d = [max(o["energy_distance"], low) for o in r["fkc"]["replicates"]]
            ax.plot([r["gamma"]] * 2, [min(d), max(d)], color=COLORS["fkc"], lw=2, alpha=0.5)
        ax.plot(g, floor, "k--", lw=1, label="exact vs exact (floor)")
        ax.plot(g, [cfg.fkc_factor * f for f in floor], ":", color="C2", lw=0.8, label=f"{cfg.fkc_factor:g} × floor")
        ax.plot(g, [cfg.miss_factor * f for f in floor], ":", color="C3", lw=0.8, label=f"{cfg.miss_factor:g} × floor")
        ax.set_yscale("log")
        ax.set_xlabel("γ")
        ax.set_ylabel("energy distance to exact tilted samples")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.suptitle(f"distance to the tilted target p(x|c)^γ p(x)^(1−γ)\n(n = {cfg.n}, {cfg.steps} steps; "
                 "values ≤ 0 drawn at the bottom)", fontsize=9)  # fmt: skip
    _plots.save(fig, file)


def _plot_class_axis(panel: dict[str, Any], gamma: float, cfg: TiltedConfig, file: Path) -> None:
    fig, axes = _plots.new_figure(1, 2, width=4.2, height=3.4)
    ax = axes[0][0]
    bins = np.linspace(-4.0, 7.0, 56)
    for m in METHODS:
        ax.hist(panel[m], bins=bins, density=True, histtype="step", color=COLORS[m], lw=1.2, label=m)
    ax.plot(panel["xs"], panel["density"], "k", lw=1.6, label="exact tilted density")
    ax.plot(panel["xs"], panel["conditional"], color="0.5", ls="--", lw=1, label="p(x₁ | +) (γ = 1)")
    ax.set_xlabel("x₁ (class axis)")
    ax.set_ylabel("density")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    ax = axes[0][1]
    rng = np.random.default_rng(0)
    y = rng.normal(size=min(cfg.n, 1500))
    for k, m in enumerate(("exact", *METHODS)):
        v = panel[m][: len(y)]
        ax.scatter(v, np.full_like(v, -k) + 0.15 * y, s=2, alpha=0.3, color=COLORS.get(m, "k"))
        ax.plot([v.mean()], [-k], "|", ms=16, mew=2, color="k")
    ax.axvline(float(np.trapezoid(panel["xs"] * panel["density"], panel["xs"])), color="k", ls=":", lw=0.8)
    ax.set_yticks([0, -1, -2, -3], ["exact", *METHODS])
    ax.set_xlabel("x₁ (bar: sample mean; dotted: tilted mean)")
    ax.grid(alpha=0.3)
    fig.suptitle(f"samples along the class axis at γ = {gamma:g}", fontsize=9)
    _plots.save(fig, file)
