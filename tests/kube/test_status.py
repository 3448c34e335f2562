"""metav1.Status: built as the API server builds it, byte-identical to the recorded kube-apiserver bodies.

The JSON fixtures were recorded with curl, for which kube-apiserver pretty-prints (json.MarshalIndent), so they are
compared with encode(pretty=True); the compact form (what client-go gets) is compared by parsed equality and by
key order, since Go writes struct fields in declaration order and the watch event fixture shows the compact bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeproxy.kube import errors, protobuf
from edgeproxy.kube import status as st

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CONTINUE_TOKEN = "eyJ2IjoibWV0YS5rOHMuaW8vdjEiLCJydiI6LTEsInN0YXJ0IjoiZWRnZS9xdWV1ZS1jMDNhNzZlMWY3LTRmODFlXHUwMDAwIn0"
NODE = 'User "system:node:edge-1" cannot list resource'


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# (fixture, the Status the proxy would build for the same condition)
RECORDED = [
    ("configmap-missing.get.json.body", lambda: st.not_found("configmaps", "does-not-exist")),
    ("gone.pods-list-rv-exact.json.body", st.expired_list_rv),
    ("gone.pods-list-continue.json.body", lambda: st.expired_continue(CONTINUE_TOKEN)),
    ("node-edge1.pods-all.list.json.body", lambda: st.forbidden(
        "pods", "", NODE + ' "pods" in API group "" at the cluster scope: '
        "can only list/watch pods with spec.nodeName field selector")),
    ("node-edge1.secrets.list.json.body", lambda: st.forbidden(
        "secrets", "", NODE + ' "secrets" in API group "" in the namespace "edge": No Object name found')),
]


@pytest.mark.parametrize(("name", "build"), RECORDED, ids=[r[0] for r in RECORDED])
def test_json_body_is_byte_identical_to_the_server(name, build):
    assert st.encode(build(), "json", pretty=True) == ("application/json", fixture(name))


@pytest.mark.parametrize(("name", "build"), RECORDED, ids=[r[0] for r in RECORDED])
def test_compact_json_is_the_same_object_in_go_field_order(name, build):
    ctype, body = st.encode(build())
    assert ctype == "application/json" and body.endswith(b"}\n") and b"\n" not in body[:-1]
    recorded = json.loads(fixture(name))
    assert json.loads(body) == recorded
    assert list(json.loads(body)) == list(recorded)  # kind, apiVersion, metadata, status, message, reason, ...


@pytest.mark.parametrize(("name", "build"), [
    ("gone.pods-list-rv-exact.pb.body", st.expired_list_rv),
    ("gone.pods-list-continue.pb.body", lambda: st.expired_continue(CONTINUE_TOKEN)),
])
def test_protobuf_body_is_byte_identical_to_the_server(name, build):
    assert st.encode(build(), "protobuf") == ("application/vnd.kubernetes.protobuf", fixture(name))


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_watch_error_event_is_byte_identical_to_the_server(encoding):
    ext = "json" if encoding == "json" else "pb"
    assert st.watch_error_event(st.too_old_rv(304, 317), encoding) == fixture(f"gone.watch-old-rv.{ext}.body")


# --- every code the proxy answers with: shape, headers, and a protobuf decode back to the same Status -------------

def decode_pb_status(body: bytes) -> dict:
    """A test-side reader of what encode_protobuf writes, built on the codec's field iterator."""
    assert body.startswith(protobuf.MAGIC)
    unknown = {f: v for f, _, v in protobuf.iter_fields(body[4:])}
    type_meta = {f: bytes(v).decode() for f, _, v in protobuf.iter_fields(unknown[1])}
    assert type_meta == {1: "v1", 2: "Status"} and bytes(unknown[3]) == b"" and bytes(unknown[4]) == b""
    out: dict = {"kind": "Status", "apiVersion": "v1"}
    for f, _, v in protobuf.iter_fields(unknown[2]):
        if f == 1:
            names = {1: "selfLink", 2: "resourceVersion", 3: "continue", 4: "remainingItemCount"}
            out["metadata"] = {}
            for g, _, w in protobuf.iter_fields(v):
                if isinstance(w, int) or bytes(w):
                    out["metadata"][names[g]] = w if isinstance(w, int) else bytes(w).decode()
        elif f in (2, 3, 4):
            out[{2: "status", 3: "message", 4: "reason"}[f]] = bytes(v).decode()
        elif f == 5:
            d: dict = {}
            for g, _, w in protobuf.iter_fields(v):
                if g == 4:
                    cause = {{1: "reason", 2: "message", 3: "field"}[h]: bytes(x).decode()
                             for h, _, x in protobuf.iter_fields(w)}
                    d.setdefault("causes", []).append({k: x for k, x in cause.items() if x})
                elif g == 5:
                    if w:
                        d["retryAfterSeconds"] = w
                elif bytes(w):
                    d[{1: "name", 2: "group", 3: "kind", 6: "uid"}[g]] = bytes(w).decode()
            out["details"] = d
        elif f == 6:
            out["code"] = v
    return out


