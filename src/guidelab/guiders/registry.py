"""Guider registry: build any guider from its parameters (CLI ``--param``, sweep configs, JSON).

A guider whose constructor takes a ``schedule`` gets it as a nested block, ``schedule: {name: tv-cfg,
scale: 3}`` (what :meth:`Guider.config` writes), or, as command-line sugar, flat: ``schedule`` names the
schedule (default ``constant``) and its parameters (``scale``, ``lam_lo``, …) sit beside the guider's. A flat
key that both the guider and its schedule take is an error that asks for the nested block; a number is a
constant schedule. Where no scale is given for a ``constant`` schedule (the default), the guider's documented
``default_scale`` is used (docs/methods.md §9); a guider without one requires the scale.
``build_guider(**guider.config())`` rebuilds an equal guider.

A name ``diffusers:ClassName`` builds diffusers' own guider of that class, wrapped
(:mod:`guidelab.guiders.diffusers_guiders`, docs/methods.md §10), with the diffusers constructor's parameters;
these names are not in :data:`GUIDERS`, and diffusers is imported only when one is built.

A **guider file** (``--guider-file`` of ``sample``, ``run`` and ``generate``; what ``guidelab tune`` writes as
``best.yaml``) is a YAML mapping ``{name: apg, params: {scale: 4.2, eta: 0}, label: tuned-apg}`` (``params`` and
``label`` optional): :func:`load_guider_file` reads and checks it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from guidelab.guiders._checks import construct, signature_params
from guidelab.guiders.diffusers_guiders import PREFIX as DIFFUSERS_PREFIX
from guidelab.guiders.diffusers_guiders import diffusers_guider_class
from guidelab.guiders.schedules import SCHEDULES, Schedule, build_schedule
from guidelab.validation import did_you_mean, yaml_problem

if TYPE_CHECKING:
    from guidelab.guiders.base import Guider

__all__ = [
    "GUIDERS",
    "build_guider",
    "build_schedule",
    "guider_accepts",
    "guider_parameters",
    "load_guider_file",
    "register_guider",
]

GUIDERS: dict[str, type[Guider]] = {}


def register_guider(cls: type[Guider]) -> type[Guider]:
    """Class decorator: make a guider buildable by its ``name``."""
    if cls.name in GUIDERS and GUIDERS[cls.name] is not cls:
        raise RuntimeError(f"guider name {cls.name!r} registered twice")
    GUIDERS[cls.name] = cls
    return cls


def guider_parameters(name: str, schedule: str | None = None) -> dict[str, Any]:
    """Parameter names and defaults of a guider (and of its schedule, if it takes one)."""
    cls = _lookup(name)
    out: dict[str, Any] = {}
    for key, p in signature_params(cls).items():
        if key == "schedule":
            out["schedule"] = schedule or "constant"
            for skey, sp in signature_params(SCHEDULES[out["schedule"]]).items():
                out[skey] = None if sp.default is inspect.Parameter.empty else sp.default
            if out["schedule"] == "constant":  # the guider's own default scale (None: required)
                out["scale"] = getattr(cls, "default_scale", out.get("scale"))
        else:
            out[key] = None if p.default is inspect.Parameter.empty else p.default
    return out


def _default_scale(cls: type[Guider]) -> Any:
    """The guider's documented default scale (a ValueError naming ``scale`` where it has none)."""
    resolve = getattr(cls, "resolve_default_scale", None)
    return 1.0 if resolve is None else resolve()


def guider_accepts(name: str, parameter: str) -> bool:
    """Whether guider ``name``'s constructor takes ``parameter`` (e.g. ``models`` for guide networks)."""
    return parameter in signature_params(_lookup(name))


