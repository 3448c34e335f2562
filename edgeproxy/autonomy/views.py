"""Which cache entry a request reads or writes: its view (list/watch), its object (get) or its blob (discovery).

One place maps a classified request to cache keys, so what `record` writes is exactly what `local` reads back:
the client partition (component + identity), the canonical selectors, the shape (full objects or
PartialObjectMetadata) and the encoding. Pure: no I/O. Neighbours: record (writes), local (reads), cache.store
(the key types), kube.request / kube.selectors (the request's parts).
"""

from __future__ import annotations

from typing import Any

from cache import store
from edgeproxy.kube import errors, selectors

PROTOBUF = "application/vnd.kubernetes.protobuf"
JSON = "application/json"
POM = "PartialObjectMetadata"

# Non-resource reads a client needs before it can start (discovery and version), cached per client.
_DISCOVERY_ROOTS = ("/version", "/api", "/apis")


def media(content_type: str) -> tuple[str, dict[str, str]]:
    """(type/subtype lowercased, parameters) of a Content-Type or one Accept entry."""
    parts = content_type.split(";")
    params: dict[str, str] = {}
    for p in parts[1:]:
        k, _, v = p.partition("=")
        if k.strip():
            params[k.strip().lower()] = v.strip()
    return parts[0].strip().lower(), params


def encoding_of(content_type: str) -> str | None:
    """"protobuf" or "json" for a response Content-Type the cache can hold, else None (YAML, Table, CBOR...)."""
    essence, params = media(content_type)
    if essence == PROTOBUF:
        return "protobuf"
    if essence == JSON and params.get("as", "") in ("", POM, POM + "List"):
        return "json"
    return None


def shape_of(content_type: str) -> str:
    """"" (full objects) or "PartialObjectMetadata" (the metadata client), from the response's `as=`."""
    as_ = media(content_type)[1].get("as", "")
    return POM if as_ in (POM, POM + "List") else ""


def canonical_selectors(info: Any) -> tuple[str, str]:
    """(label selector, field selector) in canonical form, so equal queries share a view."""
    labels = selectors.parse_labels(info.label_selector or "").canonical()
    fields = selectors.parse_fields(info.field_selector or "").canonical()
    return labels, fields


def view_key(info: Any, *, shape: str, encoding: str, namespace: str | None = None,
             label_selector: str | None = None, field_selector: str | None = None) -> store.ViewKey:
    """The view of a list or watch request; the overrides name a wider view of the same client and resource."""
    labels, fields = canonical_selectors(info) if label_selector is None else (label_selector, field_selector or "")
    return store.ViewKey(
        client=info.client.key, group=info.api_group or "", version=info.api_version or "",
        resource=info.resource or "", namespace=(info.namespace or "") if namespace is None else namespace,
        label_selector=labels, field_selector=fields, shape=shape, encoding=encoding,
    )


def object_key(info: Any, *, shape: str, encoding: str, resource: str | None = None, namespace: str | None = None,
               name: str | None = None, client: str | None = None) -> store.ObjectKey:
    """The cached single-object GET answer for `info` (or for another object of the same client)."""
    return store.ObjectKey(
        client=client or info.client.key, group=info.api_group or "", version=info.api_version or "",
        resource=resource or info.resource or "",
        namespace=(info.namespace or "") if namespace is None else namespace,
        name=(info.name or "") if name is None else name, shape=shape, encoding=encoding,
    )


def is_discovery(path: str) -> bool:
    """/version, /api, /api/v1, /apis, /apis/<group>, /apis/<group>/<version>: what a client reads to start."""
    path = path.rstrip("/") or "/"
    if path in _DISCOVERY_ROOTS:
        return True
    parts = path.strip("/").split("/")
    return (parts[0] == "api" and len(parts) == 2) or (parts[0] == "apis" and len(parts) in (2, 3))


def blob_name(path: str, content_type: str) -> str:
    """The cache name of a discovery answer: the path and the representation (legacy, aggregated, protobuf)."""
    essence, params = media(content_type)
    keep = ";".join(f"{k}={params[k]}" for k in sorted(params) if k not in ("charset", "q"))
    return f"{path.rstrip('/') or '/'} {essence}{';' + keep if keep else ''}"


def safe_view_key(info: Any, *, shape: str, encoding: str) -> store.ViewKey | None:
    """view_key, or None when the request's selectors do not parse (the API server answered it with 400 anyway)."""
    try:
        return view_key(info, shape=shape, encoding=encoding)
    except errors.KubeError:
        return None
