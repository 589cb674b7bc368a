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
- ``out_of_range``: the fraction of pixels more than 0.05 (2.5% of the range) outside the data range [−1, 1]
  (the image analogue of ADG's saturation, arXiv 2506.11007; a trained model's dark background sits a hair past
  −1 everywhere, which is noise, not saturation: on the digits UNet 27% of pixels pass −1 − 2/255 at γ = 1, 1%
  pass −1.05); ``x0_rms``: the mean per-image
  root-mean-square pixel value (guidance inflates norms).

**Floors.** Two sets of real images differ too, and set metrics are biased by the set sizes (the Fréchet
distance by about tr Σ·(1/n + 1/m)), so a floor must be measured at the run's sizes. For each of 5 seeded
halvings (A, B) of R, :func:`image_floor` measures A against B and :func:`image_metrics` a random |A|-subset of G
against B; both average over the halvings. A generated value at or under its floor is indistinguishable from real
data at this size. The point metrics (accuracy, confidence, out_of_range, x0_rms) use all of G, and their floor
all of R (real images' accuracy is the classifier's).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from guidelab.metrics.diversity import vendi_score
from guidelab.metrics.knn import prdc
from guidelab.validation import did_you_mean

__all__ = [
    "IMAGE_METRICS",
    "IMAGE_METRIC_KEYS",
    "classify",
    "frechet_distance",
    "image_floor",
    "image_metrics",
    "splits",
]

IMAGE_METRICS = ("accuracy", "fd", "prdc", "vendi", "out_of_range", "x0_rms")
# the keys each metric writes (each also as ``<key>_floor`` in a sweep's row)
IMAGE_METRIC_KEYS: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy", "confidence"),
    "fd": ("fd",),
    "prdc": ("precision", "recall", "density", "coverage"),
    "vendi": ("vendi",),
    "out_of_range": ("out_of_range",),
    "x0_rms": ("x0_rms",),
}
_FLOOR_SEED = 20_170_706
_DATA_RANGE = 1.0
_TOLERANCE = 0.05  # 2.5% of the range: a trained model's background sits a hair past −1 (noise, not saturation)


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
def classify(classifier: Any, images: Tensor) -> tuple[Tensor | None, Tensor]:
    """(logits (n, classes), features (n, F)) of images (n, C, H, W) in chunks of 512, run in the classifier's
    dtype on its device and returned in float64 on the CPU; without a classifier (None) no logits and the flattened
    pixels as features."""
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


def _set_metrics(feats: Tensor, ref_feats: Tensor, metrics: tuple[str, ...], k: int) -> dict[str, float]:
    """The metrics of a generated set against a reference set, both as features."""
    out: dict[str, float] = {}
    if "fd" in metrics:
        out["fd"] = frechet_distance(feats, ref_feats)
    if "prdc" in metrics:
        kk = min(k, feats.shape[0] - 1, ref_feats.shape[0] - 1)
        rec = prdc(ref_feats, feats, k=kk)
        out.update(precision=rec.precision, recall=rec.recall, density=rec.density, coverage=rec.coverage)
    if "vendi" in metrics:
        out["vendi"] = vendi_score(feats, kernel="cosine")
    return out


def _point_metrics(images: Tensor, logits: Tensor | None, cond: int, metrics: tuple[str, ...]) -> dict[str, float]:
    """The metrics that are means over single images."""
    out: dict[str, float] = {}
    if "accuracy" in metrics and cond >= 0 and logits is not None:
        out["accuracy"] = float((logits.argmax(1) == cond).double().mean())
        out["confidence"] = float(logits.softmax(1)[:, cond].mean())
    flat = images.double().flatten(1)
    if "out_of_range" in metrics:
        out["out_of_range"] = float((flat.abs() > _DATA_RANGE + _TOLERANCE).double().mean())
    if "x0_rms" in metrics:
        out["x0_rms"] = float(flat.pow(2).mean(1).sqrt().mean())
    return out


