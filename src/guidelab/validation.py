"""How configurations are checked and their mistakes told: the dtype names a configuration may use, pydantic
validation errors as one ``field: message`` line each (the CLI prints them and exits 2), and the list of accepted
names, with the nearest ones first, that follows an unknown name."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from pydantic import ValidationError

__all__ = ["DTYPE_NAMES", "did_you_mean", "error_lines", "location", "torch_dtype"]

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
    are about (``solvers: ...``) is told as those lines, not under ``config``."""
    lines = []
    for e in err.errors(include_url=False):
        message = str(e["msg"]).removeprefix("Value error, ")
        if not e["loc"] and all(_NAMED.match(line) for line in message.splitlines()):
            lines += message.splitlines()
            continue
        got = e.get("input")
        scalar = got is not None and not isinstance(got, dict | list)
        shown = f" (got {got!r})" if scalar and repr(got) not in message else ""  # unless the message quotes it
        where = location(tuple(e["loc"]))
        named = message.startswith((f"{where}: ", f"{where}.", f"{where}["))  # already names its field (or a part)
        lines.append(f"{message}{shown}" if named else f"{where}: {message}{shown}")
    return lines


def did_you_mean(value: object, names: Iterable[object], listed: str | None = None) -> str:
    """The tail of an unknown-name message: ``; did you mean 'cfg'? accepted: a, b, c`` (the suggestion where one or
    two names are close to ``value``, case aside: :func:`difflib.get_close_matches`), else ``; accepted: a, b, c``.
    ``listed`` replaces the plain list after "accepted: " (e.g. grouped by kind). Used as
    ``f"guider: unknown name {name!r}{did_you_mean(name, GUIDERS)}"``."""
    names = list(dict.fromkeys(str(n) for n in names))
    by_lower = {n.lower(): n for n in reversed(names)}
    close = difflib.get_close_matches(str(value).lower(), list(by_lower), n=2, cutoff=0.6)
    close = [by_lower[c] for c in close if by_lower[c] != value]
    listed = listed if listed is not None else ", ".join(names) or "none"
    return (
        f"; did you mean {' or '.join(repr(c) for c in close)}? accepted: {listed}"
        if close
        else f"; accepted: {listed}"
    )
