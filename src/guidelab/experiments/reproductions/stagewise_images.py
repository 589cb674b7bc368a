"""Reproduction ``stagewise-images``: the stage-wise claims of Jin, Shi & Gu (arXiv 2509.22007) on a trained image
model (the exact-target side is ``stagewise``).

On the shipped digits UNet (``ci``; the MNIST UNet at ``paper`` size; rf, x0), Euler on a uniform grid, every
schedule from the same noise, at **equal mean scale** γ̄ (the Δs-weighted mean of the per-step scales,
s = σ/(α + σ), which is the plain mean on a uniform rf grid): ``constant`` γ̄; ``step-down`` (early strong: scale
2γ̄ for the first 25% of steps, then 2γ̄/3, the official code's ratio 3); ``step-up`` (late strong: 0.4γ̄, then
1.2γ̄; ratio 3); ``tv-cfg`` with γ̄. The run checks that the four means are equal (``mean_scale``).

Style clusters: for each class, k-means (scikit-learn, ``k`` clusters, seeded) on the shipped classifier's features
of the class's training images; a sample of class c is assigned to the nearest centroid of class c. Measured per
schedule, averaged over the classes:

- between-style diversity: ``coverage`` (the fraction of the k clusters that receive a sample) and the cluster
  entropy ratio exp H(q)/exp H(π) of the samples' cluster shares q against the held-out real images' shares π;
- within-cluster variation: the mean squared feature distance of a sample to its centroid, over that of the held-out
  real images (val + test) to theirs;
- accuracy (the classifier) and the Fréchet distance of all the samples to all the held-out real images of the
  classes, in the classifier's features.

Claims (each by ``margin``): early strong guidance (step-down) covers fewer clusters and has a lower entropy ratio
than late strong (step-up); late strong guidance has less within-cluster variation than early strong; TV-CFG has a
lower Fréchet distance than constant CFG (relative), at equal accuracy (accuracies within ``acc_margin``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from guidelab.data import load_dataset
from guidelab.experiments.reproductions import _plots
from guidelab.experiments.reproductions._common import Run, config_for
from guidelab.experiments.reproductions._image_lab import (
    guided_images,
    image_grid,
    load_lab,
    logits_features,
    reference,
)
from guidelab.grids import make_grid
from guidelab.guiders import build_guider, schedule_table
from guidelab.metrics.images import frechet_distance
from guidelab.validation import did_you_mean

__all__ = ["SIZES", "StagewiseImagesConfig", "schedule_params", "stagewise_images"]

NAME = "stagewise-images"
SOURCE = "arXiv 2509.22007"
SCHEDULES = ("constant", "step-down", "step-up", "tv-cfg")


@dataclass(frozen=True)
class StagewiseImagesConfig:
    """Sizes of one run.

    Attributes:
        model: the shipped 10-class denoiser (``digits`` at ci, ``mnist`` at paper size).
        n_per_class: samples per class and schedule (the same noises for every schedule).
        classes: the digits sampled.
        gamma_bar: the mean scale γ̄ every schedule has.
        k: k-means clusters per class.
        steps: Euler steps on the uniform grid (a multiple of 4, so the step probes switch at exactly 25%).
        acc_margin: accuracies within this count as equal.
        margin: the smallest difference counted: of coverage and entropy ratios (absolute), of within-cluster
            ratios (absolute), of Fréchet distances (relative).
        seed: seed of the starting noise and of k-means.
    """

    model: str
    n_per_class: int
    classes: tuple[int, ...]
    gamma_bar: float = 3.0
    k: int = 4
    steps: int = 12
    acc_margin: float = 0.05
    margin: float = 0.05
    seed: int = 0


SIZES = {
    "ci": StagewiseImagesConfig(model="digits", n_per_class=8, classes=tuple(range(10)), steps=8),
    "paper": StagewiseImagesConfig(model="mnist", n_per_class=16, classes=tuple(range(10)), steps=16),
}


def schedule_params(name: str, gamma_bar: float) -> dict[str, Any]:
    """The guider parameters of schedule ``name`` with mean scale γ̄ on a uniform grid whose step count is a
    multiple of 4 (step probes switch after 25% of the steps; high/low ratio 3 as the official code)."""
    if name == "constant":
        return {"scale": gamma_bar}
    if name == "tv-cfg":
        return {"schedule": "tv-cfg", "scale": gamma_bar}
    if name == "step-down":  # 0.25·h + 0.75·h/3 = h/2
        return {"schedule": "step-down", "scale": 2 * gamma_bar, "scale_low": 2 * gamma_bar / 3, "p_switch": 0.25}
    if name == "step-up":  # 0.25·h/3 + 0.75·h = 5h/6
        return {"schedule": "step-up", "scale": 1.2 * gamma_bar, "scale_low": 0.4 * gamma_bar, "p_switch": 0.25}
    raise ValueError(f"schedule: unknown {name!r}{did_you_mean(name, SCHEDULES)}")


def _clusters(lab: Any, classes: tuple[int, ...], k: int, seed: int) -> dict[int, Any]:
    """Per class: k-means on the classifier features of its training images, and the held-out images' shares and
    mean squared distance to their centroids."""
    from sklearn.cluster import KMeans

    train, ref = load_dataset(lab.data, "train"), reference(lab.data)
    out = {}
    for c in classes:
        _, feats = logits_features(lab, train.of_class(c))
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(feats.numpy())
        _, held = logits_features(lab, ref.of_class(c))
        assign, d2 = _assign(km, held)
        out[c] = {"kmeans": km, "real_shares": np.bincount(assign, minlength=k) / assign.size, "real_d2": d2.mean()}
    return out


def _assign(km: Any, feats: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row and its squared distance."""
    centers = torch.as_tensor(km.cluster_centers_, dtype=torch.float64)
    d2 = torch.cdist(feats.double(), centers).pow(2)
    best = d2.argmin(1)
    return best.numpy(), d2.gather(1, best[:, None])[:, 0].numpy()


