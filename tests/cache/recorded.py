"""The recorded kube-apiserver fixtures as cache Items and watch events, read with the project's wire codec.

This is what edgeproxy.autonomy.record will hand the writer: each item's exact bytes plus the metadata and selector
fields kube.protobuf / kube.jsonwire extract from them.
"""

from __future__ import annotations

from pathlib import Path

from cache import store
from edgeproxy.kube import jsonwire, protobuf, watch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _item(raw: bytes, proto: bool, resource: str = "pods") -> store.Item:
    meta, fields = (protobuf if proto else jsonwire).extract(resource, raw)
    return store.Item(meta.name, meta.namespace, meta.resource_version, dict(meta.labels), fields, raw)


def list_items(name: str) -> tuple[str, str, str, str, list[store.Item]]:
    """(kind, apiVersion, resourceVersion, continue, items) of a recorded list body."""
    data = body(name)
    if name.endswith(".pb.body"):
        env = protobuf.unwrap(data)
        parts = protobuf.parse_list(env.raw)
        return (env.kind, env.api_version, parts.resource_version, parts.continue_,
                [_item(i, True) for i in parts.items])
    parts = jsonwire.parse_list(data)
    return (parts.kind, parts.api_version, parts.resource_version, parts.continue_,
            [_item(i, False) for i in parts.items])


def watch_events(name: str) -> list[tuple[str, store.Item | None, str, bool]]:
    """(type, Item|None, resourceVersion, initial_events_end) for each event of a recorded watch body."""
    proto = name.endswith(".pb.body")
    splitter = watch.ProtobufSplitter() if proto else watch.JsonSplitter()
    out = []
    for frame in splitter.feed(body(name)):
        if proto:
            ev = protobuf.decode_event(frame)
            typ, raw = ev.type, ev.raw
            meta = protobuf.object_meta(raw)
        else:
            ev = jsonwire.decode_event(frame)
            typ, raw = ev.type, jsonwire.untyped(ev.obj)
            meta = jsonwire.object_meta(raw)
        end = meta.annotations.get("k8s.io/initial-events-end") == "true"
        out.append((typ, None if typ == "BOOKMARK" else _item(raw, proto), meta.resource_version, end))
    return out
