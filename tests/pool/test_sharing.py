"""Pool sharing end to end: three edgeproxies (`serve --pool on`) in front of the simulator, informer clients on each.

One upstream watch per query for the whole branch instead of one per node; the leader killed mid-stream: a new
leader, the followers' clients keep their view with no 410 and no relist; the branch offline: followers served by
the leader over the LAN."""

from __future__ import annotations

import asyncio
import contextlib
import copy

import pytest

from edgeproxy import metrics
from edgeproxy import sim as sim_pkg
from edgeproxy.commands import debug
from edgeproxy.sim import api as sim_api
from tests.e2e.reflector import Reflector
from tests.pool.branch import Branch, until

SVC = "/api/v1/services"
SLICES = "/apis/discovery.k8s.io/v1/endpointslices"
KP = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"


class CountingApi(sim_api.Api):
    """The simulator's API, counting the LISTs it answers per resource (a relist storm would show here)."""

    def __init__(self, sim):
        super().__init__(sim)
        self.lists = {}

    async def _route(self, request, encoding, pretty):
        if request.method == "GET" and request.query.get("watch") not in ("true", "1"):
            resource = request.path.rstrip("/").rsplit("/", 1)[-1]
            self.lists[resource] = self.lists.get(resource, 0) + 1
        return await super()._route(request, encoding, pretty)


@pytest.fixture
async def sim(tmp_path):
    s = sim_pkg.Simulator(pki_dir=tmp_path / "pki", bookmark_interval=1.0, tokens={
        "kube-proxy-token": ("system:serviceaccount:kube-system:kube-proxy", ("system:serviceaccounts",)),
        "pool-token": ("system:serviceaccount:edgeproxy:edgeproxy-pool", ("system:serviceaccounts",))})
    s.api = CountingApi(s)
    async with s:
        s.seed(services=20, endpointslices=20)
        yield s


@pytest.fixture
async def branch(sim, tmp_path):
    b = Branch(sim, tmp_path)
    yield b
    await b.stop()


@contextlib.asynccontextmanager
async def reflectors(urls, paths, **kw):
    started = [Reflector(url, path, label_selector=KP if path == SVC else "", **kw).start()
               for url in urls for path in paths]
    try:
        yield started
    finally:
        await stop(started)


async def stop(rs):
    """Stop client threads off the event loop: Reflector.stop joins its thread (up to 2 s each), and the branch's
    edgeproxies and the simulator share this loop: blocked, the leader misses its Lease renewals."""
    await asyncio.gather(*(asyncio.to_thread(r.stop) for r in rs))


def upstream_watches(sim, resource):
    return sum(1 for w in sim.api.watches if w.res.name == resource)


def svc(name):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "edge",
                                                                "labels": {"app": name}},
            "spec": {"ports": [{"port": 80, "protocol": "TCP"}], "type": "ClusterIP"}}


def expected(sim, resource):
    return {f"{ns}/{name}": e.obj["metadata"]["resourceVersion"]
            for (ns, name), e in sim.store.snapshot(resource).items()
            if resource != "services" or not set(e.obj["metadata"].get("labels") or {}) & {
                "service.kubernetes.io/headless", "service.kubernetes.io/service-proxy-name"}}


def received():
    return metrics.UPSTREAM_BYTES.labels(direction="received")._value.get()


