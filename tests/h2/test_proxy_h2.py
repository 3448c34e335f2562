"""The proxy over HTTP/2: 500 watches and small requests of one identity on one upstream connection, every event
delivered, and a watcher that stops reading stalls only its own stream (its window fills, the others go on)."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp
import pytest

from edgeproxy import server, upstream
from edgeproxy.h2 import session as h2session
from edgeproxy.sim import Simulator
from edgeproxy.sim.h2front import H2Front
from tests.h2.test_client import configmap, until
from tests.test_proxy import proxy_config

pytestmark = pytest.mark.timeout(120)

WATCHERS = 500
BIG = 200 << 10  # bytes of each configmap the stalled watcher is sent (under aiohttp's 512 KiB line limit)
BIG_COUNT = 60  # 12 MiB: more than its stream window and the socket buffers on the way


async def events_of(resp: aiohttp.ClientResponse, n: int) -> list[str]:
    names = []
    while len(names) < n:
        line = await resp.content.readline()
        if not line:
            break
        names.append(json.loads(line)["object"]["metadata"]["name"])
    return names


async def test_500_watches_one_connection_no_head_of_line_stall(tmp_path):
    sim = Simulator(pki_dir=tmp_path / "pki")
    await sim.start()
    front = H2Front(sim, user="admin", max_streams=1000)
    await front.start()
    creds = dataclasses.replace(upstream.load_kubeconfig(sim.kubeconfig(tmp_path / "kc", user="admin")),
                                servers=(front.url,))
    sim.create("namespaces", {"metadata": {"name": "big"}})
    try:
        # Everything here shares one event loop on a busy machine: the header deadline is not what is tested.
        async with server.running(proxy_config(upstream_header_timeout=0), creds=creds) as svc, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None)) as s:
            rv = sim.store.rv
            stalled = await s.get(svc.url + f"/api/v1/namespaces/big/configmaps?watch=true&resourceVersion={rv}")
            watchers = await asyncio.gather(*(
                s.get(svc.url + f"/api/v1/namespaces/edge/configmaps?watch=true&resourceVersion={rv}")
                for _ in range(WATCHERS - 1)))
            bad = [w for w in [stalled, *watchers] if w.status != 200]
            assert not bad, await bad[0].text()

            # The stalled watcher is sent far more than its window and never reads. Its window is full once what
            # it holds unread here is more than the quarter window handed back at a time could explain.
            for i in range(BIG_COUNT):
                sim.create("configmaps", configmap(f"big-{i}", BIG), namespace="big")

            def buffered() -> int:
                conns = svc.upstream.state()["servers"][0]["connections"]
                return max((b for c in conns for b in c["buffered_bytes"]), default=0)

            await until(lambda: buffered() >= h2session.STREAM_WINDOW // 2, timeout=60,
                        what="the stalled stream's window to fill")

            # Meanwhile everybody else goes on: small requests and every event of the other 499 watchers.
            small = await asyncio.gather(*(s.get(svc.url + "/api/v1/namespaces/default") for _ in range(50)))
            assert {r.status for r in small} == {200}
            for r in small:
                r.release()
            for i in range(5):
                sim.create("configmaps", configmap(f"small-{i}"), namespace="edge")
            got = await asyncio.wait_for(asyncio.gather(*(events_of(w, 5) for w in watchers)), 60)
            assert all(names == [f"small-{i}" for i in range(5)] for names in got)

            # Buffering stayed bounded by the stream's window; one connection carried it all.
            assert buffered() <= h2session.STREAM_WINDOW
            assert front.connections == 1
            assert front.peak_streams >= WATCHERS

            # The stalled watcher reads again and gets every event.
            assert await asyncio.wait_for(events_of(stalled, BIG_COUNT), 60) == [f"big-{i}" for i in range(BIG_COUNT)]
            for w in [stalled, *watchers]:
                w.close()
    finally:
        await front.stop()
        await sim.stop()
