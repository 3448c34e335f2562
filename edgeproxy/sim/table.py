"""meta.k8s.io/v1 Table answers (what `kubectl get` asks for), with the columns kube-apiserver prints.

Pure: JSON objects in, Table dicts out. Pods use the recorded column definitions of tests/fixtures'
pods-edge1.table.json; other kinds the printers' (kubernetes pkg/printers/internalversion) main columns.
Neighbours: sim.api (negotiation, HTTP), sim.seed (fixture location).
"""

from __future__ import annotations

import datetime
import functools
import json
from collections.abc import Callable
from typing import Any

from edgeproxy.sim import seed

_NAME_DESC = (
    "Name must be unique within a namespace. Is required when creating resources, although some resources may "
    "allow a client to request the generation of an appropriate name automatically. Name is primarily intended "
    "for creation idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)


def human_duration(seconds: float) -> str:
    """apimachinery util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y{dy}d" if dy else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _age(obj: dict[str, Any]) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    t = datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return human_duration((datetime.datetime.now(datetime.UTC) - t).total_seconds())


def _col(name: str, typ: str = "string", priority: int = 0, fmt: str = "", desc: str = "") -> dict[str, Any]:
    return {"name": name, "type": typ, "format": fmt, "description": desc, "priority": priority}


@functools.cache
def _pod_columns() -> list[dict[str, Any]]:
    try:
        return json.loads((seed.fixture_dir() / "pods-edge1.table.json.body").read_bytes())["columnDefinitions"]
    except OSError:
        return [
            _col("Name", fmt="name", desc=_NAME_DESC),
            _col("Ready"),
            _col("Status"),
            _col("Restarts"),
            _col("Age"),
            _col("IP", priority=1),
            _col("Node", priority=1),
            _col("Nominated Node", priority=1),
            _col("Readiness Gates", priority=1),
        ]


def _pod_cells(p: dict[str, Any]) -> list[Any]:
    spec, status, md = p.get("spec") or {}, p.get("status") or {}, p.get("metadata") or {}
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for c in statuses if c.get("ready"))
    reason = status.get("reason") or status.get("phase") or ""
    for c in statuses:
        state = c.get("state") or {}
        if state.get("waiting", {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif state.get("terminated", {}).get("reason"):
            reason = state["terminated"]["reason"]
    if md.get("deletionTimestamp"):
        reason = "Terminating"
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    gates = spec.get("readinessGates") or []
    return [
        md.get("name", ""),
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        str(restarts),
        _age(p),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        f"0/{len(gates)}" if gates else "<none>",
    ]


def _node_cells(n: dict[str, Any]) -> list[Any]:
    status = n.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    state = "Ready" if ready and ready.get("status") == "True" else "NotReady" if ready else "Unknown"
    if (n.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = (n.get("metadata") or {}).get("labels") or {}
    roles = sorted(k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/"))
    addr = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    info = status.get("nodeInfo") or {}
    return [
        n["metadata"]["name"],
        state,
        ",".join(roles) or "<none>",
        _age(n),
        info.get("kubeletVersion", ""),
        addr.get("InternalIP", "<none>"),
        addr.get("ExternalIP", "<none>"),
        info.get("osImage", ""),
        info.get("kernelVersion", ""),
        info.get("containerRuntimeVersion", ""),
    ]


def _service_cells(s: dict[str, Any]) -> list[Any]:
    spec = s.get("spec") or {}
    ports = ",".join(
        f"{p.get('port')}{':' + str(p['nodePort']) if p.get('nodePort') else ''}/{p.get('protocol', 'TCP')}"
        for p in spec.get("ports") or []
    )
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.get("selector") or {}).items()))
    return [
        s["metadata"]["name"],
        spec.get("type", ""),
        spec.get("clusterIP") or "<none>",
        ",".join(spec.get("externalIPs") or []) or "<none>",
        ports or "<none>",
        _age(s),
        selector or "<none>",
    ]


_TABLES: dict[str, tuple[list[dict[str, Any]], Callable[[dict[str, Any]], list[Any]]]] = {
    "nodes": (
        [
            _col("Name", fmt="name", desc=_NAME_DESC),
            _col("Status"),
            _col("Roles"),
            _col("Age"),
            _col("Version"),
            _col("Internal-IP", priority=1),
            _col("External-IP", priority=1),
            _col("OS-Image", priority=1),
            _col("Kernel-Version", priority=1),
            _col("Container-Runtime", priority=1),
        ],
        _node_cells,
    ),
    "services": (
        [
            _col("Name", fmt="name", desc=_NAME_DESC),
            _col("Type"),
            _col("Cluster-IP"),
            _col("External-IP"),
            _col("Port(s)"),
            _col("Age"),
            _col("Selector", priority=1),
        ],
        _service_cells,
    ),
    "configmaps": (
        [_col("Name", fmt="name", desc=_NAME_DESC), _col("Data", "integer"), _col("Age")],
        lambda o: [o["metadata"]["name"], len(o.get("data") or {}) + len(o.get("binaryData") or {}), _age(o)],
    ),
    "secrets": (
        [_col("Name", fmt="name", desc=_NAME_DESC), _col("Type"), _col("Data", "integer"), _col("Age")],
        lambda o: [o["metadata"]["name"], o.get("type", ""), len(o.get("data") or {}), _age(o)],
    ),
    "namespaces": (
        [_col("Name", fmt="name", desc=_NAME_DESC), _col("Status"), _col("Age")],
        lambda o: [o["metadata"]["name"], (o.get("status") or {}).get("phase", ""), _age(o)],
    ),
    "leases": (
        [_col("Name", fmt="name", desc=_NAME_DESC), _col("Holder"), _col("Age")],
        lambda o: [o["metadata"]["name"], (o.get("spec") or {}).get("holderIdentity", ""), _age(o)],
    ),
    "endpointslices": (
        [_col("Name", fmt="name", desc=_NAME_DESC), _col("AddressType"), _col("Ports"), _col("Endpoints"), _col("Age")],
        lambda o: [
            o["metadata"]["name"],
            o.get("addressType", ""),
            ",".join(str(p.get("port", "")) for p in o.get("ports") or []) or "<unset>",
            ",".join(a for e in o.get("endpoints") or [] for a in e.get("addresses", [])) or "<unset>",
            _age(o),
        ],
    ),
}
_GENERIC = ([_col("Name", fmt="name", desc=_NAME_DESC), _col("Age")], lambda o: [o["metadata"]["name"], _age(o)])


def columns(resource: str) -> list[dict[str, Any]]:
    if resource == "pods":
        return _pod_columns()
    return _TABLES.get(resource, _GENERIC)[0]


def row(resource: str, obj: dict[str, Any], include: str, api_version: str, kind: str) -> dict[str, Any]:
    cells = _pod_cells(obj) if resource == "pods" else _TABLES.get(resource, _GENERIC)[1](obj)
    out: dict[str, Any] = {"cells": cells}
    if include == "Object":
        out["object"] = {"kind": kind, "apiVersion": api_version, **obj}
    elif include != "None":
        out["object"] = {
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata") or {},
        }
    return out


def table(
    resource: str,
    objs: list[dict[str, Any]],
    metadata: dict[str, Any],
    include: str,
    api_version: str,
    kind: str,
    headers: bool = True,
) -> dict[str, Any]:
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns(resource) if headers else None,
        "rows": [row(resource, o, include, api_version, kind) for o in objs],
    }
