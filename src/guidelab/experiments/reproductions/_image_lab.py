"""Shared plumbing of the image reproductions: the shipped model of a dataset with its classifier and held-out
images, batched guided sampling of several settings at once, the classifier measures, matching at equal accuracy,
and image grids.

Measures of generated images ``G`` with labels ``y`` against the real ``test`` split ``R`` (never trained on), in the
features φ of the shipped classifier (:mod:`guidelab.metrics.images`):

- ``accuracy``: mean 1[argmax f(g) = y] over all generated images;
- ``fd``: the Fréchet distance of the pooled features of G (all classes) to those of R;
  ``fd_floor`` (:meth:`ImageLab.floor`) is the same for real ``train`` images of the same size and class mix;
- ``within_var_ratio``: the mean over classes of ``tr Ĉov φ(G_c) / tr Ĉov φ(R_c)`` (1 = real within-class spread);
- ``vendi``: the mean over classes of the Vendi score of φ(G_c) (cosine kernel; arXiv 2210.02410).

**Matched accuracy** (:func:`at_accuracy`): a method's measures on a scale grid are linearly interpolated at the
first scale where its accuracy reaches a common target (accuracy grows with the scale up to sampling noise); a
method that never reaches it has no matched point.

The trajectory reproductions (``chidambaram-mnist``, ``stagewise-images``, ``adg-images``) use :func:`load_lab` and
:func:`guided_images` instead: a shipped UNet (rf path, x0 prediction; also a one-vs-rest model) with the classifier
of its dataset, sampled with Euler on a uniform grid in float64, several settings of one guider per run from the same
noise (:func:`~._common.sample_copies`), the state and guided x0̂ recorded at every step; their reference images are
the ``val`` and ``test`` splits together (:func:`reference`: the digits test split alone holds only ~36 images per
class).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from guidelab.data import ImageData, load_dataset
from guidelab.experiments.reproductions import _plots
from guidelab.experiments.reproductions._common import sample_copies
from guidelab.grids import make_grid
from guidelab.guiders import Guider
from guidelab.metrics.diversity import vendi_score
from guidelab.metrics.images import classify, frechet_distance
from guidelab.models.trained import load_trained
from guidelab.models.zoo import load_classifier, shipped_path
from guidelab.sampling import sample

__all__ = [
    "GuidedImages",
    "ImageLab",
    "Lab",
    "at_accuracy",
    "guided_images",
    "image_grid",
    "lab",
    "load_lab",
    "logits_features",
    "reference",
    "save_grid",
]


@dataclass
class ImageLab:
    """A dataset's shipped denoiser (rf, x0), its classifier, the real test images and their features."""

    dataset: str
    model: Any
    classifier: Any
    test: ImageData
    test_feats: Tensor

    @property
    def path(self) -> Any:
        return self.model.path

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.test.images.shape[1:])

    @torch.no_grad()
    def classify(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, features) of images (n, C, H, W), float64 on CPU (:func:`guidelab.metrics.images.classify`)."""
        logits, feats = classify(self.classifier, images.float())
        assert logits is not None
        return logits, feats

    def labels(self, per_class: int) -> Tensor:
        """``per_class`` labels of every class, class-major (n,)."""
        return torch.arange(self.test.num_classes).repeat_interleave(per_class)

    def sample(
        self, guider: Guider | None, labels: Tensor, grid: Tensor, seed: int, copies: int = 1, **options: Any
    ) -> Tensor:
        """``copies`` settings (per-sample guider parameters, copy-major) of ``labels`` in one float32 run, every
        copy from the same noise (noise stream i for sample i of each copy); images (copies·n, C, H, W)."""
        n = labels.numel()
        return sample(
            self.model,
            guider,
            n=copies * n,
            cond=labels.repeat(copies),
            noise_ids=torch.arange(n).repeat(copies),
            grid=grid,
            shape=self.shape,
            seed=seed,
            **options,
        ).x

    def measure(self, images: Tensor, labels: Tensor) -> dict[str, float]:
        """The module docstring's measures of generated ``images`` with ``labels``."""
        logits, feats = self.classify(images)
        out = {"accuracy": float((logits.argmax(1) == labels).double().mean())}
        out["fd"] = frechet_distance(feats, self.test_feats)
        ratios, vendi = [], []
        for c in labels.unique().tolist():
            fc, rc = feats[labels == c], self.test_feats[self.test.labels == c]
            ratios.append(float(_trace_cov(fc) / _trace_cov(rc)))
            vendi.append(vendi_score(fc, kernel="cosine"))
        out["within_var_ratio"] = float(np.mean(ratios))
        out["vendi"] = float(np.mean(vendi))
        return out

    def floor(self, labels: Tensor, seed: int) -> dict[str, float]:
        """The measures of real ``train`` images drawn with the class mix of ``labels`` (without replacement where
        a class has enough, seeded): what real data scores at this size."""
        train = load_dataset(self.dataset, "train")
        gen = torch.Generator().manual_seed(seed)
        # distinct images per class where the pool is large enough: a permutation of each class's pool, cycled
        idx = []
        for c in labels.unique().tolist():
            pool = torch.nonzero(train.labels == c).flatten()
            k = int((labels == c).sum())
            order = pool[torch.randperm(pool.numel(), generator=gen)]
            idx.append(order.repeat(k // pool.numel() + 1)[:k])
        chosen = torch.cat(idx)
        return self.measure(train.images[chosen], train.labels[chosen])


def _trace_cov(x: Tensor) -> Tensor:
    return x.var(dim=0, unbiased=True).sum()


@functools.cache
def lab(dataset: str) -> ImageLab:
    """The :class:`ImageLab` of ``digits`` or ``mnist`` (cached per process)."""
    model = load_trained("shipped", dataset)
    classifier = load_classifier(shipped_path(f"{dataset}-classifier"))
    test = load_dataset(dataset, "test")
    lab_ = ImageLab(dataset, model, classifier, test, torch.empty(0))
    lab_.test_feats = lab_.classify(test.images)[1]
    return lab_


def at_accuracy(scales: Sequence[float], rows: Sequence[dict[str, float]], target: float) -> dict[str, Any] | None:
    """Every measure of ``rows`` (one per scale, increasing scales) linearly interpolated at the first scale where
    the accuracy reaches ``target`` (the first grid scale itself if its accuracy already does); None if none
    does. Adds ``scale`` (the interpolated scale)."""
    acc = [r["accuracy"] for r in rows]
    for i, a in enumerate(acc):
        if a >= target:
            if i == 0:
                return {**rows[i], "scale": float(scales[i])}
            w = (target - acc[i - 1]) / (a - acc[i - 1])
            out = {k: (1 - w) * rows[i - 1][k] + w * rows[i][k] for k in rows[i]}
            out["scale"] = (1 - w) * scales[i - 1] + w * scales[i]
            return out
    return None


def save_grid(rows: Sequence[tuple[str, Tensor]], file: Path, title: str) -> None:
    """A figure of image rows: each (label, images (k, 1, H, W) in [−1, 1]) drawn as one strip."""
    fig, axes = _plots.new_figure(len(rows), 1, width=0.5 * max(r[1].shape[0] for r in rows) + 1.2, height=0.75)
    for ax, (label, images) in zip(axes[:, 0], rows, strict=True):
        strip = torch.cat(list(images.float().clamp(-1, 1)[:, 0]), dim=1).numpy()
        ax.imshow(strip, cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.suptitle(title, fontsize=8)
    _plots.save(fig, file)


# --- the trajectory reproductions' lab --------------------------------------------------------------------------


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
