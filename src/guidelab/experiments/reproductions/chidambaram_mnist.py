"""Reproduction ``chidambaram-mnist``: guidance on a binary-condition image model pushes samples past the positive
class, and the largest γ with a monotone mean projected trajectory is proposed as the scale to use (Chidambaram et
al., arXiv 2409.13074, §5 and Fig. 3; the exact-target side is ``chidambaram-edge``).

The model has a binary condition, "digit 0" (label 0) against "every other digit" (label 1), as in the paper's MNIST
experiment: ``digits-0-vs-rest`` at ``ci`` size, ``mnist-0-vs-rest`` at ``paper`` size (UNets trained by
``guidelab train --one-vs-rest 0``; models/weights/README.md).
CFG on label 0 at each γ (Ho form), Euler on a uniform rf grid, every γ from the same noise.

The axis: d = μ₀ − μ_rest, the difference of the two classes' mean training images (flattened). A vector x projects
to ``p(x) = ⟨x − μ_rest, d⟩/‖d‖²``, so the "other digits" mean sits at 0 and the digit-0 mean at 1. Measured per γ:

- the mean and s.d. over samples of p(x0̂_t) along the trajectory (the guided x0̂ at every evaluation), and beside it
  the mean of the state's ``⟨x_t − (1 − t)μ_rest, d⟩/‖d‖²`` (rf: x_t = (1 − t)x0 + tε, so a sample that does not
  move on the axis gives (1 − t)·p(x0));
- the final samples' projection: mean, and the fraction beyond the 95th percentile of the held-out real zeros'
  projections ("the far side of the positive class");
- quality with the shipped 10-class classifier: accuracy (argmax is digit 0), diversity (the mean pairwise distance
  of the samples' classifier features over that of the held-out real zeros), accuracy × min(diversity, 1) (spread
  beyond the real zeros' is not rewarded: off-class samples are diverse), and the Fréchet distance to the held-out
  real zeros in the same features.

The prescription: a trajectory is monotone when its mean never moves against its overall direction by more than
``monotone_tol`` (in units of ‖d‖: the class-mean distance); the prescribed γ is the largest γ of the grid below the
first non-monotone one. The measured best γ: the argmax of accuracy × diversity, and the argmin of the Fréchet
distance. "Near" is within a factor of 2 in γ.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from guidelab.data import load_dataset
from guidelab.experiments.reproductions import _plots
from guidelab.experiments.reproductions._common import Run, config_for, is_nondecreasing, per_copy
from guidelab.experiments.reproductions._image_lab import (
    guided_images,
    image_grid,
    load_lab,
    logits_features,
    reference,
)
from guidelab.guiders import build_guider
from guidelab.metrics.images import frechet_distance

__all__ = ["SIZES", "BinaryConfig", "chidambaram_mnist", "is_monotone", "prescribed_gamma"]

NAME = "chidambaram-mnist"
SOURCE = "arXiv 2409.13074"
POSITIVE = 0  # the digit of label 0


@dataclass(frozen=True)
class BinaryConfig:
    """Sizes of one run.

    Attributes:
        model: the shipped binary-condition denoiser (label 0: the digit 0, label 1: every other digit).
        n: samples per γ (the same n noises for every γ).
        gammas: the scales γ (Ho form), increasing from 1.
        steps: Euler steps on the uniform grid.
        monotone_tol: how far (in class-mean distances) the mean projection may move against its direction and
            still count as monotone.
        seed: seed of the starting noise.
    """

    model: str
    n: int
    gammas: tuple[float, ...]
    steps: int = 16
    monotone_tol: float = 0.02
    seed: int = 0


SIZES = {
    "ci": BinaryConfig(model="digits-0-vs-rest", n=32, gammas=(1.0, 2.0, 3.0, 5.0, 8.0, 12.0, 20.0), steps=12),
    "paper": BinaryConfig(
        model="mnist-0-vs-rest", n=64, gammas=(1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 20.0)
    ),
}


# --- measures -------------------------------------------------------------------------------------------------


def is_monotone(values: list[float], tol: float) -> bool:
    """Whether ``values`` never move against their overall direction (last − first) by more than ``tol``."""
    if values[-1] >= values[0]:
        return is_nondecreasing(values, tol)
    return is_nondecreasing([-v for v in values], tol)


def prescribed_gamma(gammas: list[float], monotone: list[bool]) -> float | None:
    """The paper's rule: the largest γ below the first whose mean trajectory is not monotone (the last γ when all
    are); None when even the first γ's is not (no admissible γ on the grid)."""
    for k, ok in enumerate(monotone):
        if not ok:
            return gammas[k - 1] if k > 0 else None
    return gammas[-1]


