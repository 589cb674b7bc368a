"""Image datasets that ship with guidelab (nothing is downloaded): scikit-learn's digits and an MNIST subset.

Every dataset has three fixed, stratified splits: ``train`` (what models are trained on), ``val`` (held-out
loss for early stopping) and ``test`` (the reference of every image metric; never trained on). Images are
``(n, 1, H, W)`` float32 in [−1, 1] (pixel 0 ↦ −1, full ink ↦ +1), labels ``(n,)`` int64.

- ``digits``: the 1,797 8×8 images of scikit-learn's ``load_digits`` (UCI optical digits, 17 grey levels),
  split 1,258 / 180 / 359.
- ``mnist``: 28×28, the first 10,000 images of MNIST's training set and the first 2,000 of its test set,
  uint8, in ``mnist_subset.npz`` beside this file (see ``MNIST_LICENSE.md`` there: LeCun, Cortes and Burges,
  CC BY-SA 3.0); the training images split 9,001 / 999, the test images are the test split.

Example::

    from guidelab.data import load_dataset
    data = load_dataset("digits", "test")
    data.images.shape       # torch.Size([359, 1, 8, 8])
    data.of_class(3).shape  # the test images of class 3
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import torch
from torch import Tensor

from guidelab.validation import did_you_mean

__all__ = ["DATASETS", "SPLITS", "ImageData", "dataset_info", "load_dataset"]

DATASETS = ("digits", "mnist")
SPLITS = ("train", "val", "test")
_SPLIT_SEED = 0


@dataclass(frozen=True)
class ImageData:
    """One split of a dataset: ``images`` (n, C, H, W) float32 in [−1, 1], ``labels`` (n,) int64."""

    name: str
    split: str
    images: Tensor
    labels: Tensor
    class_names: tuple[str, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one image, (C, H, W)."""
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def of_class(self, cond: int) -> Tensor:
        """The images of class ``cond`` (m, C, H, W); every image for the null class (−1)."""
        if cond == -1:
            return self.images
        if not 0 <= cond < self.num_classes:
            raise ValueError(f"cond: class index must lie in [-1, {self.num_classes - 1}], got {cond}")
        return self.images[self.labels == cond]

    def one_vs_rest(self, positive: int) -> ImageData:
        """The same images with a binary condition: label 0 for class ``positive``, 1 for every other class; class
        names ``("<positive>", "not-<positive>")`` (the binary-condition setting of Chidambaram et al., arXiv
        2409.13074 §5: "digit 0" against "every other digit"). ValueError names ``one_vs_rest``."""
        if isinstance(positive, bool) or not isinstance(positive, int) or not 0 <= positive < self.num_classes:
            raise ValueError(
                f"one_vs_rest: the positive class must be an integer in [0, {self.num_classes - 1}], got {positive!r}"
            )
        name = self.class_names[positive]
        labels = (self.labels != positive).long()
        return ImageData(self.name, self.split, self.images, labels, (name, f"not-{name}"))

    def class_index(self, cond: str | int) -> int:
        """A class given by name or index (``'null'`` or −1: unconditional) as its index; ValueError names
        ``cond``."""
        if isinstance(cond, str):
            text = cond.strip()
            if text == "null":
                return -1
            if text in self.class_names:
                return self.class_names.index(text)
            try:
                cond = int(text)
            except ValueError:
                raise ValueError(
                    f"cond: unknown class {text!r} of {self.name}{did_you_mean(text, self.class_names)}, null"
                ) from None
        if not -1 <= int(cond) < self.num_classes:
            raise ValueError(f"cond: class index must lie in [-1, {self.num_classes - 1}], got {cond}")
        return int(cond)


def _stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Row indices of each part: every class is shuffled with ``seed`` and cut in the given fractions (the last
    part takes the rest), so each part keeps the class proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        cuts = np.round(np.cumsum(fractions)[:-1] * rows.size).astype(int)
        for part, chunk in zip(parts, np.split(rows, cuts), strict=True):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


@cache
def _digits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn") from err
    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0 * 2 - 1  # 0..16 grey levels -> [-1, 1]
    labels = bunch.target.astype(np.int64)
    train, val, test = _stratified_split(labels, (0.7, 0.1, 0.2), _SPLIT_SEED)
    return {name: (images[rows, None], labels[rows]) for name, rows in zip(SPLITS, (train, val, test), strict=True)}


@cache
def _mnist() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    with resources.files(__package__).joinpath("mnist_subset.npz").open("rb") as f, np.load(f) as blob:
        train_images, train_labels = blob["train_images"], blob["train_labels"].astype(np.int64)
        test_images, test_labels = blob["test_images"], blob["test_labels"].astype(np.int64)

    def scale(u8: np.ndarray) -> np.ndarray:
        return (u8.astype(np.float32) / 255.0 * 2 - 1)[:, None]

    train, val = _stratified_split(train_labels, (0.9, 0.1), _SPLIT_SEED)
    return {
        "train": (scale(train_images[train]), train_labels[train]),
        "val": (scale(train_images[val]), train_labels[val]),
        "test": (scale(test_images), test_labels),
    }


def load_dataset(name: str, split: str = "train") -> ImageData:
    """One split of a shipped dataset (see the module docstring); ValueError names ``data`` or ``split``."""
    if name not in DATASETS:
        raise ValueError(f"data: unknown dataset {name!r}{did_you_mean(name, DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split: unknown split {split!r}{did_you_mean(split, SPLITS)}")
    images, labels = (_digits if name == "digits" else _mnist)()[split]
    return ImageData(
        name, split, torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), tuple(map(str, range(10)))
    )


def dataset_info(name: str) -> dict[str, object]:
    """Plain facts of a dataset for configs and checkpoints: name, image shape, class count."""
    data = load_dataset(name, "val")
    return {"data": name, "shape": list(data.shape), "num_classes": data.num_classes}
