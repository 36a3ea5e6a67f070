"""Clean stops: the first SIGINT or SIGTERM asks the job to stop at the next safe point (between phases, or
after the current training step); a second one aborts at once. Either way the run directory stays valid: a
round is recorded complete only after all of its files are in place, so the round in flight is simply redone
when the job is resumed."""

from __future__ import annotations

import os
import signal
import threading
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
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

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


def _write_now(line: str) -> None:
    """Write from a signal handler straight to file descriptor 1. `print` is not safe there: a signal that lands
    while the main thread is inside a write to the same stream makes the buffered writer raise "reentrant call",
    and a library may have swapped `sys.stdout` for a buffer at that moment."""
    try:
        os.write(1, (line + "\n").encode())
    except OSError:  # stdout closed: the stop goes on without its notice
        pass
