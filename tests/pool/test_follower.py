"""--pool-election companion against the simulator with the companion's real pool controller: the nodes WATCH the pool
Lease (one LIST and one WATCH each) instead of reading it every `retry` seconds; they follow a leader change as soon as
the companion writes it, notice a Lease the companion stopped renewing, and poll only when the watch is refused. A
restarted node remembers its pool's name and leader: it takes part at once while its Node cannot be read, and with the
WAN down it keeps following the leader over the LAN."""

from __future__ import annotations

import asyncio
import contextlib
import copy

import pytest

from edgeproxy import sim as sim_pkg
from edgeproxy import tasks, upstream
from edgeproxy.companion import kubeapi, poolctl
from edgeproxy.pool import remember
from edgeproxy.sim import api as sim_api
from edgeproxy.sim import errors as sim_errors
from tests.e2e.reflector import Reflector
from tests.pool.branch import POOL, Branch, kubelets, until

pytestmark = pytest.mark.timeout(90)
ZONE = "topology.kubernetes.io/zone"
NODES = ("edge-1", "edge-2", "edge-3")


class LeaseCountingApi(sim_api.Api):
    """The simulator's API, counting the nodes' requests for the pool Lease (the companion's informer asks by label,
    the nodes by name); `refuse` answers the nodes' LIST and WATCH of it 403, as RBAC without list/watch would."""

    def __init__(self, sim):
        super().__init__(sim)
        self.lease = {"get": 0, "list": 0, "watch": 0}
        self.refuse = False
        self.hidden = set()  # nodes whose GET answers 404 (a Node the API server cannot find for now)

    async def _route(self, request, encoding, pretty):
        path = request.path.rstrip("/")
        if request.method == "GET" and path.startswith("/api/v1/nodes/") and path.rsplit("/", 1)[1] in self.hidden:
            raise sim_errors.ApiError(404, "NotFound", f'nodes "{path.rsplit("/", 1)[1]}" not found')
        if request.method == "GET" and "/namespaces/edgeproxy/leases" in path:
            kind = ("watch" if request.query.get("watch") in ("true", "1") else "list") if path.endswith("/leases") \
                else "get"
            if kind == "get" or "fieldSelector" in request.query:
                self.lease[kind] += 1
                if self.refuse and kind != "get":
                    raise sim_errors.ApiError(403, "Forbidden", "leases is forbidden: list/watch not granted")
        return await super()._route(request, encoding, pretty)


@pytest.fixture
async def sim(tmp_path):
    s = sim_pkg.Simulator(pki_dir=tmp_path / "pki", bookmark_interval=1.0)
    s.api = LeaseCountingApi(s)
    async with s:
        for resource, namespace in (("nodes", ""), ("leases", "kube-node-lease")):  # a third node, as edge-2
            obj = copy.deepcopy(s.get(resource, "edge-2", namespace))
            obj["metadata"] = {"name": "edge-3", "namespace": namespace} if namespace else {"name": "edge-3"}
            s.create(resource, obj, namespace)
        for name in NODES:
            s.patch("nodes", name, {"metadata": {"labels": {ZONE: POOL}}})
        yield s


@contextlib.asynccontextmanager
async def companion(sim, tmp_path, duration):
    """The companion's pool controller (pool Lease of `duration` s, renewed every duration/3 s) and live kubelets."""
    kube = kubeapi.Kube(upstream.load_kubeconfig(sim.kubeconfig(tmp_path / "admin.kubeconfig")))
    alive = set(NODES)
    ctrl = poolctl.PoolController(kube, namespace="edgeproxy", duration=duration, grace=1.0, period=0.1)
    running = [tasks.spawn(kubelets(sim, alive), name="t-kubelets"), tasks.spawn(ctrl.run(), name="t-pools")]
    try:
        yield ctrl, alive, running[1]
    finally:
        for t in running:
            t.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await kube.close()


@pytest.fixture
async def branch(sim, tmp_path):
    b = Branch(sim, tmp_path)
    for node in b.nodes:
        node.settings["pool_election"] = "companion"  # pool_lease_duration 3: each node ticks every 0.4 s
    yield b
    await b.stop()


def roles(b):
    return {n.name: (n.role, n.service.pool.router.role.holder) for n in b.nodes}


