"""PATCH bodies applied to JSON objects: JSON merge patch (RFC 7386), strategic merge patch, JSON patch (RFC 6902).

The strategic merge patch covers what clients send: maps merge, lists of objects merge by the patchMergeKey the
k8s.io/api types declare for the fields kubelet and kubectl touch (conditions by type, containers by name, ...),
the `$patch`, `$retainKeys`, `$setElementOrder/<list>` and `$deleteFromPrimitiveList/<list>` directives; any other
list is replaced, as for fields without a patch strategy. Pure functions; inputs are not modified.
"""

from __future__ import annotations

from typing import Any

from edgeproxy.sim import errors
from edgeproxy.sim.store import copy_json

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# list field -> patchMergeKey (k8s.io/api core/v1 and meta/v1 types.go `+patchMergeKey`)
_MERGE_KEYS = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "addresses": "type",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "podIPs": "ip",
    "hostIPs": "ip",
    "hostAliases": "ip",
    "ephemeralContainerStatuses": None,
}
_PRIMITIVE_MERGE = {"finalizers"}  # +patchStrategy=merge lists of strings: union


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy_json(patch)
    out = copy_json(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":  # container ports merge by containerPort, service ports by port
        sample = next((x for x in items if isinstance(x, dict)), {})
        return "containerPort" if "containerPort" in sample else "port"
    return _MERGE_KEYS.get(field)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy_json(patch)
    if patch.get("$patch") == "replace":
        return {k: copy_json(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return None
    out = copy_json(target) if isinstance(target, dict) else {}
    retain = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for k, v in patch.items():
        if k in ("$patch", "$retainKeys"):
            continue
        if k.startswith("$setElementOrder/"):
            orders[k.split("/", 1)[1]] = v
            continue
        if k.startswith("$deleteFromPrimitiveList/"):
            field = k.split("/", 1)[1]
            if isinstance(out.get(field), list):
                out[field] = [x for x in out[field] if x not in v]
            continue
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict):
            merged = strategic_merge_patch(out.get(k), v)
            if merged is None:
                out.pop(k, None)
            else:
                out[k] = merged
        elif isinstance(v, list):
            out[k] = _merge_list(k, out.get(k), v)
        else:
            out[k] = v
    for field, order in orders.items():
        if isinstance(out.get(field), list):
            out[field] = _reorder(field, out[field], order)
    if isinstance(retain, list):
        out = {k: v for k, v in out.items() if k in retain}
    return out


def _merge_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    current = current if isinstance(current, list) else []
    if field in _PRIMITIVE_MERGE:
        out = list(current)
        out.extend(x for x in patch if x not in out)
        return out
    key = _merge_key(field, patch + current)
    if key is None or not all(isinstance(x, dict) for x in patch):
        return [copy_json(x) for x in patch if not (isinstance(x, dict) and x.get("$patch"))]
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [copy_json(x) for x in patch if x.get("$patch") != "replace"]
    out = [copy_json(x) for x in current]
    index = {x.get(key): i for i, x in enumerate(out) if isinstance(x, dict)}
    deleted: set[Any] = set()
    for item in patch:
        k = item.get(key)
        if item.get("$patch") == "delete":
            deleted.add(k)
            continue
        if k in index:
            out[index[k]] = strategic_merge_patch(out[index[k]], item)
        else:
            index[k] = len(out)
            out.append(strategic_merge_patch({}, item))
    return [x for x in out if not (isinstance(x, dict) and x.get(key) in deleted)]


def _reorder(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    key = _merge_key(field, items)
    if key is None:
        rank = {repr(v): i for i, v in enumerate(order)}
        return sorted(items, key=lambda x: rank.get(repr(x), len(rank)))
    rank = {o.get(key) if isinstance(o, dict) else o: i for i, o in enumerate(order)}
    return sorted(items, key=lambda x: rank.get(x.get(key) if isinstance(x, dict) else x, len(rank)))


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise errors.bad_request(f"json patch: invalid path {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str]) -> Any:
    for p in parts:
        if isinstance(doc, list):
            doc = doc[int(p)]
        elif isinstance(doc, dict):
            doc = doc[p]
        else:
            raise KeyError(p)
    return doc


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902: add, remove, replace, move, copy, test."""
    if not isinstance(ops, list):
        raise errors.bad_request("json patch: the body must be a list of operations")
    doc = copy_json(target)
    try:
        for op in ops:
            name, parts = op["op"], _pointer(op["path"])
            if name == "test":
                if _walk(doc, parts) != op["value"]:
                    raise errors.ApiError(422, "Invalid", f"json patch: test failed at {op['path']}")
                continue
            if name in ("move", "copy"):
                src = _pointer(op["from"])
                value = copy_json(_walk(doc, src))
                if name == "move":
                    doc = _remove(doc, src)
                doc = _add(doc, parts, value)
            elif name == "add":
                doc = _add(doc, parts, copy_json(op["value"]))
            elif name == "remove":
                doc = _remove(doc, parts)
            elif name == "replace":
                _walk(doc, parts)  # must exist
                doc = _add(_remove(doc, parts), parts, copy_json(op["value"]))
            else:
                raise errors.bad_request(f"json patch: unknown operation {name!r}")
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise errors.ApiError(422, "Invalid", f"json patch: {e}") from e
    return doc


def _add(doc: Any, parts: list[str], value: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1])
    last = parts[-1]
    if isinstance(parent, list):
        parent.insert(len(parent) if last == "-" else int(last), value)
    else:
        parent[last] = value
    return doc


def _remove(doc: Any, parts: list[str]) -> Any:
    parent = _walk(doc, parts[:-1])
    if isinstance(parent, list):
        del parent[int(parts[-1])]
    else:
        del parent[parts[-1]]
    return doc


def apply(content_type: str, target: dict[str, Any], body: Any) -> dict[str, Any]:
    """The patched object for a PATCH of `content_type` (server-side apply approximated as a merge patch)."""
    ct = content_type.split(";")[0].strip().lower()
    if ct == STRATEGIC_MERGE_PATCH:
        out = strategic_merge_patch(target, body)
    elif ct in (MERGE_PATCH, APPLY_PATCH):
        out = merge_patch(target, body)
    elif ct == JSON_PATCH:
        out = json_patch(target, body)
    else:
        raise errors.ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - "
            f"accepted media types include: {JSON_PATCH}, {MERGE_PATCH}, "
            f"{APPLY_PATCH}, {STRATEGIC_MERGE_PATCH}",
        )
    if not isinstance(out, dict):
        raise errors.bad_request("the patch does not produce an object")
    return out
