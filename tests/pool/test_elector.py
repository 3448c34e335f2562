"""Pool leader election against the simulator's coordination.k8s.io Leases, through the node's upstream.Upstream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import pytest

from edgeproxy import sim as sim_pkg
from edgeproxy import upstream
from edgeproxy.pool import election, elector
from edgeproxy.pool.election import Role

PATH = "/apis/coordination.k8s.io/v1/namespaces/edgeproxy/leases/edgeproxy-pool-branch-7"


class RacingUpstream(upstream.Upstream):
    """The real upstream; `before_put` runs between a read and the write that follows it (a peer writing first)."""

    before_put = None

    async def send(self, method, path_qs, headers, body=None, **kw):
        if method == "PUT" and self.before_put is not None:
            hook, self.before_put = self.before_put, None
            await hook()
        return await super().send(method, path_qs, headers, body, **kw)


@pytest.fixture
async def sim(tmp_path):
    async with sim_pkg.Simulator(pki_dir=tmp_path / "pki") as s:
        yield s


@pytest.fixture
async def node_upstream(sim, tmp_path):
    ups = []

    async def make():
        up = RacingUpstream(upstream.load_kubeconfig(sim.kubeconfig(tmp_path / f"node{len(ups)}", "node")),
                            probe_interval=3600)
        await up.start()
        ups.append(up)
        return up

    yield make
    for up in ups:
        await up.close()


def cfg(identity, port, **kw):
    return election.Config(pool="branch-7", identity=identity, address=f"127.0.0.{port}:10268", **kw)


def stored(sim):
    entry = sim.store.get("leases", ("edgeproxy", "edgeproxy-pool-branch-7"))
    return None if entry is None else entry.obj


async def test_the_first_node_creates_the_lease_and_leads_the_next_follows_it(sim, node_upstream):
    seen = []
    a = elector.Elector(await node_upstream(), cfg("edge-1", 1))
    b = elector.Elector(await node_upstream(), cfg("edge-2", 2), on_change=seen.append)
    assert (await a.round()).role is Role.LEADER
    lease = stored(sim)
    assert lease["spec"]["holderIdentity"] == "edge-1"
    assert lease["metadata"]["annotations"][election.ADDRESS_ANNOTATION] == "127.0.0.1:10268"
    assert await b.round() == election.View(Role.FOLLOWER, "edge-1", ("127.0.0.1", 10268))
    assert seen == [b.view]
    rv = lease["metadata"]["resourceVersion"]
    assert (await a.round()).role is Role.LEADER  # a renewal: a new resourceVersion, the same acquireTime
    renewed = stored(sim)
    assert renewed["metadata"]["resourceVersion"] != rv
    assert renewed["spec"]["acquireTime"] == lease["spec"]["acquireTime"]
    assert renewed["spec"]["leaseTransitions"] == 0


async def test_a_write_that_lost_the_race_is_a_conflict_and_the_loser_follows_the_winner(sim, node_upstream):
    a = elector.Elector(await node_upstream(), cfg("edge-1", 1))
    up_b = await node_upstream()
    b = elector.Elector(up_b, cfg("edge-2", 2))
    await a.round()
    await a.release()  # a free lease: both may take it at once
    assert stored(sim)["spec"]["holderIdentity"] == ""
    up_b.before_put = a.round  # a takes it between b's read and b's write
    view = await b.round()
    assert view.role is not Role.LEADER
    assert stored(sim)["spec"]["holderIdentity"] == "edge-1"  # b's stale write was refused (409)
    assert stored(sim)["spec"]["leaseTransitions"] == 0  # a took a free lease: no transition
    assert await b.round() == election.View(Role.FOLLOWER, "edge-1", ("127.0.0.1", 10268))


async def test_a_stopping_leader_releases_the_lease_and_a_follower_takes_over_at_once(sim, node_upstream):
    a = elector.Elector(await node_upstream(), cfg("edge-1", 1))
    b = elector.Elector(await node_upstream(), cfg("edge-2", 2))
    run = asyncio.get_running_loop().create_task(a.run())
    async with asyncio.timeout(5):
        while a.view.role is not Role.LEADER:
            await asyncio.sleep(0.01)
    assert (await b.round()).role is Role.FOLLOWER
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run
    assert a.view.role is Role.CANDIDATE
    assert stored(sim)["spec"]["holderIdentity"] == ""
    assert (await b.round()).role is Role.LEADER
    assert stored(sim)["spec"]["holderIdentity"] == "edge-2"


async def test_a_dead_leader_is_replaced_after_the_lease_duration(sim, node_upstream):
    a = elector.Elector(await node_upstream(), cfg("edge-1", 1, duration=1, renew_deadline=0.8, retry=0.1))
    b = elector.Elector(await node_upstream(), cfg("edge-2", 2, duration=1, renew_deadline=0.8, retry=0.1))
    await a.round()  # then a dies without releasing
    assert (await b.round()).role is Role.FOLLOWER
    async with asyncio.timeout(5):
        while (await b.round()).role is not Role.LEADER:
            await asyncio.sleep(0.1)
    lease = stored(sim)
    assert lease["spec"]["holderIdentity"] == "edge-2"
    assert lease["spec"]["leaseTransitions"] == 1
    assert lease["metadata"]["annotations"][election.ADDRESS_ANNOTATION] == "127.0.0.2:10268"
    assert not a.election.leading(time.monotonic())  # a's renew deadline passed too


async def test_an_unreachable_api_server_is_a_failed_round_not_a_crash(caplog):
    caplog.set_level(logging.INFO, logger="edgeproxy.pool")
    up = upstream.Upstream(upstream.Credentials(servers=("http://127.0.0.1:1",)), probe_interval=3600)
    try:
        e = elector.Elector(up, cfg("edge-1", 1))
        assert (await e.round()).role is Role.CANDIDATE
        assert "lease round failed: API server unreachable" in caplog.text
    finally:
        await up.close()


async def test_a_refused_lease_request_is_reported_with_the_api_servers_message(sim, caplog):
    caplog.set_level(logging.INFO, logger="edgeproxy.pool")
    up = upstream.Upstream(upstream.Credentials(servers=(sim.url,), ca_file=str(sim.pki.ca_cert), token="nobody"),
                           probe_interval=3600)
    try:
        e = elector.Elector(up, cfg("edge-1", 1))
        assert (await e.round()).role is Role.CANDIDATE
        assert f"lease round failed: 401: GET {PATH}: Unauthorized" in caplog.text
        assert stored(sim) is None
    finally:
        await up.close()


async def test_the_simulator_refuses_a_stale_lease_update_and_a_second_create(sim, tmp_path):
    """What election relies on: optimistic concurrency on PUT, AlreadyExists on POST."""
    import aiohttp

    async with aiohttp.ClientSession(base_url=sim.url, connector=aiohttp.TCPConnector(ssl=sim.client_ssl("node"))) as c:
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "x", "namespace": "edgeproxy"}, "spec": {"holderIdentity": "a"}}
        r = await c.post("/apis/coordination.k8s.io/v1/namespaces/edgeproxy/leases", json=body)
        assert r.status == 201
        first = await r.json()
        r = await c.post("/apis/coordination.k8s.io/v1/namespaces/edgeproxy/leases", json=body)
        assert (r.status, (await r.json())["reason"]) == (409, "AlreadyExists")
        first["spec"]["holderIdentity"] = "b"
        r = await c.put("/apis/coordination.k8s.io/v1/namespaces/edgeproxy/leases/x", json=first)
        assert r.status == 200
        first["spec"]["holderIdentity"] = "c"  # the resourceVersion of before b's write
        r = await c.put("/apis/coordination.k8s.io/v1/namespaces/edgeproxy/leases/x", json=first)
        assert (r.status, (await r.json())["reason"]) == (409, "Conflict")
