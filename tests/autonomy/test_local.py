"""local: offline answers from a cache filled with recorded API server answers, over real HTTP."""

import asyncio
import base64
import json
import time

import aiohttp
import pytest
from aiohttp import web

from edgeproxy.autonomy import tokens
from edgeproxy.kube import jsonwire, protobuf, request, schema, watch
from tests import recording
from tests.recording import KUBECTL_JSON, KUBELET, body, info

PODS = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1"
PB = "application/vnd.kubernetes.protobuf"


@pytest.fixture
def c(tmp_path):
    with recording.cache(tmp_path / "cache", node="edge-1", bookmark_interval=0.2,
                         tokens=tokens.TokenBook(tmp_path / "tokens", node="edge-1")) as cache:
        yield cache


@pytest.fixture
async def http(c):
    """An HTTP server whose every request is answered by the local side (the proxy, offline)."""

    async def handler(req: web.Request) -> web.StreamResponse:
        ri = request.parse(req.method, req.rel_url.raw_path, req.rel_url.raw_query_string, req.headers)
        return await c.local.handle(req, ri, "offline")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    async with aiohttp.ClientSession(f"http://{host}:{port}", auto_decompress=False) as session:
        yield session
    await runner.cleanup()


def fill(c, ext="pb"):
    hdrs = KUBELET if ext == "pb" else KUBECTL_JSON
    c.feed(info(PODS, hdrs), f"pods-edge1.list.{ext}")


async def get(http, url, hdrs):
    async with asyncio.timeout(10), http.get(url, headers=hdrs) as r:
        return r.status, r.headers.get("Content-Type"), await r.read()


# ---------------------------------------------------------------- LIST


@pytest.mark.parametrize("ext", ["pb", "json"])
async def test_offline_list_is_the_servers_list_byte_for_byte(c, http, ext):
    fill(c, ext)
    hdrs = KUBELET if ext == "pb" else KUBECTL_JSON
    code, ct, data = await get(http, PODS + "&limit=500&resourceVersion=0", hdrs)
    assert code == 200 and ct == (PB if ext == "pb" else "application/json")
    if ext == "pb":
        assert data == body("pods-edge1.list.pb")
    else:  # the recorded JSON is indented (curl); what client-go gets, and we serve, is the same list compact
        assert json.loads(data) == json.loads(body("pods-edge1.list.json")) and data.count(b"\n") == 1


async def test_a_narrower_list_is_filtered_from_a_wider_complete_view(c, http):
    fill(c)
    code, _, data = await get(http, PODS + "&labelSelector=app%3Dweb", KUBELET)
    assert code == 200
    parts = protobuf.parse_list(protobuf.unwrap(data).raw)
    labels = [protobuf.object_meta(i).labels for i in parts.items]
    every = protobuf.parse_list(protobuf.unwrap(body("pods-edge1.list.pb")).raw).items
    assert labels and all(lbl.get("app") == "web" for lbl in labels)
    assert len(labels) == sum(1 for i in every if protobuf.object_meta(i).labels.get("app") == "web")
    code, _, data = await get(http, "/api/v1/namespaces/edge/pods?fieldSelector=spec.nodeName%3Dedge-1"
                                    "%2Cstatus.phase%3DPending", KUBELET)
    items = protobuf.parse_list(protobuf.unwrap(data).raw).items
    assert code == 200 and [protobuf.selector_fields("pods", i)["status.phase"] for i in items] == ["Pending"]


async def test_no_complete_view_is_503_never_an_empty_or_partial_list(c, http):
    fill(c)
    for url in ("/api/v1/pods", "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-2", "/api/v1/services"):
        code, _, data = await get(http, url, KUBELET)
        assert code == 503 and json.loads(data)["reason"] == "ServiceUnavailable"
    kubectl = await get(http, PODS, KUBECTL_JSON)  # another client's view is not kubectl's
    assert kubectl[0] == 503


