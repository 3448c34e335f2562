"""A hung API server (the simulator's `hang`: connections accepted, kept-alive ones kept, no answer) end to end: each
forwarded request gives up at its response-head deadline and is answered locally, long before the prober alone would
turn the proxy offline; the failures count toward offline; an open idle watch is left alone.

Probes here hang as long as the requests (their timeout is long), so what moves the proxy offline is the header
deadline and nothing else. Every wait is bounded: a condition polled with a bound (Edge.wait_state), or a client's
own timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from edgeproxy import metrics
from tests.e2e import edge as edge_mod
from tests.e2e.edge import NODE

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

KUBELET = "kubelet/v1.32.0 (linux/amd64) kubernetes/cd13ec4"
JSON = "application/json"
CM = "/api/v1/namespaces/edge/configmaps"
LEASE = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"
SLOW_PROBES = {"probe_timeout": 30.0}  # a probe of the hung simulator hangs for the whole test


@contextlib.asynccontextmanager
async def hung_edge(tmp_path, **settings: object) -> AsyncIterator[tuple[edge_mod.Edge, aiohttp.ClientSession]]:
    async with edge_mod.edge(tmp_path, settings={**SLOW_PROBES, **settings}) as e, \
            aiohttp.ClientSession(headers={"User-Agent": KUBELET, "Accept": JSON}) as http:
        try:
            yield e, http
        finally:
            e.sim.hang(False)  # let the simulator's hung handlers finish before it stops


def timeouts(e: edge_mod.Edge) -> float:
    return metrics.REGISTRY.get_sample_value("edgeproxy_upstream_header_timeouts_total",
                                             {"server": e.sim.url}) or 0.0


async def get(http: aiohttp.ClientSession, url: str, timeout: float = 20) -> tuple[int, dict, str]:
    async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as r:
        return r.status, await r.json(), r.headers.get("X-Edgeproxy-Source", "upstream")


async def test_a_hung_api_server_is_answered_locally_before_the_client_gives_up(tmp_path):
    async with hung_edge(tmp_path, upstream_header_timeout=1.0, offline_after=10) as (e, http), asyncio.timeout(50):
        # online: a cached object, and an open watch (headers arrived, then idle: no event)
        code, cm_online, source = await get(http, f"{e.url}{CM}/web-config")
        assert (code, source) == (200, "upstream")
        code, listed, _ = await get(http, f"{e.url}{CM}")
        rv = listed["metadata"]["resourceVersion"]
        watch = await http.get(f"{e.url}{CM}?watch=true&resourceVersion={rv}&timeoutSeconds=50")
        assert watch.status == 200
        await e.settle()

        e.sim.hang(True)
        # kubelet's Lease renewal, with its client timeout in the query as client-go sends it: the header deadline is
        # half of it, and the node agent's renewal is answered locally (200 with the renewed object) before the
        # client's own 2 s run out
        stored = e.sim.get("leases", NODE, "kube-node-lease")
        lease = {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", **stored}
        lease["spec"] = {**lease["spec"], "renewTime": "2026-11-24T18:00:00.000000Z"}
        async with http.put(f"{e.url}{LEASE}?timeout=2s", data=json.dumps(lease).encode(),
                            headers={"Content-Type": JSON}, timeout=aiohttp.ClientTimeout(total=2)) as r:
            assert r.status == 200 and r.headers["X-Edgeproxy-Source"] == "cache"
            renewed = await r.json()
        assert renewed["spec"]["renewTime"] == "2026-11-24T18:00:00.000000Z"
        # a GET of a cached object: from the cache, before the client's own 2 s
        code, cm_local, source = await get(http, f"{e.url}{CM}/web-config?timeout=2s", timeout=2)
        assert (code, source) == (200, "cache") and cm_local["data"] == cm_online["data"]
        assert timeouts(e) == 2 and e.service.upstream.online  # counted; not yet offline_after in a row

        # the watch opened before all this has been idle past the deadline, and is still open: the API server's
        # next change reaches it
        e.sim.hang(False)
        e.sim.create("configmaps", {"metadata": {"name": "after-the-hang", "namespace": "edge"}, "data": {"a": "b"}},
                     "edge")
        seen: list[str] = []
        while "after-the-hang" not in seen:
            line = await watch.content.readline()
            assert line, f"the watch ended: {seen}"
            seen.append(json.loads(line)["object"]["metadata"]["name"])
        watch.close()


async def test_repeated_header_timeouts_turn_the_proxy_offline_until_the_hang_ends(tmp_path):
    settings = {"upstream_header_timeout": 0.5, "offline_after": 2, "online_after": 1, "ops_listen": "127.0.0.1:0"}
    async with hung_edge(tmp_path, **settings) as (e, http), asyncio.timeout(50):
        ops = e.service.ops_url
        code, cm_online, _ = await get(http, f"{e.url}{CM}/web-config")
        assert code == 200
        await e.settle()

        e.sim.hang(True)
        for _ in range(2):  # offline_after header timeouts in a row, each answered from the cache
            code, cm_local, source = await get(http, f"{e.url}{CM}/web-config")
            assert (code, source) == (200, "cache") and cm_local["data"] == cm_online["data"]
        assert not e.service.upstream.online and timeouts(e) == 2
        async with http.get(f"{ops}/readyz") as r:
            assert r.status == 200 and "[-]upstream offline" in await r.text()
        async with http.get(f"{ops}/metrics") as r:
            assert "edgeproxy_online 0.0" in await r.text()

        e.sim.hang(False)  # the probe in flight gets its answer
        await e.wait_state(online=True, timeout=20)
        async with http.get(f"{ops}/readyz") as r:
            assert "[+]upstream online" in await r.text()
        code, _, source = await get(http, f"{e.url}{CM}/web-config")
        assert (code, source) == (200, "upstream")


async def test_with_the_header_deadline_disabled_a_request_waits_for_the_prober(tmp_path):
    settings = {"upstream_header_timeout": 0, "probe_timeout": 0.5, "offline_after": 2}
    async with hung_edge(tmp_path, **settings) as (e, http), asyncio.timeout(50):
        assert (await get(http, f"{e.url}{CM}/web-config"))[0] == 200
        await e.settle()
        e.sim.hang(True)
        code, _, source = await get(http, f"{e.url}{CM}/web-config?timeout=2s")
        # answered from the cache only once failed probes turned the proxy offline, never at a deadline
        assert (code, source) == (200, "cache")
        assert not e.service.upstream.online and timeouts(e) == 0
