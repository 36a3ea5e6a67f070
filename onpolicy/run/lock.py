"""One job per run directory: a lock the job holds for its whole life.

`DIR/job.lock` is locked with flock(2) while a job runs in DIR and says who holds it (pid, host, since when).
The kernel drops a flock when its process ends, however it ends (SIGKILL, out of memory, a power cut), so the
lock of a dead job is simply free: a new job takes it over without guessing whether a pid is stale. The file
stays (removing it could let two jobs lock two different files of the same name); its text is cleared when
the job ends. Once locked, the file is checked to still be the directory's: a job that opened it just before
`--fresh` moved the run aside would otherwise hold the old run's lock and write beside the new run.

On network file systems the lock is as good as their locking: NFS with its lock service and Lustre mounted
with `-o flock` lock across nodes; NFS mounted `nolock` or `local_lock=flock`, and Lustre with `-o localflock`,
lock per node only, so two nodes can each take it. A file system with no locks at all is refused at start.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import pathlib
import socket
from types import TracebackType

from onpolicy.errors import OnpolicyError
from onpolicy.untrusted import parse_json

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
        for _ in range(_ATTEMPTS):
            descriptor = _open_lock_file(directory)
            try:
                locked = lock_file(descriptor, directory / LOCK_FILE, wait=False)
            except BaseException:
                os.close(descriptor)
                raise
            if not locked:
                holder = _describe(_read_holder(descriptor))
                os.close(descriptor)
                raise RunDirectoryBusy(
                    f"{directory} is in use by another job ({holder}); two jobs in one run directory would "
                    "overwrite each other's rounds. Wait for that job to end (or stop it), or give another --run-dir"
                )
            if _is_the_lock_file_of(directory, descriptor):
                break
            os.close(descriptor)  # the directory was moved (--fresh) after we opened its lock: lock the new one
        else:
            raise OnpolicyError(f"cannot lock {directory}: its {LOCK_FILE} kept being replaced while locking it")
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


def lock_file(descriptor: int, path: pathlib.Path, wait: bool) -> bool:
    """flock `descriptor` (the open file `path`) exclusively: True once held; with `wait` off, False when another
    process holds it. A file system without working locks stops with what to do about it."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    except OSError as exc:
        if exc.errno not in _NO_LOCKS:
            raise
        raise OnpolicyError(
            f"cannot lock {path}: its file system does not support file locks ({exc.strerror}), so onpolicy cannot "
            "make sure one job alone writes there. Put the run directory on a local disk, or on a mount with locks "
            "(NFS with its lock service, not mounted nolock; Lustre mounted with -o flock)"
        ) from None
    return True


_NO_LOCKS = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP)
_ATTEMPTS = 5


def _open_lock_file(directory: pathlib.Path) -> int:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        return os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OnpolicyError(f"cannot use run directory {directory}: {exc.strerror or exc}") from None


def _is_the_lock_file_of(directory: pathlib.Path, descriptor: int) -> bool:
    """Whether the file `descriptor` locked is still `directory`'s lock file (not one moved away with its run)."""
    try:
        named = os.stat(directory / LOCK_FILE)
    except FileNotFoundError:
        return False
    held = os.fstat(descriptor)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _write(descriptor: int, text: str) -> None:
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, text.encode("utf-8"), 0)
    os.fsync(descriptor)


def _read_holder(descriptor: int) -> dict[str, object]:
    """Who holds the lock, as it wrote it; {} for anything else (a lock file cut short, or edited)."""
    try:
        holder = parse_json(os.pread(descriptor, 4096, 0).decode("utf-8") or "{}", LOCK_FILE)
    except (OSError, ValueError, OnpolicyError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict[str, object]) -> str:
    if not holder:
        return "a job that has not said who it is yet"
    here = socket.gethostname()
    host = holder.get("host")
    where = "this machine" if host == here else f"host {host}"
    return f"pid {holder.get('pid')} on {where}, since {holder.get('since')}"
