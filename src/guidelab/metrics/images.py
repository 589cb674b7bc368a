"""Image metrics with a classifier: class fidelity, Fréchet distance, precision/recall/density/coverage, Vendi,
out-of-range pixels and the sample norm; and each one's two-sample floor from real-vs-real halves.

With a classifier ``f`` (logits) and its features ``φ`` (:class:`~guidelab.models.classifier.ImageClassifier`),
generated images ``G`` (n, C, H, W) of class c and held-out real images ``R`` (m, C, H, W) of that class:

- ``accuracy`` = mean 1[argmax f(g) = c]; ``confidence`` = mean softmax(f(g))_c  (class fidelity);
- ``fd`` = ‖μ_G − μ_R‖² + tr(Σ_G + Σ_R − 2(Σ_G Σ_R)^{1/2}) of the features (Heusel et al. 2017, arXiv
  1706.08500), computed by torchmetrics' ``FrechetInceptionDistance`` with ``φ`` as its feature extractor;
- ``precision``, ``recall``, ``density``, ``coverage``: k-NN manifolds of the features (k = 5;
  :func:`~guidelab.metrics.knn.prdc`, arXiv 1904.06991 and 2002.09797);
- ``vendi``: the Vendi score of the features with the cosine kernel (Friedman & Dieng 2023, arXiv 2210.02410);
- ``out_of_range``: the fraction of pixels more than one 8-bit grey level (2/255) outside the data range
  [−1, 1] (the image analogue of ADG's saturation, arXiv 2506.11007); ``x0_rms``: the mean per-image
  root-mean-square pixel value (guidance inflates norms).

**Floors.** Two sets of real images differ too: :func:`image_floor` splits R in two halves (a fixed
permutation) and measures the first as if generated against the second. A generated value at or below its
floor is indistinguishable from real data at this sample size (the halves are smaller than R, so the floor
of a distance is a slight overestimate of the noise of a run's value).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from guidelab.metrics.diversity import vendi_score
from guidelab.metrics.knn import prdc

__all__ = ["IMAGE_METRICS", "frechet_distance", "image_floor", "image_metrics"]

IMAGE_METRICS = ("accuracy", "fd", "prdc", "vendi", "out_of_range", "x0_rms")
_FLOOR_SEED = 20_170_706
_DATA_RANGE = 1.0
_TOLERANCE = 2 / 255  # one 8-bit grey level: closer than that to the range rounds onto its edge


class _Features(nn.Module):
    """Hands precomputed feature vectors (n, D) to torchmetrics unchanged."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, x: Tensor) -> Tensor:
        return x


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """The Fréchet distance between Gaussians fitted to feature sets ``a`` (n, D) and ``b`` (m, D), n, m ≥ 2,
    computed in float64 by torchmetrics' ``FrechetInceptionDistance`` (unbiased covariances)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features: expected (n, D) and (m, D), got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError(f"features: need at least 2 rows in each set, got {a.shape[0]} and {b.shape[0]}")
    fid = FrechetInceptionDistance(feature=_Features(a.shape[1]), reset_real_features=True)
    fid.set_dtype(torch.float64)
    fid.update(b, real=True)
    fid.update(a, real=False)
    return float(fid.compute())


@torch.no_grad()
def _classify(classifier: Any, images: Tensor) -> tuple[Tensor | None, Tensor]:
    """(logits, features) of images in chunks, in float32 on the classifier's device; without a classifier
    (None) no logits and the flattened pixels as features."""
    if classifier is None:
        return None, images.detach().double().cpu().flatten(1)
    param = next(classifier.parameters())
    logits, feats = [], []
    for chunk in images.split(512):
        x = chunk.to(device=param.device, dtype=param.dtype)
        f = classifier.features(x)
        feats.append(f.double().cpu())
        logits.append(
            classifier.head(f).double().cpu() if hasattr(classifier, "head") else classifier(x).double().cpu()
        )
    return torch.cat(logits), torch.cat(feats)


def _measure(
    images: Tensor, cond: int, reference: Tensor, classifier: Any, metrics: tuple[str, ...], k: int
) -> dict[str, float]:
    out: dict[str, float] = {}
    logits, feats = _classify(classifier, images)
    _, ref_feats = _classify(classifier, reference)
    if "accuracy" in metrics and cond >= 0 and logits is not None:
        out["accuracy"] = float((logits.argmax(1) == cond).double().mean())
        out["confidence"] = float(logits.softmax(1)[:, cond].mean())
    if "fd" in metrics:
        out["fd"] = frechet_distance(feats, ref_feats)
    if "prdc" in metrics:
        kk = min(k, feats.shape[0] - 1, ref_feats.shape[0] - 1)
        rec = prdc(ref_feats, feats, k=kk)
        out.update(precision=rec.precision, recall=rec.recall, density=rec.density, coverage=rec.coverage)
    if "vendi" in metrics:
        out["vendi"] = vendi_score(feats, kernel="cosine")
    flat = images.double().flatten(1)
    if "out_of_range" in metrics:
        out["out_of_range"] = float((flat.abs() > _DATA_RANGE + _TOLERANCE).double().mean())
    if "x0_rms" in metrics:
        out["x0_rms"] = float(flat.pow(2).mean(1).sqrt().mean())
    return out


def _check(images: Tensor, field: str) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim < 2:
        raise ValueError(f"{field}: expected a tensor of images (n, C, H, W)")
    if images.shape[0] < 2:
        raise ValueError(f"{field}: need at least 2 images, got {images.shape[0]}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{field}: contains non-finite values; leave diverged samples out first")
    return images


def _names(metrics: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    names = tuple(metrics) if metrics is not None else IMAGE_METRICS
    for name in names:
        if name not in IMAGE_METRICS:
            raise ValueError(f"metrics: unknown image metric {name!r}; accepted: {', '.join(IMAGE_METRICS)}")
    return names


def image_metrics(
    images: Tensor,
    cond: int,
    reference: Tensor,
    classifier: Any,
    *,
    metrics: tuple[str, ...] | list[str] | None = None,
    k: int = 5,
) -> dict[str, float]:
    """The metrics (module docstring) of generated ``images`` (n, C, H, W) of class ``cond`` (−1: no class;
    accuracy is then left out) against held-out real ``reference`` images (m, C, H, W) of that class.

    Args:
        classifier: has ``features(x)`` (batch, F) and ``head(features)`` or ``__call__(x)`` giving logits; None
            measures in pixel space (the flattened images are the features) and leaves accuracy out.
        metrics: names from :data:`IMAGE_METRICS` (default all); ``prdc`` gives four keys, ``accuracy`` two.
        k: the neighbour count of precision/recall/density/coverage (capped at the set sizes − 1).
    """
    return _measure(_check(images, "images"), cond, _check(reference, "reference"), classifier, _names(metrics), k)


def image_floor(
    reference: Tensor,
    cond: int,
    classifier: Any,
    *,
    metrics: tuple[str, ...] | list[str] | None = None,
    k: int = 5,
    seed: int = _FLOOR_SEED,
) -> dict[str, float]:
    """The same metrics of one half of ``reference`` (a fixed permutation by ``seed``) against the other: what
    real data scores, the floor under which differences are noise. Needs at least 4 reference images."""
    reference = _check(reference, "reference")
    if reference.shape[0] < 4:
        raise ValueError(f"reference: need at least 4 images for two halves, got {reference.shape[0]}")
    order = torch.randperm(reference.shape[0], generator=torch.Generator().manual_seed(seed))
    half = reference.shape[0] // 2
    first, second = reference[order[:half]], reference[order[half:]]
    return _measure(first, cond, second, classifier, _names(metrics), k)
