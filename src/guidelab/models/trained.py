"""Trained models by reference: a checkpoint file, a shipped model's name, or the user's ``package.module:function``.

:func:`load_trained` loads each once per process (a checkpoint again when its file changes) and checks that the
result meets the contract a sampler needs: ``path``, ``prediction``, a call ``(x_t, t, cond)``, and ``shape``
(one sample's shape). A checkpoint is loaded (and hashed) once per file version. :func:`sample_shape` and
:func:`class_names` read a model's facts.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from guidelab.models.zoo import SHIPPED_DENOISERS, load_image_denoiser, shipped_path
from guidelab.validation import did_you_mean

__all__ = ["class_names", "load_trained", "model_digest", "sample_shape"]

_PREDICTIONS = ("x0", "eps", "velocity", "score")


def _file(kind: str, ref: str) -> Path:
    if kind == "shipped":
        return shipped_path(ref)
    path = Path(ref).expanduser().resolve()
    if not path.is_file():
        raise ValueError(f"model: no such checkpoint file {ref!r}")
    return path


def load_trained(kind: str, ref: str) -> Any:
    """The model: ``kind`` is ``checkpoint`` (``ref`` a file), ``shipped`` (a name of :data:`SHIPPED`) or
    ``python`` (``ref`` = ``"package.module:function"``, called without arguments; the current folder is
    importable). ValueError names ``model`` for anything missing or not a denoiser."""
    if kind == "python":
        return _from_factory(ref)
    if kind == "shipped" and ref not in SHIPPED_DENOISERS:
        raise ValueError(f"model: unknown shipped model {ref!r}{did_you_mean(ref, SHIPPED_DENOISERS)}")
    return _load_file(*_file_version(_file(kind, ref)))


def _file_version(path: Path) -> tuple[str, int, int, int]:
    """What identifies one version of a file without reading it: path, inode, size and mtime in ns (a rewrite by
    ``os.replace``, as guidelab writes checkpoints, always gets a new inode)."""
    stat = path.stat()
    return str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns


@lru_cache(maxsize=8)
def _load_file(path: str, inode: int, size: int, mtime_ns: int) -> Any:
    """Loaded once per file version (:func:`_file_version`)."""
    return load_image_denoiser(path)


@lru_cache(maxsize=16)
def _file_digest(path: str, inode: int, size: int, mtime_ns: int) -> str:
    """The content hash of one file version, read once per process."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@lru_cache(maxsize=8)
def _from_factory(spec: str) -> Any:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"model.factory: expected 'package.module:function', got {spec!r}")
    here = os.getcwd()
    added = here not in sys.path
    if added:
        sys.path.insert(0, here)  # a module beside the sweep file imports, as `python -m` would
    try:
        module = importlib.import_module(module_name)
    except Exception as err:
        raise ValueError(f"model.factory: cannot import {module_name!r} ({type(err).__name__}: {err})") from None
    finally:
        if added:
            sys.path.remove(here)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"model.factory: {module_name!r} has no function {attr!r}")
    try:
        model = factory()
    except Exception as err:
        raise ValueError(f"model.factory: {spec} raised {type(err).__name__}: {err}") from None
    missing = [a for a in ("path", "prediction", "shape") if not hasattr(model, a)]
    if missing or not callable(model):
        what = f"lacks {', '.join(missing)}" if missing else "is not callable as model(x_t, t, cond)"
        raise ValueError(
            f"model.factory: {spec} returned an object of type {type(model).__name__}, which {what}; a denoiser has "
            f"path (a guidelab NoisePath), prediction (x0, eps, velocity or score), shape (one sample's shape) and "
            f"a call"
        )
    if model.prediction not in _PREDICTIONS:
        raise ValueError(f"model.factory: prediction {model.prediction!r} is not one of {', '.join(_PREDICTIONS)}")
    if hasattr(model, "eval"):
        model.eval()
    return model


def model_digest(kind: str, ref: str) -> str:
    """What identifies the weights a run samples: a content hash (16 hex digits) of a checkpoint or shipped file; for
    a factory, a hash of the returned model's ``state_dict`` (names, shapes, dtypes and bytes), so that new weights
    behind the same function are new runs (a model without a ``state_dict`` is known by the factory's name)."""
    if kind != "python":
        return f"{kind}:{_file_digest(*_file_version(_file(kind, ref)))}"
    return _factory_digest(ref)


@lru_cache(maxsize=8)
def _factory_digest(ref: str) -> str:
    """The digest of the model a factory returned in this process (cached like the model itself)."""
    model = _from_factory(ref)
    state = getattr(model, "state_dict", None)
    if state is None:
        return f"python:{ref}"
    h = hashlib.sha256(ref.encode())
    for name, tensor in sorted(state().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return f"python:{ref}:{h.hexdigest()[:16]}"


def sample_shape(model: Any) -> tuple[int, ...]:
    """One sample's shape: the model's ``shape`` (or ``(dim,)``)."""
    shape = getattr(model, "shape", None)
    if shape is None and hasattr(model, "dim"):
        shape = (model.dim,)
    if shape is None:
        raise ValueError(f"model: {type(model).__name__} says nothing of its sample shape (give it a shape)")
    return tuple(int(s) for s in shape)


def class_names(model: Any) -> tuple[str, ...]:
    """The model's class names: its ``class_names``, else ``"0" … "C−1"`` from ``num_classes``."""
    names = getattr(model, "class_names", None)
    if names is not None:
        return tuple(str(n) for n in names)
    return tuple(str(i) for i in range(int(getattr(model, "num_classes", 0))))