@pytest.mark.parametrize("pool", [True, False], ids=["sharing", "alone"])
async def test_the_branch_keeps_one_upstream_watch_per_query(sim, branch, pool):
    await branch.start(pool=pool)
    if pool:
        await until(lambda: branch.leader() is not None and sorted(n.role for n in branch.nodes) == [
            "follower", "follower", "leader"])
    before = received()
    async with reflectors([n.url for n in branch.nodes], [SVC, SLICES]) as rs:
        await until(lambda: all(r.synced.is_set() and r.watches for r in rs))
        for i in range(5):
            sim.create("services", svc(f"late-{i}"), "edge")
        want = expected(sim, "services")
        await until(lambda: all(r.snapshot() == want for r in rs if r.path == SVC))
        n = 1 if pool else 3
        await until(lambda: upstream_watches(sim, "services") == n and upstream_watches(sim, "endpointslices") == n)
        assert all(len(r.lists) == 1 and not r.watch_errors for r in rs)
    print(f"\nbranch of 3, {'sharing' if pool else 'alone'}: upstream watches per query {n}, "
          f"bytes received from the API server {received() - before:.0f}")
    if pool:
        leader = branch.leader()
        assert leader is not None
        state = leader.service.pool.state()
        assert state["role"] == "leader" and len(state["views"]) == 2
        assert sorted(state["followers"]) == sorted(n.name for n in branch.nodes if n is not leader)
        report = debug.Report()
        await asyncio.to_thread(debug.check_pool, leader.service.config, leader.service.ops_url, report, 5)
        follower = next(n for n in branch.nodes if n is not leader)
        await asyncio.to_thread(debug.check_pool, follower.service.config, follower.service.ops_url, report, 5)
        lines = [f.message for f in report.findings if f.area == "pool"]
        assert lines[0].startswith("pool branch-1: this node leads; followers now: ")
        assert lines[1] == f"pool branch-1: follows {leader.name} at {leader.settings['pool_listen']}"
        text = metrics.render().decode()
        for name in ("edgeproxy_pool_role", "edgeproxy_pool_leader_changes_total", "edgeproxy_pool_upstream_watches",
                     "edgeproxy_pool_upstream_requests_total", "edgeproxy_pool_follower_watches",
                     "edgeproxy_pool_followers", "edgeproxy_pool_peer_bytes_total",
                     'edgeproxy_pool_requests_total{via="leader"}', 'edgeproxy_pool_requests_total{via="view"}'):
            assert name in text, name


async def test_kube_proxys_own_token_is_shared_once_the_api_server_answered_it(sim, branch):
    await branch.start()
    await until(lambda: branch.leader() is not None and sorted(n.role for n in branch.nodes) == [
        "follower", "follower", "leader"])
    lists = sim.api.lists.get("services", 0)
    rs = [Reflector(n.url, SVC, label_selector=KP, user_agent="kube-proxy/v1.37.2 (linux/amd64) kubernetes/0")
          for n in branch.nodes]
    for r in rs:
        r.api.set_default_header("Authorization", "Bearer kube-proxy-token")
        r.start()
    try:
        await until(lambda: all(r.synced.is_set() and r.watches for r in rs))
        # each node's first LIST for that identity went to the API server (it authorized it); then one watch serves
        # all three: the leader's
        assert sim.api.lists.get("services", 0) - lists <= 3 + 1
        await until(lambda: upstream_watches(sim, "services") == 1)
        sim.create("services", svc("seen-by-kube-proxy"), "edge")
        want = expected(sim, "services")
        await until(lambda: all(r.snapshot() == want for r in rs))
    finally:
        await stop(rs)


