"""edgeproxy.h2 through upstream.Upstream against a real h2 server: the simulator behind its HTTP/2 face (sim.h2front,
built on the same python-hyper h2 library): one connection per identity, multiplexing, the stream limit, fallback to
HTTP/1.1, RST_STREAM, GOAWAY, certificate reload, PING liveness on a black-holed link."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from edgeproxy import httpclient, metrics, upstream
from edgeproxy.h2 import client as h2client
from edgeproxy.sim import Simulator
from edgeproxy.sim.h2front import H2Front

pytestmark = pytest.mark.timeout(60)


async def until(cond, timeout: float = 20.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
async def sim(tmp_path):
    s = Simulator(pki_dir=tmp_path / "pki", tokens={"pod-token": ("system:serviceaccount:edge:app", ())})
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def front(sim):
    f = H2Front(sim, user="admin")
    await f.start()
    yield f
    await f.stop()


async def make_upstream(sim, front, tmp_path, **kw) -> upstream.Upstream:
    creds = dataclasses.replace(upstream.load_kubeconfig(sim.kubeconfig(tmp_path / "kc", user="admin")),
                                servers=(front.url,))
    kw.setdefault("probe_interval", 3600)
    u = upstream.Upstream(creds, **kw)
    await u.start()
    return u


@pytest.fixture
async def up(sim, front, tmp_path):
    u = await make_upstream(sim, front, tmp_path)
    yield u
    await u.close()


async def get(up, path: str, **headers) -> tuple[int, dict, bytes]:
    _, resp = await up.send("GET", path, CIMultiDict({"Accept": "application/json", **headers}), header_timeout=10)
    body = b""
    while chunk := await resp.read():
        body += chunk
    resp.release()
    return resp.status, dict(resp.headers), body


async def watch(up, path: str):
    _, resp = await up.send("GET", path, CIMultiDict({"Accept": "application/json"}), header_timeout=10)
    assert resp.status == 200
    return resp


async def next_event(resp, buf: bytearray) -> dict:
    while b"\n" not in buf:
        chunk = await resp.read()
        if not chunk:
            raise EOFError("watch ended")
        buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return json.loads(line)


def wpath(sim) -> str:
    """A watch of configmaps in `edge` from now on (no initial events)."""
    return f"/api/v1/namespaces/edge/configmaps?watch=true&resourceVersion={sim.store.rv}"


def configmap(name: str, size: int = 10) -> dict:
    return {"metadata": {"name": name}, "data": {"k": "x" * size}}


def events(name: str, event: str) -> float:
    return metrics.REGISTRY.get_sample_value("edgeproxy_upstream_h2_events_total",
                                             {"server": name, "event": event}) or 0.0


async def test_bytes_and_headers_as_over_http1(sim, front, up):
    """The same answer as the simulator gives over HTTP/1.1: body byte for byte, header names as Go presents them."""
    status, headers, body = await get(up, "/api/v1/namespaces/kube-system/configmaps/kube-root-ca.crt")
    async with __import__("aiohttp").ClientSession() as s, s.get(
            sim.url + "/api/v1/namespaces/kube-system/configmaps/kube-root-ca.crt",
            ssl=sim.client_ssl("admin"), headers={"Accept": "application/json"}) as r:
        assert (status, body) == (r.status, await r.read())
    assert headers["Content-Type"] == "application/json" and "Audit-Id" in headers
    assert up.state()["servers"][0]["connections"][0]["protocol"] == "h2"


async def test_one_connection_per_identity(sim, front, up):
    """Requests, watches and probes of the node and of a pod token, all at once: one connection each."""
    watches = [await watch(up, wpath(sim)) for _ in range(20)]
    results = await asyncio.gather(
        *(get(up, "/api/v1/namespaces/default") for _ in range(60)),
        *(get(up, "/api/v1/namespaces/default", Authorization="Bearer pod-token") for _ in range(30)),
        up.probe_all())
    assert {r[0] for r in results[:90]} == {200}
    assert front.connections == 2
    assert front.peak_streams >= 20
    for w in watches:
        w.close()


async def test_a_second_connection_only_at_the_stream_limit(sim, tmp_path):
    front = H2Front(sim, user="admin", max_streams=8)
    await front.start()
    up = await make_upstream(sim, front, tmp_path)
    try:
        await get(up, "/api/v1/namespaces/default")  # the server's SETTINGS are known from here on
        watches = [await watch(up, wpath(sim)) for _ in range(8)]
        assert front.connections == 1
        watches.append(await watch(up, wpath(sim)))
        assert front.connections == 2
        sim.create("configmaps", configmap("limit"), namespace="edge")
        for w in watches:
            assert (await next_event(w, bytearray()))["object"]["metadata"]["name"] == "limit"
            w.close()
    finally:
        await up.close()
        await front.stop()


async def test_http1_when_alpn_does_not_choose_h2(sim, tmp_path):
    """The simulator itself offers only http/1.1: the request goes over HTTP/1.1, and h2 is not asked again."""
    creds = dataclasses.replace(upstream.load_kubeconfig(sim.kubeconfig(tmp_path / "kc", user="admin")))
    up = upstream.Upstream(creds, probe_interval=3600)
    await up.start()
    try:
        before = events(sim.url, "alpn_http1")
        assert (await get(up, "/api/v1/namespaces/default"))[0] == 200
        assert (await get(up, "/api/v1/namespaces/default"))[0] == 200
        assert events(sim.url, "alpn_http1") == before + 1
        assert up.state()["servers"][0]["connections"] == []
    finally:
        await up.close()


async def test_http2_off_forces_http1(sim, front, tmp_path):
    up = await make_upstream(sim, front, tmp_path, http2=False)
    try:
        with pytest.raises(upstream.Unavailable):  # the front speaks only h2: an HTTP/1.1 request gets no answer
            await up.send("GET", "/api/v1/namespaces/default", CIMultiDict(), header_timeout=1)
        assert up.state()["servers"][0]["connections"] == []
    finally:
        await up.close()


async def test_a_front_that_also_speaks_http1_serves_both_paths_alike(sim, tmp_path):
    """The benchmarks' shared hop (H2Front(http1=True)): HTTP/1.1 when h2 is off, h2 otherwise, the same answer."""
    front = H2Front(sim, user="admin", http1=True)
    await front.start()
    h1 = await make_upstream(sim, front, tmp_path, http2=False)
    h2 = await make_upstream(sim, front, tmp_path)
    try:
        status1, headers1, body1 = await get(h1, "/api/v1/namespaces/default")
        status2, headers2, body2 = await get(h2, "/api/v1/namespaces/default")
        assert status1 == status2 == 200 and body1 == body2 and json.loads(body1)["metadata"]["name"] == "default"
        assert headers1["Content-Type"] == headers2["Content-Type"] == "application/json"
        assert h1.state()["servers"][0]["connections"] == [] and len(h2.state()["servers"][0]["connections"]) == 1
    finally:
        await h1.close()
        await h2.close()
        await front.stop()


