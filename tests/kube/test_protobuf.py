"""protobuf: every recorded protobuf response taken apart and rebuilt byte for byte; malformed bytes → DecodeError."""

from __future__ import annotations

import json

import hypothesis
import pytest
from hypothesis import strategies as st

from edgeproxy.kube import errors, protobuf
from tests.kube import recorded

HYPOTHESIS = hypothesis.settings(max_examples=200, deadline=None,
                                 suppress_health_check=[hypothesis.HealthCheck.too_slow])


def json_items(name: str) -> list[dict]:
    return json.loads(recorded.body(name, "json"))["items"]


@pytest.mark.parametrize("name", recorded.LISTS)
def test_list_rebuilds_byte_identical(name):
    data = recorded.body(name, "protobuf")
    u = protobuf.unwrap(data)
    assert u.kind.endswith("List")
    parts = protobuf.parse_list(u.raw)
    rebuilt = protobuf.build_list(u.api_version, u.kind, parts.resource_version, parts.items, parts.continue_,
                                  parts.remaining_item_count)
    assert rebuilt == data
    doc = json.loads(recorded.body(name, "json"))
    assert parts.resource_version == doc["metadata"]["resourceVersion"]
    assert parts.continue_ == doc["metadata"].get("continue", "")
    assert parts.remaining_item_count == doc["metadata"].get("remainingItemCount")
    assert len(parts.items) == len(doc["items"])


@pytest.mark.parametrize("name", recorded.LISTS)
def test_list_items_meta_matches_json(name):
    parts = protobuf.parse_list(protobuf.unwrap(recorded.body(name, "protobuf")).raw)
    for raw, item in zip(parts.items, json_items(name), strict=True):
        m = protobuf.object_meta(raw)
        md = item["metadata"]
        assert (m.name, m.namespace, m.uid, m.resource_version) == (
            md["name"], md.get("namespace", ""), md["uid"], md["resourceVersion"])
        assert m.labels == md.get("labels", {})
        assert m.annotations == md.get("annotations", {})
        assert m.deletion_timestamp == md.get("deletionTimestamp")


def expected_fields(resource: str, obj: dict) -> dict[str, str]:
    """The selectable fields computed from the JSON form, as the API server's ToSelectableFields does."""
    md, spec, status = obj["metadata"], obj.get("spec", {}), obj.get("status", {})
    out = {"metadata.name": md["name"], "metadata.namespace": md.get("namespace", "")}
    if resource == "pods":
        ips = [p["ip"] for p in status.get("podIPs", [])]
        out |= {"spec.nodeName": spec.get("nodeName", ""), "spec.restartPolicy": spec.get("restartPolicy", ""),
                "spec.schedulerName": spec.get("schedulerName", ""),
                "spec.serviceAccountName": spec.get("serviceAccountName", ""),
                "spec.hostNetwork": "true" if spec.get("hostNetwork") else "false",
                "status.phase": status.get("phase", ""), "status.podIP": ips[0] if ips else "",
                "status.podIPs": ",".join(ips), "status.nominatedNodeName": status.get("nominatedNodeName", "")}
    elif resource == "nodes":
        out["spec.unschedulable"] = "true" if spec.get("unschedulable") else "false"
    elif resource == "services":
        out |= {"spec.clusterIP": spec.get("clusterIP", ""), "spec.type": spec.get("type", "")}
    elif resource == "secrets":
        out["type"] = obj.get("type", "")
    return out


@pytest.mark.parametrize("name", recorded.LISTS)
def test_selector_fields_match_json(name):
    resource = recorded.LISTS[name]
    parts = protobuf.parse_list(protobuf.unwrap(recorded.body(name, "protobuf")).raw)
    for raw, item in zip(parts.items, json_items(name), strict=True):
        assert protobuf.selector_fields(resource, raw) == expected_fields(resource, item)


