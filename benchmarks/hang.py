"""Benchmark: a hung API server (accepts, never answers). How long kubelet's Lease renewal and a GET of a cached object
wait for their local answer, and when the proxy turns offline: with the response-head deadline (the default 10 s;
half the client's `timeout=`) and with it disabled (`--upstream-header-timeout 0`: only the prober notices).

Processes as in benchmarks/offline.py (whose simulator child and `edgeproxy serve` child it uses): the proxy's default
probing (every 5 s, 2 s timeout, offline after 3 failures). Run alone: `python -m benchmarks.hang`. Reports figures,
asserts nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import harness, offline

SCENARIO = "hang"
LEASE = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/edge-1"
CM = "/api/v1/namespaces/bench/configmaps"
JSON = "application/json"


async def _online(proxy: offline.Proxy) -> bool:
    async with aiohttp.ClientSession() as s, s.get(proxy.ops_url + "/readyz") as r:
        return r.headers.get("X-Edgeproxy-Online") == "true"


async def _timed(t0: float, call: Any) -> tuple[float, int, str]:
    async with call as r:
        await r.read()
        return (time.perf_counter() - t0) * 1000, r.status, r.headers.get("X-Edgeproxy-Source", "upstream")


async def _one(work: Path, header_timeout: str) -> list[dict[str, object]]:
    work.mkdir(parents=True, exist_ok=True)
    sim = offline.Sim(10, work)
    probing = (*offline.DEFAULTS, "--upstream-header-timeout", header_timeout)
    proxy = offline.Proxy(sim.kubeconfig, work / "cache", probing)
    variant = "disabled" if header_timeout == "0" else f"deadline {header_timeout} s"
    headers = {"User-Agent": offline.UA, "Accept": JSON}
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=60)) as s:
            harness.wait_port(proxy.port, proc=proxy.proc)
            async with s.get(proxy.url + LEASE) as r:  # online: recorded
                lease = await r.json()
            cm = {"metadata": {"name": "cached", "namespace": "bench"}, "data": {"a": "b"}}
            async with s.post(proxy.url + CM, json=cm) as r:
                await r.read()
            async with s.get(proxy.url + CM + "/cached") as r:
                await r.read()
            await asyncio.sleep(1.0)  # recorded and committed
            lease["spec"]["renewTime"] = "2026-11-24T18:00:00.000000Z"
            body = json.dumps(lease).encode()
            await sim.fault(s, hang=True)
            t0 = time.perf_counter()
            put = _timed(t0, s.put(proxy.url + LEASE + "?timeout=10s", data=body, headers={"Content-Type": JSON}))
            get = _timed(t0, s.get(proxy.url + CM + "/cached"))
            (lease_ms, lease_code, lease_src), (get_ms, get_code, get_src) = await asyncio.gather(put, get)
            while await _online(proxy) and time.perf_counter() - t0 < 60:
                await asyncio.sleep(0.05)
            offline_ms = (time.perf_counter() - t0) * 1000
            await sim.fault(s, hang=False)
    finally:
        proxy.stop()
        sim.stop()
    note = "the proxy's default probing: every 5 s, timeout 2 s, offline after 3 failures"
    return [
        harness.row(SCENARIO, "hung API server: kubelet Lease PUT (timeout=10s) answered", lease_ms, "ms",
                    variant=variant, note=f"{lease_code} from {lease_src}; kubelet gives up at 10 s"),
        harness.row(SCENARIO, "hung API server: GET of a cached object answered", get_ms, "ms", variant=variant,
                    note=f"{get_code} from {get_src}"),
        harness.row(SCENARIO, "hung API server: proxy offline after", offline_ms, "ms", variant=variant, note=note),
    ]


def run(opts: harness.Options) -> list[dict[str, object]]:
    work = opts.work or Path("/tmp")
    rows: list[dict[str, object]] = []
    for header_timeout in ("10", "0"):
        rows += asyncio.run(_one(work / f"hang-{header_timeout}", header_timeout))
    return rows


if __name__ == "__main__":
    raise SystemExit(harness.main(run))
