"""The models that ship with guidelab: they load, their classifiers score what their checkpoints say, and the digits
UNet shows guidance's trade-off (the issue's bar: at γ = 1 at least 90% classifier accuracy and a Fréchet distance
within 3× of the real-vs-real floor; at γ = 3 higher accuracy and lower Vendi)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guidelab.data import load_dataset
from guidelab.grids import make_grid
from guidelab.guiders import build_guider
from guidelab.metrics.images import image_floor, image_metrics
from guidelab.models.trained import load_trained
from guidelab.models.zoo import SHIPPED, SHIPPED_DENOISERS, load_classifier, shipped_path
from guidelab.sampling import sample


@pytest.mark.parametrize("data", ["digits", "mnist"])
def test_the_shipped_classifier_scores_its_stored_test_accuracy(data):
    clf = load_classifier(shipped_path(f"{data}-classifier"))
    test = load_dataset(data, "test")
    with torch.no_grad():
        predicted = np.argmax(clf(test.images).numpy(), axis=1)
    accuracy = float(np.mean(predicted == test.labels.numpy()))
    assert accuracy == pytest.approx(clf.checkpoint_config["test_accuracy"], abs=1e-12)
    assert accuracy >= {"digits": 0.98, "mnist": 0.95}[data]
    assert clf.checkpoint_config["data"] == data


@pytest.mark.parametrize("name", SHIPPED_DENOISERS)
def test_every_shipped_denoiser_loads_and_denoises_its_own_data_better_than_the_gaussian_fit(name):
    model = load_trained("shipped", name)
    data = load_dataset(model.checkpoint_config["data"], "test")
    positive = model.checkpoint_config["train"].get("one_vs_rest")
    if positive is not None:  # a binary-condition model: its labels are "positive" (0) and "the rest" (1)
        data = data.one_vs_rest(positive)
    x0, labels = data.images[:128], data.labels[:128]
    g = torch.Generator().manual_seed(0)
    t = torch.full((128,), 0.5, dtype=torch.float64)
    c = model.path.coefficients(t)
    x_t = c.alpha.float()[:, None, None, None] * x0 + c.sigma.float()[:, None, None, None] * torch.randn(
        x0.shape, generator=g
    )
    with torch.no_grad():
        error = (model(x_t, t, labels) - x0).pow(2).mean()
    # the x0 prediction of data N(0, σ_d²): c_skip·x_t, the network's starting point
    sd2 = model.sigma_data**2
    a, s = c.alpha.float()[:, None, None, None], c.sigma.float()[:, None, None, None]
    gaussian = (sd2 * a / (s**2 + a**2 * sd2) * x_t - x0).pow(2).mean()
    assert error < 0.5 * gaussian
    assert name in SHIPPED and model.checkpoint_config["train"]["path"] == "rf"


def _digits_samples(scale: float, n_per_class: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    model = load_trained("shipped", "digits")
    labels = torch.arange(10).repeat_interleave(n_per_class)
    grid = make_grid("uniform", 16, model.path)
    with torch.no_grad():
        result = sample(
            model,
            build_guider("cfg", scale=scale),
            grid=grid,
            n=labels.numel(),
            shape=model.shape,
            cond=labels,
            solver="heun",
            seed=0,
        )
    assert result.num_diverged == 0
    return result.x, labels


@pytest.fixture(scope="module")
def digits_metrics():
    clf = load_classifier(shipped_path("digits-classifier"))
    test = load_dataset("digits", "test")
    out = {}
    for scale in (1.0, 3.0):
        x, labels = _digits_samples(scale)
        per_class = [image_metrics(x[labels == c], c, test.of_class(c), clf) for c in range(10)]
        out[scale] = {k: float(np.mean([m[k] for m in per_class])) for k in per_class[0]}
    floors = [image_floor(test.of_class(c), c, clf) for c in range(10)]
    out["floor"] = {k: float(np.mean([m[k] for m in floors])) for k in floors[0]}
    return out


def test_the_digits_model_unguided_is_accurate_and_near_the_floor(digits_metrics):
    unguided, floor = digits_metrics[1.0], digits_metrics["floor"]
    assert unguided["accuracy"] >= 0.90
    assert unguided["fd"] <= 3 * floor["fd"]


def test_guidance_buys_accuracy_with_diversity_on_the_digits_model(digits_metrics):
    unguided, guided = digits_metrics[1.0], digits_metrics[3.0]
    assert guided["accuracy"] >= unguided["accuracy"]
    assert guided["confidence"] > unguided["confidence"]
    assert guided["vendi"] < unguided["vendi"]
    assert guided["recall"] < unguided["recall"]  # fewer real images are covered
