"""Real Kubernetes through edgeproxy, online and through a WAN outage, with client-go's WatchListClient off and on.

One edge host per WatchListClient setting (module scope: the steps below run in order on it): a hollow kubelet
(the node's client certificate), a hollow kube-proxy and CoreDNS (their own ServiceAccount tokens over the HTTPS
listener), all through edgeproxy, across a WAN relay to a real kube-apiserver.

    online pass-through → WAN cut → every client restarted offline → pods running again from the cache, CoreDNS
    answering a Service name → WAN back → a new pod runs, and no LIST reached the API server meanwhile

With EDGEPROXY_REAL_PROXY=forward, edgeproxy runs with --cache off (a plain forwarder) and the offline steps fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, count_diff
from .edge import EdgeHost
from .procs import wait_for

PODS = 8
WATCHED = ("pods", "nodes", "services", "endpointslices")  # what kubelet, kube-proxy and CoreDNS list and watch


class Site:
    def __init__(self, cluster: Cluster, edge: EdgeHost, namespace: str, cluster_ip: str) -> None:
        self.cluster, self.edge, self.namespace, self.cluster_ip = cluster, edge, namespace, cluster_ip
        self.names = [f"{edge.node}-pod-{i}" for i in range(PODS)]
        self.service_name = f"web.{namespace}.svc.cluster.local"
        self.watchlist: bool | None = None
        self.counts_at_start: dict[tuple[str, str], int] = {}

    def api_phases(self) -> dict[str, str]:
        """Each pod's phase in the API server (GETs: the test's own requests must not count as LISTs)."""
        return {n: self.cluster.core.read_namespaced_pod(n, self.namespace).status.phase for n in self.names}

    def kubelet_has_all(self) -> bool:
        mine = {k for k in self.edge.kubelet_pods() if k.startswith(self.namespace + "/")}
        return len(mine) == len(self.names)

    def all_running(self) -> bool:
        return self.edge.running_pods() == len(self.names) and self.kubelet_has_all()


@pytest.fixture(scope="module", params=[False, True], ids=["watchlist-off", "watchlist-on"])
def site(request: pytest.FixtureRequest, real_cluster: Cluster,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    watchlist: bool = request.param
    node = f"edge-wl-{'on' if watchlist else 'off'}"
    ns = f"apps-{node}"
    cluster_ip = real_cluster.create_service(ns, "web")
    real_cluster.create_pods(node, PODS, namespace=ns)
    edge = EdgeHost(real_cluster, Path(tmp_path_factory.mktemp(node)), node, watchlist=watchlist)
    before = real_cluster.request_counts()
    with edge:
        site = Site(real_cluster, edge, ns, cluster_ip)
        site.watchlist, site.counts_at_start = watchlist, before
        yield site


def test_online_pass_through(site: Site) -> None:
    e = site.edge
    assert e.proxy_online()
    # the hollow kubelet registered its Node through edgeproxy, as system:node:<name> (NodeRestriction allows
    # only that identity to create it), and reported its pods Running
    wait_for(lambda: site.all_running(), 60, f"{PODS} pods running on the kubelet", procs=list(e.procs.values()))
    wait_for(lambda: set(site.api_phases().values()) == {"Running"}, 60, "pods Running in the API server")
    node = site.cluster.core.read_node(e.node)
    assert {c.type: c.status for c in node.status.conditions}["Ready"] == "True"
    # CoreDNS (its own token, over the HTTPS listener) answers the Service's name with its cluster IP
    assert wait_for(lambda: e.dig(site.service_name) == [site.cluster_ip], 30, "CoreDNS answering online")
    assert e.kube_proxy_synced()
    assert e.wan is not None and e.wan.stats()["bytes_down"] > 0
    # the clients listed as WatchListClient says: pods by LIST, or by a watch-list (sendInitialEvents)
    grew = site.cluster.request_counts()
    lists = count_diff(grew, site.counts_at_start, "LIST").get(("LIST", "pods"), 0)
    watch_lists = count_diff(grew, site.counts_at_start, "WATCHLIST").get(("WATCHLIST", "pods"), 0)
    assert (watch_lists > 0 and lists == 0) if site.watchlist else (lists > 0 and watch_lists == 0)


def test_one_wan_connection_per_identity(site: Site) -> None:
    """HTTP/2 to the real kube-apiserver: kubelet (the node's certificate, with edgeproxy's own probes), kube-proxy and
    CoreDNS (a token each) hold one TCP connection each across the WAN in steady state, every watch multiplexed."""
    e = site.edge
    assert e.wan is not None
    # (after test_online_pass_through: everything running, CoreDNS answering, kube-proxy synced; HTTP/1.1 held 26)
    assert e.wan.stats()["connections_open"] <= 3, e.wan.stats()


def test_one_local_connection_per_component(site: Site) -> None:
    """HTTP/2 on edgeproxy's HTTPS listener: kubelet, kube-proxy and CoreDNS (client-go, which negotiates h2 by ALPN)
    each multiplex every request and watch on one local TCP connection (over HTTP/1.1: one per watch)."""
    e = site.edge
    got = e.local_connections()
    assert {k: got.get(k, 0) for k in ("kubelet", "kube-proxy", "coredns")} == {
        "kubelet": 1, "kube-proxy": 1, "coredns": 1}, got


def test_wan_cut(site: Site) -> None:
    e = site.edge
    assert e.wan is not None
    e.wan.cut()
    wait_for(lambda: not e.proxy_online(), 30, "edgeproxy offline after the WAN cut")
    assert e.wan.stats()["connections_open"] == 0
    # the kubelet keeps its pods
    assert site.all_running()


def test_every_client_restarted_offline(site: Site) -> None:
    e = site.edge
    e.restart_all()  # edgeproxy, kubelet, kube-proxy, CoreDNS: all new processes; the WAN is still cut
    assert not e.proxy_online()
    # the new kubelet got its pods from edgeproxy's cache and started them again in its (fresh, fake) runtime
    wait_for(lambda: site.all_running(), 90, f"{PODS} pods running again offline", procs=list(e.procs.values()))
    # CoreDNS, restarted offline, answers the Service from its lists out of the cache
    assert wait_for(lambda: e.dig(site.service_name) == [site.cluster_ip], 30, "CoreDNS answering offline")
    # kube-proxy, restarted offline, got its Services and EndpointSlices from the cache
    assert e.kube_proxy_synced()
    assert e.wan is not None and e.wan.stats()["connections_open"] == 0


def test_wan_back_without_relists(site: Site) -> None:
    e, c = site.edge, site.cluster
    assert e.wan is not None
    before = c.request_counts()
    handshakes = e.wan.stats()["connections_total"]
    e.wan.restore()
    wait_for(e.proxy_online, 30, "edgeproxy online after the WAN is back")
    # a pod created now reaches the kubelet over its resumed watch, runs, and its status reaches the API server
    site.names += c.create_pods(e.node, 1, namespace=site.namespace, prefix="after")
    wait_for(lambda: site.all_running(), 60, "the new pod running", procs=list(e.procs.values()))
    wait_for(lambda: site.api_phases().get("after-0") == "Running", 60, "the new pod Running in the API server")
    wait_for(lambda: e.dig(site.service_name) == [site.cluster_ip], 30, "CoreDNS answering online again")
    after = c.request_counts()
    lists = {**count_diff(after, before, "LIST"), **count_diff(after, before, "WATCHLIST")}
    relists = {k: n for k, n in lists.items() if k[1] in WATCHED}
    assert relists == {}, f"LISTs (and watch-lists) that reached the API server after the WAN came back: {lists}"
    # Every client re-watched through the WAN (the offline watches ended when edgeproxy came back online): one TCP and
    # TLS handshake per upstream identity (the node's certificate, kube-proxy's token, CoreDNS's token), not one per
    # watch (HTTP/1.1: 26, 38 with watch-list clients).
    wait_for(lambda: e.wan.stats()["connections_open"] == 3, 30, "kubelet, kube-proxy and CoreDNS connected upstream")
    assert e.wan.stats()["connections_total"] - handshakes == 3, e.wan.stats()
