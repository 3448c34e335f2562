"""What the simulator starts with: the fixture cluster, and synthetic objects cloned from it by the thousand.

The fixture cluster is the one tests/fixtures was recorded from (the files the simulator reads are copied into
sim/recorded/, package data): the recorded objects as recorded (same names, uids, resourceVersions, bytes),
completed where the recordings only show part of it (edge-2's node and pods from the EndpointSlices, the queue
Service, the other ConfigMaps, Namespaces, Leases), list resourceVersion 304.
`clone_*` make N more objects from the recorded ones, varying name/uid/labels/nodeName/IPs; they share the
template's unchanged sub-objects (the store never changes a stored dict in place). Neighbours: sim.store.
"""

from __future__ import annotations

import json
import pathlib
import uuid
from collections.abc import Iterator
from typing import Any

from edgeproxy.sim import resources, store
from edgeproxy.sim.store import Entry, copy_json

# Copies of the tests/fixtures recordings the simulator needs, shipped as package data (an installed wheel has no
# tests/): edgeproxy/sim/recorded/README.md.
FIXTURES = pathlib.Path(__file__).resolve().parent / "recorded"
FIXTURE_RV = 304
_NS = uuid.UUID("6f0e3c8a-3d1e-4c55-9a57-0c9d8f1e2a10")


def fixture_dir() -> pathlib.Path:
    return FIXTURES


def _read(name: str) -> Any:
    return json.loads((FIXTURES / name).read_bytes())


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(_NS, "/".join(parts)))


def _items(name: str) -> list[dict[str, Any]]:
    return _read(name)["items"]