async def test_limit_and_continue_with_our_own_tokens(c, http):
    fill(c)
    seen, token, pages = [], "", 0
    while True:
        url = PODS + "&limit=4" + (f"&continue={token}" if token else "")
        code, _, data = await get(http, url, KUBELET)
        assert code == 200
        parts = protobuf.parse_list(protobuf.unwrap(data).raw)
        assert parts.resource_version == "304"
        seen += parts.items
        pages += 1
        token = parts.continue_
        if not token:
            break
    assert pages == 4 and seen == protobuf.parse_list(protobuf.unwrap(body("pods-edge1.list.pb")).raw).items
    code, _, data = await get(http, PODS + "&limit=4&continue=" + base64.urlsafe_b64encode(b"{}").decode(), KUBELET)
    assert code == 410 and json.loads(data)["reason"] == "Expired"


@pytest.mark.parametrize(("query", "code", "reason"), [
    ("&resourceVersion=304", 200, None),
    ("&resourceVersion=100", 200, None),
    ("&resourceVersion=999", 504, "Timeout"),  # newer than the cache: TooLarge, client-go relists with RV=""
    ("&resourceVersion=304&resourceVersionMatch=Exact", 200, None),
    ("&resourceVersion=100&resourceVersionMatch=Exact", 410, "Expired"),
])
async def test_list_resource_version_semantics(c, http, query, code, reason):
    fill(c)
    got, _, data = await get(http, PODS + query, KUBELET)
    assert got == code
    if reason:
        st = json.loads(data)
        assert st["reason"] == reason
        if code == 504:
            assert st["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"


async def test_partial_object_metadata_list_from_full_objects(c, http):
    fill(c)
    accept = (f"{PB};as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json;"
              "as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json")
    code, _, data = await get(http, PODS, {**KUBELET, "Accept": accept})
    u = protobuf.unwrap(data)
    assert code == 200 and (u.kind, u.api_version) == ("PartialObjectMetadataList", "meta.k8s.io/v1")
    items = protobuf.parse_list(u.raw).items
    full = protobuf.parse_list(protobuf.unwrap(body("pods-edge1.list.pb")).raw).items
    assert [protobuf.metadata_field(i) for i in items] == [protobuf.metadata_field(i) for i in full]


async def test_table_is_answered_with_the_plain_list(c, http):
    fill(c, "json")
    accept = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
              "application/json")
    code, ct, data = await get(http, PODS, {**KUBECTL_JSON, "Accept": accept})
    assert code == 200 and ct == "application/json" and json.loads(data) == json.loads(body("pods-edge1.list.json"))


# ---------------------------------------------------------------- GET


async def test_get_is_the_stored_answer_or_the_object_from_a_view(c, http):
    fill(c)
    c.feed(info("/api/v1/namespaces/edge/configmaps/web-config"), "configmap-web-config.get.pb")
    code, _, data = await get(http, "/api/v1/namespaces/edge/configmaps/web-config", KUBELET)
    assert code == 200 and data == body("configmap-web-config.get.pb")
    item = next(i for i in protobuf.parse_list(protobuf.unwrap(body("pods-edge1.list.pb")).raw).items
                if protobuf.object_meta(i).name == "db-0")
    code, _, data = await get(http, "/api/v1/namespaces/edge/pods/db-0", KUBELET)
    assert code == 200 and data == protobuf.wrap("v1", "Pod", item)


async def test_get_not_cached_is_503_and_404_only_when_a_complete_view_proves_it(c, http):
    fill(c)
    assert (await get(http, "/api/v1/namespaces/edge/secrets/db-credentials", KUBELET))[0] == 503
    # pods bound to edge-1 are all in the view, but a pod of another node might exist: not proof
    assert (await get(http, "/api/v1/namespaces/edge/pods/no-such-pod", KUBELET))[0] == 503
    c.feed(info("/api/v1/nodes?fieldSelector=metadata.name%3Dedge-1"), "nodes-edge1.list.pb")
    assert (await get(http, "/api/v1/nodes/edge-1", KUBELET))[0] == 200
    assert (await get(http, "/api/v1/nodes/edge-2", KUBELET))[0] == 503


