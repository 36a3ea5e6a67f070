"""Writing files so that a crash, a power cut or a full disk leaves the old version or the new one, whole.

A file is written to a temporary name, fsynced and renamed over the old one; a folder is filled under a
temporary name, every file and subfolder fsynced, then swapped with the old one in one step (Linux's
renameat2 RENAME_EXCHANGE; elsewhere two renames, which a reader then sees as a moment without the folder). A
rename or a new entry is made durable by fsyncing its directory, where the entry lives. An append-only file
gains whole lines only: a torn last line a crash left is cut before the next line is added. A write that fails
for want of space raises `NoSpace`, one line naming the file, with nothing half-written left in place.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pathlib
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from onpolicy.errors import OnpolicyError

_DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class NoSpace(OnpolicyError):
    """A write failed because the disk (or the user's quota) is full."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether a write failed for want of space: an OSError saying so, or a library's error wrapping one
    (safetensors reports "I/O error: ... (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    return any(f"(os error {code})" in str(exc) for code in _DISK_FULL)


@contextmanager
def space_checked(target: pathlib.Path) -> Iterator[None]:
    """Turn a full disk while writing `target` into `NoSpace` (the files of complete rounds are untouched:
    every write goes to a temporary name first, or appends whole lines only)."""
    try:
        yield
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        free = _free_gib(target)
        raise NoSpace(
            f"no space left writing {target} ({getattr(exc, 'strerror', None) or exc}; {free:.1f} GiB free): what "
            "was being written is not marked complete, and everything complete before it is intact. Free some "
            "space (or lower checkpoint.keep_last) and run the same command again to resume"
        ) from None


def write_text(target: pathlib.Path, text: str, durable: bool = True) -> pathlib.Path:
    """Write `target` whole or not at all; `durable` also fsyncs it (and its directory entry)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # a name of this writer's own: two threads (or processes) writing the same file never share one
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    with space_checked(target):
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                if durable:
                    f.flush()
                    os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, target)
    if durable:
        fsync_directory(target.parent)
    return target


def append_line(file: pathlib.Path, line: str) -> None:
    """Append `line` and a newline to an append-only file, on disk before this returns (a new file's directory
    entry too). A torn last line a crash left (no newline at its end) is cut first: it was never written whole,
    and the new line must not run on from it. A full disk leaves the file as it was."""
    new = not file.exists()
    if not new:
        cut_torn_tail(file)
    data = memoryview((line + "\n").encode("utf-8"))
    with space_checked(file):
        descriptor = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(descriptor).st_size
            try:
                while data:
                    data = data[os.write(descriptor, data) :]
                os.fsync(descriptor)
            except BaseException:
                os.ftruncate(descriptor, size)  # no part of a line stays on disk
                raise
        finally:
            os.close(descriptor)
    if new:
        fsync_directory(file.parent)


def cut_torn_tail(file: pathlib.Path) -> None:
    """Cut what follows the last newline of `file` (nothing when it ends with one)."""
    with open(file, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)
        os.fsync(f.fileno())


def fsync_tree(folder: pathlib.Path) -> None:
    """fsync every file and folder under `folder`, and `folder` itself: the data and the entries of a tree
    written before it is renamed into place."""
    for path in sorted(folder.rglob("*"), reverse=True):  # deepest first: a folder after what it holds
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            fsync_directory(path)
    fsync_directory(folder)


def replace_folder(new: pathlib.Path, target: pathlib.Path) -> None:
    """Put the folder `new` in place of `target` (which may not exist) in one step where the OS can, and make
    it durable; the old folder is deleted once the new one is in place."""
    if not target.exists():
        os.rename(new, target)
        fsync_directory(target.parent)
        return
    if _exchange(new, target):
        fsync_directory(target.parent)
        shutil.rmtree(new)  # after the exchange, `new` holds the old folder
        return
    old = target.with_name(f".{target.name}.old.tmp")
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(new, target)
    fsync_directory(target.parent)
    shutil.rmtree(old)


def fsync_directory(path: pathlib.Path) -> None:
    """Make a rename or a new file in `path` durable (the entry lives in the directory, not in the file)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)  # glibc >= 2.28


def _exchange(first: pathlib.Path, second: pathlib.Path) -> bool:
    """Swap two existing paths atomically; False where the OS or the file system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _free_gib(path: pathlib.Path) -> float:
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free / 1024**3
    return float("nan")
