"""Task creation and ending in one place: every background task is named and kept referenced until it ends, and
a stop waits for it a bounded time.

A bare asyncio.create_task can be garbage-collected mid-flight (the event loop keeps only a weak reference);
ruff bans it in this repository in favour of spawn(). `stop()` is how a shutdown ends tasks: a task that does not end
(a cancel swallowed somewhere below it) is named in the log with where it waits, and the shutdown goes on, so the
cache is still committed and the process still exits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
    """Start `coro` as a task called `name`; keep it alive and log an exception it ends with."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


async def stop(tasks: Iterable[asyncio.Task[Any] | None], *, what: str, timeout: float, cancel: bool = True) -> bool:
    """Cancel `tasks` (unless `cancel` is False: only wait for them) and wait up to `timeout` seconds for them to end.
    Their outcomes are not raised; a cancel of the caller is not swallowed. False when one is still running, logged
    with where it waits."""
    live = [t for t in tasks if t is not None and not t.done()]
    if not live:
        return True
    if cancel:
        for t in live:
            t.cancel()
    _, pending = await asyncio.wait(live, timeout=timeout)
    for t in pending:
        log.error("%s: task %s still running %g s after %s; the shutdown goes on without it (it waits at %s)", what,
                  t.get_name(), timeout, "its cancel" if cancel else "the stop", where(t))
    return not pending


def where(task: asyncio.Task[Any]) -> str:
    """The await chain `task` is suspended in, innermost last: file:line function."""
    frames = task.get_stack()
    return " > ".join(f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}" for f in frames) \
        or "nowhere (not started)"
