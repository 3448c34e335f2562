"""The companion-elected pool (--pool-election companion), the I/O: announce this node's peer address on its own
Node, then each `retry` seconds read the pool's Lease and publish the role follow.Following reads from it.

The announcement is the Node annotation edgeproxy.io/pool-peer ("host:port", a JSON merge patch of the node's own
Node, which NodeRestriction allows), sent as the node through its upstream and retried each round until accepted;
the companion names only nodes that announced. On stop it is removed (best effort), so the companion moves the Lease
at once instead of waiting for the node Lease to go stale. Same surface as elector.Elector (view, on_change, run,
release, unreachable_rounds), which wiring runs instead of it. Neighbours: follow (the decisions), elector (the
requests), upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable

from multidict import CIMultiDict

from edgeproxy import upstream
from edgeproxy.pool import election, elector, errors, follow

log = logging.getLogger(__name__)
PEER_ANNOTATION = "edgeproxy.io/pool-peer"  # read by the companion (companion/pools.py)
_TIMEOUT = 5.0


class Follower(elector.Elector):
    __slots__ = ("announced", "following")

    def __init__(self, up: upstream.Upstream, config: election.Config,
                 on_change: Callable[[election.View], None] | None = None) -> None:
        super().__init__(up, config, on_change)
        self.following = follow.Following(config.identity)
        self.announced = False

    async def _annotate(self, value: str | None) -> int:
        """Merge-patch this node's peer annotation (None removes it); the HTTP status."""
        node = self.election.config.identity
        body = json.dumps({"metadata": {"annotations": {PEER_ANNOTATION: value}}}).encode()
        headers = CIMultiDict({"Content-Type": "application/merge-patch+json", "Accept": "application/json",
                               "User-Agent": "edgeproxy-pool"})
        _, resp = await self._up.send("PATCH", f"/api/v1/nodes/{node}", headers, body, header_timeout=_TIMEOUT)
        try:
            while await asyncio.wait_for(resp.read(), _TIMEOUT):
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
        cfg = self.election.config
        if not self.announced:
            await self.announce()
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
        self._publish(self.following.view(time.monotonic()))
        return self.view

    async def release(self) -> None:
        self._publish(election.View(election.Role.CANDIDATE))
        if not self.announced:
            return
        self.announced = False
        with contextlib.suppress(Exception):  # best effort: unanswered, the node Lease goes stale instead
            status = await asyncio.wait_for(self._annotate(None), _TIMEOUT)
            if status == 200:
                log.info("pool %s: %s withdrew its peer address", self.election.config.pool,
                         self.election.config.identity)
