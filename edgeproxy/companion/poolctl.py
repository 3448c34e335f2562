"""The companion's pool controller, the I/O: informers over the nodes, the node Leases and the pool Leases, and a
round each `period` seconds writing what pools.plan() decides.

Run by the companion replica holding the companion's own Lease (one writer at a time; a second replica that wrote
meanwhile loses with 409 Conflict, the resourceVersion check). A write answered 409 is planned again next round from
the Lease its informer brings; any other failure is logged and retried. Neighbours: pools (every decision),
informer, kubeapi, main (runs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from edgeproxy import tasks
from edgeproxy.companion import errors, informer, kubeapi, pools
from edgeproxy.pool import election

log = logging.getLogger(__name__)
PERIOD = 1.0  # seconds between rounds (in memory; the API server is written only on a change or a due renewal)


def _rv(obj: Any) -> int:
    rv = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")
    return int(rv) if rv.isdigit() else 0


class PoolController:
    __slots__ = ("_clock", "_kube", "_written", "duration", "freshness", "grace", "label", "leaders", "namespace",
                 "node_leases", "nodes", "period", "pool_leases", "renew", "writes")

    def __init__(self, kube: kubeapi.Kube, *, namespace: str = "edgeproxy",
                 label: str = "topology.kubernetes.io/zone", duration: int = 15, grace: float = 0.0,
                 period: float = PERIOD, clock: Callable[[], float] = time.monotonic) -> None:
        if duration < 3:
            raise errors.CompanionError(f"--pool-lease-duration {duration}: at least 3 seconds")
        self._kube = kube
        self.namespace, self.label, self.duration, self.grace, self.period = namespace, label, duration, grace, period
        self.renew = duration / 3  # a follower judges the Lease expired after `duration` without a change
        self._clock = clock
        self.freshness = pools.Freshness()
        self.nodes = informer.Informer(kube, "/api/v1/nodes", slim=self._slim_node)
        self.node_leases = informer.Informer(kube, pools.lease_path(pools.NODE_LEASE_NAMESPACE),
                                             on_change=self._node_lease)
        self.pool_leases = informer.Informer(kube, pools.lease_path(namespace),
                                             params={"labelSelector": election.POOL_LABEL})
        self._written: dict[str, tuple[dict[str, Any], float]] = {}  # pool -> (the Lease as last written, when)
        self.leaders: dict[str, str] = {}  # pool -> the holder last written (for logs and tests)
        self.writes = {"created": 0, "renewed": 0, "moved": 0, "conflicts": 0, "failed": 0}

    def _slim_node(self, node: dict[str, Any]) -> dict[str, Any]:
        md = node.get("metadata") or {}
        labels = {k: v for k, v in (md.get("labels") or {}).items() if k == self.label}
        ann = {k: v for k, v in (md.get("annotations") or {}).items() if k == pools.PEER_ANNOTATION}
        out = {k: md[k] for k in ("name", "resourceVersion", "deletionTimestamp") if k in md}
        out.update(labels=labels, annotations=ann)
        return {"metadata": out}

    def _node_lease(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        obj = new or old or {}
        self.freshness.see(new, str((obj.get("metadata") or {}).get("name") or ""), self._clock())

    async def run(self) -> None:
        """Until cancelled: the informers, and a round every `period` seconds."""
        running = [tasks.spawn(i.run(), name=f"companion-pools-{n}")
                   for n, i in (("nodes", self.nodes), ("node-leases", self.node_leases),
                                ("pool-leases", self.pool_leases))]
        try:
            for i in (self.nodes, self.node_leases, self.pool_leases):
                await i.wait_synced()
            log.info("companion pool controller: %d nodes, %d node leases, %d pool leases", len(self.nodes.items),
                     len(self.node_leases.items), len(self.pool_leases.items))
            while True:
                await self.round()
                await asyncio.sleep(self.period)  # the controller's period, not synchronisation
        finally:
            for t in running:
                t.cancel()
            for t in running:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    def lease(self, pool: str) -> dict[str, Any] | None:
        """The pool's Lease: the newer of what the informer holds and what this process last wrote."""
        seen = self.pool_leases.items.get((self.namespace, election.lease_name(pool)))
        written = self._written.get(pool, (None, 0.0))[0]
        return written if written is not None and _rv(written) >= _rv(seen) else seen

    async def round(self) -> None:
        mono = self._clock()
        groups = pools.members(self.nodes.items.values(), self.label, self.freshness, mono, self.grace)
        for pool, group in sorted(groups.items()):
            lease = self.lease(pool)
            last = self._written.get(pool)
            w = pools.plan(pool, group, lease, namespace=self.namespace, duration=self.duration, renew=self.renew,
                           since_write=None if last is None else mono - last[1], wall=time.time())
            if w is not None:
                await self._write(pool, w, lease)

    async def _write(self, pool: str, w: pools.Write, lease: dict[str, Any] | None) -> None:
        try:
            if w.create:
                done = await self._kube.create(pools.lease_path(self.namespace), w.body)
            else:
                done = await self._kube.update(pools.lease_path(self.namespace, pool), w.body)
        except errors.ApiError as e:
            if e.status == 409:
                self.writes["conflicts"] += 1  # another writer was first: planned again from the newer Lease
                self._written.pop(pool, None)
            else:
                self.writes["failed"] += 1
                log.warning("pool %s: cannot write its Lease %s/%s: %s", pool, self.namespace,
                            election.lease_name(pool), e)
            return
        self._written[pool] = (done if isinstance(done, dict) else w.body, self._clock())
        if w.create:
            self.writes["created"] += 1
        elif w.changed:
            self.writes["moved"] += 1
        else:
            self.writes["renewed"] += 1
        if self.leaders.get(pool) != w.holder or w.changed:
            before = election.holder(lease) or "nobody"
            log.info("pool %s: %s leads (before: %s)", pool, w.holder, before)
        self.leaders[pool] = w.holder
