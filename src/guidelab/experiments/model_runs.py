"""Sweeps on a trained model: the reference a run is measured against, and one run from samples to stored row.

A sweep whose ``model`` is trained (``kind: checkpoint``, ``shipped`` or ``python``) has no target: it names a
``reference`` instead, the held-out real data its samples are measured against::

    name: digits-cfg-vs-apg
    model: {kind: shipped, name: digits}
    reference: {dataset: digits, conds: [0, 3, 8]}      # or {samples: my_ref.npz, classifier: clf.safetensors}
    grids: [{kind: uniform, steps: 32}]
    solvers: [heun]
    guiders:
      - {name: cfg, params: {scale: [1, 2, 4]}}
      - {name: apg, params: {scale: [2, 4]}}
    n: 200
    metrics: [accuracy, fd, prdc, vendi, out_of_range, x0_rms]   # the default: all of them

Each run samples ``n`` images of one class and measures them (:mod:`guidelab.metrics.images`) against that
class's reference images, with the metrics' real-vs-real floors stored beside them (``<name>_floor``); its images
go to ``OUT/runs/<hash>/samples.npy`` and ``grid.png``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from guidelab.io import write_image_grid, write_json_atomic, write_npy_atomic
from guidelab.validation import did_you_mean

__all__ = ["ReferenceSpec", "execute_model_run", "reference_images"]

_GRID_IMAGES = 32


class ReferenceSpec(BaseModel):
    """The real data of a sweep on a trained model: a shipped dataset's test split, or a sample file (``.npz``
    with ``images`` (m, ...) in the model's data space and ``labels`` (m,) int), with the classifier of the
    metrics (a shipped name or a checkpoint; default the dataset's own, ``<dataset>-classifier``; a sample file
    without one is measured in pixel space, with no accuracy)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str | None = Field(None, description="a shipped dataset: digits or mnist (its test split)")
    samples: str | None = Field(None, description="or: a .npz with images and labels")
    conds: list[str] | None = Field(None, description="the classes to run (default: all)")
    classifier: str | None = Field(None, description="a shipped classifier name or a checkpoint file")

    @model_validator(mode="before")
    @classmethod
    def _conds_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("conds"), list):
            data = {**data, "conds": [str(c) for c in data["conds"]]}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> ReferenceSpec:
        from guidelab.data import DATASETS

        if (self.dataset is None) == (self.samples is None):
            raise ValueError("dataset: give exactly one of dataset (digits, mnist) and samples (a .npz file)")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ValueError(f"dataset: unknown {self.dataset!r}{did_you_mean(self.dataset, DATASETS)}")
        if self.samples is not None and not self.samples.endswith(".npz"):
            raise ValueError(f"samples: expected a .npz file with images and labels, got {self.samples!r}")
        return self

    @property
    def name(self) -> str:
        """What the report calls the reference: the dataset, or the sample file's stem."""
        return self.dataset or Path(self.samples or "").stem

    def classifier_ref(self) -> str | None:
        return self.classifier or (f"{self.dataset}-classifier" if self.dataset else None)


@lru_cache(maxsize=4)
def _load_reference(dataset: str | None, samples: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    if dataset is not None:
        from guidelab.data import load_dataset

        data = load_dataset(dataset, "test")
        return data.images, data.labels
    path = Path(samples or "").expanduser()
    if not path.is_file():
        raise ValueError(f"reference.samples: no such file {samples!r}")
    try:
        with np.load(path, allow_pickle=False) as blob:
            images, labels = blob["images"], blob["labels"]
    except KeyError as err:
        raise ValueError(
            f"reference.samples: {samples!r} lacks the array {err.args[0]!r} (need images, labels)"
        ) from None
    except Exception as err:
        raise ValueError(f"reference.samples: cannot read {samples!r} ({type(err).__name__}: {err})") from None
    if images.shape[0] != labels.shape[0] or labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"reference.samples: expected images (m, ...) and integer labels (m,), got {images.shape} and "
            f"{labels.shape} {labels.dtype}"
        )
    return torch.from_numpy(np.asarray(images, dtype=np.float32)), torch.from_numpy(labels.astype(np.int64))


