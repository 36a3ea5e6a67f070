"""One job per run directory: a lock the job holds for its whole life.

`DIR/job.lock` is locked with flock(2) while a job runs in DIR and says who holds it (pid, host, since when).
The kernel drops a flock when its process ends, however it ends (SIGKILL, out of memory, a power cut), so the
lock of a dead job is simply free: a new job takes it over without guessing whether a pid is stale. The file
stays (removing it could let two jobs lock two different files of the same name); its text is cleared when
the job ends. On network filesystems the lock is as good as their locking (NFSv4 and Lustre honour flock).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import pathlib
import socket
from types import TracebackType

from onpolicy.errors import OnpolicyError

LOCK_FILE = "job.lock"


class RunDirectoryBusy(OnpolicyError):
    """Another job holds the run directory."""


class RunLock:
    """The held lock of one run directory; `release()` (or leaving its `with`) gives it back."""

    def __init__(self, directory: pathlib.Path, descriptor: int) -> None:
        self.directory = directory
        self._descriptor: int | None = descriptor

    @classmethod
    def take(cls, directory: pathlib.Path) -> RunLock:
        """Lock `directory` (created if missing) for this process, or refuse naming the job that holds it."""
        try:
            directory.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OnpolicyError(f"cannot use run directory {directory}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read_holder(descriptor))
            os.close(descriptor)
            raise RunDirectoryBusy(
                f"{directory} is in use by another job ({holder}); two jobs in one run directory would overwrite "
                "each other's rounds. Wait for that job to end (or stop it), or give another --run-dir"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        _write(descriptor, json.dumps(holder) + "\n")
        return cls(directory, descriptor)

    def release(self) -> None:
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        try:
            _write(descriptor, "")
        except OSError:
            pass  # the directory may have been moved or its disk filled: unlocking matters, not the text
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            os.close(descriptor)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()


def _write(descriptor: int, text: str) -> None:
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, text.encode("utf-8"), 0)
    os.fsync(descriptor)


def _read_holder(descriptor: int) -> dict[str, object]:
    try:
        return json.loads(os.pread(descriptor, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "a job that has not said who it is yet"
    here = socket.gethostname()
    host = holder.get("host")
    where = "this machine" if host == here else f"host {host}"
    return f"pid {holder.get('pid')} on {where}, since {holder.get('since')}"