def _mean_pairwise(feats: Tensor) -> float:
    return float(torch.pdist(feats).mean())


def _axis(data: str) -> tuple[Tensor, Tensor]:
    """μ_rest and d = μ₀ − μ_rest of the training split, flattened, float64."""
    train = load_dataset(data, "train")
    flat = train.images.double().flatten(1)
    pos = train.labels == POSITIVE
    mu0, mur = flat[pos].mean(0), flat[~pos].mean(0)
    return mur, mu0 - mur


def _project(x: Tensor, origin: Tensor, d: Tensor) -> Tensor:
    """p(x) = ⟨x − origin, d⟩/‖d‖² over the last three dimensions."""
    flat = x.double().flatten(-3)
    return (flat - origin) @ d / d.dot(d)


def _claims(rows: list[dict[str, Any]], summary: dict[str, Any]) -> dict[str, bool]:
    means = [r["final_projection_mean"] for r in rows]
    far = [r["beyond_real_q95"] for r in rows]
    g_p = summary["prescribed_gamma"]
    near = {  # no admissible γ: the prescription is near nothing
        key: g_p is not None and abs(math.log2(g_p / summary[key])) <= 1.0
        for key in ("best_gamma_acc_div", "best_gamma_fd")
    }
    fd = [r["fd"] for r in rows]
    return {
        "samples_move_past_the_positive_class": is_nondecreasing(means, tol=0.02)
        and means[-1] > summary["real_zero_projection_q95"]
        and far[-1] >= 0.5
        and far[0] <= 0.2,
        "fd_turns_worse_at_large_gamma": fd[-1] > 1.2 * min(fd),
        "prescribed_gamma_near_best_by_accuracy_x_diversity": near["best_gamma_acc_div"],
        "prescribed_gamma_near_best_by_fd": near["best_gamma_fd"],
    }


