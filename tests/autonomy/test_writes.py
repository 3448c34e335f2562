"""writes: the offline write policy as a table, and the local Lease / node status / Event answers."""

import json
from pathlib import Path

import pytest

from edgeproxy.autonomy import writes
from edgeproxy.kube import protobuf, request

FIXTURES = Path(__file__).parent.parent / "fixtures"
A = writes.Action


def req(verb, resource, *, group="", version="v1", namespace=None, name=None, sub=None, component="kubelet",
        identity=""):
    """A classified request (kube.request.parse) as a client with that User-Agent and bearer token would send it."""
    method = {"create": "POST", "update": "PUT", "patch": "PATCH", "delete": "DELETE", "get": "GET"}[verb]
    path = f"/apis/{group}/{version}" if group else f"/api/{version}"
    if namespace:
        path += f"/namespaces/{namespace}"
    path += "/" + "/".join(p for p in (resource, name, sub) if p)
    headers = {"User-Agent": f"{component}/v1.32.0 (linux/amd64) kubernetes/cd13ec4"}
    if identity:
        headers["Authorization"] = f"Bearer {identity}"
    return request.parse(method, path, "", headers)


def lease(verb="update", name="edge-1", **kw):
    return req(verb, "leases", group="coordination.k8s.io", namespace="kube-node-lease", name=name, **kw)


POLICY = [
    # (request, node, created, cache holds it, expected action, status)
    (lease(), "edge-1", None, False, A.RENEW_LEASE, 200),
    (lease(component="hollow-kubelet"), "edge-1", None, False, A.RENEW_LEASE, 200),
    (lease(component="k3s-agent"), "edge-1", None, False, A.RENEW_LEASE, 200),  # vendor build: by behaviour
    (lease(component="my-test-client"), "edge-1", None, False, A.RENEW_LEASE, 200),
    (lease(name="edge-2"), "edge-1", None, False, A.UNAVAILABLE, 503),  # another node's lease
    (lease(identity="ab12cd34"), "edge-1", None, False, A.UNAVAILABLE, 503),  # a pod's own token
    (lease(), None, None, False, A.RENEW_LEASE, 200),  # node name unknown: the component stands in
    (lease(component="curl"), None, None, False, A.UNAVAILABLE, 503),
    (req("patch", "nodes", name="edge-1", sub="status"), "edge-1", None, False, A.PATCH_NODE_STATUS, 200),
    (req("patch", "nodes", name="edge-1", sub="status", identity="ff00"), "edge-1", None, False, A.UNAVAILABLE, 503),
    (req("patch", "nodes", name="edge-2", sub="status"), "edge-1", None, False, A.UNAVAILABLE, 503),
    (req("create", "nodes"), "edge-1", ("", "edge-1"), True, A.ALREADY_EXISTS, 409),
    (req("create", "nodes"), "edge-1", ("", "edge-1"), False, A.UNAVAILABLE, 503),
    (req("create", "configmaps", namespace="edge", identity="aa"), None, ("edge", "cm"), True, A.ALREADY_EXISTS, 409),
    (req("create", "configmaps", namespace="edge"), None, None, True, A.UNAVAILABLE, 503),  # generateName
    (req("create", "events", namespace="default"), "edge-1", None, False, A.ECHO_EVENT, 201),
    (req("patch", "events", namespace="edge", name="web.1"), "edge-1", None, False, A.ECHO_EVENT, 200),
    (req("create", "events", group="events.k8s.io", namespace="default", component="kube-proxy", identity="9f"),
     "edge-1", None, False, A.ECHO_EVENT, 201),
    (req("create", "serviceaccounts", namespace="edge", name="default", sub="token"), "edge-1", None, False,
     A.TOKEN, 201),
    (req("create", "serviceaccounts", namespace="edge", name="default", sub="token", identity="77"), "edge-1", None,
     False, A.UNAVAILABLE, 503),
    (req("patch", "pods", namespace="edge", name="web-0", sub="status"), "edge-1", None, False, A.UNAVAILABLE, 503),
    (req("delete", "pods", namespace="edge", name="web-0"), "edge-1", None, False, A.UNAVAILABLE, 503),
    (req("update", "nodes", name="edge-1"), "edge-1", None, False, A.UNAVAILABLE, 503),
    (lease(verb="create"), "edge-1", ("kube-node-lease", "edge-1"), True, A.ALREADY_EXISTS, 409),
]


