"""Every pod on the node through edgeproxy, and a branch-local Service, on real Kubernetes (issue 12).

One edge host set up as the README says: the in-cluster address 169.254.2.1 on the host, edgeproxy with
`--in-cluster-address 169.254.2.1:10443` and a serving certificate signed by the cluster CA. The cluster runs without
an endpoint reconciler, so the test writes the `default/kubernetes` EndpointSlice as the API server would, with the
API server's address as this branch reaches it (the WAN relay). kubemark's hollow kube-proxy programs no iptables
rules, so the test writes the one rule kube-proxy's iptables mode makes for the `kubernetes` Service from the
EndpointSlice edgeproxy serves it: ClusterIP:443 DNAT to its endpoint. A pod-like client (tests/real/podclient.py:
in-cluster config from its environment and /var/run/secrets/kubernetes.io/serviceaccount, mounted in its own mount
namespace) lists and watches ConfigMaps:

    online through edgeproxy → WAN cut → edgeproxy and the client restarted offline → WAN back

Then a Service with endpoints in two pools, and (last) the same host with the redirect off: kube-proxy gets the API
server's endpoint and the client goes upstream as before, and loses its API with the WAN.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgeproxy import tls

from .cluster import SERVICE_CIDR, SERVICE_IP, Cluster
from .edge import COMPONENTS, TLS_PORT, EdgeHost
from .procs import Proc, wait_for

IN_CLUSTER_IP, IN_CLUSTER_PORT = "169.254.2.1", 10443
NODE = "edge-filters"
NS = "branch-apps"
ZONE = "topology.kubernetes.io/zone"
SA_DIR = "run/secrets/kubernetes.io/serviceaccount"  # under the client's private /run (/var/run -> /run)
HERE = Path(__file__).parent


class Branch:
    def __init__(self, cluster: Cluster, edge: EdgeHost, work: Path) -> None:
        self.cluster, self.edge, self.work = cluster, edge, work
        self.client: Proc | None = None
        self.client_runs = 0
        self.token = ""  # the pod's projected token: one for its life, across the restarts below

    # ---- what kube-proxy is served, and the rule it would write from it

    def as_kube_proxy(self, path: str) -> dict[str, Any]:
        """GET `path` through edgeproxy's HTTPS listener as kube-proxy (its token and User-Agent), from the netns."""
        code = ("import json, ssl, sys, urllib.request\n"
                "ctx = ssl.create_default_context(cafile=sys.argv[3])\n"
                "req = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2],"
                " 'User-Agent': 'kube-proxy/v1.37.2 (linux/amd64) kubernetes/test', 'Accept': 'application/json'})\n"
                "print(urllib.request.urlopen(req, context=ctx, timeout=10).read().decode())\n")
        r = self.edge.netns.run(sys.executable, "-c", code, f"https://127.0.0.1:{TLS_PORT}{path}",
                                self.edge.tokens["kube-proxy"], str(self.edge.cache_dir / "pki" / "ca.crt"))
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    def program_kubernetes_service(self) -> tuple[str, int]:
        """The DNAT rule kube-proxy writes for ClusterIP:443 from the kubernetes EndpointSlice it is served."""
        # (kube-proxy may list and watch EndpointSlices, not get one)
        s = self.as_kube_proxy("/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
                               "?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes")["items"][0]
        ip = s["endpoints"][0]["addresses"][0]
        port = next(p["port"] for p in s["ports"] if p.get("name") == "https")
        self.edge.netns.run("iptables", "-t", "nat", "-F", "OUTPUT")
        r = self.edge.netns.run("iptables", "-t", "nat", "-A", "OUTPUT", "-d", f"{SERVICE_IP}/32", "-p", "tcp",
                                "--dport", "443", "-j", "DNAT", "--to-destination", f"{ip}:{port}")
        assert r.returncode == 0, r.stderr
        return ip, port

    # ---- the pod-like client

    def start_client(self) -> None:
        self.stop_client()
        root = self.work / "pod-run"
        sa = root / SA_DIR.removeprefix("run/")
        sa.mkdir(parents=True, exist_ok=True)
        self.token = self.token or self.cluster.sa_token(NS, "app")
        (sa / "token").write_text(self.token)
        (sa / "ca.crt").write_bytes(self.cluster.ca_file.read_bytes())
        (sa / "namespace").write_text(NS)
        self.client_runs += 1
        log = self.work / "logs" / f"podclient-{self.client_runs}.log"
        script = (f"mount --bind {root} /run && exec {sys.executable} -m tests.real.podclient")
        self.client = Proc("podclient", ["sh", "-c", script], log, netns=self.edge.netns.name, cwd=HERE.parents[1],
                           env={"KUBERNETES_SERVICE_HOST": SERVICE_IP, "KUBERNETES_SERVICE_PORT": "443",
                                "PYTHONPATH": ":".join(sys.path)})

    def stop_client(self) -> None:
        if self.client is not None:
            self.client.stop()
            self.client = None

    def lines(self) -> list[dict[str, Any]]:
        assert self.client is not None
        out = []
        for line in self.client.log().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def seen(self, event: str, name: str | None = None) -> list[dict[str, Any]]:
        return [d for d in self.lines() if d["event"] == event and (name is None or d.get("name") == name)]

    def configmap(self, name: str) -> None:
        from kubernetes import client
        self.cluster.core.create_namespaced_config_map(NS, client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=name), data={"k": name}))