def reference_images(spec: ReferenceSpec, cond: int) -> torch.Tensor:
    """The reference images of class ``cond`` (all of them for −1); ValueError when there are fewer than 4."""
    images, labels = _load_reference(spec.dataset, spec.samples)
    chosen = images if cond < 0 else images[labels == cond]
    if chosen.shape[0] < 4:
        raise ValueError(f"reference: class {cond} has {chosen.shape[0]} reference images; the metrics need ≥ 4")
    return chosen


@lru_cache(maxsize=4)
def _classifier(ref: str | None) -> Any:
    if ref is None:
        return None
    from guidelab.models.zoo import SHIPPED, load_classifier, shipped_path

    return load_classifier(shipped_path(ref) if ref in SHIPPED else ref)


@lru_cache(maxsize=64)
def _floor(spec_json: str, cond: int, metrics: tuple[str, ...]) -> dict[str, float]:
    from guidelab.metrics.images import image_floor

    spec = ReferenceSpec.model_validate_json(spec_json)
    return image_floor(reference_images(spec, cond), cond, _classifier(spec.classifier_ref()), metrics=metrics)


def check_reference(spec: ReferenceSpec, shape: tuple[int, ...]) -> None:
    """A ValueError naming ``reference`` when its images, or its classifier, do not fit the model's samples."""
    images, _ = _load_reference(spec.dataset, spec.samples)
    if tuple(images.shape[1:]) != tuple(shape):
        raise ValueError(
            f"reference: {spec.name} images are {tuple(images.shape[1:])}, the model samples {tuple(shape)}; "
            f"measure a model against data of its own shape"
        )
    classifier = _classifier(spec.classifier_ref())
    if classifier is not None and tuple(classifier.shape) != tuple(shape):
        raise ValueError(
            f"reference.classifier: it classifies {tuple(classifier.shape)} images, the model samples {tuple(shape)}"
        )


def execute_model_run(spec: Any, out: str, row: dict[str, Any]) -> None:
    """Sample and measure one run on a trained model (``spec``: a RunSpec with a reference), write its samples,
    image grid and ``run.json``, and fill ``row`` (raises on failure; the caller records it)."""
    from guidelab.guiders.describe import schedule_table
    from guidelab.metrics.images import image_metrics
    from guidelab.recipe import fkc_metrics, run_sample

    run_dir = Path(out) / "runs" / spec.hash
    cfg, reference = spec.sample, spec.reference
    outcome = run_sample(cfg)
    result = outcome.result
    row.update(
        target=reference.name,
        cond=outcome.resolved["cond_name"],
        path=outcome.path.config()["name"],
        guider_config=outcome.resolved["guider_config"],
        gamma=outcome.resolved["gamma"],
        schedule=schedule_table(outcome.guider, outcome.path, outcome.grid),
    )
    keep = ~result.diverged
    x = result.x[keep]
    if spec.save_samples:
        write_npy_atomic(run_dir / "samples.npy", result.x.cpu().numpy())
    write_image_grid(result.x[:_GRID_IMAGES].nan_to_num(0.0), run_dir / "grid.png", columns=8, scale=_scale(x))
    metrics: dict[str, float] = {"diverged_fraction": result.num_diverged / cfg.n, "n_excluded": result.num_diverged}
    metrics.update(fkc_metrics(result))
    names = tuple(spec.metrics)
    if x.shape[0] >= 2:
        ref = reference_images(reference, outcome.cond)
        classifier = _classifier(reference.classifier_ref())
        metrics.update(image_metrics(x, outcome.cond, ref, classifier, metrics=names))
        floor = _floor(reference.model_dump_json(), outcome.cond, names)
        metrics.update({f"{k}_floor": v for k, v in floor.items()})
    row["metrics"] = metrics
    write_json_atomic(
        run_dir / "run.json",
        {"hash": spec.hash, "resolved": outcome.resolved, "reference": reference.model_dump(), "metrics": metrics},
    )
    row.update(status="ok", nfe=result.nfe, diverged=result.num_diverged, error=None)


def _scale(x: torch.Tensor) -> int:
    """Pixel zoom of the grid: small images are drawn larger (about 32 pixels a side at least)."""
    side = int(x.shape[-1]) if x.ndim == 4 else 32
    return max(1, 32 // max(side, 1))
