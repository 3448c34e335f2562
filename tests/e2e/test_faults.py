"""Bad input end to end: each way a request, an upstream stream, the cache or the disk can go wrong, through the
running proxy, asserting what a client or an operator would notice.

The matrix, one test (or two) per path: malformed requests (bad selectors, bad percent-encoding, bad numbers, a
20 KB selector, a gzip request body, bytes that are not HTTP); a list body cut mid-way (Content-Length and chunked),
a chunked list cut in its last page, a watch cut mid-event, a watch-list cut before its initial-events-end bookmark;
a corrupt cache record; a full disk (a tmpfs) under a list, under a watch and at start, and a full LMDB map; kill -9
of `edgeproxy serve` while it records busy watches; upstream garbage (a watch frame that does not decode, a watch
answered with a list). Upstream faults come from the simulator's switches or from `Mangler`, a tiny API server that
replays what a real kube-apiserver sent (tests/fixtures) cut or with bytes flipped. Every test bounds its own time
and polls conditions with a bound (edge.until), never sleeps to wait. The proxies here are wired as `edgeproxy serve`
wires them (server.running → autonomy.wiring.hooks), with fast probing, so an upstream going down turns them offline
within a second (three failed probes 0.2 s apart: one probe slowed by a loaded machine is no outage).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl
from aiohttp import web

from edgeproxy import config, server, upstream
from edgeproxy.kube import jsonwire, protobuf
from edgeproxy.sim import Simulator
from tests import recorded
from tests.e2e.edge import until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PODS = "/api/v1/pods"
ON_NODE = "fieldSelector=spec.nodeName%3Dedge-1"
JSON = "application/json"
PB = "application/vnd.kubernetes.protobuf"
ROOT = Path(__file__).resolve().parents[2]
KUBELET = "kubelet/v1.32.0 (linux/amd64) kubernetes/cd13ec4"


@dataclasses.dataclass
class Rig:
    """The simulator, one edgeproxy in front of it (wired as `edgeproxy serve` wires it), an HTTP session to each."""

    sim: Simulator
    service: server.Service
    http: aiohttp.ClientSession  # to the proxy, plain HTTP, no credentials (as kubelet)
    direct: aiohttp.ClientSession  # to the simulator, TLS with the admin certificate

    @property
    def store(self) -> Any:
        return self.service.proxy.recorder.writer.store  # type: ignore[union-attr]

    async def settle(self) -> None:
        """Everything the proxy forwarded so far is parsed and committed."""
        rec = self.service.proxy.recorder
        await asyncio.to_thread(rec.flush, 10)  # type: ignore[union-attr]
        await rec.writer.flush()  # type: ignore[union-attr]

    async def offline(self) -> None:
        await self.sim.down()
        await until(lambda: not self.service.upstream.online, 10)

    async def get(self, path_qs: str, accept: str = JSON, via: str = "proxy",
                  timeout: float = 20) -> tuple[int, bytes]:
        """A GET whose path and query go on the wire exactly as written (no re-encoding)."""
        session, base = (self.http, self.service.url) if via == "proxy" else (self.direct, self.sim.url)
        async with asyncio.timeout(timeout), session.get(yarl.URL(base + path_qs, encoded=True),
                                                    headers={"Accept": accept, "User-Agent": KUBELET}) as r:
            return r.status, await r.read()


@contextlib.asynccontextmanager
async def serving(sim: Simulator, tmp: Path, **overrides: object) -> AsyncIterator[server.Service]:
    kubeconfig = sim.kubeconfig(tmp / "upstream.kubeconfig", "admin")
    settings: dict[str, object] = dict(listen="127.0.0.1:0", ops_listen="127.0.0.1:0", cache_dir=str(tmp / "cache"),
                                       probe_interval=0.2, probe_timeout=2.0, offline_after=3, online_after=1,
                                       connect_timeout=1.0, shutdown_timeout=0.5, plain_as_node=True)
    settings.update(overrides)
    cfg = config.Config(kubeconfig=str(kubeconfig), **settings)  # type: ignore[arg-type]
    async with server.running(cfg) as service:
        yield service


@contextlib.asynccontextmanager
async def rig(tmp: Path, **sim_kw: Any) -> AsyncIterator[Rig]:
    async with (
        Simulator(pki_dir=tmp / "pki", **sim_kw) as sim,
        serving(sim, tmp) as service,
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sim.client_ssl("admin"))) as direct,
    ):
        yield Rig(sim, service, http, direct)


def status_of(body: bytes) -> dict[str, Any]:
    doc = json.loads(body)
    assert doc["kind"] == "Status" and doc["status"] == "Failure", body[:300]
    return doc


# ---------------------------------------------------------------- 1. malformed requests

MALFORMED = [
    # (query, code, reason, words): what the proxy answers itself while offline; words: its message is the API
    # server's (or the end of it). The simulator decodes "%ZZ" leniently and ignores a bad limit or timeoutSeconds.
    ("labelSelector=a%20in%20(", 400, "BadRequest", True),
    ("labelSelector=a%3D%3D%3Db", 400, "BadRequest", True),
    ("fieldSelector=spec.nodeName", 400, "BadRequest", True),
    ("fieldSelector=spec.bogus%3Dx", 400, "BadRequest", True),
    ("labelSelector=%ZZ", 400, "BadRequest", False),
    ("limit=abc", 400, "BadRequest", False),
    ("timeoutSeconds=x", 400, "BadRequest", False),
    ("watch=true&sendInitialEvents=true", 422, "Invalid", False),
]


async def test_malformed_requests_get_a_status_online_and_offline_and_the_proxy_keeps_serving(tmp_path):
    async with rig(tmp_path) as r:
        ok_code, ok_body = await r.get(f"{PODS}?{ON_NODE}")
        assert ok_code == 200
        online: dict[str, tuple[int, bytes]] = {}
        for query, *_ in MALFORMED:
            via_proxy = await r.get(f"{PODS}?{query}")
            direct = await r.get(f"{PODS}?{query}", via="direct")
            # online the proxy is transparent: the API server's answer, unchanged, whatever it is (the simulator
            # is lenient where kube-apiserver is not, e.g. limit=abc lists everything)
            assert via_proxy == direct, f"{query}: the proxy changed the API server's answer"
            online[query] = via_proxy
        assert await r.get(f"{PODS}?{ON_NODE}") == (200, ok_body)  # still serving

        await r.settle()
        await r.offline()
        for query, code, reason, words in MALFORMED:
            got_code, body = await r.get(f"{PODS}?{query}")
            st = status_of(body)
            assert (got_code, st["code"], st["reason"]) == (code, code, reason), f"{query}: {got_code} {st}"
            assert st["message"], query
            if words:  # the API server's words (client-go shows them to the user); for an
                # unsupported field it prefixes 'Unable to find "/v1, Resource=pods" that match ...: '
                assert st["message"] in status_of(online[query][1])["message"], query
        code, body = await r.get(f"{PODS}?{ON_NODE}")  # still serving, from the cache
        assert code == 200 and jsonwire.parse_list(body).items == jsonwire.parse_list(ok_body).items


# ---------------------------------------------------------------- 3. a corrupt cache record

CONFIGMAPS = "/api/v1/namespaces/edge/configmaps"


async def edgeproxy_cli(*args: str, timeout: float = 30) -> tuple[int, str]:
    """`python -m edgeproxy ARGS` from this worktree: (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgeproxy", *args, cwd=str(ROOT), env=subprocess_env(),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(timeout):
        out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


def subprocess_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "HOME": "/nonexistent"}


