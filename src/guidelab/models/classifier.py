"""The small image classifier behind the image metrics: class fidelity (accuracy, confidence) and the feature
space of the Fréchet distance, precision/recall/density/coverage and Vendi.

Three 3×3 convolution stages (GroupNorm, SiLU; the last two with stride 2), global average pooling to a
``feature_dim`` vector (the features), then one linear layer to the logits. It is trained by
``guidelab train-classifier`` on the training split of a shipped dataset; its test accuracy is stored in its
checkpoint's config (``test_accuracy``).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

__all__ = ["ImageClassifier"]


class ImageClassifier(nn.Module):
    """Logits (batch, classes) and features (batch, feature_dim) of images (batch, C, H, W) in [−1, 1].

    Args:
        shape: one image's shape (C, H, W).
        num_classes: number of classes.
        channels: channels of the three convolution stages.
        feature_dim: size of the feature vector.
    """

    def __init__(
        self,
        shape: tuple[int, int, int] | list[int],
        num_classes: int,
        *,
        channels: tuple[int, int, int] | list[int] = (32, 64, 64),
        feature_dim: int = 64,
    ):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape: expected (C, H, W) with positive sizes, got {shape}")
        channels = tuple(int(c) for c in channels)
        if len(channels) != 3 or min(channels) < 1:
            raise ValueError(f"channels: expected three positive channel counts, got {list(channels)}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an integer ≥ 2, got {num_classes!r}")
        self.shape, self.num_classes, self.channels, self.feature_dim = shape, num_classes, channels, int(feature_dim)
        layers: list[nn.Module] = []
        prev = shape[0]
        for i, ch in enumerate(channels):
            layers += [nn.Conv2d(prev, ch, 3, stride=1 if i == 0 else 2, padding=1), nn.GroupNorm(8, ch), nn.SiLU()]
            prev = ch
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, feature_dim))
        self.head = nn.Sequential(nn.SiLU(), nn.Linear(feature_dim, num_classes))

    def config(self) -> dict[str, Any]:
        return {
            "kind": "image-classifier",
            "shape": list(self.shape),
            "num_classes": self.num_classes,
            "channels": list(self.channels),
            "feature_dim": self.feature_dim,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> ImageClassifier:
        for key in ("shape", "num_classes"):
            if key not in config:
                raise ValueError(f"config: missing field {key!r}")
        return cls(
            config["shape"],
            config["num_classes"],
            **{k: config[k] for k in ("channels", "feature_dim") if k in config},
        )

    def _check(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"images: expected shape (batch, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        return x.to(next(self.parameters()).dtype)

    def features(self, x: Tensor) -> Tensor:
        """The feature vectors (batch, feature_dim) of images (batch, C, H, W)."""
        return self.body(self._check(x))

    def forward(self, x: Tensor) -> Tensor:
        """The logits (batch, num_classes)."""
        return self.head(self.body(self._check(x)))
