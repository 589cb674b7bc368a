"""Reproduction ``adg-images``: Angle Domain Guidance keeps accuracy at high γ with less growth of the clean
estimate's norm and less saturation than CFG (ADG, arXiv 2506.11039; the exact-target side is ``adg-norm``).

On the shipped digits UNet (``ci``; the MNIST UNet at ``paper`` size; rf, x0), Euler on a uniform grid, the
classes cycled over the samples, every γ and both guiders from the same noise. Per guider and γ:

- the x0̂ norm: the per-image root mean square of the guided x0̂ (pixels in [−1, 1]), mean over images, along t; its
  peak over t (CFG's x0̂ = x0̂_u + γ(x0̂_c − x0̂_u) grows linearly in γ where the two predictions differ);
- saturation: the out-of-range pixel fraction (|pixel| > 1.05, :mod:`guidelab.metrics.images`) of the final samples
  and the peak over t of that of x0̂;
- accuracy of the final samples by the shipped classifier.

ADG's rule bounds each step's ``‖x0̂‖ ≤ √2·‖x0̂_c‖``, so its peak is judged against √2 × the γ = 1 peak (the
conditional model's), as ``adg-norm`` does. Claims: CFG's x0̂ norm grows with γ past that bound, ADG's stays
under it; at the largest γ, ADG's out-of-range fraction (final and x0̂ peak) is below CFG's; ADG's accuracy at the
largest γ is at least the conditional model's (γ = 1) less ``acc_margin``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from guidelab.experiments.reproductions import _plots
from guidelab.experiments.reproductions._common import Run, config_for, is_nondecreasing, per_copy
from guidelab.experiments.reproductions._image_lab import guided_images, image_grid, load_lab, logits_features
from guidelab.guiders import build_guider

__all__ = ["SIZES", "ADGImagesConfig", "adg_images", "out_of_range", "rms"]

NAME = "adg-images"
SOURCE = "arXiv 2506.11039"
GUIDERS = ("cfg", "adg")
RANGE_TOLERANCE = 1.05  # |pixel| beyond this is out of range (guidelab.metrics.images)


@dataclass(frozen=True)
class ADGImagesConfig:
    """Sizes of one run.

    Attributes:
        model: the shipped 10-class denoiser (``digits`` at ci, ``mnist`` at paper size).
        n: samples per γ and guider (labels 0..9 cycled; the same noises throughout).
        gammas: scales γ, increasing, the first 1.
        steps: Euler steps on the uniform grid.
        acc_margin: how much accuracy ADG may lose at the largest γ against γ = 1 and still "keep" it.
        seed: seed of the starting noise.
    """

    model: str
    n: int
    gammas: tuple[float, ...]
    steps: int = 12
    acc_margin: float = 0.05
    seed: int = 0


SIZES = {
    "ci": ADGImagesConfig(model="digits", n=30, gammas=(1.0, 2.0, 4.0, 8.0, 16.0)),
    "paper": ADGImagesConfig(model="mnist", n=60, gammas=(1.0, 2.0, 4.0, 8.0, 16.0, 24.0), steps=16),
}


def rms(x: torch.Tensor) -> torch.Tensor:
    """Per-image root mean square over the last three dimensions (..., C, H, W) → (...)."""
    return x.double().flatten(-3).pow(2).mean(-1).sqrt()


def out_of_range(x: torch.Tensor) -> torch.Tensor:
    """Fraction of pixels with |pixel| > 1.05 per image (..., C, H, W) → (...)."""
    return (x.double().flatten(-3).abs() > RANGE_TOLERANCE).double().mean(-1)


def _rows(lab: Any, name: str, cfg: ADGImagesConfig, labels: torch.Tensor) -> tuple[list[dict[str, Any]], Any]:
    G = len(cfg.gammas)
    out = guided_images(
        lab, build_guider(name, scale=per_copy(cfg.gammas, cfg.n)), G, cfg.n, labels, cfg.steps, cfg.seed
    )
    norms = rms(out.x0_hat)  # (steps, G, n)
    oor = out_of_range(out.x0_hat)
    rows = []
    for k, gamma in enumerate(cfg.gammas):
        logits, _ = logits_features(lab, out.x[k])
        series = norms[:, k].mean(1)
        rows.append(
            {
                "gamma": gamma,
                "x0_hat_rms_mean": series.tolist(),
                "x0_hat_rms_sd": norms[:, k].std(1).tolist(),
                "peak_rms": float(series.max()),
                "final_rms": float(rms(out.x[k]).mean()),
                "x0_hat_out_of_range_peak": float(oor[:, k].mean(1).max()),
                "out_of_range": float(out_of_range(out.x[k]).mean()),
                "accuracy": float((logits.argmax(1) == labels).double().mean()),
                "diverged": out.diverged[k],
            }
        )
    return rows, out


def adg_images(size: str = "ci", out_dir: str | Path = NAME) -> dict[str, Any]:
    """Run the reproduction at ``size`` (``ci`` or ``paper``); write ``adg-images.json`` and PNGs to ``out_dir``;
    return the result dict (``results``, ``claims``, ``notes``)."""
    cfg = config_for(NAME, size, SIZES)
    if cfg.gammas[0] != 1.0 or list(cfg.gammas) != sorted(cfg.gammas):
        raise ValueError(f"gammas: must increase from 1, got {cfg.gammas}")
    settings = {
        "model": cfg.model,
        "cond": "labels 0-9 cycled",
        "path": "rf",
        "grid": "uniform",
        "solver": "euler",
        "adg": {"theta_max": math.pi / 3},
        "out_of_range": f"|pixel| > {RANGE_TOLERANCE}",
    }
    with Run(NAME, SOURCE, size, out_dir, cfg, settings) as run:
        lab = load_lab(cfg.model)
        labels = torch.arange(cfg.n) % 10
        results: dict[str, Any] = {}
        finals = {}
        for name in GUIDERS:
            results[name], out = _rows(lab, name, cfg, labels)
            finals[name] = out.x
            results["times"] = out.times.tolist()
        peaks = {name: [r["peak_rms"] for r in results[name]] for name in GUIDERS}
        bound = math.sqrt(2) * peaks["cfg"][0]  # γ = 1: both guiders give the conditional model
        results["bound_sqrt2_times_gamma_1_peak"] = bound
        cfg_top, adg_top = results["cfg"][-1], results["adg"][-1]
        base = results["cfg"][0]
        claims = {
            "cfg_x0_norm_grows_with_gamma": is_nondecreasing(peaks["cfg"]) and peaks["cfg"][-1] > bound,
            "adg_x0_norm_bounded": max(peaks["adg"]) <= bound,
            "adg_less_saturation_than_cfg_at_high_gamma": adg_top["out_of_range"] < cfg_top["out_of_range"]
            and adg_top["x0_hat_out_of_range_peak"] < cfg_top["x0_hat_out_of_range_peak"],
            "adg_keeps_accuracy_at_high_gamma": adg_top["accuracy"] >= base["accuracy"] - cfg.acc_margin,
        }
        for claim, ok in claims.items():
            if not ok:
                run.notes.append(f"Not reproduced here: {claim} (numbers in results.cfg / results.adg).")
        _plot(results, cfg, bound, run.figure_path("norms"))
        _plot_samples(finals, cfg, run.figure_path("samples"))
        return run.finish(results, claims)


# --- figures --------------------------------------------------------------------------------------------------


def _plot(results: dict[str, Any], cfg: ADGImagesConfig, bound: float, file: Path) -> None:
    fig, axes = _plots.new_figure(1, 4, width=3.3, height=3.0)
    times = results["times"]
    for ax, name in zip(axes[0][:2], GUIDERS, strict=True):
        for j, r in enumerate(results[name]):
            _plots.band(
                ax, times, r["x0_hat_rms_mean"], r["x0_hat_rms_sd"], label=f"γ = {r['gamma']:g}", color=f"C{j % 10}"
            )
        ax.axhline(bound, color="k", ls=":", lw=0.8, label="√2 × γ=1 peak")
        ax.invert_xaxis()
        ax.set_xlabel("t (1 = noise)")
        ax.set_ylabel("rms of x0̂ (mean ± 1 s.d.)")
        ax.set_title(name.upper(), fontsize=9)
        ax.legend(fontsize=6)
    for ax, key, label in (
        (axes[0][2], "out_of_range", "out-of-range fraction (final)"),
        (axes[0][3], "accuracy", "accuracy"),
    ):
        for name, marker in (("cfg", "o"), ("adg", "s")):
            g = [r["gamma"] for r in results[name]]
            ax.plot(g, [r[key] for r in results[name]], marker=marker, ms=4, label=name)
            if key == "out_of_range":
                ax.plot(
                    g,
                    [r["x0_hat_out_of_range_peak"] for r in results[name]],
                    ls="--",
                    marker=marker,
                    ms=3,
                    label=f"{name}: x0̂ peak over t",
                )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("γ")
        ax.set_ylabel(label)
        ax.legend(fontsize=6)
    for a in axes[0]:
        a.grid(alpha=0.3)
    fig.suptitle(f"CFG against ADG on the {cfg.model} UNet (rf, Euler, {cfg.steps} steps)", fontsize=9)
    _plots.save(fig, file)


def _plot_samples(finals: dict[str, torch.Tensor], cfg: ADGImagesConfig, file: Path) -> None:
    G = len(cfg.gammas)
    fig, axes = _plots.new_figure(2, G, width=1.9, height=2.1)
    for r, name in enumerate(GUIDERS):
        for k in range(G):
            image_grid(axes[r][k], finals[name][k, :10], 5, f"{name} γ = {cfg.gammas[k]:g}")
    fig.suptitle("final samples (classes 0-9), same noise for every γ and guider", fontsize=9)
    _plots.save(fig, file)
