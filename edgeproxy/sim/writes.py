"""Writes with the API server's semantics: create, update, patch, delete on the simulator's store.

What a client can observe: uid/creationTimestamp set on create, a fresh resourceVersion on every change (none for a
no-op), 409 on a stale resourceVersion or an existing name, status subresources, graceful pod deletion
(deletionTimestamp first, the object removed by a later grace-period-0 delete, as tests/fixtures' watch shows),
finalizers holding deletion. A few defaults the real registries set so that clients see familiar objects.
Neighbours: sim.store (state and events), sim.patch (PATCH bodies), sim.api (HTTP).
"""

from __future__ import annotations

import datetime
import itertools
import uuid
from typing import Any

from edgeproxy.sim import errors, patch, resources, store
from edgeproxy.sim.store import Entry, copy_json

_cluster_ips = itertools.count(10)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _later(seconds: int) -> str:
    t = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_type(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}


def _check_kind(res: resources.Resource, obj: Any) -> None:
    if not isinstance(obj, dict):
        raise errors.bad_request("the body must be a JSON object")
    kind = obj.get("kind")
    if kind and kind != res.kind:
        raise errors.bad_request(f"the kind {kind!r} of the body does not match the resource {res.name!r}")
    api = obj.get("apiVersion")
    if api and api != res.api_version:
        raise errors.bad_request(f"the apiVersion {api!r} of the body does not match {res.api_version!r}")


def _defaults(res: resources.Resource, obj: dict[str, Any]) -> None:
    """The defaulting a client notices (pkg/apis/core/v1/defaults.go), kept small."""
    if res.name == "pods":
        spec = obj.setdefault("spec", {})
        for k, v in (
            ("restartPolicy", "Always"),
            ("terminationGracePeriodSeconds", 30),
            ("dnsPolicy", "ClusterFirst"),
            ("schedulerName", "default-scheduler"),
            ("enableServiceLinks", True),
            ("preemptionPolicy", "PreemptLowerPriority"),
            ("priority", 0),
        ):
            spec.setdefault(k, v)
        spec.setdefault("securityContext", {})
        if spec.get("serviceAccountName"):
            spec.setdefault("serviceAccount", spec["serviceAccountName"])
        for c in spec.get("containers") or []:
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            image = str(c.get("image", ""))
            c.setdefault(
                "imagePullPolicy", "Always" if image.endswith(":latest") or ":" not in image else "IfNotPresent"
            )
            c.setdefault("resources", {})
            for p in c.get("ports") or []:
                p.setdefault("protocol", "TCP")
        status = obj.setdefault("status", {})
        status.setdefault("phase", "Pending")
        status.setdefault("qosClass", "BestEffort")
    elif res.name == "services":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if "clusterIP" not in spec:
            n = next(_cluster_ips)
            spec["clusterIP"] = f"10.96.{n // 250}.{n % 250 + 2}"
        if spec["clusterIP"] != "None":
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for p in spec.get("ports") or []:
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port", 0))
        obj.setdefault("status", {"loadBalancer": {}})
    elif res.name == "namespaces":
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
    elif res.name == "secrets":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if string_data:
            import base64

            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()


def _stamp(res: resources.Resource, obj: dict[str, Any], rv: int) -> Entry:
    obj["metadata"]["resourceVersion"] = str(rv)
    return Entry(res.kind, obj, rv, res.api_version)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    def strip(o: dict[str, Any]) -> dict[str, Any]:
        md = {k: v for k, v in (o.get("metadata") or {}).items() if k != "resourceVersion"}
        return {**o, "metadata": md}

    return strip(a) == strip(b)


def create(st: store.Store, res: resources.Resource, namespace: str, body: Any) -> Entry:
    _check_kind(res, body)
    obj = _strip_type(copy_json(body))
    md = obj.setdefault("metadata", {})
    if res.namespaced:
        ns = md.get("namespace") or namespace
        if namespace and ns != namespace:
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if not ns:
            raise errors.bad_request("the namespace of the object is missing")
        md["namespace"] = ns
    else:
        md.pop("namespace", None)
    if not md.get("name"):
        if md.get("generateName"):
            md["name"] = md["generateName"] + uuid.uuid4().hex[:5]
        else:
            raise errors.invalid(res, "", "metadata.name: Required value: name or generateName is required")
    key = (md.get("namespace", ""), md["name"])
    if st.get(res.key, key) is not None:
        raise errors.already_exists(res, md["name"])
    md["uid"] = str(uuid.uuid4())
    md["creationTimestamp"] = now()
    for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion", "selfLink"):
        md.pop(k, None)
    _defaults(res, obj)
    entry = _stamp(res, _ordered(obj), st.next_rv())
    st.commit(res.key, "ADDED", entry, None)
    return entry


