"""The simulator's state: objects per resource, one resourceVersion counter, the event history and live watchers.

Objects are JSON dicts (list-item form: no kind/apiVersion) that are never changed in place once stored; their
protobuf and compact JSON encodings are made on first use and kept with the entry (one entry per RV). The history
is a bounded ring: a watch or consistent read from before its start is "too old" (410). Reads at an older RV
undo the history newer than it. No HTTP here: sim.api serves it, sim.writes applies Kubernetes write semantics.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable
from typing import Any

from edgeproxy.kube import schema
from edgeproxy.sim import resources

Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped


def copy_json(v: Any) -> Any:
    """A deep copy of a JSON value (dicts and lists only), faster than copy.deepcopy."""
    if isinstance(v, dict):
        return {k: copy_json(x) if isinstance(x, dict | list) else x for k, x in v.items()}
    if isinstance(v, list):
        return [copy_json(x) if isinstance(x, dict | list) else x for x in v]
    return v


class Entry:
    """One stored version of an object with its encodings, made lazily and cached."""

    __slots__ = ("_json", "_pb", "api_version", "kind", "obj", "rv")

    def __init__(self, kind: str, obj: dict[str, Any], rv: int, api_version: str | None = None) -> None:
        self.kind = kind
        self.api_version = api_version  # needed only for kinds two groups define (events.k8s.io Event)
        self.obj = obj
        self.rv = rv
        self._pb: bytes | None = None
        self._json: bytes | None = None

    @property
    def key(self) -> Key:
        md = self.obj.get("metadata") or {}
        return md.get("namespace", ""), md.get("name", "")

    @property
    def pb(self) -> bytes:
        """The bare protobuf message (a list item or the raw inside an envelope)."""
        if self._pb is None:
            self._pb = schema.to_protobuf(self.obj, self.kind, api_version=self.api_version)
        return self._pb

    def pb_shared(self, memo: dict[Any, Any]) -> bytes:
        """`pb`, encoding sub-objects shared with other entries once per `memo` (stored dicts never change)."""
        if self._pb is None:
            self._pb = schema.to_protobuf(self.obj, self.kind, memo, self.api_version)
        return self._pb

    @property
    def json(self) -> bytes:
        """Compact JSON as a list item (no kind/apiVersion)."""
        if self._json is None:
            self._json = schema.go_json_dumps(self.obj).encode()
        return self._json

    def typed_json(self, api_version: str) -> bytes:
        head = b'{"kind":"%s","apiVersion":"%s"' % (self.kind.encode(), api_version.encode())
        body = self.json
        return head + (b"," + body[1:] if len(body) > 2 else b"}")

    def typed(self, api_version: str) -> dict[str, Any]:
        return {"kind": self.kind, "apiVersion": api_version, **self.obj}

    def with_rv(self, rv: int) -> Entry:
        """The same object stamped with another resourceVersion (a selector transition's DELETED event)."""
        obj = dict(self.obj)
        obj["metadata"] = dict(obj.get("metadata") or {}, resourceVersion=str(rv))
        return Entry(self.kind, obj, rv, self.api_version)


class Change:
    """One committed write: the event a watch sees."""

    __slots__ = ("entry", "prev", "resource", "rv", "type")

    def __init__(self, rv: int, resource: str, type: str, entry: Entry, prev: Entry | None) -> None:
        self.rv = rv
        self.resource = resource
        self.type = type  # ADDED, MODIFIED, DELETED
        self.entry = entry  # the new object; for DELETED the final object, stamped with the deletion RV
        self.prev = prev


class TooOld(Exception):
    """The history no longer reaches back to the requested resourceVersion."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class Store:
    __slots__ = ("_changed", "history", "history_size", "objects", "oldest", "rv", "watchers")

    def __init__(self, history_size: int = 10_000) -> None:
        self.rv = 1
        self.oldest = 1  # a watch from any RV >= oldest can be served from the history
        self.history_size = history_size
        self.history: collections.deque[Change] = collections.deque()
        self.objects: dict[str, dict[Key, Entry]] = {r.key: {} for r in resources.RESOURCES}
        self.watchers: dict[str, set[Callable[[Change | None], None]]] = {r.key: set() for r in resources.RESOURCES}
        self._changed: asyncio.Event | None = None

    # --- reads ----------------------------------------------------------------------------------------------

    def get(self, resource: str, key: Key) -> Entry | None:
        return self.objects[resource].get(key)

    def snapshot(self, resource: str, rv: int | None = None) -> dict[Key, Entry]:
        """The objects of `resource` as they were at `rv` (now if None); TooOld if the history does not reach."""
        current = self.objects[resource]
        if rv is None or rv >= self.rv:
            return current
        if rv < self.oldest:
            raise TooOld(rv, self.oldest)
        state = dict(current)
        for change in reversed(self.history):
            if change.rv <= rv:
                break
            if change.resource != resource:
                continue
            key = change.entry.key
            if change.prev is None:
                state.pop(key, None)
            else:
                state[key] = change.prev
        return state

    def changes_since(self, resource: str, rv: int) -> list[Change]:
        """The changes of `resource` after `rv`, oldest first; TooOld if the history does not reach back."""
        if rv < self.oldest:
            raise TooOld(rv, self.oldest)
        out = []
        for change in reversed(self.history):
            if change.rv <= rv:
                break
            if change.resource == resource:
                out.append(change)
        out.reverse()
        return out

    # --- writes ---------------------------------------------------------------------------------------------

    def next_rv(self) -> int:
        self.rv += 1
        return self.rv

    def commit(self, resource: str, type: str, entry: Entry, prev: Entry | None) -> Change:
        """Record one write (entry already stamped with a fresh RV from next_rv) and tell the watchers."""
        objs = self.objects[resource]
        if type == "DELETED":
            objs.pop(entry.key, None)
        else:
            objs[entry.key] = entry
        change = Change(entry.rv, resource, type, entry, prev)
        if len(self.history) >= self.history_size:
            self.oldest = self.history.popleft().rv
        self.history.append(change)
        for notify in list(self.watchers[resource]):
            notify(change)
        self._wake()
        return change

    def load(self, resource: str, entries: Iterable[Entry]) -> None:
        """Put objects without events (seeding); the caller sets rv/oldest afterwards."""
        objs = self.objects[resource]
        for e in entries:
            objs[e.key] = e

    def compact(self, rv: int | None = None) -> None:
        """Forget the history up to `rv` (all of it if None): older watches and continue tokens get 410."""
        rv = self.rv if rv is None else rv
        while self.history and self.history[0].rv <= rv:
            self.history.popleft()
        self.oldest = max(self.oldest, rv)

    def _wake(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def wait_for_rv(self, rv: int, timeout: float) -> bool:
        """Wait until the store's RV reaches `rv`; False if it did not within `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.rv < rv:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if self._changed is None:
                self._changed = asyncio.Event()
            try:
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
            except TimeoutError:
                return self.rv >= rv
        return True
