"""Processes of the real cluster tier: started with their output in a log file, stopped by their own PID only.

A `Proc` is one child process (optionally inside a network namespace, through `ip netns exec`, which execs the
command so the PID is the component's own). `stop()` sends SIGTERM, waits, then SIGKILL; it is idempotent and never
touches any other process. A child is killed by the kernel when the thread that started it ends (PR_SET_PDEATHSIG):
start components from a thread that lives as long as they should (the main thread).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self


class RealError(RuntimeError):
    """A component of the real cluster tier did not start or did not reach the state asked for."""


class Started:
    """A context manager over `start()`/`stop()`: a start that fails half way stops what it had started."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Proc:
    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *, netns: str | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.netns = netns
        self.log_path = log_path
        full = (["ip", "netns", "exec", netns] if netns else []) + self.argv
        run_env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "HOME": str(log_path.parent)}
        run_env.update(env or {})
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self._log_start = log.tell()
            log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(full)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=run_env, cwd=cwd, start_new_session=True, preexec_fn=_die_with_parent)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def kill(self) -> None:
        """SIGKILL at once: a crash, or a power cut of the edge host."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def log(self) -> str:
        """This run's output so far (the log file is shared by the runs of one component)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child: SIGKILL when the thread that started it ends (a test run killed with -9 leaves no component
    running). It survives the exec of `ip netns exec` and of the component."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def wait_for(cond: Callable[[], object], timeout: float, what: str, *, every: float = 0.1,
             procs: Sequence[Proc] = ()) -> object:
    """Poll `cond` until it returns something truthy (returned) or `timeout` passes (RealError naming `what`).
    A process of `procs` that exits meanwhile fails at once, with the end of its log."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # a probe failing is "not yet"
            last_exc = e
        for p in procs:
            if not p.alive():
                raise RealError(f"{p.name} exited ({p.popen.returncode}) while waiting for {what}:\n{p.log_tail()}")
        if time.monotonic() > deadline:
            tails = "".join(f"\n--- {p.name}:\n{p.log_tail(15)}" for p in procs)
            raise RealError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_exc!r}){tails}")
        time.sleep(every)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
