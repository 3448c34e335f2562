"""metav1.Status errors, built and encoded as kube-apiserver builds and encodes them.

Constructors mirror apimachinery pkg/api/errors (NewNotFound, NewResourceExpired, ...) and k8s.io/apiserver
pkg/storage (NewTooLargeResourceVersionError), messages included. A Status is a plain dict in the JSON shape
({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",...}); `encode` writes it as Go's encoding/json
does (field order, omitempty, HTML-safe escapes, compact + "\\n" or MarshalIndent for pretty) or as protobuf
("k8s\\0" + runtime.Unknown around a metav1.Status, every non-pointer field written as gogo-protobuf writes it), so
bodies are byte-identical to the server's. `watch_error_event` wraps one in an ERROR watch event. Pure; does not choose
when to fail (the proxy does). Neighbours: errors (KubeError carries status/reason), protobuf (wire primitives).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from edgeproxy.kube import errors, goquote, protobuf

JSON = "application/json"
PROTOBUF = "application/vnd.kubernetes.protobuf"

# StatusCause types (metav1.CauseType) used here.
CAUSE_RESOURCE_VERSION_TOO_LARGE = "ResourceVersionTooLarge"


def status(code: int, reason: str, message: str, details: Mapping[str, Any] | None = None, *,
           metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A failure Status. `details` keys: name, group, kind, uid, causes [{reason, message, field}],
    retryAfterSeconds. `metadata` is a ListMeta (e.g. {"continue": token} on an expired continue)."""
    out: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": dict(metadata or {}),
                           "status": "Failure", "message": message, "reason": reason}
    if details is not None:
        out["details"] = dict(details)
    out["code"] = code
    return out


def _group_resource(resource: str, group: str) -> str:
    """schema.GroupResource.String()."""
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, name: str, group: str = "") -> dict[str, Any]:
    gr = _group_resource(resource, group)
    return status(404, "NotFound", f"{gr} {goquote.quote(name)} not found",
                  {"name": name, "group": group, "kind": resource})


def already_exists(resource: str, name: str, group: str = "") -> dict[str, Any]:
    gr = _group_resource(resource, group)
    return status(409, "AlreadyExists", f"{gr} {goquote.quote(name)} already exists",
                  {"name": name, "group": group, "kind": resource})


def conflict(resource: str, name: str, why: str, group: str = "") -> dict[str, Any]:
    gr = _group_resource(resource, group)
    return status(409, "Conflict", f"Operation cannot be fulfilled on {gr} {goquote.quote(name)}: {why}",
                  {"name": name, "group": group, "kind": resource})


def forbidden(resource: str, name: str, why: str, group: str = "") -> dict[str, Any]:
    """NewForbidden: `why` is the authorizer's sentence, e.g. 'User "x" cannot list resource "pods" ...'."""
    gr = _group_resource(resource, group)
    if not resource and not group:
        message = f"forbidden: {why}"
    elif not name:
        message = f"{gr} is forbidden: {why}"
    else:
        message = f"{gr} {goquote.quote(name)} is forbidden: {why}"
    return status(403, "Forbidden", message, {"name": name, "group": group, "kind": resource})


def unauthorized(message: str = "Unauthorized") -> dict[str, Any]:
    """401: the API server's answer to a request whose credentials it cannot accept (or that has none)."""
    return status(401, "Unauthorized", message)


def bad_request(message: str) -> dict[str, Any]:
    return status(400, "BadRequest", message)


def method_not_supported(resource: str, action: str, group: str = "") -> dict[str, Any]:
    gr = _group_resource(resource, group)
    return status(405, "MethodNotAllowed", f"{action} is not supported on resources of kind {goquote.quote(gr)}",
                  {"group": group, "kind": resource})


def not_acceptable(accepted: Sequence[str]) -> dict[str, Any]:
    """runtime.NewNotAcceptableError, as the negotiation answers a request it cannot serve."""
    return status(406, "NotAcceptable", "only the following media types are accepted: " + ", ".join(accepted))


def gone(message: str) -> dict[str, Any]:
    """NewResourceExpired: 410 with reason Expired (what client-go's IsResourceExpired looks for)."""
    return status(410, "Expired", message)


LIST_RV_TOO_OLD = "The resourceVersion for the provided list is too old."
CONTINUE_TOO_OLD = (
    "The provided continue parameter is too old to display a consistent list result. You can start a new list "
    "without the continue parameter, or use the continue token in this response to retrieve the remainder of the "
    "results. Continuing with the provided token results in an inconsistent list - objects that were created, "
    "modified, or deleted between the time the first chunk was returned and now may show up in the list.")