def _entropy(p: np.ndarray) -> float:
    q = p[p > 0]
    return float(-(q * np.log(q)).sum())


def _measure(lab: Any, x: Tensor, labels: Tensor, clusters: dict[int, Any], ref_feats: Tensor, k: int) -> dict:
    logits, feats = logits_features(lab, x)
    cov, ent, within = [], [], []
    for c, cl in clusters.items():
        rows = labels == c
        assign, d2 = _assign(cl["kmeans"], feats[rows])
        shares = np.bincount(assign, minlength=k) / assign.size
        cov.append(float((shares > 0).mean()))
        ent.append(math.exp(_entropy(shares)) / math.exp(_entropy(cl["real_shares"])))
        within.append(float(d2.mean() / cl["real_d2"]))
    return {
        "coverage": float(np.mean(cov)),
        "cluster_entropy_ratio": float(np.mean(ent)),
        "within_cluster_ratio": float(np.mean(within)),
        "accuracy": float((logits.argmax(1) == labels).double().mean()),
        "fd": frechet_distance(feats, ref_feats),
    }


def _claims(rows: dict[str, dict[str, Any]], cfg: StagewiseImagesConfig) -> dict[str, bool]:
    up, down, tv, const = rows["step-up"], rows["step-down"], rows["tv-cfg"], rows["constant"]
    m = cfg.margin
    return {
        "early_strong_guidance_covers_fewer_clusters": down["coverage"] < up["coverage"] - m
        and down["cluster_entropy_ratio"] < up["cluster_entropy_ratio"] - m,
        "late_strong_guidance_less_within_cluster_variation": up["within_cluster_ratio"]
        < down["within_cluster_ratio"] - m,
        "tvcfg_equal_accuracy_to_constant": abs(tv["accuracy"] - const["accuracy"]) <= cfg.acc_margin,
        "tvcfg_lower_fd_than_constant": tv["fd"] < (1 - m) * const["fd"],
    }


