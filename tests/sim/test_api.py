"""List semantics (resourceVersion, resourceVersionMatch, limit/continue, 410, 504) and writes over HTTP."""

from __future__ import annotations

import json

import pytest

from edgeproxy.kube import protobuf, schema
from tests.sim.conftest import FIXTURES

PROTOBUF = "application/vnd.kubernetes.protobuf"
EDGE1 = "fieldSelector=spec.nodeName%3Dedge-1"
CURL = {"User-Agent": "curl/8.5.0"}


async def _json(client, method, path, **kw):
    async with client.request(method, path, **kw) as r:
        return r.status, await r.json(content_type=None)


def _compact_history(sim, n=13):
    for i in range(n):
        sim.patch("configmaps", "web-config", {"data": {"N": str(i)}}, namespace="edge")
    sim.compact()


@pytest.mark.parametrize("accept", ["application/json", PROTOBUF])
async def test_exact_rv_after_compaction_is_the_recorded_410(sim, admin, accept):
    _compact_history(sim)
    path = f"/api/v1/pods?{EDGE1}&resourceVersion=304&resourceVersionMatch=Exact"
    async with admin.get(path, headers={"Accept": accept, **CURL}) as r:
        assert r.status == 410
        body = await r.read()
    ext = "pb" if accept == PROTOBUF else "json"
    assert body == (FIXTURES / f"gone.pods-list-rv-exact.{ext}.body").read_bytes()


@pytest.mark.parametrize("accept", ["application/json", PROTOBUF])
async def test_expired_continue_is_the_recorded_410(sim, admin, accept):
    _compact_history(sim)
    token = (FIXTURES / "pods-edge1.limit10.continue-token.txt").read_text().strip()
    async with admin.get(f"/api/v1/pods?{EDGE1}&limit=10&continue={token}", headers={"Accept": accept, **CURL}) as r:
        assert r.status == 410
        body = await r.read()
    ext = "pb" if accept == PROTOBUF else "json"
    assert body == (FIXTURES / f"gone.pods-list-continue.{ext}.body").read_bytes()


async def test_continue_pages_are_a_consistent_snapshot(sim, admin):
    status, page1 = await _json(admin, "GET", "/api/v1/namespaces/edge/pods?limit=20")
    assert status == 200 and len(page1["items"]) == 20
    assert page1["metadata"]["remainingItemCount"] == 10  # no selector: the server counts what is left
    sim.create("pods", {"metadata": {"name": "zz-new", "namespace": "edge"}, "spec": {"containers": [{"name": "c"}]}})
    sim.delete("pods", "web-ec1d301e21-d8204", "edge", grace=0)
    cont = page1["metadata"]["continue"]
    status, page2 = await _json(admin, "GET", f"/api/v1/namespaces/edge/pods?limit=20&continue={cont}")
    assert status == 200 and page2["metadata"]["resourceVersion"] == "304"
    names = [p["metadata"]["name"] for p in page1["items"] + page2["items"]]
    assert len(names) == 30 and "zz-new" not in names and "web-ec1d301e21-d8204" in names
    assert "continue" not in page2["metadata"]


async def test_exact_rv_reads_the_past(sim, admin):
    sim.patch("pods", "db-0", {"metadata": {"labels": {"backup": "nightly"}}}, namespace="edge")
    status, old = await _json(
        admin, "GET", "/api/v1/pods?resourceVersion=304&resourceVersionMatch=Exact&fieldSelector=metadata.name%3Ddb-0"
    )
    assert status == 200 and old["metadata"]["resourceVersion"] == "304"
    assert old["items"][0]["metadata"]["labels"]["backup"] == "weekly"
    status, new = await _json(admin, "GET", "/api/v1/pods?resourceVersion=0&fieldSelector=metadata.name%3Ddb-0")
    assert new["metadata"]["resourceVersion"] == "305" and new["items"][0]["metadata"]["labels"]["backup"] == "nightly"


async def test_rv_from_the_future_is_504_too_large(admin):
    async with admin.get("/api/v1/pods?resourceVersion=1000") as r:
        body = await r.json()
        assert r.status == 504 and r.headers["Retry-After"] == "1"
    assert body["reason"] == "Timeout"
    assert body["details"]["causes"] == [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("resourceVersionMatch=Exact", 400),
        ("resourceVersion=0&resourceVersionMatch=Exact", 400),
        ("fieldSelector=spec.bogus%3Dx", 400),
        ("labelSelector=a%20in%20(", 400),
        ("continue=not-a-token", 400),
    ],
)
async def test_bad_list_requests(admin, query, code):
    status, body = await _json(admin, "GET", f"/api/v1/pods?{query}")
    assert status == code and body["kind"] == "Status" and body["status"] == "Failure"


