"""The companion's pool controller against the simulator: it names the pool's leader on the pool Lease (the first
node by name that announced a peer address and whose node Lease is renewed), keeps it while it stays alive, moves
it when its kubelet stops renewing, and writes nothing for a pool where no node may lead."""

import asyncio

import pytest

from edgeproxy import tasks
from edgeproxy.companion import poolctl, pools
from edgeproxy.pool import election
from tests.e2e.edge import until
from tests.pool.branch import kubelets

pytestmark = pytest.mark.timeout(60)
ZONE = "topology.kubernetes.io/zone"


def pool_lease(sim, pool="branch-a"):
    return sim.get("leases", election.lease_name(pool), "edgeproxy")


async def test_the_companion_names_a_live_sharing_node_keeps_it_and_moves_it_when_its_kubelet_stops(sim, kube):
    for node, peer in (("edge-1", "10.0.0.1:10270"), ("edge-2", "10.0.0.2:10270")):
        sim.patch("nodes", node, {"metadata": {"labels": {ZONE: "branch-a"},
                                               "annotations": {pools.PEER_ANNOTATION: peer}}})
    alive = {"edge-1", "edge-2"}
    ctrl = poolctl.PoolController(kube, namespace="edgeproxy", duration=3, grace=1.0, period=0.1)
    running = [tasks.spawn(kubelets(sim, alive), name="t-kubelets"), tasks.spawn(ctrl.run(), name="t-pools")]
    try:
        await until(lambda: election.holder(pool_lease(sim)) == "edge-1", timeout=20)
        lease = pool_lease(sim)
        assert lease["metadata"]["annotations"][election.ADDRESS_ANNOTATION] == "10.0.0.1:10270"
        assert lease["metadata"]["labels"][election.POOL_LABEL] == "branch-a"
        assert lease["spec"]["leaseDurationSeconds"] == 3
        # renewed (every duration/3 s) while edge-1 stays alive
        first = lease["spec"]["renewTime"]
        await until(lambda: pool_lease(sim)["spec"]["renewTime"] != first, timeout=10)
        assert election.holder(pool_lease(sim)) == "edge-1"
        # edge-1's kubelet stops renewing (its edgeproxy died): edge-2 takes over
        alive.discard("edge-1")
        await until(lambda: election.holder(pool_lease(sim)) == "edge-2", timeout=20)
        lease = pool_lease(sim)
        assert lease["metadata"]["annotations"][election.ADDRESS_ANNOTATION] == "10.0.0.2:10270"
        assert lease["spec"]["leaseTransitions"] == 1
        # edge-1 back: edge-2 keeps it (sticky)
        alive.add("edge-1")
        renewed = ctrl.writes["renewed"]
        await until(lambda: ctrl.writes["renewed"] >= renewed + 2, timeout=20)
        assert election.holder(pool_lease(sim)) == "edge-2" and ctrl.writes["failed"] == 0
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)


async def test_no_lease_for_a_pool_whose_nodes_do_not_share(sim, kube):
    sim.patch("nodes", "edge-1", {"metadata": {"labels": {ZONE: "branch-b"}}})  # no peer address announced
    ctrl = poolctl.PoolController(kube, namespace="edgeproxy", duration=3, period=0.1)
    running = [tasks.spawn(ctrl.run(), name="t-pools")]
    try:
        await until(lambda: ctrl.nodes.synced and ctrl.pool_leases.synced, timeout=20)
        rounds = 0
        while rounds < 5:  # a few rounds: each one decides, none writes
            await ctrl.round()
            rounds += 1
        assert pool_lease(sim, "branch-b") is None and ctrl.writes == dict.fromkeys(ctrl.writes, 0)
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