def _untyped(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


class _Rvs:
    """Unused resourceVersions below the fixture's list RV, handed out in order for synthesized objects."""

    def __init__(self, used: set[int]) -> None:
        self._free = (n for n in range(150, FIXTURE_RV) if n not in used)

    def __call__(self) -> str:
        return str(next(self._free))


def fixture_cluster() -> dict[str, list[dict[str, Any]]]:
    """resource -> objects (list-item form) of the recorded cluster."""
    pods = _items("pods-edge1.list.json.body")
    nodes = _items("nodes-edge1.list.json.body")
    services = _items("services.proxysel.list.json.body")
    slices = _items("endpointslices.proxysel.list.json.body")
    configmaps = [_untyped(_read("configmap-web-config.get.json.body"))]
    secrets = [_untyped(_read("secret-db-credentials.get.json.body"))]
    used = {
        int(o["metadata"]["resourceVersion"])
        for group in (pods, nodes, services, slices, configmaps, secrets)
        for o in group
    }
    rv = _Rvs(used)
    out: dict[str, list[dict[str, Any]]] = {r.key: [] for r in resources.RESOURCES}

    # nodes: edge-2 mirrors edge-1
    edge1 = nodes[0]
    edge2 = _node_like(edge1, "edge-2", 2, rv())
    out["nodes"] = [edge1, edge2]

    # pods: edge-1 as recorded; edge-2's from the EndpointSlices' targetRefs, the rest by name
    by_app = {}
    for p in pods:
        by_app.setdefault(p["metadata"]["labels"]["app"], p)
    edge2_pods = []
    for s in slices:
        for ep in s["endpoints"]:
            if ep.get("nodeName") != "edge-2":
                continue
            ref = ep["targetRef"]
            template = by_app[s["metadata"]["labels"]["app"]]
            edge2_pods.append(
                _pod_like(template, ref["name"], ref["uid"], "edge-2", "192.0.2.12", ep["addresses"][0], rv())
            )
    db = next(p for p in pods if p["metadata"]["name"] == "db-2")
    edge2_pods.append(_pod_like(db, "db-1", _uid("pod", "db-1"), "edge-2", "192.0.2.12", "10.244.2.19", rv()))
    running_queue = next(p for p in pods if p["metadata"]["name"] == "queue-c03a76e1f7-4f81e")
    pending_queue = next(p for p in pods if p["metadata"]["name"] == "queue-c03a76e1f7-743a6")
    for i, suffix in enumerate(("2b6d0", "8e1f4", "c7a93")):
        name = f"queue-c03a76e1f7-{suffix}"
        edge2_pods.append(
            _pod_like(running_queue, name, _uid("pod", name), "edge-2", "192.0.2.12", f"10.244.2.{24 + i}", rv())
        )
    name = "queue-c03a76e1f7-f05b2"
    edge2_pods.append(_pod_like(pending_queue, name, _uid("pod", name), "edge-2", "", "", rv()))
    out["pods"] = pods + edge2_pods

    # services: the recorded five and queue (served by another proxy: kube-proxy's selector leaves it out)
    cache_svc = next(s for s in services if s["metadata"]["name"] == "cache")
    queue_svc = _clone_named(cache_svc, "queue", rv())
    queue_svc["metadata"]["labels"] = {"app": "queue", "service.kubernetes.io/service-proxy-name": "edge-alt-proxy"}
    queue_svc["spec"] = dict(
        cache_svc["spec"],
        selector={"app": "queue"},
        clusterIP="10.101.7.42",
        clusterIPs=["10.101.7.42"],
        ports=[{"name": "main", "protocol": "TCP", "port": 5672, "targetPort": 5672}],
    )
    out["services"] = [*services, queue_svc]

    # endpointslices: api/cache/web as recorded; db (headless) and queue made from the pods
    all_pods = out["pods"]
    db_svc = next(s for s in services if s["metadata"]["name"] == "db")
    extra_slices = [
        _slice_for(slices[0], db_svc, "db-4c2e9", all_pods, 5432, rv(), {"service.kubernetes.io/headless": ""}),
        _slice_for(
            slices[0],
            queue_svc,
            "queue-91d3a",
            all_pods,
            5672,
            rv(),
            {"service.kubernetes.io/service-proxy-name": "edge-alt-proxy"},
        ),
    ]
    out["endpointslices"] = slices + extra_slices

    # configmaps and secrets the pods reference (recorded: web-config, db-credentials)
    template_cm = configmaps[0]
    for name in (
        "api-config",
        "cache-config",
        "db-config",
        "edge-site-info",
        "feature-flags",
        "kube-root-ca.crt",
        "nginx-conf",
        "queue-config",
        "shop-banner",
    ):
        cm = _clone_named(template_cm, name, rv())
        cm["data"] = (
            {"SITE": "edge-site-a"} if name != "kube-root-ca.crt" else {"ca.crt": "-----BEGIN CERTIFICATE-----"}
        )
        configmaps.append(cm)
    out["configmaps"] = sorted(configmaps, key=lambda o: o["metadata"]["name"])
    template_secret = secrets[0]
    registry = _clone_named(template_secret, "registry-pull", rv())
    registry["type"] = "kubernetes.io/dockerconfigjson"
    registry["data"] = {".dockerconfigjson": "eyJhdXRocyI6e319"}
    tls = _clone_named(template_secret, "web-tls", rv())
    tls["type"] = "kubernetes.io/tls"
    tls["data"] = {"tls.crt": "LS0tLS1CRUdJTg==", "tls.key": "LS0tLS1CRUdJTg=="}
    out["secrets"] = sorted([*secrets, registry, tls], key=lambda o: o["metadata"]["name"])

    created = edge1["metadata"]["creationTimestamp"]
    namespaces = ("default", "edge", "kube-node-lease", "kube-public", "kube-system")
    out["serviceaccounts"] = [
        {
            "metadata": {
                "name": "default",
                "namespace": n,
                "uid": _uid("sa", n, "default"),
                "resourceVersion": rv(),
                "creationTimestamp": created,
            }
        }
        for n in namespaces
    ]
    out["csinodes"] = [
        {
            "metadata": {
                "name": n["metadata"]["name"],
                "uid": _uid("csinode", n["metadata"]["name"]),
                "resourceVersion": rv(),
                "creationTimestamp": created,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": n["metadata"]["name"], "uid": n["metadata"]["uid"]}
                ],
            },
            "spec": {"drivers": None},
        }
        for n in out["nodes"]
    ]
    out["namespaces"] = [
        {
            "metadata": {
                "name": n,
                "uid": _uid("ns", n),
                "resourceVersion": rv(),
                "creationTimestamp": created,
                "labels": {"kubernetes.io/metadata.name": n},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        for n in namespaces
    ]
    out["leases"] = [
        {
            "metadata": {
                "name": n["metadata"]["name"],
                "namespace": "kube-node-lease",
                "uid": _uid("lease", n["metadata"]["name"]),
                "resourceVersion": rv(),
                "creationTimestamp": created,
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Node", "name": n["metadata"]["name"], "uid": n["metadata"]["uid"]}
                ],
            },
            "spec": {
                "holderIdentity": n["metadata"]["name"],
                "leaseDurationSeconds": 40,
                "renewTime": created.replace("Z", ".000000Z"),
            },
        }
        for n in out["nodes"]
    ]
    return out


def _clone_named(template: dict[str, Any], name: str, rv: str) -> dict[str, Any]:
    obj = copy_json(template)
    md = obj["metadata"]
    md["name"] = name
    md["uid"] = _uid(md.get("namespace", ""), name, template["metadata"]["uid"])
    md["resourceVersion"] = rv
    return obj


def _node_like(template: dict[str, Any], name: str, index: int, rv: str) -> dict[str, Any]:
    node = copy_json(template)
    md = node["metadata"]
    md.update(name=name, uid=_uid("node", name), resourceVersion=rv)
    md["labels"] = dict(md["labels"], **{"kubernetes.io/hostname": name})
    cidr = f"10.244.{index}.0/24"
    node["spec"].update(podCIDR=cidr, podCIDRs=[cidr])
    ip = f"192.0.{2 + index // 250}.{10 + index % 250}"
    node["status"]["addresses"] = [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]
    info = dict(node["status"]["nodeInfo"])
    info.update(
        machineID=uuid.uuid5(_NS, "machine/" + name).hex,
        systemUUID=uuid.uuid5(_NS, "sys/" + name).hex,
        bootID=uuid.uuid5(_NS, "boot/" + name).hex,
    )
    node["status"]["nodeInfo"] = info
    return node


def _pod_like(
    template: dict[str, Any], name: str, uid: str, node: str, host_ip: str, pod_ip: str, rv: str
) -> dict[str, Any]:
    """A pod made from `template`: new name/uid/rv/node/IPs; unchanged sub-objects are shared, not copied."""
    pod = dict(template)
    md = dict(template["metadata"])
    md["name"] = name
    md["uid"] = uid
    md["resourceVersion"] = rv
    pod["metadata"] = md
    pod["spec"] = dict(template["spec"], nodeName=node)
    status = dict(template["status"])
    if "hostIP" in status and host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    if "podIP" in status and pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    pod["status"] = status
    return pod


def _slice_for(
    template: dict[str, Any],
    svc: dict[str, Any],
    name: str,
    pods: list[dict[str, Any]],
    port: int,
    rv: str,
    extra_labels: dict[str, str],
) -> dict[str, Any]:
    app = svc["metadata"]["name"]
    sl = copy_json(template)
    md = sl["metadata"]
    md.update(name=name, uid=_uid("slice", name), resourceVersion=rv)
    md["labels"] = {
        "app": app,
        **extra_labels,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        "kubernetes.io/service-name": app,
    }
    md["labels"] = dict(sorted(md["labels"].items()))
    md["ownerReferences"] = [dict(md["ownerReferences"][0], name=app, uid=svc["metadata"]["uid"])]
    sl["endpoints"] = [
        {
            "addresses": [p["status"]["podIP"]],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": p["spec"]["nodeName"],
            "targetRef": {
                "kind": "Pod",
                "namespace": "edge",
                "name": p["metadata"]["name"],
                "uid": p["metadata"]["uid"],
            },
            "zone": "edge-site-a",
        }
        for p in pods
        if p["metadata"]["labels"].get("app") == app and p["status"].get("podIP")
    ]
    sl["ports"] = [{"name": "main", "protocol": "TCP", "port": port}]
    return sl


# --- synthetic load -----------------------------------------------------------------------------------------


def clone_nodes(template: dict[str, Any], n: int, start_rv: int, prefix: str = "node") -> Iterator[dict[str, Any]]:
    for i in range(n):
        yield _node_like(template, f"{prefix}-{i:05d}", 3 + i, str(start_rv + i))


def clone_pods(
    template: dict[str, Any], n: int, nodes: list[str], namespace: str, start_rv: int, prefix: str = "load"
) -> Iterator[dict[str, Any]]:
    base_labels = template["metadata"].get("labels", {})
    for i in range(n):
        name = f"{prefix}-{i:05d}"
        node = nodes[i % len(nodes)]
        node_index = i % len(nodes)
        pod = _pod_like(
            template,
            name,
            _uid("pod", namespace, name),
            node,
            f"192.0.{2 + (node_index + 1) // 250}.{10 + (node_index + 1) % 250}",
            f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}",
            str(start_rv + i),
        )
        pod["metadata"]["namespace"] = namespace
        pod["metadata"]["labels"] = {**base_labels, "app": f"{prefix}-{i % 50}", "shard": str(i % 10)}
        yield pod


