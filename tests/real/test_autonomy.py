"""The autonomy companion against a real kube-controller-manager: no pod lost to an outage longer than the default
toleration, on the nodes that opted in, and stock behaviour everywhere else.

One cluster of its own (module scope): kube-apiserver with default not-ready/unreachable tolerations of 10 s,
kube-controller-manager with the node-lifecycle and taint-eviction controllers, node-monitor grace 20 s. Four edge
hosts, every component through edgeproxy: `auto` opted in for 10 minutes (kubelet, kube-proxy and CoreDNS), `short`
opted in for 20 s, `stock` not opted in, and `home`, which stays connected (with no Ready node at all the lifecycle
controller is in full disruption and evicts nothing). The companion runs as its own process with the ServiceAccount
and RBAC of deploy/companion/companion.yaml, and the manifest's webhook pointed at it by URL.

    online: grants → one outage of auto, short and stock (kubelet restarted offline on auto) → reconnection
    → companion down: pod creation still works (fail open) → companion back: the pod created meanwhile is granted

The figures of the run are printed (pytest -s) and quoted in the README.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .cluster import Cluster
from .edge import EdgeHost
from .procs import Proc, free_port, wait_for

GRACE, TOLERATION = 20, 10
SHORT = 20  # the `short` node's autonomy, in seconds: longer than the default toleration, shorter than the outage
PODS = 4
MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "companion" / "companion.yaml"
NS = "edgeproxy-system"
UNREACHABLE = "node.kubernetes.io/unreachable"
CM_FLAGS = (
    "--controllers=serviceaccount-controller,serviceaccount-token-controller,node-lifecycle-controller,"
    "taint-eviction-controller,endpointslice-controller",
    f"--node-monitor-grace-period={GRACE}s", "--node-monitor-period=1s",
    # Three of four nodes go away at once. With more than two not Ready and >= 55% of a zone, the lifecycle
    # controller calls the zone partially disrupted and, in a cluster under 50 nodes, stops tainting: keep the zone
    # normal, and taint them together rather than one per 10 s (--node-eviction-rate 0.1).
    "--unhealthy-zone-threshold=0.99", "--node-eviction-rate=100",
)
APISERVER_FLAGS = (f"--default-not-ready-toleration-seconds={TOLERATION}",
                   f"--default-unreachable-toleration-seconds={TOLERATION}")
FIGURES: dict[str, float] = {}


def manifest(kind: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d["kind"] == kind]


class Companion:
    """`edgeproxy companion` as its own process, with the manifest's ServiceAccount token."""

    def __init__(self, cluster: Cluster, workdir: Path) -> None:
        from kubernetes import utils
        self.cluster, self.dir = cluster, workdir
        self.port = free_port()
        for kind in ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            for doc in manifest(kind):
                utils.create_from_dict(cluster.api, doc)
        [hook_config] = manifest("MutatingWebhookConfiguration")
        hook_config["webhooks"][0]["clientConfig"] = {"url": f"https://127.0.0.1:{self.port}/mutate"}
        utils.create_from_dict(cluster.api, hook_config)
        token = cluster.sa_token(NS, "edgeproxy-companion")
        self.kubeconfig = cluster.kubeconfig(workdir / "companion.kubeconfig", token=token)
        self.proc: Proc | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "edgeproxy", "companion", "--kubeconfig", self.kubeconfig, "--namespace", NS,
                "--listen", f"127.0.0.1:{self.port}", "--tls-sans", "127.0.0.1", "--resync", "5",
                "--retry-period", "1", "--lease-duration", "5", "--renew-deadline", "4"]
        self.proc = Proc("companion", argv, self.dir / "logs" / "companion.log",
                         env={"PYTHONPATH": os.pathsep.join(sys.path)})
        wait_for(self.healthy, 60, "companion /healthz", procs=[self.proc])

    def healthy(self) -> bool:
        secret = self.cluster.core.read_namespaced_secret("edgeproxy-companion-tls", NS)
        ctx = ssl.create_default_context(cadata=base64.b64decode(secret.data["ca.crt"]).decode())
        with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/healthz", context=ctx, timeout=3) as r:
            return r.status == 200

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def kubelet_containers(edge: EdgeHost) -> dict[str, list[str]]:
    """The container IDs the edge's kubelet runs (its read-only /pods), by pod name."""
    items = json.loads(edge._kubelet_get("/pods") or b"{}").get("items") or []
    return {p["metadata"]["name"]: [c.get("containerID", "") for c in p.get("status", {}).get("containerStatuses")
                                    or ()] for p in items if p["metadata"]["namespace"] == "auto"}


