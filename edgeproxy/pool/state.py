"""The leader's view of one pool-scoped query, as state: its objects, its resourceVersion, a ring of recent events,
and the answers list/watch semantics give from them. Pure: bytes in, bytes out, no I/O.

A `Query` is what one upstream list+watch is kept for: resource, namespace, canonical selectors, encoding (the
followers' clients ask protobuf or JSON; each is its own query, so every byte served is a byte the API server sent).
A `ViewState` holds, per object, the item bytes as the API server sent them (kube.protobuf / kube.jsonscan split
lists and events; nothing is re-encoded but the list and event envelopes, which are the API server's own layout)
and a ring of the last events, each kept as the frame a follower is sent. A watch from resourceVersion N is
answered from the ring when the ring reaches back to N (`floor` <= N), else it is too old (410 Expired, as the
API server's watch cache answers, so client-go relists). Lists come in the API server's order (by the key it
continues from: "namespace/name" across namespaces, else the name) and `page()` cuts one page of them with the API
server's own continue token (storage.EncodeContinue: {"v": "meta.k8s.io/v1", "rv", "start": "/<key>\\x00"}), so a
token of the view is one the API server takes too; `object_body()` is one object as a GET answers it.
Neighbours: view (the I/O shell that feeds and serves it), kube.protobuf, kube.jsonwire, kube.jsonscan,
kube.selectors.
"""

from __future__ import annotations

import base64
import binascii
import collections
import dataclasses
import json
from collections.abc import Iterable
from typing import Any

from edgeproxy.kube import errors, jsonscan, jsonwire, protobuf, selectors, status

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
LIST_BLUEPRINT = "kubernetes.io/initial-events-list-blueprint"
JSON_CT = "application/json"
PB_CT = "application/vnd.kubernetes.protobuf"
RING_EVENTS = 4096  # events kept for watches resuming from an older resourceVersion
RING_BYTES = 16 << 20  # and at most this many bytes of them (per view: an edge host's memory is small)
CONTINUE_VERSION = "meta.k8s.io/v1"


def encode_continue(rv: int, key: str) -> str:
    """The API server's continue token for the page after the object with list key `key` (the cacher's form)."""
    raw = json.dumps({"v": CONTINUE_VERSION, "rv": rv, "start": f"/{key}\x00"}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    """(resourceVersion, the list key to continue after) of a continue token; ValueError when it is none (the API
    server: 400 "continue key is not valid")."""
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, RecursionError) as e:
        raise ValueError(f"continue key is not valid: {type(e).__name__}") from None
    if not isinstance(doc, dict) or doc.get("v") != CONTINUE_VERSION:
        raise ValueError("continue key is not valid: server does not recognize this encoded version")
    rv, start = doc.get("rv"), doc.get("start")
    if not isinstance(rv, int) or isinstance(rv, bool) or rv == 0:
        raise ValueError("continue key is not valid: incorrect encoded start resourceVersion (version "
                         "meta.k8s.io/v1)")
    if not isinstance(start, str) or not start:
        raise ValueError("continue key is not valid: encoded start key empty (version meta.k8s.io/v1)")
    key = start.lstrip("/").removesuffix("\x00")
    if not key or ".." in key.split("/"):
        raise ValueError(f"continue key is not valid: {start!r}")
    return rv, key


def rv_number(rv: str | None) -> int:
    """A resourceVersion as a number (etcd revisions are); 0 for "" or anything else."""
    return int(rv) if rv and rv.isdigit() else 0


