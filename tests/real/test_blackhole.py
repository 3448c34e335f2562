"""A WAN that hangs instead of failing: connections are accepted and kept, and nothing comes back.

edgeproxy must notice on its own (probe and response-header timeouts), answer from its cache, and a kubelet restarted
meanwhile must get its pods running again; when the link comes back, so does edgeproxy.
"""

from __future__ import annotations

from collections.abc import Callable

from kubernetes import client

from .cluster import Cluster
from .edge import EdgeHost
from .procs import wait_for

PODS = 4


def test_a_black_holed_wan_goes_offline_and_the_kubelet_restarts_from_the_cache(
        real_cluster: Cluster, edge_host: Callable[..., EdgeHost]) -> None:
    node = "edge-blackhole"
    real_cluster.create_pods(node, PODS, namespace="apps-blackhole")
    e = edge_host(node, components=("edgeproxy", "kubelet"))
    assert e.wan is not None
    coord = client.CoordinationV1Api(real_cluster.api)

    def renewed() -> object:
        try:
            return coord.read_namespaced_lease(node, "kube-node-lease").spec.renew_time
        except client.ApiException:
            return None

    wait_for(lambda: e.running_pods() == PODS, 60, "pods running online", procs=list(e.procs.values()))
    before = wait_for(renewed, 60, "the node's Lease (its heartbeat)")
    e.wan.blackhole()
    wait_for(lambda: not e.proxy_online(), 30, "edgeproxy offline behind the black hole")
    assert e.wan.stats()["connections_open"] > 0  # the hung connections are still there
    e.restart("kubelet")
    wait_for(lambda: e.running_pods() == PODS and len(e.kubelet_pods()) == PODS, 60,
             "pods running again behind the black hole", procs=list(e.procs.values()))
    assert renewed() == before  # nothing went through
    e.wan.restore()
    wait_for(e.proxy_online, 30, "edgeproxy online after the link is back")
    # the restarted kubelet's heartbeat reaches the API server again
    wait_for(lambda: renewed() not in (None, before), 60, "the node's Lease renewed through the restored link")
