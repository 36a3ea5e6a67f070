"""A start (a model loaded, a server's first answer) that a reward tries once per job.

A reward is asked for a round's groups in chunks, and a chunk that raises is asked again group by group: a reward
model or judge engine that could not start would otherwise be started again for every group of every chunk of
every round (minutes each, and memory that a failed vLLM start may keep). Its failure is kept instead, and every
later call raises it again at once, as one line; a run resumed once the cause is fixed starts it afresh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class StartOnce(Generic[T]):
    """`start()`'s result, computed at the first `get()`; when `start` raised, that failure (naming `what`) is
    raised by that `get()` and every later one, as a RuntimeError of one line."""

    def __init__(self, what: str, start: Callable[[], T]) -> None:
        self.what = what
        self._start = start
        self._result: tuple[T] | None = None
        self.failure: str | None = None

    def get(self) -> T:
        if self._result is not None:
            return self._result[0]
        if self.failure is not None:
            raise RuntimeError(self.failure)
        try:
            result = self._start()
        except Exception as exc:
            why = " ".join(f"{type(exc).__name__}: {exc}".split())
            again = "and is not started again in this run (resume it once fixed)"
            self.failure = f"{self.what} did not start, {again}: {why}"
            raise RuntimeError(self.failure) from exc
        self._result = (result,)
        return result
