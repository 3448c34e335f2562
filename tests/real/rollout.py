"""A rollout that makes kube-controller-manager rewrite EndpointSlices, without a scheduler or a Deployment controller.

    r = Rollout(cluster, "rollout", services=3, pods=6, nodes=["dc-1"])
    r.setup()          # Services svc-0.. (selector app=svc-i) and generation 0 of their pods; waits for the slices
    r.step()           # the next generation: per pod, a new one created and the old one deleted (maxSurge 1)
    r.converged()      # every Service's EndpointSlices list exactly the current generation's pods, all ready
    r.teardown()

What it exercises: the real EndpointSlice controller (`cluster.start_controller_manager("--controllers=endpointslice")`)
reacting to pods a hollow kubelet runs: a new pod's endpoint appears once the kubelet reports its IP and readiness, an
old pod's turns terminating and then goes, each a write of the Service's EndpointSlice (a few per replaced pod),
which every kube-proxy of every node receives. Pods are bound by spec.nodeName (there is no scheduler) to `nodes`,
round robin: to keep the branch's own kubelets out of the measurement put them on a node outside the branch (its pod
traffic crosses its own WAN, not the branch's); to look like a DaemonSet, on the branch's nodes.
Why pods and not EndpointSlices written by the test: the controller decides how often and how much it rewrites
(batching, terminating endpoints, one slice per Service up to 100 endpoints), as in a real rollout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .cluster import Cluster
from .procs import wait_for

SERVICE_LABEL = "kubernetes.io/service-name"


class Rollout:
    def __init__(self, cluster: Cluster, namespace: str = "rollout", *, services: int = 3, pods: int = 6,
                 nodes: list[str]) -> None:
        if not nodes:
            raise ValueError("a rollout needs at least one node to bind its pods to")
        self.cluster = cluster
        self.ns = namespace
        self.services = [f"svc-{i}" for i in range(services)]
        self.pods = pods
        self.nodes = nodes
        self.generation = 0
        self.created = self.deleted = 0

    def _pod_name(self, svc: str, gen: int, j: int) -> str:
        return f"{svc}-g{gen}-{j}"

    def _create_pod(self, svc: str, gen: int, j: int) -> None:
        from kubernetes import client
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name=self._pod_name(svc, gen, j), labels={"app": svc, "gen": str(gen)}),
            spec=client.V1PodSpec(node_name=self.nodes[j % len(self.nodes)], automount_service_account_token=False,
                                  termination_grace_period_seconds=0,
                                  containers=[client.V1Container(
                                      name="c", image="registry.k8s.io/pause:3.10",
                                      ports=[client.V1ContainerPort(container_port=8080, name="http")])]))
        self.cluster.core.create_namespaced_pod(self.ns, pod)
        self.created += 1

    def _delete_pod(self, svc: str, gen: int, j: int) -> None:
        from kubernetes.client.rest import ApiException
        try:
            self.cluster.core.delete_namespaced_pod(self._pod_name(svc, gen, j), self.ns)
            self.deleted += 1
        except ApiException as e:
            if e.status != 404:
                raise

    def setup(self, timeout: float = 90) -> None:
        self.cluster.ensure_namespace(self.ns)
        for svc in self.services:
            self.cluster.create_service(self.ns, svc, port=8080, selector={"app": svc})
            for j in range(self.pods):
                self._create_pod(svc, 0, j)
        wait_for(self.converged, timeout, f"EndpointSlices of {len(self.services)} Services with their pods ready")

    def step(self, midway: Callable[[], None] | None = None) -> None:
        """The next generation: for each pod index, the new pod created, then the old one deleted (a Deployment's
        rolling update with maxSurge 1, not waiting for readiness); `midway` is called halfway through."""
        old, new = self.generation, self.generation + 1
        total = len(self.services) * self.pods
        done = 0
        for j in range(self.pods):
            for svc in self.services:
                self._create_pod(svc, new, j)
                self._delete_pod(svc, old, j)
                done += 1
                if midway is not None and done == total // 2:
                    midway()
        self.generation = new

    def run(self, generations: int, timeout: float = 120, midway: Callable[[], None] | None = None) -> None:
        """`generations` steps, then waits until the EndpointSlices show the last one only, all ready."""
        for g in range(generations):
            self.step(midway if g == generations - 1 else None)
        wait_for(self.converged, timeout, f"EndpointSlices showing generation {self.generation} only")

    def slices(self) -> dict[str, list[dict[str, Any]]]:
        """{service: [EndpointSlice as a dict]} from the API server."""
        import json
        from urllib.parse import quote
        doc = json.loads(self.cluster.get_raw(
            f"/apis/discovery.k8s.io/v1/namespaces/{self.ns}/endpointslices?labelSelector={quote(SERVICE_LABEL)}"))
        out: dict[str, list[dict[str, Any]]] = {s: [] for s in self.services}
        for s in doc["items"]:
            svc = s["metadata"].get("labels", {}).get(SERVICE_LABEL, "")
            if svc in out:
                out[svc].append(s)
        return out

    def converged(self) -> bool:
        """Every Service's endpoints are exactly the current generation's pods, all ready (none terminating)."""
        for svc, slices in self.slices().items():
            want = {self._pod_name(svc, self.generation, j) for j in range(self.pods)}
            have = {}
            for s in slices:
                for e in s.get("endpoints") or []:
                    have[(e.get("targetRef") or {}).get("name", "")] = (e.get("conditions") or {}).get("ready")
            if set(have) != want or not all(have.values()):
                return False
        return True

    def teardown(self) -> None:
        """The Services and pods deleted (the namespace stays: no namespace controller runs to empty it)."""
        from kubernetes.client.rest import ApiException
        core = self.cluster.core
        for svc in self.services:
            core.delete_collection_namespaced_pod(self.ns, label_selector=f"app={svc}", grace_period_seconds=0)
            try:
                core.delete_namespaced_service(svc, self.ns)
            except ApiException as e:
                if e.status != 404:
                    raise