async def test_discovery_offline(c, http):
    c.feed(info("/api", KUBECTL_JSON), "api.json")
    code, ct, data = await get(http, "/api", KUBECTL_JSON)
    assert (code, ct, data) == (200, "application/json", body("api.json"))
    assert (await get(http, "/version", KUBECTL_JSON))[0] == 503


# ---------------------------------------------------------------- WATCH


async def read_frames(resp, enc, n, timeout=10):
    splitter = watch.ProtobufSplitter() if enc == "pb" else watch.JsonSplitter()
    frames = []
    async with asyncio.timeout(timeout):
        while len(frames) < n:
            chunk = await resp.content.readany()
            if not chunk:
                break
            frames += splitter.feed(chunk)
    return frames


def decoded(enc, frame):
    if enc == "pb":
        ev = protobuf.decode_event(frame)
        return ev.type, protobuf.object_meta(ev.raw)
    ev = jsonwire.decode_event(frame)
    return ev.type, jsonwire.object_meta(ev.obj)


@pytest.mark.parametrize("ext", ["pb", "json"])
async def test_watch_holds_with_bookmarks_and_ends_when_upstream_returns(c, http, ext):
    fill(c, ext)
    hdrs = KUBELET if ext == "pb" else KUBECTL_JSON
    url = PODS + "&watch=true&resourceVersion=304&allowWatchBookmarks=true&timeoutSeconds=300"
    async with http.get(url, headers=hdrs) as r:
        assert r.status == 200
        frames = await read_frames(r, ext, 2)  # one at once, one after the (test-short) interval
        assert [decoded(ext, f)[0] for f in frames] == ["BOOKMARK", "BOOKMARK"]
        assert decoded(ext, frames[0])[1].resource_version == "304"
        c.local.upstream_changed(True)
        async with asyncio.timeout(2):
            rest = await r.read()
        assert r.content.at_eof()
        del rest


@pytest.mark.parametrize("bookmarks", [False, True])
async def test_the_upstreams_return_ends_no_watch_within_its_first_second(c, http, bookmarks):
    """client-go takes a watch that closes within a second of its start with no event as an error and relists (seen
    with a real kubelet restarted offline just before the WAN came back): such a watch lasts past that second."""
    fill(c)
    url = PODS + "&watch=true&resourceVersion=304&timeoutSeconds=300" + ("&allowWatchBookmarks=true" * bookmarks)
    c.local.upstream_changed(True)  # the API server is back as the watch opens
    start = time.monotonic()
    async with http.get(url, headers=KUBELET) as r:
        assert r.status == 200
        async with asyncio.timeout(10):
            data = await r.read()
    assert time.monotonic() - start >= 1.0
    frames = watch.ProtobufSplitter().feed(data)
    types = [protobuf.decode_event(f).type for f in frames]
    # with bookmarks: one at once, (the test's short interval ones,) one as it ends, as the API server does
    assert (set(types) == {"BOOKMARK"} and len(types) >= 2) if bookmarks else types == []


async def test_watch_ends_at_its_timeout(c, http):
    fill(c)
    async with http.get(PODS + "&watch=true&resourceVersion=304&timeoutSeconds=1", headers=KUBELET) as r:
        async with asyncio.timeout(5):
            assert await r.read() == b""  # no bookmarks asked: nothing, then the end


@pytest.mark.parametrize("rv", ["100", "999"])
async def test_watch_from_a_version_the_view_cannot_continue_is_410(c, http, rv):
    fill(c)
    async with http.get(PODS + f"&watch=true&resourceVersion={rv}", headers=KUBELET) as r:
        assert r.status == 200
        async with asyncio.timeout(5):
            data = await r.read()
    ev = protobuf.decode_event(watch.ProtobufSplitter().feed(data)[0])
    st = protobuf.parse_status(ev.raw)
    assert ev.type == "ERROR" and st["code"] == 410 and st["reason"] == "Expired"


