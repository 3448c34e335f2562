"""endpoints: EndpointSlice/Endpoints rewrites keep every untouched byte, and what they write is what the API server
would send for the rewritten object (checked against the schema transcoder, byte-identical on every fixture pair)."""

from __future__ import annotations

import copy
import json

import pytest

from edgeproxy.kube import endpoints, errors, jsonwire, protobuf, schema
from tests.kube import recorded

LIST = "endpointslices.proxysel.list"


def _slices() -> list[tuple[dict, bytes, bytes]]:
    """(decoded JSON, compact JSON bytes, protobuf bytes) of each recorded EndpointSlice."""
    jparts = jsonwire.parse_list(recorded.body(LIST, "json"))
    pparts = protobuf.parse_list(protobuf.unwrap(recorded.body(LIST, "protobuf")).raw)
    return [(json.loads(j), jsonwire.compact(j), bytes(p)) for j, p in zip(jparts.items, pparts.items, strict=True)]


def on_edge1(node: str, zone: str) -> bool:
    return node == "edge-1"


@pytest.mark.parametrize("index", range(3))
def test_keep_endpoints_writes_what_the_api_server_would_for_the_reduced_slice(index: int) -> None:
    doc, js, pb = _slices()[index]
    want = copy.deepcopy(doc)
    want["endpoints"] = [e for e in doc["endpoints"] if e["nodeName"] == "edge-1"]
    assert 0 < len(want["endpoints"]) < len(doc["endpoints"])
    got_pb = endpoints.keep_endpoints("protobuf", pb, on_edge1)
    assert got_pb == schema.to_protobuf(want, "EndpointSlice")
    got_js = endpoints.keep_endpoints("json", js, on_edge1)
    assert got_js == schema.go_json_dumps(want).encode()
    # everything but the endpoints is the API server's bytes: the metadata field is a byte-for-byte copy
    assert protobuf.metadata_field(got_pb) == protobuf.metadata_field(pb)


def test_all_or_none_local_leaves_the_slice_as_it_is() -> None:
    _, js, pb = _slices()[0]
    for enc, obj in (("json", js), ("protobuf", pb)):
        assert endpoints.keep_endpoints(enc, obj, lambda n, z: z == "edge-site-a") is None  # all local
        assert endpoints.keep_endpoints(enc, obj, lambda n, z: z == "elsewhere") is None  # none: all kept


def _kubernetes_slice() -> dict:
    return {"metadata": {"name": "kubernetes", "namespace": "default", "resourceVersion": "5",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.0.2.10"], "conditions": {"ready": True}},
                          {"addresses": ["192.0.2.11"], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "protocol": "TCP", "port": 6443}]}


def test_redirect_slice_points_at_one_address_in_both_encodings() -> None:
    doc = _kubernetes_slice()
    want = copy.deepcopy(doc)
    want["endpoints"] = [{"addresses": ["169.254.2.1"], "conditions": {"ready": True}}]
    want["ports"][0]["port"] = 10268
    pb = schema.to_protobuf(doc, "EndpointSlice")
    assert endpoints.redirect_slice("protobuf", pb, "169.254.2.1", 10268) == schema.to_protobuf(want, "EndpointSlice")
    js = schema.go_json_dumps(doc).encode()
    assert endpoints.redirect_slice("json", js, "169.254.2.1", 10268) == schema.go_json_dumps(want).encode()
    # applied twice: the second time it is already so
    once = endpoints.redirect_slice("protobuf", pb, "169.254.2.1", 10268)
    assert once is not None and endpoints.redirect_slice("protobuf", once, "169.254.2.1", 10268) is None


def test_redirect_slice_leaves_the_other_address_family_alone() -> None:
    doc = _kubernetes_slice()
    doc["addressType"] = "IPv6"
    assert endpoints.redirect_slice("json", schema.go_json_dumps(doc).encode(), "169.254.2.1", 10268) is None
    assert endpoints.redirect_slice("protobuf", schema.to_protobuf(doc, "EndpointSlice"), "169.254.2.1",
                                    10268) is None


def test_redirect_endpoints_json_and_protobuf() -> None:
    js = (b'{"kind":"Endpoints","apiVersion":"v1","metadata":{"name":"kubernetes","namespace":"default"},'
          b'"subsets":[{"addresses":[{"ip":"192.0.2.10"},{"ip":"192.0.2.11"}],'
          b'"ports":[{"name":"https","port":6443,"protocol":"TCP"}]}]}')
    got = endpoints.redirect_endpoints("json", js, "169.254.2.1", 10268)
    assert got == (b'{"kind":"Endpoints","apiVersion":"v1","metadata":{"name":"kubernetes","namespace":"default"},'
                   b'"subsets":[{"addresses":[{"ip":"169.254.2.1"}],'
                   b'"ports":[{"name":"https","port":6443,"protocol":"TCP"}]}]}'.replace(b"6443", b"10268"))
    meta = protobuf.field_bytes(1, protobuf.field_bytes(1, b"kubernetes") + protobuf.field_bytes(3, b"default"))
    port = protobuf.field_bytes(1, b"https") + protobuf.field_varint(2, 6443) + protobuf.field_bytes(3, b"TCP")
    address = protobuf.field_bytes(1, b"192.0.2.10") + b"\x1a\x00"
    pb = meta + protobuf.field_bytes(2, protobuf.field_bytes(1, address) + protobuf.field_bytes(3, port))
    new = endpoints.redirect_endpoints("protobuf", pb, "169.254.2.1", 10268)
    new_port = protobuf.field_bytes(1, b"https") + protobuf.field_varint(2, 10268) + protobuf.field_bytes(3, b"TCP")
    new_address = protobuf.field_bytes(1, b"169.254.2.1") + b"\x1a\x00"
    assert new == meta + protobuf.field_bytes(2, protobuf.field_bytes(1, new_address)
                                              + protobuf.field_bytes(3, new_port))


@pytest.mark.parametrize("bad", [b"", b"{", b'{"endpoints":[1,', b"[]", b"\xff\xfe"])
def test_malformed_json_is_a_decode_error(bad: bytes) -> None:
    with pytest.raises(errors.DecodeError):
        endpoints.keep_endpoints("json", bad, on_edge1)


@pytest.mark.parametrize("bad", [b"\x12\x05ab", b"\x00", b"\x12\xff\xff\xff\xff\x0f"])
def test_malformed_protobuf_is_a_decode_error(bad: bytes) -> None:
    with pytest.raises(errors.DecodeError):
        endpoints.keep_endpoints("protobuf", bad, on_edge1)
