"""Fault switches: down (refused), hang, slow, a watch cut mid-frame, coming back with the history compacted; and
the control endpoint that flips them from another process."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.sim.streams import Stream


async def test_down_refuses_connections_and_up_serves_again(sim):
    await sim.down()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sim.client_ssl())) as c:
        with pytest.raises(aiohttp.ClientConnectorError):
            await c.get(f"{sim.url}/readyz")
    await sim.up()
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=sim.client_ssl())) as c,
        c.get(f"{sim.url}/readyz") as r,
    ):
        assert r.status == 200


async def test_down_drops_open_watches(sim, admin):
    async with admin.get("/api/v1/pods?watch=true&resourceVersion=304") as r:
        stream = Stream(r)
        await sim.down()
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError)):
            await stream.rest()
    await sim.up()


async def test_hang_accepts_and_never_answers(sim, admin):
    sim.hang()
    request = asyncio.ensure_future(admin.get("/api/v1/namespaces/edge/configmaps/web-config"))
    done, _ = await asyncio.wait({request}, timeout=0.3)
    assert not done  # bounded wait for something that must not happen
    sim.hang(False)
    async with asyncio.timeout(5):
        r = await request
    assert r.status == 200
    r.release()


async def test_slow_delays_but_answers(sim, admin):
    sim.slow(0.05)
    async with admin.get("/api/v1/namespaces/edge/configmaps/web-config") as r:
        assert r.status == 200
    sim.slow(0)


@pytest.mark.parametrize("accept", ["application/json", "application/vnd.kubernetes.protobuf"])
async def test_cut_watch_sends_half_a_frame(sim, admin, accept):
    async with admin.get("/api/v1/pods?watch=true&resourceVersion=304", headers={"Accept": accept}) as r:
        stream = Stream(r)
        sim.patch("pods", "db-0", {"metadata": {"labels": {"x": "1"}}}, namespace="edge")
        assert (await stream.next())[0] == "MODIFIED"
        assert sim.cut_watches() == 1
        with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, ConnectionError)):
            await stream.rest()
        assert stream.splitter.pending  # a partial frame was left unfinished


async def test_restart_with_compaction_sends_watchers_to_relist(sim, admin):
    sim.patch("pods", "db-0", {"metadata": {"labels": {"x": "1"}}}, namespace="edge")
    await sim.restart(compact=True)
    async with admin.get("/api/v1/pods?watch=true&resourceVersion=304") as r:
        got = await Stream(r).rest()
    assert got[0][0] == "ERROR" and got[0][1]["code"] == 410
    assert got[0][1]["message"] == "too old resource version: 304 (305)"


async def test_control_endpoint(tmp_path):
    from edgeproxy import sim as sim_pkg

    s = sim_pkg.Simulator(pki_dir=tmp_path, control_port=0)
    await s.start()
    try:
        async with aiohttp.ClientSession() as c:
            async with c.post(f"{s.control_url}/__sim/faults", json={"slow": 0.01, "down": True}) as r:
                assert r.status == 200
            async with asyncio.timeout(5):
                while not s.faults.down:
                    await asyncio.sleep(0.01)
            async with c.get(f"{s.control_url}/__sim/faults") as r:
                state = await r.json()
            assert state["down"] is True and state["slow"] == 0.01 and state["resourceVersion"] == 304
            async with c.post(f"{s.control_url}/__sim/faults", json={"down": False, "slow": 0}) as r:
                assert (await r.json())["down"] is False
    finally:
        await s.stop()
