"""A branch of nodes behind one WAN link during a rollout (issue 16): what crosses the WAN, and what every node sees,
without pool sharing and with it.

One branch (tests/real/branch.py): 3 edge hosts (edgeproxy, hollow kubelet, hollow kube-proxy) and 1 simulated node
(edgeproxy and a reflector client listing and watching as kube-proxy does), all labelled with the branch's pool, on one
LAN, reaching the API server through ONE WAN relay. kube-controller-manager's EndpointSlice controller rewrites the
EndpointSlices of 3 Services while their pods, bound to a node outside the branch (its own WAN), are replaced
generation after generation (tests/real/rollout.py).

Measured at the API server (open watches, LISTs and watch-lists of Services and EndpointSlices, cluster-wide) and on the
branch's WAN relay (bytes); every node's view of Services and EndpointSlices must equal the API server's at the end.
The steps run in order on the one branch: without sharing, then `--pool on` as the README tells an operator to set it
up (deploy/pool/rbac.yaml and the companion's ServiceAccount and RBAC applied as shipped; `edgeproxy companion` run in
the cloud, tests/real/poolcompanion.py): peers that are not nodes of the cluster at the peer listener; the rollout;
the leader killed mid-rollout; the branch cut off from the WAN.

What the real cluster required (issue 16; the steps were xfail until 21:41 on the session clock):
1. kube-apiserver's NodeRestriction admission refuses a node any Lease outside kube-node-lease, so the companion names
   each pool's leader on the pool's Lease (companion/pools.py: a node whose edgeproxy announced its peer address on its
   Node and whose kubelet's node Lease is fresh, sticky) and the nodes only read it (--pool-election companion);
2. the system:node role has no EndpointSlices: deploy/pool/rbac.yaml grants the group system:nodes get/list/watch of
   exactly what a leader shares;
3. watches the nodes' clients opened before a leader was named are moved to it (pool/moves.py: ended at an event
   boundary, spread over a few seconds; a watch from a resourceVersion older than the leader's view comes back
   upstream and is moved again once the API server's next event or bookmark advanced it, within about a minute).
A dead leader is noticed by its node Lease going stale: NODE_GRACE seconds (the companion's --pool-node-grace) after
the kubelet's last renewal through the killed edgeproxy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeproxy import tls

from .branch import POOL_PORT, Branch, api_view, peer_get, served_list
from .cluster import Cluster
from .edge import EdgeHost
from .poolcompanion import NODE_GRACE
from .procs import RealError, wait_for
from .rollout import Rollout

POOL_RESOURCES = ("services", "endpointslices")
LEASE_SECONDS = 6  # the nodes' --pool-lease-duration (their shortest period of reading the pool Lease: a third)
# queries the branch's clients make of the pool's resources: kube-proxy's Services and EndpointSlices, the kubelet's
# Services (another field selector, so another view)
POOL_QUERIES = {"services": 2, "endpointslices": 1}
# the moved watches reach the leader once their resourceVersion passed the leader's view: the API server's next
# bookmark (every minute) or event
MOVED_WITHIN = 180


class Site:
    def __init__(self, cluster: Cluster, branch: Branch, rollout: Rollout, watches_before: dict[str, int]) -> None:
        self.cluster, self.branch, self.rollout = cluster, branch, rollout
        self.watches_before = watches_before  # open at the API server before the branch started
        self.off: dict[str, Any] = {}  # the rollout's figures without sharing
        self.sharing = False
        self.leader = ""  # the first leader elected after sharing was switched on ("" when none was)

    def share(self) -> str:
        """Sharing on (once): every edgeproxy restarted with --pool on; the leader elected within 3 lease durations,
        or ""."""
        if not self.sharing:
            self.sharing = True
            self.branch.sharing(True, "--pool-lease-duration", str(LEASE_SECONDS))
            try:
                self.leader = str(wait_for(self.branch.leader, 3 * LEASE_SECONDS, "a leader of the branch's pool"))
            except Exception:
                self.leader = ""
        return self.leader

    def need_leader(self) -> str:
        """The leader, once every node whose edgeproxy runs knows it (a node reads the pool Lease every few seconds;
        at once while its leader fails)."""
        leader = self.share() and self.branch.leader()
        assert leader, "no node holds the branch's pool Lease"
        wait_for(lambda: all(pool_leader(h) in (leader, None) for h in self.branch.nodes), 30,
                 f"every node following {leader}")
        return leader

    def branch_watches(self) -> dict[str, int]:
        """Watches of Services and EndpointSlices the branch holds open at the API server now."""
        now = self.cluster.open_watches()
        return {r: now.get(r, 0) - self.watches_before.get(r, 0) for r in POOL_RESOURCES}

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
        wan0, lists0 = b.wan.stats(), self.pool_lists()
        self.rollout.run(generations)
        # the simulated nodes' reflectors converge without any request of the test's: then the figures are taken
        wait_for(self.reflectors_converged, 60, "the reflectors' views equal to the API server's")
        wan1, lists1 = b.wan.stats(), self.pool_lists()
        return {"wan_bytes_down": wan1["bytes_down"] - wan0["bytes_down"],
                "wan_bytes_up": wan1["bytes_up"] - wan0["bytes_up"],
                "watches": self.branch_watches(), "lists": {r: lists1[r] - lists0[r] for r in POOL_RESOURCES}}

    def follower(self) -> EdgeHost:
        """A node that is not the leader (the simulated one when it can be: its reflector can be restarted)."""
        leader = self.branch.leader()
        return next(h for h in [*(s.host for s in self.branch.sims), *self.branch.hosts] if h.node != leader)


def leader_views(h: EdgeHost) -> list[str]:
    """The queries of the views node `h` keeps as leader (its /debug/state)."""
    status, _, body = h._ops("/debug/state")
    return [v["query"] for v in ((json.loads(body).get("pool") or {}).get("views") or ())] if status == 200 else []


def pool_leader(h: EdgeHost) -> str | None:
    """The leader node `h`'s edgeproxy follows (or its own name when it leads; "" when it knows none), from its
    /debug/state; None when its edgeproxy does not answer (stopped)."""
    try:
        status, _, body = h._ops("/debug/state")
    except OSError:
        return None
    if status != 200:
        return None
    return str((json.loads(body).get("pool") or {}).get("leader") or "")


def pool_requests(b: Branch) -> dict[str, dict[str, float]]:
    """Each node's edgeproxy_pool_requests_total by `via` (for a failure's message)."""
    return {h.node: {via: metric(h, "edgeproxy_pool_requests_total", f'via="{via}"') for via in ("leader", "view",
                                                                                               "upstream")}
            for h in b.nodes}


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
                rollout = Rollout(c, "branch-rollout", services=3, pods=6, nodes=[dc.node])
                rollout.setup()
                yield Site(c, b, rollout, before)
                rollout.teardown()
    finally:
        c.stop_controller_manager()


def test_without_sharing_every_node_watches_across_the_wan(site: Site) -> None:
    """Today's cost, the baseline: each node holds its own upstream watches of Services and EndpointSlices, so every
    EndpointSlice rewrite crosses the branch's WAN once per node; every node ends with the API server's view."""
    b, nodes = site.branch, len(site.branch.nodes)
    off = site.off = site.measure_rollout()
    print(f"\nsharing off, {nodes} nodes: {off}")
    # kube-proxy (or the reflector standing in for it) on every node: one EndpointSlice watch each
    assert off["watches"] == {"endpointslices": nodes, "services": nodes + len(b.hosts)}, off
    assert off["lists"] == {"services": 0, "endpointslices": 0}, off  # a rollout makes no client relist
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
    path = "/api/v1/services?fieldSelector=spec.clusterIP%21%3DNone"
    node_cert = c.node_cert(asker.node)
    ok = peer_get(asker, address, path, *node_cert)
    assert ok["status"] in (200, 503), ok
    assert ok["status"] == 503 or '"ServiceList"' in ok["body"], ok

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

    def queries() -> dict[str, int]:
        """The clients' queries, and the peer probe's (JSON: a query of its own, whose view the leader keeps watching
        until nobody asked for it for pool.view.IDLE seconds)."""
        probe = sum(1 for q in leader_views(b.node(b.leader())) if q.startswith("v1 services") and q.endswith(" json"))
        return dict(POOL_QUERIES, services=POOL_QUERIES["services"] + probe)

    try:
        wait_for(lambda: site.branch_watches() == queries() and site.reflectors_converged(), MOVED_WITHIN,
                 "the branch down to one upstream watch per query")
    except RealError:
        raise AssertionError(f"upstream watches of the branch {site.branch_watches()}, want {queries()}; "
                             f"{pool_requests(b)}; the leader's views {leader_views(b.node(b.leader()))}") from None
    on = site.measure_rollout()
    print(f"\nsharing on, leader {b.leader()}: {on}")
    assert on["watches"] == queries(), on
    assert on["lists"] == {"services": 0, "endpointslices": 0}, on
    # the same rewrites cross the WAN once instead of once per node (plus the kubelets' own traffic, the same in both)
    assert on["wan_bytes_down"] * 2 < site.off["wan_bytes_down"], (on, site.off)
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
    site.rollout.run(1, midway=lambda: node.stop_component("edgeproxy", kill=True))
    wait_for(lambda: b.leader() not in ("", leader), NODE_GRACE + 30,
             "another node holding the pool Lease")
    # the clients' LISTs, counted once the reflectors converged without any request of the test's (the test's own
    # LISTs below, JSON as kube-proxy's token, are queries of their own: the new leader lists them once each)
    wait_for(lambda: site.reflectors_converged(skip=leader), 60, "the reflectors' views equal to the API server's")
    lists = {r: n - lists0[r] for r, n in site.pool_lists().items()}
    print(f"\nleader {leader} killed, new leader {b.leader()}, LISTs + watch-lists upstream: {lists}")
    # at most the new leader's one per query; a storm would be one per node and query
    assert all(lists[r] <= POOL_QUERIES[r] for r in POOL_RESOURCES), lists
    site.views_equal_api(skip=leader)
    node.start_component("edgeproxy")
    site.views_equal_api()


def test_branch_cut_off_followers_are_served_by_the_leader_then_converge(site: Site) -> None:
    """The branch's WAN cut: a follower, offline, is answered a fresh LIST by the leader over the LAN; the WAN back,
    a generation rolls out and every node converges."""
    b = site.branch
    assert b.wan is not None
    leader = site.need_leader()
    follower = site.follower()
    # the follower's query (kube-proxy's EndpointSlices, in JSON) asked once online, through the leader: the leader
    # keeps a view of it (a leader named just now has none yet, and cannot list one offline)
    def leader_has_it() -> bool:
        served_list(follower, "endpointslices")
        return any(q.startswith("discovery.k8s.io/v1 endpointslices") and q.endswith(" json")
                   for q in leader_views(b.node(leader)))

    wait_for(leader_has_it, 30, "the leader's view of the follower's query")
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
