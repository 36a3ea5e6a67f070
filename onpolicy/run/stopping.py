"""Clean stops: the first SIGINT or SIGTERM asks the job to stop at the next safe point (between phases, or
after the current training step); a second one aborts at once. Either way the run directory stays valid: a
round is recorded complete only after all of its files are in place, so the round in flight is simply redone
when the job is resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Sequence
from types import FrameType
from typing import Any


class Stopped(Exception):
    """The job stopped on a signal, at a safe point."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class GracefulStop:
    def __init__(self, announce: bool = True) -> None:
        """`announce`: say on stdout that the stop was heard (the one process of a job that talks to its user)."""
        self.announce = announce
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> GracefulStop:
        self._previous = _take_signals(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        _give_back(self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum
        if self.announce:
            _write_now(
                f"onpolicy: {signal.Signals(signum).name} received: stopping at the next safe point "
                "(send it again to abort now; completed rounds are kept either way)"
            )
        # A second signal gets the default behaviour: KeyboardInterrupt for SIGINT, termination for SIGTERM.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def check(self) -> None:
        """Raise `Stopped` if a stop was asked for: call it at safe points."""
        if self.signum is not None:
            raise Stopped(self.signum)


class PassedOn:
    """Runs commands one at a time (the runs of a sweep), passing each SIGINT and SIGTERM this process gets on to
    the one in flight: there the first stops it at its next safe point and a second aborts it, as for a job of
    its own. The command runs in a session of its own, so that a terminal's Ctrl-C reaches it once (through here),
    not twice. Once a stop was asked for, `check` raises `Stopped`: call it before starting the next command."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._process: subprocess.Popen | None = None
        self._passed = False  # the stop reached the command in flight
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PassedOn:
        self._previous = _take_signals(self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        _give_back(self._previous)

    def run(self, command: Sequence[str]) -> int:
        """Run `command` to its end; its exit code."""
        self._passed = False
        self._process = process = subprocess.Popen(command, start_new_session=True)
        try:
            if self.signum is not None and not self._passed:  # it came while the command was starting
                process.send_signal(self.signum)
            return process.wait()
        finally:
            self._process = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            _write_now(
                f"onpolicy: {signal.Signals(signum).name} received: stopping after the run in flight stops at its "
                "next safe point (send it again to abort that run now; completed rounds are kept either way)"
            )
        if self._process is not None:
            self._process.send_signal(signum)  # nothing when it has ended already
            self._passed = True

    def check(self) -> None:
        if self.signum is not None:
            raise Stopped(self.signum)


def _take_signals(handler: Any) -> dict[int, Any]:
    """SIGINT and SIGTERM to `handler` (only the main thread may set them; elsewhere they stay); the handlers they
    had, for `_give_back`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}


def _give_back(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _write_now(line: str) -> None:
    """Write from a signal handler straight to file descriptor 1. `print` is not safe there: a signal that lands
    while the main thread is inside a write to the same stream makes the buffered writer raise "reentrant call",
    and a library may have swapped `sys.stdout` for a buffer at that moment."""
    try:
        os.write(1, (line + "\n").encode())
    except OSError:  # stdout closed: the stop goes on without its notice
        pass
