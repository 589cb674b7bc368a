"""The kernel loader's notice of a slow load (a first compile): one line through ``jit.notify`` when a load outlasts
``SLOW_LOAD_SECONDS``, none for a quick load or a failed one, and the ``guidelab`` command prints it on stderr."""

from __future__ import annotations

import threading
import time

import pytest

from guidelab import cli, jit


class Said(list):
    """The notified lines; ``heard`` is set by the first."""

    def __init__(self):
        super().__init__()
        self.heard = threading.Event()

    def __call__(self, line: str) -> None:
        self.append(line)
        self.heard.set()


@pytest.fixture
def lines(monkeypatch):
    said = Said()
    monkeypatch.setattr(jit, "notify", said)
    monkeypatch.setattr(jit, "SLOW_LOAD_SECONDS", 0.05)
    return said


def test_a_slow_load_says_so_once(lines):
    # the load lasts until the notice came (however loaded the machine), at most 30 s
    build = lambda: lines.heard.wait(30) and "built"  # noqa: E731
    kernels = jit.Kernels(build, lambda built: built == "built", "slow", "the slow loops", "about 2 s")
    assert kernels.available()
    assert len(lines) == 1 and "the slow loops" in lines[0] and "about 2 s" in lines[0] and "once" in lines[0]
    assert kernels.available() and len(lines) == 1  # loaded: nothing more to say


@pytest.mark.parametrize("build", [lambda: "built", lambda: 1 / 0], ids=["quick", "failing"])
def test_a_quick_or_failed_load_says_nothing(lines, build):
    kernels = jit.Kernels(build, lambda built: True, "quick")
    kernels.available()
    time.sleep(0.2)  # past the threshold: the timer was cancelled
    assert list(lines) == []
    assert not any(t.name.startswith("guidelab-jit-notice") for t in threading.enumerate())


def test_no_notifier_starts_no_timer(monkeypatch):
    monkeypatch.setattr(jit, "notify", None)
    started = []
    monkeypatch.setattr(jit.threading.Timer, "start", lambda self: started.append(self))
    assert jit.Kernels(lambda: "built", lambda built: True, "silent").available()
    assert started == []


def test_the_command_prints_the_notice_on_stderr(monkeypatch, capsys):
    monkeypatch.setattr(jit, "notify", None)
    with pytest.raises(SystemExit):
        cli.main(["--no-such-option"])
    assert jit.notify is not None
    jit.notify("numba is compiling guidelab's x kernels")
    assert capsys.readouterr().err.endswith("numba is compiling guidelab's x kernels\n")