@pytest.mark.parametrize("ext", ["pb", "json"])
async def test_watch_list_replays_the_view_then_the_end_bookmark(c, http, ext):
    fill(c, ext)
    hdrs = KUBELET if ext == "pb" else KUBECTL_JSON
    url = (PODS + "&watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
           "&timeoutSeconds=300")
    async with http.get(url, headers=hdrs) as r:
        frames = await read_frames(r, ext, 16)
        c.local.upstream_changed(True)
    events = [decoded(ext, f) for f in frames]
    assert [t for t, _ in events] == ["ADDED"] * 15 + ["BOOKMARK"]
    end = events[-1][1]
    assert end.resource_version == "304" and end.annotations["k8s.io/initial-events-end"] == "true"
    recorded = body(f"watchlist.pods-edge1.{ext}")
    want = [decoded(ext, f)[1].annotations["kubernetes.io/initial-events-list-blueprint"]
            for f in (watch.ProtobufSplitter() if ext == "pb" else watch.JsonSplitter()).feed(recorded)[-1:]]
    assert end.annotations["kubernetes.io/initial-events-list-blueprint"] == want[0]


# ---------------------------------------------------------------- writes


async def send(http, method, url, data, ct, hdrs=KUBELET):
    async with asyncio.timeout(10), http.request(method, url, data=data, headers={**hdrs, "Content-Type": ct}) as r:
        return r.status, r.headers.get("Content-Type"), await r.read()


async def test_node_status_patch_by_a_vendor_node_agent_and_a_later_get(c, http):
    agent = {"User-Agent": "k3s/v1.32.0+k3s1 (linux/amd64) kubernetes/cd13ec4", "Accept": "application/json"}
    c.feed(info("/api/v1/nodes?fieldSelector=metadata.name%3Dedge-1", agent), "nodes-edge1.list.json")
    patch = {"status": {"$setElementOrder/conditions": [{"type": "Ready"}],
                        "conditions": [{"type": "Ready", "lastHeartbeatTime": "2026-11-24T16:00:00Z"}]}}
    code, _, data = await send(http, "PATCH", "/api/v1/nodes/edge-1/status?timeout=10s", json.dumps(patch),
                               "application/strategic-merge-patch+json", agent)
    assert code == 200
    node = json.loads(data)
    ready = next(x for x in node["status"]["conditions"] if x["type"] == "Ready")
    assert ready["lastHeartbeatTime"] == "2026-11-24T16:00:00Z" and ready["status"] == "True"
    assert node["kind"] == "Node" and node["spec"] == json.loads(body("nodes-edge1.list.json"))["items"][0]["spec"]
    c.sync()
    code, _, again = await get(http, "/api/v1/nodes/edge-1?resourceVersion=0", agent)
    assert code == 200 and json.loads(again) == node


async def test_kubelet_node_status_patch_on_a_protobuf_node(c, http):
    c.feed(info("/api/v1/nodes?fieldSelector=metadata.name%3Dedge-1"), "nodes-edge1.list.pb")
    patch = {"status": {"$setElementOrder/conditions": [{"type": "Ready"}],
                        "conditions": [{"type": "Ready", "lastHeartbeatTime": "2026-11-24T16:00:00Z"}]}}
    code, ct, data = await send(http, "PATCH", "/api/v1/nodes/edge-1/status?timeout=10s", json.dumps(patch),
                                "application/strategic-merge-patch+json", {**KUBELET, "User-Agent": "hollow-kubelet"})
    assert code == 200 and ct == PB
    node = schema.to_json("Node", protobuf.unwrap(data).raw)
    ready = next(x for x in node["status"]["conditions"] if x["type"] == "Ready")
    assert ready["lastHeartbeatTime"] == "2026-11-24T16:00:00Z"
    before = schema.to_json("Node", protobuf.parse_list(protobuf.unwrap(body("nodes-edge1.list.pb")).raw).items[0])
    assert node["status"]["nodeInfo"] == before["status"]["nodeInfo"] and node["spec"] == before["spec"]
    c.sync()
    code, _, again = await get(http, "/api/v1/nodes/edge-1?resourceVersion=0", KUBELET)
    assert code == 200 and again == data


