"""The image denoiser's output against its preconditioning written out by hand, and its checkpoints.

With ``x_t = α·x0 + σ·ε``, ``ρ² = σ² + α²σ_d²`` (models/image.py): x0̂ = c_skip·x_t + c_out·F, ε̂ = F, v̂ = s_v·F with
c_skip = σ_d²α/ρ², c_out = σσ_d/ρ, c_in = 1/ρ, c_noise = ¼·log(σ/α), s_v = √(α̇²σ_d² + σ̇²). Here α, σ and their
derivatives are typed in for rf (1 − t, t) and vp-cosine (cos, sin of πt/2), not read from guidelab.paths."""

from __future__ import annotations

import math

import pytest
import torch

from guidelab.models.classifier import ImageClassifier
from guidelab.models.image import ImageDenoiser
from guidelab.models.zoo import load_classifier, load_image_denoiser, save_image_model
from guidelab.paths import convert, get_path

SHAPE = (1, 8, 8)
SIGMA_D = 0.6
TIMES = torch.tensor([0.02, 0.3, 0.55, 0.7, 0.98], dtype=torch.float64)
ARCHS = ("unet", "mlp")
PATHS = ("rf", "vp-cosine")
PREDICTIONS = ("x0", "eps", "velocity")


def _by_hand(path: str, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """α, σ, α̇, σ̇ at t (float64, shaped to broadcast over (batch, 1, 8, 8))."""
    t = t.double().reshape(-1, 1, 1, 1)
    if path == "rf":
        return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
    h = math.pi / 2
    return torch.cos(h * t), torch.sin(h * t), -h * torch.sin(h * t), h * torch.cos(h * t)


def _model(arch: str, prediction: str, path: str, seed: int = 0) -> ImageDenoiser:
    torch.manual_seed(seed)
    return ImageDenoiser(
        SHAPE,
        10,
        path,
        arch=arch,
        prediction=prediction,
        channels=(8, 16),
        hidden=32,
        depth=2,
        embed_dim=16,
        sigma_data=SIGMA_D,
    )


def _perturb(model: ImageDenoiser, seed: int = 1) -> ImageDenoiser:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _inputs(n: int = 5, seed: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x_t = torch.randn((n, *SHAPE), generator=g, dtype=torch.float64)
    cond = torch.tensor([0, 3, -1, 9, 5][:n])
    return x_t, cond


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("arch", ARCHS)
def test_at_init_the_output_is_the_gaussian_fit_or_zero(arch, prediction, path):
    model = _model(arch, prediction, path).double()
    x_t, cond = _inputs()
    for t in (torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=torch.float64), torch.tensor(0.4, dtype=torch.float64)):
        out = model(x_t, t, cond)
        if prediction == "x0":
            alpha, sigma, _, _ = _by_hand(path, t.expand(x_t.shape[0]))
            expected = SIGMA_D**2 * alpha / (sigma**2 + alpha**2 * SIGMA_D**2) * x_t  # E[x0|x_t] of N(0, σ_d²I)
        else:
            expected = torch.zeros_like(x_t)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("prediction", PREDICTIONS)
@pytest.mark.parametrize("arch", ARCHS)
def test_perturbed_output_is_the_preconditioned_network_written_by_hand(arch, prediction, path):
    model = _perturb(_model(arch, prediction, path).double())
    x_t, cond = _inputs()
    alpha, sigma, d_alpha, d_sigma = _by_hand(path, TIMES)
    rho = torch.sqrt(sigma**2 + alpha**2 * SIGMA_D**2)
    raw = model.raw(x_t / rho, (0.25 * torch.log(sigma / alpha)).reshape(-1), cond)
    assert raw.abs().max() > 1e-2  # the network is no longer zero
    if prediction == "x0":
        expected = SIGMA_D**2 * alpha / rho**2 * x_t + sigma * SIGMA_D / rho * raw
    elif prediction == "eps":
        expected = raw
    else:
        expected = torch.sqrt(d_alpha**2 * SIGMA_D**2 + d_sigma**2) * raw
    torch.testing.assert_close(model(x_t, TIMES, cond), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("arch", ARCHS)
def test_the_three_prediction_spaces_of_one_network_are_consistent(arch, path):
    """One set of weights read in the three spaces: v̂ = s_v·ε̂ and x0̂ = c_skip·x_t + c_out·ε̂; and each space's
    prediction converted by guidelab.paths agrees with the path's identities written by hand."""
    eps_model = _perturb(_model(arch, "eps", path).double())
    models = {"eps": eps_model}
    for prediction in ("x0", "velocity"):
        models[prediction] = _model(arch, prediction, path).double()
        models[prediction].load_state_dict(eps_model.state_dict())
    x_t, cond = _inputs()
    alpha, sigma, d_alpha, d_sigma = _by_hand(path, TIMES)
    rho = torch.sqrt(sigma**2 + alpha**2 * SIGMA_D**2)
    pred = {k: m(x_t, TIMES, cond) for k, m in models.items()}
    f = pred["eps"]
    torch.testing.assert_close(pred["velocity"], torch.sqrt(d_alpha**2 * SIGMA_D**2 + d_sigma**2) * f)
    torch.testing.assert_close(pred["x0"], SIGMA_D**2 * alpha / rho**2 * x_t + sigma * SIGMA_D / rho * f)

    c = get_path(path).coefficients(TIMES).expand_as(x_t)
    # eps model: x0 = (x_t − σ·ε̂)/α
    torch.testing.assert_close(convert(f, "eps", "x0", x_t, c), (x_t - sigma * f) / alpha, rtol=1e-12, atol=1e-12)
    # x0 model: ε = (x_t − α·x0̂)/σ, v = α̇·x0̂ + σ̇·ε
    x0 = pred["x0"]
    eps_of_x0 = (x_t - alpha * x0) / sigma
    torch.testing.assert_close(convert(x0, "x0", "eps", x_t, c), eps_of_x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        convert(x0, "x0", "velocity", x_t, c), d_alpha * x0 + d_sigma * eps_of_x0, rtol=1e-12, atol=1e-12
    )
    # velocity model: rf x0 = x_t − t·v, ε = x_t + (1 − t)·v; vp-cosine u = v/(π/2) rotates: x0 = αx_t − σu,
    # ε = σx_t + αu
    v = pred["velocity"]
    t = TIMES.reshape(-1, 1, 1, 1)
    if path == "rf":
        x0_v, eps_v = x_t - t * v, x_t + (1 - t) * v
    else:
        u = v / (math.pi / 2)
        x0_v, eps_v = alpha * x_t - sigma * u, sigma * x_t + alpha * u
    torch.testing.assert_close(convert(v, "velocity", "x0", x_t, c), x0_v, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(convert(v, "velocity", "eps", x_t, c), eps_v, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(alpha * x0_v + sigma * eps_v, x_t, rtol=1e-10, atol=1e-10)


def test_labels_outside_the_classes_are_refused_naming_cond():
    model = _model("mlp", "x0", "rf")
    with pytest.raises(ValueError, match=r"^cond: "):
        model(torch.zeros(2, *SHAPE), torch.tensor(0.5), torch.tensor([0, 10]))


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpoint_round_trip_is_bit_identical(arch, tmp_path):
    model = _perturb(_model(arch, "velocity", "vp-cosine"))
    file = tmp_path / "m.safetensors"
    save_image_model(model, file, {"data": "digits"})
    loaded = load_image_denoiser(file, expect={"data": "digits", "arch": arch})
    assert loaded.config() == model.config()
    assert loaded.checkpoint_config["data"] == "digits"
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype and torch.equal(before[key], after[key]), key
    x_t, cond = _inputs()
    x_t = x_t.float()
    with torch.no_grad():
        assert torch.equal(loaded(x_t, TIMES, cond), model(x_t, TIMES, cond))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


@pytest.fixture
def digits_checkpoint(tmp_path):
    file = tmp_path / "digits.safetensors"
    save_image_model(_perturb(_model("mlp", "x0", "rf")), file, {"data": "digits"})
    return file


def _one_line(err: pytest.ExceptionInfo, field: str) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    assert text.startswith(f"{field}: "), text
    return text


def test_a_checkpoint_of_another_dataset_is_refused_naming_model(digits_checkpoint):
    with pytest.raises(ValueError, match=r"^model: ") as err:
        load_image_denoiser(digits_checkpoint, expect={"data": "mnist"})
    text = _one_line(err, "model")
    assert "'digits'" in text and "'mnist'" in text


def test_a_classifier_file_is_not_a_denoiser_and_back(digits_checkpoint, tmp_path):
    clf_file = tmp_path / "clf.safetensors"
    save_image_model(ImageClassifier(SHAPE, 10, channels=(8, 8, 8), feature_dim=8), clf_file, {"data": "digits"})
    assert load_classifier(clf_file).num_classes == 10
    with pytest.raises(ValueError, match=r"^model: ") as err:
        load_image_denoiser(clf_file)
    assert "guidelab-image-classifier/1" in _one_line(err, "model")
    with pytest.raises(ValueError, match=r"^classifier: ") as err:
        load_classifier(digits_checkpoint)
    assert "guidelab-image-denoiser/1" in _one_line(err, "classifier")


def test_a_truncated_or_missing_file_is_refused_naming_model(digits_checkpoint, tmp_path):
    blob = digits_checkpoint.read_bytes()
    for cut in (len(blob) // 2, len(blob) - 1, 7):
        bad = tmp_path / f"cut-{cut}.safetensors"
        bad.write_bytes(blob[:cut])
        with pytest.raises(ValueError, match=r"^model: ") as err:
            load_image_denoiser(bad)
        assert "cannot read" in _one_line(err, "model") and str(bad) in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        load_image_denoiser(tmp_path / "absent.safetensors")
    _one_line(err, "model")


def test_weights_that_do_not_fit_their_own_config_are_refused_naming_model(tmp_path):
    """A file whose config says one width and whose tensors have another (e.g. metadata edited by hand)."""
    from guidelab.io import save_safetensors_atomic
    from guidelab.models.zoo import DENOISER_FORMAT

    small, wide = _model("mlp", "x0", "rf"), ImageDenoiser(SHAPE, 10, "rf", arch="mlp", hidden=48, depth=2)
    file = tmp_path / "mixed.safetensors"
    save_safetensors_atomic(dict(wide.state_dict()), file, DENOISER_FORMAT, small.config())
    with pytest.raises(ValueError, match=r"^model: ") as err:
        load_image_denoiser(file)
    assert "config" in _one_line(err, "model")