def _lookup(name: str) -> type[Guider]:
    # the built-in guiders are registered: importing this module first runs the package's __init__, which
    # imports every guider module; ``diffusers:ClassName`` names diffusers' own guider, wrapped (diffusers is
    # imported only then)
    if name not in GUIDERS:
        if isinstance(name, str) and name.startswith(DIFFUSERS_PREFIX):
            return diffusers_guider_class(name)
        raise ValueError(
            f"guider: unknown name {name!r}{did_you_mean(name, sorted(GUIDERS))}, or diffusers' own guiders as "
            "diffusers:ClassName (guidelab methods --diffusers)"
        )
    return GUIDERS[name]


def build_guider(name: str, **params: Any) -> Guider:
    """Build guider ``name`` from its parameters, the schedule nested (``schedule={"name": ..., ...}``) or flat
    (``schedule="tv-cfg", scale=3``); errors name the parameter and what is accepted."""
    cls = _lookup(name)
    own = signature_params(cls)
    schedule = params.get("schedule")
    if "schedule" in own and isinstance(schedule, Mapping):
        if (schedule.get("name") or "constant") == "constant" and "scale" not in schedule:
            schedule = {**schedule, "scale": _default_scale(cls)}
        params["schedule"] = build_schedule(schedule)
    elif "schedule" in own and not isinstance(schedule, Schedule) and (schedule is None or isinstance(schedule, str)):
        schedule_name = params.pop("schedule", None) or "constant"
        if schedule_name not in SCHEDULES:
            raise ValueError(
                f"schedule: unknown name {schedule_name!r}{did_you_mean(schedule_name, sorted(SCHEDULES))}"
            )
        schedule_keys = set(signature_params(SCHEDULES[schedule_name]))
        for key in params:
            if key in own and key in schedule_keys:
                raise ValueError(
                    f"{key}: both guider {name!r} and schedule {schedule_name!r} take {key!r}; give the schedule as "
                    f"a nested block, schedule: {{name: {schedule_name}, {key}: ...}}"
                )
            if key not in own and key not in schedule_keys:
                accepted = sorted(set(own) | schedule_keys)
                raise ValueError(f"guider {name!r}: unknown parameter {key!r}{did_you_mean(key, accepted)}")
        flat = {k: params.pop(k) for k in list(params) if k in schedule_keys}
        if schedule_name == "constant" and "scale" not in flat:
            flat["scale"] = _default_scale(cls)
        params["schedule"] = build_schedule({"name": schedule_name, **flat})
    return construct(cls, f"guider {name!r}", params)


_GUIDER_FILE_KEYS = ("name", "params", "label")


def load_guider_file(path: str | Path, field: str = "guider_file") -> dict[str, Any]:
    """A guider file (module docstring) as ``{"name", "params", "label"}`` (label None where the file has none).

    The guider is built once, so a bad name or parameter fails here. A guider that needs guide models
    (``weak-model``'s ``models``) is not built: only its name is checked.

    Raises:
        ValueError: one line naming ``field`` (and the key) for a missing file, bad YAML, an unknown key, or a
            guider that cannot be built from the file.
    """
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ValueError(f"{field}: no such file {str(file)!r}")
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{field}: {str(file)!r} is not valid YAML ({yaml_problem(err)})") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
        raise ValueError(
            f"{field}: {str(file)!r} must hold a mapping with a guider name: {{name: cfg, params: {{...}}}}"
        )
    unknown = sorted(set(data) - set(_GUIDER_FILE_KEYS))
    if unknown:
        raise ValueError(f"{field}.{unknown[0]}: unknown key; a guider file has {', '.join(_GUIDER_FILE_KEYS)}")
    params = data.get("params") or {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{field}.params: expected a mapping of parameters, got {type(params).__name__}")
    label = data.get("label")
    if label is not None and not isinstance(label, str):
        raise ValueError(f"{field}.label: expected text, got {label!r}")
    try:
        if not guider_accepts(data["name"], "models"):  # guide models are the caller's to build (a sweep's models)
            build_guider(data["name"], **dict(params))
    except ValueError as err:
        raise ValueError(f"{field}: {err}") from None
    return {"name": data["name"], "params": dict(params), "label": label}