@pytest.mark.parametrize(("info", "node", "created", "held", "action", "status"), POLICY)
def test_policy(info, node, created, held, action, status):
    decision = writes.decide(info, node=node, created=created, holds=lambda ns, name: held)
    assert (decision.action, decision.status) == (action, status)


def test_node_agent_is_recognised_by_what_it_touches():
    assert writes.node_agent_target(lease(component="vendor"), "edge-1") == "lease"
    assert writes.node_agent_target(req("create", "nodes", component="x"), "edge-1", "edge-1") == "node"
    assert writes.node_agent_target(req("get", "pods", namespace="edge", name="p"), "edge-1") is None


def node_json() -> dict:
    return json.loads((FIXTURES / "nodes-edge1.list.json.body").read_bytes())["items"][0]


def test_node_status_patch_as_kubelet_sends_it():
    node = node_json()
    types = [c["type"] for c in node["status"]["conditions"]]
    patch = {"status": {
        "$setElementOrder/conditions": [{"type": t} for t in types],
        "conditions": [{"lastHeartbeatTime": "2026-11-24T15:00:00Z", "type": "Ready"}],
        "allocatable": {"pods": "99"},
        "images": [{"names": ["registry.k8s.io/pause:3.10"], "sizeBytes": 1}],
    }}
    out = writes.patch_node_status(node, patch, "999")
    ready = next(c for c in out["status"]["conditions"] if c["type"] == "Ready")
    assert ready["lastHeartbeatTime"] == "2026-11-24T15:00:00Z"
    assert ready["status"] == next(c for c in node["status"]["conditions"] if c["type"] == "Ready")["status"]
    assert [c["type"] for c in out["status"]["conditions"]] == types
    assert out["status"]["allocatable"]["pods"] == "99"
    assert out["status"]["allocatable"]["cpu"] == node["status"]["allocatable"]["cpu"]
    assert out["status"]["images"] == patch["status"]["images"]
    assert out["spec"] == node["spec"] and out["metadata"]["resourceVersion"] == "999"
    assert node["status"]["allocatable"]["pods"] != "99"  # the original is untouched


def test_a_patch_outside_status_does_not_change_the_node():
    node = node_json()
    out = writes.patch_node_status(node, {"spec": {"unschedulable": True}}, "5")
    assert out["spec"] == node["spec"]


@pytest.mark.parametrize(("original", "patch", "expected"), [
    ({"a": 1, "b": 2}, {"b": None}, {"a": 1}),
    ({"m": {"x": 1}}, {"m": {"y": 2}}, {"m": {"x": 1, "y": 2}}),
    ({"m": {"x": 1}}, {"m": {"$patch": "replace", "y": 2}}, {"m": {"y": 2}}),
    ({"conditions": [{"type": "A", "s": 1}, {"type": "B", "s": 1}]},
     {"conditions": [{"type": "B", "$patch": "delete"}, {"type": "C", "s": 3}]},
     {"conditions": [{"type": "A", "s": 1}, {"type": "C", "s": 3}]}),
    ({"conditions": [{"type": "A"}, {"type": "B"}]}, {"$setElementOrder/conditions": [{"type": "B"}, {"type": "A"}]},
     {"conditions": [{"type": "B"}, {"type": "A"}]}),
    ({"volumesInUse": ["a", "b"]}, {"$deleteFromPrimitiveList/volumesInUse": ["a"]}, {"volumesInUse": ["b"]}),
    ({"a": 1, "b": 2, "c": 3}, {"$retainKeys": ["a", "c"], "c": 4}, {"a": 1, "c": 4}),
    ({"images": [1, 2]}, {"images": [3]}, {"images": [3]}),
])
def test_strategic_merge(original, patch, expected):
    assert writes.strategic_merge(original, patch, {"conditions": "type"}) == expected


