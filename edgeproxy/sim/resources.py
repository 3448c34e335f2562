"""The resources the simulator serves, their field selectors, and the discovery documents derived from them.

Pure tables and functions; the request handlers (api) and the store use them. Neighbours: kube.schema (the kinds'
protobuf tables), sim.store.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True, slots=True)
class Resource:
    group: str
    version: str
    name: str  # plural, as in the URL
    kind: str
    namespaced: bool
    singular: str
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    graceful: bool = False  # DELETE sets deletionTimestamp first (pods)
    store_key: str = ""  # where the store keeps it, when two groups share the plural name

    @property
    def key(self) -> str:
        """The name the store and the Simulator's Python API use: the plural, or plural.group for the second
        group with that plural (events.events.k8s.io)."""
        return self.store_key or self.name

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return self.kind + "List"


RESOURCES: tuple[Resource, ...] = (
    Resource("", "v1", "pods", "Pod", True, "pod", ("po",), ("status",), graceful=True),
    Resource("", "v1", "nodes", "Node", False, "node", ("no",), ("status",)),
    Resource("", "v1", "services", "Service", True, "service", ("svc",), ("status",)),
    Resource("", "v1", "configmaps", "ConfigMap", True, "configmap", ("cm",)),
    Resource("", "v1", "secrets", "Secret", True, "secret"),
    Resource("", "v1", "namespaces", "Namespace", False, "namespace", ("ns",), ("status",)),
    Resource("", "v1", "events", "Event", True, "event", ("ev",)),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice", True, "endpointslice"),
    Resource("coordination.k8s.io", "v1", "leases", "Lease", True, "lease"),
    Resource("node.k8s.io", "v1", "runtimeclasses", "RuntimeClass", False, "runtimeclass"),
    Resource("storage.k8s.io", "v1", "csidrivers", "CSIDriver", False, "csidriver"),
    Resource("storage.k8s.io", "v1", "csinodes", "CSINode", False, "csinode"),
    Resource("", "v1", "serviceaccounts", "ServiceAccount", True, "serviceaccount", ("sa",), ("token",)),
    Resource("events.k8s.io", "v1", "events", "Event", True, "event", ("ev",), store_key="events.events.k8s.io"),
)

BY_PATH: dict[tuple[str, str, str], Resource] = {(r.group, r.version, r.name): r for r in RESOURCES}
BY_NAME: dict[str, Resource] = {r.key: r for r in RESOURCES}


def _get(obj: Mapping[str, Any], *path: str) -> Any:
    cur: Any = obj
    for p in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(p)
    return cur


def _s(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _pod_ip(obj: Mapping[str, Any]) -> str:
    ips = _get(obj, "status", "podIPs") or []
    return _s(ips[0].get("ip")) if ips else _s(_get(obj, "status", "podIP"))


def _involved(field: str) -> Callable[[Mapping[str, Any]], str]:
    return lambda o: _s(_get(o, "involvedObject", field))


# resource -> field -> getter (kubernetes pkg/apis/core/v1/conversion.go, registry strategies' ToSelectableFields)
_FIELDS: dict[str, dict[str, Callable[[Mapping[str, Any]], str]]] = {
    "pods": {
        "spec.nodeName": lambda o: _s(_get(o, "spec", "nodeName")),
        "spec.host": lambda o: _s(_get(o, "spec", "nodeName")),
        "spec.restartPolicy": lambda o: _s(_get(o, "spec", "restartPolicy")),
        "spec.schedulerName": lambda o: _s(_get(o, "spec", "schedulerName")),
        "spec.serviceAccountName": lambda o: _s(_get(o, "spec", "serviceAccountName")),
        "spec.hostNetwork": lambda o: _s(bool(_get(o, "spec", "hostNetwork"))),
        "status.phase": lambda o: _s(_get(o, "status", "phase")),
        "status.podIP": _pod_ip,
        "status.podIPs": _pod_ip,
        "status.nominatedNodeName": lambda o: _s(_get(o, "status", "nominatedNodeName")),
    },
    "nodes": {"spec.unschedulable": lambda o: _s(bool(_get(o, "spec", "unschedulable")))},
    "services": {
        "spec.clusterIP": lambda o: _s(_get(o, "spec", "clusterIP")),
        "spec.type": lambda o: _s(_get(o, "spec", "type")),
    },
    "secrets": {"type": lambda o: _s(o.get("type"))},
    "namespaces": {"status.phase": lambda o: _s(_get(o, "status", "phase"))},
    "events": {
        **{
            f"involvedObject.{k}": _involved(k)
            for k in ("kind", "namespace", "name", "uid", "apiVersion", "resourceVersion", "fieldPath")
        },
        "reason": lambda o: _s(o.get("reason")),
        "reportingComponent": lambda o: _s(o.get("reportingComponent")),
        "source": lambda o: _s(_get(o, "source", "component")),
        "type": lambda o: _s(o.get("type")),
    },
}


def field_value(resource: Resource, obj: Mapping[str, Any], field: str) -> str:
    if field == "metadata.name":
        return _s(_get(obj, "metadata", "name"))
    if field == "metadata.namespace":
        return _s(_get(obj, "metadata", "namespace"))
    return _FIELDS[resource.name][field](obj)


# --- discovery ------------------------------------------------------------------------------------------------


def groups() -> dict[str, list[Resource]]:
    out: dict[str, list[Resource]] = {}
    for r in RESOURCES:
        out.setdefault(r.api_version, []).append(r)
    return out


def api_resource_list(group_version: str) -> dict | None:
    """The legacy discovery document of /api/v1 or /apis/<group>/<version> (APIResourceList)."""
    rs = groups().get(group_version)
    if rs is None:
        return None
    items: list[dict[str, Any]] = []
    for r in rs:
        entry: dict[str, Any] = {
            "name": r.name,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": sorted(VERBS),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        items.append(entry)
        for sub in r.subresources:
            items.append(
                {
                    "name": f"{r.name}/{sub}",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": r.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
    items.sort(key=lambda e: e["name"])
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": items}


def aggregated_core() -> dict:
    """/api as aggregated discovery v2 (APIGroupDiscoveryList with the core group), for kubectl >= 1.30."""
    resources = []
    for r in groups()["v1"]:
        entry: dict[str, Any] = {
            "resource": r.name,
            "responseKind": {"group": "", "version": "", "kind": r.kind},
            "scope": "Namespaced" if r.namespaced else "Cluster",
            "singularResource": r.singular,
            "verbs": sorted(VERBS),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.subresources:
            entry["subresources"] = [
                {
                    "subresource": s,
                    "responseKind": {"group": "", "version": "", "kind": r.kind},
                    "verbs": ["get", "patch", "update"],
                }
                for s in r.subresources
            ]
        resources.append(entry)
    return {
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": [
            {
                "metadata": {"creationTimestamp": None},
                "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
            }
        ],
    }


def openapi_v3_index() -> dict:
    """/openapi/v3: where each group-version's document is (client-go openapi3 root)."""
    paths = {}
    for gv in groups():
        prefix = "api/" if "/" not in gv else "apis/"
        paths[prefix + gv] = {"serverRelativeURL": f"/openapi/v3/{prefix}{gv}?hash={zlib.crc32(gv.encode()):08X}"}
    return {"paths": paths}


