"""The leader's served view against the simulator: one upstream list+watch per query, list/watch semantics byte-equal
to what the API server answers for the same query, 410 outside the ring, bookmarks, watch-list, the LMDB copy."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from cache import store, writer
from edgeproxy import sim as sim_pkg
from edgeproxy import upstream
from edgeproxy.kube import jsonwire, protobuf
from edgeproxy.kube import request as kube_request
from edgeproxy.kube import status as kube_status
from edgeproxy.kube import watch as kube_watch
from edgeproxy.pool import state, view

PB = "application/vnd.kubernetes.protobuf"
JSON = "application/json"
SVC = "/api/v1/services"
SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
KP_SELECTOR = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"


@pytest.fixture
async def sim(tmp_path):
    async with sim_pkg.Simulator(pki_dir=tmp_path / "pki") as s:
        s.seed(services=5, endpointslices=5)
        yield s


@pytest.fixture
async def up(sim, tmp_path):
    u = upstream.Upstream(upstream.load_kubeconfig(sim.kubeconfig(tmp_path / "node.kubeconfig", "node")),
                          probe_interval=3600, http2=False)
    await u.start()
    yield u
    await u.close()


@pytest.fixture
def cache(tmp_path):
    st = store.Store.open(str(tmp_path / "cache"), map_size=64 << 20, durable=False)
    w = writer.Writer(st).start()
    yield st, w
    w.close()
    st.close()


@pytest.fixture
async def views(up, cache):
    st, w = cache
    vs = view.Views(up, store=st, writer=w, bookmark_interval=0.3, wait=2.0)
    yield vs
    await vs.close()


def info(path, accept=PB):
    p, _, q = path.partition("?")
    return kube_request.parse("GET", p, q, {"Accept": accept})


async def direct(sim, path, accept=PB):
    """What the API server itself answers (status, body)."""
    conn = aiohttp.TCPConnector(ssl=sim.client_ssl("node"))
    async with aiohttp.ClientSession(connector=conn) as s, s.get(sim.url + path, headers={"Accept": accept}) as r:
        return r.status, await r.read()


async def body_of(reply):
    if reply.stream is None:
        return reply.body
    return b"".join([c async for c in reply.stream])


class Frames:
    """The frames of a watch reply's stream, read as they come."""

    def __init__(self, reply, encoding):
        self.it = reply.stream.__aiter__()
        self.split = kube_watch.ProtobufSplitter() if encoding == "protobuf" else kube_watch.JsonSplitter()
        self.encoding = encoding
        self.pending = []

    async def next(self, timeout=5.0):
        async with asyncio.timeout(timeout):
            while not self.pending:
                self.pending.extend(self.split.feed(await self.it.__anext__()))
        return self.pending.pop(0)

    def decode(self, frame):
        if self.encoding == "protobuf":
            ev = protobuf.decode_event(frame)
            return ev.type, protobuf.object_meta(ev.raw)
        ev = jsonwire.decode_event(frame)
        return ev.type, jsonwire.object_meta(ev.doc)

    async def close(self):
        await self.it.aclose()


async def until(cond, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.02)


def upstream_watches(sim, resource):
    return sum(1 for w in sim.api.watches if w.res.name == resource)


def svc(name, labels=None):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "edge", "labels": labels or {}},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "type": "ClusterIP"}}


@pytest.mark.parametrize(("path", "accept"), [(SVC, PB), (SVC, JSON), (SLICES, PB), (SLICES, JSON),
                                              (f"{SVC}?labelSelector={KP_SELECTOR}", PB)])
async def test_a_list_is_byte_equal_to_the_api_servers_answer(sim, views, path, accept):
    reply = await views.reply(info(path, accept))
    assert reply.status == 200 and not reply.fallback
    assert reply.headers["Content-Type"] == accept
    assert (200, reply.body) == await direct(sim, path, accept)
    # and still after a change of that resource, once the view has it
    if path.startswith(SLICES):
        sim.patch("endpointslices", "load-00000-x1", {"metadata": {"labels": {"changed": "yes"}}}, namespace="edge")
    else:
        sim.create("services", svc("late"), "edge")
    v = next(iter(views.views.values()))
    await v.reached(str(sim.store.rv), 5)
    again = await views.reply(info(path, accept))
    assert (200, again.body) == await direct(sim, path, accept)


