"""A follower's routing: what goes to the leader, and how fast it stops when the leader cannot answer (refused, TLS,
no head in time, a silent watch, the leader's own fallback), and the token rule."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from aiohttp import web
from multidict import CIMultiDict

from cache import store, writer
from edgeproxy import httpclient, metrics, tls
from edgeproxy.kube import request as kube_request
from edgeproxy.pool import election, policy, route, view


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("route-pki")
    ca, other = tls.make_ca("cluster"), tls.make_ca("elsewhere")
    ca.write(d / "ca.crt", d / "ca.key")
    tls.issue(ca, "leader", sans=("127.0.0.1",)).write(d / "leader.crt", d / "leader.key")
    tls.issue(ca, "system:node:edge-2", ("system:nodes",), client=True).write(d / "node.crt", d / "node.key")
    tls.issue(other, "system:node:edge-2", ("system:nodes",), client=True).write(d / "foreign.crt", d / "foreign.key")
    return d


def client_ssl(pki, who="node"):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(pki / f"{who}.crt", pki / f"{who}.key")
    return ctx


async def serve(pki, handler):
    from edgeproxy.pool import peers

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0,
                       ssl_context=peers.server_context(pki / "leader.crt", pki / "leader.key", pki / "ca.crt"))
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def following(router, port):
    router.elected(election.View(election.Role.FOLLOWER, "edge-1", ("127.0.0.1", port)))


def info(path, headers=None):
    p, _, q = path.partition("?")
    return kube_request.parse("GET", p, q, headers or {"Accept": "application/json"})


def failovers(reason):
    return metrics.POOL_FAILOVERS.labels(reason)._value.get()


async def ask(router, path, headers=None, online=True):
    h = CIMultiDict(headers or {"Accept": "application/json"})
    return await router.send(info(path, dict(h)), "GET", path, h, online=online)


def make_router(pki, who="node", **kw):
    return route.Router(policy.Policy(), ssl_factory=lambda: client_ssl(pki, who), header_timeout=1.0,
                        retry_after=30, **kw)


async def test_a_follower_reads_from_its_leader_without_the_clients_token(pki):
    seen = []

    async def handler(request):
        seen.append(dict(request.headers))
        return web.Response(body=b'{"kind":"ServiceList"}', content_type="application/json")

    runner, port = await serve(pki, handler)
    router = make_router(pki, tokens="on")
    following(router, port)
    try:
        resp = await ask(router, "/api/v1/services", {"Accept": "application/json", "Authorization": "Bearer t"})
        assert resp is not None and resp.status == 200 and await resp.read() == b'{"kind":"ServiceList"}'
        resp.release()
        assert "Authorization" not in seen[0] and seen[0][route.FALLBACK_OK_HEADER] == "true"
        # what is never shared goes upstream without asking the leader
        assert await ask(router, "/api/v1/namespaces/kube-system/secrets") is None
        assert len(seen) == 1
    finally:
        router.close()
        await runner.cleanup()


async def test_a_leader_that_refuses_the_connection_sends_the_follower_upstream_for_a_while(pki):
    router = make_router(pki)
    async def handler(request):
        return web.Response(text="{}")

    runner, port = await serve(pki, handler)
    await runner.cleanup()  # nobody listens there any more
    following(router, port)
    before = failovers("connect")
    assert await ask(router, "/api/v1/services") is None
    assert failovers("connect") == before + 1
    assert await ask(router, "/api/v1/services") is None  # not asked again: no second failure counted
    assert failovers("connect") == before + 1
    router.close()


async def test_a_follower_with_a_certificate_of_another_ca_gets_nothing(pki):
    served = []

    async def handler(request):
        served.append(request.path)
        return web.Response(text="{}")

    runner, port = await serve(pki, handler)
    router = make_router(pki, who="foreign")
    following(router, port)
    try:
        before = failovers("connect") + failovers("broken")
        assert await ask(router, "/api/v1/services") is None
        assert failovers("connect") + failovers("broken") == before + 1 and served == []
    finally:
        router.close()
        await runner.cleanup()


async def test_a_hung_leader_is_given_up_at_the_header_deadline(pki):
    release = asyncio.Event()

    async def handler(request):
        await release.wait()
        return web.Response(text="{}")

    runner, port = await serve(pki, handler)
    router = make_router(pki)
    following(router, port)
    try:
        before = failovers("head_timeout")
        async with asyncio.timeout(10):
            assert await ask(router, "/api/v1/services") is None
        assert failovers("head_timeout") == before + 1
    finally:
        release.set()
        router.close()
        await runner.cleanup()


async def test_a_watch_whose_leader_goes_silent_breaks_so_the_client_rewatches(pki):
    async def handler(request):
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await resp.write(b'{"type":"BOOKMARK","object":{"kind":"Service","apiVersion":"v1","metadata":'
                         b'{"resourceVersion":"5"}}}\n')
        await asyncio.Event().wait()  # then nothing, the connection open: a hung leader, or a cut link

    runner, port = await serve(pki, handler)
    router = make_router(pki, silence=0.5)
    following(router, port)
    try:
        resp = await ask(router, "/api/v1/services?watch=true&allowWatchBookmarks=true&resourceVersion=5")
        assert resp is not None and resp.status == 200
        assert (await resp.read()).startswith(b'{"type":"BOOKMARK"')
        before = failovers("silent")
        with pytest.raises(httpclient.Broken):
            async with asyncio.timeout(10):
                await resp.read()
        assert failovers("silent") == before + 1
        assert await ask(router, "/api/v1/services") is None  # and the next request goes upstream
    finally:
        router.close()
        await runner.cleanup()


async def test_what_the_leaders_view_cannot_answer_goes_upstream(pki):
    async def handler(request):
        return web.json_response({"kind": "Status", "code": 503}, status=503,
                                 headers={view.FALLBACK_HEADER: "too old resource version"})

    runner, port = await serve(pki, handler)
    router = make_router(pki)
    following(router, port)
    try:
        before = failovers("connect")
        assert await ask(router, "/api/v1/services?watch=true&resourceVersion=1") is None
        assert failovers("connect") == before  # not a failure of the leader: the next request asks it again
        assert await ask(router, "/api/v1/services?watch=true&resourceVersion=1") is None
        # a client's watch of that query still on the API server is not moved to the pool again for a while; the
        # watch of another query is
        h = {"Accept": "application/json"}
        assert not router.movable(info("/api/v1/services?watch=true&resourceVersion=1"), h)
        assert router.movable(info("/apis/discovery.k8s.io/v1/endpointslices?watch=true&resourceVersion=1"), h)
    finally:
        router.close()
        await runner.cleanup()


async def test_a_slow_head_sends_that_request_upstream_and_leaves_the_open_watches_alone(pki):
    """A leader slow to answer one request is busy, not gone: that request goes to the API server (and the next ones
    for a while), but the watches it already serves go on."""
    more, release = asyncio.Event(), asyncio.Event()

    async def handler(request):
        if request.query.get("watch") != "true":
            await release.wait()
            return web.Response(text="{}")
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        for rv, wait in (("5", more), ("6", release)):
            await resp.write(b'{"type":"BOOKMARK","object":{"kind":"Service","apiVersion":"v1","metadata":'
                             b'{"resourceVersion":"%s"}}}\n' % rv.encode())
            await wait.wait()
        return resp

    runner, port = await serve(pki, handler)
    router = make_router(pki)
    following(router, port)
    try:
        watch = await ask(router, "/api/v1/services?watch=true&allowWatchBookmarks=true&resourceVersion=5")
        assert watch is not None and watch.status == 200
        assert b'"5"' in await watch.read()
        before = failovers("head_timeout")
        async with asyncio.timeout(10):
            assert await ask(router, "/api/v1/services") is None
        assert failovers("head_timeout") == before + 1
        more.set()
        async with asyncio.timeout(10):
            assert b'"6"' in await watch.read()
        watch.close()
    finally:
        release.set()
        router.close()
        await runner.cleanup()


def test_without_a_leader_everything_goes_upstream(pki):
    router = make_router(pki)
    router.elected(election.View(election.Role.CANDIDATE))
    assert asyncio.run(ask(router, "/api/v1/services")) is None
    router.close()


@pytest.fixture
def cache(tmp_path):
    st = store.Store.open(str(tmp_path / "c"), map_size=16 << 20, durable=False)
    w = writer.Writer(st).start()
    yield st, w
    w.close()
    st.close()


async def test_a_token_is_shared_only_once_the_api_server_answered_it_the_same_query(pki, cache):
    from edgeproxy.autonomy import views

    st, w = cache
    token = {"Accept": "application/json", "Authorization": "Bearer kube-proxy-token",
             "User-Agent": "kube-proxy/v1.37.2"}
    vouched = route.Router(policy.Policy(), store=st)
    i = info("/api/v1/services", token)
    assert vouched.shares(i, token) and not vouched.takes(i, token)
    # the API server answered this identity's list once (the proxy recorded it into its partition)
    w.replace_view(views.view_key(i, shape="", encoding="json"), store.ViewMeta("ServiceList", "v1", "7", True), [])
    await w.flush()
    assert vouched.takes(info("/api/v1/services?watch=true&resourceVersion=7", token), token)
    assert not vouched.takes(info("/api/v1/services?labelSelector=a%3Db", token), token)  # another query
    # or the proxy saw it answer 2xx (before the cache has it): the watch that follows the list may use the pool
    other = info("/api/v1/services?labelSelector=a%3Db", token)
    vouched.answered(other, 403)
    assert not vouched.takes(other, token)
    vouched.answered(other, 200)
    assert vouched.takes(info("/api/v1/services?labelSelector=a%3Db&watch=true", token), token)
    assert not route.Router(policy.Policy(), tokens="off", store=st).shares(i, token)
    assert route.Router(policy.Policy(), tokens="on").takes(info("/api/v1/services?labelSelector=x", token), token)
    node = {"Accept": "application/json"}
    assert vouched.takes(info("/api/v1/services", node), node)  # the node's own request: always
    with pytest.raises(ValueError, match="tokens must be one of"):
        route.Router(policy.Policy(), tokens="maybe")