async def test_kubelet_writes_offline(c, http):
    c.feed(info("/api/v1/nodes?fieldSelector=metadata.name%3Dedge-1"), "nodes-edge1.list.pb")
    node = protobuf.parse_list(protobuf.unwrap(body("nodes-edge1.list.pb")).raw).items[0]
    node_pb = protobuf.wrap("v1", "Node", node)
    code, _, data = await send(http, "POST", "/api/v1/nodes", node_pb, PB)
    assert code == 409 and json.loads(data)["reason"] == "AlreadyExists"
    event = body("configmap-web-config.get.pb")  # any protobuf object: an event is echoed as sent
    assert await send(http, "POST", "/api/v1/namespaces/default/events", event, PB) == (201, PB, event)
    code, _, _ = await send(http, "PATCH", "/api/v1/namespaces/edge/pods/web-0/status", b"{}",
                            "application/strategic-merge-patch+json")
    assert code == 503
    code, _, data = await send(http, "DELETE", "/api/v1/namespaces/edge/pods/web-0", b"", PB)
    assert code == 503


async def test_lease_renewal_offline_and_a_later_get(c, http):
    lease = json.dumps({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1",
                        "metadata": {"name": "edge-1", "namespace": "kube-node-lease", "resourceVersion": "900"},
                        "spec": {"holderIdentity": "edge-1", "leaseDurationSeconds": 40,
                                 "renewTime": "2026-11-24T16:00:00.000000Z"}}).encode()
    url = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1?timeout=10s"
    code, _, data = await send(http, "PUT", url, lease, "application/json", {**KUBELET, "Accept": "application/json"})
    assert code == 200 and json.loads(data)["metadata"]["resourceVersion"] == "901"
    again = json.loads(data)
    again["spec"]["renewTime"] = "2026-11-24T16:00:10.000000Z"
    code, _, data = await send(http, "PUT", url, json.dumps(again).encode(), "application/json",
                               {**KUBELET, "Accept": "application/json"})
    assert json.loads(data)["metadata"]["resourceVersion"] == "901"  # one past upstream, however many renewals
    c.sync()
    code, _, data = await get(http, url.split("?")[0], {**KUBELET, "Accept": "application/json"})
    assert code == 200 and json.loads(data)["spec"]["renewTime"] == "2026-11-24T16:00:10.000000Z"


WEB_POD = ("web-ec1d301e21-146d3", "8dfb8263-8198-42ff-b178-e6cf1f3ce2b4")  # in pods-edge1, service account default


def token_ask(name="", uid="", kind="Pod"):
    spec = {"expirationSeconds": 3607}
    if name:
        spec["boundObjectRef"] = {"kind": kind, "apiVersion": "v1", "name": name, "uid": uid}
    return json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})


async def ask_token(http, ask, sa="default", hdrs=None):
    code, _, data = await send(http, "POST", f"/api/v1/namespaces/edge/serviceaccounts/{sa}/token", ask,
                               "application/json", hdrs or {**KUBELET, "Accept": "application/json"})
    return code, json.loads(data)


async def test_token_request_offline_for_a_pod_bound_to_this_node(c, http):
    fill(c)
    code, doc = await ask_token(http, token_ask(*WEB_POD))
    assert code == 201
    claims = tokens.verify(doc["status"]["token"], c.local.tokens.signer.public_key())
    assert claims["kubernetes.io"]["pod"] == {"name": WEB_POD[0], "uid": WEB_POD[1]}
    assert claims["sub"] == "system:serviceaccount:edge:default"
    code, doc = await ask_token(http, token_ask(*WEB_POD), hdrs={**KUBELET, "Authorization": "Bearer pod-token"})
    assert code == 503  # only the node's identity gets tokens minted


