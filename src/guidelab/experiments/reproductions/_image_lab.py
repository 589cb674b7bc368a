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
from guidelab.guiders import Guider
from guidelab.metrics.diversity import vendi_score
from guidelab.metrics.images import frechet_distance
from guidelab.models.trained import load_trained
from guidelab.models.zoo import load_classifier, shipped_path
from guidelab.sampling import sample

__all__ = ["ImageLab", "at_accuracy", "lab", "save_grid"]


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
        """(logits, features) of images (n, C, H, W), float64 on CPU."""
        logits, feats = [], []
        for chunk in images.float().split(512):
            f = self.classifier.features(chunk)
            feats.append(f.double())
            logits.append(self.classifier.head(f).double())
        return torch.cat(logits), torch.cat(feats)

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