async def test_the_branch_offline_is_served_by_the_leader_over_the_lan(sim, branch):
    await branch.start()
    await until(lambda: branch.leader() is not None and sorted(n.role for n in branch.nodes) == [
        "follower", "follower", "leader"])
    leader = branch.leader()
    follower = next(n for n in branch.nodes if n.role == "follower")
    async with reflectors([n.url for n in branch.nodes], [SVC]) as rs:
        await until(lambda: all(r.synced.is_set() and r.watches for r in rs))
        want = expected(sim, "services")
        await sim.down()
        await until(lambda: not any(n.service.upstream.online for n in branch.nodes))
        # longer than the lease lasts: nobody can renew it, and nobody takes it; the branch keeps its leader
        rounds = {n.name: n.service.pool.elector.unreachable_rounds for n in branch.nodes}
        await until(lambda: all(n.service.pool.elector.unreachable_rounds >= rounds[n.name] + 10
                                for n in branch.nodes), timeout=30)
        assert sorted(n.role for n in branch.nodes) == ["follower", "follower", "leader"] and leader.role == "leader"
        via_leader = metrics.POOL_REQUESTS.labels("leader")._value.get()
        # a client the follower's own cache has never answered (its own partition is empty) still gets the view
        async with reflectors([follower.url], [SVC], user_agent="newcomer/1.0") as (late,):
            await until(lambda: late.synced.is_set())
            assert late.snapshot() == want and late.list_errors == []
        assert metrics.POOL_REQUESTS.labels("leader")._value.get() > via_leader
        # the leader restarted while the WAN is still down: its followers still get its last view, from its LMDB
        follower.service.pool.router.retry_after = 0.2  # it will see the leader gone while it restarts
        await branch.stop_node(leader)
        await branch.start_node(leader)
        await until(lambda: not leader.service.upstream.online)
        async with reflectors([follower.url], [SVC], user_agent="second-newcomer/1.0") as (late,):
            await until(lambda: late.synced.is_set())
            assert late.snapshot() == want
        # the WAN back: a leader again, and every client converges on the API server's state
        await sim.up()
        await until(lambda: branch.leader() is not None and any(n.role == "leader" for n in branch.nodes))
        sim.create("services", svc("back"), "edge")
        want = expected(sim, "services")
        await until(lambda: all(r.snapshot() == want for r in rs), timeout=30)
        assert all(410 not in r.watch_errors for r in rs)


@pytest.mark.timeout(120)
async def test_a_killed_leader_is_replaced_and_the_followers_clients_keep_their_view(sim, branch):
    for node in branch.nodes:
        branch.spawn(node)
    for node in branch.nodes:
        await branch.wait_serving(node)
    await until(lambda: branch.leader() is not None, timeout=30)
    leader = branch.leader()
    followers = [n for n in branch.nodes if n is not leader]
    await branch.wait_roles(leader)
    async with reflectors([n.url for n in followers], [SVC, SLICES]) as rs:
        await until(lambda: all(r.synced.is_set() and r.watches for r in rs), timeout=30)
        await until(lambda: upstream_watches(sim, "services") == 1, timeout=30)
        # every client's watch has had an event from the leader: killed mid-stream, not in its first second
        sim.create("services", svc("before-kill"), "edge")
        sim.patch("endpointslices", "load-00000-x1", {"metadata": {"labels": {"x": "1"}}}, namespace="edge")
        await until(lambda: all(r.snapshot() == expected(sim, "services" if r.path == SVC else "endpointslices")
                                for r in rs))
        lists = {id(r): len(r.lists) for r in rs}
        upstream_lists = sum(sim.api.lists.get(r, 0) for r in ("services", "endpointslices"))
        branch.kill(leader)
        for i in range(3):  # changes while the followers' clients move off the dead leader
            sim.create("services", svc(f"after-kill-{i}"), "edge")
        await until(lambda: branch.leader() not in (None, leader), timeout=30)
        await branch.wait_roles(branch.leader())
        sim.create("services", svc("new-leader"), "edge")
        sim.patch("endpointslices", "load-00001-x1", {"metadata": {"labels": {"x": "2"}}}, namespace="edge")
        await until(lambda: all(r.snapshot() == expected(sim, "services" if r.path == SVC else "endpointslices")
                                for r in rs), timeout=30)
        assert all(not r.watch_errors and not r.list_errors for r in rs)  # no 410, no error of any kind
        relists = sum(len(r.lists) - lists[id(r)] for r in rs)
        assert relists == 0, [r.history for r in rs]
        # at the API server: the new leader's one LIST per query, and nothing from the followers' clients
        after = sum(sim.api.lists.get(r, 0) for r in ("services", "endpointslices")) - upstream_lists
        assert after <= 2, sim.api.lists


