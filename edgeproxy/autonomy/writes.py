"""The offline write policy: which write gets which answer while the API server is out of reach (DESIGN §5).

`decide()` is a pure function from a classified request to a `Decision` the shell dispatches on. The default is 503
ServiceUnavailable without Retry-After (client-go then fails fast and its own loops retry). The exceptions keep the
node agent alive: failing its Lease renewal or node status PATCH twice makes kubelet close every connection it has
(`onRepeatedHeartbeatFailure` → closeAllConns), so those get 200 with the locally updated object; a create of an
object the cache holds (kubelet re-registering its Node) gets 409 AlreadyExists as the API server would say; events
are echoed; a TokenRequest goes to `tokens`.

The node agent is recognised by what it does, not by its User-Agent: a request under the node's identity (no bearer
token of its own: it goes upstream as the node) that renews kube-node-lease/<node>, patches nodes/<node>/status or
creates Node <node>. kubelet, kubemark's hollow-kubelet and vendor builds all pass; a pod's ServiceAccount does not.

Also here, pure: the local versions of those writes (`renew_lease`, `patch_node_status`, `echo_event`) and a small
strategic-merge patch. Boundary: no cache, no HTTP. Neighbours: local (executes decisions against the cache),
tokens (TokenRequests), kube.protobuf (wire).
"""

from __future__ import annotations

import copy
import enum
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgeproxy.kube import errors, protobuf

LEASE_NAMESPACE = "kube-node-lease"
LEASE_GROUP = "coordination.k8s.io"
EVENT_GROUPS = ("", "events.k8s.io")  # core/v1 Events and events.k8s.io/v1 Events
PROTOBUF = "application/vnd.kubernetes.protobuf"
# Components that are the node agent whatever they call themselves, used only when the node's name is not known
# (the behavioural test needs it). request.py maps hollow-kubelet → kubelet already; more can be configured.
NODE_AGENT_COMPONENTS = frozenset({"kubelet", "hollow-kubelet"})


class Action(enum.Enum):
    RENEW_LEASE = "renew-lease"  # 200: the request body's Lease, resourceVersion bumped, kept as the cached lease
    PATCH_NODE_STATUS = "patch-node-status"  # 200: the cached Node with the patch applied, kept in the cache
    ALREADY_EXISTS = "already-exists"  # 409 AlreadyExists: a create of an object the cache holds
    ECHO_EVENT = "echo-event"  # 201 (POST) / 200 (PATCH) echoing the body
    TOKEN = "token"  # tokens.TokenBook.answer
    UNAVAILABLE = "unavailable"  # 503 ServiceUnavailable, no Retry-After


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    status: int
    why: str  # a short label for logs and metrics


def _d(action: Action, status: int, why: str) -> Decision:
    return Decision(action, status, why)


def is_node_identity(info: Any) -> bool:
    """True when the request carries no credentials of its own: it goes upstream as the node (DESIGN §7)."""
    return not info.client.identity


def node_agent_target(info: Any, node: str | None, created_name: str | None = None) -> str | None:
    """What of its own a node agent touches with this request ("lease", "node-status", "node"), or None.

    `node` is this node's name (from the kubeconfig's client certificate, system:node:<node>); when it is not known,
    the request's component (configurable aliases) stands in for it.
    """
    if not is_node_identity(info):
        return None
    own = (lambda name: name == node) if node else (lambda name: bool(name) and _agent_component(info))
    lease = info.api_group == LEASE_GROUP and info.resource == "leases" and info.namespace == LEASE_NAMESPACE
    if lease and own(info.name or created_name):
        return "lease"
    if info.api_group == "" and info.resource == "nodes":
        if info.subresource == "status" and own(info.name):
            return "node-status"
        if not info.subresource and own(info.name or created_name):
            return "node"
    return None


def _agent_component(info: Any) -> bool:
    return info.client.component in NODE_AGENT_COMPONENTS