class World:
    def __init__(self, cluster: Cluster, edges: dict[str, EdgeHost], companion: Companion) -> None:
        self.cluster, self.edges, self.companion = cluster, edges, companion
        self.uids: dict[str, dict[str, str]] = {}
        self.containers: dict[str, list[str]] = {}

    def pods(self, role: str) -> dict[str, Any]:
        """The API server's pods of a role's namespace, by name."""
        return {p.metadata.name: p for p in self.cluster.core.list_namespaced_pod(role).items}

    def toleration(self, pod: Any) -> int | str | None:
        """The unreachable toleration the taint-eviction controller uses: the first that matches."""
        for t in pod.spec.tolerations or ():
            if (t.key in (UNREACHABLE, None, "")) and t.effect in ("NoExecute", None, "") and \
                    (t.operator == "Exists" or not t.value):
                return t.toleration_seconds
        return "none"

    def node_ready(self, role: str) -> str:
        node = self.cluster.core.read_node(self.edges[role].node)
        return {c.type: c.status for c in node.status.conditions}.get("Ready", "")

    def tainted(self, role: str) -> bool:
        node = self.cluster.core.read_node(self.edges[role].node)
        return any(t.key == UNREACHABLE and t.effect == "NoExecute" for t in node.spec.taints or ())

    def endpoints_ready(self, role: str) -> list[bool]:
        from kubernetes import client
        slices = client.DiscoveryV1Api(self.cluster.api).list_namespaced_endpoint_slice(
            role, label_selector="kubernetes.io/service-name=web").items
        return [bool(ep.conditions.ready) for s in slices for ep in s.endpoints or ()]