def _ordered(obj: dict[str, Any]) -> dict[str, Any]:
    """metadata's keys in ObjectMeta order, as the API server writes them."""
    md = obj.get("metadata")
    if isinstance(md, dict):
        order = (
            "name",
            "generateName",
            "namespace",
            "selfLink",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "labels",
            "annotations",
            "ownerReferences",
            "finalizers",
            "managedFields",
        )
        obj["metadata"] = {k: md[k] for k in order if k in md} | {k: v for k, v in md.items() if k not in order}
    return obj


def _existing(st: store.Store, res: resources.Resource, namespace: str, name: str) -> Entry:
    entry = st.get(res.key, (namespace if res.namespaced else "", name))
    if entry is None:
        raise errors.not_found(res, name)
    return entry


def update(
    st: store.Store, res: resources.Resource, namespace: str, name: str, body: Any, subresource: str = ""
) -> Entry:
    _check_kind(res, body)
    old = _existing(st, res, namespace, name)
    new = _strip_type(copy_json(body))
    md = new.setdefault("metadata", {})
    if md.get("name", name) != name:
        raise errors.bad_request("the name of the object does not match the name on the URL")
    rv = md.get("resourceVersion")
    if rv and rv != str(old.rv):
        raise errors.conflict(res, name)
    return _replace(st, res, old, new, subresource)


def _replace(st: store.Store, res: resources.Resource, old: Entry, new: dict[str, Any], subresource: str) -> Entry:
    old_md = old.obj.get("metadata") or {}
    if subresource == "status":
        merged = copy_json(old.obj)
        if "status" in new:
            merged["status"] = new["status"]
        new = merged
    elif "status" in res.subresources and "status" in old.obj:
        new["status"] = copy_json(old.obj["status"])  # the main resource ignores status changes
    md = new.setdefault("metadata", {})
    for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
        if k in old_md:
            md[k] = old_md[k]
        else:
            md.pop(k, None)
    md["resourceVersion"] = old_md.get("resourceVersion", "")
    new = _ordered(new)
    if _same(new, old.obj):
        return old  # a no-op write does not bump the resourceVersion
    if md.get("deletionTimestamp") and not md.get("finalizers"):
        entry = _stamp(res, new, st.next_rv())
        st.commit(res.key, "DELETED", entry, old)
        return entry
    entry = _stamp(res, new, st.next_rv())
    st.commit(res.key, "MODIFIED", entry, old)
    return entry


def patch_object(
    st: store.Store,
    res: resources.Resource,
    namespace: str,
    name: str,
    content_type: str,
    body: Any,
    subresource: str = "",
) -> Entry:
    old = _existing(st, res, namespace, name)
    target = old.typed(res.api_version)
    new = patch.apply(content_type, target, body)
    _check_kind(res, new)
    new = _strip_type(new)
    rv = (new.get("metadata") or {}).get("resourceVersion")
    if rv and rv != str(old.rv):
        raise errors.conflict(res, name)
    return _replace(st, res, old, new, subresource)


def delete(
    st: store.Store,
    res: resources.Resource,
    namespace: str,
    name: str,
    grace: int | None = None,
    precondition_uid: str | None = None,
    precondition_rv: str | None = None,
) -> tuple[Entry, bool]:
    """(the object after the call, whether it is gone). Pods on a node, and objects with finalizers, first get a
    deletionTimestamp (MODIFIED); a later grace-0 delete of a terminating pod removes it (MODIFIED, then DELETED)."""
    old = _existing(st, res, namespace, name)
    md = old.obj.get("metadata") or {}
    if precondition_uid and precondition_uid != md.get("uid"):
        raise errors.conflict(res, name)
    if precondition_rv and precondition_rv != str(old.rv):
        raise errors.conflict(res, name)
    if res.graceful:
        spec = old.obj.get("spec") or {}
        if grace is None:
            grace = int(spec.get("terminationGracePeriodSeconds", 30))
        if not spec.get("nodeName"):
            grace = 0  # never scheduled: nothing to stop (pod strategy CheckGracefulDelete)
        terminating = md.get("deletionTimestamp") is not None
        if grace > 0 and (not terminating or grace < int(md.get("deletionGracePeriodSeconds", grace))):
            return _mark_deleting(st, res, old, grace), False
        if terminating and md.get("deletionGracePeriodSeconds") != 0 and grace == 0:
            old = _mark_deleting(st, res, old, 0)
        elif terminating:
            return old, False
    elif md.get("finalizers"):
        if md.get("deletionTimestamp"):
            return old, False
        return _mark_deleting(st, res, old, 0), False
    final = copy_json(old.obj)
    entry = _stamp(res, final, st.next_rv())
    st.commit(res.key, "DELETED", entry, old)
    return entry, True


def _mark_deleting(st: store.Store, res: resources.Resource, old: Entry, grace: int) -> Entry:
    new = copy_json(old.obj)
    md = new["metadata"]
    md["deletionTimestamp"] = _later(grace)
    md["deletionGracePeriodSeconds"] = grace
    entry = _stamp(res, _ordered(new), st.next_rv())
    st.commit(res.key, "MODIFIED", entry, old)
    return entry