@dataclasses.dataclass(frozen=True, slots=True)
class Query:
    """One upstream list+watch of the leader: resource, scope, canonical selectors, encoding."""

    group: str
    version: str
    resource: str
    namespace: str = ""
    label_selector: str = ""
    field_selector: str = ""
    encoding: str = "protobuf"  # or "json"

    @classmethod
    def of(cls, info: Any, encoding: str) -> Query:
        """The query of a classified list/watch request (kube.request.RequestInfo); KubeError for bad selectors."""
        labels = selectors.parse_labels(info.label_selector or "").canonical()
        fields = selectors.parse_fields(info.field_selector or "").canonical()
        return cls(info.api_group or "", info.api_version or "", info.resource or "", info.namespace or "", labels,
                   fields, encoding)

    @property
    def path(self) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{base}{scope}/{self.resource}"

    @property
    def content_type(self) -> str:
        return PB_CT if self.encoding == "protobuf" else JSON_CT

    @property
    def watch_content_type(self) -> str:
        return protobuf.WATCH_CONTENT_TYPE if self.encoding == "protobuf" else JSON_CT

    def params(self) -> list[tuple[str, str]]:
        out = []
        if self.label_selector:
            out.append(("labelSelector", self.label_selector))
        if self.field_selector:
            out.append(("fieldSelector", self.field_selector))
        return out

    def describe(self) -> str:
        gv = f"{self.group}/{self.version}" if self.group else self.version
        parts = [gv, self.resource]
        if self.namespace:
            parts.append(f"ns={self.namespace}")
        if self.label_selector:
            parts.append(f"l={self.label_selector}")
        if self.field_selector:
            parts.append(f"f={self.field_selector}")
        return " ".join([*parts, self.encoding])