def decide(
    info: Any, *, node: str | None, created: tuple[str, str] | None = None,
    holds: Callable[[str, str], bool] = lambda namespace, name: False,
) -> Decision:
    """The offline answer to a write (`info` is a kube.request.RequestInfo).

    `created` is the (namespace, name) in a create's body; `holds(namespace, name)` says whether the requesting
    client's cache holds that object of the request's resource.
    """
    verb = info.verb
    created_name = created[1] if created else None
    target = node_agent_target(info, node, created_name)
    if target == "lease" and verb == "update":
        return _d(Action.RENEW_LEASE, 200, "node-lease")
    if target == "node-status" and verb == "patch":
        return _d(Action.PATCH_NODE_STATUS, 200, "node-status")
    if info.resource == "serviceaccounts" and info.subresource == "token" and verb == "create":
        if is_node_identity(info):
            return _d(Action.TOKEN, 201, "token-request")
        return _d(Action.UNAVAILABLE, 503, "token-request-not-node")
    if info.resource == "events" and info.api_group in EVENT_GROUPS and not info.subresource:
        if verb == "create":
            return _d(Action.ECHO_EVENT, 201, "event")
        if verb in ("patch", "update"):
            return _d(Action.ECHO_EVENT, 200, "event")
    if verb == "create" and not info.subresource and created and created[1]:
        namespace = created[0] or info.namespace or ""
        if holds(namespace, created[1]):
            return _d(Action.ALREADY_EXISTS, 409, "already-exists")
    return _d(Action.UNAVAILABLE, 503, "write-offline")


# ---------------------------------------------------------------- reading bodies


def body_name(body: bytes, content_type: str) -> tuple[str, str] | None:
    """(namespace, name) from an object's metadata in a request body, or None when it has no name (generateName)."""
    try:
        if _is_protobuf(content_type):
            meta = protobuf.object_meta(protobuf.unwrap(body).raw)
            name, namespace = meta.name, meta.namespace
        else:
            metadata = json.loads(body).get("metadata") or {}
            name, namespace = metadata.get("name") or "", metadata.get("namespace") or ""
    except (ValueError, TypeError, AttributeError, RecursionError, errors.KubeError):
        return None
    return (namespace, name) if name else None


# ---------------------------------------------------------------- the local writes


def local_resource_version(upstream_rv: str | None) -> str:
    """The resourceVersion of an object written locally: one past the upstream version it was based on.

    Not cumulative (the caller passes the upstream version, not the last local one): an outage of any length moves
    it by one, so upstream events after reconnection are never mistaken for older than a local write.
    """
    try:
        return str(int(upstream_rv or "0") + 1)
    except ValueError:
        return upstream_rv or "1"


def renew_lease(body: bytes, content_type: str, resource_version: str) -> bytes:
    """The Lease a PUT sent, as the API server would return it: the same object at a new resourceVersion."""
    if _is_protobuf(content_type):
        u = protobuf.unwrap(body)
        raw = set_pb_resource_version(u.raw, resource_version)
        return protobuf.wrap(u.api_version or "coordination.k8s.io/v1", u.kind or "Lease", raw)
    obj = json.loads(body)
    obj.setdefault("kind", "Lease")
    obj.setdefault("apiVersion", "coordination.k8s.io/v1")
    obj.setdefault("metadata", {})["resourceVersion"] = resource_version
    return json.dumps(obj, separators=(",", ":")).encode()


def patch_node_status(node: dict[str, Any], patch: Mapping[str, Any], resource_version: str) -> dict[str, Any]:
    """The Node after a strategic-merge PATCH of its status subresource (only .status changes, as on the server)."""
    out = copy.deepcopy(node)
    if "status" in patch:
        out["status"] = strategic_merge(out.get("status") or {}, patch["status"], NODE_STATUS_MERGE_KEYS)
    out.setdefault("metadata", {})["resourceVersion"] = resource_version
    return out


def echo_event(info: Any, body: bytes, content_type: str) -> tuple[str, bytes]:
    """(content type, body) echoing an Event write: a create's object as sent; a PATCH's fields as an Event."""
    if info.verb == "create" or _is_protobuf(content_type):
        return (PROTOBUF if _is_protobuf(content_type) else "application/json"), body
    try:
        obj = json.loads(body)
    except ValueError:
        obj = {}
    if not isinstance(obj, dict):
        obj = {}
    obj = {k: v for k, v in obj.items() if not k.startswith("$")}
    group = info.api_group
    obj = {"kind": "Event", "apiVersion": f"{group}/{info.api_version}" if group else info.api_version, **obj}
    metadata = obj.setdefault("metadata", {})
    if isinstance(metadata, dict):
        metadata.setdefault("name", info.name)
        metadata.setdefault("namespace", info.namespace)
    return "application/json", json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------- strategic merge patch

# patchMergeKey of the list fields of NodeStatus (k8s.io/api core/v1 types.go); other lists are replaced.
NODE_STATUS_MERGE_KEYS: dict[str, str] = {"conditions": "type", "addresses": "type"}


