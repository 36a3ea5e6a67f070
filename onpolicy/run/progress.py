"""How far a long phase of a round is: a bar on a terminal, a plain line now and then otherwise, and status.json.

A phase of a long job can take minutes (thousands of prompts, a slow judge, many training steps). Each phase
that has units of work (generate: samples; score: groups; train: steps; evaluate: samples) reports them as they
finish (a sample as vLLM finishes it, in process and on servers, so that the rate and time left follow the work):

- on a terminal, a `rich` bar with the count, the rate and the time left, gone when the phase ends;
- otherwise (a log file, CI), a line every `every_s` seconds: `round 3 train: 40/120 steps, 2.1/s, ~38s left`;
- always, `status.json` gains `done`, `total`, `unit` and `progress_time` (when work last advanced), at most
  every couple of seconds, so that whoever watches a job can tell a slow phase from a stuck one.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from onpolicy.interfaces import PhaseProgress

STATUS_EVERY_S = 2.0


class StatusWriter(Protocol):
    def write_status(self, round_number: int, phase: str, **progress: Any) -> None: ...


class PhaseCounter:
    """One phase's counter (an `onpolicy.interfaces.PhaseProgress`): `advance(n)` as work finishes; `total` may
    be set once it is known (train steps)."""

    def __init__(self, report: Callable[[PhaseCounter], None], total: int | None, unit: str) -> None:
        self.total = total
        self.unit = unit
        self.done = 0
        self.started = time.monotonic()
        self._report = report
        self._lock = threading.Lock()  # work finishes on several threads at once (one per generation server)

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            self._report(self)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def describe(self) -> str:
        """`40/120 steps, 2.1/s, ~38s left` (without the parts not known yet)."""
        count = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        text = f"{count} {self.unit}"
        rate = self.rate()
        if rate > 0:
            text += f", {rate:.3g}/s"
            if self.total and self.done < self.total:
                text += f", ~{(self.total - self.done) / rate:.0f}s left"
        return text


class Progress:
    """Progress of the phases of one job, to `echo` (a terminal when `interactive`) and to `status`."""

    def __init__(
        self, status: StatusWriter, echo: Callable[[str], None], interactive: bool, every_s: float, stream: TextIO
    ) -> None:
        self.status = status
        self.echo = echo
        self.interactive = interactive
        self.every_s = every_s
        self.stream = stream

    @contextlib.contextmanager
    def phase(self, round_number: int, name: str, total: int | None = None, unit: str = "") -> Iterator[PhaseCounter]:
        """Report the work of phase `name` of round `round_number` while the block runs."""
        self.status.write_status(round_number, name)
        bar = _Bar(self.stream, f"round {round_number} {name}") if self.interactive else None
        last_status = last_line = time.monotonic()

        def report(progress: PhaseCounter) -> None:
            nonlocal last_status, last_line
            now = time.monotonic()
            finished = progress.total is not None and progress.done >= progress.total
            if now - last_status >= STATUS_EVERY_S or finished:
                last_status = now
                self.status.write_status(
                    round_number, name, done=progress.done, total=progress.total, unit=progress.unit,
                    progress_time=time.time(),
                )  # fmt: skip
            if bar is not None:
                bar.show(progress)
            elif self.every_s > 0 and now - last_line >= self.every_s:
                last_line = now
                self.echo(f"  round {round_number} {name}: {progress.describe()}")

        try:
            yield PhaseCounter(report, total, unit)
        finally:
            if bar is not None:
                bar.close()


class _Bar:
    """A transient rich progress bar on `stream`."""

    def __init__(self, stream: TextIO, description: str) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
            console=Console(file=stream), transient=True,
        )  # fmt: skip
        self._task = self._bar.add_task(description, total=None, unit="", rate="")
        self._bar.start()

    def show(self, progress: PhaseCounter) -> None:
        self._bar.update(
            self._task, completed=progress.done, total=progress.total, unit=progress.unit,
            rate=f"{progress.rate():.3g}/s",
        )  # fmt: skip

    def close(self) -> None:
        self._bar.stop()


class EngineBar:
    """What vLLM's `LLM.generate(use_tqdm=...)` drives (the subset of tqdm it uses), feeding a `PhaseProgress`:
    one unit per sample of each finished request. Built by `engine_bar(progress)`."""

    def __init__(self, progress: PhaseProgress, **_: Any) -> None:
        self._progress = progress
        self._started = time.monotonic()
        self.n = 0
        self.postfix = ""

    @property
    def format_dict(self) -> dict[str, float]:
        return {"elapsed": max(time.monotonic() - self._started, 1e-9)}

    def update(self, n: int = 1) -> None:  # vLLM adds a finished request's samples
        self.n += n
        self._progress.advance(n)

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass


def engine_bar(progress: PhaseProgress | None) -> Callable[..., Any] | bool:
    """`use_tqdm` for vLLM's `LLM.generate`: a bar feeding `progress`, or no bar at all. vLLM also wraps the
    prompts it adds in the bar (`use_tqdm(prompts, ...)`): those pass through uncounted."""
    if progress is None:
        return False

    def bar(*iterable: Any, **kwargs: Any) -> Any:
        return iterable[0] if iterable else EngineBar(progress, **kwargs)

    return bar
