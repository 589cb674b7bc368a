"""Atomic result files: write to a temporary file in the same folder, then rename over the target."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "load_safetensors_checked",
    "save_figure_atomic",
    "save_safetensors_atomic",
    "torch_load_checked",
    "torch_save_atomic",
    "write_atomic",
    "write_json_atomic",
    "write_npy_atomic",
    "write_text_atomic",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Any, mode: str = "wb") -> None:
    """Call ``write(handle)`` on a temporary file beside ``path``, fsync, then rename it onto ``path``."""
    _atomic(Path(path), write, mode)


def torch_save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically."""
    import torch

    _atomic(Path(path), lambda h: torch.save(obj, h), "wb")


def torch_load_checked(path: str | Path) -> Any:
    """``torch.load`` of tensors and plain containers only (no pickled code), on the CPU; a missing file or
    one that cannot be read raises an error naming the checkpoint."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint: no such file {str(path)!r}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"checkpoint: cannot read {str(path)!r} ({first[:160]})") from None


def save_safetensors_atomic(tensors: dict[str, Any], path: str | Path, fmt: str, config: dict[str, Any]) -> None:
    """Write ``tensors`` (name -> contiguous CPU tensor) as a safetensors file, atomically, with the metadata
    ``{"format": fmt, "config": <config as JSON>}`` (safetensors keeps string metadata only)."""
    from safetensors.torch import save

    blob = save(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        metadata={"format": fmt, "config": json.dumps(config, sort_keys=True)},
    )
    _atomic(Path(path), lambda h: h.write(blob), "wb")


def load_safetensors_checked(path: str | Path, fmt: str, what: str = "checkpoint") -> tuple[dict[str, Any], dict]:
    """``(tensors, config)`` of a file written by :func:`save_safetensors_atomic` with format ``fmt``; a missing,
    truncated or foreign file raises one error naming ``what`` and the file."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {str(path)!r}")
    try:  # one open gives the metadata and the tensors
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    except Exception as err:  # a truncated or foreign file: safetensors raises its own error type
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{what}: cannot read {str(path)!r} as safetensors ({first[:160]})") from None
    found = metadata.get("format")
    if found != fmt:
        kind = f"a {found!r} file" if found else "not a guidelab file"
        raise ValueError(f"{what}: {str(path)!r} is {kind}, expected {fmt!r}")
    return tensors, json.loads(metadata.get("config", "{}"))


def write_image_grid(images: Any, path: str | Path, *, columns: int = 8, scale: int = 1) -> None:
    """Write images (n, C, H, W) with values in [−1, 1] (C = 1 grey or 3 RGB; clipped) as one PNG sheet,
    ``columns`` per row, each pixel ``scale``× (nearest), atomically."""
    from PIL import Image

    x = np.asarray(images.detach().cpu().float() if hasattr(images, "detach") else images, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
        raise ValueError(f"images: expected (n, 1 or 3, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    sheet = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, dtype=np.uint8)  # 1-pixel white gutters
    pixels = np.round((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8).transpose(0, 2, 3, 1)
    for i in range(n):
        r, k = divmod(i, cols)
        sheet[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = pixels[i]
    image = Image.fromarray(sheet[..., 0] if c == 1 else sheet)
    if scale > 1:
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    _atomic(Path(path), lambda h: image.save(h, format="PNG"), "wb")


def save_figure_atomic(fig: Any, path: str | Path, **savefig_kwargs: Any) -> None:
    """``fig.savefig(path)`` (format from the suffix), atomically."""
    path = Path(path)
    fmt = savefig_kwargs.pop("format", path.suffix.lstrip(".") or "png")
    _atomic(path, lambda h: fig.savefig(h, format=fmt, **savefig_kwargs), "wb")


def _atomic(path: Path, write: Any, mode: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the permissions open() would
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON to ``path`` atomically."""
    _atomic(Path(path), lambda h: json.dump(data, h, indent=2, sort_keys=False, allow_nan=True), "w")


def write_npy_atomic(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` to ``path`` atomically."""
    _atomic(Path(path), lambda h: np.save(h, array, allow_pickle=False), "wb")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically: a reader never sees half a page."""
    _atomic(Path(path), lambda h: h.write(text), "w")
