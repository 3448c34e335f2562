"""tasks.stop: a shutdown ends background tasks within a bound, and names one that will not end instead of hanging."""

from __future__ import annotations

import asyncio
import logging

from edgeproxy import tasks


async def test_a_stop_ends_cancelled_tasks_and_returns_true():
    ended = []

    async def worker():
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(True)

    t = tasks.spawn(worker(), name="worker")
    await asyncio.sleep(0)  # started: its finally is what the cancel runs
    assert await tasks.stop((t, None), what="test", timeout=5) is True
    assert t.cancelled() and ended == [True]


async def test_a_task_that_swallows_its_cancel_is_named_and_the_stop_goes_on(caplog):
    release = asyncio.Event()

    async def stubborn():
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:  # as Python 3.11's wait_for can, when a cancel meets a result
                continue

    t = tasks.spawn(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="edgeproxy.tasks"):
        assert await tasks.stop((t,), what="pool branch-1", timeout=0.2) is False
    assert not t.done()
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("pool branch-1: task stubborn still running 0.2 s after its cancel")
    assert "test_tasks.py" in line and "stubborn" in line.rsplit("waits at", 1)[1]
    release.set()
    await t


async def test_a_stop_without_cancel_only_waits_and_a_cancel_of_the_caller_is_not_swallowed():
    gate = asyncio.Event()
    t = tasks.spawn(gate.wait(), name="closing")
    stopper = tasks.spawn(tasks.stop((t,), what="test", timeout=30, cancel=False), name="stopper")
    await asyncio.sleep(0)
    stopper.cancel()
    try:
        await stopper
    except asyncio.CancelledError:
        pass
    assert stopper.cancelled() and not t.done()  # the caller's cancel reached it; the awaited task was left alone
    gate.set()
    await t
