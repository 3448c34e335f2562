"""Crash-safe small files: write to a temp file, fsync, rename over, fsync the directory; and flock-based locks.

Only bytes and paths: what the files mean is records.py's and journal.py's business. A reader sees the old file or the
new one, never a torn one; a temp file left by a crash (`.tmp.*`) is swept by the next writer holding the lock.
`EDGE_IPAM_SNAPSHOT_TEST_HOOK=kill-before-rename` makes the writer SIGKILL itself after the temp file is durable and
before the rename, so the tests can prove that claim.
"""

from __future__ import annotations

import fcntl
import os

TMP_PREFIX = ".tmp."
TEST_HOOK = "EDGE_IPAM_SNAPSHOT_TEST_HOOK"


class suppress:  # contextlib.suppress, without importing contextlib
    __slots__ = ("kinds",)

    def __init__(self, *kinds: type[BaseException]):
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        return kind is not None and issubclass(kind, self.kinds)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: str, data: bytes, mode: int = 0o644) -> None:
    head, name = os.path.split(path)
    tmp = os.path.join(head, f"{TMP_PREFIX}{name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.close(fd)
    if os.environ.get(TEST_HOOK) == "kill-before-rename":
        import signal
        os.kill(os.getpid(), signal.SIGKILL)
    os.replace(tmp, path)
    fsync_dir(head or ".")


def remove(path: str) -> bool:
    try:
        os.lstat(path)  # a read-only filesystem says EROFS, not ENOENT, to unlinking a file that is not there
        os.unlink(path)
    except FileNotFoundError:
        return False
    fsync_dir(os.path.dirname(path) or ".")
    return True


def sweep_tmp(directory: str) -> list[str]:
    """Remove temp files a crashed writer left; call only while holding the directory's lock."""
    swept = []
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return swept
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX):
            try:
                os.unlink(entry.path)
            except OSError:
                continue
            swept.append(entry.path)
    return swept


def _open_lockfile(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        # A read-only data dir still has its lock file: flock works on a read-only descriptor.
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


class locked:  # used as a function: `with durable.locked(path) as got:`
    """Hold an exclusive flock on `path` (created if missing); gives False if `blocking` is off and it is taken.

    A class, not contextlib.contextmanager: contextlib and collections are a tenth of a CNI call's start-up.
    """

    __slots__ = ("blocking", "fd", "path")

    def __init__(self, path: str, *, blocking: bool = True):
        self.path, self.blocking, self.fd = path, blocking, -1

    def __enter__(self) -> bool:
        self.fd = _open_lockfile(self.path)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            return False
        except BaseException:
            os.close(self.fd)
            raise
        return True

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