def stagewise_images(size: str = "ci", out_dir: str | Path = NAME) -> dict[str, Any]:
    """Run the reproduction at ``size`` (``ci`` or ``paper``); write ``stagewise-images.json`` and PNGs to
    ``out_dir``; return the result dict (``results``, ``claims``, ``notes``)."""
    cfg = config_for(NAME, size, SIZES)
    if cfg.steps % 4:
        raise ValueError(f"steps: must be a multiple of 4 (the step probes switch at 25%), got {cfg.steps}")
    settings = {
        "model": cfg.model,
        "path": "rf",
        "grid": "uniform",
        "solver": "euler",
        "guider": "cfg",
        "clusters": "k-means of the classifier features of each class's training images",
        "reference": "val + test splits",
    }
    with Run(NAME, SOURCE, size, out_dir, cfg, settings) as run:
        lab = load_lab(cfg.model)
        grid = make_grid("uniform", cfg.steps, lab.model.path)
        clusters = _clusters(lab, cfg.classes, cfg.k, cfg.seed)
        ref = reference(lab.data)
        keep = torch.isin(ref.labels, torch.tensor(cfg.classes))
        _, ref_feats = logits_features(lab, ref.images[keep])
        labels = torch.tensor(cfg.classes).repeat_interleave(cfg.n_per_class)
        n = labels.numel()
        rows: dict[str, dict[str, Any]] = {}
        tables: dict[str, list[float]] = {}
        images: dict[str, Tensor] = {}
        for name in SCHEDULES:
            guider = build_guider("cfg", **schedule_params(name, cfg.gamma_bar))
            tables[name] = [r["gamma"] for r in schedule_table(guider, lab.model.path, grid)]
            out = guided_images(lab, guider, 1, n, labels, cfg.steps, cfg.seed)
            images[name] = out.x[0]
            rows[name] = {**_measure(lab, out.x[0], labels, clusters, ref_feats, cfg.k), "diverged": out.diverged[0]}
        s = grid.double()  # on rf, s = σ/(α + σ) = t
        ds = (s[:-1] - s[1:]) / (s[0] - s[-1])
        for name in SCHEDULES:
            rows[name]["mean_scale"] = float((torch.tensor(tables[name], dtype=torch.float64) * ds).sum())
        claims = _claims(rows, cfg)
        if not claims["tvcfg_equal_accuracy_to_constant"]:
            run.notes.append(
                f"TV-CFG and constant CFG at the same mean scale differ in accuracy by more than {cfg.acc_margin} "
                f"({rows['tv-cfg']['accuracy']:.3f} against {rows['constant']['accuracy']:.3f}), so their Fréchet "
                "distances are not at equal accuracy."
            )
        for claim, ok in claims.items():
            if not ok and claim != "tvcfg_equal_accuracy_to_constant":
                run.notes.append(f"Not reproduced here: {claim} (numbers in results.by_schedule).")
        results = {
            "by_schedule": rows,
            "schedules": tables,
            "times": grid[:-1].tolist(),
            "real_cluster_shares": {str(c): cl["real_shares"].tolist() for c, cl in clusters.items()},
        }
        _plot(rows, tables, results["times"], images, cfg, run.figure_path("stages"))
        return run.finish(results, claims)


# --- figures --------------------------------------------------------------------------------------------------


def _plot(rows, tables, times, images, cfg: StagewiseImagesConfig, file: Path) -> None:
    fig, axes = _plots.new_figure(2, 4, width=2.9, height=2.8)
    for j, name in enumerate(SCHEDULES):
        per = min(cfg.n_per_class, 4)
        pick = torch.cat([torch.arange(per) + i * cfg.n_per_class for i in range(len(cfg.classes))])
        r = rows[name]
        image_grid(
            axes[0][j],
            images[name][pick],
            per * 2,
            f"{name}: cov {r['coverage']:.2f}, within {r['within_cluster_ratio']:.2f}",
        )
    ax = axes[1][0]
    for name in SCHEDULES:
        ax.step(times, tables[name], where="post", label=name)
    ax.invert_xaxis()
    ax.set_xlabel("t (1 = noise)")
    ax.set_ylabel(f"γ (mean {cfg.gamma_bar:g})")
    ax.legend(fontsize=7)
    for ax, metric, label in (
        (axes[1][1], "cluster_entropy_ratio", "cluster entropy ratio (1 = real)"),
        (axes[1][2], "within_cluster_ratio", "within-cluster variation / real"),
        (axes[1][3], "fd", "Fréchet distance"),
    ):
        ax.bar(range(len(SCHEDULES)), [rows[s][metric] for s in SCHEDULES], color=[f"C{i}" for i in range(4)])
        ax.set_xticks(range(len(SCHEDULES)), SCHEDULES, fontsize=7)
        ax.set_ylabel(label, fontsize=8)
        if metric == "fd":
            for i, s in enumerate(SCHEDULES):
                ax.text(i, rows[s][metric], f"acc {rows[s]['accuracy']:.2f}", ha="center", va="bottom", fontsize=6)
    for a in axes[1]:
        a.grid(alpha=0.3)
    fig.suptitle(
        f"stage-wise guidance on the {cfg.model} UNet at mean scale {cfg.gamma_bar:g} (rf, Euler, {cfg.steps} steps)",
        fontsize=9,
    )
    _plots.save(fig, file)