def chidambaram_mnist(size: str = "ci", out_dir: str | Path = NAME) -> dict[str, Any]:
    """Run the reproduction at ``size`` (``ci`` or ``paper``); write ``chidambaram-mnist.json`` and PNGs to
    ``out_dir``; return the result dict (``results``, ``claims``, ``notes``)."""
    cfg = config_for(NAME, size, SIZES)
    if cfg.gammas[0] != 1.0 or list(cfg.gammas) != sorted(cfg.gammas):
        raise ValueError(f"gammas: must increase from 1, got {cfg.gammas}")
    settings = {
        "model": cfg.model,
        "cond": "label 0 (digit 0) of a 0-vs-rest model",
        "guider": "cfg",
        "path": "rf",
        "grid": "uniform",
        "solver": "euler",
        "classifier": "the dataset's 10-class classifier",
        "reference": "val + test splits",
    }
    with Run(NAME, SOURCE, size, out_dir, cfg, settings) as run:
        lab = load_lab(cfg.model)
        names = getattr(lab.model, "class_names", None)
        if names is None or names[0] != str(POSITIVE):
            raise ValueError(f"model: {cfg.model!r} is not a {POSITIVE}-vs-rest model (classes {names})")
        G = len(cfg.gammas)
        out = guided_images(
            lab, build_guider("cfg", scale=per_copy(cfg.gammas, cfg.n)), G, cfg.n, 0, cfg.steps, cfg.seed
        )
        origin, d = _axis(lab.data)
        times = out.times.tolist()
        p_x0 = _project(out.x0_hat, origin, d)  # (steps, G, n)
        t = out.times.double().reshape(-1, 1, 1)
        p_xt = (out.x_t.double().flatten(-3) - (1 - t).unsqueeze(-1) * origin) @ d / d.dot(d)
        p_final = _project(out.x, origin, d)  # (G, n)
        ref = reference(lab.data)
        zeros = ref.of_class(POSITIVE)
        p_real = _project(zeros, origin, d)
        q95 = float(torch.quantile(p_real, 0.95))
        _, real_feats = logits_features(lab, zeros)
        real_div = _mean_pairwise(real_feats)
        rows = []
        for k, gamma in enumerate(cfg.gammas):
            logits, feats = logits_features(lab, out.x[k])
            acc = float((logits.argmax(1) == POSITIVE).double().mean())
            div = _mean_pairwise(feats) / real_div
            mean_traj = p_x0[:, k].mean(1).tolist()
            rows.append(
                {
                    "gamma": gamma,
                    "x0_hat_projection_mean": mean_traj,
                    "x0_hat_projection_sd": p_x0[:, k].std(1).tolist(),
                    "xt_projection_mean": p_xt[:, k].mean(1).tolist(),
                    "monotone": is_monotone(mean_traj, cfg.monotone_tol),
                    "largest_reversal": _largest_reversal(mean_traj),
                    "xt_monotone": is_monotone(
                        [*p_xt[:, k].mean(1).tolist(), float(p_final[k].mean())], cfg.monotone_tol
                    ),
                    "final_projection_mean": float(p_final[k].mean()),
                    "final_projection_sd": float(p_final[k].std()),
                    "beyond_real_q95": float((p_final[k] > q95).double().mean()),
                    "accuracy": acc,
                    "diversity": div,
                    "acc_x_diversity": acc * min(div, 1.0),
                    "fd": frechet_distance(feats, real_feats),
                    "diverged": out.diverged[k],
                }
            )
        gammas = list(cfg.gammas)
        summary = {
            "prescribed_gamma": prescribed_gamma(gammas, [r["monotone"] for r in rows]),
            "prescribed_gamma_xt": prescribed_gamma(gammas, [r["xt_monotone"] for r in rows]),
            "best_gamma_acc_div": gammas[int(np.argmax([r["acc_x_diversity"] for r in rows]))],
            "best_gamma_fd": gammas[int(np.argmin([r["fd"] for r in rows]))],
            "real_zero_projection_mean": float(p_real.mean()),
            "real_zero_projection_q95": q95,
            "real_zero_count": int(zeros.shape[0]),
            "fd_floor_note": "FD of n generated against the held-out zeros; compare across γ, not with other sizes",
        }
        claims = _claims(rows, summary)
        if all(r["monotone"] for r in rows):
            run.notes.append(
                f"The mean projected x0̂ trajectory is monotone (within {cfg.monotone_tol}) at every γ up to "
                f"{gammas[-1]:g}, so the rule prescribes the largest γ tried."
            )
        g_xt = summary["prescribed_gamma_xt"]
        reversals = ", ".join(f"{r['gamma']:g}: {r['largest_reversal']:.3f}" for r in rows)
        run.notes.append(
            f"The rule depends on the tolerance {cfg.monotone_tol}: the largest reversal of the mean projected x0̂ "
            f"trajectory per γ is {reversals} (x0̂ starts at x0̂_u + γ(x0̂_c − x0̂_u), far past the class, and falls "
            f"back; a non-monotone trajectory rises again near the end). The x_t path's rule gives "
            f"{'no γ (even γ = 1 is not monotone)' if g_xt is None else f'{g_xt:g}'}."
        )
        if summary["prescribed_gamma"] == gammas[0]:
            run.notes.append(
                f"The rule prescribes the smallest γ tried ({gammas[0]:g}): the next trajectory reverses by "
                f"{rows[1]['largest_reversal']:.3f} against the tolerance {cfg.monotone_tol}, so agreement with a "
                "best γ of 1 sits at the edge of the grid and turns on the tolerance."
            )
        accs = sorted({r["accuracy"] for r in rows})
        if not claims["prescribed_gamma_near_best_by_accuracy_x_diversity"]:
            run.notes.append(
                f"Not reproduced by accuracy × diversity: the prescribed γ = {summary['prescribed_gamma']:g}, the "
                f"best {summary['best_gamma_acc_div']:g}. Accuracy ranges over {accs[0]:.3f}-{accs[-1]:.3f}, so the "
                "product follows the feature spread, which falls with γ and grows again at large γ as samples leave "
                "the data (saturated strokes spread in the classifier's features): no quality measure here."
            )
        if not claims["prescribed_gamma_near_best_by_fd"]:
            fds = ", ".join(f"{r['gamma']:g}: {r['fd']:.2f}" for r in rows)
            run.notes.append(
                f"Not reproduced by Fréchet distance: the prescribed γ = {summary['prescribed_gamma']:g}, the best "
                f"{summary['best_gamma_fd']:g} (FD by γ: {fds}). Where FD is least at γ = 1, guidance only costs "
                "quality on this model, and the rule prescribes more guidance than quality supports."
            )
        results = {"times": times, "by_gamma": rows, **summary}
        _plot_trajectories(rows, times, summary, run.figure_path("trajectories"))
        _plot_quality(rows, summary, run.figure_path("quality"))
        _plot_samples(out.x, cfg.gammas, run.figure_path("samples"))
        return run.finish(results, claims)


