"""The companion's controller and leader election against the simulator: pods on an opted-in node with a healthy
cache report get the node's duration; the other node's pods are untouched; the grant is withdrawn when the report
turns unhealthy; only the Lease holder patches."""

import asyncio
import json

import pytest

from edgeproxy import tasks
from edgeproxy.companion import controller, elector, health, nodes, policy
from tests.e2e.edge import until

pytestmark = pytest.mark.timeout(60)
U = policy.UNREACHABLE


def pods_of(sim, node):
    return [e.obj for e in sim.store.snapshot("pods").values() if e.obj["spec"].get("nodeName") == node
            and e.obj["status"].get("phase") in ("Running", "Pending")]


def seconds(pod, key=U):
    return policy.effective(pod["spec"].get("tolerations") or [], key)[1]


def report(sim, node, healthy, reason=""):
    sim.patch("nodes", node, {"metadata": {"annotations": {
        health.ANNOTATION: health.encode(health.Report(healthy, reason))}}})


@pytest.fixture
async def running(kube):
    view = nodes.NodeView(kube, max_age=900)
    ctrl = controller.Controller(kube, view, resync=60)
    started = [tasks.spawn(view.informer.run(), name="t-nodes"), tasks.spawn(ctrl.run(), name="t-ctrl")]
    yield ctrl
    for t in started:
        t.cancel()
    await asyncio.gather(*started, return_exceptions=True)


async def test_opted_in_healthy_node_gets_autonomy_others_stay_stock(sim, running):
    stock = {p["metadata"]["name"]: p["spec"].get("tolerations") for p in pods_of(sim, "edge-2")}
    sim.patch("nodes", "edge-1", {"metadata": {"annotations": {policy.DURATION: "2h"}}})
    report(sim, "edge-1", True)
    await until(lambda: all(seconds(p) == 7200 and seconds(p, policy.NOT_READY) == 7200
                            for p in pods_of(sim, "edge-1")), timeout=20)
    for p in pods_of(sim, "edge-1"):
        assert p["metadata"]["annotations"][policy.GRANTED] == "7200"
    assert {p["metadata"]["name"]: p["spec"].get("tolerations") for p in pods_of(sim, "edge-2")} == stock

    # the edge says its cache is broken: the grant is withdrawn, the pods' own tolerations come back
    before = {p["metadata"]["name"]: json.loads(p["metadata"]["annotations"][policy.ORIGINAL])
              for p in pods_of(sim, "edge-1")}
    report(sim, "edge-1", False, "disk full")
    await until(lambda: all(policy.GRANTED not in (p["metadata"].get("annotations") or {})
                            for p in pods_of(sim, "edge-1")), timeout=20)
    for p in pods_of(sim, "edge-1"):
        assert seconds(p) == before[p["metadata"]["name"]][U]
    assert running.counts["failed"] == 0


async def test_no_report_means_no_autonomy(sim, running):
    sim.patch("nodes", "edge-1", {"metadata": {"annotations": {policy.DURATION: "unlimited"}}})
    await until(lambda: running.nodes.node("edge-1") is not None
                and policy.DURATION in running.nodes.node("edge-1")["metadata"]["annotations"], timeout=10)
    await running.sweep()
    assert running.counts["granted"] == 0
    report(sim, "edge-1", True)
    await until(lambda: all(seconds(p) is None for p in pods_of(sim, "edge-1")), timeout=20)


async def test_a_new_pod_on_an_autonomous_node_is_patched(sim, running):
    sim.patch("nodes", "edge-1", {"metadata": {"annotations": {policy.DURATION: "600"}}})
    report(sim, "edge-1", True)
    await until(lambda: all(seconds(p) == 600 for p in pods_of(sim, "edge-1")), timeout=20)
    sim.create("pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "late", "namespace": "edge"},
                        "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "x"}],
                                 "tolerations": [{"key": U, "operator": "Exists", "effect": "NoExecute",
                                                  "tolerationSeconds": 30}]}}, namespace="edge")
    await until(lambda: seconds(sim.get("pods", "late", "edge")) == 600, timeout=20)


async def test_only_the_lease_holder_leads(kube):
    leading = []

    def lead(name):
        async def run():
            leading.append(name)
            await asyncio.Event().wait()
        return run

    a = elector.Elector(kube, "default", "companion", "a", duration=2, renew_deadline=1.5, retry=0.1)
    b = elector.Elector(kube, "default", "companion", "b", duration=2, renew_deadline=1.5, retry=0.1)
    ta = tasks.spawn(a.run(lead("a")), name="t-a")
    await until(lambda: a.leading, timeout=10)
    tb = tasks.spawn(b.run(lead("b")), name="t-b")
    try:
        lease = await kube.get("/apis/coordination.k8s.io/v1/namespaces/default/leases/companion")
        assert lease["spec"]["holderIdentity"] == "a" and not b.leading
        ta.cancel()  # a stops: it releases the lease and b takes over
        await asyncio.gather(ta, return_exceptions=True)
        await until(lambda: leading == ["a", "b"], timeout=10)
        assert not a.leading
    finally:
        tb.cancel()
        await asyncio.gather(tb, return_exceptions=True)
