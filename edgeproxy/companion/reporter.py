"""Edge side: keep the Node's `edgeproxy.io/cache-health` annotation current while online.

Run by `edgeproxy serve` (server.py) when it has a cache and knows its node. Every `check` seconds it judges the
cache (health.judge: store counters against those of `window` seconds ago, kubelet's pods of this node cached
complete); a changed verdict is patched at once, an unchanged one every `interval` seconds (so the companion can
tell a live report from a stale one). The PATCH goes upstream as the node (the kubeconfig's identity): the
NodeRestriction admission plugin lets a node change its own Node's annotations, not its taints or
node-restriction labels (plugin/pkg/admission/noderestriction admitNode). Offline nothing is sent: the last report
stands, and the companion changes nothing while the node is not Ready. Neighbours: health, upstream, cache.store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from typing import Any

from multidict import CIMultiDict

from edgeproxy import upstream
from edgeproxy.companion import health

log = logging.getLogger(__name__)


def kubelet_pods_complete(store: Any, node: str) -> bool:
    """kubelet's list of this node's pods (fieldSelector spec.nodeName=<node>) is in the cache, complete."""
    want = f"spec.nodeName={node}"
    for key, meta in store.views():
        if (key.component == "kubelet" and key.resource == "pods" and want in key.field_selector.split(",")
                and meta.complete):
            return True
    return False


def counters(store: Any) -> dict[str, int]:
    stats = store.stats()
    return {c: int(stats.get(c, 0)) for c in health.FAILURE_COUNTERS}


class Reporter:
    __slots__ = ("_history", "_up", "check", "interval", "last", "node", "sent_at", "store", "window")

    def __init__(self, up: upstream.Upstream, store: Any, node: str, *, interval: float = 300.0,
                 check: float = 10.0, window: float = 300.0) -> None:
        self._up = up
        self.store, self.node = store, node
        self.interval, self.check, self.window = interval, check, window
        self._history: deque[tuple[float, dict[str, int]]] = deque()
        self.last: health.Report | None = None
        self.sent_at = 0.0

    def judge(self, now: float) -> health.Report:
        current = counters(self.store) if self.store is not None else {}
        while self._history and now - self._history[0][0] > self.window:
            self._history.popleft()
        previous = self._history[0][1] if self._history else {}
        self._history.append((now, current))
        return health.judge(health.Facts(
            cache_open=self.store is not None, counters=current, previous=previous,
            kubelet_pods_complete=self.store is not None and kubelet_pods_complete(self.store, self.node),
            node=self.node))

    async def once(self) -> bool:
        """Judge, and report if due; True when a report was sent."""
        now = time.monotonic()
        report = await asyncio.to_thread(self.judge, now)
        if not self._up.online or (report == self.last and now - self.sent_at < self.interval):
            return False
        body = json.dumps({"metadata": {"annotations": {health.ANNOTATION: health.encode(report)}}}).encode()
        headers = CIMultiDict({"Content-Type": "application/merge-patch+json", "Accept": "application/json",
                               "User-Agent": "edgeproxy-health"})
        try:
            _, resp = await self._up.send("PATCH", f"/api/v1/nodes/{self.node}", headers, body, header_timeout=10.0)
            try:
                await _drain(resp)
            finally:
                resp.close()
        except upstream.UpstreamError as e:
            log.info("cache health not reported: %s", e)
            return False
        except Exception as e:  # a connection cut mid-body: try again at the next check
            log.info("cache health not reported: %s", e)
            return False
        if resp.status != 200:
            log.warning("cache health report refused: HTTP %d (the node's identity must be allowed to patch "
                        "nodes/%s)", resp.status, self.node)
            return False
        if report != self.last:
            log.info("cache health reported: %s", "healthy" if report.healthy else f"unhealthy: {report.reason}")
        self.last, self.sent_at = report, now
        return True

    async def run(self) -> None:
        while True:
            await self.once()
            await asyncio.sleep(self.check)  # the reporting period, not synchronisation


async def _drain(resp: Any) -> None:
    while await resp.read():
        pass
