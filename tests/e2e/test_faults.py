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

    async def get(self, path_qs: str, accept: str = JSON, via: str = "proxy") -> tuple[int, bytes]:
        """A GET whose path and query go on the wire exactly as written (no re-encoding)."""
        session, base = (self.http, self.service.url) if via == "proxy" else (self.direct, self.sim.url)
        async with asyncio.timeout(20), session.get(yarl.URL(base + path_qs, encoded=True),
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