async def test_label_and_field_selectors(admin):
    _, svcs = await _json(
        admin,
        "GET",
        "/api/v1/services?labelSelector=%21service.kubernetes.io%2Fservice-proxy-name"
        "&fieldSelector=spec.clusterIP%21%3DNone",
    )
    assert sorted(s["metadata"]["name"] for s in svcs["items"]) == ["api", "cache", "kubernetes", "web"]
    _, pods = await _json(admin, "GET", "/api/v1/pods?fieldSelector=status.phase%3DPending")
    assert len(pods["items"]) == 2
    _, pods = await _json(admin, "GET", "/api/v1/pods?labelSelector=app%20in%20(db,queue),tier%3Dbackend")
    assert len(pods["items"]) == 9


async def test_create_get_update_patch_delete(sim, admin):
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "new-cm"}, "data": {"a": "1"}}
    status, created = await _json(admin, "POST", "/api/v1/namespaces/edge/configmaps", json=cm)
    assert status == 201 and created["metadata"]["resourceVersion"] == "305" and created["metadata"]["uid"]
    status, _ = await _json(admin, "POST", "/api/v1/namespaces/edge/configmaps", json=cm)
    assert status == 409
    created["data"]["b"] = "2"
    status, updated = await _json(admin, "PUT", "/api/v1/namespaces/edge/configmaps/new-cm", json=created)
    assert status == 200 and updated["metadata"]["resourceVersion"] == "306"
    status, body = await _json(admin, "PUT", "/api/v1/namespaces/edge/configmaps/new-cm", json=created)
    assert status == 409 and body["reason"] == "Conflict"  # stale resourceVersion
    status, same = await _json(admin, "PUT", "/api/v1/namespaces/edge/configmaps/new-cm", json=updated)
    assert status == 200 and same["metadata"]["resourceVersion"] == "306"  # a no-op does not bump
    headers = {"Content-Type": "application/merge-patch+json"}
    status, patched = await _json(
        admin,
        "PATCH",
        "/api/v1/namespaces/edge/configmaps/new-cm",
        data=json.dumps({"data": {"a": None}}),
        headers=headers,
    )
    assert status == 200 and patched["data"] == {"b": "2"}
    headers = {"Content-Type": "application/json-patch+json"}
    ops = [{"op": "add", "path": "/data/c", "value": "3"}]
    status, patched = await _json(
        admin, "PATCH", "/api/v1/namespaces/edge/configmaps/new-cm", data=json.dumps(ops), headers=headers
    )
    assert status == 200 and patched["data"] == {"b": "2", "c": "3"}
    status, done = await _json(admin, "DELETE", "/api/v1/namespaces/edge/configmaps/new-cm")
    assert status == 200 and done["status"] == "Success" and done["details"]["name"] == "new-cm"
    status, _ = await _json(admin, "GET", "/api/v1/namespaces/edge/configmaps/new-cm")
    assert status == 404


async def test_protobuf_writes_as_kubelet_sends_them(sim, admin):
    lease = sim.get("leases", "edge-1", "kube-node-lease")
    lease["spec"]["renewTime"] = "2026-11-24T15:00:00.500000Z"
    body = protobuf.wrap("coordination.k8s.io/v1", "Lease", schema.to_protobuf(lease))
    headers = {"Content-Type": PROTOBUF, "Accept": PROTOBUF}
    async with admin.put(
        "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1", data=body, headers=headers
    ) as r:
        assert r.status == 200
        got = protobuf.unwrap(await r.read())
    assert schema.to_json(got.kind, got.raw)["spec"]["renewTime"] == "2026-11-24T15:00:00.500000Z"