def _setup(cluster: Cluster, work: Path, redirect: bool) -> EdgeHost:
    c = cluster
    c.ensure_namespace(NS)
    c.service_account(NS, "app", rules=[{"apiGroups": [""], "resources": ["configmaps"],
                                         "verbs": ["get", "list", "watch"]}])
    e = EdgeHost(c, work, NODE, components=())
    e.start()  # the network namespace, the WAN relay, the tokens; no component yet
    # the README puts it on a dummy interface; this test's pod shares the namespace with edgeproxy, so the loopback
    # interface does (and needs no dummy interface driver in the kernel)
    r = e.netns.run("ip", "addr", "add", f"{IN_CLUSTER_IP}/32", "dev", "lo")
    assert r.returncode == 0, r.stderr
    # a node routes Service IPs by its default route before kube-proxy's DNAT rewrites them; this one has none
    r = e.netns.run("ip", "route", "add", SERVICE_CIDR, "via", e.netns.host_ip)
    assert r.returncode == 0, r.stderr
    assert c.pki is not None
    cert, key = work / "incluster.crt", work / "incluster.key"
    tls.issue(c.pki.ca, "edgeproxy-in-cluster", (), ["kubernetes", "kubernetes.default", "kubernetes.default.svc",
                                                     "kubernetes.default.svc.cluster.local", SERVICE_IP,
                                                     IN_CLUSTER_IP]).write(cert, key)
    # what the API server's endpoint reconciler would write: its address, as this branch reaches it
    from kubernetes import client
    discovery = client.DiscoveryV1Api(c.core.api_client)
    body = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes",
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [e.netns.host_ip], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "protocol": "TCP", "port": e.wan.port if e.wan else 0}]}
    try:
        discovery.replace_namespaced_endpoint_slice("kubernetes", "default", body)
    except client.ApiException as err:
        if err.status != 404:
            raise
        discovery.create_namespaced_endpoint_slice("default", body)
    # the branch's pool, on the Node before the kubelet registers it (an operator labels nodes as they join)
    try:
        c.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=NODE, labels={ZONE: "branch-a"})))
    except client.ApiException as err:
        if err.status != 409:
            raise
    if redirect:
        e.proxy_flags = ("--in-cluster-address", f"{IN_CLUSTER_IP}:{IN_CLUSTER_PORT}", "--in-cluster-cert-file",
                         str(cert), "--in-cluster-key-file", str(key))
    for name in COMPONENTS:
        e.start_component(name)
    return e


@pytest.fixture(scope="module")
def branch(real_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Branch]:
    work = Path(tmp_path_factory.mktemp("filters"))
    e = _setup(real_cluster, work, redirect=True)
    b = Branch(real_cluster, e, work)
    try:
        yield b
    finally:
        b.stop_client()
        e.stop()


def test_kube_proxy_is_pointed_at_edgeproxy_and_a_pod_lists_and_watches_through_it(branch: Branch) -> None:
    e = branch.edge
    assert branch.cluster.core.read_namespaced_service("kubernetes", "default").spec.cluster_ip == SERVICE_IP
    wait_for(lambda: branch.program_kubernetes_service() == (IN_CLUSTER_IP, IN_CLUSTER_PORT), 30,
             "kube-proxy's view of default/kubernetes redirected")
    branch.configmap("before")
    branch.start_client()
    procs = [branch.client, *e.procs.values()]
    wait_for(lambda: any("before" in d["names"] for d in branch.seen("list")), 60, "the pod's list", procs=procs)
    branch.configmap("online")
    wait_for(lambda: branch.seen("ADDED", "online"), 30, "the pod's watch", procs=procs)
    assert e.served("podclient", "configmaps") >= 1  # through edgeproxy (a watch is counted when it ends)
    assert not branch.seen("error")


