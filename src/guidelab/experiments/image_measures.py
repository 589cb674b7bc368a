"""Measures of the decoded images of a sweep run on a diffusers pipeline: built-in ones that mean something on any
model, and the user's own, named ``"module.path:function"`` in the sweep file.

Every measure sees one run (one prompt or class label, one guider setting, one seed) through an
:class:`ImageMeasureInput`:

- ``images``: a float32 array (n, H, W, 3) with values in [0, 1], the decoded images in the order of their noise
  indices, **diverged samples left out** (as every metric of a sweep does; the row's ``n_excluded`` counts them);
- ``latents``: the final latents (n, C, h, w) of the same samples, float32;
- ``condition``: the prompt (a string) of a text-to-image pipeline, or the class id (an int) of a DiT.

Built-in measures (dependency-free, keyed by their name):

- ``saturation``: the fraction of channel values at an end of the 8-bit range (``rint(255·x)`` is 0 or 255), over
  every pixel and channel of every image: clipped shadows and highlights, the over-saturation of high CFG scales.
- ``latent_rms``: the mean over images of the final latent's root mean square ``‖z‖₂ / √(C·h·w)`` (the norm of the
  sampled x0 in latent space; guidance that extrapolates inflates it).
- ``pixel_diversity``: the mean over the pairs i < j of the images' root-mean-square pixel distance
  ``√(mean((x_i − x_j)²))`` (in [0, 1]; a diversity measure with no network; NaN for fewer than two images).

A user metric is a callable ``function(images, condition)`` with ``images`` and ``condition`` as above; it returns a
float (stored under the function's name) or a dict of floats (stored as ``function.key``). Its module is imported
from ``sys.path`` or the current folder.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from guidelab.validation import did_you_mean

__all__ = [
    "IMAGE_MEASURES",
    "ImageMeasureInput",
    "ImageMetric",
    "latent_rms",
    "measure_images",
    "pixel_diversity",
    "resolve_image_metric",
    "resolve_image_metrics",
    "saturation",
    "to_uint8",
]


@dataclass
class ImageMeasureInput:
    """One run's images for the measures (see the module docstring).

    Attributes:
        images: float32 (n, H, W, 3) in [0, 1], diverged samples left out.
        latents: float32 (n, C, h, w), the same samples' final latents.
        condition: the prompt (str) or the class id (int).
    """

    images: np.ndarray
    latents: np.ndarray
    condition: str | int


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images (n, H, W, 3) in [0, 1] as the 8-bit values a PNG stores: ``rint(255·clip(x, 0, 1))``."""
    return np.rint(np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def saturation(images: np.ndarray) -> float:
    """The fraction of channel values of ``images`` (n, H, W, 3) in [0, 1] that are 0 or 255 in 8 bits.

    Raises:
        ValueError: naming ``images`` when it is empty.
    """
    if np.asarray(images).size == 0:
        raise ValueError("images: no image to measure")
    q = to_uint8(images)
    return float(np.mean((q == 0) | (q == 255)))


def latent_rms(latents: np.ndarray) -> float:
    """The mean over samples of ``‖z‖₂ / √(C·h·w)`` for latents (n, C, h, w), in float64.

    Raises:
        ValueError: naming ``latents`` when there is no sample.
    """
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim < 2 or z.shape[0] == 0:
        raise ValueError(f"latents: expected (n, C, h, w) with n ≥ 1, got shape {z.shape}")
    flat = z.reshape(z.shape[0], -1)
    return float(np.mean(np.sqrt(np.mean(flat**2, axis=1))))


def pixel_diversity(images: np.ndarray) -> float:
    """The mean over pairs i < j of ``√(mean((x_i − x_j)²))`` for images (n, H, W, 3), in float64; NaN for n < 2."""
    x = np.asarray(images, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return math.nan
    flat = x.reshape(n, -1)
    sq = np.sum(flat**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * flat @ flat.T, 0.0) / flat.shape[1]
    i, j = np.triu_indices(n, k=1)
    return float(np.mean(np.sqrt(d2[i, j])))


IMAGE_MEASURES: dict[str, Callable[[ImageMeasureInput], dict[str, float]]] = {
    "saturation": lambda inp: {"saturation": saturation(inp.images)},
    "latent_rms": lambda inp: {"latent_rms": latent_rms(inp.latents)},
    "pixel_diversity": lambda inp: {"pixel_diversity": pixel_diversity(inp.images)},
}


@dataclass(frozen=True)
class ImageMetric:
    """A resolved metric of a pipeline sweep: its ``spec`` as written, the ``name`` its values are stored under,
    and ``measure`` (an :class:`ImageMeasureInput` → a flat dict of floats)."""

    spec: str
    name: str
    measure: Callable[[ImageMeasureInput], dict[str, float]]


@contextlib.contextmanager
def _current_folder_importable() -> Iterator[None]:
    """Let ``import`` find modules in the current folder for the duration (the ``guidelab`` script's own
    ``sys.path`` does not hold it)."""
    cwd = os.getcwd()
    added = "" not in sys.path and cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        yield
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)


def resolve_image_metric(spec: str) -> ImageMetric:
    """A built-in name (:data:`IMAGE_MEASURES`) or ``"module.path:function"``, imported, as an :class:`ImageMetric`.

    Raises:
        ValueError: one line saying what is wrong with ``spec``: an unknown name, a module that cannot be
            imported (or raises on import), no such function, or not a callable.
    """
    if not isinstance(spec, str):
        raise ValueError(f"expected a metric name or 'module.path:function', got {spec!r}")
    if spec in IMAGE_MEASURES:
        return ImageMetric(spec, spec, IMAGE_MEASURES[spec])
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"unknown metric {spec!r}{did_you_mean(spec, IMAGE_MEASURES)}, or 'module.path:function' for your own"
        )
    try:
        with _current_folder_importable():
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"metric {spec!r}: cannot import module {module_name!r} ({err})") from None
    except Exception as err:  # the module itself raised while importing
        raise ValueError(f"metric {spec!r}: importing {module_name!r} raised {type(err).__name__}: {err}") from None
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"metric {spec!r}: module {module_name!r} has no {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"metric {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    name = attr.rsplit(".", 1)[-1]
    return ImageMetric(spec, name, _user_measure(spec, name, fn))


def _user_measure(spec: str, name: str, fn: Callable[..., Any]) -> Callable[[ImageMeasureInput], dict[str, float]]:
    def measure(inp: ImageMeasureInput) -> dict[str, float]:
        value = fn(inp.images, inp.condition)
        if isinstance(value, Mapping):
            return {f"{name}.{key}": _float(spec, value[key]) for key in value}
        return {name: _float(spec, value)}

    return measure


def _float(spec: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(
            f"metric {spec!r} returned {type(value).__name__}; a metric returns a float or a dict of floats"
        ) from None


def resolve_image_metrics(specs: Sequence[str]) -> list[ImageMetric]:
    """Every spec resolved (:func:`resolve_image_metric`), their names checked to be distinct.

    Raises:
        ValueError: one line per mistake, each starting with ``metrics[i]``.
    """
    out, errors, seen = [], [], {}
    for i, spec in enumerate(specs):
        try:
            metric = resolve_image_metric(spec)
        except ValueError as err:
            errors.append(f"metrics[{i}]: {err}")
            continue
        if metric.name in seen:
            errors.append(f"metrics[{i}]: {spec!r} is stored as {metric.name!r}, as metrics[{seen[metric.name]}] is")
            continue
        seen[metric.name] = i
        out.append(metric)
    if errors:
        raise ValueError("\n".join(errors))
    return out


def measure_images(metrics: Sequence[ImageMetric], inp: ImageMeasureInput) -> dict[str, float]:
    """Every metric on one run, merged into one flat dict (a user metric that raises fails the run)."""
    out: dict[str, float] = {}
    for metric in metrics:
        out.update(metric.measure(inp))
    return out