async def scrape(service: server.Service) -> dict[str, float]:
    """The proxy's /metrics as {sample name with labels: value}."""
    async with aiohttp.ClientSession() as s, asyncio.timeout(10), s.get(f"{service.ops_url}/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def flip_everywhere(data_file: Path, needle: bytes) -> int:
    """Flip one byte inside every copy of `needle` in the LMDB file (a stopped proxy's): what a bad sector does."""
    data = bytearray(data_file.read_bytes())
    at, flipped = data.find(needle), 0
    while at != -1:
        data[at + len(needle) // 2] ^= 0x20
        flipped += 1
        at = data.find(needle, at + 1)
    data_file.write_bytes(bytes(data))
    return flipped


async def test_a_corrupt_record_is_never_served_and_is_counted_and_verify_reports_it(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        async with serving(sim, tmp_path) as service, aiohttp.ClientSession() as http:
            r = Rig(sim, service, http, http)
            code, pods = await r.get(f"{PODS}?{ON_NODE}")
            assert code == 200
            code, cms = await r.get(CONFIGMAPS)  # a complete view of a whole namespace: it can prove absence
            assert code == 200
            code, services = await r.get("/api/v1/services")
            assert code == 200
            victim_pod = json.loads(jsonwire.parse_list(pods).items[3])
            md = victim_pod["metadata"]  # its GET is cached too: a second record of it to go bad
            assert (await r.get(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}"))[0] == 200
            await r.settle()
        victim_cm = json.loads(jsonwire.parse_list(cms).items[0])
        for obj, copies in ((victim_pod, 2), (victim_cm, 1)):  # the pod: in its list's view and as its GET
            assert flip_everywhere(tmp_path / "cache" / "data.mdb", obj["metadata"]["uid"].encode()) >= copies

        await sim.down()
        async with serving(sim, tmp_path) as service, aiohttp.ClientSession() as http:
            r = Rig(sim, service, http, http)
            # a list with a corrupt item is not served short of it: kubelet would kill the missing pod
            code, body = await r.get(f"{PODS}?{ON_NODE}")
            assert code == 503 and status_of(body)["reason"] == "ServiceUnavailable"
            # nor is the object itself, and never a 404 (the complete view no longer proves it absent)
            code, body = await r.get(f"/api/v1/namespaces/{md['namespace']}/pods/{md['name']}")
            assert code == 503, body[:300]
            code, body = await r.get(f"{CONFIGMAPS}/{victim_cm['metadata']['name']}")
            assert code == 503, body[:300]
            code, body = await r.get(CONFIGMAPS)
            assert code == 503, body[:300]
            code, body = await r.get(f"{PODS}?{ON_NODE}&watch=true&resourceVersion=0", timeout=5)
            assert code == 503, body[:300]
            # what is intact is still served, byte for byte
            assert await r.get("/api/v1/services") == (200, services)
            other = json.loads(jsonwire.parse_list(cms).items[1])["metadata"]["name"]
            code, body = await r.get(f"{CONFIGMAPS}/{other}")
            assert code == 200 and json.loads(body)["metadata"]["name"] == other
            found = await scrape(service)
            assert found.get("edgeproxy_cache_corrupt_records_total", 0) >= 2, found

        code, out = await edgeproxy_cli("cache", "--cache-dir", str(tmp_path / "cache"), "verify")
        assert code == 1, out
        assert out.count("checksum") >= 3, out


# ---------------------------------------------------------------- an upstream that mangles recorded bytes


@dataclasses.dataclass
class Answer:
    """What the mangling upstream sends for one request: a recording, cut after `cut` of its body (then the
    connection is dropped), with Content-Length or chunked framing, and watch frame `flip` made undecodable."""

    name: str  # a recording in tests/fixtures, e.g. "pods-edge1.list.json"
    cut: float | None = None
    chunked: bool = False
    flip: int | None = None


class Mangler:
    """A tiny API server answering with what a real kube-apiserver sent (tests/recorded.py), mangled on request.
    /readyz answers 200 while `ready`; the answers are looked up by (path, is a watch)."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, bool], Answer] = {}
        self.ready = True
        self.sent: list[bytes] = []  # the body bytes of each answer, as sent (mangled)
        self.seen: list[tuple[str, str, bytes]] = []  # (method, path?query, body) of each request, as it arrived
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    def body(self, answer: Answer) -> bytes:
        rec = recorded.load(answer.name)
        if answer.flip is None:
            return rec.body
        frames = recorded.frames(rec.body, rec.content_type)
        bad = bytearray(frames[answer.flip])
        bad[4 if "protobuf" in rec.content_type else 0] ^= 0xFF  # a bad field tag / not JSON: cannot decode
        frames[answer.flip] = bytes(bad)
        return b"".join(frames)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/readyz":
            return web.Response(text="ok") if self.ready else web.Response(status=500, text="[-]etcd failed")
        self.seen.append((request.method, request.raw_path, await request.read()))
        if request.method in ("POST", "PUT", "PATCH"):  # echo: what arrived, as it arrived
            return web.Response(status=201, body=self.seen[-1][2], content_type="application/json")
        answer = self.answers.get((request.path, request.query.get("watch") in ("true", "1")))
        if answer is None:
            rec = recorded.load(recorded.NOT_FOUND)
            return web.Response(status=rec.status, body=rec.body, content_type="application/json")
        rec = recorded.load(answer.name)
        body = self.body(answer)
        self.sent.append(body if answer.cut is None else body[: int(len(body) * answer.cut)])
        headers = {k: v for k, v in rec.headers if k.lower() not in ("content-length", "date")}
        resp = web.StreamResponse(status=rec.status, headers=headers)
        if answer.chunked or "stream=watch" in rec.content_type or answer.name.startswith("watch."):
            resp.enable_chunked_encoding()
        else:
            resp.content_length = len(body)
        await resp.prepare(request)
        if answer.cut is not None:
            await resp.write(self.sent[-1])
            assert request.transport is not None
            request.transport.abort()  # mid-body: the rest never comes
            return resp
        for frame in recorded.frames(body, rec.content_type) if answer.name.startswith("watch.") else [body]:
            await resp.write(frame)
        await resp.write_eof()
        return resp


@contextlib.asynccontextmanager
async def mangled(tmp: Path) -> AsyncIterator[tuple[Mangler, server.Service, aiohttp.ClientSession]]:
    api = Mangler()
    # as the API server: request lines and headers up to 1 MiB (Go's MaxHeaderBytes), bodies as sent
    runner = web.AppRunner(api.app, access_log=None, max_line_size=1 << 20, max_field_size=1 << 20,
                           auto_decompress=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    cfg = config.Config(listen="127.0.0.1:0", ops_listen="127.0.0.1:0", cache_dir=str(tmp / "cache"),
                        probe_interval=0.2, offline_after=3, online_after=1, connect_timeout=1.0,
                        shutdown_timeout=0.5, plain_as_node=True)
    creds = upstream.Credentials(servers=(f"http://{host}:{port}",))
    try:
        async with server.running(cfg, creds=creds) as service, aiohttp.ClientSession() as http:
            yield api, service, http
    finally:
        await runner.cleanup()


def rig_of(service: server.Service, http: aiohttp.ClientSession) -> Rig:
    return Rig(None, service, http, http)  # type: ignore[arg-type]


async def offline_by_probe(api: Mangler, service: server.Service) -> None:
    api.ready = False  # /readyz 500: an API server whose etcd is gone
    await until(lambda: not service.upstream.online, 10)


# ---------------------------------------------------------------- 2. truncated upstream streams


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_list_cut_mid_body_is_an_error_to_the_client_and_never_a_cached_list(tmp_path, framing):
    chunked = framing == "chunked"
    async with mangled(tmp_path) as (api, service, http):
        r = rig_of(service, http)
        full = recorded.load("pods-edge1.list.json").body
        api.answers[(PODS, False)] = Answer("pods-edge1.list.json", chunked=chunked)
        assert await r.get(f"{PODS}?{ON_NODE}") == (200, full)
        # the same list again, cut halfway; and a list the proxy never sees whole
        api.answers[(PODS, False)] = Answer("pods-edge1.list.json", cut=0.5, chunked=chunked)
        api.answers[("/api/v1/nodes", False)] = Answer("nodes-edge1.list.json", cut=0.5, chunked=chunked)
        for path in (f"{PODS}?{ON_NODE}", "/api/v1/nodes?fieldSelector=metadata.name%3Dedge-1"):
            with pytest.raises(aiohttp.ClientPayloadError):  # the client sees an error, never a short 200 body
                await r.get(path)
        assert len(api.sent) == 3
        await r.settle()
        await offline_by_probe(api, service)
        # the view complete before the cut is served with its last committed state (the recording is indented,
        # as curl asked for it; the proxy stores what client-go gets, compact); the other is a 503
        code, body = await r.get(f"{PODS}?{ON_NODE}")
        assert code == 200 and json.loads(body) == json.loads(full)
        code, body = await r.get("/api/v1/nodes?fieldSelector=metadata.name%3Dedge-1")
        assert code == 503 and status_of(body)["reason"] == "ServiceUnavailable"


def the_view(rig_: Rig, resource: str, encoding: str) -> Any:
    """(key, meta) of the one view of `resource` in `encoding`."""
    found = [(k, m) for k, m in rig_.store.views() if k.resource == resource and k.encoding == encoding]
    assert len(found) == 1, found
    return found[0]


async def read_rest(resp: aiohttp.ClientResponse, timeout: float = 10) -> tuple[bytes, bool]:
    """The rest of a streamed body, and whether it ended with an error (rather than a clean end)."""
    out = bytearray()
    async with asyncio.timeout(timeout):
        try:
            async for chunk in resp.content.iter_any():
                out += chunk
        except aiohttp.ClientPayloadError:
            return bytes(out), True
    return bytes(out), False


async def test_a_chunked_list_cut_in_its_last_page_never_becomes_a_view(tmp_path):
    async with mangled(tmp_path) as (api, service, http):
        r = rig_of(service, http)
        api.answers[(PODS, False)] = Answer("pods-edge1.limit10.page1.json")
        code, page1 = await r.get(f"{PODS}?{ON_NODE}&limit=10")
        assert code == 200
        token = json.loads(page1)["metadata"]["continue"]
        api.answers[(PODS, False)] = Answer("pods-edge1.limit10.page2.json", cut=0.5)
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.get(f"{PODS}?{ON_NODE}&limit=10&continue={token}")
        await r.settle()
        assert not [m for k, m in r.store.views() if k.resource == "pods" and m.complete]
        await offline_by_probe(api, service)
        for query in (f"{ON_NODE}&limit=10", ON_NODE):  # ten items of fifteen are no list
            code, body = await r.get(f"{PODS}?{query}")
            assert code == 503 and status_of(body)["reason"] == "ServiceUnavailable"


async def test_a_watch_cut_mid_event_ends_for_the_client_and_the_view_keeps_its_last_event(tmp_path):
    async with rig(tmp_path) as r:
        code, listed = await r.get(f"{PODS}?{ON_NODE}")
        assert code == 200
        rv = json.loads(listed)["metadata"]["resourceVersion"]
        victim = json.loads(jsonwire.parse_list(listed).items[0])["metadata"]
        url = yarl.URL(f"{r.service.url}{PODS}?watch=true&{ON_NODE}&resourceVersion={rv}", encoded=True)
        async with asyncio.timeout(20), r.http.get(url, headers={"Accept": JSON, "User-Agent": KUBELET}) as w:
            assert w.status == 200
            r.sim.patch("pods", victim["name"], {"metadata": {"labels": {"cut": "before"}}},
                        namespace=victim["namespace"])
            line = await w.content.readline()
            assert json.loads(line)["type"] == "MODIFIED"
            code, expected = await r.get(f"{PODS}?{ON_NODE}", via="direct")  # the simulator's state now
            assert r.sim.cut_watches() == 1
            rest, _ = await read_rest(w)
            # the client got the half frame as sent (the proxy is transparent) and then the end of the stream:
            # client-go's decoder fails on it and re-watches from its last resourceVersion
            assert rest and not rest.endswith(b"\n")
        await r.settle()
        _, meta = the_view(r, "pods", "json")
        assert meta.complete and meta.resource_version == json.loads(expected)["metadata"]["resourceVersion"]
        await r.offline()
        code, body = await r.get(f"{PODS}?{ON_NODE}")
        assert code == 200 and json.loads(body) == json.loads(expected)  # the state at the last event, all of it


async def test_a_watch_list_cut_before_its_end_bookmark_never_becomes_a_view(tmp_path):
    async with rig(tmp_path) as r:
        code, listed = await r.get(f"{PODS}?{ON_NODE}")  # a complete view of this query, from a list
        assert code == 200
        await r.settle()
        r.sim.slow(0.05)  # the initial events trickle, so the stream can be cut among them
        wl = "watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        async with contextlib.AsyncExitStack() as stack:
            streams = []
            for path_qs in (f"{PODS}?{wl}&{ON_NODE}", f"{CONFIGMAPS}?{wl}"):
                url = yarl.URL(r.service.url + path_qs, encoded=True)
                w = await stack.enter_async_context(r.http.get(url, headers={"Accept": JSON, "User-Agent": KUBELET}))
                assert w.status == 200
                async with asyncio.timeout(10):
                    assert json.loads(await w.content.readline())["type"] == "ADDED"
                streams.append(w)
            await r.sim.down()
            for w in streams:
                rest, _ = await read_rest(w)
                assert b"initial-events-end" not in rest
        r.sim.slow(0)
        await r.settle()
        await until(lambda: not r.service.upstream.online, 10)
        code, body = await r.get(f"{PODS}?{ON_NODE}")  # the view from the list, untouched
        assert code == 200 and json.loads(body) == json.loads(listed)
        code, body = await r.get(CONFIGMAPS)  # never seen whole: no list, no empty list
        assert code == 503 and status_of(body)["reason"] == "ServiceUnavailable"


# ---------------------------------------------------------------- 6. upstream garbage


@pytest.mark.parametrize("enc", ["json", "pb"])
async def test_an_undecodable_watch_frame_reaches_the_client_unchanged_and_the_view_is_incomplete(tmp_path, enc):
    accept, encoding = (PB, "protobuf") if enc == "pb" else (JSON, "json")
    async with mangled(tmp_path) as (api, service, http):
        r = rig_of(service, http)
        api.answers[(PODS, False)] = Answer(f"pods-edge1.list.{enc}")
        assert (await r.get(f"{PODS}?{ON_NODE}", accept=accept))[0] == 200
        await r.settle()
        assert the_view(r, "pods", encoding)[1].complete
        api.answers[(PODS, True)] = Answer(f"watch.pods-edge1.{enc}", flip=1)
        code, body = await r.get(f"{PODS}?watch=true&{ON_NODE}&resourceVersion=304&allowWatchBookmarks=true",
                                 accept=accept)
        assert code == 200 and body == api.sent[-1]  # every byte as the upstream sent it, the bad frame too
        assert body != recorded.load(f"watch.pods-edge1.{enc}").body
        await r.settle()
        _, meta = the_view(r, "pods", encoding)
        assert not meta.complete  # it missed the change in the frame it could not read
        found = await scrape(service)
        assert found["edgeproxy_cache_record_errors_total"] >= 1
        await offline_by_probe(api, service)
        code, body = await r.get(f"{PODS}?{ON_NODE}", accept=accept)
        assert code == 503 and status_of(body)["reason"] == "ServiceUnavailable"


# ---------------------------------------------------------------- 4. a full disk, a full map


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Any:
    """A small tmpfs mounted at `path` (root only), unmounted on exit."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_full_disk_loses_no_forwarded_byte_counts_write_failures_and_recording_resumes(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        sim.seed(pods=1000)  # a pod list of about 5 MB of JSON: more than the disk holds
        with tmpfs(tmp_path / "cache", "2m") as cache_dir:
            async with serving(sim, tmp_path) as service, aiohttp.ClientSession() as http, aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=sim.client_ssl("admin"))) as direct:
                r = Rig(sim, service, http, direct)
                before = (await scrape(service)).get("edgeproxy_cache_writes_failed_total", 0)
                for accept in (JSON, PB):
                    got = await r.get(PODS, accept=accept)
                    assert got[0] == 200 and got == await r.get(PODS, accept=accept, via="direct")  # every byte
                await r.settle()
                assert (await scrape(service))["edgeproxy_cache_writes_failed_total"] > before
                assert not [k for k, m in r.store.views() if k.resource == "pods" and m.complete]
                code, small = await r.get(f"{CONFIGMAPS}/web-config")  # the proxy goes on serving
                assert code == 200 and (code, small) == await r.get(f"{CONFIGMAPS}/web-config", via="direct")

                # space comes back: the next list is recorded, and served offline
                subprocess.run(["mount", "-o", "remount,size=64m", str(cache_dir)], check=True)
                code, listed = await r.get(PODS)
                assert code == 200
                await r.settle()
                assert [m.complete for k, m in r.store.views() if k.resource == "pods"] == [True]
                await r.offline()
                code, body = await r.get(PODS)
                assert code == 200 and json.loads(body) == json.loads(listed)


def fill(disk: Path) -> Path:
    """Fill a filesystem to its last byte; the filler file is returned (delete it to free the space)."""
    filler = disk / "filler"
    with contextlib.suppress(OSError), filler.open("wb") as f:
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


async def test_a_disk_that_fills_under_a_watch_makes_its_view_incomplete_not_stale(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        with tmpfs(tmp_path / "cache", "4m") as cache_dir:
            async with serving(sim, tmp_path) as service, aiohttp.ClientSession() as http:
                r = Rig(sim, service, http, http)
                code, listed = await r.get(f"{PODS}?{ON_NODE}")
                rv = json.loads(listed)["metadata"]["resourceVersion"]
                await r.settle()
                assert the_view(r, "pods", "json")[1].complete
                filler = fill(cache_dir)
                victims = [json.loads(i)["metadata"] for i in jsonwire.parse_list(listed).items]
                url = yarl.URL(f"{service.url}{PODS}?watch=true&{ON_NODE}&resourceVersion={rv}", encoded=True)
                async with asyncio.timeout(20), http.get(url, headers={"Accept": JSON, "User-Agent": KUBELET}) as w:
                    for md in victims:  # changes the full disk cannot take
                        sim.patch("pods", md["name"], {"metadata": {"annotations": {"big": "x" * 60000}}},
                                  namespace=md["namespace"])
                    for _ in victims:  # every event reached the client
                        assert json.loads(await w.content.readline())["type"] == "MODIFIED"
                await r.settle()
                assert (await scrape(service))["edgeproxy_cache_writes_failed_total"] >= 1
                assert not the_view(r, "pods", "json")[1].complete  # it misses changes: not the list any more
                await r.offline()
                code, body = await r.get(f"{PODS}?{ON_NODE}")
                assert code == 503 and status_of(body)["reason"] == "ServiceUnavailable"
                filler.unlink()  # space comes back before the proxy stops: the flag reaches the disk
            async with serving(sim, tmp_path) as service, aiohttp.ClientSession() as http:  # a reboot, offline
                code, body = await Rig(sim, service, http, http).get(f"{PODS}?{ON_NODE}")
                assert code == 503, "a view that missed changes came back as complete after a restart"


async def test_started_on_a_full_disk_the_proxy_forwards_without_a_cache(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        with tmpfs(tmp_path / "disk", "1m") as disk:
            fill(disk)
            async with serving(sim, tmp_path, cache_dir=str(disk / "cache")) as service, \
                    aiohttp.ClientSession() as http, aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(ssl=sim.client_ssl("admin"))) as direct:
                r = Rig(sim, service, http, direct)
                got = await r.get(f"{PODS}?{ON_NODE}")
                assert got[0] == 200 and got == await r.get(f"{PODS}?{ON_NODE}", via="direct")
                assert service.proxy.recorder is None  # it said so in its log, and runs as with --cache off
                await r.offline()
                code, body = await r.get(f"{PODS}?{ON_NODE}")
                assert code == 503 and status_of(body)["reason"] == "ServiceUnavailable"


async def test_a_truncated_sealing_key_the_proxy_forwards_without_a_cache(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        async with serving(sim, tmp_path) as service, aiohttp.ClientSession() as http:
            assert (await Rig(sim, service, http, http).get(f"{PODS}?{ON_NODE}"))[0] == 200
        key = tmp_path / "cache" / "seal.key"
        key.write_bytes(key.read_bytes()[:7])  # a bad sector, a half-restored backup
        async with serving(sim, tmp_path) as service, aiohttp.ClientSession() as http, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=sim.client_ssl("admin"))) as direct:
            r = Rig(sim, service, http, direct)
            got = await r.get(f"{PODS}?{ON_NODE}")
            assert got[0] == 200 and got == await r.get(f"{PODS}?{ON_NODE}", via="direct")
            assert service.proxy.recorder is None
        code, out = await edgeproxy_cli("cache", "--cache-dir", str(tmp_path / "cache"), "verify")
        assert code != 0 and "seal" in out, out  # the operator's tool names the problem


async def test_a_full_lmdb_map_loses_no_forwarded_byte_and_small_views_still_record(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        sim.seed(pods=1000)
        async with serving(sim, tmp_path, cache_map_size=1 << 20) as service, aiohttp.ClientSession() as http, \
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sim.client_ssl("admin"))) as direct:
            r = Rig(sim, service, http, direct)
            got = await r.get(PODS, accept=PB)
            assert got[0] == 200 and got == await r.get(PODS, accept=PB, via="direct")
            code, services = await r.get("/api/v1/services")
            assert code == 200
            await r.settle()
            found = await scrape(service)
            assert found["edgeproxy_cache_map_full_total"] >= 1 and found["edgeproxy_cache_writes_failed_total"] >= 1
            assert [m.complete for k, m in r.store.views() if k.resource == "services"] == [True]
            assert not [k for k, m in r.store.views() if k.resource == "pods" and m.complete]
            await r.offline()
            assert await r.get("/api/v1/services") == (200, services)
            code, body = await r.get(PODS, accept=PB)
            assert code == 503 and status_of(body)["reason"] == "ServiceUnavailable"


# ---------------------------------------------------------------- 5. kill -9 while recording


class Serve:
    """`python -m edgeproxy serve` in a subprocess on a cache directory; its URLs from its start-up log line."""

    def __init__(self, kubeconfig: Path, cache_dir: Path) -> None:
        self.args = ["serve", "--kubeconfig", str(kubeconfig), "--cache-dir", str(cache_dir),
                     "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0", "--probe-interval", "0.2",
                     "--offline-after", "3", "--online-after", "1", "--connect-timeout", "1",
                     "--plain-as-node", "on"]
        self.proc: asyncio.subprocess.Process | None = None
        self.url = self.ops_url = ""
        self.log: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> Serve:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgeproxy", *self.args, cwd=str(ROOT), env=subprocess_env(),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        async with asyncio.timeout(20):
            while not self.url:
                line = (await self.proc.stderr.readline()).decode()
                assert line, "edgeproxy serve exited:\n" + "".join(self.log)
                self.log.append(line)
                m = re.search(r"serving on (http://\S+) \(ops on (http://\S+)\)", line)
                if m:
                    self.url, self.ops_url = m.groups()
        self._drain = asyncio.ensure_future(self._read_rest())  # a full pipe would stop the proxy
        return self

    async def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode())

    async def metric(self, http: aiohttp.ClientSession, name: str) -> float:
        async with asyncio.timeout(10), http.get(f"{self.ops_url}/metrics") as r:
            for line in (await r.text()).splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        return 0.0

    async def wait_online(self, http: aiohttp.ClientSession, timeout: float = 30) -> None:
        """Until /readyz says the API server answered (online and no longer connecting)."""
        async def online() -> bool:
            async with asyncio.timeout(10), http.get(f"{self.ops_url}/readyz") as r:
                return r.headers.get("X-Edgeproxy-Online") == "true"
        async with asyncio.timeout(timeout):
            while not await online():
                await asyncio.sleep(0.05)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)
            async with asyncio.timeout(20):
                await self.proc.wait()
        if self._drain is not None:
            await self._drain


