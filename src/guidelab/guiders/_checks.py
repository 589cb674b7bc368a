"""Parameter checks shared by guiders and schedules: a ValueError that names the field and what is accepted."""

from __future__ import annotations

import inspect
import math
from typing import Any

from guidelab.paths import SPACES
from guidelab.validation import did_you_mean

__all__ = [
    "check_choice",
    "check_dims",
    "check_flag",
    "check_guider_space",
    "check_int",
    "check_number",
    "construct",
    "signature_params",
]


def check_choice(field: str, value: Any, accepted: tuple[Any, ...]) -> None:
    if value not in accepted:
        raise ValueError(f"{field}: got {value!r}{did_you_mean(value, map(str, accepted))}")


def check_number(
    field: str,
    value: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite number within [lo, hi] (ends open where asked), or a ValueError naming the field and the range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    value = float(value)
    bad = not math.isfinite(value)
    if lo is not None:
        bad = bad or (value <= lo if lo_open else value < lo)
    if hi is not None:
        bad = bad or (value >= hi if hi_open else value > hi)
    if bad:
        left = "(-inf" if lo is None else f"{'(' if lo_open else '['}{lo:g}"
        right = "inf)" if hi is None else f"{hi:g}{')' if hi_open else ']'}"
        raise ValueError(f"{field}: must be a finite number in {left}, {right}, got {value!r}")
    return value


def check_guider_space(space: str) -> str:
    """A prediction space a guider may combine in, or a ValueError naming ``space``."""
    if space not in SPACES:
        raise ValueError(f"space: unknown prediction space {space!r}{did_you_mean(space, SPACES)}")
    return space


def signature_params(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor parameters of ``cls`` by name (``self`` and ``**kwargs`` left out)."""
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind is not p.VAR_KEYWORD}


def construct(cls: type, label: str, params: dict[str, Any], also: tuple[str, ...] = ()) -> Any:
    """``cls(**params)``, with a ValueError naming ``label``, the parameter and what is accepted for an unknown or
    missing parameter (``also``: the block's other keys, e.g. a schedule's ``name``, listed and suggested too)."""
    accepted = signature_params(cls)
    for key in params:
        if key not in accepted:
            raise ValueError(f"{label}: unknown parameter {key!r}{did_you_mean(key, [*also, *accepted])}")
    missing = [k for k, p in accepted.items() if p.default is inspect.Parameter.empty and k not in params]
    if missing:
        raise ValueError(f"{label}: missing required parameter {missing[0]!r}")
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"{label}: {err}") from None


def check_int(field: str, value: Any, *, lo: int = 0) -> int:
    """An integer ≥ lo, or a ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{field}: expected an integer, got {value!r}")
    if value < lo:
        raise ValueError(f"{field}: must be an integer ≥ {lo}, got {value}")
    return value


def check_flag(field: str, value: Any) -> bool:
    """A boolean, or a ValueError naming the field."""
    if not isinstance(value, bool):
        raise ValueError(f"{field}: expected true or false, got {value!r}")
    return value


def check_dims(field: str, value: Any) -> tuple[int, ...] | None:
    """Non-batch dimensions of a (batch, ...) tensor to reduce over: ``None`` (all of them), one integer or a list of
    distinct integers ≠ 0 (negative ones count from the end; dimension 0 is the batch). Checked against the tensor's
    rank when it is used (:func:`guidelab.guiders.reductions.resolve_dims`); a ValueError naming the field otherwise."""
    if value is None:
        return None
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if not isinstance(items, list | tuple) or not items:
        raise ValueError(f"{field}: expected null, an integer or a list of integers, got {value!r}")
    for d in items:
        if isinstance(d, bool) or not isinstance(d, int):
            raise ValueError(f"{field}: expected integers, got {d!r} in {value!r}")
        if d == 0:
            raise ValueError(f"{field}: dimension 0 is the batch, which is never reduced over, got {value!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"{field}: repeated dimension in {value!r}")
    return tuple(items)