async def test_node_status_strategic_merge_patch(sim, node):
    patch = {
        "$setElementOrder/conditions": [
            {"type": "MemoryPressure"},
            {"type": "DiskPressure"},
            {"type": "PIDPressure"},
            {"type": "Ready"},
        ],
        "status": {"conditions": [{"type": "Ready", "lastHeartbeatTime": "2026-11-24T15:00:00Z"}]},
    }
    patch = {
        "status": {
            "$setElementOrder/conditions": patch["$setElementOrder/conditions"],
            "conditions": patch["status"]["conditions"],
        }
    }
    headers = {"Content-Type": "application/strategic-merge-patch+json"}
    status, got = await _json(node, "PATCH", "/api/v1/nodes/edge-1/status", data=json.dumps(patch), headers=headers)
    assert status == 200
    conds = got["status"]["conditions"]
    assert [c["type"] for c in conds] == ["MemoryPressure", "DiskPressure", "PIDPressure", "Ready"]
    assert conds[3]["lastHeartbeatTime"] == "2026-11-24T15:00:00Z" and conds[3]["reason"] == "KubeletReady"


async def test_graceful_pod_delete(sim, admin):
    status, pod = await _json(admin, "DELETE", "/api/v1/namespaces/edge/pods/db-0")
    assert status == 200 and pod["metadata"]["deletionGracePeriodSeconds"] == 30
    assert sim.get("pods", "db-0", "edge") is not None
    status, pod = await _json(
        admin,
        "DELETE",
        "/api/v1/namespaces/edge/pods/db-0",
        json={"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0},
    )
    assert status == 200 and sim.get("pods", "db-0", "edge") is None
    assert sim.store.rv == 307  # 305 deletionTimestamp, 306 grace 0, 307 DELETED (as recorded)


async def test_unauthenticated_and_forbidden(sim, node):
    import ssl

    import aiohttp

    ctx = ssl.create_default_context(cafile=str(sim.pki.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as anon:
        async with anon.get(f"{sim.url}/api/v1/pods") as r:
            assert r.status == 401
        async with anon.get(f"{sim.url}/readyz") as r:
            assert r.status == 200
    sim.tokens["t0k3n"] = ("system:serviceaccount:kube-system:coredns", ("system:serviceaccounts",))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as bearer:
        async with bearer.get(f"{sim.url}/api/v1/services", headers={"Authorization": "Bearer t0k3n"}) as r:
            assert r.status == 200
        async with bearer.get(f"{sim.url}/api/v1/services", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401


async def test_discovery_for_clients_that_ask(admin):
    status, core = await _json(admin, "GET", "/api/v1")
    assert status == 200 and {"pods", "nodes", "pods/status"} <= {r["name"] for r in core["resources"]}
    status, coord = await _json(admin, "GET", "/apis/coordination.k8s.io/v1")
    assert [r["name"] for r in coord["resources"]] == ["leases"]
    agg = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
    async with admin.get("/api", headers={"Accept": agg}) as r:
        assert r.headers["Content-Type"] == "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
        doc = await r.json(content_type=None)
    assert doc["items"][0]["versions"][0]["version"] == "v1"


async def test_not_acceptable(admin):
    async with admin.get("/api/v1/pods", headers={"Accept": "text/html"}) as r:
        assert r.status == 406


async def test_table_for_kubectl_get(admin):
    accept = (
        "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
        "application/json"
    )
    recorded = json.loads((FIXTURES / "pods-edge1.table.json.body").read_bytes())
    async with admin.get(f"/api/v1/pods?{EDGE1}", headers={"Accept": accept}) as r:
        assert r.headers["Content-Type"] == "application/json"
        got = await r.json()
    assert got["columnDefinitions"] == recorded["columnDefinitions"]
    assert [row["cells"][:4] + row["cells"][5:] for row in got["rows"]] == [
        row["cells"][:4] + row["cells"][5:] for row in recorded["rows"]
    ]
    untouched = [i for i, row in enumerate(recorded["rows"]) if row["cells"][0] != "db-0"]  # recorded after a write
    assert [got["rows"][i]["object"] for i in untouched] == [recorded["rows"][i]["object"] for i in untouched]


@pytest.mark.parametrize("accept", ["application/json", PROTOBUF])
async def test_partial_object_metadata_for_the_metadata_client(admin, accept):
    header = f"{accept};as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
    async with admin.get("/api/v1/namespaces/edge/configmaps", headers={"Accept": header}) as r:
        body = await r.read()
    if accept == PROTOBUF:
        u = protobuf.unwrap(body)
        assert (u.api_version, u.kind) == ("meta.k8s.io/v1", "PartialObjectMetadataList")
        names = [protobuf.object_meta(item).name for item in protobuf.parse_list(u.raw).items]
    else:
        doc = json.loads(body)
        assert doc["kind"] == "PartialObjectMetadataList" and doc["items"][0]["kind"] == "PartialObjectMetadata"
        names = [i["metadata"]["name"] for i in doc["items"]]
    assert "web-config" in names and len(names) == 10


async def test_what_kubelet_and_kube_proxy_write_as_the_traces_show(sim, node):
    pb = {"Accept": f"{PROTOBUF}, */*", "Content-Type": PROTOBUF}
    # TokenRequest for a pod's projected service account token
    ref = {"kind": "Pod", "apiVersion": "v1", "name": "db-0", "uid": "u-1"}
    req = {"metadata": {}, "spec": {"audiences": None, "expirationSeconds": 3607, "boundObjectRef": ref}}
    body = protobuf.wrap("authentication.k8s.io/v1", "TokenRequest", schema.to_protobuf(req, "TokenRequest"))
    async with node.post("/api/v1/namespaces/edge/serviceaccounts/default/token", data=body, headers=pb) as r:
        assert r.status == 201
        u = protobuf.unwrap(await r.read())
    tr = schema.to_json(u.kind, u.raw)
    assert tr["status"]["token"].count(".") == 2 and tr["status"]["expirationTimestamp"]
    # core/v1 Event in protobuf, then a PATCH of its count
    ev = {
        "metadata": {"name": "edge-1.1", "namespace": "edge"},
        "reason": "Started",
        "message": "m",
        "involvedObject": {"kind": "Node", "name": "edge-1"},
        "count": 1,
        "type": "Normal",
    }
    body = protobuf.wrap("v1", "Event", schema.to_protobuf(ev, "Event"))
    async with node.post("/api/v1/namespaces/edge/events", data=body, headers=pb) as r:
        assert r.status == 201
    headers = {"Content-Type": "application/strategic-merge-patch+json"}
    status, got = await _json(
        node, "PATCH", "/api/v1/namespaces/edge/events/edge-1.1", data='{"count":2}', headers=headers
    )
    assert status == 200 and got["count"] == 2
    # events.k8s.io/v1 Event (kube-proxy) in JSON, kept apart from core events
    ev2 = {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": "kp.1", "namespace": "default"},
        "reason": "StartKubeProxy",
        "action": "StartKubeProxy",
        "reportingController": "kube-proxy",
        "reportingInstance": "kube-proxy-edge-1",
        "eventTime": "2026-11-24T16:00:00.000000Z",
    }
    status, got = await _json(node, "POST", "/apis/events.k8s.io/v1/namespaces/default/events", json=ev2)
    assert status == 201 and got["eventTime"] == "2026-11-24T16:00:00.000000Z"
    async with node.get("/apis/events.k8s.io/v1/namespaces/default/events/kp.1", headers={"Accept": PROTOBUF}) as r:
        u = protobuf.unwrap(await r.read())
    assert schema.to_json(u.kind, u.raw, api_version=u.api_version)["reportingController"] == "kube-proxy"
    assert (
        sim.get("events.events.k8s.io", "kp.1", "default") is not None and sim.get("events", "kp.1", "default") is None
    )
    # CSINode read, Node re-registration refused, pod deleted with protobuf DeleteOptions
    async with node.get("/apis/storage.k8s.io/v1/csinodes/edge-1", headers=pb) as r:
        assert r.status == 200
    async with node.post("/api/v1/nodes", data=sim.object_bytes("nodes", "edge-1"), headers=pb) as r:
        assert r.status == 409
    opts = protobuf.wrap(
        "meta.k8s.io/v1", "DeleteOptions", schema.to_protobuf({"gracePeriodSeconds": 0}, "DeleteOptions")
    )
    async with node.delete("/api/v1/namespaces/edge/pods/db-2", data=opts, headers=pb) as r:
        assert r.status == 200
    assert sim.get("pods", "db-2", "edge") is None


async def test_rv_zero_lists_ignore_limit_as_the_watch_cache_does(admin):
    status, doc = await _json(admin, "GET", "/api/v1/pods?limit=5&resourceVersion=0")
    assert status == 200 and len(doc["items"]) == 30 and "continue" not in doc["metadata"]


async def test_plain_http_for_baselines(tmp_path):
    import aiohttp

    from edgeproxy import sim as sim_pkg

    async with sim_pkg.Simulator(tls_enabled=False, anonymous=True, pki_dir=tmp_path) as s:
        assert s.url.startswith("http://")
        async with aiohttp.ClientSession() as c, c.get(f"{s.url}/api/v1/namespaces/edge/pods/db-0") as r:
            assert r.status == 200
        assert "client-certificate" not in s.kubeconfig(tmp_path / "k").read_text()
