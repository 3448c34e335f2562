"""A branch of nodes behind one WAN link during a rollout (issue 16): what crosses the WAN, and what every node sees.

One branch (tests/real/branch.py): 3 edge hosts (edgeproxy, hollow kubelet, hollow kube-proxy) and 1 simulated node
(edgeproxy and a reflector client listing and watching as kube-proxy does), all labelled with the branch's pool, on one
LAN, reaching the API server through ONE WAN relay. kube-controller-manager's EndpointSlice controller rewrites the
EndpointSlices of 3 Services while their pods, bound to a node outside the branch (its own WAN), are replaced
generation after generation (tests/real/rollout.py).

Measured at the API server (open watches, LISTs and watch-lists of Services and EndpointSlices, cluster-wide) and on the
branch's WAN relay (bytes); at the end every node's view of Services and EndpointSlices must equal the API server's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .branch import Branch, api_view
from .cluster import Cluster, count_diff
from .edge import EdgeHost
from .procs import wait_for
from .rollout import Rollout

POOL_RESOURCES = ("services", "endpointslices")


class Site:
    def __init__(self, cluster: Cluster, branch: Branch, rollout: Rollout, watches_before: dict[str, int]) -> None:
        self.cluster, self.branch, self.rollout = cluster, branch, rollout
        self.watches_before = watches_before  # open at the API server before the branch started

    def branch_watches(self) -> dict[str, int]:
        """Watches of Services and EndpointSlices the branch holds open at the API server now."""
        now = self.cluster.open_watches()
        return {r: now.get(r, 0) - self.watches_before.get(r, 0) for r in POOL_RESOURCES}

    def views_equal_api(self, timeout: float = 60) -> None:
        """Polls until every node's view of Services and EndpointSlices is the API server's."""
        want = api_view(self.cluster)
        last: dict[str, Any] = {}

        def same() -> bool:
            last.clear()
            last.update(self.branch.views())
            return all(v == want for v in last.values())

        try:
            wait_for(same, timeout, "every node's view equal to the API server's")
        except Exception:
            diff = {n: {r: sorted(set(v[r].items()) ^ set(want[r].items()))[:6] for r in want} for n, v in last.items()
                    if v != want}
            raise AssertionError(f"views differing from the API server's: {diff}") from None

    def measure_rollout(self, generations: int = 2) -> dict[str, Any]:
        """One rollout of `generations`; the branch's WAN bytes and its requests for Services and EndpointSlices."""
        c, b = self.cluster, self.branch
        assert b.wan is not None
        wan0, counts0 = b.wan.stats(), c.request_counts(scope="cluster")
        self.rollout.run(generations)
        # the simulated nodes' reflectors converge without any request of the test's: then the figures are taken
        want = api_view(c)
        wait_for(lambda: all({r: s.view().get(r) for r in POOL_RESOURCES} == want for s in b.sims), 60,
                 "the reflectors' views equal to the API server's")
        wan1, counts1 = b.wan.stats(), c.request_counts(scope="cluster")
        grew = count_diff(counts1, counts0)
        return {"wan_bytes_down": wan1["bytes_down"] - wan0["bytes_down"],
                "wan_bytes_up": wan1["bytes_up"] - wan0["bytes_up"],
                "watches": self.branch_watches(),
                "lists": {r: grew.get(("LIST", r), 0) + grew.get(("WATCHLIST", r), 0) for r in POOL_RESOURCES}}


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
    nodes = len(site.branch.nodes)
    m = site.measure_rollout()
    print(f"\nsharing off, {nodes} nodes: {m}")
    # kube-proxy (or the reflector standing in for it) on every node: one EndpointSlice watch each, across the WAN
    assert m["watches"]["endpointslices"] == nodes, m
    # and kube-proxy's Services watch on every node, plus each hollow kubelet's own
    assert m["watches"]["services"] == nodes + len(site.branch.hosts), m
    assert m["lists"] == {"services": 0, "endpointslices": 0}, m  # a rollout makes no client relist
    site.views_equal_api()
