"""JSON lists and objects read with msgspec: each item's exact bytes and its typed metadata, without building dicts.

The recorder's fast path. `scan_list` finds each list item's byte span (msgspec.Raw, no copy, no decode) and the
list's own metadata, `decode_event` a watch event's type and object span; `extract` decodes from one object only
what the cache keys and filters by (ObjectMeta and the resource's selectable fields) into typed structs, skipping
everything else in C. Structs are untracked by the garbage collector (gc=False): they hold no cycles, and the
collector's passes over a big list's decoded objects once cost more than the parse itself. The results equal
jsonwire.parse_list's spans and jsonwire.extract's values (the tests hold them side by side); jsonwire stays the
reference and keeps the rest (rebuilding, watch events, pretty bodies). Measured on a 10k-pod list (65 MB):
`python -m benchmarks codec`. Any malformed input raises DecodeError. Neighbours: jsonwire, meta, errors.
"""

from __future__ import annotations

from typing import Any

import msgspec

from edgeproxy.kube import meta
from edgeproxy.kube.jsonwire import (  # the same messages as the reference reader
    EVENT_TYPES,
    Event,
    ListParts,
    _bad,
    _str,
)


class _List(msgspec.Struct, gc=False):
    kind: str | None = None
    apiVersion: str | None = None
    metadata: Any = None  # small: decoded as it comes, then read as jsonwire reads it
    items: list[msgspec.Raw] | None = None


_LIST = msgspec.json.Decoder(_List)


def scan_list(body: bytes, *, copy: bool = True) -> ListParts:
    """The list's kind, apiVersion, resourceVersion, continue and remainingItemCount, and each item's bytes exactly
    as in the body (an indented body's items keep their indentation, as jsonwire.parse_list's do).

    copy=False leaves the items as msgspec.Raw views into `body` (bytes(raw) copies one): a big list's items are
    then copied piece by piece as the caller stores them, instead of all at once beside the body."""
    try:
        top = _LIST.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _bad(f"malformed list: {e}") from e
    md = top.metadata or {}
    if not isinstance(md, dict):
        raise _bad("list metadata is not an object")
    remaining = md.get("remainingItemCount")
    if remaining is not None and (not isinstance(remaining, int) or isinstance(remaining, bool)):
        raise _bad("remainingItemCount is not an integer")
    items = top.items or []
    for r in items:
        if memoryview(r)[:1] != b"{":
            raise _bad("list item is not an object")
    if copy:
        items = [bytes(r) for r in items]
    return ListParts(top.kind or "", top.apiVersion or "", _str(md.get("resourceVersion")),
                     _str(md.get("continue")), remaining, items, pretty=body[1:2] == b"\n")


class _WatchEvent(msgspec.Struct, gc=False):
    type: Any = None
    object: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)  # empty when missing


_EVENT = msgspec.json.Decoder(_WatchEvent)


def decode_event(line: bytes) -> Event:
    """One watch line {"type":..,"object":{..}} (newline optional): its type and the object's exact bytes, as
    jsonwire.decode_event gives them, without decoding the object (Event.doc stays empty)."""
    try:
        ev = _EVENT.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _bad(f"malformed watch event: {e}") from e
    if not isinstance(ev.type, str) or ev.type not in EVENT_TYPES:
        raise _bad(f"unknown watch event type {str(ev.type)[:40]!r}")
    if bytes(ev.object)[:1] != b"{":
        raise _bad("watch event without an object")
    return Event(ev.type, bytes(ev.object))


# --- one object: ObjectMeta and the selectable fields of its resource --------------------------------------------


class _Meta(msgspec.Struct, gc=False):
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resourceVersion: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None
    deletionTimestamp: str | None = None


class _Obj(msgspec.Struct, gc=False):
    metadata: _Meta | None = None


class _PodSpec(msgspec.Struct, gc=False):
    nodeName: str | None = None
    restartPolicy: str | None = None
    schedulerName: str | None = None
    serviceAccountName: str | None = None
    hostNetwork: Any = None  # anything but true counts as false, as jsonwire reads it


class _PodStatus(msgspec.Struct, gc=False):
    phase: str | None = None
    podIP: Any = None  # a falsy value of any type counts as absent, as jsonwire reads it
    podIPs: Any = None  # likewise; otherwise a list of objects
    nominatedNodeName: str | None = None