def expired_list_rv() -> dict[str, Any]:
    """A list at resourceVersionMatch=Exact for an RV older than the history (etcd compacted)."""
    return gone(LIST_RV_TOO_OLD)


def expired_continue(new_token: str = "") -> dict[str, Any]:
    """A continue token too old to serve; `new_token` (Status.metadata.continue) lets the client carry on
    inconsistently, "" tells it to start over (the pager relists without a limit either way)."""
    st = gone(CONTINUE_TOO_OLD)
    if new_token:
        st["metadata"]["continue"] = new_token
    return st


def too_old_rv(requested: int | str, oldest: int | str) -> dict[str, Any]:
    """The watch cache's answer to a watch from before its history (cacher newErrWatcher)."""
    return gone(f"too old resource version: {requested} ({oldest})")


def invalid(kind: str, name: str, causes: Sequence[Mapping[str, str]], group: str = "") -> dict[str, Any]:
    """NewInvalid: causes are {reason (FieldValueForbidden, ...), message (the error body), field}."""
    gk = f"{kind}.{group}" if group else kind
    msgs = [f"{c.get('field', '')}: {c.get('message', '')}" for c in causes]
    agg = _aggregate(msgs)
    return status(422, "Invalid", f"{gk} {goquote.quote(name)} is invalid: {agg}",
                  {"name": name, "group": group, "kind": kind, "causes": [dict(c) for c in causes]})


def too_many_requests(message: str, retry_after: int) -> dict[str, Any]:
    return status(429, "TooManyRequests", message, {"retryAfterSeconds": retry_after})


def internal_error(message: str) -> dict[str, Any]:
    return status(500, "InternalError", f"Internal error occurred: {message}", {"causes": [{"message": message}]})


def service_unavailable(message: str) -> dict[str, Any]:
    return status(503, "ServiceUnavailable", message)


def timeout(message: str, retry_after: int) -> dict[str, Any]:
    """NewTimeoutError (504)."""
    return status(504, "Timeout", f"Timeout: {message}", {"retryAfterSeconds": retry_after})


def too_large_rv(requested: int | str, current: int | str, retry_after: int = 1) -> dict[str, Any]:
    """storage.NewTooLargeResourceVersionError: a client asked for an RV newer than we have. The cacher passes
    retry_after=1. client-go relists with RV="" on this cause (reflector.go isTooLargeResourceVersionError)."""
    st = timeout(f"Too large resource version: {requested}, current: {current}", retry_after)
    st["details"]["causes"] = [{"reason": CAUSE_RESOURCE_VERSION_TOO_LARGE, "message": "Too large resource version"}]
    return st


def from_error(err: errors.KubeError) -> dict[str, Any]:
    """The Status for a wire-layer error: its HTTP status and reason, its message, and its details if it has any."""
    details = getattr(err, "details", None)
    if isinstance(err, errors.InvalidOptions):
        return status(err.status, err.reason, str(err), {"name": "", "group": err.group, "kind": err.kind,
                                                          "causes": [dict(c) for c in err.causes]})
    if err.status == 500:
        return internal_error(str(err))
    return status(err.status, err.reason, str(err), details)


def retry_after(st: Mapping[str, Any]) -> int | None:
    """The Retry-After header value the API server sends with this Status (responsewriters.ErrorNegotiated)."""
    seconds = (st.get("details") or {}).get("retryAfterSeconds", 0)
    return seconds if seconds and seconds > 0 else None


def _aggregate(msgs: list[str]) -> str:
    seen: list[str] = []
    for m in msgs:
        if m not in seen:
            seen.append(m)
    if len(seen) == 1:
        return seen[0]
    return "[" + ", ".join(seen) + "]"


# --- JSON -------------------------------------------------------------------------------------------------------------

_LIST_META_KEYS = ("selfLink", "resourceVersion", "continue", "remainingItemCount")
_DETAILS_KEYS = ("name", "group", "kind", "uid", "causes", "retryAfterSeconds")
_CAUSE_KEYS = ("reason", "message", "field")