async def test_watches_opened_before_a_leader_was_known_move_to_the_pool(sim, branch):
    """Clients that started while nobody could serve the pool (here: a Lease held by a node that is gone) watch the
    API server; once a leader is elected, their watches move to it: no relist, nothing missed."""
    from tests.pool.branch import LEASE

    sim.create("leases", {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {
        "name": LEASE[1], "namespace": LEASE[0], "annotations": {
            "edgeproxy.io/pool-leader-address": "127.0.0.9:1"}},
        "spec": {"holderIdentity": "edge-9", "leaseDurationSeconds": 3600}}, LEASE[0])
    await branch.start()
    await until(lambda: all(n.role == "follower" for n in branch.nodes))
    for node in branch.nodes:
        node.service.pool.move_every, node.service.pool.move_age = 0.2, 1.0
    async with reflectors([n.url for n in branch.nodes], [SVC, SLICES]) as rs:
        await until(lambda: all(r.synced.is_set() and r.watches for r in rs))
        await until(lambda: upstream_watches(sim, "services") == 3 and upstream_watches(sim, "endpointslices") == 3)
        lease = copy.deepcopy(sim.get("leases", LEASE[1], LEASE[0]))
        lease["spec"]["holderIdentity"] = ""  # edge-9's Lease freed: the branch elects one of its own
        sim.update("leases", lease)
        await until(lambda: sorted(n.role for n in branch.nodes) == ["follower", "follower", "leader"])
        await until(lambda: upstream_watches(sim, "services") == 1 and upstream_watches(sim, "endpointslices") == 1,
                    timeout=30)
        sim.create("services", svc("after-the-move"), "edge")
        want = expected(sim, "services")
        await until(lambda: all(r.snapshot() == want for r in rs if r.path == SVC))
        assert all(len(r.lists) == 1 and not r.watch_errors and not r.list_errors for r in rs), [
            (r.lists, r.history) for r in rs]
        assert metrics.POOL_WATCHES_MOVED._value.get() >= 4


async def test_the_pools_own_requests_go_with_the_pool_identity(sim, tmp_path):
    """--pool-kubeconfig: the Lease and the leader's upstream list+watch as the ServiceAccount edgeproxy-pool (a real
    cluster refuses nodes both); the node's own clients still go as the node."""
    b = Branch(sim, tmp_path, n=2)
    kc = tmp_path / "pool.kubeconfig"
    kc.write_text("apiVersion: v1\nkind: Config\ncurrent-context: c\n"
                  f"clusters: [{{name: s, cluster: {{server: \"{sim.url}\", "
                  f"certificate-authority: \"{sim.pki.ca_cert}\"}}}}]\n"
                  "users: [{name: u, user: {token: pool-token}}]\n"
                  "contexts: [{name: c, context: {cluster: s, user: u}}]\n")
    for node in b.nodes:
        node.settings["pool_kubeconfig"] = str(kc)
    try:
        await b.start()
        await until(lambda: sorted(n.role for n in b.nodes) == ["follower", "leader"])
        follower = next(n for n in b.nodes if n.role == "follower")
        async with reflectors([follower.url], [SVC]) as (r,):
            await until(lambda: r.synced.is_set() and upstream_watches(sim, "services") == 1)
            (w,) = [w for w in sim.api.watches if w.res.name == "services"]
            assert w.request.headers.get("Authorization") == "Bearer pool-token"
    finally:
        await b.stop()


async def test_the_pool_is_named_by_the_nodes_label_unless_given(sim, tmp_path):
    b = Branch(sim, tmp_path, n=2)  # edge-1 and edge-2: topology.kubernetes.io/zone=edge-site-a in the simulator
    for node in b.nodes:
        node.settings["pool_name"] = ""
    try:
        await b.start()
        await until(lambda: sorted(n.role for n in b.nodes) == ["follower", "leader"])
        assert {n.service.pool.state()["pool"] for n in b.nodes} == {"edge-site-a"}
        assert sim.store.get("leases", ("edgeproxy", "edgeproxy-pool-edge-site-a")) is not None
    finally:
        await b.stop()


