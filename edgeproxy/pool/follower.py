"""The companion-elected pool (--pool-election companion), the I/O: announce this node's peer address on its own
Node, then WATCH the pool's Lease and publish the role follow.Following reads from it.

The announcement is the Node annotation edgeproxy.io/pool-peer ("host:port", a JSON merge patch of the node's own
Node, which NodeRestriction allows), sent as the node through its upstream and retried each `retry` seconds until
accepted; the companion names only nodes that announced. On stop it is removed (best effort), so the companion moves
the Lease at once instead of waiting for the node Lease to go stale.

The Lease: one LIST of exactly it (fieldSelector metadata.name), then one WATCH from its resourceVersion with
bookmarks, resumed from the last resourceVersion when it ends (only a 410 lists again). At rest the WAN carries the
companion's renewals (one event each `duration`/3 s) and nothing else; a leader change is seen as soon as it is
written. Each `retry` seconds a tick, with no request: the role as of now (a Lease nobody renews expires on this
node's clock); an upstream that is offline freezes what the node saw (the branch cut off keeps its leader); a Lease
that has not changed for nearly its duration is read once with a GET (a watch over a dead link is silent too: no
answer to the read → `unreachable`). A watch the API server refuses (401/403/404/405/400: RBAC without `watch`, say)
falls back to a GET every `duration`/3 s, and the watch is tried again every 5 minutes. Same surface as
elector.Elector (view, on_change, run, release, unreachable_rounds, round: one GET), which wiring runs instead of it.
Neighbours: follow (the decisions), elector (the requests), upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict

from edgeproxy import tasks, upstream
from edgeproxy.kube import watch as kube_watch
from edgeproxy.pool import election, elector, errors, follow, remember

log = logging.getLogger(__name__)
PEER_ANNOTATION = "edgeproxy.io/pool-peer"  # read by the companion (companion/pools.py)
_TIMEOUT = 5.0
REFUSED = frozenset({400, 401, 403, 404, 405})  # a LIST or WATCH of the Lease answered so: poll with GETs instead
REWATCH_AFTER = 300.0  # seconds between tries of a refused watch (RBAC may be fixed meanwhile)
MAX_BACKOFF = 10.0


class _Refused(Exception):
    pass


class Follower(elector.Elector):
    __slots__ = ("_kick", "_polled", "_response", "_rv", "announced", "following", "lease_lists", "lease_reads",
                 "lease_watches", "memory", "poll_every", "refused")

    def __init__(self, up: upstream.Upstream, config: election.Config,
                 on_change: Callable[[election.View], None] | None = None,
                 memory: remember.Memory | None = None) -> None:
        super().__init__(up, config, on_change)
        self.following = follow.Following(config.identity)
        self.memory = memory  # the leader followed before a restart, followed again until the Lease is read
        seen = memory.lease(config.pool) if memory is not None else None
        if seen is not None and election.holder(seen) not in ("", config.identity):
            self.following.see(seen, time.monotonic())
            log.info("pool %s: following %s, remembered from before the restart, until the Lease is read",
                     config.pool, election.holder(seen))
        self.announced = False
        self.poll_every = max(config.retry, config.duration / 3)  # only while the watch is refused
        self.refused = False  # the API server refuses this node a watch of the Lease: GETs every poll_every
        self.lease_reads = self.lease_lists = self.lease_watches = 0
        self._rv: str | None = None  # the watch's resourceVersion; None: LIST first
        self._polled = 0.0
        self._response: Any = None
        self._kick = asyncio.Event()
        up.on_change(self._upstream_changed)

    def _upstream_changed(self, online: bool) -> None:
        if not online and self._response is not None:
            self._response.close()  # a watch over a dead link sits silent: end it, resumed when back
        elif online:
            self.kick()

    def kick(self) -> None:
        """Try the watch again now rather than after its backoff (the upstream is back; RBAC was fixed)."""
        self._kick.set()

    async def _annotate(self, value: str | None) -> int:
        """Merge-patch this node's peer annotation (None removes it); the HTTP status."""
        node = self.election.config.identity
        body = json.dumps({"metadata": {"annotations": {PEER_ANNOTATION: value}}}).encode()
        headers = CIMultiDict({"Content-Type": "application/merge-patch+json", "Accept": "application/json",
                               "User-Agent": "edgeproxy-pool"})
        _, resp = await self._up.send("PATCH", f"/api/v1/nodes/{node}", headers, body, header_timeout=_TIMEOUT)
        try:
            async with asyncio.timeout(_TIMEOUT):  # not wait_for: on 3.11 it can swallow a cancel (elector._call)
                while await resp.read():
                    pass
        finally:
            resp.close()
        return resp.status

    async def announce(self) -> None:
        cfg = self.election.config
        try:
            status = await self._annotate(cfg.address)
        except Exception as e:  # unreachable: again next round
            log.info("pool %s: peer address not announced yet: %s: %s", cfg.pool, type(e).__name__, e)
            return
        if status == 200:
            self.announced = True
            log.info("pool %s: %s announced its peer address %s", cfg.pool, cfg.identity, cfg.address)
        else:
            log.warning("pool %s: announcing the peer address on Node %s answered HTTP %d (the node must be allowed to "
                        "patch its own Node)", cfg.pool, cfg.identity, status)

    async def round(self) -> election.View:
        """Announce if need be, read the Lease once (a GET), publish the role."""
        if not self.announced:
            await self.announce()
        await self.read()
        self._publish(self.following.view(time.monotonic()))
        return self.view

    async def read(self) -> None:
        cfg = self.election.config
        self.lease_reads += 1
        try:
            status, lease = await self._call("GET", cfg.path)
            self.following.see(None if status == 404 else lease, time.monotonic())
        except errors.LeaseError as e:
            if e.status == 0:
                self.following.unreachable(time.monotonic())
                self.unreachable_rounds += 1
            else:  # 403 and the like: what we saw ages out
                self.following.see(None, time.monotonic())
            log.info("pool %s: reading the lease failed: %s", cfg.pool, e)
        except Exception as e:  # a timeout, a connection broken mid-body: no answer
            self.following.unreachable(time.monotonic())
            self.unreachable_rounds += 1
            log.info("pool %s: reading the lease failed: %s: %s", cfg.pool, type(e).__name__, e)

    async def tick(self) -> election.View:
        """Each `retry` seconds: announce if need be, and the role as of now (no request unless the Lease has been
        quiet for nearly its duration, or the watch is refused and a poll is due)."""
        cfg = self.election.config
        if not self.announced:
            await self.announce()
        mono = time.monotonic()
        if not self._up.online:  # nobody can read or renew the Lease: what we saw holds
            self.following.unreachable(mono)
            self.unreachable_rounds += 1
        elif self.refused and mono - self._polled >= self.poll_every:
            self._polled = mono
            await self.read()
        elif self.following.quiet(mono, 2 * cfg.retry):
            await self.read()
        self._publish(self.following.view(time.monotonic()))
        return self.view

    async def run(self) -> None:
        """The watch, and a tick every `retry` seconds, until cancelled; then the announcement is withdrawn."""
        watcher = tasks.spawn(self._watch_loop(), name="pool-lease-watch")
        try:
            while True:
                await self.tick()
                elector.raise_if_cancelled()
                await asyncio.sleep(self.election.config.retry)  # the tick's period, client-go's retryPeriod
        finally:
            self._stopping = True  # the watch ends even if its cancellation is lost (elector.raise_if_cancelled)
            watcher.cancel()
            if self._response is not None:
                self._response.close()
            self.kick()
            await asyncio.wait([watcher], timeout=_TIMEOUT)
            await self.release()

    # ---- the watch ----

    async def _watch_loop(self) -> None:
        cfg = self.election.config
        backoff = cfg.retry
        while not self._stopping:
            elector.raise_if_cancelled()
            try:
                if self._rv is None:
                    await self._list()
                elector.raise_if_cancelled()
                if await self._watch():
                    backoff = cfg.retry
                    continue
            except asyncio.CancelledError:
                raise
            except _Refused as e:
                if not self.refused:
                    log.warning("pool %s: the API server refuses this node a watch of the Lease (%s): reading it "
                                "every %gs instead (grant get, list and watch of leases)", cfg.pool, e,
                                self.poll_every)
                self.refused = True
                self._rv = None
                await self._pause(REWATCH_AFTER)
                continue
            except errors.LeaseError as e:  # an HTTP error (5xx, 429): what we saw ages out
                log.info("pool %s: watching the lease: %s", cfg.pool, e)
            except Exception as e:  # no answer (unreachable, timed out, broken mid-body): what we saw holds
                self.following.unreachable(time.monotonic())
                self.unreachable_rounds += 1
                log.info("pool %s: watching the lease: %s: %s", cfg.pool, type(e).__name__, e)
            await self._pause(backoff * random.uniform(0.8, 1.2))
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _pause(self, seconds: float) -> None:
        """Sleep `seconds`, or until the upstream comes back online."""
        self._kick.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._kick.wait(), seconds)

    async def _list(self) -> None:
        cfg = self.election.config
        self.lease_lists += 1
        try:
            status, doc = await self._call("GET", f"{cfg.collection_path}?{follow.lease_params(cfg.lease_name)}")
        except errors.LeaseError as e:
            if e.status in REFUSED:
                raise _Refused(f"LIST answered {e.status}") from e
            raise
        if status != 200:
            raise _Refused(f"LIST answered {status}")
        items = [i for i in doc.get("items") or () if isinstance(i, dict)]
        self._see(items[0] if items else None)
        self._rv = str((doc.get("metadata") or {}).get("resourceVersion") or "")

    def _see(self, lease: dict[str, Any] | None) -> None:
        self.following.see(lease, time.monotonic())
        self._publish(self.following.view(time.monotonic()))

    async def _watch(self) -> bool:
        """One WATCH from self._rv; True when it ended cleanly after a while (resume at once)."""
        cfg = self.election.config
        self.lease_watches += 1
        query = follow.lease_params(cfg.lease_name, self._rv or "", watch=True, timeout=random.randint(300, 600))
        headers = CIMultiDict({"Accept": "application/json", "User-Agent": "edgeproxy-pool"})
        try:
            _, resp = await self._up.send("GET", f"{cfg.collection_path}?{query}", headers, header_timeout=_TIMEOUT)
        except upstream.Unavailable as e:
            raise errors.LeaseError(0, f"API server unreachable: {e}") from e
        if resp.status != 200:
            body = b""
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_TIMEOUT):
                    while (chunk := await resp.read()) and len(body) < 4096:
                        body += chunk
            resp.close()
            if resp.status == 410:
                self._rv = None
                return True
            if resp.status in REFUSED:
                raise _Refused(f"WATCH answered {resp.status}: {body[:200]!r}")
            raise errors.LeaseError(resp.status, f"WATCH answered {resp.status}: {body[:200]!r}")
        if self.refused:
            self.refused = False
            log.info("pool %s: watching the Lease again", cfg.pool)
        self._response = resp
        started, frames = time.monotonic(), 0
        splitter = kube_watch.JsonSplitter()
        ok = False
        try:
            while chunk := await resp.read():
                for line in splitter.feed(chunk):
                    frames += 1
                    if not self._event(json.loads(line)):
                        return True
            ok = True
        finally:
            self._response = None
            if ok:
                resp.release()
            else:
                resp.close()
        return frames > 0 or time.monotonic() - started >= 1.0  # ended at once with nothing: back off

    def _event(self, event: Any) -> bool:
        """One watch event; False when the watch must start again (an ERROR: 410 lists again)."""
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if not isinstance(obj, dict):
            raise errors.LeaseError(500, f"a watch event without an object: {str(event)[:200]}")
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            log.info("pool %s: the lease watch ended with %s: %s", self.election.config.pool, code,
                     obj.get("message", ""))
            if code == 410:
                self._rv = None
                return False
            raise errors.LeaseError(code, f"watch ERROR: {obj.get('message', '')}")
        rv = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if rv:
            self._rv = rv
        if kind in ("ADDED", "MODIFIED"):
            self._see(obj)
        elif kind == "DELETED":
            self._see(None)
        return True

    def _publish(self, view: election.View) -> None:
        super()._publish(view)
        if self.memory is not None:  # written only when the leader or its address changes
            self.memory.remember_lease(self.election.config.pool,
                                       self.following.lease if view.role is election.Role.FOLLOWER else None)

    async def release(self) -> None:
        super()._publish(election.View(election.Role.CANDIDATE))  # stopping: the leader stays remembered
        if not self.announced:
            return
        self.announced = False
        with contextlib.suppress(Exception):  # best effort: unanswered, the node Lease goes stale instead
            async with asyncio.timeout(_TIMEOUT):
                status = await self._annotate(None)
            if status == 200:
                log.info("pool %s: %s withdrew its peer address", self.election.config.pool,
                         self.election.config.identity)
