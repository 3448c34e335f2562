"""List, then watch, one resource; keep its objects in memory and call back on every change (client-go's
reflector + store, small).

A watch that ends is resumed from the last resourceVersion seen (bookmarks included); 410 Gone relists. Failures
back off up to 10 s. `slim` trims each object to what the caller needs before it is kept. Neighbours: kubeapi (the
requests), controller and webhook (the callers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from edgeproxy.companion import errors, kubeapi

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


def key_of(obj: Mapping[str, Any]) -> Key:
    md = obj.get("metadata") or {}
    return str(md.get("namespace") or ""), str(md.get("name") or "")


class Informer:
    __slots__ = ("_kube", "_on_change", "_params", "_path", "_slim", "_synced", "items", "resource_version")

    def __init__(self, kube: kubeapi.Kube, path: str, *, params: Mapping[str, str] | None = None,
                 on_change: Callable[[dict[str, Any] | None, dict[str, Any] | None], None] | None = None,
                 slim: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self._kube = kube
        self._path = path
        self._params = dict(params or {})
        self._on_change = on_change
        self._slim = slim
        self._synced = asyncio.Event()
        self.items: dict[Key, dict[str, Any]] = {}
        self.resource_version = ""

    async def wait_synced(self) -> None:
        await self._synced.wait()

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def _apply(self, obj: dict[str, Any], deleted: bool = False) -> None:
        if self._slim is not None:
            obj = self._slim(obj)
        k = key_of(obj)
        old = self.items.get(k)
        if deleted:
            self.items.pop(k, None)
            new = None
        else:
            self.items[k] = obj
            new = obj
        if self._on_change is not None:
            self._on_change(old, new)

    async def _list(self) -> None:
        doc = await self._kube.request("GET", self._path, params=self._params)
        fresh = {key_of(o): o for o in doc.get("items") or ()}
        for k in [k for k in self.items if k not in fresh]:
            self._apply(self.items[k], deleted=True)
        for obj in fresh.values():
            self._apply(obj)
        self.resource_version = str((doc.get("metadata") or {}).get("resourceVersion") or "")
        self._synced.set()

    async def run(self) -> None:
        """Forever (until cancelled)."""
        backoff = 0.2
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list()
                    need_list = False
                params = dict(self._params, resourceVersion=self.resource_version, allowWatchBookmarks="true",
                              timeoutSeconds="300")
                async for event in self._kube.watch(self._path, params, timeout=330.0):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        if obj.get("code") == 410:
                            need_list = True
                        break
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if rv:
                        self.resource_version = str(rv)
                    if kind in ("ADDED", "MODIFIED"):
                        self._apply(obj)
                    elif kind == "DELETED":
                        self._apply(obj, deleted=True)
                backoff = 0.2
            except errors.ApiError as e:
                if e.status == 410:
                    need_list = True
                log.info("%s: %s; retrying in %.1fs", self._path, e, backoff)
                await asyncio.sleep(backoff)  # a back-off between retries, not synchronisation
                backoff = min(backoff * 2, 10.0)
