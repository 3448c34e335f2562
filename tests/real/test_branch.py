"""A branch of nodes behind one WAN link during a rollout (issue 16): what crosses the WAN, and what every node sees,
without pool sharing and with it.

One branch (tests/real/branch.py): 3 edge hosts (edgeproxy, hollow kubelet, hollow kube-proxy) and 1 simulated node
(edgeproxy and a reflector client listing and watching as kube-proxy does), all labelled with the branch's pool, on one
LAN, reaching the API server through ONE WAN relay. kube-controller-manager's EndpointSlice controller rewrites the
EndpointSlices of 3 Services of 10 pods while their pods, bound to a node outside the branch (its own WAN), are
replaced generation after generation (tests/real/rollout.py).

Measured at the API server (open watches, LISTs and watch-lists of Services and EndpointSlices, cluster-wide) and on the
branch's WAN relay (bytes); every node's view of Services and EndpointSlices must equal the API server's at the end.
The steps run in order on the one branch: without sharing, then `--pool on` (deploy/pool/rbac.yaml applied as shipped):
peers that are not nodes of the cluster at the peer listener; the rollout; the leader killed mid-rollout; the branch
cut off from the WAN.

With sharing on, the pool's leader is named by `edgeproxy companion` (its pool controller writes the pool Lease;
NodeRestriction refuses nodes every Lease but their own), deploy/pool/rbac.yaml and deploy/companion/companion.yaml
applied as shipped; only the hosts (kubelets renewing their node Leases) may lead. The nodes' clients (kubelet,
kube-proxy, the reflector) run on across the switch: their watches, opened on the API server while no leader was known,
are moved to the pool by edgeproxy itself, with no relist.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeproxy import tls

from .branch import POOL_PORT, Branch, api_view, peer_get, served_list
from .cluster import Cluster
from .edge import EdgeHost
from .procs import RealError, wait_for
from .rollout import Rollout

POOL_RESOURCES = ("services", "endpointslices")
LEASE_SECONDS = 15  # the pool Lease's duration (the companion's and edgeproxy's --pool-lease-duration; the default)
NODE_GRACE = 12.0  # the companion's --pool-node-grace: a leader whose kubelet stops renewing its node Lease is replaced
# the companion names a leader once the nodes announced their peer address (after reading their pool from their Node)
ELECTION_SECONDS = 60
# queries the branch's clients make of the pool's resources: kube-proxy's Services and EndpointSlices, the kubelet's
# Services (another field selector, so another view)
POOL_QUERIES = {"services": 2, "endpointslices": 1}

class Site:
    def __init__(self, cluster: Cluster, branch: Branch, rollout: Rollout, watches_before: dict[str, int]) -> None:
        self.cluster, self.branch, self.rollout = cluster, branch, rollout
        self.watches_before = watches_before  # open at the API server before the branch started
        self.off: dict[str, Any] = {}  # the rollout's figures without sharing
        self.sharing = False
        self.leader = ""  # the first leader elected after sharing was switched on ("" when none was)

    def share(self) -> str:
        """Sharing on (once): every edgeproxy restarted with --pool on while no leader can be elected yet, so every
        client's watch is back on the API server (as in a branch whose clients ran before its first election); then
        the companion started: the leader elected within 3 lease durations, or ""."""
        if not self.sharing:
            self.sharing = True
            b = self.branch
            b.sharing(True, "--pool-lease-duration", str(LEASE_SECONDS), elect=False)
            # (a client in its own reconnect back-off may be missing: the election goes on, the move test says
            # whether every node moved watches)
            with contextlib.suppress(AssertionError):
                self.expect_watches(self.watches_alone(), 60)
            b.start_companion(pool_lease=LEASE_SECONDS, node_grace=NODE_GRACE)
            # a leader, or a node told it may not write the Lease (no point waiting out the lease durations then)
            with contextlib.suppress(RealError):
                wait_for(lambda: self.branch.leader() or self.lease_refused(), ELECTION_SECONDS,
                         "a leader of the branch's pool, or the Lease refused")
            self.leader = self.branch.leader()
        return self.leader

    def lease_refused(self) -> bool:
        return any("lease round failed: 403" in (h.procs["edgeproxy"].log() if "edgeproxy" in h.procs else "")
                   for h in self.branch.nodes)

    def watches_alone(self) -> dict[str, int]:
        """What the branch's clients hold open at the API server without a leader: every node's kube-proxy (or
        reflector) one of each, every kubelet a Services watch of its own."""
        nodes = len(self.branch.nodes)
        return {"endpointslices": nodes, "services": nodes + len(self.branch.hosts)}

    def need_leader(self) -> str:
        leader = self.share() and self.branch.leader()
        assert leader, "no node holds the branch's pool Lease"
        return leader

    def branch_watches(self) -> dict[str, int]:
        """Watches of Services and EndpointSlices the branch holds open at the API server now."""
        now = self.cluster.open_watches()
        return {r: now.get(r, 0) - self.watches_before.get(r, 0) for r in POOL_RESOURCES}

    def expect_watches(self, want: dict[str, int], timeout: float = 30) -> None:
        """Polls until the branch's open watches are `want` (a watch a client just replaced may linger a moment at
        the API server); fails with what was seen and where the nodes sent their shareable requests."""
        seen: list[dict[str, int]] = []

        def check() -> bool:
            seen[:] = [self.branch_watches()]
            return seen[0] == want and self.reflectors_converged()

        try:
            wait_for(check, timeout, f"the branch holding {want} upstream watches")
        except RealError:
            via = {h.node: re.findall(r'^edgeproxy_pool_requests_total\{via="(\w+)"\} ([0-9.]+)$', h.proxy_metrics(),
                                      re.M) for h in self.branch.nodes if "edgeproxy" in h.procs}
            raise AssertionError(f"watches {seen} instead of {want}; roles {self.branch.roles()}; "
                                 f"shareable requests sent {via}") from None

    def slice_writes(self) -> int:
        """EndpointSlice writes at the API server so far (the EndpointSlice controller's)."""
        counts = self.cluster.request_counts()
        return sum(counts.get((verb, "endpointslices"), 0) for verb in ("POST", "PUT", "PATCH", "DELETE"))

    def pool_lists(self) -> dict[str, int]:
        """LISTs and watch-lists of Services and EndpointSlices that reached the API server, cluster-wide (the nodes':
        the test's own reads are per namespace)."""
        counts = self.cluster.request_counts(scope="cluster")
        return {r: counts.get(("LIST", r), 0) + counts.get(("WATCHLIST", r), 0) for r in POOL_RESOURCES}

    def views_equal_api(self, skip: str = "", timeout: float = 60) -> None:
        """Polls until every node's view (but `skip`'s) of Services and EndpointSlices is the API server's."""
        want = api_view(self.cluster)
        last: dict[str, Any] = {}

        def same() -> bool:
            last.clear()
            for h in self.branch.hosts:
                if h.node != skip:
                    last[h.node] = {r: served_list(h, r) for r in POOL_RESOURCES}
            for s in self.branch.sims:
                if s.node != skip:
                    last[s.node] = {r: s.view().get(r, {}) for r in POOL_RESOURCES}
            return all(v == want for v in last.values())

        try:
            wait_for(same, timeout, "every node's view equal to the API server's")
        except Exception:
            diff = {n: {r: sorted(set(v[r].items()) ^ set(want[r].items()))[:6] for r in want}
                    for n, v in last.items() if v != want}
            raise AssertionError(f"views differing from the API server's: {diff}") from None

    def reflectors_converged(self, skip: str = "") -> bool:
        want = api_view(self.cluster)
        return all({r: s.view().get(r) for r in POOL_RESOURCES} == want for s in self.branch.sims if s.node != skip)

    def measure_rollout(self, generations: int = 2) -> dict[str, Any]:
        """One rollout of `generations`; the branch's WAN bytes and its requests for Services and EndpointSlices."""
        b = self.branch
        assert b.wan is not None
        wan0, lists0, writes0 = b.wan.stats(), self.pool_lists(), self.slice_writes()
        self.rollout.run(generations)
        # the simulated nodes' reflectors converge without any request of the test's: then the figures are taken
        wait_for(self.reflectors_converged, 60, "the reflectors' views equal to the API server's")
        wan1, lists1, writes = b.wan.stats(), self.pool_lists(), self.slice_writes() - writes0
        return {"wan_bytes_down": wan1["bytes_down"] - wan0["bytes_down"], "slice_writes": writes,
                "wan_bytes_down_per_write": (wan1["bytes_down"] - wan0["bytes_down"]) / max(1, writes),
                "wan_bytes_up": wan1["bytes_up"] - wan0["bytes_up"],
                "watches": self.branch_watches(), "lists": {r: lists1[r] - lists0[r] for r in POOL_RESOURCES}}

    def follower(self) -> EdgeHost:
        """A node that is not the leader (the simulated one when it can be: its reflector can be restarted)."""
        leader = self.branch.leader()
        return next(h for h in [*(s.host for s in self.branch.sims), *self.branch.hosts] if h.node != leader)


def metric(h: EdgeHost, name: str, labels: str = "") -> float:
    """A sample of edgeproxy's /metrics on node `h` (0 when absent)."""
    m = re.search(rf"^{re.escape(name)}(?:\{{{re.escape(labels)}\}})? ([0-9.e+]+)$", h.proxy_metrics(), re.M)
    return float(m.group(1)) if m else 0.0


@pytest.fixture(scope="module")
def site(real_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    c = real_cluster
    work = Path(tmp_path_factory.mktemp("branch"))
    c.start_controller_manager("--controllers=endpointslice,serviceaccount")
    try:
        # the rollout's pods run outside the branch: their kubelet's traffic crosses its own WAN, not the branch's
        with EdgeHost(c, work / "dc", "branch-dc", components=("edgeproxy", "kubelet")) as dc:
            before = c.open_watches()
            with Branch(c, work / "branch", "branch-t", hosts=3, sims=1) as b:
                rollout = Rollout(c, "branch-rollout", services=3, pods=10, nodes=[dc.node])
                rollout.setup()
                yield Site(c, b, rollout, before)
                rollout.teardown()
    finally:
        c.stop_controller_manager()


def test_without_sharing_every_node_watches_across_the_wan(site: Site) -> None:
    """Today's cost, the baseline: each node holds its own upstream watches of Services and EndpointSlices, so every
    EndpointSlice rewrite crosses the branch's WAN once per node; every node ends with the API server's view."""
    nodes = len(site.branch.nodes)
    off = site.off = site.measure_rollout()
    print(f"\nsharing off, {nodes} nodes: {off}")
    # kube-proxy (or the reflector standing in for it) on every node: one EndpointSlice watch each
    assert off["lists"] == {"services": 0, "endpointslices": 0}, off  # a rollout makes no client relist
    site.expect_watches(site.watches_alone())
    site.views_equal_api()


def test_a_peer_that_is_not_a_node_of_the_cluster_gets_nothing(site: Site, tmp_path: Path) -> None:
    """A node's peer listener, asked from the branch LAN: no certificate, a node certificate of another CA, or the
    cluster's admin certificate (not a node) get nothing; a node certificate of the cluster gets past the door (the
    Services when the node leads, 503 "not the leader" otherwise)."""
    c, b = site.cluster, site.branch
    site.share()
    target = b.node(b.leader()) if b.leader() else b.hosts[0]
    asker = next(h for h in b.nodes if h is not target)
    address = (target.netns.edge_ip, POOL_PORT)
    path = "/api/v1/services?fieldSelector=spec.clusterIP%21%3DNone"  # the kubelet's query
    node_cert = c.node_cert(asker.node)
    ok = peer_get(asker, address, path, *node_cert)
    assert ok["status"] in (200, 503), ok
    assert ok["status"] == 503 or "ServiceList" in ok["body"], ok

    other = tls.make_ca("not-the-cluster-ca")
    tls.issue(other, f"system:node:{asker.node}", ("system:nodes",), client=True).write(
        tmp_path / "foreign.crt", tmp_path / "foreign.key")
    assert c.pki is not None
    foreign = (tmp_path / "foreign.crt", tmp_path / "foreign.key")
    # no TLS connection (status 0) without a certificate of the cluster CA; 403 for one that is not a node's
    for who, cert, status in (("no certificate", (None, None), 0), ("a node certificate of another CA", foreign, 0),
                              ("the admin, not a node", c.pki.admin, 403)):
        r = peer_get(asker, address, path, *cert)
        assert r["status"] == status, (who, r)
        assert "ServiceList" not in r["body"] and "svc-0" not in r["body"], (who, r)


def test_with_sharing_the_branch_holds_one_watch_per_query_and_the_wan_carries_each_rewrite_once(site: Site) -> None:
    """--pool on: the leader holds one upstream watch per query and the WAN carries each EndpointSlice rewrite once
    instead of once per node; every node ends with the API server's view, the followers through the leader."""
    b = site.branch
    assert site.off, "the baseline (sharing off) ran first"
    site.need_leader()
    wait_for(b.settled, 60, "every node following the leader")
    lists0 = site.pool_lists()
    # the clients were not restarted: their watches, opened on the API server before a leader was known, move to the
    # pool (each node ends those it could serve from the pool; the client re-watches from its last resourceVersion)
    site.expect_watches(POOL_QUERIES, 90)
    moved = {r: n - lists0[r] for r, n in site.pool_lists().items()}
    # at most the leader's own LIST per query (a view started after the settle); a relist would be one per node
    assert all(moved[r] <= POOL_QUERIES[r] for r in POOL_RESOURCES), moved
    # every node had watches on the API server when the leader was elected: each moved some
    assert all(metric(h, "edgeproxy_pool_watches_moved_total") > 0 for h in b.nodes), {
        h.node: metric(h, "edgeproxy_pool_watches_moved_total") for h in b.nodes}
    on = site.measure_rollout()
    print(f"\nsharing on, leader {b.leader()}: {on}")
    assert on["lists"] == {"services": 0, "endpointslices": 0}, on
    site.expect_watches(POOL_QUERIES)
    # each rewrite crosses the WAN once instead of once per node (4 here; plus the kubelets' own traffic and, with
    # sharing, the nodes' reads of the pool Lease): per EndpointSlice write, less than half the bytes
    assert on["wan_bytes_down_per_write"] * 2 < site.off["wan_bytes_down_per_write"], (on, site.off)
    site.views_equal_api()
    followers = [h for h in b.nodes if h.node != b.leader()]
    assert all(metric(h, "edgeproxy_pool_requests_total", 'via="leader"') > 0 for h in followers)


def test_leader_killed_mid_rollout_a_new_one_is_elected_without_a_relist_storm(site: Site) -> None:
    """The leader's edgeproxy killed (SIGKILL) halfway through a generation: another node takes the Lease, every other
    node converges on the API server's view, and the API server sees at most the new leader's LIST per query."""
    b = site.branch
    leader = site.need_leader()
    node = b.node(leader)
    lists0 = site.pool_lists()
    try:
        site.rollout.run(1, midway=lambda: node.stop_component("edgeproxy", kill=True))
        wait_for(lambda: b.leader() not in ("", leader), NODE_GRACE + 10 + 4 * LEASE_SECONDS,
             "another node holding the pool Lease")
        # the clients' LISTs, counted once the reflectors converged without a request of the test's: the test's own
        # LISTs (views_equal_api: JSON, kube-proxy's token) are queries of their own, each listed once by a new leader
        wait_for(lambda: site.reflectors_converged(skip=leader), 60, "the reflectors' views equal to the API server's")
        lists = {r: n - lists0[r] for r, n in site.pool_lists().items()}
        print(f"\nleader {leader} killed, new leader {b.leader()}, LISTs + watch-lists upstream: {lists}")
        # at most the new leader's one per query; a storm would be one per node and query
        assert all(lists[r] <= POOL_QUERIES[r] for r in POOL_RESOURCES), lists
        site.views_equal_api(skip=leader)
    finally:
        if "edgeproxy" not in node.procs:
            node.start_component("edgeproxy")
    site.views_equal_api()


def test_branch_cut_off_followers_are_served_by_the_leader_then_converge(site: Site) -> None:
    """The branch's WAN cut: a follower, offline, is answered a fresh LIST by the leader over the LAN; the WAN back,
    a generation rolls out and every node converges."""
    b = site.branch
    assert b.wan is not None
    site.need_leader()
    follower = site.follower()
    before = api_view(site.cluster)
    via_leader = metric(follower, "edgeproxy_pool_requests_total", 'via="leader"')
    b.wan.cut()
    try:
        wait_for(lambda: not follower.proxy_online(), 20, f"{follower.node}'s edgeproxy offline")
        # a fresh LIST of kube-proxy's on the follower: answered, from the leader's view over the LAN
        assert served_list(follower, "endpointslices") == before["endpointslices"]
        assert metric(follower, "edgeproxy_pool_requests_total", 'via="leader"') > via_leader
    finally:
        b.wan.restore()
    site.rollout.run(1)
    site.views_equal_api()