def test_pod_fields_not_in_the_recordings():
    """hostNetwork=true, a legacy lone podIP and fields out of order, built from generated.proto field numbers."""
    f = protobuf.field_bytes
    spec = protobuf.field_varint(11, 1) + f(10, b"edge-2") + f(19, b"custom") + f(10, b"edge-1")  # last one wins
    status = f(6, b"10.0.0.9") + f(1, b"Pending")
    raw = f(3, status) + f(2, spec) + f(1, f(1, b"p") + f(3, b"ns"))
    fields = protobuf.selector_fields("pods", raw)
    assert fields["spec.hostNetwork"] == "true"
    assert (fields["spec.nodeName"], fields["spec.schedulerName"]) == ("edge-1", "custom")
    assert (fields["status.podIP"], fields["status.phase"]) == ("10.0.0.9", "Pending")
    assert (fields["metadata.name"], fields["metadata.namespace"]) == ("p", "ns")


@pytest.mark.parametrize("name", recorded.OBJECTS)
def test_object_rebuilds_and_matches_json(name):
    data = recorded.body(name, "protobuf")
    u = protobuf.unwrap(data)
    assert protobuf.wrap(u.api_version, u.kind, u.raw) == data
    doc = json.loads(recorded.body(name, "json"))
    assert (u.api_version, u.kind) == (doc["apiVersion"], doc["kind"])
    m = protobuf.object_meta(u.raw)
    assert (m.name, m.namespace, m.resource_version, m.labels) == (
        doc["metadata"]["name"], doc["metadata"]["namespace"], doc["metadata"]["resourceVersion"],
        doc["metadata"].get("labels", {}))
    assert protobuf.selector_fields(recorded.OBJECTS[name], u.raw) == expected_fields(recorded.OBJECTS[name], doc)
    # PartialObjectMetadata is field 1 of the object, byte for byte.
    md = protobuf.metadata_field(u.raw)
    assert protobuf.object_meta(protobuf.field_bytes(1, md)) == m


@pytest.mark.parametrize("name", recorded.WATCHES)
def test_watch_events_rebuild_byte_identical(name):
    data = recorded.body(name, "protobuf")
    lines = recorded.json_lines(recorded.body(name, "json"))
    frames = recorded.pb_frames(data)
    assert len(frames) == len(lines)
    out = []
    for frame, line in zip(frames, lines, strict=True):
        ev = protobuf.decode_event(frame)
        doc = json.loads(line)
        assert ev.type == doc["type"]
        assert (ev.api_version, ev.kind) == (doc["object"]["apiVersion"], doc["object"]["kind"])
        encoded = protobuf.encode_event(ev.type, ev.api_version, ev.kind, ev.raw)
        assert encoded[4:] == frame
        out.append(encoded)
        if ev.kind == "Status":
            assert protobuf.parse_status(ev.raw) == doc["object"]
            continue
        m = protobuf.object_meta(ev.raw)
        md = doc["object"]["metadata"]
        assert (m.name, m.namespace, m.resource_version) == (md.get("name", ""), md.get("namespace", ""),
                                                              md["resourceVersion"])
        assert m.labels == md.get("labels", {})
        assert without_blueprint(m.annotations) == without_blueprint(md.get("annotations", {}))
        assert m.deletion_timestamp == md.get("deletionTimestamp")
    assert b"".join(out) == data


def without_blueprint(annotations: dict) -> dict:
    """The watch-list end bookmark's blueprint annotation is an empty list in the response's own encoding."""
    return {k: v for k, v in annotations.items() if k != "kubernetes.io/initial-events-list-blueprint"}


def test_watchlist_added_objects_equal_list_items():
    items = protobuf.parse_list(protobuf.unwrap(recorded.body("pods-edge1.list", "protobuf")).raw).items
    by_key = {(m.namespace, m.name, m.resource_version): raw
              for raw in items for m in [protobuf.object_meta(raw)]}
    events = [protobuf.decode_event(f) for f in recorded.pb_frames(recorded.body("watchlist.pods-edge1", "protobuf"))]
    added = [e for e in events if e.type == "ADDED"]
    assert len(added) == len(items)
    matched = 0
    for ev in added:
        m = protobuf.object_meta(ev.raw)
        key = (m.namespace, m.name, m.resource_version)
        if key in by_key:  # the watch-list was recorded after the watch's writes: db-0 moved on
            assert by_key[key] == ev.raw
            matched += 1
    assert matched >= len(items) - 2


