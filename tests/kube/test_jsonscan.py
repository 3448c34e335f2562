"""jsonscan (msgspec): the same item bytes, metadata and selectable fields as jsonwire, and DecodeError on bad input."""

from __future__ import annotations

import json

import hypothesis
import pytest
from hypothesis import strategies as st

from edgeproxy.kube import errors, jsonscan, jsonwire
from tests.kube import recorded

HYPOTHESIS = hypothesis.settings(max_examples=300, deadline=None,
                                 suppress_health_check=[hypothesis.HealthCheck.too_slow])
RESOURCES = ("pods", "nodes", "services", "secrets", "namespaces", "events", "replicationcontrollers", "configmaps")


def _outcome(fn, *args):
    try:
        return fn(*args)
    except errors.DecodeError:
        return "DecodeError"


@pytest.mark.parametrize("name", recorded.LISTS)
def test_recorded_lists_give_jsonwires_items_and_metadata(name):
    data = recorded.body(name, "json")
    want, got = jsonwire.parse_list(data), jsonscan.scan_list(data)
    assert got == want  # kind, apiVersion, resourceVersion, continue, remainingItemCount, each item's exact bytes
    assert [bytes(r) for r in jsonscan.scan_list(data, copy=False).items] == want.items
    for item in want.items:
        for resource in RESOURCES:
            assert _outcome(jsonscan.extract, resource, item) == _outcome(jsonwire.extract, resource, item)


def test_an_indented_list_keeps_its_items_as_they_sit():
    data = recorded.body("pods-edge1.list", "json")
    parts = jsonwire.parse_list(data)
    pretty = jsonwire.build_list(parts.kind, parts.api_version, parts.resource_version, parts.items, pretty=True)
    assert jsonscan.scan_list(pretty) == jsonwire.parse_list(pretty) and jsonscan.scan_list(pretty).pretty


@pytest.mark.parametrize("name", recorded.WATCHES)
def test_recorded_watch_events_give_jsonwires_type_and_object_bytes(name):
    for line in recorded.json_lines(recorded.body(name, "json")):
        want, got = jsonwire.decode_event(line), jsonscan.decode_event(line)
        assert (got.type, got.obj) == (want.type, want.obj)


@pytest.mark.parametrize("line", [b"", b"{", b'{"type":"ADDED"}', b'{"type":"NOPE","object":{}}',
                                  b'{"type":"ADDED","object":[1]}', b'{"type":"ADDED","object":null}',
                                  b'{"type":"ADDED","object":{}} trailing', b'{"type":7,"object":{}}'])
def test_bad_watch_lines(line):
    with pytest.raises(errors.DecodeError):
        jsonscan.decode_event(line)


@pytest.mark.parametrize("body", [b"", b"[]", b'{"items": {}}', b'{"items": [1,', b'{"metadata": [1]}',
                                  b'{"metadata": {"remainingItemCount": true}}', b'{"kind": 5}', b"{} {}"])
def test_bad_lists(body):
    with pytest.raises(errors.DecodeError):
        jsonscan.scan_list(body)


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                         st.sampled_from(["kind", "apiVersion", "metadata", "items", "type", "object", "spec",
                                          "status", "labels", "name", "namespace", "podIPs", "podIP", "ip",
                                          "hostNetwork", "involvedObject", "source", "component", "replicas",
                                          "resourceVersion", "continue", "remainingItemCount", "annotations"]),
                         inner, max_size=4), max_leaves=12)


@HYPOTHESIS
@hypothesis.given(_JSON)
def test_any_json_document_gives_what_jsonwire_gives(doc):
    """Valid JSON of any shape (a list for metadata, a number for labels, ...): the same value or both DecodeError."""
    data = json.dumps(doc).encode()
    for resource in RESOURCES:
        assert _outcome(jsonscan.extract, resource, data) == _outcome(jsonwire.extract, resource, data)
    assert _outcome(jsonscan.scan_list, data) == _outcome(jsonwire.parse_list, data)
    ev_a, ev_b = _outcome(jsonscan.decode_event, data), _outcome(jsonwire.decode_event, data)
    assert ev_a == ev_b if isinstance(ev_a, str) or isinstance(ev_b, str) else (ev_a.type, ev_a.obj) == (
        ev_b.type, ev_b.obj)


@HYPOTHESIS
@hypothesis.given(st.binary(max_size=256))
def test_arbitrary_bytes_decode_or_raise_decode_error(data):
    for parse in (jsonscan.scan_list, jsonscan.decode_event, lambda b: jsonscan.extract("pods", b)):
        try:
            parse(data)
        except errors.DecodeError:
            pass


@pytest.mark.parametrize("status", [b'{"podIPs": false}', b'{"podIPs": 0}', b'{"podIPs": ""}', b'{"podIP": false}',
                                    b'{"podIPs": [{"ip": "10.0.0.1"}], "podIP": "10.0.0.1"}', b'{"podIPs": true}',
                                    b'{"podIPs": [1]}', b'{"podIPs": [{"ip": 1}]}'])
def test_pod_ips_of_any_shape_read_as_jsonwire_reads_them(status):
    """A falsy podIPs/podIP of any type is absent, anything else must be a list of objects (found by hypothesis)."""
    data = b'{"status": ' + status + b'}'
    assert _outcome(jsonscan.extract, "pods", data) == _outcome(jsonwire.extract, "pods", data)
