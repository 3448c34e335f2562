"""edgeproxy.h2.server: HTTP/2 on the HTTPS listener, against a running edgeproxy in front of the simulator, with
independent clients: curl (libcurl over nghttp2) and a raw python-hyper h2 client (tests/h2/rawclient.py).

ALPN h2 is chosen; many watches share one connection and each gets every event; a stream that stops reading stalls
only itself; the node's client certificate acts as the node and no certificate gets 401, as over HTTP/1.1; a client
RST_STREAM ends the upstream watch; bounds give clear errors; broken frames get GOAWAY PROTOCOL_ERROR while other
connections go on; offline answers are the HTTP/1.1 bytes; exec-style upgrades still work over HTTP/1.1 on the same
listener; shutdown sends GOAWAY and lets a request in flight finish."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edgeproxy import config, metrics, server, tls, upstream
from edgeproxy.guard import limits
from edgeproxy.h2 import serversession
from edgeproxy.sim.simulator import Simulator
from tests.e2e.edge import until
from tests.h2.rawclient import RawH2, Stream
from tests.test_proxy import proxy_config, serve_app

pytestmark = pytest.mark.timeout(60)

NS = "/api/v1/namespaces/edge"


@contextlib.asynccontextmanager
async def proxy(tmp: Path, sim: Simulator, bounds: limits.Limits | None = None,
                **overrides: object) -> AsyncIterator[server.Service]:
    kubeconfig = sim.kubeconfig(tmp / "upstream.kubeconfig", user="node")
    settings: dict[str, object] = dict(listen="127.0.0.1:0", ops_listen="", tls_listen="127.0.0.1:0",
                                       client_ca_file=str(sim.pki.ca_cert), cache_dir=str(tmp / "cache"),
                                       probe_interval=0.2, offline_after=3, online_after=1, connect_timeout=1.0,
                                       shutdown_timeout=2.0, listen_http2=True)
    settings.update(overrides)
    async with server.running(config.Config(kubeconfig=str(kubeconfig), **settings),  # type: ignore[arg-type]
                              limits=bounds) as svc:
        yield svc


@pytest.fixture
async def edge(tmp_path) -> AsyncIterator[tuple[Simulator, server.Service]]:
    async with Simulator(pki_dir=tmp_path / "pki") as sim, proxy(tmp_path, sim) as svc:
        yield sim, svc


def node_ctx(tmp: Path, sim: Simulator, cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tmp / "cache" / "pki" / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(sim.pki.node_cert), str(sim.pki.node_key))
    return ctx


async def curl(tmp: Path, sim: Simulator, url: str, *args: str, cert: bool = True) -> tuple[str, int, bytes]:
    """(HTTP version, status, body) of one curl request."""
    auth = ["--cert", str(sim.pki.node_cert), "--key", str(sim.pki.node_key)] if cert else []
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--cacert", str(tmp / "cache" / "pki" / "ca.crt"), *auth, *args,
        "-o", str(tmp / "body"), "-w", "%{http_version} %{http_code}", url, stdout=subprocess.PIPE)
    out, _ = await proc.communicate()
    version, code = out.decode().split()
    return version, int(code), (tmp / "body").read_bytes()


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def service(name: str, size: int = 10) -> dict:
    return {"metadata": {"name": name, "annotations": {"v": "x" * size}}, "spec": {"ports": [{"port": 80}]}}


def events(st) -> list[str]:
    """The names in the complete watch events a stream has received."""
    whole = bytes(st.body).rpartition(b"\n")[0]
    return [json.loads(line)["object"]["metadata"]["name"] for line in whole.splitlines() if line]


async def test_alpn_h2_the_node_certificate_acts_as_the_node_and_none_gets_401(tmp_path, edge):
    sim, svc = edge
    secret = NS + "/secrets/db-credentials"
    assert (await curl(tmp_path, sim, svc.tls_url + secret, "--http2"))[:2] == ("2", 200)
    v2, code2, body2 = await curl(tmp_path, sim, svc.tls_url + secret, "--http2", cert=False)
    v1, code1, body1 = await curl(tmp_path, sim, svc.tls_url + secret, "--http1.1", cert=False)
    assert (v2, code2, v1, code1) == ("2", 401, "1.1", 401)
    assert body2 == body1 and json.loads(body2)["reason"] == "Unauthorized"
    # the plain listener stays HTTP/1.1 (curl offers h2c by Upgrade there; it is not taken)
    assert (await curl(tmp_path, sim, svc.url + "/version", "--http2", cert=False))[:2] == ("1.1", 401)


async def test_many_watches_on_one_connection_each_gets_every_event_a_stalled_one_stalls_only_itself(tmp_path, edge):
    sim, svc = edge
    client = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
    try:
        rv = sim.store.rv
        path = NS + f"/services?watch=true&resourceVersion={rv}"
        watches = [client.request("GET", path) for _ in range(40)]
        stalled = client.request("GET", path)
        await client.until(lambda: all(w.status == 200 for w in [*watches, stalled]), what="40 watch heads")
        assert sample("edgeproxy_client_h2_connections", listener="https") == 1
        assert sample("edgeproxy_client_connections", listener="https") == 1
        assert sample("edgeproxy_client_h2_streams", listener="https") == 41
        client.hold(stalled)  # it stops reading: more than its window is coming
        for i in range(3):
            sim.create("services", service(f"big-{i}", 100_000), namespace="edge")
        for i in range(5):
            sim.create("services", service(f"small-{i}"), namespace="edge")
        want = [f"big-{i}" for i in range(3)] + [f"small-{i}" for i in range(5)]
        await client.until(lambda: all(events(w) == want for w in watches), what="every event on every watch")
        assert len(stalled.body) <= 65535  # the client's default stream window: the rest waits at the proxy
        client.release(stalled)
        await client.until(lambda: events(stalled) == want, what="the stalled watch's events once it reads again")
    finally:
        await client.close()


async def test_rst_stream_ends_the_upstream_watch_and_only_that_stream(tmp_path, edge):
    sim, svc = edge
    client = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
    try:
        rv = sim.store.rv
        a = client.request("GET", NS + f"/services?watch=true&resourceVersion={rv}")
        b = client.request("GET", NS + f"/services?watch=true&resourceVersion={rv}")
        await client.until(lambda: a.status == b.status == 200, what="two watch heads")
        await until(lambda: len(svc.proxy._watches) == 2)  # two upstream watches
        client.reset(a)
        await until(lambda: len(svc.proxy._watches) == 1)  # the reset watch's upstream request closed
        sim.create("services", service("after"), namespace="edge")
        await client.until(lambda: events(b) == ["after"], what="the other watch's event")
        assert b.reset is None and not client.goaway
    finally:
        await client.close()


async def test_bounds_give_clear_errors(tmp_path, edge):
    sim, svc = edge
    client = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
    try:
        big = client.request("GET", NS + "/services", [("x-big", "a" * (limits.MAX_FIELD + 1))])
        many = client.request("GET", NS + "/services", [(f"x-{i}", "v") for i in range(limits.MAX_HEADERS + 1)])
        connect = client.request("GET", NS + "/services")  # a neighbour that is fine
        for st, code in ((big, 431), (many, 431), (connect, 200)):
            await client.response(st)
            assert st.status == code, bytes(st.body)
        assert b"over 65536 bytes" in big.body and json.loads(bytes(big.body))["kind"] == "Status"
        # exec, attach, port-forward are HTTP/1.1 upgrades; an h2 CONNECT gets a clear refusal
        sid = client.conn.get_next_available_stream_id()
        st = client.streams[sid] = Stream(sid)
        client.conn.send_headers(sid, [(b":method", b"CONNECT"), (b":authority", b"127.0.0.1:1")], end_stream=True)
        client.flush()
        await client.response(st)
        assert st.status == 405 and b"HTTP/1.1" in st.body
        # a body over what the proxy reads whole, offline (online it streams upstream): 413
        await sim.down()
        await until(lambda: not svc.upstream.online, 10)
        body = b"x" * (5 << 20)
        post = client.request("POST", NS + "/services", [("content-type", "application/json"),
                                                           ("content-length", str(len(body)))], end=False)
        await client.upload(post, body)
        await client.response(post)
        assert post.status == 413, bytes(post.body)
        # the same Status as over HTTP/1.1 (curl, which is not used over h2 here: curl 7.88 takes the RST_STREAM
        # NO_ERROR that stops an upload after a complete answer, RFC 9113 §8.1, as a failure)
        (tmp_path / "big.json").write_bytes(body)
        http1 = await curl(tmp_path, sim, svc.tls_url + NS + "/services", "--http1.1", "-X", "POST", "-H",
                           "Content-Type: application/json", "--data-binary", f"@{tmp_path / 'big.json'}")
        assert http1 == ("1.1", 413, bytes(post.body))
        assert b"larger than 4194304 bytes" in post.body
        assert not client.goaway  # the connection goes on
        again = client.request("GET", NS + "/services")
        assert (await client.response(again)).status == 200
    finally:
        await client.close()


async def test_expect_100_continue_is_answered_before_the_body(tmp_path, edge):
    sim, svc = edge
    client = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
    try:
        body = json.dumps(service("posted")).encode()
        post = client.request("POST", NS + "/services", [("content-type", "application/json"),
                                                         ("expect", "100-continue")], end=False)
        await client.until(lambda: post.informational == [100], what="100 Continue")
        client.send_body(post, body, end=True)
        assert (await client.response(post)).status == 201, bytes(post.body)
        assert json.loads(bytes(post.body))["metadata"]["name"] == "posted"
    finally:
        await client.close()


async def test_broken_frames_get_goaway_protocol_error_others_go_on(tmp_path, edge):
    sim, svc = edge
    other = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
    bad = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
    try:
        watch = other.request("GET", NS + f"/services?watch=true&resourceVersion={sim.store.rv}")
        await other.until(lambda: watch.status == 200, what="a watch head")
        # DATA on stream 0 (RFC 9113 §6.1: a connection error of type PROTOCOL_ERROR)
        bad.send_raw(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        await bad.until(lambda: bad.goaway is not None, what="GOAWAY")
        assert bad.goaway[0] == 1  # PROTOCOL_ERROR
        await bad.until(lambda: bad.closed, what="the connection closed")
        sim.create("services", service("still"), namespace="edge")
        await other.until(lambda: events(watch) == ["still"], what="the other connection's event")
        assert (await curl(tmp_path, sim, svc.tls_url + NS + "/services", "--http2"))[:2] == ("2", 200)
    finally:
        await other.close()
        await bad.close()


async def test_rapid_reset_gets_goaway_enhance_your_calm(tmp_path, edge):
    sim, svc = edge
    client = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
    try:
        for _ in range(serversession.RESET_BURST + 50):
            st = client.request("GET", NS + "/services?watch=true")
            client.conn.reset_stream(st.id)
        client.flush()
        await client.until(lambda: client.goaway is not None, what="GOAWAY")
        assert client.goaway[0] == 11  # ENHANCE_YOUR_CALM
        await client.until(lambda: client.closed, what="the connection closed")
        await until(lambda: not svc.proxy._watches)  # no upstream watch left behind
    finally:
        await client.close()


async def test_offline_answers_over_h2_are_the_http1_bytes(tmp_path, edge):
    sim, svc = edge
    paths = [NS + "/services", NS + "/secrets/db-credentials", "/api/v1/nodes/edge-1"]
    for p in paths:  # recorded while online
        assert (await curl(tmp_path, sim, svc.tls_url + p, "--http1.1"))[1] == 200
    await sim.down()
    await until(lambda: not svc.upstream.online, 10)
    for p in [*paths, NS + "/pods/nothing-here"]:
        v1, code1, body1 = await curl(tmp_path, sim, svc.tls_url + p, "--http1.1")
        v2, code2, body2 = await curl(tmp_path, sim, svc.tls_url + p, "--http2")
        assert (v1, v2) == ("1.1", "2")
        assert (code2, body2) == (code1, body1), p
    # an offline watch over h2 ends cleanly (END_STREAM, not RST_STREAM) when the API server is back: client-go then
    # re-watches from its resourceVersion; a reset stream would make it relist
    client = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
    try:
        as_curl = [("accept", "*/*"), ("user-agent", "curl/7.88.1")]  # the client whose view was recorded above
        watch = client.request("GET", NS + "/services?watch=true&allowWatchBookmarks=true", as_curl)
        await client.until(lambda: watch.status is not None, what="an offline watch's head")
        assert watch.status == 200, bytes(watch.body)
        await sim.up()
        await client.response(watch)
        assert watch.ended and watch.reset is None
    finally:
        await client.close()


async def test_exec_upgrade_still_works_over_http1_on_the_same_listener(tmp_path):
    async def echo(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("v4.channel.k8s.io",))
        await ws.prepare(request)
        async for msg in ws:
            await ws.send_bytes(b"echo:" + msg.data)
        return ws

    from tests import recorded

    app = web.Application()
    app.router.add_get("/api/v1/namespaces/edge/pods/web-0/exec", echo)
    app.router.add_get("/readyz", recorded.RecordedAPIServer().handle)
    async with serve_app(app) as url, server.running(
            proxy_config(tls_listen="127.0.0.1:0", listen_http2=True, cache_dir=str(tmp_path / "cache")),
            creds=upstream.Credentials(servers=(url,))) as svc, aiohttp.ClientSession() as s:
        ctx = ssl.create_default_context(cafile=str(tmp_path / "cache" / "pki" / "ca.crt"))
        ctx.set_alpn_protocols(["http/1.1"])  # as client-go's SPDY and WebSocket dialers do
        async with s.ws_connect(svc.tls_url + "/api/v1/namespaces/edge/pods/web-0/exec?command=sh", ssl=ctx,
                                protocols=("v4.channel.k8s.io",), headers={"Authorization": "Bearer t"}) as ws:
            await ws.send_bytes(b"\x00ls\n")
            assert (await ws.receive()).data == b"echo:\x00ls\n"


async def test_shutdown_sends_goaway_and_lets_a_request_finish(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        async with proxy(tmp_path, sim) as svc:
            client = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
            watch = client.request("GET", NS + "/services?watch=true&timeoutSeconds=1")
            await client.until(lambda: watch.status == 200, what="a watch head")
        # leaving `proxy` shut the listener down: GOAWAY NO_ERROR came, the watch ran to its end (1 s, within the
        # 2 s shutdown timeout), and then the connection closed
        try:
            await client.until(lambda: client.closed, what="the connection closed")
            assert client.goaway is not None and client.goaway[0] == 0
            assert watch.ended and watch.reset is None
        finally:
            await client.close()


async def test_connection_bound_head_deadline_and_idle_timeout(tmp_path):
    bounds = limits.Limits(max_connections=1, head_timeout=2.0, idle_timeout=0.5)
    async with Simulator(pki_dir=tmp_path / "pki") as sim, proxy(tmp_path, sim, bounds) as svc:
        first = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
        second = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
        try:
            # the listener's connection bound, shared with HTTP/1.1: the second connection is refused by GOAWAY
            await second.until(lambda: second.closed, what="the second connection closed")
            assert second.goaway is not None and second.goaway[0] == 7  # REFUSED_STREAM: nothing was processed
            # no request head within the deadline: GOAWAY and closed
            await first.until(lambda: first.closed, what="the head deadline")
            assert first.goaway is not None and first.goaway[0] == 0
        finally:
            await first.close()
            await second.close()
        # a connection idle (no stream) for the idle timeout after its requests: GOAWAY and closed
        client = await RawH2.connect(svc.tls_url, node_ctx(tmp_path, sim))
        try:
            assert (await client.response(client.request("GET", NS + "/services"))).status == 200
            await client.until(lambda: client.closed, what="the idle timeout")
            assert client.goaway is not None and client.goaway[0] == 0
        finally:
            await client.close()


async def test_the_in_cluster_listener_speaks_h2_tokens_only(tmp_path):
    cert, key, ca = tls.own_serving_cert(tmp_path / "pki-serving", ["kubernetes.default.svc", "127.0.0.1"])
    token = {"pod-token": ("system:serviceaccount:edge:app", ("system:serviceaccounts",))}
    async with Simulator(pki_dir=tmp_path / "pki", tokens=token) as sim, proxy(
            tmp_path, sim, in_cluster_address="127.0.0.1:0", tls_cert_file=str(cert), tls_key_file=str(key),
            node_name="edge-1", health_report_interval=0) as svc:
        url = svc.in_cluster_url + "/api/v1/namespaces/edge/services"
        args = ["--cacert", str(ca), "--http2"]
        assert (await curl(tmp_path, sim, url, *args, cert=False))[:2] == ("2", 401)  # no token: refused here
        assert (await curl(tmp_path, sim, url, *args, "-H", "Authorization: Bearer pod-token", cert=False))[:2] == (
            "2", 200)
        await until(lambda: sample("edgeproxy_client_h2_connections", listener="in-cluster") == 0)  # curl's gone


async def test_listen_http2_off_is_http1_only(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim, proxy(tmp_path, sim, listen_http2=False) as svc:
        assert (await curl(tmp_path, sim, svc.tls_url + NS + "/services", "--http2"))[:2] == ("1.1", 200)