def openapi_v3(group_version: str) -> dict | None:
    """A minimal OpenAPI v3 document for one group-version: the PATCH and POST operations with the
    fieldValidation parameter and their GVK, which is what kubectl reads to choose server-side validation
    (cli-runtime query_param_verifier_v3). No schemas: kubectl then builds apply patches from its own types."""
    rs = groups().get(group_version)
    if rs is None:
        return None
    field_validation = {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
    bodies = {
        ct: {"schema": {"type": "object"}}
        for ct in ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")
    }
    paths: dict[str, Any] = {}
    base = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
    for r in rs:
        gvk = {"group": r.group, "version": r.version, "kind": r.kind}
        collection = f"{base}/namespaces/{{namespace}}/{r.name}" if r.namespaced else f"{base}/{r.name}"
        ok = {"200": {"description": "OK"}}
        paths[collection] = {
            "post": {
                "parameters": [field_validation],
                "x-kubernetes-action": "post",
                "x-kubernetes-group-version-kind": gvk,
                "responses": ok,
            },
        }
        paths[collection + "/{name}"] = {
            "patch": {
                "parameters": [field_validation],
                "requestBody": {"content": bodies},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": gvk,
                "responses": ok,
            },
            "put": {
                "parameters": [field_validation],
                "x-kubernetes-action": "put",
                "x-kubernetes-group-version-kind": gvk,
                "responses": ok,
            },
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }
