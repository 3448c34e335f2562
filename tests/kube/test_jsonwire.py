"""jsonwire: every recorded JSON response taken apart and rebuilt byte for byte, and agreeing with the protobuf one."""

from __future__ import annotations

import json

import hypothesis
import pytest
from hypothesis import strategies as st

from edgeproxy.kube import errors, jsonwire, protobuf
from tests.kube import recorded

HYPOTHESIS = hypothesis.settings(max_examples=200, deadline=None,
                                 suppress_health_check=[hypothesis.HealthCheck.too_slow])
BLUEPRINT = "kubernetes.io/initial-events-list-blueprint"  # an empty list in the response's own encoding


@pytest.mark.parametrize("name", recorded.LISTS)
def test_list_rebuilds_byte_identical(name):
    data = recorded.body(name, "json")
    parts = jsonwire.parse_list(data)
    doc = json.loads(data)
    assert (parts.kind, parts.api_version) == (doc["kind"], doc["apiVersion"])
    assert parts.resource_version == doc["metadata"]["resourceVersion"]
    assert parts.continue_ == doc["metadata"].get("continue", "")
    assert parts.remaining_item_count == doc["metadata"].get("remainingItemCount")
    assert [json.loads(i) for i in parts.items] == doc["items"] == parts.docs
    assert parts.pretty  # recorded with curl, so indented (json.MarshalIndent, no trailing newline)
    rebuilt = jsonwire.build_list(parts.kind, parts.api_version, parts.resource_version, parts.items,
                                  parts.continue_, parts.remaining_item_count, pretty=True)
    assert rebuilt == data


@pytest.mark.parametrize("name", recorded.LISTS)
def test_compact_list_is_the_compacted_body_plus_newline(name):
    """What client-go gets: the same document compact, with json.Encoder's newline; items compacted one by one."""
    parts = jsonwire.parse_list(recorded.body(name, "json"))
    items = [jsonwire.compact(i) for i in parts.items]
    body = jsonwire.build_list(parts.kind, parts.api_version, parts.resource_version, items, parts.continue_,
                               parts.remaining_item_count)
    assert body == jsonwire.compact(recorded.body(name, "json")) + b"\n"
    again = jsonwire.parse_list(body)
    assert again.items == items
    assert not again.pretty


@pytest.mark.parametrize("name", recorded.LISTS)
@pytest.mark.parametrize("compact", [False, True])
def test_convert_sees_each_item_bytes_and_dict_in_order(name, compact):
    data = recorded.body(name, "json")
    if compact:
        data = jsonwire.compact(data) + b"\n"
    plain = jsonwire.parse_list(data)
    converted = jsonwire.parse_list(data, convert=lambda raw, doc: (raw, doc))
    assert converted.items == list(zip(plain.items, plain.docs, strict=True))
    assert converted.docs == []
    assert (converted.resource_version, converted.continue_, converted.pretty) == (
        plain.resource_version, plain.continue_, plain.pretty)


def test_empty_lists():
    compact = jsonwire.build_list("PodList", "v1", "7", [])
    assert compact == b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[]}\n'
    assert jsonwire.parse_list(compact).items == []
    pretty = jsonwire.build_list("PodList", "v1", "7", [], pretty=True)
    assert json.loads(pretty)["items"] == []
    assert jsonwire.parse_list(pretty).pretty


@pytest.mark.parametrize("name", recorded.LISTS)
def test_meta_and_fields_agree_with_protobuf(name):
    resource = recorded.LISTS[name]
    js = jsonwire.parse_list(recorded.body(name, "json"))
    pb = protobuf.parse_list(protobuf.unwrap(recorded.body(name, "protobuf")).raw)
    assert len(js.items) == len(pb.items)
    for item, doc, raw in zip(js.items, js.docs, pb.items, strict=True):
        assert jsonwire.object_meta(item) == jsonwire.object_meta(doc) == protobuf.object_meta(raw)
        assert jsonwire.selector_fields(resource, doc) == protobuf.selector_fields(resource, raw)
        assert jsonwire.extract(resource, item) == protobuf.extract(resource, raw)


@pytest.mark.parametrize("name", recorded.OBJECTS)
def test_objects_agree_with_protobuf_and_round_trip(name):
    data = recorded.body(name, "json")
    raw = protobuf.unwrap(recorded.body(name, "protobuf")).raw
    assert jsonwire.object_meta(data) == protobuf.object_meta(raw)
    assert jsonwire.selector_fields(recorded.OBJECTS[name], data) == protobuf.selector_fields(
        recorded.OBJECTS[name], raw)
    doc = json.loads(data)
    item = jsonwire.untyped(data)
    assert not item.startswith(b'{"kind"')
    assert jsonwire.typed(item, doc["kind"], doc["apiVersion"]) == jsonwire.compact(data)
    assert jsonwire.object_body(item, doc["kind"], doc["apiVersion"]) == jsonwire.compact(data) + b"\n"