@pytest.fixture(scope="module")
def world(real_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = Path(tmp_path_factory.mktemp("autonomy"))
    with Cluster(work / "cluster", real_bin, controller_manager=True, controller_manager_flags=CM_FLAGS,
                 apiserver_flags=APISERVER_FLAGS) as cluster:
        companion = Companion(cluster, work)
        companion.start()
        edges: dict[str, EdgeHost] = {}
        try:
            for role, components in (("home", ("edgeproxy", "kubelet")), ("stock", ("edgeproxy", "kubelet")),
                                     ("short", ("edgeproxy", "kubelet")), ("auto", None)):
                kw: dict[str, Any] = {"components": components} if components else {}
                edges[role] = EdgeHost(cluster, work / role, f"edge-{role}", **kw)
                edges[role].start()
            w = World(cluster, edges, companion)
            for role, e in edges.items():
                wait_for(lambda r=role: w.node_ready(r) == "True", 90, f"edge-{role} registered and Ready",
                         procs=list(e.procs.values()))
            yield w
        finally:
            companion.stop()
            for e in edges.values():
                e.stop()


def test_grants_online(world: World) -> None:
    c = world.cluster
    c.core.patch_node("edge-auto", {"metadata": {"annotations": {"edgeproxy.io/autonomy-duration": "10m"}}})
    c.core.patch_node("edge-short", {"metadata": {"labels": {"edgeproxy.io/autonomy-duration": f"{SHORT}s"}}})
    for role in ("auto", "short"):
        # the edge's edgeproxy reports its cache healthy on its own Node, as the node (NodeRestriction allows it)
        wait_for(lambda r=role: '"healthy":true' in (c.core.read_node(f"edge-{r}").metadata.annotations or {})
                 .get("edgeproxy.io/cache-health", ""), 60, f"edge-{role} reporting a healthy cache",
                 procs=list(world.edges[role].procs.values()))
    for role in ("auto", "short", "stock"):
        c.create_pods(f"edge-{role}", PODS, namespace=role, prefix="web")
    c.create_service("auto", "web", selector={"app": "web"})
    want = {"auto": 600, "short": SHORT, "stock": TOLERATION}
    for role, seconds in want.items():
        # created bound (spec.nodeName): the webhook answered at create, or the controller patched them since
        wait_for(lambda r=role, s=seconds: len(world.pods(r)) == PODS and
                 all(world.toleration(p) == s for p in world.pods(r).values()), 60,
                 f"{role} pods tolerating unreachable for {seconds} s", procs=[world.companion.proc])
        wait_for(lambda r=role: all(p.status.phase == "Running" for p in world.pods(r).values()), 90,
                 f"{role} pods Running", procs=list(world.edges[role].procs.values()))
        world.uids[role] = {n: p.metadata.uid for n, p in world.pods(role).items()}
    # the webhook runs after DefaultTolerationSeconds: a pod created bound comes back from the create already granted
    from kubernetes import client
    made = c.core.create_namespaced_pod("auto", client.V1Pod(
        metadata=client.V1ObjectMeta(name="bound-at-create", labels={"app": "web"}),
        spec=client.V1PodSpec(node_name="edge-auto", automount_service_account_token=False,
                              termination_grace_period_seconds=0,
                              containers=[client.V1Container(name="c", image="registry.k8s.io/pause:3.10")])))
    assert world.toleration(made) == 600
    assert made.metadata.annotations["edgeproxy.io/autonomy-granted"] == "600"
    wait_for(lambda: world.pods("auto")["bound-at-create"].status.phase == "Running", 90, "bound-at-create Running")
    world.uids["auto"]["bound-at-create"] = made.metadata.uid
    assert all(world.endpoints_ready("auto")) and len(world.endpoints_ready("auto")) == PODS + 1


def test_one_outage(world: World) -> None:
    auto, stock, short = (world.edges[r] for r in ("auto", "stock", "short"))
    t0 = time.monotonic()
    for e in (auto, stock, short):
        assert e.wan is not None
        e.wan.cut()
    wait_for(lambda: not auto.proxy_online(), 30, "edgeproxy on edge-auto offline")
    auto.restart("kubelet")  # a kubelet restart while offline: it gets its pods from edgeproxy's cache
    wait_for(lambda: auto.running_pods() == PODS + 1, 60, "auto's pods running again offline",
             procs=list(auto.procs.values()))
    wait_for(lambda: all(all(ids) for ids in kubelet_containers(auto).values()), 30, "auto's containers started")
    world.containers = kubelet_containers(auto)
    wait_for(lambda: world.node_ready("auto") == "Unknown", GRACE + 30, "edge-auto Unknown")
    FIGURES["node Unknown after"] = time.monotonic() - t0
    wait_for(lambda: world.tainted("auto") and world.tainted("stock") and world.tainted("short"), 30,
             "the three nodes tainted unreachable:NoExecute")
    FIGURES["nodes tainted after"] = time.monotonic() - t0

    def evicted(role: str) -> bool:
        pods = world.pods(role)
        return all(n not in pods or pods[n].metadata.deletion_timestamp for n in world.uids[role])

    wait_for(lambda: evicted("stock"), TOLERATION + 30, "stock pods evicted after the default toleration")
    FIGURES["stock pods evicted after"] = time.monotonic() - t0
    wait_for(lambda: evicted("short"), SHORT + 30, "short pods evicted after their autonomy")
    FIGURES["short pods evicted after"] = time.monotonic() - t0
    # the cloud marks the away node's endpoints not ready; the edge's CoreDNS still answers from its cache
    wait_for(lambda: not any(world.endpoints_ready("auto")), 30, "edge-auto's endpoints not ready")
    ip = world.cluster.core.read_namespaced_service("web", "auto").spec.cluster_ip
    wait_for(lambda: auto.dig("web.auto.svc.cluster.local") == [ip], 30, "CoreDNS on edge-auto answering offline")
    # auto's pods stay, same UIDs, none being deleted, through 3x the default toleration past the grace period
    until = t0 + GRACE + 3 * TOLERATION
    while True:
        pods = world.pods("auto")
        assert {n: p.metadata.uid for n, p in pods.items()} == world.uids["auto"]
        assert not any(p.metadata.deletion_timestamp for p in pods.values())
        if time.monotonic() >= until:
            break
        time.sleep(0.5)  # polling period of the check above
    FIGURES["outage"] = time.monotonic() - t0
    for e in (auto, stock, short):
        assert e.wan is not None
        e.wan.restore()
    t1 = time.monotonic()
    wait_for(lambda: world.node_ready("auto") == "True", 60, "edge-auto Ready again")
    wait_for(lambda: all(world.endpoints_ready("auto")) and len(world.endpoints_ready("auto")) == PODS + 1, 60,
             "edge-auto's endpoints ready again")
    FIGURES["auto Ready, endpoints ready after reconnection"] = time.monotonic() - t1


def test_after_reconnection(world: World) -> None:
    pods = world.pods("auto")
    assert {n: p.metadata.uid for n, p in pods.items()} == world.uids["auto"]  # none deleted, same UIDs
    wait_for(lambda: all(p.status.phase == "Running" for p in world.pods("auto").values()), 60, "auto pods Running")
    # No container restarted for the outage or the reconnection: the API server reports the very containers the
    # kubelet ran offline. (The hollow kubelet's fake runtime lives in its process: its own restart offline started
    # the containers again, and after reconnection kubelet counts that as one restart, as after a reboot; kubelet on
    # containerd leaves them running across its restart.)
    wait_for(lambda: {n: [s.container_id for s in p.status.container_statuses or ()]
                      for n, p in world.pods("auto").items()} == world.containers, 60,
             "the API server reporting the containers the kubelet ran offline")
    counts = {n: [s.restart_count for s in p.status.container_statuses] for n, p in world.pods("auto").items()}
    assert set(map(tuple, counts.values())) == {(1,)}, counts
    # stock and short: evicted as Kubernetes intends; their kubelets kill them once they hear of it
    for role in ("stock", "short"):
        wait_for(lambda r=role: world.edges[r].running_pods() == 0, 60, f"{role} pods stopped on the edge")
        wait_for(lambda r=role: not (set(world.pods(r)) & set(world.uids[r])), 60, f"{role} pods gone")


def test_companion_down_fails_open(world: World) -> None:
    world.companion.stop()
    world.cluster.create_pods("edge-auto", 1, namespace="auto", prefix="meanwhile")
    # created though the webhook cannot be reached; stock tolerations meanwhile (what is lost while it is down)
    assert world.toleration(world.pods("auto")["meanwhile-0"]) == TOLERATION
    t0 = time.monotonic()
    world.companion.start()
    wait_for(lambda: world.toleration(world.pods("auto")["meanwhile-0"]) == 600, 60,
             "the pod created meanwhile granted once the companion is back", procs=[world.companion.proc])
    FIGURES["companion restarted: pod granted after"] = time.monotonic() - t0
    print("\nautonomy figures (s):", {k: round(v, 1) for k, v in FIGURES.items()})
