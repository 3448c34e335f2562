"""The probe's reproductions of issue 14 (D3-D7, D9, D10), each through a running proxy: they failed before the fix.

Online against the simulator (or a raw upstream that records the bytes it gets), offline with the simulator down.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from cache import cli as cache_cli
from edgeproxy import config, logs, server, upstream
from edgeproxy.guard import labels
from edgeproxy.sim.simulator import Simulator
from tests.e2e.edge import until

pytestmark = pytest.mark.timeout(90)

KUBELET = {"User-Agent": "kubelet/v1.32.0 (linux/amd64) kubernetes/cd13ec4", "Accept": "application/json"}
PODS = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1"


@contextlib.asynccontextmanager
async def online(tmp: Path) -> AsyncIterator[tuple[Simulator, server.Service, aiohttp.ClientSession]]:
    async with Simulator(pki_dir=tmp / "pki") as sim:
        kubeconfig = sim.kubeconfig(tmp / "upstream.kubeconfig", user="node")
        cfg = config.Config(kubeconfig=str(kubeconfig), listen="127.0.0.1:0", ops_listen="127.0.0.1:0",
                            cache_dir=str(tmp / "cache"), probe_interval=0.2, offline_after=3, online_after=1,
                            connect_timeout=1.0, shutdown_timeout=0.5, plain_as_node=True)
        async with server.running(cfg) as svc, aiohttp.ClientSession() as http:
            yield sim, svc, http


async def offline(sim: Simulator, svc: server.Service, http: aiohttp.ClientSession) -> None:
    """Fill the node's cache with its pods, node and lease, then take the simulator down."""
    for path in (PODS, "/api/v1/nodes/edge-1", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1"):
        async with http.get(svc.url + path, headers=KUBELET) as r:
            assert r.status == 200, path
    await sim.down()
    await until(lambda: not svc.upstream.online, 10)


async def call(http: aiohttp.ClientSession, method: str, url: str, data: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[int, dict]:
    async with asyncio.timeout(20), http.request(method, url, data=data, headers={**KUBELET, **(headers or {})}) as r:
        body = await r.read()
    try:
        doc = json.loads(body)
    except ValueError:
        doc = {"raw": body[:200]}
    return r.status, doc


def nested(depth: int) -> bytes:
    return b'{"metadata":{"name":"x"},"data":' + b"[" * depth + b"]" * depth + b"}"


async def test_d5_a_jwt_nested_thousands_deep_is_the_api_servers_401_not_a_500(tmp_path):
    payload = base64.urlsafe_b64encode(b"[" * 3000).rstrip(b"=").decode()
    async with online(tmp_path) as (_, svc, http):
        code, _ = await call(http, "GET", svc.url + "/api/v1/namespaces", headers={
            "Authorization": f"Bearer eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln"})
        assert code == 401


async def test_d5_header_bytes_reach_the_api_server_unchanged(tmp_path):
    heads: list[bytes] = []

    async def api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
                await writer.drain()
        writer.close()

    srv = await asyncio.start_server(api, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    cfg = config.Config(listen="127.0.0.1:0", ops_listen="", cache_dir=str(tmp_path / "cache"), probe_interval=30,
                        plain_as_node=True)
    try:
        async with server.running(cfg, creds=upstream.Credentials(servers=(f"http://127.0.0.1:{port}",))) as svc:
            host, p = svc.url.removeprefix("http://").rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(p))
            writer.write(b"GET /api/v1/namespaces/edge/configmaps/x HTTP/1.1\r\nHost: h\r\n"
                         b"User-Agent: caf\xc3\xa9/1.0\r\nX-Latin: \xe9t\xe9\r\nX-Broken: \xff\xfe\r\n\r\n")
            async with asyncio.timeout(10):
                status = await reader.readuntil(b"\r\n")
            writer.close()
    finally:
        srv.close()
    assert status.startswith(b"HTTP/1.1 200")
    (head,) = [h for h in heads if b"/configmaps/x" in h]
    for line in (b"User-Agent: caf\xc3\xa9/1.0\r\n", b"X-Latin: \xe9t\xe9\r\n", b"X-Broken: \xff\xfe\r\n"):
        assert line in head


def test_d5_header_bytes_go_up_unchanged_over_http2_too():
    raw = {"User-Agent": b"caf\xc3\xa9/1.0", "X-Latin": b"\xe9t\xe9", "X-Broken": b"\xff\xfe"}
    items = [(k, v.decode("utf-8", "surrogateescape")) for k, v in raw.items()]  # as aiohttp hands them over
    block = dict(upstream.h2_request_headers("GET", "/api/v1/namespaces/caf\xe9", items, None))
    assert all(block[k.lower().encode()] == v for k, v in raw.items())


async def test_d6_unreadable_offline_requests_get_400_with_a_status(tmp_path):
    async with online(tmp_path) as (sim, svc, http):
        await offline(sim, svc, http)
        deep = nested(20_000)
        lease = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1"
        cases = [
            ("POST", "/api/v1/namespaces/edge/configmaps", deep, "application/json"),
            ("POST", "/api/v1/namespaces/edge/events", deep, "application/json"),
            ("PATCH", "/api/v1/namespaces/edge/events/e1", deep, "application/strategic-merge-patch+json"),
            ("PATCH", "/api/v1/nodes/edge-1/status", deep, "application/strategic-merge-patch+json"),
            ("PUT", lease, b"x", "application/json"),
            ("GET", PODS + "&limit=5&continue=" + "[" * 30_000, None, ""),
        ]
        for method, path, body, ct in cases:
            code, doc = await call(http, method, svc.url + path, body, {"Content-Type": ct} if ct else None)
            assert (code, doc.get("kind"), doc.get("code")) == (400, "Status", 400), (method, path, doc)
        # invalid UTF-8 in the User-Agent: that client's own (empty) partition, 503 "not cached", never a 500
        host, port = svc.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET " + PODS.encode() + b" HTTP/1.1\r\nHost: h\r\nUser-Agent: kube\xff\xfelet/1\r\n"
                     b"Connection: close\r\n\r\n")
        async with asyncio.timeout(10):
            answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503") and b'"kind":"Status"' in answer


async def test_d7_head_with_an_h2c_upgrade_is_answered_at_once(tmp_path):
    async with online(tmp_path) as (_, svc, http):
        h2c = {**KUBELET, "Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c", "HTTP2-Settings": "AAMAAABk"}
        async with asyncio.timeout(10), http.head(svc.url + "/api/v1/namespaces/edge/pods/db-0", headers=h2c) as r:
            assert r.status in (200, 403, 404)
        async with http.get(svc.url + PODS, headers=KUBELET) as r:  # the next request on the pool is fine
            assert r.status == 200


async def test_d3_d4_huge_selectors_tokens_and_user_agents_are_answered_not_kept(tmp_path):
    labels.reset()
    async with online(tmp_path) as (_, svc, http):
        big = "a" * (512 << 10)
        for i in range(12):
            await call(http, "GET", svc.url + "/api/v1/namespaces/edge/configmaps?labelSelector=x" + str(i) + big)
            await call(http, "GET", svc.url + "/api/v1/namespaces", headers={"Authorization": f"Bearer {i}{big}"})
            await call(http, "GET", svc.url + "/api/v1/namespaces", headers={"User-Agent": f"{big}{i}/1.0"})
        for i in range(300):
            await call(http, "GET", svc.url + "/version", headers={"User-Agent": f"ua-{i}/1.0"})
        memo = svc.proxy.classify._memo
        assert sum(len(str(k)) for k in memo) < 1 << 20  # nothing of the megabytes is kept
        assert all(v[1] is None for v in memo.values())  # nor any error (their tracebacks held the requests)
        async with http.get(svc.ops_url + "/metrics") as r:
            text = await r.text()
        assert len(text) < 1 << 20
        components = {line.split('component="')[1].split('"')[0] for line in text.splitlines()
                      if line.startswith("edgeproxy_requests_total{")}
        assert len(components) <= len(labels.KNOWN) + labels.MAX_EXTRA + 1 and "other" in components
        async with http.get(svc.ops_url + "/debug/components") as r:
            assert len(await r.read()) < 4 << 20


async def test_d9_a_client_leaving_after_its_watch_ends_logs_no_traceback(tmp_path, caplog):
    async with online(tmp_path) as (sim, svc, http):
        caplog.set_level(logging.INFO)
        for _ in range(5):
            async with http.get(svc.url + PODS + "&watch=true&timeoutSeconds=1", headers=KUBELET) as r:
                assert r.status == 200
                await r.content.readany()
        await offline(sim, svc, http)
        for _ in range(5):  # offline: a held watch the client walks away from
            async with http.get(svc.url + PODS + "&watch=true&resourceVersion=0", headers=KUBELET) as r:
                assert r.status == 200
        svc.proxy.local.bookmark_interval = 0.01  # bookmarks written as fast as the client could read them
        host, port = svc.url.removeprefix("http://").rsplit(":", 1)
        for _ in range(5):  # a client that stops reading and resets its connection mid-stream
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET {PODS}&watch=true&allowWatchBookmarks=true HTTP/1.1\r\nHost: h\r\n"
                         f"User-Agent: kubelet/1\r\n\r\n".encode())
            async with asyncio.timeout(10):
                await reader.readuntil(b"\r\n\r\n")
            writer.transport.abort()
        async with asyncio.timeout(10), http.get(svc.url + PODS, headers=KUBELET) as r:
            assert r.status == 200
    assert not [rec for rec in caplog.records if rec.exc_info is not None or rec.levelno >= logging.ERROR]


async def test_d10_an_unacceptable_accept_offline_is_406(tmp_path):
    async with online(tmp_path) as (sim, svc, http):
        await offline(sim, svc, http)
        code, doc = await call(http, "GET", svc.url + PODS, headers={"Accept": "text/html"})
        assert (code, doc["reason"]) == (406, "NotAcceptable")


def test_d10_serve_and_cache_share_the_default_cache_directory():
    assert config.Config().cache_dir == cache_cli.DEFAULT_DIR == "/var/lib/edgeproxy/cache"
    env = (Path(__file__).resolve().parents[2] / "systemd/edgeproxy.env").read_text()
    assert f"EDGEPROXY_CACHE_DIR={cache_cli.DEFAULT_DIR}\n" in env


def test_d4_the_debug_log_ring_keeps_no_megabyte_lines():
    ring = logs.RingHandler(capacity=3)  # what /debug/logs and `debug collect` read
    for _ in range(5):
        ring.handle(logging.LogRecord("edgeproxy.test", logging.WARNING, __file__, 1, "a client sent %s",
                                      ("p" * (1 << 20),), None))
    assert len(ring.lines) == 3
    assert all("a client sent" in line and len(line) <= logs.RING_LINE_MAX + 40 for line in ring.lines)
