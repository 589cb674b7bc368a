"""How configurations are checked and their mistakes told: the dtype names a configuration may use, pydantic
validation errors as one ``field: message`` line each (the CLI prints them and exits 2), and the list of accepted
names, with the nearest ones first, that follows an unknown name."""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

if TYPE_CHECKING:
    import torch
    from pydantic import ValidationError

__all__ = ["DTYPE_NAMES", "did_you_mean", "error_lines", "location", "nearest", "torch_dtype", "under", "yaml_problem"]

DTYPE_NAMES = ("float32", "float64")  # the dtypes a sampling or learning configuration may name


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a name in :data:`DTYPE_NAMES` (torch is imported here, not with this module: the
    command line's light paths, ``--help`` and ``reproduce list``, use this module without torch)."""
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def location(loc: tuple[Any, ...] | list[Any], default: str = "config") -> str:
    """A pydantic error location as a field path: ``("runs", 0, "guider")`` → ``runs[0].guider``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or default


_NAMED = re.compile(r"[A-Za-z_][\w.\[\]]*: ")


def error_lines(err: ValidationError) -> list[str]:
    """One line per error: ``field.path: message (got value)``; the value is shown when it is a scalar.

    A check of the whole configuration (no location) whose message lines already start with the field they
    are about (``solvers: ...``) is told as those lines, not under ``config``. A misspelt key (pydantic's
    ``extra_forbidden``) or a value outside a fixed list (``literal_error``) is told with the names accepted at its
    place, the nearest first (:func:`did_you_mean`); a required key reported missing beside a misspelt key that
    it is the nearest name to is not told again."""
    errors = err.errors(include_url=False)
    misspelt: dict[tuple, set[str]] = {}  # parent location -> the names its misspelt keys are nearest to
    keyed: dict[int, list[str]] = {}
    for i, e in enumerate(errors):
        if e["type"] == "extra_forbidden" and e["loc"]:
            keys = keyed[i] = _accepted_at(err.title, tuple(e["loc"][:-1]), keys=True)
            misspelt.setdefault(tuple(e["loc"][:-1]), set()).update(nearest(e["loc"][-1], keys))
    lines = []
    for i, e in enumerate(errors):
        message = str(e["msg"]).removeprefix("Value error, ")
        loc = tuple(e["loc"])
        where = location(loc)
        if e["type"] == "missing" and loc and loc[-1] in misspelt.get(loc[:-1], ()):
            continue  # its misspelt key's line says so
        if keyed.get(i):
            lines.append(f"{where}: unknown key{did_you_mean(loc[-1], keyed[i])}")
            continue
        if e["type"] == "literal_error" and loc:
            values = _accepted_at(err.title, loc, keys=False)
            if values:
                lines.append(f"{where}: unknown value {e.get('input')!r}{did_you_mean(e.get('input'), values)}")
                continue
        if not loc and all(_NAMED.match(line) for line in message.splitlines()):
            lines += message.splitlines()
            continue
        got = e.get("input")
        scalar = got is not None and not isinstance(got, dict | list)
        shown = f" (got {got!r})" if scalar and repr(got) not in message else ""  # unless the message quotes it
        named = message.startswith((f"{where}: ", f"{where}.", f"{where}["))  # already names its field (or a part)
        lines.append(f"{message}{shown}" if named else f"{where}: {message}{shown}")
    return lines


def nearest(value: object, names: Iterable[object]) -> list[str]:
    """The one or two names nearest to ``value``, case aside (difflib's ratio ≥ 0.6), ``value`` itself left out."""
    names = [str(n) for n in names]
    by_lower = {n.lower(): n for n in reversed(names)}
    close = difflib.get_close_matches(str(value).lower(), list(by_lower), n=2, cutoff=0.6)
    return [by_lower[c] for c in close if by_lower[c] != value]


def did_you_mean(value: object, names: Iterable[object], listed: str | None = None) -> str:
    """The tail of an unknown-name message: ``; did you mean 'cfg'? accepted: a, b, c`` (the suggestion where one or
    two names are close to ``value``, case aside: :func:`difflib.get_close_matches`), else ``; accepted: a, b, c``.
    ``listed`` replaces the plain list after "accepted: " (e.g. grouped by kind). Used as
    ``f"guider: unknown name {name!r}{did_you_mean(name, GUIDERS)}"``."""
    names = list(dict.fromkeys(str(n) for n in names))
    close = nearest(value, names)
    listed = listed if listed is not None else ", ".join(names) or "none"
    return (
        f"; did you mean {' or '.join(repr(c) for c in close)}? accepted: {listed}"
        if close
        else f"; accepted: {listed}"
    )


def _accepted_at(title: str, loc: tuple[Any, ...], *, keys: bool) -> list[str]:
    """What a configuration accepts at ``loc`` below the root model named ``title`` (a ValidationError names its
    model, not its class: guidelab's pydantic models of that name), followed through fields, lists, tuples, dicts,
    optionals and unions: the keys of the models there (``keys``), or the values of the ``Literal`` there; empty
    where the way cannot be followed (a discriminated union's tag, say)."""
    from pydantic import BaseModel

    roots, stack = [], [BaseModel]
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__name__ == title and cls.__module__.startswith("guidelab"):
            roots.append(cls)
    current: list[Any] = roots
    for part in loc:
        current = [t for tp in current for t in _step(tp, part, BaseModel)]
    members = [m for tp in current for m in _members(tp)]
    if keys:
        found = [
            field.alias or name
            for m in members
            if isinstance(m, type) and issubclass(m, BaseModel)
            for name, field in m.model_fields.items()
        ]
    else:
        found = [str(v) for m in members if get_origin(m) is Literal for v in get_args(m)]
    return list(dict.fromkeys(found))


def _members(tp: Any) -> list[Any]:
    """The types an annotation may hold: an optional's or union's members, an ``Annotated``'s base."""
    origin = get_origin(tp)
    if origin is Annotated:
        return _members(get_args(tp)[0])
    if origin is Union or origin is types.UnionType:
        return [m for arg in get_args(tp) for m in _members(arg)]
    return [tp]


def _step(tp: Any, part: Any, base: type) -> list[Any]:
    """The annotations one location part leads to from ``tp``: a model's field (by name or alias) or a union member
    named by its class, a sequence's item, a mapping's value."""
    out: list[Any] = []
    for m in _members(tp):
        origin = get_origin(m)
        if isinstance(m, type) and issubclass(m, base):
            if part == m.__name__:
                out.append(m)
            out += [f.annotation for name, f in m.model_fields.items() if part in (name, f.alias)]  # type: ignore[attr-defined]
        elif isinstance(part, int) and isinstance(origin, type) and issubclass(origin, Sequence):
            args = [a for a in get_args(m) if a is not Ellipsis]
            out += args[part : part + 1] if origin is tuple and len(args) > 1 else args[:1]
        elif isinstance(part, str) and isinstance(origin, type) and issubclass(origin, Mapping):
            out += get_args(m)[1:2]
    return out


def yaml_problem(err: Exception) -> str:
    """What is wrong in a file that does not parse, and where: a YAML error as ``what (line L, column C)`` (from its
    problem mark, 1-based), any other error (JSON's says its line itself, a decoding error) as its first line."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    text = str(err).strip()
    first = problem or (text.splitlines()[0] if text else type(err).__name__)
    return f"{first} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None and problem else first


def under(where: str, err: Exception | str) -> str:
    """A nested check's message told at the place of a file it concerns: ``where: message``, without the message's
    own leading field where that field is the place's own (``targets[0].target`` + ``target: no built-in …`` →
    ``targets[0].target: no built-in …``; ``guiders[2]`` + ``guider: unknown name …`` → ``guiders[2]: unknown
    name …``)."""
    message = str(err)
    head, sep, rest = message.partition(": ")
    last = re.sub(r"\[\d+\]$", "", where.rsplit(".", 1)[-1])
    return f"{where}: {rest}" if sep and head.isidentifier() and last.startswith(head) else f"{where}: {message}"