def _omitempty(src: Mapping[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: src[k] for k in keys if src.get(k) not in (None, "", 0, [], {})}


def _go_order(st: Mapping[str, Any]) -> dict[str, Any]:
    """The Status in metav1.Status's field order with its omitempty rules (metadata is always written)."""
    out: dict[str, Any] = {"kind": st.get("kind", "Status"), "apiVersion": st.get("apiVersion", "v1")}
    meta = st.get("metadata") or {}
    out["metadata"] = {k: meta[k] for k in _LIST_META_KEYS if meta.get(k) not in (None, "")}
    for k in ("status", "message", "reason"):
        if st.get(k):
            out[k] = st[k]
    if st.get("details") is not None:  # a pointer: written when set, even if every field is empty
        d = _omitempty(st["details"], _DETAILS_KEYS)
        if "causes" in d:
            d["causes"] = [_omitempty(c, _CAUSE_KEYS) for c in d["causes"]]
        out["details"] = d
    if st.get("code"):
        out["code"] = st["code"]
    return out


def _go_json(obj: Any, pretty: bool) -> str:
    # Go's encoding/json escapes <, > and & (HTML-safe) and U+2028/U+2029, and keeps other non-ASCII as UTF-8.
    if pretty:
        text = json.dumps(obj, ensure_ascii=False, indent=2, separators=(",", ": "))
    else:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return (text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
            .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029"))


def encode_json(st: Mapping[str, Any], *, pretty: bool = False) -> bytes:
    """As the apiserver's JSON serializer: json.Encoder (compact + "\\n") or, for pretty, json.MarshalIndent
    (two spaces, no trailing newline; kube-apiserver pretty-prints for ?pretty=1 and curl/Wget/browser agents)."""
    text = _go_json(_go_order(st), pretty)
    return text.encode() if pretty else (text + "\n").encode()


# --- protobuf ---------------------------------------------------------------------------------------------------------


def _pb_string(no: int, value: str) -> bytes:
    return protobuf.field_bytes(no, value.encode())


def _pb_status(st: Mapping[str, Any]) -> bytes:
    """metav1.Status as gogo-protobuf marshals it: fields in number order, non-pointer strings/ints always written.
    Status: metadata=1 ListMeta{selfLink=1, resourceVersion=2, continue=3, remainingItemCount=4 (pointer)},
    status=2, message=3, reason=4, details=5 (pointer) {name=1, group=2, kind=3, causes=4 {type=1, message=2,
    field=3}, retryAfterSeconds=5, uid=6}, code=6."""
    meta = st.get("metadata") or {}
    lm = (_pb_string(1, meta.get("selfLink", "")) + _pb_string(2, meta.get("resourceVersion", ""))
          + _pb_string(3, meta.get("continue", "")))
    if meta.get("remainingItemCount") is not None:
        lm += protobuf.field_varint(4, int(meta["remainingItemCount"]))
    out = [protobuf.field_bytes(1, lm), _pb_string(2, st.get("status", "")), _pb_string(3, st.get("message", "")),
           _pb_string(4, st.get("reason", ""))]
    d = st.get("details")
    if d is not None:
        parts = [_pb_string(1, d.get("name", "")), _pb_string(2, d.get("group", "")), _pb_string(3, d.get("kind", ""))]
        for c in d.get("causes") or ():
            cause = _pb_string(1, c.get("reason", "")) + _pb_string(2, c.get("message", "")) + _pb_string(
                3, c.get("field", ""))
            parts.append(protobuf.field_bytes(4, cause))
        parts.append(protobuf.field_varint(5, int(d.get("retryAfterSeconds", 0))))
        parts.append(_pb_string(6, d.get("uid", "")))
        out.append(protobuf.field_bytes(5, b"".join(parts)))
    out.append(protobuf.field_varint(6, int(st.get("code", 0))))
    return b"".join(out)


def encode_protobuf(st: Mapping[str, Any]) -> bytes:
    return protobuf.wrap(st.get("apiVersion", "v1"), st.get("kind", "Status"), _pb_status(st))


def encode(st: Mapping[str, Any], encoding: str = "json", *, pretty: bool = False) -> tuple[str, bytes]:
    """(Content-Type, body) of a Status in `encoding` ("json" or "protobuf")."""
    if encoding == "protobuf":
        return PROTOBUF, encode_protobuf(st)
    return JSON, encode_json(st, pretty=pretty)


def watch_error_event(st: Mapping[str, Any], encoding: str = "json") -> bytes:
    """An ERROR watch event carrying the Status, ready to write on a watch stream of that encoding: a JSON line
    {"type":"ERROR","object":{...}}\\n, or a 4-byte big-endian length + WatchEvent{type=1, object=2 RawExtension
    {raw=1: the "k8s\\0"-wrapped Status}} (apiserver handlers/watch.go, as in the recorded gone.watch-old-rv.*)."""
    if encoding == "protobuf":
        return protobuf.encode_event("ERROR", st.get("apiVersion", "v1"), st.get("kind", "Status"), _pb_status(st))
    return ('{"type":"ERROR","object":' + _go_json(_go_order(st), False) + "}\n").encode()