async def test_client_going_away_resets_only_its_stream(sim, front, up):
    w1 = await watch(up, wpath(sim))
    w2 = await watch(up, wpath(sim))
    await until(lambda: len(sim.api.watches) == 2, what="two watches at the simulator")
    before = events(front.url, "stream_cancelled")
    w1.close()
    await until(lambda: len(sim.api.watches) == 1, what="the simulator's watch to end")
    assert events(front.url, "stream_cancelled") == before + 1
    sim.create("configmaps", configmap("after-reset"), namespace="edge")
    assert (await next_event(w2, bytearray()))["object"]["metadata"]["name"] == "after-reset"
    assert (await get(up, "/api/v1/namespaces/default"))[0] == 200
    assert front.connections == 1
    w2.close()


async def test_closing_a_watch_ends_a_read_waiting_on_it(sim, front, up):
    # the proxy closes upstream watches it moves to the pool leader, or leaves on a server gone offline, while the
    # client's relay is waiting in read(): that read must end, or the client's watch hangs open and silent
    w = await watch(up, wpath(sim))
    await until(lambda: len(sim.api.watches) == 1, what="the watch at the simulator")
    reader = asyncio.ensure_future(w.read())
    await until(lambda: w._stream.id in w._conn._waiters, what="the read to wait")
    w.close()
    with pytest.raises(h2client.Broken):
        await asyncio.wait_for(reader, 10)
    await until(lambda: not sim.api.watches, what="the simulator's watch to end")


async def test_goaway_in_flight_finish_new_ones_on_a_new_connection(sim, front, up):
    w = await watch(up, wpath(sim))
    front.goaway()
    await until(lambda: events(front.url, "goaway") >= 1, what="the GOAWAY")
    assert (await get(up, "/api/v1/namespaces/default"))[0] == 200
    assert front.connections == 2
    sim.create("configmaps", configmap("after-goaway"), namespace="edge")
    assert (await next_event(w, bytearray()))["object"]["metadata"]["name"] == "after-goaway"
    w.close()
    await until(lambda: front.open_connections == 1, what="the old connection to close once its watch ended")


async def test_certificate_reload_new_connection_old_watches_kept(sim, front, up):
    w = await watch(up, wpath(sim))
    up.set_credentials(up.credentials)  # a rotation: the same files re-read into new TLS contexts
    assert (await get(up, "/api/v1/namespaces/default"))[0] == 200
    assert front.connections == 2
    sim.create("configmaps", configmap("after-reload"), namespace="edge")
    assert (await next_event(w, bytearray()))["object"]["metadata"]["name"] == "after-reload"
    w.close()
    await until(lambda: front.open_connections == 1, what="the drained connection to close")


