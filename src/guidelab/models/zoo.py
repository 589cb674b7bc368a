"""Image model checkpoints (safetensors) and the models that ship with guidelab.

A checkpoint is one safetensors file: the weights, and as metadata the format and the config (the network's
constructor arguments, the dataset it was trained on, and its training record). Loading checks the format, the
architecture and, where the caller says what it expects, the dataset and image shape, with one clear line.

Shipped models (``SHIPPED``), trained by ``guidelab train`` / ``guidelab train-classifier`` with the commands
in ``models/weights/README.md`` and reproduced by them:

- ``digits``: a UNet (rf path, x0 prediction) on scikit-learn's digits; ``digits-mlp``: an MLP on the same;
- ``digits-0-vs-rest``: the digits UNet's recipe with a binary condition, label 0 the digit 0 and label 1 every
  other digit (``guidelab train --one-vs-rest 0``; the ``chidambaram-mnist`` reproduction);
- ``mnist``: a UNet (rf, x0) on the MNIST subset; ``mnist-0-vs-rest``: a smaller UNet (channels 16/32/32, 2,000
  steps) with the binary condition 0 against the rest (``chidambaram-mnist`` at paper size);
- ``digits-classifier``, ``mnist-classifier``: the classifiers of the image metrics.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from guidelab.io import load_safetensors_checked, save_safetensors_atomic
from guidelab.models.classifier import ImageClassifier
from guidelab.models.image import ImageDenoiser
from guidelab.validation import did_you_mean

__all__ = [
    "CLASSIFIER_FORMAT",
    "DENOISER_FORMAT",
    "SHIPPED",
    "SHIPPED_DENOISERS",
    "load_classifier",
    "load_image_denoiser",
    "load_model_file",
    "save_image_model",
    "shipped_path",
]

DENOISER_FORMAT = "guidelab-image-denoiser/1"
CLASSIFIER_FORMAT = "guidelab-image-classifier/1"

SHIPPED = {
    "digits": "digits-unet.safetensors",
    "digits-mlp": "digits-mlp.safetensors",
    "digits-0-vs-rest": "digits-0-vs-rest-unet.safetensors",
    "mnist": "mnist-unet.safetensors",
    "mnist-0-vs-rest": "mnist-0-vs-rest-unet.safetensors",
    "digits-classifier": "digits-classifier.safetensors",
    "mnist-classifier": "mnist-classifier.safetensors",
}


SHIPPED_DENOISERS = tuple(name for name in SHIPPED if not name.endswith("-classifier"))


def shipped_path(name: str) -> Path:
    """The file of a shipped model; ValueError names ``model`` for an unknown name."""
    if name not in SHIPPED:
        raise ValueError(f"model: unknown shipped model {name!r}{did_you_mean(name, SHIPPED)}")
    path = Path(str(resources.files("guidelab.models").joinpath("weights", SHIPPED[name])))
    if not path.is_file():
        raise FileNotFoundError(f"model: the shipped model {name!r} is missing from the installation ({path})")
    return path


def save_image_model(model: ImageDenoiser | ImageClassifier, path: str | Path, extra: dict[str, Any]) -> None:
    """Write ``model``'s weights and ``{**extra, **model.config()}`` to ``path`` atomically (safetensors)."""
    fmt = DENOISER_FORMAT if isinstance(model, ImageDenoiser) else CLASSIFIER_FORMAT
    save_safetensors_atomic(dict(model.state_dict()), path, fmt, {**extra, **model.config()})


def _expect(config: dict[str, Any], path: str | Path, expect: dict[str, Any] | None, what: str) -> None:
    for key, want in (expect or {}).items():
        have = config.get(key)
        if want is not None and have is not None and have != want:
            raise ValueError(
                f"{what}: {str(path)!r} was trained with {key} {have!r}, not {want!r}; train one for {want!r} "
                f"(guidelab train) or name another checkpoint"
            )


def _load(path: str | Path, fmt: str, cls: type, expect: dict[str, Any] | None, what: str) -> tuple[nn.Module, dict]:
    tensors, config = load_safetensors_checked(path, fmt, what)
    _expect(config, path, expect, what)
    model = cls.from_config(config)
    try:
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    except RuntimeError as err:  # a weight of another shape: torch's message is one line per tensor
        detail = next((line.strip() for line in str(err).splitlines()[1:] if line.strip()), type(err).__name__)
        raise ValueError(f"{what}: {str(path)!r} does not match its own config ({detail[:160]})") from None
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise ValueError(f"{what}: {str(path)!r} does not match its own config (weight {first!r})")
    model.eval()
    model.requires_grad_(False)
    return model, config


def load_image_denoiser(path: str | Path, expect: dict[str, Any] | None = None) -> ImageDenoiser:
    """An :class:`ImageDenoiser` from a checkpoint, in eval mode; ``expect`` (e.g. ``{"data": "digits", "arch":
    "unet"}``) refuses a checkpoint trained otherwise with one line naming ``model``. The config stays on the
    model as ``checkpoint_config``."""
    model, config = _load(path, DENOISER_FORMAT, ImageDenoiser, expect, "model")
    model.checkpoint_config = config
    if "class_names" in config:  # a relabelled model (e.g. one-vs-rest) names its classes
        model.class_names = tuple(str(n) for n in config["class_names"])
    return model  # type: ignore[return-value]


def load_classifier(path: str | Path, expect: dict[str, Any] | None = None) -> ImageClassifier:
    """An :class:`ImageClassifier` from a checkpoint, in eval mode (``expect`` as for the denoiser)."""
    model, config = _load(path, CLASSIFIER_FORMAT, ImageClassifier, expect, "classifier")
    model.checkpoint_config = config
    return model  # type: ignore[return-value]


def load_model_file(name_or_path: str, expect: dict[str, Any] | None = None) -> ImageDenoiser:
    """A shipped model by name, or a checkpoint file by path."""
    path = shipped_path(name_or_path) if name_or_path in SHIPPED else Path(name_or_path)
    return load_image_denoiser(path, expect)