CASES = [
    (st.bad_request("bad"), 400, "BadRequest"),
    (st.forbidden("pods", "p1", "nope"), 403, "Forbidden"),
    (st.not_found("leases", "edge-1", "coordination.k8s.io"), 404, "NotFound"),
    (st.method_not_supported("pods", "watch"), 405, "MethodNotAllowed"),
    (st.not_acceptable(["application/json", "application/yaml", "application/vnd.kubernetes.protobuf"]), 406,
     "NotAcceptable"),
    (st.already_exists("nodes", "edge-1"), 409, "AlreadyExists"),
    (st.conflict("leases", "edge-1", "the object has been modified", "coordination.k8s.io"), 409, "Conflict"),
    (st.too_old_rv(10, 20), 410, "Expired"),
    (st.invalid("ListOptions", "", [{"reason": "FieldValueForbidden", "field": "resourceVersionMatch",
                                     "message": "Forbidden: x"}], "meta.k8s.io"), 422, "Invalid"),
    (st.too_many_requests("slow down", 3), 429, "TooManyRequests"),
    (st.internal_error("boom <&>"), 500, "InternalError"),
    (st.service_unavailable("the cache has no complete list"), 503, "ServiceUnavailable"),
    (st.too_large_rv(400, 317), 504, "Timeout"),
]


@pytest.mark.parametrize(("s", "code", "reason"), CASES, ids=[c[2] + str(c[1]) for c in CASES])
def test_every_status_round_trips_through_json_and_protobuf(s, code, reason):
    body = json.loads(st.encode(s)[1])
    assert body["code"] == code and body["reason"] == reason and body["status"] == "Failure"
    assert body["kind"] == "Status" and body["apiVersion"] == "v1" and body["metadata"] == {}
    assert decode_pb_status(st.encode(s, "protobuf")[1]) == body
    # and the codec's own Status reader (used by the proxy on upstream errors) agrees, details aside
    read = protobuf.parse_status(protobuf.unwrap(st.encode(s, "protobuf")[1]).raw)
    assert read == {k: v for k, v in body.items() if k != "details"}


def test_messages_and_details_follow_apimachinery():
    assert st.not_found("leases", "edge-1", "coordination.k8s.io")["message"] == (
        'leases.coordination.k8s.io "edge-1" not found')
    assert json.loads(st.encode(st.already_exists("nodes", "edge-1"))[1])["details"] == {"name": "edge-1",
                                                                                        "kind": "nodes"}
    assert st.method_not_supported("pods", "watch")["message"] == 'watch is not supported on resources of kind "pods"'
    big = json.loads(st.encode(st.too_large_rv(400, 317))[1])
    assert big["message"] == "Timeout: Too large resource version: 400, current: 317"
    assert big["details"] == {"causes": [{"reason": "ResourceVersionTooLarge",
                                          "message": "Too large resource version"}], "retryAfterSeconds": 1}
    assert st.retry_after(big) == 1 and st.retry_after(st.service_unavailable("x")) is None
    assert st.retry_after(st.too_many_requests("x", 5)) == 5
    assert st.internal_error("x")["details"] == {"causes": [{"message": "x"}]}
    assert st.not_found("configmaps", 'a"b')["message"] == 'configmaps "a\\"b" not found'


def test_go_json_escapes_html_characters_like_encoding_json():
    body = st.encode(st.internal_error("<a & b>"))[1]
    assert b"\\u003ca \\u0026 b\\u003e" in body and json.loads(body)["message"] == "Internal error occurred: <a & b>"


@pytest.mark.parametrize(("err", "code", "reason"), [
    (errors.InvalidSelector("found ',', expected: identifier"), 400, "BadRequest"),
    (errors.UnsupportedField("field label not supported: spec.foo"), 400, "BadRequest"),
    (errors.NotAcceptable("only the following media types are accepted: application/json"), 406, "NotAcceptable"),
    (errors.DecodeError("protobuf: truncated varint"), 500, "InternalError"),
    (errors.InvalidOptions('ListOptions.meta.k8s.io "" is invalid: resourceVersionMatch: Forbidden: x', [
        {"reason": "FieldValueForbidden", "message": "Forbidden: x", "field": "resourceVersionMatch"}]), 422,
     "Invalid"),
])
def test_from_error_carries_the_status_of_the_error(err, code, reason):
    s = st.from_error(err)
    assert (s["code"], s["reason"]) == (code, reason)
    if code != 500:
        assert s["message"] == str(err)
    decode_pb_status(st.encode(s, "protobuf")[1])