def _largest_reversal(values: list[float]) -> float:
    """The largest move against the overall direction between two evaluations (0 for a monotone series)."""
    sign = 1.0 if values[-1] >= values[0] else -1.0
    return max([0.0, *(sign * (a - b) for a, b in itertools.pairwise(values))])


# --- figures --------------------------------------------------------------------------------------------------


def _plot_trajectories(rows: list[dict[str, Any]], times: list[float], summary: dict[str, Any], file: Path) -> None:
    fig, axes = _plots.new_figure(1, 2, width=4.2, height=3.3)
    for j, r in enumerate(rows):
        style = "-" if r["monotone"] else "--"
        _plots.band(
            axes[0][0],
            times,
            r["x0_hat_projection_mean"],
            r["x0_hat_projection_sd"],
            label=f"γ = {r['gamma']:g}{'' if r['monotone'] else ' (not monotone)'}",
            color=f"C{j % 10}",
        )
        axes[0][0].lines[-1].set_linestyle(style)
        axes[0][1].plot(times, r["xt_projection_mean"], color=f"C{j % 10}", label=f"γ = {r['gamma']:g}")
    for ax in axes[0]:
        ax.axhline(0.0, color="0.5", lw=0.8)
        ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
        ax.invert_xaxis()
        ax.set_xlabel("t (1 = noise)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("p(x0̂): 0 = other digits' mean, 1 = zeros' mean")
    axes[0][0].set_yscale("symlog", linthresh=2.0)
    axes[0][0].legend(fontsize=6)
    axes[0][1].set_ylabel("mean ⟨x_t − (1 − t)μ_rest, d⟩/‖d‖²")
    axes[0][1].legend(fontsize=6)
    fig.suptitle(f"projected trajectories (mean ± 1 s.d.); prescribed γ = {summary['prescribed_gamma']:g}", fontsize=9)
    _plots.save(fig, file)


def _plot_quality(rows: list[dict[str, Any]], summary: dict[str, Any], file: Path) -> None:
    g = [r["gamma"] for r in rows]
    fig, axes = _plots.new_figure(1, 3, width=3.4, height=3.0)
    ax = axes[0][0]
    ax.plot(
        g, [r["final_projection_mean"] for r in rows], marker="o", ms=3, label="mean projection of the final samples"
    )
    ax.axhline(summary["real_zero_projection_mean"], color="0.4", ls=":", label="real zeros: mean")
    ax.axhline(summary["real_zero_projection_q95"], color="0.4", ls="--", label="real zeros: 95th pct")
    ax.set_ylabel("projection of the final samples")
    ax.legend(fontsize=6)
    ax = axes[0][1]
    for key, label in (("accuracy", "accuracy"), ("diversity", "diversity / real"), ("acc_x_diversity", "product")):
        ax.plot(g, [r[key] for r in rows], marker="o", ms=3, label=label)
    ax.legend(fontsize=6)
    ax = axes[0][2]
    ax.plot(g, [r["fd"] for r in rows], marker="o", ms=3, color="C3")
    ax.set_ylabel("Fréchet distance to real zeros")
    for ax in axes[0]:
        if summary["prescribed_gamma"] is not None:
            ax.axvline(summary["prescribed_gamma"], color="k", lw=0.8, label="prescribed γ")
        ax.set_xlabel("γ")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"prescribed γ {summary['prescribed_gamma']:g} (black) · best by acc × div {summary['best_gamma_acc_div']:g}"
        f" · best by FD {summary['best_gamma_fd']:g}",
        fontsize=9,
    )
    _plots.save(fig, file)


def _plot_samples(x: Tensor, gammas: tuple[float, ...], file: Path) -> None:
    cols = min(len(gammas), 7)
    pick = np.unique(np.round(np.linspace(0, len(gammas) - 1, cols)).astype(int))
    fig, axes = _plots.new_figure(1, len(pick), width=2.2, height=2.4)
    for j, k in enumerate(pick):
        image_grid(axes[0][j], x[k, :16], 4, f"γ = {gammas[k]:g}")
    fig.suptitle("final samples of label 0 (digit 0), same noise across γ", fontsize=9)
    _plots.save(fig, file)