def splits(m: int, count: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """``count`` random halvings of ``range(m)``: (first half, second half) index pairs, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    half = m // 2
    return [(order[:half], order[half:]) for order in (torch.randperm(m, generator=g) for _ in range(count))]


def _mean(records: list[dict[str, float]]) -> dict[str, float]:
    return {key: float(sum(r[key] for r in records) / len(records)) for key in records[0]} if records else {}


def _measure(
    images: Tensor | None,
    cond: int,
    reference: Tensor,
    classifier: Any,
    metrics: tuple[str, ...],
    k: int,
    count: int,
    seed: int,
) -> dict[str, float]:
    """Set metrics averaged over ``count`` halvings (A, B) of the reference: M(G_k, B) with G_k a random subset of
    the generated images of |A| rows (all of them when fewer), or M(A, B) for the floor (``images`` None);
    point metrics over every generated (or, for the floor, reference) image."""
    if reference.shape[0] < 4:
        raise ValueError(f"reference: need at least 4 images for two halves, got {reference.shape[0]}")
    ref_logits, ref_feats = classify(classifier, reference)
    if images is None:
        point = _point_metrics(reference, ref_logits, cond, metrics)
    else:
        logits, feats = classify(classifier, images)
        point = _point_metrics(images, logits, cond, metrics)
    g = torch.Generator().manual_seed(seed + 1)
    records = []
    for first, second in splits(reference.shape[0], count, seed):
        if images is None:
            chosen = ref_feats[first]
        else:
            chosen = feats[torch.randperm(feats.shape[0], generator=g)[: first.numel()]]
        records.append(_set_metrics(chosen, ref_feats[second], metrics, k))
    return {**point, **_mean(records)}


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
            raise ValueError(f"metrics: unknown image metric {name!r}{did_you_mean(name, IMAGE_METRICS)}")
    return names


def image_metrics(
    images: Tensor,
    cond: int,
    reference: Tensor,
    classifier: Any,
    *,
    metrics: tuple[str, ...] | list[str] | None = None,
    k: int = 5,
    count: int = 5,
    seed: int = _FLOOR_SEED,
) -> dict[str, float]:
    """The metrics (module docstring) of generated ``images`` (n, C, H, W) of class ``cond`` (−1: no class;
    accuracy is then left out) against held-out real ``reference`` images (m ≥ 4, C, H, W) of that class.

    The set metrics (fd, prdc, vendi) are measured at the sizes of their floor (:func:`image_floor`), so the two
    compare: for each of ``count`` halvings (A, B) of the reference (seeded by ``seed``), a random subset of |A|
    generated images against B, averaged. Point metrics use every generated image.

    Args:
        classifier: has ``features(x)`` (batch, F) and ``head(features)`` or ``__call__(x)`` giving logits; None
            measures in pixel space (the flattened images are the features) and leaves accuracy out.
        metrics: names from :data:`IMAGE_METRICS` (default all); ``prdc`` gives four keys, ``accuracy`` two.
        k: the neighbour count of precision/recall/density/coverage (capped at the set sizes − 1).
    """
    images, reference = _check(images, "images"), _check(reference, "reference")
    return _measure(images, cond, reference, classifier, _names(metrics), k, count, seed)


def image_floor(
    reference: Tensor,
    cond: int,
    classifier: Any,
    *,
    metrics: tuple[str, ...] | list[str] | None = None,
    k: int = 5,
    count: int = 5,
    seed: int = _FLOOR_SEED,
) -> dict[str, float]:
    """The same metrics of real data: the set metrics of half A of ``reference`` against half B, averaged over
    the same ``count`` halvings as :func:`image_metrics`; point metrics over every reference image. What real
    data scores: a generated value at its floor is indistinguishable from real data at these sizes."""
    reference = _check(reference, "reference")
    return _measure(None, cond, reference, classifier, _names(metrics), k, count, seed)
