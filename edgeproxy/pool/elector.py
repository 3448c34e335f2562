"""Pool leader election, the I/O: each `retry` seconds read the pool's Lease, send what election.plan() decides.

Requests go through the node's own upstream.Upstream (its API servers, failover, node identity, HTTP/2), JSON in and
out. 404 on read → create; 409 on a write → a lost race (Outcome.CONFLICT); an HTTP failure → Outcome.FAILED (a
leader keeps leading until its renew deadline passes); no answer at all (unreachable, timed out, broken) →
election.unreachable: what this node saw holds, so a branch offline keeps its leader. `on_change(view)` is called
whenever the role, holder or leader address changes; on stop a leader releases the Lease so a peer takes over at its
next round. Neighbours: election (every decision), upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from multidict import CIMultiDict

from edgeproxy import upstream
from edgeproxy.pool import election, errors

log = logging.getLogger(__name__)
_TIMEOUT = 5.0


def raise_if_cancelled() -> None:
    """CancelledError if this task was asked to stop: Python 3.11's asyncio.wait_for returns the inner result when
    it completes in the same turn as the cancellation (the cancel is lost, `cancelling()` stays raised), and a loop
    that carried on would never end (a stop waiting for it forever)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Elector:
    __slots__ = ("_stopping", "_up", "election", "on_change", "unreachable_rounds", "view")

    def __init__(self, up: upstream.Upstream, config: election.Config,
                 on_change: Callable[[election.View], None] | None = None) -> None:
        self._up = up
        self.election = election.Election(config)
        self.on_change = on_change
        self.view = election.View(election.Role.CANDIDATE)
        self._stopping = False
        self.unreachable_rounds = 0  # rounds the API server did not answer at all (election.unreachable)

    async def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, Any]:
        headers = CIMultiDict({"Accept": "application/json", "User-Agent": "edgeproxy-pool"})
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        try:
            _, resp = await self._up.send(method, path, headers, data, header_timeout=_TIMEOUT)
        except upstream.Unavailable as e:
            raise errors.LeaseError(0, f"API server unreachable: {e}") from e
        chunks = []
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that meets the read's end, and a
            # stop waiting for this task would wait for ever
            async with asyncio.timeout(_TIMEOUT):
                while chunk := await resp.read():
                    chunks.append(chunk)
        except BaseException:
            resp.close()
            raise
        resp.release()
        raw = b"".join(chunks)
        try:
            doc = json.loads(raw) if raw else None
        except ValueError:
            doc = None
        if resp.status >= 300 and resp.status not in (404, 409):
            message = doc.get("message") if isinstance(doc, dict) else raw[:200].decode("utf-8", "replace")
            raise errors.LeaseError(resp.status, f"{method} {path}: {message}")
        if resp.status < 300 and not isinstance(doc, dict):
            raise errors.LeaseError(resp.status, f"{method} {path}: the answer is not a JSON object")
        return resp.status, doc

    async def round(self) -> election.View:
        """One read-decide-write round; returns (and publishes) the view after it."""
        cfg = self.election.config
        try:
            status, lease = await self._call("GET", cfg.path)
            action = self.election.plan(None if status == 404 else lease, time.monotonic(), time.time())
            if action.step is not election.Step.WAIT:
                assert action.body is not None
                if action.step is election.Step.CREATE:
                    status, written = await self._call("POST", cfg.collection_path, action.body)
                else:
                    status, written = await self._call("PUT", cfg.path, action.body)
                if status == 409 or status == 404:  # 404: deleted between our read and write; a lost race too
                    self.election.outcome(election.Outcome.CONFLICT, None, time.monotonic())
                else:
                    self.election.outcome(election.Outcome.OK, written, time.monotonic())
        except errors.LeaseError as e:
            if e.status == 0:  # no answer at all: the link (or the API server) is gone; what we saw holds
                self.election.unreachable(time.monotonic())
                self.unreachable_rounds += 1
            else:
                self.election.outcome(election.Outcome.FAILED, None, time.monotonic())
            log.info("pool %s: lease round failed: %s", cfg.pool, e)
        except Exception as e:  # a timeout, a connection broken mid-body (httpclient, h2 errors): no answer either
            self.election.unreachable(time.monotonic())
            self.unreachable_rounds += 1
            log.info("pool %s: lease round failed: %s: %s", cfg.pool, type(e).__name__, e)
        self._publish(self.election.view(time.monotonic()))
        return self.view

    def _publish(self, view: election.View) -> None:
        if view == self.view:
            return
        old, self.view = self.view, view
        cfg = self.election.config
        if view.role is election.Role.LEADER:
            log.info("pool %s: %s now leads", cfg.pool, cfg.identity)
        elif old.role is election.Role.LEADER:
            log.warning("pool %s: %s stopped leading", cfg.pool, cfg.identity)
        elif view.problem:
            log.warning("pool %s: %s", cfg.pool, view.problem)
        if self.on_change is not None:
            self.on_change(view)

    async def run(self) -> None:
        """Rounds until cancelled; then a leader releases its Lease."""
        try:
            while True:
                await self.round()
                raise_if_cancelled()
                await asyncio.sleep(self.election.config.retry)  # the polling period, client-go's retryPeriod
        finally:
            await self.release()

    async def release(self) -> None:
        body = self.election.released_body()
        self.election.released()
        self._publish(election.View(election.Role.CANDIDATE))
        if body is None:
            return
        with contextlib.suppress(Exception):  # best effort: unanswered, the Lease simply expires
            async with asyncio.timeout(_TIMEOUT):
                status, _ = await self._call("PUT", self.election.config.path, body)
            if status < 300:
                log.info("pool %s: %s released the lease", self.election.config.pool, self.election.config.identity)
