"""schema: the recorded protobuf bytes of every fixture object re-encode byte for byte from the recorded JSON,
and decode back to the recorded JSON."""

from __future__ import annotations

import json
import pathlib
import struct

import pytest

from edgeproxy.kube import errors, protobuf, schema

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "fixtures"

PAIRS = [
    "pods-edge1.list",
    "pods-edge1.limit10.page1",
    "pods-edge1.limit10.page2",
    "nodes-edge1.list",
    "services.proxysel.list",
    "endpointslices.proxysel.list",
    "configmap-web-config.get",
    "secret-db-credentials.get",
    "gone.pods-list-continue",
    "gone.pods-list-rv-exact",
]


def _unwrap(body: bytes) -> tuple[str, bytes]:
    assert body[:4] == protobuf.MAGIC
    fields = {no: bytes(v) for no, _wt, v in protobuf.iter_fields(body[4:])}
    type_meta = {no: bytes(v).decode() for no, _wt, v in protobuf.iter_fields(fields[1])}
    return type_meta[2], fields[2]


def _objects(name: str) -> list[tuple[str, dict, bytes, bool]]:
    kind, raw = _unwrap((FIXTURES / f"{name}.pb.body").read_bytes())
    doc = json.loads((FIXTURES / f"{name}.json.body").read_bytes())
    if not kind.endswith("List"):
        return [(kind, doc, raw, True)]
    items = [bytes(v) for no, _wt, v in protobuf.iter_fields(raw) if no == 2]
    assert len(items) == len(doc["items"])
    return [(kind.removesuffix("List"), obj, item, False) for obj, item in zip(doc["items"], items, strict=True)]


def _watch_objects(name: str) -> list[tuple[str, dict, bytes]]:
    body = (FIXTURES / f"{name}.pb.body").read_bytes()
    lines = [json.loads(line) for line in (FIXTURES / f"{name}.json.body").read_bytes().splitlines() if line.strip()]
    out = []
    pos = 0
    for line in lines:
        (n,) = struct.unpack(">I", body[pos : pos + 4])
        frame = body[pos + 4 : pos + 4 + n]
        pos += 4 + n
        event = {no: bytes(v) for no, _wt, v in protobuf.iter_fields(frame)}
        assert event[1].decode() == line["type"]
        envelope = next(bytes(v) for no, _wt, v in protobuf.iter_fields(event[2]) if no == 1)
        kind, raw = _unwrap(envelope)
        out.append((kind, line["object"], raw))
    assert pos == len(body)
    return out


@pytest.mark.parametrize("name", PAIRS)
def test_json_to_protobuf_is_byte_identical(name):
    for kind, obj, raw, _typed in _objects(name):
        assert schema.to_protobuf(obj, kind) == raw


@pytest.mark.parametrize("name", PAIRS)
def test_protobuf_to_json_gives_the_recorded_dict(name):
    for kind, obj, raw, typed in _objects(name):
        assert schema.to_json(kind, raw, typed=typed) == obj


@pytest.mark.parametrize("name", ["watch.pods-edge1", "watchlist.pods-edge1", "gone.watch-old-rv"])
def test_watch_event_objects_round_trip(name):
    for kind, obj, raw in _watch_objects(name):
        annotations = obj["metadata"].get("annotations", {})
        if "kubernetes.io/initial-events-list-blueprint" in annotations:
            continue  # the blueprint is an empty list in the stream's own encoding: differs by design
        assert schema.to_protobuf(obj) == raw
        assert schema.to_json(kind, raw) == obj


def test_kind_comes_from_the_object_and_typed_json_leads_with_it():
    doc = json.loads((FIXTURES / "configmap-web-config.get.json.body").read_bytes())
    raw = schema.to_protobuf(doc)
    assert list(schema.to_json("ConfigMap", raw))[:2] == ["kind", "apiVersion"]


def test_unknown_fields_are_dropped_on_encode_and_skipped_on_decode():
    obj = {"kind": "ConfigMap", "apiVersion": "v1", "metadata": {"name": "x"}, "data": {"a": "b"}, "bogus": 1}
    raw = schema.to_protobuf(obj)
    assert schema.to_json("ConfigMap", raw) == {k: v for k, v in obj.items() if k != "bogus"} | {
        "metadata": {"name": "x", "creationTimestamp": None}
    }
    extra = raw + protobuf.field_bytes(99, b"future field") + protobuf.field_varint(98, 7)
    assert schema.to_json("ConfigMap", extra) == schema.to_json("ConfigMap", raw)


def test_defaults_follow_go_pointer_rules():
    # non-pointer scalars are written empty; pointers only when set; a missing Time is written empty
    raw = schema.to_protobuf({"kind": "Lease", "metadata": {"name": "edge-1"}, "spec": {"holderIdentity": "edge-1"}})
    fields = {no: v for no, _wt, v in protobuf.iter_fields(raw)}
    meta = list(protobuf.iter_fields(fields[1]))
    assert [no for no, _wt, _v in meta] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert bytes(fields[2]) == protobuf.field_bytes(1, b"edge-1")


def test_times_int_or_string_and_negative_ints():
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p", "deletionTimestamp": "2026-11-24T14:27:10Z", "deletionGracePeriodSeconds": 0},
        "spec": {"containers": [{"name": "c", "readinessProbe": {"httpGet": {"port": "http"}}}], "priority": -5},
    }
    back = schema.to_json("Pod", schema.to_protobuf(pod))
    assert back["metadata"]["deletionTimestamp"] == "2026-11-24T14:27:10Z"
    assert back["metadata"]["deletionGracePeriodSeconds"] == 0
    assert back["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] == "http"
    assert back["spec"]["priority"] == -5
    lease = {"kind": "Lease", "metadata": {"name": "l"}, "spec": {"renewTime": "2026-11-24T14:27:10.123456Z"}}
    assert schema.to_json("Lease", schema.to_protobuf(lease))["spec"]["renewTime"] == "2026-11-24T14:27:10.123456Z"


def test_unknown_kind_is_an_invalid_request():
    with pytest.raises(errors.InvalidRequest):
        schema.to_protobuf({"kind": "Deployment"})
    with pytest.raises(errors.InvalidRequest):
        schema.to_json("Deployment", b"")


def test_memo_encodes_shared_sub_objects_once_and_identically():
    doc = json.loads((FIXTURES / "pods-edge1.list.json.body").read_bytes())
    template = doc["items"][0]
    clones = []
    for i in range(3):
        pod = dict(template)
        pod["metadata"] = dict(template["metadata"], name=f"clone-{i}")
        pod["spec"] = dict(template["spec"], nodeName=f"node-{i}")
        clones.append(pod)
    memo: dict = {}
    assert [schema.to_protobuf(p, "Pod", memo) for p in clones] == [schema.to_protobuf(p, "Pod") for p in clones]
    assert memo
