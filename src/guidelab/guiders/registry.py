"""Guider registry: build any guider from a flat parameter dict (CLI ``--param``, sweep configs, JSON).

A guider whose constructor takes a ``schedule`` gets it built from the same flat dict: ``schedule``
names the schedule (default ``constant``) and the schedule's own parameters (``scale``, ``lam_lo``, …)
sit beside the guider's. ``build_guider(**guider.config())`` rebuilds an equal guider.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from guidelab.guiders.base import Guider

__all__ = ["GUIDERS", "build_guider", "guider_accepts", "guider_parameters", "register_guider"]

GUIDERS: dict[str, type[Guider]] = {}


def register_guider(cls: type[Guider]) -> type[Guider]:
    """Class decorator: make a guider buildable by its ``name``."""
    if cls.name in GUIDERS and GUIDERS[cls.name] is not cls:
        raise RuntimeError(f"guider name {cls.name!r} registered twice")
    GUIDERS[cls.name] = cls
    return cls


def _signature_params(cls: type) -> dict[str, inspect.Parameter]:
    params = inspect.signature(cls.__init__).parameters
    return {k: p for k, p in params.items() if k != "self" and p.kind is not p.VAR_KEYWORD}


def guider_parameters(name: str, schedule: str | None = None) -> dict[str, Any]:
    """Parameter names and defaults of a guider (and of its schedule, if it takes one)."""
    cls = _lookup(name)
    out: dict[str, Any] = {}
    for key, p in _signature_params(cls).items():
        if key == "schedule":
            from guidelab.guiders.schedules import SCHEDULES

            out["schedule"] = schedule or "constant"
            for skey, sp in _signature_params(SCHEDULES[out["schedule"]]).items():
                out[skey] = None if sp.default is inspect.Parameter.empty else sp.default
        else:
            out[key] = None if p.default is inspect.Parameter.empty else p.default
    return out


def guider_accepts(name: str, parameter: str) -> bool:
    """Whether guider ``name``'s constructor takes ``parameter`` (e.g. ``models`` for guide networks)."""
    return parameter in _signature_params(_lookup(name))


def _lookup(name: str) -> type[Guider]:
    import guidelab.guiders  # noqa: F401 - registers the built-in guiders

    if name not in GUIDERS:
        raise ValueError(f"guider: unknown name {name!r}; accepted: {', '.join(sorted(GUIDERS))}")
    return GUIDERS[name]


def _construct(cls: type, label: str, params: dict[str, Any]) -> Any:
    accepted = _signature_params(cls)
    for key in params:
        if key not in accepted:
            raise ValueError(f"{label}: unknown parameter {key!r}; accepted: {', '.join(accepted) or 'none'}")
    missing = [k for k, p in accepted.items() if p.default is inspect.Parameter.empty and k not in params]
    if missing:
        raise ValueError(f"{label}: missing required parameter {missing[0]!r}")
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"{label}: {err}") from None


def build_guider(name: str, **params: Any) -> Guider:
    """Build guider ``name`` from flat parameters; errors name the parameter and what is accepted."""
    from guidelab.guiders.schedules import SCHEDULES

    cls = _lookup(name)
    own = _signature_params(cls)
    if "schedule" in own and not callable(params.get("schedule")):
        schedule_name = params.pop("schedule", None) or "constant"
        if schedule_name not in SCHEDULES:
            raise ValueError(f"schedule: unknown name {schedule_name!r}; accepted: {', '.join(sorted(SCHEDULES))}")
        schedule_cls = SCHEDULES[schedule_name]
        schedule_keys = set(_signature_params(schedule_cls))
        schedule_params = {k: params.pop(k) for k in list(params) if k in schedule_keys and k not in own}
        for key in params:
            if key not in own:
                accepted = sorted(set(own) | schedule_keys)
                raise ValueError(f"guider {name!r}: unknown parameter {key!r}; accepted: {', '.join(accepted)}")
        params["schedule"] = _construct(schedule_cls, f"schedule {schedule_name!r}", schedule_params)
    return _construct(cls, f"guider {name!r}", params)
