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
from image_reference import fd_scipy, floor_fd, halvings, matched_fd


def _features(seed: int, n: int, dim: int, shift: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mix + shift * rng.normal(size=dim)


@pytest.mark.parametrize("dim", [3, 16])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_equals_scipy_sqrtm(seed, dim):
    a = _features(seed, 61, dim, 0.0)
    b = _features(seed + 100, 97, dim, 0.5)
    expected = fd_scipy(a, b)
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
    expected = matched_fd(x.flatten(1).numpy(), ref.flatten(1).numpy())
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
    assert out["fd"] == pytest.approx(matched_fd(feats, ref_feats), rel=1e-5)
    other = (cond + 1) % logits.shape[1]
    assert image_metrics(x, other, ref, clf, metrics=["accuracy"])["accuracy"] == pytest.approx(
        _by_hand(logits, other)[0], abs=1e-12
    )
    assert "accuracy" not in image_metrics(x, -1, ref, clf, metrics=["accuracy"])  # no class, no fidelity


def test_out_of_range_counts_only_pixels_beyond_the_tolerance_and_rms_by_hand():
    edge = 1 + 0.05
    values = [
        edge,  # on the tolerance: in range
        np.nextafter(edge, np.inf),  # just beyond: out
        -edge,  # in
        np.nextafter(-edge, -np.inf),  # out
        1.0,
        -1.0,
        1.03,  # within the tolerance of the edge: in
        -1.049,
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


@pytest.mark.parametrize("m", [9, 12])
def test_halvings_are_disjoint_cover_the_set_and_follow_the_documented_seed(m):
    pairs = images_mod.splits(m, 5, 123)
    assert len(pairs) == 5
    for (first, second), (a, b) in zip(pairs, halvings(m, 5, 123), strict=True):
        assert first.numel() == m // 2 and second.numel() == m - m // 2
        assert not set(first.tolist()) & set(second.tolist())
        assert sorted(first.tolist() + second.tolist()) == list(range(m))
        assert first.tolist() == a.tolist() and second.tolist() == b.tolist()
    assert [p[0].tolist() for p in pairs] != [p[0].tolist() for p in images_mod.splits(m, 5, 124)]


def test_floor_is_the_mean_over_halvings_of_real_against_real():
    clf = _Linear(4, 3, 5, seed=8)
    ref = _images(6, 30)
    floor = image_floor(ref, 2, clf)
    with torch.no_grad():
        feats = clf.features(ref).double().numpy()
        logits = clf(ref).double().numpy()
    assert floor["fd"] == pytest.approx(floor_fd(feats), rel=1e-6)
    assert floor["accuracy"] == pytest.approx(_by_hand(logits, 2)[0], abs=1e-12)  # point metrics: every image
    assert floor == image_floor(ref, 2, clf)  # deterministic
    assert floor["fd"] != image_floor(ref, 2, clf, seed=5)["fd"]
    with pytest.raises(ValueError, match=r"^reference: "):
        image_floor(ref[:3], 2, clf)


def test_a_run_and_its_floor_compare_at_the_same_sizes():
    """A 'generated' set drawn from the reference's own distribution scores about its floor, however many images
    it has: the set metrics are measured at the floor's sizes."""
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(40, 1, 2, 2, generator=g, dtype=torch.float64)
    floor = image_floor(ref, -1, None, metrics=["fd"])["fd"]
    for n in (25, 400):
        gen = torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)
        value = image_metrics(gen, -1, ref, None, metrics=["fd"])["fd"]
        assert value == pytest.approx(matched_fd(gen.flatten(1).numpy(), ref.flatten(1).numpy()), rel=1e-6)
        assert 0.4 * floor < value < 2.5 * floor