@pytest.mark.parametrize("accept", [PB, JSON])
async def test_watch_events_are_the_api_servers_bytes(sim, views, accept):
    enc = "protobuf" if accept == PB else "json"
    listed = await views.reply(info(SVC, accept))
    rv = (protobuf.parse_list(protobuf.unwrap(listed.body).raw).resource_version if enc == "protobuf"
          else json.loads(listed.body)["metadata"]["resourceVersion"])
    ours = Frames(await views.reply(info(f"{SVC}?watch=true&resourceVersion={rv}", accept)), enc)
    conn = aiohttp.TCPConnector(ssl=sim.client_ssl("node"))
    async with aiohttp.ClientSession(connector=conn) as s, s.get(
            f"{sim.url}{SVC}?watch=true&resourceVersion={rv}", headers={"Accept": accept}) as r:
        theirs = kube_watch.ProtobufSplitter() if enc == "protobuf" else kube_watch.JsonSplitter()
        sim.create("services", svc("w1"), "edge")
        sim.patch("services", "w1", {"metadata": {"labels": {"a": "b"}}}, namespace="edge")
        sim.delete("services", "w1", "edge")
        got_theirs = []
        async with asyncio.timeout(5):
            while len(got_theirs) < 3:
                got_theirs.extend(theirs.feed(await r.content.readany()))
    got_ours = [await ours.next() for _ in range(3)]
    await ours.close()
    assert [ours.decode(f)[0] for f in got_ours] == ["ADDED", "MODIFIED", "DELETED"]
    assert got_ours == got_theirs


async def test_one_upstream_watch_serves_every_follower(sim, views):
    readers = [Frames(await views.reply(info(f"{SVC}?watch=true", PB)), "protobuf") for _ in range(3)]
    for r in readers:  # 5 seeded services + the fixture's own, replayed as ADDED
        assert r.decode(await r.next())[0] == "ADDED"
    await until(lambda: upstream_watches(sim, "services") >= 1)
    assert upstream_watches(sim, "services") == 1
    v = next(iter(views.views.values()))
    assert (v.lists, v.watches, v.watchers) == (1, 1, 3)
    for r in readers:
        await r.close()


async def test_a_watch_from_before_the_ring_is_gone_as_the_api_server_says(sim, up, cache):
    st, w = cache
    vs = view.Views(up, store=st, writer=w, ring_events=2, wait=2.0)
    try:
        listed = await vs.reply(info(SVC, JSON))
        rv = json.loads(listed.body)["metadata"]["resourceVersion"]
        for i in range(4):
            sim.create("services", svc(f"r{i}"), "edge")
        v = next(iter(vs.views.values()))
        await v.reached(str(sim.store.rv), 5)
        reply = await vs.reply(info(f"{SVC}?watch=true&resourceVersion={rv}", JSON))
        assert reply.status == 200
        frames = Frames(reply, "json")
        ev = jsonwire.decode_event(await frames.next())
        assert ev.type == "ERROR" and ev.doc["code"] == 410 and ev.doc["reason"] == "Expired"
        assert ev.doc["message"].startswith(f"too old resource version: {rv} (")
        # a follower whose API server is reachable is told to ask it instead (it may still hold that history)
        fb = await vs.reply(info(f"{SVC}?watch=true&resourceVersion={rv}", JSON), fallback_ok=True)
        assert fb.status == 503 and fb.fallback.startswith("too old resource version")
        # inside the ring: the two last events, then nothing lost
        ring_from = str(int(sim.store.rv) - 2)
        frames = Frames(await vs.reply(info(f"{SVC}?watch=true&resourceVersion={ring_from}", JSON)), "json")
        names = [frames.decode(await frames.next())[1].name for _ in range(2)]
        assert names == ["r2", "r3"]
        await frames.close()
    finally:
        await vs.close()