class _Pod(_Obj, gc=False):
    spec: _PodSpec | None = None
    status: _PodStatus | None = None


class _Unschedulable(msgspec.Struct, gc=False):
    unschedulable: Any = None


class _Node(_Obj, gc=False):
    spec: _Unschedulable | None = None


class _ServiceSpec(msgspec.Struct, gc=False):
    clusterIP: str | None = None
    type: str | None = None


class _Service(_Obj, gc=False):
    spec: _ServiceSpec | None = None


class _Secret(_Obj, gc=False):
    type: str | None = None


class _Phase(msgspec.Struct, gc=False):
    phase: str | None = None


class _Namespace(_Obj, gc=False):
    status: _Phase | None = None


class _Involved(msgspec.Struct, gc=False):
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    uid: str | None = None
    apiVersion: str | None = None
    resourceVersion: str | None = None
    fieldPath: str | None = None


class _Source(msgspec.Struct, gc=False):
    component: str | None = None


class _Event(_Obj, gc=False):
    involvedObject: _Involved | None = None
    reason: str | None = None
    type: str | None = None
    reportingComponent: str | None = None
    source: _Source | None = None


class _Replicas(msgspec.Struct, gc=False):
    replicas: Any = 0


class _RC(_Obj, gc=False):
    status: _Replicas | None = None


_DECODERS = {r: msgspec.json.Decoder(t) for r, t in (
    ("pods", _Pod), ("nodes", _Node), ("services", _Service), ("secrets", _Secret), ("namespaces", _Namespace),
    ("events", _Event), ("replicationcontrollers", _RC))}
_OBJ = msgspec.json.Decoder(_Obj)


def _bool(v: object) -> str:
    return "true" if v is True else "false"


def _fields(resource: str, o: Any) -> dict[str, str]:
    if resource == "pods":
        spec, status = o.spec or _PodSpec(), o.status or _PodStatus()
        ips = status.podIPs or []
        if not isinstance(ips, list) or not all(isinstance(p, dict) for p in ips):
            raise _bad("status.podIPs is not a list of objects")
        ip_list = [_str(p.get("ip")) for p in ips]
        if not ip_list and status.podIP:
            ip_list = [_str(status.podIP)]
        return {"spec.nodeName": spec.nodeName or "", "spec.restartPolicy": spec.restartPolicy or "",
                "spec.schedulerName": spec.schedulerName or "",
                "spec.serviceAccountName": spec.serviceAccountName or "",
                "spec.hostNetwork": _bool(spec.hostNetwork), "status.phase": status.phase or "",
                "status.podIP": ip_list[0] if ip_list else "", "status.podIPs": ",".join(ip_list),
                "status.nominatedNodeName": status.nominatedNodeName or ""}
    if resource == "nodes":
        return {"spec.unschedulable": _bool((o.spec or _Unschedulable()).unschedulable)}
    if resource == "services":
        spec = o.spec or _ServiceSpec()
        return {"spec.clusterIP": spec.clusterIP or "", "spec.type": spec.type or ""}
    if resource == "secrets":
        return {"type": o.type or ""}
    if resource == "namespaces":
        return {"status.phase": (o.status or _Phase()).phase or ""}
    if resource == "events":
        inv = o.involvedObject or _Involved()
        out = {f"involvedObject.{k}": getattr(inv, k) or "" for k in
               ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")}
        return out | {"reason": o.reason or "", "type": o.type or "", "reportingComponent": o.reportingComponent or "",
                      "source": (o.source or _Source()).component or o.reportingComponent or ""}
    if resource == "replicationcontrollers":
        replicas = (o.status or _Replicas()).replicas
        return {"status.replicas": str(replicas) if type(replicas) is int else "0"}
    return {}


def extract(resource: str, raw: bytes) -> tuple[meta.Meta, dict[str, str]]:
    """(Meta, selectable fields) of one JSON object, equal to jsonwire.extract's."""
    try:
        o = _DECODERS.get(resource, _OBJ).decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as e:
        raise _bad(f"malformed object: {e}") from e
    md = o.metadata or _Meta()
    out = _fields(resource, o)
    out["metadata.name"] = md.name or ""
    out["metadata.namespace"] = md.namespace or ""
    return meta.Meta(md.name or "", md.namespace or "", md.uid or "", md.resourceVersion or "", md.labels or {},
                     md.annotations or {}, md.deletionTimestamp), out
