"""Crash-safe small files: write to a temp file, fsync, rename over, fsync the directory; and flock-based locks.

Only bytes and paths: what the files mean is records.py's and journal.py's business. A reader sees the old file or the
new one, never a torn one; a temp file left by a crash (`.tmp.*`) is swept by the next writer holding the lock.
`EDGE_IPAM_SNAPSHOT_TEST_HOOK=kill-before-rename` makes the writer SIGKILL itself after the temp file is durable and
before the rename, so the tests can prove that claim.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp."
TEST_HOOK = "EDGE_IPAM_SNAPSHOT_TEST_HOOK"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    if os.environ.get(TEST_HOOK) == "kill-before-rename":
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove(path: Path) -> bool:
    try:
        os.lstat(path)  # a read-only filesystem says EROFS, not ENOENT, to unlinking a file that is not there
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def sweep_tmp(directory: Path) -> list[Path]:
    """Remove temp files a crashed writer left; call only while holding the directory's lock."""
    swept = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(directory):
            if entry.name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    swept.append(Path(entry.path))
    return swept


def _open_lockfile(path: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        # A read-only data dir still has its lock file: flock works on a read-only descriptor.
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


@contextlib.contextmanager
def locked(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold an exclusive flock on `path` (created if missing); yields False if `blocking` is off and it is taken."""
    fd = _open_lockfile(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