@pytest.mark.parametrize("accept", [PB, JSON])
async def test_bookmarks_come_periodically_at_the_views_version(sim, views, accept):
    enc = "protobuf" if accept == PB else "json"
    await views.reply(info(SVC, accept))
    v = next(iter(views.views.values()))
    frames = Frames(await views.reply(info(f"{SVC}?watch=true&allowWatchBookmarks=true&resourceVersion={v.st.rv}",
                                           accept)), enc)
    typ, meta = frames.decode(await frames.next())
    assert (typ, meta.resource_version) == ("BOOKMARK", v.st.rv)
    sim.create("services", svc("b1"), "edge")
    typ, meta = frames.decode(await frames.next())
    assert (typ, meta.name) == ("ADDED", "b1")
    typ, meta = frames.decode(await frames.next())
    assert (typ, meta.resource_version) == ("BOOKMARK", str(sim.store.rv))
    await frames.close()


@pytest.mark.parametrize("accept", [PB, JSON])
async def test_watch_list_sends_every_object_then_the_initial_events_end_bookmark(sim, views, accept):
    enc = "protobuf" if accept == PB else "json"
    q = f"{SVC}?watch=true&sendInitialEvents=true&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan"
    frames = Frames(await views.reply(info(q, accept)), enc)
    _, listed = await direct(sim, SVC, accept)
    if enc == "protobuf":
        want = sorted(protobuf.object_meta(r).name for r in protobuf.parse_list(protobuf.unwrap(listed).raw).items)
    else:
        want = sorted(i["metadata"]["name"] for i in json.loads(listed)["items"])
    got = []
    while True:
        typ, meta = frames.decode(await frames.next())
        if typ == "BOOKMARK":
            break
        assert typ == "ADDED"
        got.append(meta.name)
    assert sorted(got) == want
    assert meta.annotations.get(state.INITIAL_EVENTS_END) == "true"
    await frames.close()