@dataclasses.dataclass(frozen=True, slots=True)
class Obj:
    """One object of the view: the list-item bytes (a bare protobuf message, or JSON without kind/apiVersion)."""

    name: str
    namespace: str
    resource_version: str
    labels: dict[str, str]
    fields: dict[str, str]
    raw: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One change as a follower is sent it: its type, resourceVersion and the whole frame on the wire."""

    type: str
    rv: int
    frame: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class Parsed:
    """One upstream watch frame read: type, the object (None for BOOKMARK and ERROR), resourceVersion, and for an
    ERROR its Status."""

    type: str
    obj: Obj | None
    resource_version: str
    kind: str = ""
    api_version: str = ""
    status: dict[str, Any] | None = None


def make_obj(resource: str, encoding: str, raw: bytes) -> Obj:
    meta, fields = protobuf.extract(resource, raw) if encoding == "protobuf" else jsonscan.extract(resource, raw)
    return Obj(meta.name, meta.namespace, meta.resource_version, dict(meta.labels), fields, bytes(raw))


def parse_list(query: Query, body: bytes) -> tuple[str, str, str, list[Obj]]:
    """An upstream LIST answer → (list kind, apiVersion, resourceVersion, objects); KubeError if it does not read or
    is not a whole list (a continue token: the leader asks for whole lists)."""
    if query.encoding == "protobuf":
        u = protobuf.unwrap(body)
        if not u.kind.endswith("List"):
            raise errors.DecodeError(f"not a list: {u.kind!r}")
        parts = protobuf.parse_list(u.raw)
        kind, api_version, rv, cont, raws = u.kind, u.api_version, parts.resource_version, parts.continue_, parts.items
    else:
        jparts = jsonscan.scan_list(body)
        kind, api_version, rv, cont = jparts.kind, jparts.api_version, jparts.resource_version, jparts.continue_
        raws = [jsonwire.compact(bytes(r)) for r in jparts.items]
    if cont:
        raise errors.DecodeError("a paged list (continue token) where a whole list was asked for")
    return kind, api_version, rv, [make_obj(query.resource, query.encoding, r) for r in raws]


def parse_frame(query: Query, frame: bytes) -> Parsed:
    """One upstream watch frame (kube.watch splitter output) → Parsed; KubeError if it does not read."""
    if query.encoding == "protobuf":
        ev = protobuf.decode_event(frame)
        typ, raw, kind, api_version = ev.type, ev.raw, ev.kind, ev.api_version
        if typ == "ERROR":
            return Parsed(typ, None, "", kind, api_version, protobuf.parse_status(raw))
        if typ == "BOOKMARK":
            return Parsed(typ, None, protobuf.object_meta(raw).resource_version, kind, api_version)
    else:
        jev = jsonscan.decode_event(frame)
        typ, kind, api_version = jev.type, "", ""
        if typ == "ERROR":
            return Parsed(typ, None, "", status=jsonwire.parse_status(jev.obj))
        if typ == "BOOKMARK":
            return Parsed(typ, None, jsonscan.extract("", jev.obj)[0].resource_version)
        raw = jsonwire.untyped(jev.obj)
    obj = make_obj(query.resource, query.encoding, raw)
    return Parsed(typ, obj, obj.resource_version, kind, api_version)


class TooOld(Exception):
    """A watch from a resourceVersion the ring no longer reaches back to."""

    def __init__(self, requested: str, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")
        self.requested = requested
        self.oldest = oldest


class ViewState:
    """The objects and recent events of one query. `generation` grows at every replace (a relist): a watch served
    across one cannot continue (its position in the old history means nothing in the new)."""

    __slots__ = ("api_version", "floor", "generation", "kind", "max_bytes", "max_events", "objects", "query",
                 "ring", "ring_bytes", "rv", "synced")

    def __init__(self, query: Query, *, max_events: int = RING_EVENTS, max_bytes: int = RING_BYTES) -> None:
        self.query = query
        self.kind = ""  # the list kind ("ServiceList")
        self.api_version = ""
        self.rv = ""  # the view's resourceVersion: every change up to it is in `objects`
        self.objects: dict[tuple[str, str], Obj] = {}
        self.ring: collections.deque[Event] = collections.deque()
        self.ring_bytes = 0
        self.floor = 0  # the ring holds every event with rv > floor
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.synced = False  # a whole list has been taken in (from upstream or the cache)
        self.generation = 0

    # ---- feeding ----

    def replace(self, kind: str, api_version: str, rv: str, objs: Iterable[Obj]) -> None:
        """A whole list: the view becomes exactly `objs` at `rv`; the history starts over."""
        self.kind, self.api_version, self.rv = kind or self.kind, api_version or self.api_version, rv
        self.objects = {(o.namespace, o.name): o for o in objs}
        self.ring.clear()
        self.ring_bytes = 0
        self.floor = rv_number(rv)
        self.synced = True
        self.generation += 1

    def apply(self, parsed: Parsed) -> Event | None:
        """One upstream event (not ERROR). Returns the event for followers, or None (a BOOKMARK, or an event the
        view already reflects)."""
        rvn = rv_number(parsed.resource_version)
        if parsed.type == "BOOKMARK":
            if rvn > rv_number(self.rv):
                self.rv = parsed.resource_version
            return None
        obj = parsed.obj
        if obj is None or (rvn and rvn <= rv_number(self.rv)):
            return None
        key = (obj.namespace, obj.name)
        if parsed.type == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        if parsed.kind and not self.kind:
            self.kind, self.api_version = parsed.kind + "List", parsed.api_version
        self.rv = parsed.resource_version or self.rv
        event = Event(parsed.type, rvn, self.event_frame(parsed.type, obj.raw))
        self.ring.append(event)
        self.ring_bytes += len(event.frame)
        while self.ring and (len(self.ring) > self.max_events or self.ring_bytes > self.max_bytes):
            old = self.ring.popleft()
            self.ring_bytes -= len(old.frame)
            self.floor = old.rv
        return event

    def extend_back(self, rv: str, events: Iterable[Parsed]) -> bool:
        """The query's events between `rv` and the ring's floor, as an upstream watch from `rv` delivered them up to
        a frame at or past the floor (so nothing else happened in between): the ring reaches back to `rv` now. False
        (nothing changed) when `rv` is not older than the floor or the ring would outgrow its bounds."""
        n = rv_number(rv)
        if not rv.isdigit() or n >= self.floor or not self.synced:
            return False
        older = [Event(p.type, rv_number(p.resource_version), self.event_frame(p.type, p.obj.raw))
                 for p in events if p.obj is not None and n < rv_number(p.resource_version) <= self.floor]
        size = sum(len(e.frame) for e in older)
        if len(self.ring) + len(older) > self.max_events or self.ring_bytes + size > self.max_bytes:
            return False
        self.ring.extendleft(reversed(older))
        self.ring_bytes += size
        self.floor = n
        return True

    # ---- serving ----

    @property
    def item_kind(self) -> str:
        return self.kind[:-4] if self.kind.endswith("List") else self.kind

    def since(self, rv: str) -> list[Event]:
        """The events after `rv`, oldest first; TooOld when the ring does not reach back to it."""
        n = rv_number(rv)
        if n < self.floor:
            raise TooOld(rv, self.floor)
        if n >= rv_number(self.rv):
            return []
        out = []
        for e in reversed(self.ring):  # the newest first: a follower asks for what it has not seen, a few events
            if e.rv <= n:
                break
            out.append(e)
        out.reverse()
        return out

    def key(self, o: Obj) -> str:
        """The object's list key: the API server orders lists by it and continues after it."""
        return f"{o.namespace}/{o.name}" if o.namespace and not self.query.namespace else o.name

    def sorted_objects(self) -> list[Obj]:
        return sorted(self.objects.values(), key=self.key)

    def list_body(self) -> bytes:
        """The LIST answer at the view's resourceVersion, items in the API server's order."""
        return self.page(self.sorted_objects(), self.rv)[0]

    def page(self, objs: list[Obj], rv: str, after: str = "", limit: int = 0) -> tuple[bytes, bool]:
        """The LIST answer of `objs` (sorted, the view at `rv`) from the one after list key `after`, at most `limit`
        items (0: all), with a continue token when more remain (and, for a query without selectors, their count,
        as the API server says); and whether more remain."""
        if after:
            objs = [o for o in objs if self.key(o) > after]
        cont, remaining = "", None
        more = bool(limit) and len(objs) > limit
        if more:
            cont = encode_continue(rv_number(rv), self.key(objs[limit - 1]))
            if not self.query.label_selector and not self.query.field_selector:
                remaining = len(objs) - limit
            objs = objs[:limit]
        raws = [o.raw for o in objs]
        if self.query.encoding == "protobuf":
            return protobuf.build_list(self.api_version, self.kind, rv, raws, cont, remaining), more
        return jsonwire.build_list(self.kind, self.api_version, rv, raws, cont, remaining), more

    def object_body(self, o: Obj) -> bytes:
        """One object as the API server answers a GET of it."""
        if self.query.encoding == "protobuf":
            return protobuf.wrap(self.api_version, self.item_kind, o.raw)
        return jsonwire.typed(o.raw, self.item_kind, self.api_version) + b"\n"

    def event_frame(self, typ: str, raw: bytes) -> bytes:
        kind = self.item_kind
        if self.query.encoding == "protobuf":
            return protobuf.encode_event(typ, self.api_version, kind, raw)
        return jsonwire.encode_event(typ, jsonwire.typed(raw, kind, self.api_version))

    def initial_frames(self) -> list[bytes]:
        """The view as ADDED events (a watch from resourceVersion "" or "0", or a watch-list)."""
        return [self.event_frame("ADDED", o.raw) for o in self.sorted_objects()]

    def bookmark_frame(self, rv: str | None = None, *, initial_end: bool = False) -> bytes:
        rv = self.rv if rv is None else rv
        kind, api_version = self.item_kind, self.api_version
        annotations = {INITIAL_EVENTS_END: "true", LIST_BLUEPRINT: self._blueprint()} if initial_end else None
        if self.query.encoding == "protobuf":
            return protobuf.encode_event("BOOKMARK", api_version, kind, protobuf.bookmark_raw(rv, annotations, kind))
        return jsonwire.encode_event("BOOKMARK", jsonwire.bookmark_obj(kind, api_version, rv, annotations))

    def _blueprint(self) -> str:
        """The empty list the API server describes a watch-list's list type with (base64, in the stream's
        encoding)."""
        if self.query.encoding == "protobuf":
            body = protobuf.build_list(self.api_version, self.kind, "", [])
        else:
            body = json.dumps({"kind": self.kind, "apiVersion": self.api_version, "metadata": {}, "items": None},
                              separators=(",", ":")).encode() + b"\n"
        return base64.b64encode(body).decode()

    def error_frame(self, st: dict[str, Any]) -> bytes:
        return status.watch_error_event(st, self.query.encoding)