def clone_services(
    template: dict[str, Any], n: int, namespace: str, start_rv: int, prefix: str = "load"
) -> Iterator[dict[str, Any]]:
    for i in range(n):
        name = f"{prefix}-{i:05d}"
        svc = dict(template)
        md = dict(
            template["metadata"],
            name=name,
            namespace=namespace,
            uid=_uid("svc", namespace, name),
            resourceVersion=str(start_rv + i),
            labels={"app": f"{prefix}-{i % 50}"},
        )
        svc["metadata"] = md
        ip = f"10.{200 + i // 65536}.{(i // 256) % 256}.{i % 256}"
        svc["spec"] = dict(template["spec"], clusterIP=ip, clusterIPs=[ip], selector={"app": f"{prefix}-{i % 50}"})
        yield svc


def clone_endpointslices(
    template: dict[str, Any], n: int, namespace: str, start_rv: int, prefix: str = "load"
) -> Iterator[dict[str, Any]]:
    for i in range(n):
        name = f"{prefix}-{i:05d}-x1"
        sl = dict(template)
        svc = f"{prefix}-{i:05d}"
        sl["metadata"] = dict(
            template["metadata"],
            name=name,
            namespace=namespace,
            uid=_uid("slice", namespace, name),
            resourceVersion=str(start_rv + i),
            labels={
                "app": f"{prefix}-{i % 50}",
                "kubernetes.io/service-name": svc,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        )
        yield sl


def load(st: store.Store, objects: dict[str, list[dict[str, Any]]]) -> None:
    for res_name, objs in objects.items():
        res = resources.BY_NAME[res_name]
        st.load(res_name, (Entry(res.kind, o, int(o["metadata"]["resourceVersion"]), res.api_version) for o in objs))
