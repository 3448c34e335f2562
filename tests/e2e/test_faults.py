"""Bad input end to end: each way a request, an upstream stream, the cache or the disk can go wrong, through the
running proxy, asserting what a client or an operator would notice.

The matrix (one test each, named for the path): a malformed request; a watch cut mid-event; a list body cut
mid-way; a watch-list cut before its initial-events-end bookmark; a corrupt cache record; a full disk (a 2 MiB
tmpfs) and a full LMDB map; kill -9 of `edgeproxy serve` while it records a busy watch; an upstream frame that does
not decode. Every test bounds its own time and polls conditions with a bound (edge.until), never sleeps to wait.
The proxies here are wired as `edgeproxy serve` wires them (server.running → offline.hooks), with fast probing, so
the simulator going down turns them offline within a few hundred milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yarl

from edgeproxy import config, server
from edgeproxy.kube import jsonwire
from edgeproxy.sim import Simulator
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
                                       probe_interval=0.2, probe_timeout=2.0, offline_after=1, online_after=1,
                                       connect_timeout=1.0, shutdown_timeout=0.5)
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
            await r.settle()
        victim_pod = json.loads(jsonwire.parse_list(pods).items[3])
        victim_cm = json.loads(jsonwire.parse_list(cms).items[0])
        for obj in (victim_pod, victim_cm):
            assert flip_everywhere(tmp_path / "cache" / "data.mdb", obj["metadata"]["uid"].encode()) >= 1

        await sim.down()
        async with serving(sim, tmp_path) as service, aiohttp.ClientSession() as http:
            r = Rig(sim, service, http, http)
            # a list with a corrupt item is not served short of it: kubelet would kill the missing pod
            code, body = await r.get(f"{PODS}?{ON_NODE}")
            assert code == 503 and status_of(body)["reason"] == "ServiceUnavailable"
            # nor is the object itself, and never a 404 (the complete view no longer proves it absent)
            md = victim_pod["metadata"]
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
        assert out.count("checksum") >= 2, out