async def test_offline_tokens_only_as_node_restriction_allows_them(c, http):
    """Issue 14 S1: a TokenRequest bound to a pod that does not exist (or to nothing) got a token signed by the proxy,
    and with it the account's cached Secrets. Now: only for pods of this node in the node's cache, with their uid
    and their own service account."""
    fill(c)
    code, doc = await ask_token(http, token_ask())  # no binding at all
    assert (code, doc["reason"]) == (403, "Forbidden") and "not bound to a pod" in doc["message"]
    code, doc = await ask_token(http, token_ask("no-such-pod", "u1"))  # the probe's reproduction
    assert code == 503 and "not in the node's cache" in doc["message"]
    code, doc = await ask_token(http, token_ask(WEB_POD[0], "another-uid"))
    assert code == 403 and "does not match the UID" in doc["message"]
    code, doc = await ask_token(http, token_ask(WEB_POD[0], ""))
    assert code == 403 and "without a uid" in doc["message"]
    code, doc = await ask_token(http, token_ask("edge-1", "n1", kind="Node"))
    assert code == 403
    code, doc = await ask_token(http, token_ask(*WEB_POD), sa="admin")  # not the pod's service account
    assert code == 400 and "the pod uses serviceaccount 'default'" in doc["message"]
    # a pod the cache knows on another node
    other = json.loads(body("pods-edge1.list.json"))
    other["items"] = [p for p in other["items"] if p["metadata"]["name"] == WEB_POD[0]]
    other["items"][0]["spec"]["nodeName"] = "edge-2"
    other["metadata"]["resourceVersion"] = "999999"
    c.feed(info("/api/v1/namespaces/edge/pods", {**KUBELET, "Accept": "application/json"}), "pods-edge1.list.json",
           data=json.dumps(other).encode())
    code, doc = await ask_token(http, token_ask(*WEB_POD))
    assert code == 403 and "different node" in doc["message"]


async def test_a_failed_over_watch_is_held_briefly_while_the_prober_still_says_online(c, http):
    fill(c)
    c.local.is_online = lambda: True
    c.local.failover_hold = 0.3
    url = PODS + "&watch=true&resourceVersion=304&allowWatchBookmarks=true&timeoutSeconds=300"
    async with http.get(url, headers=KUBELET) as r, asyncio.timeout(5):
        data = await r.read()  # ends by itself, long before timeoutSeconds: the client re-watches
    frames = watch.ProtobufSplitter().feed(data)
    assert frames and all(protobuf.decode_event(f).type == "BOOKMARK" for f in frames)


async def test_a_watch_list_newer_than_the_view_is_410(c, http):
    fill(c)
    url = (PODS + "&watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
           "&resourceVersion=999")
    async with http.get(url, headers=KUBELET) as r, asyncio.timeout(5):
        data = await r.read()
    ev = protobuf.decode_event(watch.ProtobufSplitter().feed(data)[0])
    assert ev.type == "ERROR" and protobuf.parse_status(ev.raw)["code"] == 410


async def test_a_repeated_offline_list_is_served_from_the_joined_body(c, http):
    fill(c)
    first = await get(http, PODS, KUBELET)
    again = await get(http, PODS + "&resourceVersion=0", KUBELET)
    assert first == again and first[2] == body("pods-edge1.list.pb")
    assert c.local.bodies.hits == 1
    c.feed(info(PODS + "&watch=true&resourceVersion=304&allowWatchBookmarks=true"), "watch.pods-edge1.pb")
    changed = await get(http, PODS, KUBELET)  # the view moved: joined afresh
    assert changed[0] == 200 and changed[2] != first[2] and c.local.bodies.hits == 1


async def test_a_failed_over_watch_ends_when_the_upstream_returns_not_after_a_fixed_hold(c, http):
    """A watch answered locally while the prober still said online (per-request failover) turns into an ordinary
    offline watch once the prober agrees, so it ends when the upstream is back, not after failover_hold."""
    fill(c)
    state = {"online": True}
    c.local.is_online = lambda: state["online"]
    c.local.failover_hold = 3600.0  # were the hold what ended it, this test would time out
    url = PODS + "&watch=true&resourceVersion=304&allowWatchBookmarks=true&timeoutSeconds=3600"
    async with http.get(url, headers=KUBELET) as r:
        assert r.status == 200
        await read_frames(r, "pb", 1)  # the bookmark sent at once: the watch is being held
        state["online"] = False
        c.local.upstream_changed(False)  # the prober turns offline
        await read_frames(r, "pb", 1)  # still held, bookmarks flowing
        state["online"] = True
        c.local.upstream_changed(True)  # and back
        async with asyncio.timeout(5):
            await r.read()
        assert r.content.at_eof()