@pytest.mark.parametrize("name", recorded.WATCHES)
def test_watch_events_rebuild_byte_identical_and_agree_with_protobuf(name):
    data = recorded.body(name, "json")
    lines = recorded.json_lines(data)
    frames = recorded.pb_frames(recorded.body(name, "protobuf"))
    out = []
    for line, frame in zip(lines, frames, strict=True):
        ev = jsonwire.decode_event(line)
        assert ev == jsonwire.decode_event(line + b"\n")
        assert json.loads(ev.obj) == ev.doc == json.loads(line)["object"]
        out.append(jsonwire.encode_event(ev.type, ev.obj))
        pev = protobuf.decode_event(frame)
        assert ev.type == pev.type
        assert (ev.doc["kind"], ev.doc["apiVersion"]) == (pev.kind, pev.api_version)
        # the object round-trips through its list-item form
        assert jsonwire.typed(jsonwire.untyped(ev.obj), pev.kind, pev.api_version) == ev.obj
        if ev.type == "ERROR":
            assert jsonwire.parse_status(ev.obj) == protobuf.parse_status(pev.raw)
            continue
        jm, pm = jsonwire.object_meta(ev.doc), protobuf.object_meta(pev.raw)
        assert (jm.name, jm.namespace, jm.uid, jm.resource_version, jm.labels, jm.deletion_timestamp) == (
            pm.name, pm.namespace, pm.uid, pm.resource_version, pm.labels, pm.deletion_timestamp)
        assert {k: v for k, v in jm.annotations.items() if k != BLUEPRINT} == {
            k: v for k, v in pm.annotations.items() if k != BLUEPRINT}
        if ev.type != "BOOKMARK":
            assert jsonwire.selector_fields("pods", ev.doc) == protobuf.selector_fields("pods", pev.raw)
    assert b"".join(out) == data


def test_watchlist_added_objects_equal_list_items():
    parts = jsonwire.parse_list(recorded.body("pods-edge1.list", "json"))
    by_key = {(m.namespace, m.name, m.resource_version): jsonwire.compact(item)
              for item in parts.items for m in [jsonwire.object_meta(item)]}
    lines = recorded.json_lines(recorded.body("watchlist.pods-edge1", "json"))
    added = [ev for ev in map(jsonwire.decode_event, lines) if ev.type == "ADDED"]
    assert len(added) == len(parts.items)
    matched = 0
    for ev in added:
        m = jsonwire.object_meta(ev.doc)
        key = (m.namespace, m.name, m.resource_version)
        if key in by_key:  # the watch-list was recorded after the watch's writes: db-0 moved on
            assert jsonwire.untyped(ev.obj) == by_key[key]
            assert jsonwire.typed(by_key[key], "Pod", "v1") == ev.obj
            matched += 1
    assert matched >= len(parts.items) - 2


def test_partial_metadata_is_what_the_server_embeds_in_a_table():
    table = jsonwire.compact((recorded.FIXTURES / "pods-edge1.table.json.body").read_bytes())
    items = jsonwire.parse_list(recorded.body("pods-edge1.list", "json")).items
    partials = [jsonwire.partial_metadata(item) for item in items]
    assert all(p.startswith(jsonwire.PARTIAL_HEAD) for p in partials)
    # byte for byte the row's object; the table was recorded at RV 316, after db-0 changed
    assert sum(p in table for p in partials) == len(items) - 1
    pb = protobuf.parse_list(protobuf.unwrap(recorded.body("pods-edge1.list", "protobuf")).raw).items
    for item, raw in zip(items, pb, strict=True):
        assert json.loads(jsonwire.partial_metadata(item))["metadata"]["name"] == protobuf.object_meta(
            protobuf.partial_metadata(raw)).name


def test_bookmarks_are_rebuilt_byte_identical():
    last = jsonwire.decode_event(recorded.json_lines(recorded.body("watch.pods-edge1", "json"))[-1])
    assert last.type == "BOOKMARK"
    assert jsonwire.bookmark_obj("Pod", "v1", "315") == last.obj
    end = jsonwire.decode_event(recorded.json_lines(recorded.body("watchlist.pods-edge1", "json"))[-1])
    annotations = jsonwire.object_meta(end.doc).annotations
    assert jsonwire.bookmark_obj("Pod", "v1", "316", annotations) == end.obj


@pytest.mark.parametrize("name", ["configmap-missing.get", "node-edge1.pods-all.list", *recorded.STATUSES])
def test_status_bodies_parse(name):
    status = jsonwire.parse_status(recorded.body(name, "json"))
    assert status["status"] == "Failure"
    assert status["code"] in (403, 404, 410)


def test_go_string_escapes_like_encoding_json():
    assert jsonwire.go_string("a<b>&c\u2028é") == '"a\\u003cb\\u003e\\u0026c\\u2028é"'


def test_non_ascii_items_keep_their_bytes():
    item = '{"metadata":{"name":"a","annotations":{"note":"héllo ✓"}}}'.encode()
    body = jsonwire.build_list("ConfigMapList", "v1", "1", [item, item])
    assert jsonwire.parse_list(body).items == [item, item]
    line = jsonwire.encode_event("ADDED", jsonwire.typed(item, "ConfigMap", "v1"))
    assert jsonwire.decode_event(line).obj == jsonwire.typed(item, "ConfigMap", "v1")


