"""Image metrics against independent computations: the Fréchet distance with scipy's ``sqrtm`` and numpy moments,
class fidelity from the classifier's logits with numpy, out-of-range pixels and RMS counted by hand, and the
floor's two halves caught in the act."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
from torch import nn

import guidelab.metrics.images as images_mod
from guidelab.data import load_dataset
from guidelab.metrics.images import frechet_distance, image_floor, image_metrics
from guidelab.train_images import train_classifier


def _fd_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """‖μ_a − μ_b‖² + tr(Σ_a + Σ_b − 2(Σ_a Σ_b)^{1/2}), unbiased covariances."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root).real)


def _features(seed: int, n: int, dim: int, shift: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mix + shift * rng.normal(size=dim)


@pytest.mark.parametrize("dim", [3, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_equals_scipy_sqrtm(seed, dim):
    a = _features(seed, 61, dim, 0.0)
    b = _features(seed + 100, 97, dim, 0.5)
    expected = _fd_scipy(a, b)
    got = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert got == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(torch.from_numpy(b), torch.from_numpy(a)) == pytest.approx(got, rel=1e-10)  # symmetric


@pytest.mark.parametrize("dim", [3, 16])
def test_frechet_distance_of_a_set_with_itself_is_zero(dim):
    a = torch.from_numpy(_features(5, 80, dim, 1.0))
    assert abs(frechet_distance(a, a)) <= 1e-8


def test_frechet_distance_refuses_mismatched_features_naming_them():
    with pytest.raises(ValueError, match=r"^features: "):
        frechet_distance(torch.zeros(5, 3), torch.zeros(5, 4))
    with pytest.raises(ValueError, match=r"^features: "):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))


def _images(seed: int, n: int, shape: tuple[int, ...] = (1, 2, 2), scale: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn((n, *shape), generator=g, dtype=torch.float64)


def test_without_a_classifier_the_features_are_the_pixels():
    x, ref = _images(0, 30), _images(1, 41) + 0.2
    out = image_metrics(x, 3, ref, None)
    assert "accuracy" not in out and "confidence" not in out
    expected = _fd_scipy(x.flatten(1).numpy(), ref.flatten(1).numpy())
    assert out["fd"] == pytest.approx(expected, rel=1e-6)


class _Linear(nn.Module):
    """A classifier whose features and logits are two fixed affine maps of the pixels."""

    def __init__(self, pixels: int, feats: int, classes: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(pixels, feats).double()
        self.head = nn.Linear(feats, classes).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _by_hand(logits: np.ndarray, cond: int) -> tuple[float, float]:
    probs = scipy.special.softmax(logits, axis=1)
    return float(np.mean(np.argmax(logits, axis=1) == cond)), float(np.mean(probs[:, cond]))


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    """A briefly trained ImageClassifier (a random one sends every digit to one class)."""
    out = tmp_path_factory.mktemp("clf") / "clf.safetensors"
    config = {"data": "digits", "steps": 100, "batch_size": 64, "channels": [16, 16, 16], "feature_dim": 8}
    config.update(lr=5e-3, warmup=10, ema_decay=0.9, eval_every=50)
    return train_classifier(config, out, threads=1).model


@pytest.mark.parametrize("kind", ["linear", "image-classifier"])
def test_accuracy_confidence_and_fd_from_the_classifier(kind, trained_classifier):
    if kind == "linear":
        clf = _Linear(4, 3, 5, seed=3)
        x, ref = _images(2, 40), _images(4, 33)
    else:
        clf = trained_classifier
        digits = load_dataset("digits", "val").images  # structured images: GroupNorm levels out plain noise
        x, ref = digits[:40], digits[40:73]
    with torch.no_grad():
        logits = clf(x).double().numpy()
        feats, ref_feats = clf.features(x).double().numpy(), clf.features(ref).double().numpy()
    counts = np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1])
    cond = int(np.argmax(counts))  # a class some images are given, so accuracy is neither 0 nor trivially 1
    assert 0 < counts[cond] < len(x)
    out = image_metrics(x, cond, ref, clf, metrics=["accuracy", "fd"])
    accuracy, confidence = _by_hand(logits, cond)
    assert out["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert out["confidence"] == pytest.approx(confidence, rel=1e-5)
    assert out["fd"] == pytest.approx(_fd_scipy(feats, ref_feats), rel=1e-5)
    other = (cond + 1) % logits.shape[1]
    assert image_metrics(x, other, ref, clf, metrics=["accuracy"])["accuracy"] == pytest.approx(
        _by_hand(logits, other)[0], abs=1e-12
    )
    assert "accuracy" not in image_metrics(x, -1, ref, clf, metrics=["accuracy"])  # no class, no fidelity


def test_out_of_range_counts_only_pixels_beyond_one_grey_level_and_rms_by_hand():
    edge = 1 + 2 / 255
    values = [
        edge,  # on the tolerance: in range
        np.nextafter(edge, np.inf),  # just beyond: out
        -edge,  # in
        np.nextafter(-edge, -np.inf),  # out
        1.0,
        -1.0,
        1.003,  # within one grey level of the edge: in
        -1.005,
        1.5,  # out
        -3.0,  # out
        0.0,
        0.25,
    ]
    x = torch.tensor(values + [0.1] * 4, dtype=torch.float64).reshape(4, 1, 2, 2)
    out = image_metrics(x, -1, _images(1, 8), None, metrics=["out_of_range", "x0_rms"])
    assert out["out_of_range"] == 4 / x.numel()
    flat = x.flatten(1).numpy()
    assert out["x0_rms"] == pytest.approx(np.mean([np.sqrt(np.mean(row**2)) for row in flat]), rel=1e-12)


def _labelled(m: int) -> torch.Tensor:
    """m reference images, image i filled with the value i (so a row says which image it is)."""
    return torch.arange(m, dtype=torch.float64).reshape(m, 1, 1, 1).expand(m, 1, 2, 2).clone()


def _ids(x: torch.Tensor) -> list[int]:
    return [int(v) for v in x[:, 0, 0, 0]]


@pytest.mark.parametrize("m", [9, 12])
def test_floor_measures_one_half_of_a_fixed_permutation_against_the_other(m, monkeypatch):
    seen: list[tuple[list[int], list[int]]] = []

    def spy(images, cond, reference, classifier, metrics, k):
        seen.append((_ids(images), _ids(reference)))
        return {}

    monkeypatch.setattr(images_mod, "_measure", spy)
    ref = _labelled(m)
    image_floor(ref, 0, None)
    image_floor(ref, 0, None)
    image_floor(ref, 0, None, seed=123)
    image_floor(ref, 0, None, seed=124)
    (first, second), again, seeded, other = seen
    assert (first, second) == again  # deterministic
    assert len(first) == m // 2 and len(second) == m - m // 2
    assert not set(first) & set(second) and sorted(first + second) == list(range(m))  # disjoint, all of it
    order = torch.randperm(m, generator=torch.Generator().manual_seed(123)).tolist()
    assert seeded == (order[: m // 2], order[m // 2 :])  # the documented seeded permutation, cut in the middle
    assert other != seeded


def test_floor_values_are_the_metrics_of_its_halves():
    clf = _Linear(4, 3, 5, seed=8)
    ref = _images(6, 30)
    seen = []
    real = images_mod._measure

    def spy(images, cond, reference, classifier, metrics, k):
        seen.append((images, reference))
        return real(images, cond, reference, classifier, metrics, k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(images_mod, "_measure", spy)
        floor = image_floor(ref, 2, clf)
    ((first, second),) = seen
    assert floor == image_metrics(first, 2, second, clf)
    assert floor == image_floor(ref, 2, clf)
    with pytest.raises(ValueError, match=r"^reference: "):
        image_floor(ref[:3], 2, clf)
