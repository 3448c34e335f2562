"""proxy.py: routing, and forwarding to an upstream that answers with recorded kube-apiserver bytes."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from edgeproxy import config, metrics, proxy, server, upstream
from tests import recorded

pytestmark = pytest.mark.timeout(60)


# ---- route(): a pure table ----
class _Info:
    def __init__(self, verb: str) -> None:
        self.verb = verb


@pytest.mark.parametrize(("verb", "online", "expected"), [
    ("list", True, proxy.Route.UPSTREAM),
    ("watch", True, proxy.Route.UPSTREAM),
    ("connect", True, proxy.Route.UPSTREAM),
    ("create", True, proxy.Route.UPSTREAM),
    (None, True, proxy.Route.UPSTREAM),  # unparseable: the API server decides
    ("list", False, proxy.Route.LOCAL),
    ("watch", False, proxy.Route.LOCAL),
    ("patch", False, proxy.Route.LOCAL),
    ("connect", False, proxy.Route.REJECT),
    (None, False, proxy.Route.REJECT),
])
def test_route(verb, online, expected):
    info = _Info(verb) if verb is not None else None
    assert proxy.route(info, online) is expected


def test_forward_headers_drops_hop_by_hop_and_connection_named():
    from multidict import CIMultiDict

    h = CIMultiDict([("Host", "x"), ("Connection", "keep-alive, X-Private"), ("X-Private", "1"), ("TE", "trailers"),
                     ("Keep-Alive", "timeout=5"), ("Proxy-Authorization", "Basic Zm9v"), ("Accept", "a"),
                     ("Accept", "b"), ("Authorization", "Bearer t"), ("Content-Length", "3")])
    out = proxy.forward_headers(h)
    assert list(out.items()) == [("Accept", "a"), ("Accept", "b"), ("Authorization", "Bearer t")]


# ---- against the recorded upstream ----
@contextlib.asynccontextmanager
async def serve_app(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proxy_config(**kw) -> config.Config:
    return config.Config(listen="127.0.0.1:0", ops_listen="127.0.0.1:0", probe_interval=30, cache=False,
                         **{"plain_as_node": True, **kw})


@pytest.fixture
async def recorded_upstream():
    api = recorded.RecordedAPIServer()
    async with serve_app(api.app) as url:
        yield api, url


@pytest.fixture
async def through(recorded_upstream):
    """(api, proxy service, client session) with the proxy in front of the recorded upstream."""
    api, url = recorded_upstream
    creds = upstream.Credentials(servers=(url,), token="node-token")
    async with server.running(proxy_config(), creds=creds) as svc, aiohttp.ClientSession(auto_decompress=False) as s:
        yield api, svc, s


@pytest.mark.parametrize("encoding", ["json", "pb"])
async def test_list_and_get_bytes_unchanged(through, encoding):
    _, svc, s = through
    accept = "application/vnd.kubernetes.protobuf" if encoding == "pb" else "application/json"
    for path, name in [("/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1", "pods-edge1.list"),
                       ("/api/v1/namespaces/edge/configmaps/web-config", "configmap-web-config.get")]:
        rec = recorded.load(f"{name}.{encoding}")
        async with s.get(svc.url + path, headers={"Accept": accept}) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == rec.content_type
            assert r.headers["Audit-Id"] == dict(rec.headers)["audit-id"]
            assert await r.read() == rec.body


async def test_response_headers_are_the_api_servers():
    """Exactly the recorded headers come back: nothing added (aiohttp would add Server), nothing lost but framing."""
    rec = recorded.load("configmap-web-config.get.json")

    async def upstream_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                head = "".join(f"{k}: {v}\r\n" for k, v in rec.headers if k != "content-length")
                writer.write(f"HTTP/1.1 200 OK\r\n{head}Content-Length: {len(rec.body)}\r\n\r\n".encode() + rec.body)
                await writer.drain()

    srv = await asyncio.start_server(upstream_conn, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    try:
        async with server.running(proxy_config(), creds=upstream.Credentials(servers=(url,))) as svc, \
                aiohttp.ClientSession() as s, s.get(svc.url + "/api/v1/namespaces/edge/configmaps/web-config") as r:
            assert await r.read() == rec.body
            got = sorted((k.lower(), v) for k, v in r.headers.items())
        want = sorted([(k, v) for k, v in rec.headers if k != "content-length"]
                      + [("content-length", str(len(rec.body)))])
        assert got == want
    finally:
        srv.close()


async def test_error_status_passes_through(through):
    _, svc, s = through
    rec = recorded.load(recorded.NOT_FOUND)
    async with s.get(svc.url + "/api/v1/namespaces/edge/configmaps/does-not-exist") as r:
        assert r.status == 404
        assert await r.read() == rec.body


async def test_hop_by_hop_removed_host_rewritten(through):
    api, svc, _ = through
    session = aiohttp.ClientSession(skip_auto_headers=("Accept-Encoding", "Accept"))
    async with session as s, s.get(svc.url + "/version", headers={
        "Connection": "keep-alive, X-Private", "X-Private": "secret", "TE": "trailers", "Keep-Alive": "timeout=5",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==", "User-Agent": "kubelet/v1.32.0 (linux/amd64) kubernetes/abc",
    }) as r:
        assert r.status == 200
        await r.read()
        for name in ("Connection", "Keep-Alive", "Transfer-Encoding"):
            assert name not in r.headers or (name == "Connection" and r.headers[name].lower() == "keep-alive")
    method, path, headers = api.seen[-1]
    assert (method, path) == ("GET", "/version")
    for name in ("X-Private", "TE", "Keep-Alive", "Proxy-Authorization"):
        assert name not in headers, name
    assert headers.get("Connection", "keep-alive").lower() == "keep-alive"  # the proxy's own, to its upstream
    assert headers["Host"] == svc.upstream.servers[0].url.split("//")[1]
    assert headers["User-Agent"] == "kubelet/v1.32.0 (linux/amd64) kubernetes/abc"
    assert "Accept-Encoding" not in headers  # nothing added on the client's behalf


async def test_authorization_own_or_kubeconfig(through):
    api, svc, s = through
    async with s.get(svc.url + "/version", headers={"Authorization": "Bearer pod-sa-token"}) as r:
        await r.read()
    assert api.seen[-1][2].getall("Authorization") == ["Bearer pod-sa-token"]
    async with s.get(svc.url + "/version") as r:
        await r.read()
    assert api.seen[-1][2].getall("Authorization") == ["Bearer node-token"]


async def test_request_body_goes_up_unchanged(through):
    api, svc, s = through
    body = recorded.load("configmap-web-config.get.json").body
    async with s.post(svc.url + "/api/v1/namespaces/edge/configmaps", data=body,
                      headers={"Content-Type": "application/json"}) as r:
        assert r.status == 201
        assert await r.read() == body
    assert api.seen[-1][2]["Content-Type"] == "application/json"


async def test_expect_100_continue_is_answered_by_the_proxy(through):
    api, svc, s = through
    body = recorded.load("configmap-web-config.get.json").body
    async with s.post(svc.url + "/api/v1/namespaces/edge/configmaps", data=body, expect100=True,
                      headers={"Content-Type": "application/json"}) as r:
        assert r.status == 201 and await r.read() == body
    assert "Expect" not in api.seen[-1][2]


async def test_large_request_body_streams_up_unchanged(through):
    _, svc, s = through
    body = recorded.load("pods-edge1.list.json").body * 25  # 5 MB: over the read-whole limit, sent chunked
    assert len(body) > proxy.MAX_BUFFERED_BODY
    async with s.put(svc.url + "/api/v1/namespaces/edge/configmaps/big", data=body,
                     headers={"Content-Type": "application/json"}) as r:
        assert r.status == 201
        assert await r.read() == body


@pytest.mark.parametrize("encoding", ["json", "pb"])
async def test_watch_streams_event_by_event(through, encoding):
    api, svc, s = through
    rec = recorded.load(f"watch.pods-edge1.{encoding}")
    events = recorded.frames(rec.body, rec.content_type)
    accept = "application/vnd.kubernetes.protobuf" if encoding == "pb" else "application/json"
    path = ("/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=304"
            "&allowWatchBookmarks=true&timeoutSeconds=20")
    async with asyncio.timeout(20), s.get(svc.url + path, headers={"Accept": accept}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == rec.content_type
        got = b""
        while len(got) < len(events[0]):  # the first event arrives while upstream holds back the rest
            got += await r.content.readany()
        assert got == events[0]
        assert not api.release_watch.is_set()
        api.release_watch.set()
        got += await r.read()
    assert got == rec.body


async def test_client_going_away_cancels_upstream(through):
    api, svc, s = through
    path = ("/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=304"
            "&allowWatchBookmarks=true&timeoutSeconds=20")
    async with asyncio.timeout(20):
        r = await s.get(svc.url + path)
        await r.content.readany()
        r.close()  # drops the connection mid-stream
        await api.watch_gone.wait()


async def test_going_offline_ends_upstream_watches(through):
    api, svc, s = through
    path = ("/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=304"
            "&allowWatchBookmarks=true&timeoutSeconds=20")
    async with asyncio.timeout(20), s.get(svc.url + path) as r:
        first = await r.content.readany()
        api.ready = False  # the link is hung: the watch stays silent; the prober notices
        while svc.upstream.online:
            await svc.upstream.probe_all()
        rest = await r.read()  # the watch ends (cleanly: the client re-watches, and is answered locally)
        assert first + rest == recorded.frames(recorded.load("watch.pods-edge1.json").body, "")[0]
        await api.watch_gone.wait()


async def test_going_offline_answers_requests_hung_upstream_locally(recorded_upstream):
    api, url = recorded_upstream
    local = _Local()
    async with server.running(proxy_config(), creds=upstream.Credentials(servers=(url,)), local=local) as svc, \
            aiohttp.ClientSession() as s, asyncio.timeout(20):
        api.hang.set()
        pending = asyncio.ensure_future(s.get(svc.url + "/api/v1/namespaces/edge/configmaps/web-config"))
        await api.hanging.wait()
        api.ready = False
        while svc.upstream.online:
            await svc.upstream.probe_all()
        async with await pending as r:
            assert r.status == 503 and (await r.json())["message"] == "from the local hook"
    assert local.calls and local.calls[0][0] == "get" and "offline" in local.calls[0][1]


async def test_gzip_passes_through_byte_identical(recorded_upstream):
    api, _ = recorded_upstream
    rec = recorded.load("pods-edge1.list.json")
    gz = gzip.compress(rec.body)

    async def gzipped(request: web.Request) -> web.Response:
        # The recorded body, compressed as the API server does for bodies over 128 KiB.
        return web.Response(body=gz, headers={"Content-Type": rec.content_type, "Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/api/v1/pods", gzipped)
    app.router.add_get("/readyz", api.handle)
    async with serve_app(app) as gz_url, \
            server.running(proxy_config(), creds=upstream.Credentials(servers=(gz_url,))) as svc, \
            aiohttp.ClientSession(auto_decompress=False) as s, \
            s.get(svc.url + "/api/v1/pods", headers={"Accept-Encoding": "gzip"}) as r:
        assert r.headers["Content-Encoding"] == "gzip"
        assert await r.read() == gz


class _Recorder:
    def __init__(self):
        self.sinks = []

    def begin(self, info, status, headers):
        sink = _Sink(info, status, headers["Content-Type"])
        self.sinks.append(sink)
        return sink


class _Sink:
    def __init__(self, info, status, content_type):
        self.info, self.status, self.content_type = info, status, content_type
        self.chunks, self.ok = [], None

    def feed(self, chunk):
        self.chunks.append(bytes(chunk))

    def done(self, ok):
        self.ok = ok


async def test_recorder_sees_every_byte_of_lists_gets_and_watches(recorded_upstream):
    api, url = recorded_upstream
    rec = _Recorder()
    api.release_watch.set()
    async with server.running(proxy_config(), creds=upstream.Credentials(servers=(url,)), recorder=rec) as svc, \
            aiohttp.ClientSession() as s:
        for path in ["/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1",
                     "/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=304"
                     "&allowWatchBookmarks=true&timeoutSeconds=20"]:
            async with s.get(svc.url + path, headers={"Accept": "application/vnd.kubernetes.protobuf"}) as r:
                await r.read()
        async with s.delete(svc.url + "/api/v1/namespaces/edge/configmaps/x") as r:  # not offered to the recorder
            await r.read()
    assert [x.info.verb for x in rec.sinks] == ["list", "watch"]
    assert b"".join(rec.sinks[0].chunks) == recorded.load("pods-edge1.list.pb").body
    assert b"".join(rec.sinks[1].chunks) == recorded.load("watch.pods-edge1.pb").body
    assert all(x.ok for x in rec.sinks)


async def test_upstream_down_answers_503_status():
    creds = upstream.Credentials(servers=(f"http://127.0.0.1:{free_port()}",))
    async with server.running(proxy_config(), creds=creds) as svc, aiohttp.ClientSession() as s:
        async with s.get(svc.url + "/api/v1/pods") as r:
            assert r.status == 503
            status = await r.json()
        assert status["kind"] == "Status" and status["status"] == "Failure"
        assert status["reason"] == "ServiceUnavailable" and status["code"] == 503
        assert "Retry-After" not in r.headers


async def test_failover_to_second_server(recorded_upstream):
    _, url = recorded_upstream
    creds = upstream.Credentials(servers=(f"http://127.0.0.1:{free_port()}", url))
    async with server.running(proxy_config(), creds=creds) as svc, aiohttp.ClientSession() as s, \
            s.get(svc.url + "/version") as r:
        assert r.status == 200
        assert await r.read() == recorded.load("version.json").body


class _Local:
    def __init__(self):
        self.calls = []

    async def handle(self, request, info, reason):
        self.calls.append((info.verb if info else None, reason))
        return proxy.status_response(503, "ServiceUnavailable", "from the local hook")


async def test_offline_goes_to_local_hook_and_connect_is_rejected():
    local = _Local()
    creds = upstream.Credentials(servers=(f"http://127.0.0.1:{free_port()}",))
    async with server.running(proxy_config(), creds=creds, local=local) as svc, aiohttp.ClientSession() as s:
        async with asyncio.timeout(10):
            while svc.upstream.online:  # offline_after probes in a row fail
                await svc.upstream.probe_all()
        async with s.get(svc.url + "/api/v1/pods") as r:
            assert r.status == 503
        async with s.post(svc.url + "/api/v1/namespaces/edge/pods/web-0/exec?command=ls") as r:
            assert r.status == 503
            assert (await r.json())["reason"] == "ServiceUnavailable"
    assert local.calls == [("list", "offline")]


async def test_upgrade_is_tunnelled_both_ways():
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_bytes(b"echo:" + msg.data)
        return ws

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/edge/pods/web-0/exec", echo)
    app.router.add_get("/readyz", recorded.RecordedAPIServer().handle)
    async with serve_app(app) as url, \
            server.running(proxy_config(), creds=upstream.Credentials(servers=(url,))) as svc, \
            aiohttp.ClientSession() as s, asyncio.timeout(20), \
            s.ws_connect(svc.url + "/api/v1/namespaces/edge/pods/web-0/exec?command=sh",
                         protocols=("v4.channel.k8s.io",)) as ws:
        assert ws.protocol == "v4.channel.k8s.io"
        for payload in (b"\x00ls\n", b"\x00" + bytes(range(256)) * 400):
            await ws.send_bytes(payload)
            msg = await ws.receive()
            assert msg.data == b"echo:" + payload


@pytest.mark.parametrize(("protocol", "early"), [("SPDY/3.1", b""), ("websocket", b"EARLY")])
async def test_raw_upgrade_carries_bytes_both_ways(protocol, early):
    """kubectl's exec over SPDY/3.1 or WebSocket: raw bytes after the 101. The bytes the API server sends in the same
    packet as its 101 must not be lost; nor, for WebSocket, what the client sends right behind its request (aiohttp
    takes only WebSocket as an upgrade; a SPDY client waits for the 101 before it speaks, as kubectl does)."""
    seen = asyncio.Event()
    got: list[bytes] = []

    async def upstream_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if head.startswith(b"GET /readyz"):
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            writer.close()
            return
        got.append(head)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: %b\r\n\r\nHELLO"
                     % protocol.encode())
        await writer.drain()
        while data := await reader.read(65536):
            got.append(data)
            if b"".join(got[1:]).endswith(b"BYE"):
                seen.set()
                writer.write(b"ECHO:" + b"".join(got[1:]))
                await writer.drain()
                break
        writer.close()

    srv = await asyncio.start_server(upstream_conn, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
    try:
        async with server.running(proxy_config(), creds=upstream.Credentials(servers=(url,))) as svc, \
                asyncio.timeout(20):
            host, port = svc.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /api/v1/namespaces/edge/pods/web-0/exec?command=sh&stdin=true HTTP/1.1\r\n"
                         b"Host: x\r\nConnection: Upgrade\r\nUpgrade: %b\r\nX-Stream-Protocol-Version: "
                         b"v4.channel.k8s.io\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                         b"Sec-WebSocket-Version: 13\r\n\r\n%b" % (protocol.encode(), early))
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 101")
            assert b"Upgrade: " + protocol.encode() in head
            assert await reader.readexactly(5) == b"HELLO"
            writer.write(b"-BYE")
            await seen.wait()
            assert await reader.read() == b"ECHO:" + early + b"-BYE"
            writer.close()
        assert got[0].startswith(b"GET /api/v1/namespaces/edge/pods/web-0/exec?command=sh&stdin=true HTTP/1.1\r\n")
        assert b"X-Stream-Protocol-Version: v4.channel.k8s.io" in got[0]
    finally:
        srv.close()


# ---- the response-head deadline (a hung or black-holed API server) ----
class _Timed:
    def __init__(self, timeout: str | None, verb: str = "get") -> None:
        self.timeout = timeout
        self.verb = verb


@pytest.mark.parametrize(("timeout", "default", "expected"), [
    (None, 10.0, 10.0),  # no timeout= of its own: the configured default
    ("10s", 10.0, 5.0),  # kubelet's Lease PUT: half its 10 s, so the local answer comes before it gives up
    ("2s", 10.0, 1.0),
    ("1s", 10.0, 1.0),  # never under MIN_HEADER_DEADLINE
    ("100ms", 10.0, 1.0),
    ("5m9s", 10.0, 10.0),  # a typed informer's watch: its timeout is the watch's length, the default is shorter
    ("1m", 2.0, 2.0),
    ("bogus", 10.0, 10.0),  # unparseable (the API server would refuse it): the default
    ("0s", 10.0, 10.0),
    ("-5s", 10.0, 10.0),
    ("2s", 0.0, None),  # disabled: no deadline at all
    (None, 0.0, None),
])
def test_header_deadline(timeout, default, expected):
    assert proxy.header_deadline(_Timed(timeout), default) == expected


def test_header_deadline_of_an_unclassified_request_is_the_default():
    assert proxy.header_deadline(None, 7.0) == 7.0


def test_no_header_deadline_for_connect():  # services/proxy, a non-upgrade exec: a backend's head, however slow
    assert proxy.header_deadline(_Timed("10s", verb="connect"), 10.0) is None
    assert proxy.header_deadline(_Timed(None, verb="watch"), 10.0) == 10.0


async def test_hung_upstream_is_answered_locally_at_the_header_deadline(recorded_upstream):
    # The prober still says online (the API server's /readyz answers): each request gives up on its own deadline.
    api, url = recorded_upstream
    local = _Local()
    creds = upstream.Credentials(servers=(url,))
    cfg = proxy_config(upstream_header_timeout=0.3, offline_after=100)
    async with server.running(cfg, creds=creds, local=local) as svc, aiohttp.ClientSession() as s, \
            asyncio.timeout(20):
        def timeouts() -> float:
            return metrics.REGISTRY.get_sample_value("edgeproxy_upstream_header_timeouts_total", {"server": url}) or 0

        before = timeouts()
        api.hang.set()
        async with s.get(svc.url + "/api/v1/namespaces/edge/configmaps/web-config") as r:
            assert r.status == 503 and (await r.json())["message"] == "from the local hook"
        # a write whose body went up: its outcome is unknown, the local side answers it as offline policy says
        lease = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1?timeout=10s"
        async with s.put(svc.url + lease, data=b'{"kind":"Lease"}',
                         headers={"Content-Type": "application/json"}) as r:
            assert r.status == 503
        # each counted as a failure (the prober, woken by each, finds /readyz answering: still online)
        assert timeouts() == before + 2 and svc.upstream.online
    assert [verb for verb, _ in local.calls] == ["get", "update"]
    assert all("no response head within 0.3s" in reason for _, reason in local.calls)
    assert [m for m, p, _ in api.seen if p != "/readyz"] == ["GET", "PUT"]  # each sent once, never retried


async def test_an_idle_watch_is_not_cut_by_the_header_deadline(recorded_upstream):
    api, url = recorded_upstream
    local = _Local()
    cfg = proxy_config(upstream_header_timeout=0.3, offline_after=100)
    path = ("/api/v1/pods?watch=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=304"
            "&allowWatchBookmarks=true&timeoutSeconds=20")
    async with server.running(cfg, creds=upstream.Credentials(servers=(url,)), local=local) as svc, \
            aiohttp.ClientSession() as s, asyncio.timeout(20), s.get(svc.url + path) as watch:
        first = await watch.content.readany()  # the head and one event; then the watch is idle
        api.hang.set()
        # A request sent after the watch's head, with the same deadline, is answered locally: by then the watch has
        # been idle longer than the deadline.
        async with s.get(svc.url + "/api/v1/namespaces/edge/configmaps/web-config") as r:
            assert r.status == 503
        assert local.calls and "no response head" in local.calls[0][1]
        api.release_watch.set()
        rest = await watch.read()
        assert first + rest == recorded.load("watch.pods-edge1.json").body  # every event, the stream never cut
        assert not api.watch_gone.is_set()


async def test_header_deadline_disabled_waits_for_the_prober(recorded_upstream):
    api, url = recorded_upstream
    local = _Local()
    async with server.running(proxy_config(upstream_header_timeout=0), creds=upstream.Credentials(servers=(url,)),
                              local=local) as svc, aiohttp.ClientSession() as s, asyncio.timeout(20):
        api.hang.set()
        pending = asyncio.ensure_future(s.get(svc.url + "/api/v1/namespaces/edge/configmaps/web-config?timeout=2s"))
        await api.hanging.wait()
        api.ready = False
        while svc.upstream.online:
            await svc.upstream.probe_all()
        async with await pending as r:
            assert r.status == 503
    # answered when the prober turned the proxy offline, not at a deadline
    assert len(local.calls) == 1 and "went offline" in local.calls[0][1]


def test_the_lane_relays_the_api_servers_head_as_received_unless_it_must_change():
    from edgeproxy import httpclient

    raw = b"HTTP/1.1 200 OK\r\nAudit-Id: a\r\nContent-Type: application/json\r\nDate: d\r\nContent-Length: 2"
    assert proxy.response_head(200, "OK", httpclient._parse_head(raw)[2], raw) == (raw + b"\r\n\r\n", False)
    # every hop-by-hop header is dropped, whatever its case: the head is built again without it
    for name in proxy.HOP_BY_HOP:
        with_hop = raw + f"\r\n{name.upper()}: x".encode()
        head, chunked = proxy.response_head(200, "OK", httpclient._parse_head(with_hop)[2], with_hop)
        assert (head, chunked) == (raw + b"\r\n\r\n", False), name
    # no Content-Length: chunked framing; no Content-Type or Date: added as aiohttp would
    bare = b"HTTP/1.1 200 OK\r\nAudit-Id: a"
    head, chunked = proxy.response_head(200, "OK", httpclient._parse_head(bare)[2], bare)
    assert chunked
    assert head.startswith(b"HTTP/1.1 200 OK\r\nAudit-Id: a\r\nTransfer-Encoding: chunked\r\n"
                           b"Content-Type: application/octet-stream\r\nDate: ")
    # an HTTP/1.0 status line is rewritten; a 304 keeps no Content-Length (aiohttp's rule)
    old = b"HTTP/1.0 304 Not Modified\r\nDate: d\r\nContent-Length: 5"
    assert proxy.response_head(304, "Not Modified", httpclient._parse_head(old)[2], old) == (
        b"HTTP/1.1 304 Not Modified\r\nDate: d\r\n\r\n", False)
