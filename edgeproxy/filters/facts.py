"""What the filters need to know about this node: its pool, read from its Node's labels upstream, as the node.

One small GET of this node's Node (`/api/v1/nodes/<node>`, as the kubeconfig's identity, which the Node
authorizer allows) the first time a filter needs it, then every `refresh` seconds while online. The pool is the
value of the operator's pool label (default `topology.kubernetes.io/zone`). When it changes, the listeners are told
(the stage ends the filtered watches so their clients relist through the new pool). Offline nothing is fetched:
offline answers come from the cache, which holds what the filters produced online.
Neighbours: stage (asks and listens), upstream (sends), chain.Place (the value).
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

from edgeproxy.filters import chain

log = logging.getLogger(__name__)

POOL_LABEL = "topology.kubernetes.io/zone"
REFRESH = 60.0  # seconds between reads of the node's labels while online
FETCH_TIMEOUT = 5.0


class Facts:
    """This node's Place, kept fresh. `current()` never waits; `ensure()` waits (bounded) for a first answer."""

    __slots__ = ("_fetching", "_listeners", "error", "fetched_at", "place", "pool_label", "refresh_every", "up")

    def __init__(self, up: Any, node: str, pool_label: str = POOL_LABEL, refresh: float = REFRESH) -> None:
        self.up = up
        self.pool_label = pool_label
        self.refresh_every = refresh
        self.place = chain.Place(node, "")
        self.fetched_at = 0.0  # wall clock of the last good answer; 0: none yet
        self.error = "" if node else "this node's name is unknown (set EDGEPROXY_NODE_NAME)"
        self._fetching: asyncio.Task[None] | None = None
        self._listeners: list[Callable[[chain.Place, chain.Place], None]] = []

    def current(self) -> chain.Place:
        return self.place

    def on_change(self, callback: Callable[[chain.Place, chain.Place], None]) -> None:
        self._listeners.append(callback)

    async def ensure(self, timeout: float) -> None:
        """Read the node once if it never was (and the upstream is online), waiting at most `timeout` seconds."""
        if self.fetched_at or not self.place.node or not self.up.online:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._fetch_once()), timeout)
        except TimeoutError:
            pass

    def _fetch_once(self) -> asyncio.Task[None]:
        from edgeproxy import tasks

        if self._fetching is None or self._fetching.done():
            self._fetching = tasks.spawn(self.refresh(), name="filters-facts")
        return self._fetching

    async def run(self) -> None:
        """Refresh every `refresh_every` seconds while online (a periodic loop, cancelled at shutdown)."""
        while True:
            if self.up.online and self.place.node:
                await self._fetch_once()
            await asyncio.sleep(self.refresh_every)

    async def refresh(self) -> None:
        try:
            labels = await self._node_labels()
        except Exception as e:  # any failure: keep what was known, say why in /debug/state
            self.error = f"reading node {self.place.node}: {e}"
            log.info("filters: %s", self.error)
            return
        self.error = ""
        self.fetched_at = time.time()
        self.set_pool(labels.get(self.pool_label, ""))

    def set_pool(self, pool: str) -> None:
        old = self.place
        if pool == old.pool:
            return
        self.place = chain.Place(old.node, pool)
        log.info("filters: node %s is in pool %r (label %s)", old.node, pool, self.pool_label,
                 extra={"event": "filters_pool", "pool": pool})
        for callback in list(self._listeners):
            callback(old, self.place)

    async def _node_labels(self) -> dict[str, str]:
        path = "/api/v1/nodes/" + urllib.parse.quote(self.place.node, safe="")
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
            raise RuntimeError(f"the API server answered {resp.status}")
        doc = json.loads(b"".join(chunks))
        labels = (doc.get("metadata") or {}).get("labels") or {}
        return {str(k): str(v) for k, v in labels.items()}

    def state(self) -> dict[str, object]:
        return {"node": self.place.node, "pool": self.place.pool, "pool_label": self.pool_label,
                "fetched_at": self.fetched_at or None, "error": self.error or None}
