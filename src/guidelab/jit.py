"""Optional JIT-compiled CPU kernels (numba, the ``fast`` extra): one loader for every module that has them.

A module describes its kernels as a :class:`Kernels` set: a ``build`` function that imports numba and returns the
compiled functions, and a ``probe`` that runs them once on small inputs against a plain numpy reference. The set is
built (or loaded from numba's on-disk cache) on first use, once per process, under a lock, so that one thread
compiles while the others wait; where numba is missing, ``GUIDELAB_COMPILE=0`` is set, compiling fails or the probe
disagrees, the set is unavailable and its caller takes its eager torch path, which gives the same numbers to
rounding. Kernels are compiled with ``nogil=True``, so a sweep's worker threads run them in parallel.

Which path runs depends only on the install, ``GUIDELAB_COMPILE`` and the inputs (device, dtype, size, autograd),
never on timing or on what ran before, so the same seed gives the same numbers in every process.

Compiling (an install's first use, about a minute for all sets on 2 cores) prints nothing by itself; a program that
shows progress sets :data:`notify`, and a load still going after :data:`SLOW_LOAD_SECONDS` calls it once with a
line saying so (the ``guidelab`` command prints it to stderr).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["FLAGS", "SLOW_LOAD_SECONDS", "Kernels", "enabled", "njit", "notify", "pool"]

FLAGS = frozenset({"reassoc", "contract"})  # vectorised sums and fused multiply-adds; sqrt, exp and division exact


SLOW_LOAD_SECONDS = 3.0  # loading from numba's cache takes under a second; longer is a compile
notify: Callable[[str], None] | None = None  # called with one line when a load outlasts SLOW_LOAD_SECONDS


def enabled() -> bool:
    """Whether compiled kernels may be tried at all: ``GUIDELAB_COMPILE`` is not ``0`` (numba may still be
    missing; :meth:`Kernels.available` tells)."""
    return os.environ.get("GUIDELAB_COMPILE", "1") != "0"


def njit(fastmath: frozenset[str] | set[str] | bool = FLAGS, **options: Any) -> Callable:
    """numba's ``njit`` with the project's options: no GIL, cached on disk, no bounds checks, numpy's error model
    (a division by zero gives inf/nan, not an exception). Import numba first (inside a ``build`` function)."""
    import numba

    flags = set(fastmath) if isinstance(fastmath, frozenset | set) else fastmath
    settings = {"nogil": True, "cache": True, "boundscheck": False, "error_model": "numpy", "fastmath": flags}
    return numba.njit(**{**settings, **options})


class Kernels:
    """A set of compiled kernels, built on first use and checked by a probe.

    Args:
        build: returns the compiled kernels (any object, e.g. a tuple or namespace); may raise (numba missing).
        probe: called with ``build()``'s result; returns True where the kernels agree with their reference.
        name: what they are, for the warm-up thread's name.
        what: the same in words a user reads (the notice of a slow load), e.g. "the exact targets' loops".
        compile_time: how long compiling them takes, in words, for that notice.
    """

    def __init__(
        self,
        build: Callable[[], Any],
        probe: Callable[[Any], bool],
        name: str,
        what: str | None = None,
        compile_time: str = "up to a minute on 2 cores",
    ):
        self._build = build
        self._probe = probe
        self.name = name
        self.what = what or f"the {name} kernels"
        self.compile_time = compile_time
        self._lock = threading.Lock()
        self._kernels: Any = None  # the built kernels, False where unavailable, None before the first try
        if hasattr(os, "register_at_fork"):  # a fork while another thread holds the lock would leave it held forever
            os.register_at_fork(after_in_child=self._new_lock)

    def _new_lock(self) -> None:
        self._lock = threading.Lock()

    def available(self) -> bool:
        """Whether the kernels can be used here (builds or loads them once per process; thread-safe)."""
        if self._kernels is None:
            with self._lock:  # one thread compiles; the others wait for it
                if self._kernels is None:
                    kernels: Any = False
                    if enabled():
                        timer = self._slow_notice()
                        try:
                            built = self._build()
                            kernels = built if self._probe(built) else False
                        except Exception:  # numba missing or unable to compile here: the caller's eager path
                            kernels = False
                        finally:
                            if timer is not None:
                                timer.cancel()
                    self._kernels = kernels
        return self._kernels is not False

    def _slow_notice(self) -> threading.Timer | None:
        """A started timer that calls :data:`notify` once if the load is still going after
        :data:`SLOW_LOAD_SECONDS` (None where nothing is to be notified)."""
        if notify is None:
            return None
        line = (
            f"numba is compiling {self.what} ({self.compile_time}), once per install: they are then cached in "
            "guidelab's __pycache__"
        )
        timer = threading.Timer(SLOW_LOAD_SECONDS, notify, args=(line,))
        timer.name = f"guidelab-jit-notice-{self.name}"
        timer.daemon = True
        timer.start()
        return timer

    def get(self) -> Any:
        """The kernels. Raises RuntimeError where they are not available (check :meth:`available` first)."""
        if not self.available():
            why = "numba missing or GUIDELAB_COMPILE=0"
            raise RuntimeError(f"the compiled {self.name} kernels are not available ({why})")
        return self._kernels

    def loaded(self) -> Any:
        """The kernels where available, None otherwise: :meth:`available` and :meth:`get` in one call, for a hot path
        (an attribute read once they are loaded)."""
        kernels = self._kernels
        if kernels is None:
            self.available()
            kernels = self._kernels
        return None if kernels is False else kernels

    def warm_up(self) -> None:
        """Load (or compile) the kernels on a background thread, so that the load overlaps other work; a later
        :meth:`available` waits for it. Does nothing once tried. The thread's name starts with ``guidelab-``
        (the console script ends the process without waiting for such threads)."""
        if self._kernels is None:
            threading.Thread(target=self.available, name=f"guidelab-jit-{self.name}", daemon=True).start()

    def reset(self) -> None:
        """Forget the kernels, as in a fresh process (for tests of the fallback)."""
        with self._lock:
            self._kernels = None


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``workers`` threads for splitting a kernel's rows or particles (the kernels release
    the GIL), kept across calls: a new pool per call costs its threads' start. Its threads are named
    ``guidelab-jit…``, so the console script need not wait for them."""
    with _pools_lock:
        if workers not in _pools:
            _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix="guidelab-jit")
        return _pools[workers]


def _forget_pools() -> None:
    """In a forked child the pools' threads do not exist: start new ones there (work submitted to the parent's
    pools would wait forever)."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)