def strategic_merge(original: Any, patch: Any, merge_keys: Mapping[str, str]) -> Any:
    """Apply a strategic-merge patch (apimachinery strategicpatch) for one level's list merge keys.

    Handles what kubelet sends: null deletes a key; maps merge; lists with a merge key merge by it (an element with
    `$patch: delete` is removed); `$setElementOrder/<list>` orders them; `$retainKeys`, `$patch: replace` and
    `$deleteFromPrimitiveList/<list>`; other lists are replaced. Nested maps use no merge keys.
    """
    if not isinstance(patch, dict) or not isinstance(original, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    out = dict(original)
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
        elif key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if isinstance(out.get(name), list):
                out[name] = [v for v in out[name] if v not in value]
        elif key.startswith("$"):  # $retainKeys is applied last; other directives are not for this level
            continue
        elif value is None:
            out.pop(key, None)
        elif key in merge_keys and isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = _merge_list(out[key], value, merge_keys[key])
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value, {})
        else:
            out[key] = strategic_merge({}, value, {}) if isinstance(value, dict) else copy.deepcopy(value)
    for name, order in orders.items():
        if name in merge_keys and isinstance(out.get(name), list):
            out[name] = _order(out[name], order, merge_keys[name])
    if "$retainKeys" in patch:
        keep = set(patch["$retainKeys"] or ())
        out = {k: v for k, v in out.items() if k in keep}
    return out


def _merge_list(original: list[Any], patch: list[Any], key: str) -> list[Any]:
    out = [copy.deepcopy(e) for e in original]
    index = {e.get(key): i for i, e in enumerate(out) if isinstance(e, dict)}
    for element in patch:
        if not isinstance(element, dict):
            out.append(copy.deepcopy(element))
            continue
        k = element.get(key)
        if element.get("$patch") == "delete":
            if k in index:
                out[index[k]] = None
            continue
        if k in index and out[index[k]] is not None:
            out[index[k]] = strategic_merge(out[index[k]], element, {})
        else:
            index[k] = len(out)
            out.append(strategic_merge({}, element, {}))
    return [e for e in out if e is not None]


def _order(items: list[Any], order: list[Any], key: str) -> list[Any]:
    rank = {o.get(key): i for i, o in enumerate(order) if isinstance(o, dict)}
    listed = sorted((e for e in items if isinstance(e, dict) and e.get(key) in rank), key=lambda e: rank[e[key]])
    rest = [e for e in items if not (isinstance(e, dict) and e.get(key) in rank)]
    return listed + rest


# ---------------------------------------------------------------- protobuf details


def _is_protobuf(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == PROTOBUF


def set_pb_resource_version(raw: bytes, resource_version: str) -> bytes:
    """An object's bytes with metadata.resourceVersion (ObjectMeta field 6 in field 1) set, other bytes untouched."""
    out = bytearray()
    seen_meta = False
    for no, wt, value in protobuf.iter_fields(raw):
        if no == 1 and wt == protobuf.LEN and not seen_meta:
            seen_meta = True
            out += protobuf.field_bytes(1, _set_meta_field(bytes(value), 6, resource_version.encode()))
        elif wt == protobuf.LEN:
            out += protobuf.field_bytes(no, value)  # type: ignore[arg-type]
        elif wt == protobuf.VARINT:
            out += protobuf.field_varint(no, value)  # type: ignore[arg-type]
        else:
            raise errors.DecodeError(f"protobuf: unexpected wire type {wt} at the top of an object")
    if not seen_meta:
        out[:0] = protobuf.field_bytes(1, protobuf.field_bytes(6, resource_version.encode()))
    return bytes(out)


def _set_meta_field(meta: bytes, number: int, data: bytes) -> bytes:
    """ObjectMeta with string field `number` replaced, written in field order as Go marshals it."""
    parts: list[tuple[int, bytes]] = []
    pos = 0
    for no, _, _ in protobuf.iter_fields(meta):
        start = pos
        key, pos = protobuf.read_varint(meta, pos)
        wt = key & 7
        if wt == protobuf.LEN:
            n, pos = protobuf.read_varint(meta, pos)
            pos += n
        elif wt == protobuf.VARINT:
            _, pos = protobuf.read_varint(meta, pos)
        elif wt == protobuf.FIXED64:
            pos += 8
        else:
            pos += 4
        if no != number:
            parts.append((no, meta[start:pos]))
    new = protobuf.field_bytes(number, data)
    at = next((i for i, (no, _) in enumerate(parts) if no > number), len(parts))
    parts.insert(at, (number, new))
    return b"".join(p for _, p in parts)