async def test_black_holed_link_with_only_idle_watches_goes_offline_by_ping(sim, front, tmp_path):
    """Probing is off (an hour apart); only the PING can tell that the link died under a quiet watch."""
    up = await make_upstream(sim, front, tmp_path, ping_idle=0.5, ping_timeout=2)
    try:
        w = await watch(up, wpath(sim))
        await asyncio.sleep(0)  # (not synchronisation: lets the watch's first window update go out)
        before = events(front.url, "ping_timeout")
        front.blackhole()
        await until(lambda: not up.online, what="offline")
        assert events(front.url, "ping_timeout") >= before + 1
        with pytest.raises(httpclient.Broken):
            while await w.read():
                pass
        w.close()
        assert "PING" in up.state()["servers"][0]["last_error"]
    finally:
        await up.close()


async def test_a_probe_timeout_pings_every_connection_of_its_server_at_once(sim, front, tmp_path):
    """The idle PING is an hour away and the probes alone would need 1000 failures: the first probe that times out
    PINGs the server's connections (the node's and a token's), and the unanswered PING takes the server offline."""
    up = await make_upstream(sim, front, tmp_path, probe_interval=0.2, probe_timeout=0.3, offline_after=1000,
                             ping_idle=3600, ping_timeout=1)
    try:
        node_watch = await watch(up, wpath(sim))
        _, token_watch = await up.send("GET", wpath(sim), CIMultiDict({"Authorization": "Bearer pod-token"}),
                                       header_timeout=10)
        assert token_watch.status == 200 and len(up.state()["servers"][0]["connections"]) == 2
        before = events(front.url, "ping_timeout"), events(front.url, "probe_ping")
        front.blackhole()
        await until(lambda: not up.online, what="offline")
        assert "PING" in up.state()["servers"][0]["last_error"]
        assert events(front.url, "probe_ping") >= before[1] + 2
        await until(lambda: events(front.url, "ping_timeout") >= before[0] + 2, what="both connections dropped")
        for w in (node_watch, token_watch):
            with pytest.raises(httpclient.Broken):
                while await w.read():
                    pass
            w.close()
    finally:
        await up.close()


async def test_head_deadline_on_a_hung_stream(sim, front, up):
    """A server that stops answering on an established connection: the request's head deadline still holds."""
    assert (await get(up, "/api/v1/namespaces/default"))[0] == 200
    front.blackhole()
    with pytest.raises(upstream.Unavailable, match="no response head"):
        await up.send("GET", "/api/v1/namespaces/default", CIMultiDict(), header_timeout=0.5)



async def test_alpn_http1_connection_is_reused_for_http1(sim, tmp_path):
    """The connection whose ALPN chose HTTP/1.1 carries the request: one handshake, not two."""
    creds = upstream.load_kubeconfig(sim.kubeconfig(tmp_path / "kc", user="admin"))
    up = upstream.Upstream(creds, probe_interval=3600)
    try:
        results = await asyncio.gather(*(get(up, "/api/v1/namespaces/default") for _ in range(5)))
        assert {r[0] for r in results} == {200}
        assert (await get(up, "/api/v1/namespaces/default"))[0] == 200
    finally:
        await up.close()


_FIELD_NAMES = st.sampled_from([b"content-type", b"content-length", b"date", b"audit-id", b"connection",
                                b"transfer-encoding", b"x-kubernetes-pf-flowschema-uid", b"cache-control"])
_FIELD_VALUES = st.sampled_from([b"application/json", b"12", b"0", b"x1", b"Fri, 04 Dec 2026 23:11:12 GMT", b"close",
                                 b"a\r\nInjected: 1", b"b\nc", b"\xe9t\xe9", b""]) | st.binary(max_size=8)


_USUAL = [(b"content-type", b"application/json"), (b"date", b"Fri, 04 Dec 2026 23:11:12 GMT"),
          (b"content-length", b"2")]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([200, 201, 204, 299, 304, 404, 500]), st.booleans(),
       st.lists(st.tuples(_FIELD_NAMES | st.from_regex(rb"\A[a-z][a-z0-9-]{0,12}\Z"), _FIELD_VALUES), max_size=6))
def test_the_head_relayed_as_it_is_equals_the_head_built_field_by_field(status, usual, fields):
    """An h2 response's raw_head is what proxy.response_head relays to an HTTP/1.1 client without building the head
    again: the same bytes as built field by field (canonical names, hop-by-hop fields dropped, chunked framing added
    where they apply), and a field holding a CR or LF is refused either way."""
    from edgeproxy import proxy

    headers, raw = h2client.head_fields([(b":status", str(status).encode()), *(_USUAL if usual else []), *fields])
    resp = h2client.Response(None, None, status, headers, raw)  # type: ignore[arg-type]
    results = []
    for raw_head in (resp.raw_head, b""):
        try:
            results.append(proxy.response_head(resp.status, resp.reason, resp.headers, raw_head))
        except ValueError:
            results.append("refused")
    assert results[0] == results[1]