async def test_a_version_newer_than_the_view_waits_then_is_too_large(sim, views):
    await views.reply(info(SVC, JSON))
    reply = await views.reply(info(f"{SVC}?resourceVersion={int(sim.store.rv) + 100}", JSON))
    doc = json.loads(reply.body)
    assert (reply.status, doc["reason"]) == (504, "Timeout")
    assert doc["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"


async def test_what_the_view_does_not_keep_is_sent_back_to_the_api_server(views):
    for path, accept in [(f"{SVC}/x", PB), (SVC, "application/json;as=Table;v=v1;g=meta.k8s.io")]:
        reply = await views.reply(info(path, accept))  # a GET no view holds (none started for it); a Table
        assert reply.status == 503 and reply.fallback, path


async def test_an_upstream_watch_cut_is_resumed_without_a_relist_and_followers_miss_nothing(sim, views):
    frames = Frames(await views.reply(info(f"{SVC}?watch=true&resourceVersion=0", JSON)), "json")
    v = next(iter(views.views.values()))
    for _ in range(len(v.st.objects)):
        await frames.next()
    await until(lambda: upstream_watches(sim, "services") == 1)
    assert sim.cut_watches() == 1
    sim.create("services", svc("after-cut"), "edge")
    typ, meta = frames.decode(await frames.next())
    assert (typ, meta.name) == ("ADDED", "after-cut")
    assert v.lists == 1 and v.watches >= 2
    await frames.close()


async def test_a_restarted_leader_serves_its_last_view_from_the_cache_while_the_api_server_is_down(
        sim, up, cache, tmp_path):
    st, w = cache
    first = view.Views(up, store=st, writer=w, wait=2.0)
    listed = await first.reply(info(SVC, PB))
    await first.close()
    await w.flush()
    await sim.down()
    up2 = upstream.Upstream(upstream.load_kubeconfig(tmp_path / "node.kubeconfig"), probe_interval=3600,
                            connect_timeout=0.5)
    await up2.start()
    second = view.Views(up2, store=st, writer=w, wait=0.5)
    try:
        again = await second.reply(info(SVC, PB))
        assert (again.status, again.body) == (200, listed.body)
        watch = Frames(await second.reply(info(f"{SVC}?watch=true&allowWatchBookmarks=true", PB)), "protobuf")
        assert watch.decode(await watch.next())[0] == "ADDED"
        await watch.close()
    finally:
        await second.close()
        await up2.close()


async def test_a_node_gets_the_view_over_the_peer_listener_and_a_foreign_certificate_nothing(sim, views, tmp_path):
    from aiohttp import web

    from edgeproxy import tls
    from edgeproxy.pool import peers

    listener = peers.PeerListener()
    listener.lead(peers.views_answer(views))
    runner = web.AppRunner(listener.app())
    await runner.setup()
    pki = sim.pki
    site = web.TCPSite(runner, "127.0.0.1", 0,
                       ssl_context=peers.server_context(pki.server_cert, pki.server_key, pki.ca_cert))
    await site.start()
    url = f"https://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    foreign = tls.make_ca("not-the-cluster")
    tls.issue(foreign, "system:node:edge-9", ("system:nodes",), client=True).write(tmp_path / "f.crt",
                                                                                  tmp_path / "f.key")
    try:
        conn = aiohttp.TCPConnector(ssl=sim.client_ssl("node"))
        async with aiohttp.ClientSession(connector=conn) as s:
            async with s.get(url + SVC, headers={"Accept": PB}) as r:
                assert (r.status, await r.read()) == await direct(sim, SVC, PB)
            async with s.get(url + "/api/v1/namespaces/kube-system/secrets", headers={"Accept": PB}) as r:
                assert r.status == 403
        conn = aiohttp.TCPConnector(ssl=sim.client_ssl("admin"))
        async with aiohttp.ClientSession(connector=conn) as s, s.get(url + SVC) as r:
            assert r.status == 403 and "serves nodes only" in (await r.json())["message"]
        ctx = sim.client_ssl("node")
        ctx.load_cert_chain(tmp_path / "f.crt", tmp_path / "f.key")
        conn = aiohttp.TCPConnector(ssl=ctx)
        async with aiohttp.ClientSession(connector=conn) as s:
            with pytest.raises(aiohttp.ClientError):
                async with s.get(url + SVC) as r:
                    await r.read()
        listener.lead(None)
        conn = aiohttp.TCPConnector(ssl=sim.client_ssl("node"))
        async with aiohttp.ClientSession(connector=conn) as s, s.get(url + SVC) as r:
            assert r.status == 503 and r.headers[view.FALLBACK_HEADER] == "not the leader"
    finally:
        await runner.cleanup()


async def test_an_exact_list_at_a_version_the_view_does_not_hold_is_expired(sim, views):
    listed = await views.reply(info(SVC, JSON))
    rv = json.loads(listed.body)["metadata"]["resourceVersion"]
    sim.create("services", svc("moved"), "edge")
    v = next(iter(views.views.values()))
    await v.reached(str(sim.store.rv), 5)
    old = await views.reply(info(f"{SVC}?resourceVersion={rv}&resourceVersionMatch=Exact", JSON))
    assert (old.status, json.loads(old.body)["reason"]) == (410, "Expired")
    now = await views.reply(info(f"{SVC}?resourceVersion={v.st.rv}&resourceVersionMatch=Exact", JSON))
    assert now.status == 200
    # NotOlderThan (the default) an older version: the view's newer state, as the API server answers
    older = await views.reply(info(f"{SVC}?resourceVersion={rv}", JSON))
    assert older.status == 200 and json.loads(older.body)["metadata"]["resourceVersion"] == v.st.rv


async def test_a_watch_from_a_version_the_view_has_not_reached_is_served_from_the_views_own(sim, views):
    """A client moved from the API server holds the cluster's newest version (its bookmarks): its watch is taken on,
    and no later event is missed."""
    await views.reply(info(SLICES, JSON))
    sim.create("services", svc("elsewhere"), "edge")  # the cluster's version moves, no event for the slices' view
    newer = str(sim.store.rv)
    frames = Frames(await views.reply(info(f"{SLICES}?watch=true&resourceVersion={newer}", JSON)), "json")
    sim.patch("endpointslices", "load-00002-x1", {"metadata": {"labels": {"moved": "yes"}}}, namespace="edge")
    typ, meta = frames.decode(await frames.next())
    assert (typ, meta.name) == ("MODIFIED", "load-00002-x1")
    await frames.close()


@pytest.mark.parametrize("accept", [PB, JSON])
async def test_a_get_is_answered_from_a_view_that_holds_its_namespace_byte_equal_to_the_api_server(sim, views,
                                                                                                   accept):
    await views.reply(info(SVC, accept))  # the cluster-wide view (no selectors) of Services in this encoding
    name = sorted(k[1] for k in sim.store.snapshot("services") if k[0] == "edge")[0]
    for path in (f"/api/v1/namespaces/edge/services/{name}", "/api/v1/namespaces/edge/services/nowhere"):
        reply = await views.reply(info(path, accept))
        assert not reply.fallback, path
        assert (reply.status, reply.body) == await direct(sim, path, accept), path
    # a version the view has not reached yet: waited for, then the API server
    later = await views.reply(info(f"/api/v1/namespaces/edge/services/{name}?resourceVersion="
                                   f"{int(sim.store.rv) + 100}", accept))
    assert later.status == 503 and later.fallback == "too large resource version"
    # the other encoding has no view: the API server (a GET starts none)
    other = await views.reply(info(f"/api/v1/namespaces/edge/services/{name}", JSON if accept == PB else PB))
    assert other.fallback and len(views.views) == 1


async def test_a_get_from_a_view_with_selectors_only_answers_what_it_holds(sim, views):
    sim.create("services", svc("kept", {"keep": "yes"}), "edge")
    sim.create("services", svc("other"), "edge")
    await views.reply(info(f"{SVC}?labelSelector=keep%3Dyes", JSON))
    reply = await views.reply(info("/api/v1/namespaces/edge/services/kept", JSON))
    assert (reply.status, reply.body) == await direct(sim, "/api/v1/namespaces/edge/services/kept", JSON)
    assert (await views.reply(info("/api/v1/namespaces/edge/services/other", JSON))).fallback  # not in it: unknown


def page_meta(body, enc):
    if enc == "protobuf":
        p = protobuf.parse_list(protobuf.unwrap(body).raw)
        return p.resource_version, p.continue_, len(p.items)
    doc = json.loads(body)
    return doc["metadata"]["resourceVersion"], doc["metadata"].get("continue", ""), len(doc["items"])


@pytest.mark.parametrize("accept", [PB, JSON])
async def test_a_paged_list_is_the_api_servers_pages_and_stays_consistent_while_the_view_moves(sim, views, accept):
    enc = "protobuf" if accept == PB else "json"
    await views.reply(info(SVC, accept))
    v = next(iter(views.views.values()))
    first = await views.reply(info(f"{SVC}?limit=2", accept))
    assert (200, first.body) == await direct(sim, f"{SVC}?limit=2", accept)  # the API server's own token
    rv, token, n = page_meta(first.body, enc)
    assert n == 2 and token and rv == v.st.rv
    # the view moves on; the next page is still the list at the first page's version, as the API server's
    sim.create("services", svc("a-late-one"), "edge")
    await v.reached(str(sim.store.rv), 5)
    second = await views.reply(info(f"{SVC}?limit=2&continue={token}", accept))
    assert (200, second.body) == await direct(sim, f"{SVC}?limit=2&continue={token}", accept)
    rest = await views.reply(info(f"{SVC}?continue={page_meta(second.body, enc)[1]}", accept))
    assert page_meta(rest.body, enc)[1] == "" and page_meta(rest.body, enc)[0] == rv
    # resourceVersion "0": the watch cache ignores limit, one whole page at the view's version
    whole = await views.reply(info(f"{SVC}?limit=2&resourceVersion=0", accept))
    assert page_meta(whole.body, enc) == (v.st.rv, "", len(v.st.objects))


async def test_a_continue_token_the_view_cannot_serve_is_expired_or_sent_to_the_api_server(sim, views, monkeypatch):
    await views.reply(info(SVC, JSON))
    v = next(iter(views.views.values()))
    token = json.loads((await views.reply(info(f"{SVC}?limit=2", JSON))).body)["metadata"]["continue"]
    monkeypatch.setattr(view, "SNAPSHOT_TTL", 0.0)  # the snapshot is gone (75 s later)
    sim.create("services", svc("moved-on"), "edge")
    await v.reached(str(sim.store.rv), 5)
    gone = await views.reply(info(f"{SVC}?limit=2&continue={token}", JSON))
    doc = json.loads(gone.body)
    assert (gone.status, doc["reason"], doc["message"]) == (410, "Expired", kube_status.CONTINUE_TOO_OLD)
    assert not gone.fallback
    # its token carries on inconsistently: the view as it is now, after the same key
    rest = await views.reply(info(f"{SVC}?continue={doc['metadata']['continue']}", JSON))
    after = state.decode_continue(token)[1]
    names = [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in json.loads(rest.body)["items"]]
    assert rest.status == 200 and names and all(n > after for n in names) and "edge/moved-on" in names
    # a follower whose API server is reachable asks it (the token is in its form)
    assert (await views.reply(info(f"{SVC}?limit=2&continue={token}", JSON), fallback_ok=True)).fallback
    for bad in ("abc", f"{SVC}?resourceVersion=5&continue={token}"):
        path = bad if bad.startswith("/") else f"{SVC}?continue={bad}"
        reply = await views.reply(info(path, JSON))
        assert (reply.status, json.loads(reply.body)["reason"]) == (400, "BadRequest"), bad


async def test_a_watch_from_before_the_views_list_gets_the_events_since_without_a_relist(sim, views):
    """A client moved from the API server whose version predates the view's list (its query had nothing new to tell
    it): the view asks the API server for the events since that version once, and the client gets exactly those, then
    the view's own; a later client from in between is served from the ring at once."""
    before = str(sim.store.rv)
    sim.create("services", svc("made-before-the-list"), "edge")
    between = str(sim.store.rv)
    sim.create("services", svc("made-before-the-list-too"), "edge")
    await views.reply(info(SVC, JSON))
    v = next(iter(views.views.values()))
    assert v.st.floor == int(sim.store.rv)
    frames = Frames(await views.reply(info(f"{SVC}?watch=true&resourceVersion={before}", JSON)), "json")
    got = [frames.decode(await frames.next()) for _ in range(2)]
    assert [(t, m.name) for t, m in got] == [("ADDED", "made-before-the-list"), ("ADDED", "made-before-the-list-too")]
    sim.create("services", svc("after"), "edge")
    typ, meta = frames.decode(await frames.next())
    assert (typ, meta.name) == ("ADDED", "after")
    await frames.close()
    frames = Frames(await views.reply(info(f"{SVC}?watch=true&resourceVersion={between}", JSON)), "json")
    assert [frames.decode(await frames.next())[1].name for _ in range(2)] == ["made-before-the-list-too", "after"]
    await frames.close()
    assert (v.lists, v.reach_backs) == (1, 1)


async def test_a_watch_from_before_what_the_api_server_still_holds_is_too_old_once_asked(sim, views):
    """The API server no longer holds the history since the client's version either: the client is told 410 (its
    informer relists), or sent to its reachable API server, as before; the view asks the API server only once."""
    before = str(sim.store.rv)
    sim.create("services", svc("made-before-the-list"), "edge")
    await views.reply(info(SVC, JSON))
    sim.compact()
    v = next(iter(views.views.values()))
    frames = Frames(await views.reply(info(f"{SVC}?watch=true&resourceVersion={before}", JSON)), "json")
    ev = jsonwire.decode_event(await frames.next())
    assert ev.type == "ERROR" and ev.doc["code"] == 410
    fb = await views.reply(info(f"{SVC}?watch=true&resourceVersion={before}", JSON), fallback_ok=True)
    assert fb.status == 503 and fb.fallback.startswith("too old resource version")
    assert (v.lists, v.reach_backs) == (1, 1)