def served_items(body: bytes, accept: str) -> tuple[str, dict[str, tuple[str, bytes]]]:
    """(list resourceVersion, {namespace/name: (resourceVersion, item bytes)}) of a list body."""
    if accept == PB:
        parts = protobuf.parse_list(protobuf.unwrap(body).raw)
        metas = [(protobuf.object_meta(raw), bytes(raw)) for raw in parts.items]
    else:
        parts = jsonwire.parse_list(body)
        metas = [(jsonwire.object_meta(raw), bytes(raw)) for raw in parts.items]
    return parts.resource_version, {f"{m.namespace}/{m.name}": (m.resource_version, raw) for m, raw in metas}


def sim_state(sim: Simulator, rv: str, on_node: bool, accept: str) -> dict[str, tuple[str, bytes]]:
    """The simulator's pods as they were at `rv`, in the form served_items gives."""
    out = {}
    for (ns, name), e in sim.store.snapshot("pods", int(rv)).items():
        if on_node and (e.obj.get("spec") or {}).get("nodeName") != "edge-1":
            continue
        out[f"{ns}/{name}"] = (str(e.rv), e.pb if accept == PB else e.json)
    return out


async def test_kill_9_while_recording_a_busy_watch_leaves_only_states_the_cluster_had(tmp_path):
    queries = [(PODS, JSON), (PODS, PB), (f"{PODS}?{ON_NODE}", PB), (f"{PODS}?{ON_NODE}", JSON)]
    async with Simulator(pki_dir=tmp_path / "pki", history_size=200_000) as sim, aiohttp.ClientSession() as http:
        sim.seed(pods=300)
        kubeconfig = sim.kubeconfig(tmp_path / "upstream.kubeconfig", "admin")
        cache_dir = tmp_path / "cache"
        for round_ in range(2):  # each round kills a proxy that took over the previous one's cache
            await sim.up()
            proxy = await Serve(kubeconfig, cache_dir).start()
            watches, opened = [], []
            try:
                await proxy.wait_online(http)  # the lists below are the API server's, not a 503 of a proxy starting
                for path_qs, accept in queries:  # an informer per query: list, then watch from the list's version
                    code, body = await get(http, proxy.url + path_qs, accept)
                    assert code == 200, body[:300]
                    rv, _ = served_items(body, accept)
                    sep = "&" if "?" in path_qs else "?"
                    opened.append(asyncio.get_running_loop().create_future())
                    watches.append(asyncio.ensure_future(drain_watch(
                        http, f"{proxy.url}{path_qs}{sep}watch=true&resourceVersion={rv}&allowWatchBookmarks=true",
                        accept, opened[-1])))
                async with asyncio.timeout(30):  # every watch answered before the kill: the kill cuts open streams
                    await asyncio.gather(*opened)
                churn = asyncio.ensure_future(busy(sim, round_))
                applied = start = await proxy.metric(http, "edgeproxy_cache_events_applied_total")
                async with asyncio.timeout(30):  # kill while events pour in and are being committed
                    while applied < start + 600:
                        applied = await proxy.metric(http, "edgeproxy_cache_events_applied_total")
                await proxy.stop(signal.SIGKILL)
                churn.cancel()
                for w in watches:
                    await asyncio.wait_for(w, 10)  # each client saw its stream end
            finally:
                await proxy.stop(signal.SIGKILL)
            code, out = await edgeproxy_cli("cache", "--cache-dir", str(cache_dir), "verify")
            assert code == 0, f"round {round_}: {out}"

            await sim.down()  # a reboot while offline: everything served comes from what the kill left
            proxy = await Serve(kubeconfig, cache_dir).start()
            try:
                served = 0
                for path_qs, accept in queries:
                    code, body = await get(http, proxy.url + path_qs, accept)
                    if code == 503:
                        continue  # not complete: never half of one
                    assert code == 200, body[:300]
                    rv, items = served_items(body, accept)
                    assert items == sim_state(sim, rv, ON_NODE in path_qs, accept), f"{path_qs} {accept} at {rv}"
                    served += 1
                assert served >= 1  # plain watches that break leave their views complete at their last event
            finally:
                await proxy.stop()
        code, out = await edgeproxy_cli("cache", "--cache-dir", str(cache_dir), "verify")
        assert code == 0, out


