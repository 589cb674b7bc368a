"""The shipped image datasets against their sources: scikit-learn's ``load_digits`` and the committed MNIST npz.

Splits are compared as multisets of (image, label) with the source, so a lost, duplicated or altered image fails;
stratification is checked against each class's share of the whole set, not against the split fractions in the
code."""

from __future__ import annotations

from collections import Counter
from importlib import resources

import numpy as np
import pytest
from sklearn.datasets import load_digits

from guidelab.data import SPLITS, load_dataset


def _levels(images: np.ndarray) -> np.ndarray:
    """[−1, 1] back to digits' 17 grey levels 0..16 (exact integers, or the test fails)."""
    levels = (images.astype(np.float64) + 1) / 2 * 16
    rounded = np.rint(levels)
    np.testing.assert_allclose(levels, rounded, rtol=0, atol=1e-5)
    return rounded.astype(np.int64)


def _multiset(images: np.ndarray, labels: np.ndarray) -> Counter:
    return Counter((img.tobytes(), int(lab)) for img, lab in zip(images, labels, strict=True))


@pytest.fixture(scope="module")
def digits():
    return {s: load_dataset("digits", s) for s in SPLITS}


@pytest.fixture(scope="module")
def mnist_npz():
    with resources.files("guidelab.data").joinpath("mnist_subset.npz").open("rb") as f, np.load(f) as blob:
        return {k: blob[k] for k in blob.files}


def test_digits_splits_are_a_partition_of_sklearn_digits(digits):
    source = load_digits()
    whole = _multiset(source.images.astype(np.int64), source.target)
    parts = [_multiset(_levels(digits[s].images.numpy()[:, 0]), digits[s].labels.numpy()) for s in SPLITS]
    # the union as a multiset is the source: no image lost, none counted twice (so the splits are disjoint),
    # the source's few duplicate images kept as often as they occur there
    assert sum(parts, Counter()) == whole
    assert sum(len(digits[s]) for s in SPLITS) == len(source.target)


def test_digits_values_are_the_17_grey_levels_in_minus_one_one(digits):
    for s in SPLITS:
        x = digits[s].images
        assert x.dtype.is_floating_point and tuple(x.shape[1:]) == (1, 8, 8)
        assert float(x.min()) >= -1 and float(x.max()) <= 1
        levels = _levels(x.numpy())
        assert levels.min() >= 0 and levels.max() <= 16
        np.testing.assert_allclose(x.numpy(), levels / 16 * 2 - 1, rtol=0, atol=1e-6)
    everything = np.concatenate([_levels(digits[s].images.numpy()) for s in SPLITS])
    assert set(np.unique(everything)) == set(range(17))  # the full range is used: 0 ↦ −1 and 16 ↦ +1


@pytest.mark.parametrize("name", ["digits", "mnist"])
def test_stratification_keeps_class_proportions_within_one_image(name):
    splits = {s: load_dataset(name, s) for s in SPLITS}
    pooled = ("train", "val") if name == "mnist" else SPLITS  # MNIST's test split is its own test set
    labels = np.concatenate([splits[s].labels.numpy() for s in pooled])
    total = np.bincount(labels, minlength=10)
    for s in pooled:
        share = len(splits[s]) / labels.size
        counts = np.bincount(splits[s].labels.numpy(), minlength=10)
        assert np.all(np.abs(counts - total * share) <= 1), (s, counts, total * share)


def test_mnist_test_split_is_the_npz_test_set_scaled(mnist_npz):
    test = load_dataset("mnist", "test")
    u8 = mnist_npz["test_images"]
    assert u8.dtype == np.uint8 and test.images.shape == (u8.shape[0], 1, 28, 28)
    expected = u8.astype(np.float64)[:, None] / 255 * 2 - 1  # pixel 0 ↦ −1, 255 ↦ +1 (the module docstring)
    np.testing.assert_allclose(test.images.numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(test.labels.numpy(), mnist_npz["test_labels"].astype(np.int64))


def test_mnist_train_and_val_partition_the_npz_training_images(mnist_npz):
    parts = [load_dataset("mnist", s) for s in ("train", "val")]
    back = [np.rint((p.images.numpy()[:, 0].astype(np.float64) + 1) / 2 * 255).astype(np.uint8) for p in parts]
    got = sum((_multiset(b, p.labels.numpy()) for b, p in zip(back, parts, strict=True)), Counter())
    assert got == _multiset(mnist_npz["train_images"], mnist_npz["train_labels"])


def test_same_split_twice_is_identical_and_a_copy(digits):
    again = load_dataset("digits", "train")
    assert again.images.equal(digits["train"].images) and again.labels.equal(digits["train"].labels)
    again.images.add_(1)  # the caller's copy: the next load is unchanged
    assert load_dataset("digits", "train").images.equal(digits["train"].images)


@pytest.mark.parametrize(("args", "field"), [(("cifar", "train"), "data"), (("digits", "training"), "split")])
def test_bad_name_or_split_is_one_line_naming_the_field(args, field):
    with pytest.raises(ValueError, match=rf"^{field}: ") as info:
        load_dataset(*args)
    assert "\n" not in str(info.value)
