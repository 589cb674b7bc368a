"""Shared plumbing of the image reproductions: the model, classifier and held-out images of a size, guided samples
with the x0̂ trajectory, classifier outputs, and image grids.

Every image reproduction samples a shipped UNet (rf path, x0 prediction) with Euler on a uniform grid, in float64,
several settings of one guider per run from the same noise (:func:`~._common.sample_copies`); the classifier is the
shipped one of the dataset (``<data>-classifier``), and the reference images are the ``val`` and ``test`` splits
together (neither is trained on; the digits test split alone holds only ~36 images per class).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from guidelab.data import ImageData, load_dataset
from guidelab.experiments.reproductions._common import sample_copies
from guidelab.grids import make_grid
from guidelab.guiders import Guider
from guidelab.metrics.images import classify
from guidelab.models.trained import load_trained
from guidelab.models.zoo import load_classifier, shipped_path

__all__ = ["GuidedImages", "Lab", "guided_images", "image_grid", "load_lab", "reference"]


@dataclass
class Lab:
    """A shipped denoiser, its dataset's shipped classifier, and the dataset's name."""

    model: Any
    classifier: Any
    data: str


def load_lab(model: str) -> Lab:
    """The shipped denoiser ``model`` with the classifier of the dataset it was trained on."""
    den = load_trained("shipped", model)
    data = den.checkpoint_config["data"]
    return Lab(den, load_classifier(shipped_path(f"{data}-classifier")), data)


def reference(data: str) -> ImageData:
    """The held-out real images of ``data``: the ``val`` and ``test`` splits together, (m, 1, H, W) in [−1, 1]."""
    val, test = load_dataset(data, "val"), load_dataset(data, "test")
    return ImageData(
        data, "val+test", torch.cat([val.images, test.images]), torch.cat([val.labels, test.labels]), val.class_names
    )


@dataclass
class GuidedImages:
    """``copies`` settings × n samples: final images (copies, n, C, H, W), the state x_t and the guided x0̂ at every
    evaluation (steps, copies, n, C, H, W), the evaluation times (steps,), and the diverged count per copy."""

    x: Tensor
    x_t: Tensor
    x0_hat: Tensor
    times: Tensor
    diverged: list[int]


@torch.no_grad()
def guided_images(
    lab: Lab, guider: Guider, copies: int, n: int, cond: Tensor | int, steps: int, seed: int
) -> GuidedImages:
    """One float64 Euler run on a uniform grid of ``steps`` steps: every copy (a setting of ``guider`` given as
    per-sample parameters) from the same n noises, the guided x0̂ recorded at every step."""
    grid = make_grid("uniform", steps, lab.model.path)
    res = sample_copies(
        lab.model, guider, copies, n, cond, grid=grid, shape=lab.model.shape, seed=seed, solver="euler", record_every=1
    )
    assert res.x0_trajectory is not None
    shape = (copies, n, *lab.model.shape)
    assert res.trajectory is not None
    x0 = res.x0_trajectory[:-1]  # guided x0̂ at each evaluation (the last entry is the final sample)
    xt = res.trajectory[:-1]
    return GuidedImages(
        res.x.reshape(shape),
        xt.reshape(xt.shape[0], *shape),
        x0.reshape(x0.shape[0], *shape),
        res.times[:-1].clone(),
        [int(v) for v in res.diverged.reshape(copies, n).sum(1)],
    )


def logits_features(lab: Lab, images: Tensor) -> tuple[Tensor, Tensor]:
    """The classifier's logits (n, classes) and features (n, F) of images (n, C, H, W), float64."""
    logits, feats = classify(lab.classifier, images.float())
    assert logits is not None
    return logits, feats


def image_grid(ax: Any, images: Tensor, ncol: int, title: str = "") -> None:
    """Images (k, 1, H, W) in [−1, 1] tiled ``ncol`` per row on ``ax`` (grey, black = −1, clipped for display)."""
    x = images.detach().double().clamp(-1, 1).cpu().numpy()[:, 0]
    k, h, w = x.shape
    rows = -(-k // ncol)
    canvas = np.full((rows * (h + 1) + 1, ncol * (w + 1) + 1), 0.2)
    for i in range(k):
        r, c = divmod(i, ncol)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = (x[i] + 1) / 2
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)
