"""The recorded kube-apiserver fixtures as cache Items and watch events, for the cache tests.

A deliberately tiny reader (test-only): the real codec is edgeproxy.kube.protobuf / jsonwire; the cache tests only
need names, namespaces, resourceVersions, labels, spec.nodeName and each item's bytes.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from cache import store
from edgeproxy.kube import protobuf as pb

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def body(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _fields(buf) -> dict[int, list]:
    out: dict[int, list] = {}
    for no, _, v in pb.iter_fields(buf):
        out.setdefault(no, []).append(v)
    return out


def _str(v) -> str:
    return bytes(v).decode()


def _unwrap(data: bytes) -> tuple[str, str, bytes]:
    assert data[:4] == pb.MAGIC
    f = _fields(memoryview(data)[4:])
    tm = _fields(f[1][0])
    return _str(tm.get(1, [b""])[0]), _str(tm.get(2, [b""])[0]), bytes(f[2][0])


def _pb_item(raw: bytes) -> store.Item:
    f = _fields(raw)
    meta = _fields(f[1][0])
    labels = {}
    for entry in meta.get(11, []):
        e = _fields(entry)
        labels[_str(e.get(1, [b""])[0])] = _str(e.get(2, [b""])[0])
    fields = {}
    if 2 in f:
        spec = _fields(f[2][0])
        fields["spec.nodeName"] = _str(spec.get(10, [b""])[0])
    name = _str(meta.get(1, [b""])[0])
    namespace = _str(meta.get(3, [b""])[0])
    fields.update({"metadata.name": name, "metadata.namespace": namespace})
    return store.Item(name, namespace, _str(meta.get(6, [b""])[0]), labels, fields, raw)


def _annotations(raw: bytes) -> dict[str, str]:
    meta = _fields(_fields(raw)[1][0])
    out = {}
    for entry in meta.get(12, []):
        e = _fields(entry)
        out[_str(e.get(1, [b""])[0])] = _str(e.get(2, [b""])[0])
    return out


def _json_item(obj: dict) -> store.Item:
    obj = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
    m = obj["metadata"]
    fields = {"metadata.name": m["name"], "metadata.namespace": m.get("namespace", ""),
              "spec.nodeName": obj.get("spec", {}).get("nodeName", "")}
    raw = json.dumps(obj, separators=(",", ":")).encode()
    return store.Item(m["name"], m.get("namespace", ""), m["resourceVersion"], m.get("labels", {}), fields, raw)


def list_items(name: str) -> tuple[str, str, str, str, list[store.Item]]:
    """(kind, apiVersion, resourceVersion, continue, items) of a recorded list body."""
    data = body(name)
    if name.endswith(".pb.body"):
        api_version, kind, raw = _unwrap(data)
        f = _fields(raw)
        lm = _fields(f[1][0]) if 1 in f else {}
        return (kind, api_version, _str(lm.get(2, [b""])[0]), _str(lm.get(3, [b""])[0]),
                [_pb_item(bytes(i)) for i in f.get(2, [])])
    doc = json.loads(data)
    md = doc["metadata"]
    return (doc["kind"], doc["apiVersion"], md["resourceVersion"], md.get("continue", ""),
            [_json_item(i) for i in doc["items"]])


def watch_events(name: str) -> list[tuple[str, store.Item | None, str, bool]]:
    """(type, Item|None, resourceVersion, initial_events_end) for each event of a recorded watch body."""
    data = body(name)
    out = []
    if name.endswith(".pb.body"):
        pos = 0
        while pos < len(data):
            (n,) = struct.unpack_from(">I", data, pos)
            frame = _fields(data[pos + 4 : pos + 4 + n])
            pos += 4 + n
            typ = _str(frame[1][0])
            _, _, raw = _unwrap(bytes(_fields(frame[2][0])[1][0]))
            item = _pb_item(raw)
            end = _annotations(raw).get("k8s.io/initial-events-end") == "true"
            out.append((typ, None if typ == "BOOKMARK" else item, item.resource_version, end))
        return out
    for line in data.splitlines():
        ev = json.loads(line)
        obj = ev["object"]
        md = obj["metadata"]
        end = md.get("annotations", {}).get("k8s.io/initial-events-end") == "true"
        item = None if ev["type"] == "BOOKMARK" else _json_item(obj)
        out.append((ev["type"], item, md["resourceVersion"], end))
    return out
