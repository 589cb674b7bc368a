"""Progress of long work (sampling steps, training steps, sweep runs): one bar for the whole library.

On a terminal it is a rich bar (description, bar, done/total, time left, a status text), cleared when done if
``transient``. Where stderr is not a terminal (a pipe, a log file, CI) rich draws nothing, so the bar prints one
plain line ``label: done/total (pct%) status`` at every tenth of the work and at the end instead: progress also
shows in logs. Disabled, it costs nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["ProgressBar", "counted", "every"]


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in the number it takes: ``counted(1, "run")`` is "1 run", ``counted(3, "run")`` "3 runs"
    (``plural``: where the plural is not the noun plus "s")."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def every(n: int, noun: str, plural: str | None = None) -> str:
    """ "the only run" for one, "all 3 runs" for more (``plural`` as in :func:`counted`)."""
    return f"the only {noun}" if n == 1 else f"all {counted(n, noun, plural)}"


class ProgressBar:
    """Progress over ``total`` units of work, as a context manager::

        with ProgressBar(enabled, total, "sampling (heun)") as bar:
            bar.advance(status="loss 0.12")

    Args:
        enabled: show progress at all.
        total: units of work (≥ 0; 0 shows nothing).
        label: what is being done; :meth:`advance` may replace it per unit (``description``).
        transient: on a terminal, clear the bar when done.
    """

    def __init__(self, enabled: bool, total: int, label: str, *, transient: bool = True):
        self.enabled = bool(enabled) and total > 0
        self.total, self.label, self.transient = int(total), label, transient
        self.done = 0
        self._rich: Any = None
        self._task: Any = None
        self._next_line = 0
        self._start = 0.0

    def __enter__(self) -> ProgressBar:
        if not self.enabled:
            return self
        self._start = time.perf_counter()
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
                transient=self.transient,
                console=Console(stderr=True),
            )
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=self.total, status="")
        else:
            self._next_line = max(1, self.total // 10)
        return self

    def advance(self, steps: int = 1, status: str = "", description: str | None = None) -> None:
        """Count ``steps`` more units done; ``status`` is shown beside the bar, ``description`` replaces the label."""
        if not self.enabled:
            return
        self.done += steps
        if self._rich is not None:
            fields: dict[str, Any] = {"advance": steps, "status": status}
            if description is not None:
                fields["description"] = description
            self._rich.update(self._task, **fields)
            return
        if self.done >= self._next_line or self.done >= self.total:
            while self._next_line <= self.done:
                self._next_line += max(1, self.total // 10)
            label = description or self.label
            elapsed = time.perf_counter() - self._start
            tail = f" {status}" if status else ""
            print(
                f"{label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%, {elapsed:.1f} s){tail}",
                file=sys.stderr,
                flush=True,
            )

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