def test_bookmarks_are_rebuilt_byte_identical():
    plain = protobuf.decode_event(recorded.pb_frames(recorded.body("watch.pods-edge1", "protobuf"))[-1])
    assert plain.type == "BOOKMARK"
    assert protobuf.bookmark_raw("315", kind="Pod") == plain.raw
    end = protobuf.decode_event(recorded.pb_frames(recorded.body("watchlist.pods-edge1", "protobuf"))[-1])
    annotations = protobuf.object_meta(end.raw).annotations
    assert annotations["k8s.io/initial-events-end"] == "true"
    assert protobuf.bookmark_raw("316", annotations, kind="Pod") == end.raw
    assert protobuf.object_meta(protobuf.bookmark_raw("9", kind="Lease")).resource_version == "9"


@pytest.mark.parametrize("name", recorded.STATUSES)
def test_status_bodies_parse(name):
    u = protobuf.unwrap(recorded.body(name, "protobuf"))
    assert u.kind == "Status"
    assert protobuf.parse_status(u.raw) == json.loads(recorded.body(name, "json"))


def test_rejects_non_envelopes_and_unknown_event_types():
    with pytest.raises(errors.DecodeError):
        protobuf.unwrap(b'{"kind":"Pod"}')
    bad = protobuf.field_bytes(1, b"RENAMED") + protobuf.field_bytes(2, protobuf.field_bytes(1, protobuf.wrap(
        "v1", "Pod", b"")))
    with pytest.raises(errors.DecodeError, match="RENAMED"):
        protobuf.decode_event(bad)


def test_varints_round_trip():
    for n in (0, 1, 127, 128, 300, 2**32, 2**63 - 1):
        assert protobuf.read_varint(protobuf.encode_varint(n), 0) == (n, len(protobuf.encode_varint(n)))
    assert len(protobuf.encode_varint(-1)) == 10


# --- malformed input: DecodeError or a value, never another exception, never a hang --------------------------

def _samples() -> list[bytes]:
    out = [recorded.body("configmap-web-config.get", "protobuf"), recorded.body("nodes-edge1.list", "protobuf")]
    out += recorded.pb_frames(recorded.body("watch.pods-edge1", "protobuf"))[:2]
    return out


PARSERS = {
    "unwrap": protobuf.unwrap,
    "parse_list": protobuf.parse_list,
    "object_meta": protobuf.object_meta,
    "metadata_field": protobuf.metadata_field,
    "partial_metadata": protobuf.partial_metadata,
    "decode_event": protobuf.decode_event,
    "parse_status": protobuf.parse_status,
    **{f"extract-{r}": (lambda raw, r=r: protobuf.extract(r, raw))
       for r in ("pods", "nodes", "services", "secrets", "namespaces", "events", "replicationcontrollers")},
}


def _survives(data: bytes) -> None:
    for parse in PARSERS.values():
        try:
            parse(data)
        except errors.DecodeError:
            pass


@HYPOTHESIS
@hypothesis.given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    _survives(data)
    _survives(protobuf.MAGIC + data)


@HYPOTHESIS
@hypothesis.given(st.sampled_from(_samples()), st.data())
def test_mutated_recorded_bytes_decode_or_raise_decode_error(sample, data):
    """Flip, cut and splice real messages, which reach much deeper into the readers than random bytes do."""
    buf = bytearray(sample)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(buf)))
    mutated = bytes(buf[:cut]) if data.draw(st.booleans()) else bytes(buf)
    _survives(mutated)
    _survives(mutated[4:])  # the bare message inside the envelope