def test_the_pod_keeps_its_list_and_watch_through_a_wan_cut_and_an_offline_restart(branch: Branch) -> None:
    e = branch.edge
    assert e.wan is not None
    listed = branch.seen("list")[-1]["names"]
    e.wan.cut()
    wait_for(lambda: not e.proxy_online(), 30, "edgeproxy offline")
    e.restart("edgeproxy")
    assert not e.proxy_online()
    branch.start_client()  # the pod restarted too, with the WAN still cut
    wait_for(lambda: branch.seen("list"), 60, "the restarted pod's list, offline", procs=[branch.client])
    assert branch.seen("list")[-1]["names"] == sorted(set(listed) | {"online"})
    # and its watch is open, answered from the cache (a bookmark at once, as the README's offline table says)
    wait_for(lambda: branch.seen("BOOKMARK"), 30, "the restarted pod's watch, offline", procs=[branch.client])
    assert not branch.seen("error")


def test_after_the_wan_returns_the_pod_sees_what_changed(branch: Branch) -> None:
    e = branch.edge
    assert e.wan is not None
    branch.configmap("during")  # made while the branch is cut off
    e.wan.restore()
    wait_for(e.proxy_online, 30, "edgeproxy online again")
    wait_for(lambda: branch.seen("ADDED", "during"), 90, "the change made during the outage", procs=[branch.client])


def test_a_service_with_endpoints_in_two_pools(branch: Branch) -> None:
    from kubernetes import client
    c = branch.cluster
    discovery = client.DiscoveryV1Api(c.core.api_client)

    def eps(*where: tuple[str, str, str]) -> list[dict[str, Any]]:
        return [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": n, "zone": z} for ip, n, z in where]

    def make(name: str, opted_in: bool, endpoints: list[dict[str, Any]]) -> None:
        labels = {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "test"}
        if opted_in:
            labels["edgeproxy.io/topology"] = "pool"  # the Service's label, as the EndpointSlice controller copies it
        discovery.create_namespaced_endpoint_slice(NS, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{name}-1", "namespace": NS, "labels": labels}, "addressType": "IPv4",
            "endpoints": endpoints, "ports": [{"name": "http", "protocol": "TCP", "port": 80}]})

    two = eps(("10.0.1.1", NODE, "branch-a"), ("10.0.1.2", "edge-x", "branch-a"), ("10.0.2.1", "edge-y", "branch-b"))
    make("shop", True, two)
    make("plain", False, two)
    make("far", True, eps(("10.0.2.5", "edge-y", "branch-b")))
    path = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"

    def seen() -> dict[str, list[str]]:
        doc = branch.as_kube_proxy(path)
        return {i["metadata"]["name"]: [a for ep in i["endpoints"] or [] for a in ep["addresses"]]
                for i in doc["items"]}

    assert seen() == {"shop-1": ["10.0.1.1", "10.0.1.2"], "plain-1": ["10.0.1.1", "10.0.1.2", "10.0.2.1"],
                      "far-1": ["10.0.2.5"]}
    # untouched objects are the API server's bytes
    direct = json.loads(c.get_raw(path))
    via = branch.as_kube_proxy(path)
    assert [i for i in via["items"] if i["metadata"]["name"] != "shop-1"] == \
        [i for i in direct["items"] if i["metadata"]["name"] != "shop-1"]
    state = json.loads(branch.edge._ops("/debug/state")[2])["filters"]
    assert state["facts"]["pool"] == "branch-a" and state["redirect_applied"] == f"{IN_CLUSTER_IP}:{IN_CLUSTER_PORT}"
    assert any(v["touched"].get("servicetopology") for v in state["views"] if v["client"].startswith("kube-proxy"))


def test_with_the_redirect_off_the_pod_goes_upstream_as_before(branch: Branch) -> None:
    e = branch.edge
    assert e.wan is not None
    e.proxy_flags = ()
    e.restart("edgeproxy")  # the operator turned it off; kube-proxy's watch resumes and is told to relist
    wait_for(e.proxy_online, 30, "edgeproxy online")
    upstream = (e.netns.host_ip, e.wan.port)  # the API server, as this branch reaches it
    wait_for(lambda: branch.program_kubernetes_service() == upstream, 30,
             "kube-proxy's view of default/kubernetes: the API server's endpoint")
    before = e.served("podclient")
    branch.start_client()
    wait_for(lambda: branch.seen("list"), 60, "the pod's list, from the API server", procs=[branch.client])
    assert e.served("podclient") == before  # nothing of it went through edgeproxy
    e.wan.cut()  # and without edgeproxy it has no API while the branch is cut off
    wait_for(lambda: branch.seen("error"), 60, "the pod losing its API", procs=[branch.client])
    e.wan.restore()