async def test_followers_watch_the_lease_instead_of_reading_it_and_follow_a_move_at_once(sim, branch, tmp_path):
    async with companion(sim, tmp_path, duration=9) as (ctrl, alive, _):
        await branch.start()
        led_by_1 = {"edge-1": ("leader", "edge-1"), "edge-2": ("follower", "edge-1"), "edge-3": ("follower", "edge-1")}
        await until(lambda: roles(branch) == led_by_1, timeout=30)
        # at rest, over three of the companion's renewals: no reads, the one watch each node opened
        before, renewed = dict(sim.api.lease), ctrl.writes["renewed"]
        await until(lambda: ctrl.writes["renewed"] >= renewed + 3, timeout=30)
        assert roles(branch) == led_by_1
        # reading every 0.4 s would have been ~65 GETs; a read happens only if a renewal is ~5 s late
        assert sim.api.lease["get"] - before["get"] <= 3, sim.api.lease
        assert sim.api.lease["list"] <= 3 + 1 and sim.api.lease["watch"] <= 3 + 1, sim.api.lease
        # the companion moves the Lease (edge-1's kubelet stopped): every node follows at once, from the watch
        alive.discard("edge-1")
        await until(lambda: roles(branch) == {"edge-1": ("follower", "edge-2"), "edge-2": ("leader", "edge-2"),
                                              "edge-3": ("follower", "edge-2")}, timeout=30)
        assert sim.api.lease["list"] <= 3 + 1, sim.api.lease


async def test_a_lease_nobody_renews_expires_and_a_refused_watch_falls_back_to_reading(sim, branch, tmp_path):
    sim.api.refuse = True
    async with companion(sim, tmp_path, duration=3) as (_, _, controller):
        await branch.start()
        await until(lambda: all(r == ("follower" if n != "edge-1" else "leader", "edge-1")
                                for n, r in roles(branch).items()), timeout=30)
        assert all(n.service.pool.elector.refused for n in branch.nodes)
        reads = sim.api.lease["get"]
        await until(lambda: sim.api.lease["get"] >= reads + 6, timeout=30)  # it keeps reading it (every 1 s)
        # the watch allowed again (RBAC fixed): each node watches at its next try
        sim.api.refuse = False
        for n in branch.nodes:
            n.service.pool.elector.kick()  # instead of the 5-minute wait between tries
        await until(lambda: not any(n.service.pool.elector.refused for n in branch.nodes), timeout=30)
        # the companion stops (no node may lead any more): the Lease expires on every node's clock
        controller.cancel()
        await until(lambda: all(n.role == "candidate" for n in branch.nodes), timeout=30)


async def test_a_restarted_node_remembers_its_pool_and_leader(sim, branch, tmp_path):
    node = branch.nodes[2]
    node.settings.pop("pool_name")  # edge-3 learns its pool from its Node's label (the companion's grouping too)
    # it was in another pool before (relabelled while edgeproxy was down): it starts there, then the label decides
    remember.Memory(node.settings["cache_dir"]).remember_pool("elsewhere")
    async with companion(sim, tmp_path, duration=3):
        await branch.start()
        led_by_1 = {"edge-1": ("leader", "edge-1"), "edge-2": ("follower", "edge-1"), "edge-3": ("follower", "edge-1")}
        await until(lambda: roles(branch) == led_by_1, timeout=30)
        kept = remember.Memory(node.settings["cache_dir"])
        assert kept.pool == POOL and kept.lease(POOL)["spec"]["holderIdentity"] == "edge-1"
        # restarted while its Node cannot be read: the remembered name, at once (without it: "no pool name yet")
        sim.api.hidden.add("edge-3")
        await branch.stop_node(node)
        await branch.start_node(node)
        await until(lambda: roles(branch) == led_by_1, timeout=30)
        assert node.service.pool.name == POOL
        with contextlib.ExitStack() as stack:
            svc = "/api/v1/services"
            rs = [stack.enter_context(_reflector(n.url, svc)) for n in branch.nodes]
            await until(lambda: all(r.synced.is_set() and r.watches for r in rs), timeout=30)
            want = rs[0].snapshot()
            # the WAN down, edge-3 restarted: it cannot read the Lease, and follows the leader it remembers
            await sim.down()
            await until(lambda: not any(n.service.upstream.online for n in branch.nodes), timeout=30)
            await branch.stop_node(node)
            await branch.start_node(node)
            await until(lambda: roles(branch)["edge-3"] == ("follower", "edge-1"), timeout=30)
            # a client its own cache never answered gets the leader's view over the LAN
            late = stack.enter_context(_reflector(node.url, svc, user_agent="newcomer/1.0"))
            await until(lambda: late.synced.is_set(), timeout=30)
            assert late.snapshot() == want and late.list_errors == []
            await sim.up()


@contextlib.contextmanager
def _reflector(url, path, **kw):
    r = Reflector(url, path, **kw).start()
    try:
        yield r
    finally:
        r.stop()
