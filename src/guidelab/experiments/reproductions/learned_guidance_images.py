"""Reproduction ``learned-guidance-images``: guidance weights ω(c, s, t) learned by self-consistency on an image
model's own forward process (Learn to Guide, Galashov et al., arXiv 2510.00815; docs/methods.md §4; the exact-target
sibling is ``learned-guidance``), against the best constant γ and the best interval found by grid search.

The paper reports FID 2.40 → 1.99 on ImageNet 64 (learned against constant guidance). Here: the shipped UNet of the
dataset (rf, x0; digits at ci, MNIST at paper), ω learned by :func:`guidelab.learn.learn` with ``denoiser="image"``
(its data: the train split the model was trained on; proposals and true particles from the model's own forward
process ``x_t = α_t·x0 + σ_t·ε``); Euler on a uniform grid for every method.

Selection and evaluation are separate: the grids (constant γ; interval (λ_lo, λ_hi] × γ, Kynkäänniemi et al.,
arXiv 2404.07724) are searched on the selection seed, each method's best is the lowest Fréchet distance (classifier
features, against the test split) **among the settings whose accuracy reaches** ``accuracy_target`` (the matched-
accuracy constraint), and every method, the learned ω included (it never sees the metric), is then measured on a fresh
evaluation seed. The learned ω beats a baseline when its evaluation FD is lower **at matched accuracy**: its
evaluation accuracy at least the baseline's minus ``ACCURACY_SLACK`` (one point). ``floor`` is real train images
against the test split at the evaluation size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from guidelab.experiments.reproductions._common import Run, config_for, per_copy
from guidelab.experiments.reproductions._image_lab import ImageLab, lab, save_grid
from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.guiders.learned import LearnedGuider
from guidelab.learn import LearnConfig, learn
from guidelab.learn.plots import plot_omega

__all__ = ["SIZES", "LearnedImagesConfig", "learned_guidance_images"]

NAME = "learned-guidance-images"
SOURCE = "arXiv 2510.00815"
ACCURACY_SLACK = 0.01  # "matched accuracy" of the comparison: the learned ω's accuracy ≥ the baseline's − this


@dataclass(frozen=True)
class LearnedImagesConfig:
    """Sizes of one run.

    Attributes:
        dataset: ``digits`` or ``mnist``.
        per_class: samples per class and setting (selection and evaluation alike).
        gammas: the constant-γ grid (increasing, the first 1).
        intervals: the (λ_lo, λ_hi) candidates of interval guidance (λ_hi None: no upper bound).
        interval_gammas: γ inside the interval.
        accuracy_target: settings below it are not selected.
        steps: Euler steps.
        learn: :class:`~guidelab.learn.LearnConfig` fields (denoiser, model and seed are set here).
        selection_seed, evaluation_seed: the noise seeds of the grid search and of the comparison.
    """

    dataset: str
    per_class: int
    gammas: tuple[float, ...]
    intervals: tuple[tuple[float, float | None], ...]
    interval_gammas: tuple[float, ...]
    accuracy_target: float
    steps: int
    learn: tuple[tuple[str, Any], ...]
    selection_seed: int = 11
    evaluation_seed: int = 21


SIZES = {
    "ci": LearnedImagesConfig(
        dataset="digits",
        per_class=8,
        gammas=(1.0, 1.5, 2.0),
        intervals=((0.19, 1.61), (1.0, None)),
        interval_gammas=(2.0,),
        accuracy_target=0.99,
        steps=10,
        learn=(
            ("steps", 30),
            ("batch_size", 16),
            ("particles", 2),
            ("holdout", 32),
            ("eval_every", 10),
            ("patience", 0),
            ("hidden", 32),
            ("lr", 1e-2),
        ),
    ),
    "paper": LearnedImagesConfig(
        dataset="mnist",
        per_class=16,
        gammas=(1.0, 1.5, 2.0, 3.0),
        intervals=((0.19, 1.61), (1.0, None)),
        interval_gammas=(2.0, 3.0),
        accuracy_target=0.98,
        steps=12,
        learn=(
            ("steps", 150),
            ("batch_size", 16),
            ("particles", 2),
            ("holdout", 64),
            ("eval_every", 25),
            ("patience", 0),
            ("hidden", 32),
            ("lr", 1e-2),
        ),
    ),
}


def _interval_label(lo: float, hi: float | None) -> str:
    return f"({lo:g}, {'∞' if hi is None else f'{hi:g}'}]"


def _grid_search(lab_: ImageLab, labels: torch.Tensor, grid: torch.Tensor, cfg: LearnedImagesConfig) -> dict:
    """Constant γ and interval settings measured on the selection seed; the best of each (lowest FD with accuracy
    ≥ the target)."""
    n = labels.numel()
    seed = cfg.selection_seed
    x = lab_.sample(build_guider("cfg", scale=per_copy(cfg.gammas, n).float()), labels, grid, seed, len(cfg.gammas))
    constant = [
        {"gamma": g, **lab_.measure(c, labels)} for g, c in zip(cfg.gammas, x.chunk(len(cfg.gammas)), strict=True)
    ]
    interval = []
    for lo, hi in cfg.intervals:
        scales = per_copy(cfg.interval_gammas, n).float()
        guider = build_guider("cfg", schedule="interval", scale=scales, lam_lo=lo, lam_hi=hi)
        x = lab_.sample(guider, labels, grid, seed, len(cfg.interval_gammas))
        for g, c in zip(cfg.interval_gammas, x.chunk(len(cfg.interval_gammas)), strict=True):
            interval.append({"gamma": g, "lam_lo": lo, "lam_hi": hi, **lab_.measure(c, labels)})

    def best(rows: list[dict]) -> dict | None:
        ok = [r for r in rows if r["accuracy"] >= cfg.accuracy_target]
        return min(ok, key=lambda r: r["fd"]) if ok else None

    return {
        "constant": constant,
        "interval": interval,
        "best_constant": best(constant),
        "best_interval": best(interval),
    }


def _learn(lab_: ImageLab, cfg: LearnedImagesConfig) -> Any:
    config = LearnConfig(denoiser="image", model=cfg.dataset, seed=0, threads=None, **dict(cfg.learn))
    return learn(config)


def learned_guidance_images(size: str = "ci", out_dir: str | Path = NAME) -> dict[str, Any]:
    """Run the reproduction at ``size`` (``ci``: digits; ``paper``: MNIST); write ``learned-guidance-images.json``
    and PNGs (ω per class over time, samples) to ``out_dir``; return the result dict."""
    cfg = config_for(NAME, size, SIZES)
    settings = {
        "path": "rf",
        "grid": "uniform",
        "solver": "euler",
        "model": cfg.dataset,
        "classifier": f"{cfg.dataset}-classifier",
        "selection": f"lowest FD among settings with accuracy ≥ {cfg.accuracy_target} on seed {cfg.selection_seed}",
        "evaluation": f"every method on seed {cfg.evaluation_seed}; learned beats a baseline when its FD is lower "
        f"and its accuracy ≥ the baseline's − {ACCURACY_SLACK}",
        "paper": "FID 2.40 → 1.99 on ImageNet 64 (learned vs constant guidance)",
    }
    with Run(NAME, SOURCE, size, out_dir, cfg, settings) as run:
        lab_ = lab(cfg.dataset)
        grid = make_grid("uniform", cfg.steps, lab_.path)
        labels = lab_.labels(cfg.per_class)
        search = _grid_search(lab_, labels, grid, cfg)
        learned = _learn(lab_, cfg)
        guider = LearnedGuider.from_weights(learned.weights, learned.meta)
        table = guider.table(lab_.path, grid)  # (C, N) ω per class and step
        methods: dict[str, Any] = {"gamma_1": build_guider("cfg", scale=1.0)}
        bc, bi = search["best_constant"], search["best_interval"]
        if bc is not None:
            methods["best_constant"] = build_guider("cfg", scale=bc["gamma"])
        if bi is not None:
            methods["best_interval"] = build_guider(
                "cfg", schedule="interval", scale=bi["gamma"], lam_lo=bi["lam_lo"], lam_hi=bi["lam_hi"]
            )
        methods["learned"] = guider
        evaluation, images = {}, {}
        for name, g in methods.items():
            if name == "best_constant" and bc is not None and bc["gamma"] == 1.0:  # the same sampler as γ = 1
                evaluation[name], images[name] = evaluation["gamma_1"], images["gamma_1"]
                continue
            x = lab_.sample(g, labels, grid, cfg.evaluation_seed)
            evaluation[name] = lab_.measure(x, labels)
            images[name] = x
        results = {
            "selection": search,
            "evaluation": evaluation,
            "floor": lab_.floor(labels, cfg.evaluation_seed + 1),
            "learning": {
                "steps_done": learned.steps_done,
                "best_step": learned.best_step,
                "history": learned.history,
                "wall_time_s": learned.wall_time,
            },
            "omega": {
                "t": grid[:-1].tolist(),
                "per_class": {n: table[c].tolist() for c, n in enumerate(guider.class_names)},
            },
            "omega_mean": float(table.mean()),
        }
        claims = _claims(results, cfg)
        _notes(run, results, claims, cfg)
        plot_omega(
            {
                f"{cfg.dataset} (rf, {cfg.steps} Euler steps)": {
                    "t": results["omega"]["t"],
                    "omega": results["omega"]["per_class"],
                }
            },
            run.figure_path("omega"),
            title="learned ω per class (γ = 1 + ω)",
        )
        picks = lab_.labels(1) * cfg.per_class
        save_grid(
            [(_row_label(k, results), v[picks]) for k, v in images.items()],
            run.figure_path("samples"),
            f"{cfg.dataset}: one sample per class (evaluation seed)",
        )
        return run.finish(results, claims)


def _row_label(name: str, results: dict[str, Any]) -> str:
    sel = results["selection"]
    if name == "best_constant":
        return f"constant γ={sel['best_constant']['gamma']:g}"
    if name == "best_interval":
        r = sel["best_interval"]
        return f"interval γ={r['gamma']:g} {_interval_label(r['lam_lo'], r['lam_hi'])}"
    return {"gamma_1": "γ = 1", "learned": "learned ω"}.get(name, name)


def _claims(results: dict[str, Any], cfg: LearnedImagesConfig) -> dict[str, bool]:
    ev = results["evaluation"]
    learned = ev["learned"]
    ok = learned["accuracy"] >= cfg.accuracy_target
    out = {"learned_reaches_accuracy_target": ok}
    for base in ("best_constant", "best_interval"):
        other = ev.get(base)
        out[f"learned_lower_fd_than_{base}"] = (
            other is not None
            and learned["fd"] < other["fd"]
            and learned["accuracy"] >= other["accuracy"] - ACCURACY_SLACK
        )
    out["learned_omega_finite_and_nonnegative"] = all(
        math.isfinite(v) and v >= 0 for row in results["omega"]["per_class"].values() for v in row
    )
    return out


def _notes(run: Run, results: dict[str, Any], claims: dict[str, bool], cfg: LearnedImagesConfig) -> None:
    ev, sel = results["evaluation"], results["selection"]
    for base in ("best_constant", "best_interval"):
        if sel[base] is None:
            run.notes.append(f"{base}: no setting of its grid reaches accuracy {cfg.accuracy_target}")
            continue
        if not claims[f"learned_lower_fd_than_{base}"]:
            lower = ev["learned"]["fd"] < ev[base]["fd"]
            why = "but its accuracy is lower by more than the slack" if lower else "not below it"
            run.notes.append(
                f"learned ω: FD {ev['learned']['fd']:.3g} (accuracy {ev['learned']['accuracy']:.3f}) against the "
                f"{base.replace('_', ' ')}'s {ev[base]['fd']:.3g} (accuracy {ev[base]['accuracy']:.3f}) on the "
                f"evaluation seed, {why}; γ = 1 scores {ev['gamma_1']['fd']:.3g}, real data "
                f"{results['floor']['fd']:.3g}"
            )
    if not claims["learned_reaches_accuracy_target"]:
        run.notes.append(
            f"learned ω: evaluation accuracy {ev['learned']['accuracy']:.3f} is below the target {cfg.accuracy_target}"
        )
    bc = sel["best_constant"]
    if bc is not None and bc["gamma"] == cfg.gammas[0]:
        run.notes.append(
            f"the grid search picks γ = 1: this model needs no guidance for its accuracy (γ = 1 reaches "
            f"{bc['accuracy']:.3f}), so any guidance costs FD; the learned ω (mean {results['omega_mean']:.3f}) is "
            "small, as the paper finds for an accurate denoiser"
        )
    run.notes.append(
        f"the paper's ImageNet-64 gain (FID 2.40 → 1.99) is measured with a model that needs guidance; here the "
        f"learned ω was fitted in {results['learning']['steps_done']} steps "
        f"({results['learning']['wall_time_s']:.1f} s) on the {cfg.dataset} train split"
    )