@pytest.mark.timeout(180)
async def test_quiet_watches_opened_before_the_election_move_to_the_pool_and_stay(tmp_path):
    """kube-proxy on four nodes (its own token: each node's first answer comes from the API server) started while no
    leader was known; the API server bookmarks once a minute, as a real one, and no EndpointSlice changes, so every
    client's version stays older than the leader's lists. Once a leader is elected each watch moves to the pool (the
    leader reaches back to the client's version with one short upstream watch) and stays there: one upstream watch
    per query, no relist, no event missed."""
    from tests.pool.branch import LEASE

    s = sim_pkg.Simulator(pki_dir=tmp_path / "pki", bookmark_interval=60.0, tokens={
        "kube-proxy-token": ("system:serviceaccount:kube-system:kube-proxy", ("system:serviceaccounts",))})
    s.api = CountingApi(s)
    async with s:
        s.seed(services=20, endpointslices=20)
        b = Branch(s, tmp_path, n=4)
        s.create("leases", {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {
            "name": LEASE[1], "namespace": LEASE[0], "annotations": {
                "edgeproxy.io/pool-leader-address": "127.0.0.9:1"}},
            "spec": {"holderIdentity": "edge-9", "leaseDurationSeconds": 3600}}, LEASE[0])
        rs = []
        try:
            await b.start()
            await until(lambda: all(n.role == "follower" for n in b.nodes))
            for node in b.nodes:
                node.service.pool.move_every, node.service.pool.move_age = 0.5, 1.0
            for node in b.nodes:
                for path in (SVC, SLICES):
                    r = Reflector(node.url, path, label_selector=KP if path == SVC else "",
                                  user_agent="kube-proxy/v1.37.2 (linux/amd64) kubernetes/0")
                    r.api.set_default_header("Authorization", "Bearer kube-proxy-token")
                    rs.append(r.start())
            await until(lambda: all(r.synced.is_set() and r.watches for r in rs), timeout=30)
            await until(lambda: upstream_watches(s, "services") == 4 and upstream_watches(s, "endpointslices") == 4,
                        timeout=30)
            lists = {r: s.api.lists.get(r, 0) for r in ("services", "endpointslices")}
            lease = copy.deepcopy(s.get("leases", LEASE[1], LEASE[0]))
            lease["spec"]["holderIdentity"] = ""  # edge-9's Lease freed: the branch elects one of its own
            s.update("leases", lease)
            await until(lambda: sorted(n.role for n in b.nodes) == ["follower"] * 3 + ["leader"], timeout=30)
            await until(lambda: upstream_watches(s, "services") == 1 and upstream_watches(s, "endpointslices") == 1,
                        timeout=60)
            # they stay: three more looks of every node's mover end nothing more
            moved = metrics.POOL_WATCHES_MOVED._value.get()
            rounds = {n.name: n.service.pool.move_rounds for n in b.nodes}
            await until(lambda: all(n.service.pool.move_rounds >= rounds[n.name] + 3 for n in b.nodes), timeout=30)
            assert metrics.POOL_WATCHES_MOVED._value.get() == moved
            assert (upstream_watches(s, "services"), upstream_watches(s, "endpointslices")) == (1, 1)
            s.create("services", svc("after-the-move"), "edge")
            s.patch("endpointslices", "load-00003-x1", {"metadata": {"labels": {"x": "moved"}}}, namespace="edge")
            await until(lambda: all(r.snapshot() == expected(s, "services" if r.path == SVC else "endpointslices")
                                    for r in rs), timeout=30)
            assert all(len(r.lists) == 1 and not r.watch_errors and not r.list_errors for r in rs), [
                (r.lists, r.history) for r in rs]
            # at the API server: the leader's one LIST per query, no client's
            assert {r: s.api.lists.get(r, 0) - lists[r] for r in lists} == {"services": 1, "endpointslices": 1}
            leader = b.leader()
            assert leader is not None
            assert all(v["upstream_lists"] == 1 for v in leader.service.pool.state()["views"])
        finally:
            await stop(rs)
            await b.stop()