def test_watch_lines_not_written_by_go_still_decode():
    """Another member order and spacing take the general scanner; the object's bytes are still exact."""
    obj = b'{"kind":"Pod", "apiVersion":"v1","metadata":{"name":"\xc3\xa9"}}'
    for line in (b'{ "object" : ' + obj + b' ,"type":"DELETED" }', b'{"type":"DELETED","object":' + obj + b'}  \r\n'):
        ev = jsonwire.decode_event(line)
        assert (ev.type, ev.obj, ev.doc["metadata"]["name"]) == ("DELETED", obj, "é")


@pytest.mark.parametrize("line", [b'{"type":"RENAMED","object":{}}', b'{"type":"ADDED"}', b'{"type":"ADDED",'
                                  b'"object":{}} trailing', b'[]', b'', b'{"type":"ADDED","object":[]}'])
def test_bad_watch_lines(line):
    with pytest.raises(errors.DecodeError):
        jsonwire.decode_event(line)


def test_deep_nesting_is_a_decode_error():
    deep = b'{"type":"ADDED","object":' + b"[" * 100_000
    for parse in (jsonwire.decode_event, jsonwire.parse_list, jsonwire.object_meta):
        with pytest.raises(errors.DecodeError):
            parse(deep)


# --- malformed input: DecodeError or a value, never another exception, never a hang --------------------------

ON_DICTS = [jsonwire.object_meta, jsonwire.parse_status,
            *[(lambda b, r=r: jsonwire.selector_fields(r, b)) for r in
              ("pods", "nodes", "services", "secrets", "namespaces", "events", "replicationcontrollers")]]
PARSERS = [jsonwire.parse_list, jsonwire.decode_event, jsonwire.partial_metadata, jsonwire.untyped,
           lambda b: jsonwire.typed(b, "Pod", "v1"), jsonwire.compact, *ON_DICTS]


def _survives(data: bytes) -> None:
    for parse in PARSERS:
        try:
            parse(data)
        except errors.DecodeError:
            pass


@HYPOTHESIS
@hypothesis.given(st.binary(max_size=256))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    _survives(data)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["kind", "apiVersion", "metadata", "items", "type", "object", "spec",
                                          "status", "labels", "name", "podIPs", "involvedObject", "source"]),
                         inner, max_size=4), max_leaves=12)


@HYPOTHESIS
@hypothesis.given(_JSON)
def test_arbitrary_json_documents_decode_or_raise_decode_error(doc):
    """Valid JSON of the wrong shape (a list for metadata, a number for labels, ...) reaches past the parser."""
    _survives(json.dumps(doc).encode())
    if isinstance(doc, dict):
        for parse in ON_DICTS:
            try:
                parse(doc)
            except errors.DecodeError:
                pass


@HYPOTHESIS
@hypothesis.given(st.data())
def test_mutated_recorded_lines_decode_or_raise_decode_error(data):
    line = bytearray(recorded.json_lines(recorded.body("watch.pods-edge1", "json"))[0])
    for _ in range(data.draw(st.integers(1, 3))):
        line[data.draw(st.integers(0, len(line) - 1))] = data.draw(st.sampled_from(b'{}[]",:\\ 0a\xff'))
    _survives(bytes(line[: data.draw(st.integers(0, len(line)))]))


def _pb_event(source_component: str) -> bytes:
    """A core/v1 Event message built from its generated.proto field numbers (no Event was recorded)."""
    f = protobuf.field_bytes
    involved = b"".join(f(n, v.encode()) for n, v in [(1, "Pod"), (2, "edge"), (3, "web-1"), (4, "u-1"), (5, "v1"),
                                                       (6, "42"), (7, "spec.containers{web}")])
    return (f(1, f(1, b"web-1.17") + f(3, b"edge")) + f(2, involved) + f(3, b"Pulled") + f(4, b"msg")
            + f(5, f(1, source_component.encode()) + f(2, b"edge-1")) + f(9, b"Normal") + f(14, b"kubelet"))


@pytest.mark.parametrize("component", ["kubelet-old", ""])
def test_event_fields_agree_between_encodings(component):
    doc = {"metadata": {"name": "web-1.17", "namespace": "edge"},
           "involvedObject": {"kind": "Pod", "namespace": "edge", "name": "web-1", "uid": "u-1", "apiVersion": "v1",
                              "resourceVersion": "42", "fieldPath": "spec.containers{web}"},
           "reason": "Pulled", "message": "msg", "source": {"component": component, "host": "edge-1"},
           "type": "Normal", "reportingComponent": "kubelet"}
    fields = jsonwire.selector_fields("events", doc)
    assert fields == protobuf.selector_fields("events", _pb_event(component))
    assert fields["source"] == (component or "kubelet")  # falls back to reportingComponent, as strategy.go does
    assert fields["involvedObject.fieldPath"] == "spec.containers{web}"