def test_lease_renewal_protobuf_sets_only_the_resource_version():
    # real ObjectMeta bytes: a recorded ConfigMap stands in for the Lease (the same envelope and metadata)
    body = (FIXTURES / "configmap-web-config.get.pb.body").read_bytes()
    out = writes.renew_lease(body, "application/vnd.kubernetes.protobuf", "4242")
    after, before = protobuf.unwrap(out), protobuf.unwrap(body)
    meta = {no: bytes(v) for no, wt, v in protobuf.iter_fields(protobuf.metadata_field(after.raw)) if wt == 2}
    old = {no: bytes(v) for no, wt, v in protobuf.iter_fields(protobuf.metadata_field(before.raw)) if wt == 2}
    assert (after.api_version, after.kind) == ("v1", "ConfigMap")
    assert meta[6] == b"4242" and old[6] != b"4242"
    assert {k: v for k, v in meta.items() if k != 6} == {k: v for k, v in old.items() if k != 6}
    assert after.raw[len(protobuf.metadata_field(after.raw)) + 3:] == before.raw[
        len(protobuf.metadata_field(before.raw)) + 3:]  # data untouched
    assert out.endswith(b"\x1a\x00\x22\x00")  # Unknown's empty contentEncoding/contentType, as the server writes


def test_lease_renewal_json():
    body = json.dumps({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
                       "metadata": {"name": "edge-1", "namespace": "kube-node-lease", "resourceVersion": "10"},
                       "spec": {"holderIdentity": "edge-1", "renewTime": "2026-11-24T15:00:00.000000Z"}}).encode()
    out = json.loads(writes.renew_lease(body, "application/json", "11"))
    assert out["metadata"]["resourceVersion"] == "11" and out["spec"]["holderIdentity"] == "edge-1"


def test_local_resource_version_is_one_past_upstream():
    assert writes.local_resource_version("304") == "305"
    assert writes.local_resource_version(None) == "1"


def test_body_name():
    pb = (FIXTURES / "configmap-web-config.get.pb.body").read_bytes()
    js = (FIXTURES / "configmap-web-config.get.json.body").read_bytes()
    assert writes.body_name(pb, "application/vnd.kubernetes.protobuf") == ("edge", "web-config")
    assert writes.body_name(js, "application/json") == ("edge", "web-config")
    assert writes.body_name(b'{"metadata":{"generateName":"x-"}}', "application/json") is None
    assert writes.body_name(b"\x00junk", "application/vnd.kubernetes.protobuf") is None


def test_event_echo():
    post = b'\x6b\x38\x73\x00 an event as kubelet posts it'
    assert writes.echo_event(req("create", "events", namespace="default"), post,
                             "application/vnd.kubernetes.protobuf") == ("application/vnd.kubernetes.protobuf", post)
    patch = b'{"count":3,"lastTimestamp":"2026-11-24T15:00:00Z","message":"m"}'
    ct, body = writes.echo_event(req("patch", "events", namespace="edge", name="web.1"), patch,
                                 "application/strategic-merge-patch+json")
    obj = json.loads(body)
    assert ct == "application/json"
    assert obj["kind"] == "Event" and obj["apiVersion"] == "v1" and obj["count"] == 3
    assert obj["metadata"] == {"name": "web.1", "namespace": "edge"}
    ct, body = writes.echo_event(req("patch", "events", group="events.k8s.io", namespace="d", name="e"),
                                 b'{"series":{"count":2}}', "application/merge-patch+json")
    assert json.loads(body)["apiVersion"] == "events.k8s.io/v1"
