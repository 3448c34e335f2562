"""What the filters need to know from the API server: this node's pool, and the `kubernetes` Service's ClusterIPs.

Small GETs as the kubeconfig's identity (the Node authorizer allows a node its own Node and any Service): this
node's Node (`/api/v1/nodes/<node>`, for the pool label; default `topology.kubernetes.io/zone`) when topology is on,
and `default/kubernetes` (its ClusterIPs, which the in-cluster serving certificate must cover) when the redirect is
on. Read the first time a filter needs them (bounded by the caller), then every `refresh` seconds while online. When
a value changes the listeners are told (the stage ends the filtered watches so their clients relist). Offline
nothing is fetched: offline answers come from the cache, which holds what the filters produced online.
Neighbours: stage (asks and listens), upstream (sends), chain.Place (the node's place).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict

from edgeproxy import tasks
from edgeproxy.filters import chain

log = logging.getLogger(__name__)

POOL_LABEL = "topology.kubernetes.io/zone"
REFRESH = 60.0  # seconds between reads while online
FETCH_TIMEOUT = 5.0
KUBERNETES_SERVICE = "/api/v1/namespaces/default/services/kubernetes"


class Facts:
    """The values, kept fresh. `current()` never waits; `ensure()` waits (bounded) for a first answer."""

    __slots__ = ("_fetching", "_listeners", "cluster_ips", "error", "fetched_at", "place", "pool_label",
                 "refresh_every", "up", "want_pool", "want_service")

    def __init__(self, up: Any, node: str, pool_label: str = POOL_LABEL, refresh: float = REFRESH, *,
                 want_pool: bool = True, want_service: bool = False) -> None:
        self.up = up
        self.pool_label = pool_label
        self.refresh_every = refresh
        self.want_pool = want_pool and bool(node)
        self.want_service = want_service
        self.place = chain.Place(node, "")
        self.cluster_ips: tuple[str, ...] | None = None  # None: not read yet
        self.fetched_at = 0.0  # wall clock of the last good answer; 0: none yet
        self.error = "" if node or not want_pool else "this node's name is unknown (set EDGEPROXY_NODE_NAME)"
        self._fetching: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[str], None]] = []

    def current(self) -> chain.Place:
        return self.place

    def on_change(self, callback: Callable[[str], None]) -> None:
        """callback("pool") or callback("service") when that value changed, or was learnt."""
        self._listeners.append(callback)

    async def ensure(self, timeout: float) -> None:
        """Read once if never read (and the upstream is online), waiting at most `timeout` seconds."""
        if self.fetched_at or not (self.want_pool or self.want_service) or not self.up.online:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._fetch_once()), timeout)
        except TimeoutError:
            pass

    def _fetch_once(self) -> asyncio.Task[None]:
        if self._fetching is None or self._fetching.done():
            self._fetching = tasks.spawn(self.refresh(), name="filters-facts")
        return self._fetching

    async def run(self) -> None:
        """Refresh every `refresh_every` seconds while online (a periodic loop, cancelled at shutdown)."""
        while True:
            if self.up.online and (self.want_pool or self.want_service):
                await self._fetch_once()
            await asyncio.sleep(self.refresh_every)

    async def refresh(self) -> None:
        try:
            pool = None
            if self.want_pool:
                node = await self._get_json("/api/v1/nodes/" + urllib.parse.quote(self.place.node, safe=""))
                pool = str(((node.get("metadata") or {}).get("labels") or {}).get(self.pool_label, ""))
            ips = None
            if self.want_service:
                spec = (await self._get_json(KUBERNETES_SERVICE)).get("spec") or {}
                ips = tuple(str(ip) for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip)
        except Exception as e:  # any failure: keep what was known, say why in /debug/state
            self.error = f"reading the API server: {e}"
            log.info("filters: %s", self.error)
            return
        self.error = ""
        self.fetched_at = time.time()
        changed = []
        if pool is not None and pool != self.place.pool:
            self.place = chain.Place(self.place.node, pool)
            log.info("filters: node %s is in pool %r (label %s)", self.place.node, pool, self.pool_label,
                     extra={"event": "filters_pool", "pool": pool})
            changed.append("pool")
        if ips is not None and ips != self.cluster_ips:
            changed.append("service")
            self.cluster_ips = ips
        for what in changed:
            for callback in list(self._listeners):
                callback(what)

    async def _get_json(self, path: str) -> dict[str, Any]:
        headers: CIMultiDict[str] = CIMultiDict({"Accept": "application/json", "User-Agent": "edgeproxy/filters"})
        _, resp = await self.up.send("GET", path, headers, None, header_timeout=FETCH_TIMEOUT)
        ok = False
        try:
            chunks = []
            while chunk := await resp.read():
                chunks.append(chunk)
            ok = True
        finally:
            resp.release() if ok else resp.close()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: the API server answered {resp.status}")
        doc = json.loads(b"".join(chunks))
        if not isinstance(doc, dict):
            raise RuntimeError(f"GET {path}: not a JSON object")
        return doc

    def state(self) -> dict[str, object]:
        return {"node": self.place.node, "pool": self.place.pool if self.want_pool else None,
                "pool_label": self.pool_label, "kubernetes_cluster_ips": list(self.cluster_ips or ()) or None,
                "fetched_at": self.fetched_at or None, "error": self.error or None}