async def get(http: aiohttp.ClientSession, url: str, accept: str) -> tuple[int, bytes]:
    async with asyncio.timeout(20), http.get(yarl.URL(url, encoded=True),
                                             headers={"Accept": accept, "User-Agent": KUBELET}) as r:
        return r.status, await r.read()


async def drain_watch(http: aiohttp.ClientSession, url: str, accept: str,
                      opened: asyncio.Future[None] | None = None) -> None:
    """Read a watch until it ends, however it ends once it was answered (`opened` is set then)."""
    try:
        async with http.get(yarl.URL(url, encoded=True), headers={"Accept": accept, "User-Agent": KUBELET}) as r:
            assert r.status == 200
            if opened is not None:
                opened.set_result(None)
            async for _ in r.content.iter_any():
                pass
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError):
        pass


BACKLOG = 200  # events the simulator may have queued for its slowest watch before the churn waits for it


async def busy(sim: Simulator, salt: int = 0) -> None:
    """Change pods as fast as the watches take the events: relabel them round robin, delete one now and then.
    Paced by the simulator's watch queues (the proxy's upstream watches): a producer that runs ahead of its consumer
    without bound starves, on a loaded machine, the very proxy whose progress the test waits for."""
    names = sorted(sim.store.objects["pods"])
    i = salt
    while True:
        ns, name = names[i % len(names)]
        if i % 97 == 0 and name.startswith("load") and sim.get("pods", name, ns) is not None:
            sim.delete("pods", name, ns, grace=0)
        elif sim.get("pods", name, ns) is not None:
            sim.patch("pods", name, {"metadata": {"labels": {"churn": f"{salt}-{i}"}}}, namespace=ns)
        i += 1
        if i % 20 == 0:
            await asyncio.sleep(0)  # let the simulator write the events out
            while any(w.queue.qsize() > BACKLOG for w in sim.api.watches):
                await asyncio.sleep(0.01)  # polled: the watches' writers drain the queues meanwhile


