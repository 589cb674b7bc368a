"""Atomic result files: write to a temporary file in the same folder, then rename over the target."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "save_figure_atomic",
    "torch_load_checked",
    "torch_save_atomic",
    "write_atomic",
    "write_json_atomic",
    "write_npy_atomic",
    "write_text_atomic",
    "save_safetensors_atomic",
    "load_safetensors_checked",
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
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {str(path)!r}")
    data = path.read_bytes()
    try:
        with safe_open(path, "pt") as f:
            metadata = f.metadata() or {}
        tensors = load(data)
    except Exception as err:  # a truncated or foreign file: safetensors raises its own error type
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ValueError(f"{what}: cannot read {str(path)!r} as safetensors ({first[:160]})") from None
    found = metadata.get("format")
    if found != fmt:
        kind = f"a {found!r} file" if found else "not a guidelab file"
        raise ValueError(f"{what}: {str(path)!r} is {kind}, expected {fmt!r}")
    return tensors, json.loads(metadata.get("config", "{}"))


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
