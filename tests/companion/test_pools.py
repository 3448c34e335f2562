"""companion.pools: which node leads each pool, and the Lease that names it (what the nodes read)."""

from pathlib import Path

import pytest
import yaml

from edgeproxy.companion import pools
from edgeproxy.pool import election, follow, policy

ZONE = "topology.kubernetes.io/zone"


def node(name, pool="branch-a", peer="10.0.0.1:10270", deleting=False):
    md = {"name": name, "labels": {ZONE: pool} if pool else {}, "annotations": {pools.PEER_ANNOTATION: peer}
          if peer else {}}
    if deleting:
        md["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": md}


def node_lease(name, renew="t0", duration=40):
    return {"metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "renewTime": renew, "leaseDurationSeconds": duration}}


def alive(*names, at=0.0):
    f = pools.Freshness()
    for n in names:
        f.see(node_lease(n), n, at)
    return f


def plan(group, lease, since_write=None, duration=15):
    return pools.plan("branch-a", group, lease, namespace="edgeproxy", duration=duration, renew=duration / 3,
                      since_write=since_write, wall=100.0)


def test_the_first_sharing_live_node_by_name_leads_and_the_lease_has_the_shape_nodes_read():
    nodes = [node("n3", peer="10.0.0.3:1"), node("n1", peer=""), node("n2", peer="10.0.0.2:1"), node("x", pool="")]
    groups = pools.members(nodes, ZONE, alive("n1", "n2", "n3"), 1.0)
    assert list(groups) == ["branch-a"]  # a node without the label belongs to no pool
    w = plan(groups["branch-a"], None)
    assert w.create and w.holder == "n2"  # n1 does not share (no peer address)
    assert w.body["metadata"] == {"name": "edgeproxy-pool-branch-a", "namespace": "edgeproxy",
                                  "labels": {election.POOL_LABEL: "branch-a"},
                                  "annotations": {election.ADDRESS_ANNOTATION: "10.0.0.2:1"}}
    assert w.body["spec"]["leaseDurationSeconds"] == 15 and w.body["spec"]["leaseTransitions"] == 0
    # a node reading it: n2 leads, n3 follows n2's address
    for me, role, address in (("n2", election.Role.LEADER, None), ("n3", election.Role.FOLLOWER, ("10.0.0.2", 1))):
        f = follow.Following(me)
        f.see(w.body, 5.0)
        assert (f.view(6.0).role, f.view(6.0).leader_address) == (role, address)


def test_the_holder_is_kept_while_alive_then_moves_and_nobody_alive_writes_nothing():
    nodes = [node("n1", peer="10.0.0.1:1"), node("n2", peer="10.0.0.2:1")]
    held = plan(pools.members(nodes, ZONE, alive("n1", "n2"), 1.0)["branch-a"], None).body
    held["spec"]["holderIdentity"] = "n2"  # n2 holds it (elected before n1 shared)
    held["metadata"]["annotations"][election.ADDRESS_ANNOTATION] = "10.0.0.2:1"
    held["metadata"]["resourceVersion"] = "7"
    fresh = alive("n1", "n2")
    group = pools.members(nodes, ZONE, fresh, 10.0)["branch-a"]
    assert plan(group, held, since_write=1.0) is None  # sticky, and not yet due for renewal
    renew = plan(group, held, since_write=6.0)
    assert renew.holder == "n2" and not renew.changed and not renew.create
    assert renew.body["metadata"]["resourceVersion"] == "7"  # the API server's concurrency check
    assert renew.body["spec"]["acquireTime"] == held["spec"]["acquireTime"]
    # n2's kubelet stops renewing its Lease (its edgeproxy died): after the grace, n1 takes over
    fresh.see(node_lease("n1", renew="t1"), "n1", 30.0)
    group = pools.members(nodes, ZONE, fresh, 45.0, grace=20.0)["branch-a"]
    moved = plan(group, held, since_write=1.0)
    assert (moved.holder, moved.changed, moved.body["spec"]["leaseTransitions"]) == ("n1", True, 1)
    assert moved.body["metadata"]["annotations"][election.ADDRESS_ANNOTATION] == "10.0.0.1:1"
    # nobody alive: nothing written, the Lease expires for the nodes that read it
    assert plan(pools.members(nodes, ZONE, fresh, 100.0, grace=20.0)["branch-a"], held) is None


def test_a_node_being_deleted_or_with_a_bad_address_or_pool_never_leads():
    nodes = [node("n1", deleting=True), node("n2", peer="no-port"), node("n3", pool="Bad_Pool")]
    groups = pools.members(nodes, ZONE, alive("n1", "n2", "n3"), 1.0)
    assert list(groups) == ["branch-a"] and not any(m.eligible for m in groups["branch-a"])
    assert plan(groups["branch-a"], None) is None


def test_node_freshness_is_timed_by_the_companion_from_each_change():
    f = pools.Freshness()
    assert not f.fresh("n1", 0.0)  # no node Lease (no kubelet): never alive
    f.see(node_lease("n1", duration=40), "n1", 0.0)
    assert f.fresh("n1", 39.0) and not f.fresh("n1", 40.0)
    f.see(node_lease("n1", duration=40), "n1", 30.0)  # the same record read again: no renewal
    assert not f.fresh("n1", 41.0)
    f.see(node_lease("n1", renew="t2", duration=40), "n1", 41.0)
    assert f.fresh("n1", 50.0, grace=10.0) and not f.fresh("n1", 51.0, grace=10.0)
    f.see(None, "n1", 52.0)
    assert not f.fresh("n1", 52.0)


RBAC = Path(__file__).resolve().parents[2] / "deploy" / "pool" / "rbac.yaml"


def test_pool_rbac_grants_nodes_reads_of_exactly_what_is_shared_and_the_companion_its_leases():
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    roles = {(d["metadata"].get("namespace", ""), d["metadata"]["name"]): d["rules"] for d in docs
             if d["kind"] in ("Role", "ClusterRole")}
    node_rules = []
    companion_rules = []
    for b in (d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        rules = roles[(b["metadata"].get("namespace", "") if b["roleRef"]["kind"] == "Role" else "",
                       b["roleRef"]["name"])]
        for s in b["subjects"]:
            (node_rules if s["name"] == "system:nodes" else companion_rules).extend(rules)
            assert s["name"] in ("system:nodes", "edgeproxy-companion")
    for r in node_rules:
        assert set(r["verbs"]) == {"get", "list", "watch"}, r  # nodes only read
    shared = {(g, res) for r in node_rules for g in r["apiGroups"] for res in r["resources"]}
    assert shared == policy.DEFAULT_RESOURCES | {("coordination.k8s.io", "leases")}
    assert {v for r in companion_rules for v in r["verbs"]} == {"get", "list", "watch", "create", "update"}


@pytest.mark.parametrize("address", ["10.0.0.1:10270", "[fd00::1]:10270"])
def test_an_announced_address_is_taken_as_written(address):
    [m] = pools.members([node("n1", peer=address)], ZONE, alive("n1"), 0.0)["branch-a"]
    assert m.eligible and m.address == address