async def test_a_watch_answered_with_a_list_marks_the_view_incomplete_and_a_relist_completes_it(tmp_path):
    async with mangled(tmp_path) as (api, service, http):
        r = rig_of(service, http)
        api.answers[(PODS, False)] = Answer("pods-edge1.list.json")
        api.answers[(PODS, True)] = Answer("pods-edge1.list.json")  # not a watch stream at all
        code, listed = await r.get(f"{PODS}?{ON_NODE}")
        assert code == 200
        code, body = await r.get(f"{PODS}?watch=true&{ON_NODE}&resourceVersion=304")
        assert (code, body) == (200, api.sent[-1])  # forwarded as it came
        # the client, its watch ended at once, relists: the same list at the same resourceVersion
        assert await r.get(f"{PODS}?{ON_NODE}") == (200, listed)
        await r.settle()
        assert the_view(r, "pods", "json")[1].complete  # the relist made it whole again
        await offline_by_probe(api, service)
        code, body = await r.get(f"{PODS}?{ON_NODE}")
        assert code == 200 and json.loads(body) == json.loads(listed)


async def test_a_long_selector_and_a_gzip_body_reach_the_api_server_as_sent(tmp_path):
    async with mangled(tmp_path) as (api, service, http):
        r = rig_of(service, http)
        api.answers[(PODS, False)] = Answer("pods-edge1.list.json")
        long_selector = "labelSelector=app%20in%20(" + ",".join(f"v{i}" for i in range(3000)) + ")"  # ~20 KB
        code, body = await r.get(f"{PODS}?{long_selector}")
        assert (code, body) == (200, recorded.load("pods-edge1.list.json").body)
        assert api.seen[-1][:2] == ("GET", f"{PODS}?{long_selector}")
        # past what the API server takes: an error, and the proxy goes on
        async with asyncio.timeout(10), http.get(yarl.URL(f"{service.url}{PODS}?labelSelector={'a' * (1 << 20)}",
                                                          encoded=True)) as resp:
            assert 400 <= resp.status < 500
        gz = gzip.compress(json.dumps({"kind": "ConfigMap", "apiVersion": "v1",
                                       "metadata": {"name": "zipped"}}).encode())
        async with asyncio.timeout(10), http.post(
                f"{service.url}{CONFIGMAPS}", data=gz,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}) as resp:
            assert resp.status == 201
        assert api.seen[-1] == ("POST", CONFIGMAPS, gz)  # still gzip: the API server decodes it, not the proxy
        assert await r.get(f"{PODS}?{ON_NODE}") == (200, recorded.load("pods-edge1.list.json").body)


async def test_bytes_that_are_not_http_get_a_400_and_the_proxy_goes_on(tmp_path):
    async with mangled(tmp_path) as (api, service, http):
        host, port = yarl.URL(service.url).host, yarl.URL(service.url).port
        for garbage in (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",  # TLS hello
                        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
                        b"NOT HTTP AT ALL\r\n\r\n"):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                writer.write(garbage)
                async with asyncio.timeout(10):
                    head = await reader.readline()
                assert re.match(rb"HTTP/1\.[01] 400 ", head), (garbage[:20], head)
            finally:
                writer.close()
        api.answers[(PODS, False)] = Answer("pods-edge1.list.json")
        assert (await rig_of(service, http).get(f"{PODS}?{ON_NODE}"))[0] == 200
