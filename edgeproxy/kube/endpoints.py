"""EndpointSlices and Endpoints rewritten for one node: keep some endpoints, or point them all at one address.

Two rewrites, each on one object's bytes in either encoding, returning the new bytes or None when the object is left
as it is. Everything a rewrite does not touch keeps the API server's exact bytes: in protobuf the message's other
fields are copied as they came (fields are spliced, never re-encoded), in JSON the other members are copied as text
and only the rewritten member's value is written anew, the way Go's encoding/json writes it.

- `keep_endpoints`: an EndpointSlice with only the endpoints `local(node_name, zone)` accepts; None when all or
  none of them are (the caller's fallback to all endpoints is then simply "untouched").
- `redirect_slice` / `redirect_endpoints`: discovery.k8s.io/v1 EndpointSlice or core/v1 Endpoints with one endpoint,
  the given IP, and the port named "https" (or the only port) set to the given one; None when already so.

Pure: bytes in, bytes out. Objects are bare protobuf messages (no "k8s\\0" envelope: kube.protobuf unwraps lists,
objects and watch frames) or JSON objects (typed or not, compact or indented). Malformed input raises DecodeError.
Neighbours: rewrite (applies an object rewrite to lists, objects and watch events), protobuf, jsonwire.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from typing import Any

from edgeproxy.kube import errors, jsonwire, protobuf

SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # discovery/v1 LabelServiceName: the Service a slice belongs to
HTTPS_PORT_NAME = "https"  # the port name of the default/kubernetes Service and its endpoints

Local = Callable[[str, str], bool]  # (endpoint nodeName, endpoint zone) -> whether it is local

_FOREIGN = (ValueError, IndexError, TypeError, KeyError, AttributeError, UnicodeDecodeError, RecursionError)
_LEN, _VARINT = protobuf.LEN, protobuf.VARINT


# --- protobuf: fields as spans, so what is not rewritten is copied byte for byte -----------------------------------


def _spans(buf: bytes) -> list[tuple[int, int, int, int, int]]:
    """(field number, wire type, start of the field's key, start of its value, end) for each field of a message."""
    out = []
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = protobuf.read_varint(buf, pos)
        no, wt = key >> 3, key & 7
        if no == 0:
            raise errors.DecodeError("protobuf: field number 0")
        if wt == _LEN:
            n, pos = protobuf.read_varint(buf, pos)
            vstart, pos = pos, pos + n
        elif wt == _VARINT:
            vstart = pos
            _, pos = protobuf.read_varint(buf, pos)
        elif wt == protobuf.FIXED64:
            vstart, pos = pos, pos + 8
        elif wt == protobuf.FIXED32:
            vstart, pos = pos, pos + 4
        else:
            raise errors.DecodeError(f"protobuf: unsupported wire type {wt}")
        if pos > end:
            raise errors.DecodeError("protobuf: field runs past the end of its message")
        out.append((no, wt, start, vstart, pos))
    return out


def _pb_strings(buf: bytes, wanted: dict[int, str]) -> dict[str, str]:
    found = {}
    for no, wt, _, v, e in _spans(buf):
        if wt == _LEN and no in wanted:
            found[wanted[no]] = buf[v:e].decode()
    return found


_ENDPOINT_WHERE = {6: "nodeName", 7: "zone"}  # discovery/v1 Endpoint: nodeName=6, zone=7


def _keep_pb(raw: bytes, local: Local) -> bytes | None:
    buf = bytes(raw)
    spans = _spans(buf)
    endpoints = [s for s in spans if s[0] == 2 and s[1] == _LEN]  # EndpointSlice.endpoints = 2
    kept = []
    for s in endpoints:
        where = _pb_strings(buf[s[3]:s[4]], _ENDPOINT_WHERE)
        if local(where.get("nodeName", ""), where.get("zone", "")):
            kept.append(s)
    if not kept or len(kept) == len(endpoints):
        return None
    dropped = {s[2] for s in endpoints} - {s[2] for s in kept}
    return b"".join(buf[s[2]:s[4]] for s in spans if s[2] not in dropped)


def _port_pb(buf: bytes, name_field: int, port_field: int, port: int, rewrite_any: bool) -> bytes:
    """An EndpointPort with its port set when its name is "https" (or when rewrite_any): fields kept in order."""
    spans = _spans(buf)
    names = [buf[v:e].decode() for no, wt, _, v, e in spans if no == name_field and wt == _LEN]
    if not rewrite_any and (names[-1] if names else "") != HTTPS_PORT_NAME:
        return buf
    out, done = [], False
    for no, wt, s, _, e in spans:
        if no == port_field and wt == _VARINT:
            out.append(protobuf.field_varint(port_field, port))
            done = True
        else:
            out.append(buf[s:e])
    if not done:  # a pointer port left unset: gogo writes fields in number order
        out = [buf[s:e] for no, _, s, _, e in spans if no < port_field] + [protobuf.field_varint(port_field, port)] \
            + [buf[s:e] for no, _, s, _, e in spans if no > port_field]
    return b"".join(out)


def _redirect_slice_pb(raw: bytes, ip: str, port: int) -> bytes | None:
    buf = bytes(raw)
    spans = _spans(buf)
    address_type = next((buf[v:e].decode() for no, wt, _, v, e in spans if no == 4 and wt == _LEN), "")
    if not _family_matches(address_type, ip):
        return None
    endpoints = [s for s in spans if s[0] == 2 and s[1] == _LEN]
    conditions = b"\x08\x01"  # EndpointConditions{ready: true}
    if endpoints:
        first = buf[endpoints[0][3]:endpoints[0][4]]
        conditions = next((first[v:e] for no, wt, _, v, e in _spans(first) if no == 2 and wt == _LEN), conditions)
    # Endpoint{addresses=1: [ip], conditions=2}: what gogo writes for an endpoint with only those set
    endpoint = protobuf.field_bytes(2, protobuf.field_bytes(1, ip.encode()) + protobuf.field_bytes(2, conditions))
    ports = [s for s in spans if s[0] == 3 and s[1] == _LEN]
    out, placed = [], False
    for no, wt, s, v, e in spans:
        if no == 2 and wt == _LEN:
            if not placed:
                out.append(endpoint)
                placed = True
        elif no == 3 and wt == _LEN:
            out.append(protobuf.field_bytes(3, _port_pb(buf[v:e], 1, 3, port, len(ports) == 1)))
        else:
            if no > 2 and not placed:
                out.append(endpoint)
                placed = True
            out.append(buf[s:e])
    if not placed:
        out.append(endpoint)
    new = b"".join(out)
    return None if new == buf else new


def _redirect_endpoints_pb(raw: bytes, ip: str, port: int) -> bytes | None:
    buf = bytes(raw)
    spans = _spans(buf)
    subsets = [buf[v:e] for no, wt, _, v, e in spans if no == 2 and wt == _LEN]  # Endpoints.subsets = 2
    ports: list[bytes] = []
    for sub in subsets:  # EndpointSubset{addresses=1, notReadyAddresses=2, ports=3}
        ports += [sub[v:e] for no, wt, _, v, e in _spans(sub) if no == 3 and wt == _LEN]
    if not ports:
        return None
    # core/v1 EndpointPort{name=1, port=2, protocol=3, appProtocol=4}; EndpointAddress{ip=1, hostname=3} (gogo
    # writes the non-pointer hostname even when empty)
    new_ports = [_port_pb(p, 1, 2, port, len(ports) == 1) for p in ports]
    address = protobuf.field_bytes(1, ip.encode()) + b"\x1a\x00"
    subset = protobuf.field_bytes(1, address) + b"".join(protobuf.field_bytes(3, p) for p in new_ports)
    out, placed = [], False
    for no, wt, s, _, e in spans:
        if no == 2 and wt == _LEN:
            if not placed:
                out.append(protobuf.field_bytes(2, subset))
                placed = True
        else:
            out.append(buf[s:e])
    new = b"".join(out)
    return None if new == buf else new


# --- JSON: members as spans of the text, so what is not rewritten is copied as it came -----------------------------

_DECODE = json.JSONDecoder().raw_decode
_WS = " \t\n\r"


def _skip_ws(s: str, i: int) -> int:
    while i < len(s) and s[i] in _WS:
        i += 1
    return i


def _members(s: str) -> list[tuple[str, Any, int, int]]:
    """(key, value, start, end of the value) of each member of the JSON object `s`, in order."""
    i = _skip_ws(s, 0)
    if s[i] != "{":
        raise ValueError("not a JSON object")
    i = _skip_ws(s, i + 1)
    out: list[tuple[str, Any, int, int]] = []
    if s[i] == "}":
        return out
    while True:
        key, i = _DECODE(s, i)
        i = _skip_ws(s, i)
        if s[i] != ":":
            raise ValueError("expected ':'")
        start = _skip_ws(s, i + 1)
        value, i = _DECODE(s, start)
        out.append((key, value, start, i))
        i = _skip_ws(s, i)
        if s[i] == "}":
            return out
        if s[i] != ",":
            raise ValueError("expected ',' or '}'")
        i = _skip_ws(s, i + 1)


def _elements(s: str, start: int) -> list[tuple[Any, int, int]]:
    """(value, start, end) of each element of the JSON array at s[start]."""
    if s[start] != "[":
        raise ValueError("not a JSON array")
    i = _skip_ws(s, start + 1)
    out: list[tuple[Any, int, int]] = []
    if s[i] == "]":
        return out
    while True:
        value, end = _DECODE(s, i)
        out.append((value, i, end))
        i = _skip_ws(s, end)
        if s[i] == "]":
            return out
        if s[i] != ",":
            raise ValueError("expected ',' or ']'")
        i = _skip_ws(s, i + 1)


def _splice(s: str, start: int, end: int, replacement: str) -> bytes:
    return (s[:start] + replacement + s[end:]).encode()


def _keep_json(obj: bytes, local: Local) -> bytes | None:
    s = jsonwire.compact(bytes(obj)).decode()
    member = next((m for m in _members(s) if m[0] == "endpoints"), None)
    if member is None or not isinstance(member[1], list):
        return None
    elements = _elements(s, member[2])
    kept = [(v, a, b) for v, a, b in elements
            if isinstance(v, dict) and local(str(v.get("nodeName") or ""), str(v.get("zone") or ""))]
    if not kept or len(kept) == len(elements):
        return None
    return _splice(s, member[2], member[3], "[" + ",".join(s[a:b] for _, a, b in kept) + "]")


def _port_json(port_doc: dict, port: int, rewrite_any: bool, key: str = "port") -> dict:
    if rewrite_any or port_doc.get("name") == HTTPS_PORT_NAME:
        if key in port_doc:
            port_doc = {k: (port if k == key else v) for k, v in port_doc.items()}
        else:  # Go writes struct fields in declaration order: name, protocol, port, appProtocol (discovery/v1)
            order = ("name", "protocol", "port", "appProtocol")
            port_doc = {k: port if k == key else port_doc[k] for k in order if k in port_doc or k == key}
    return port_doc


def _redirect_slice_json(obj: bytes, ip: str, port: int) -> bytes | None:
    s = jsonwire.compact(bytes(obj)).decode()
    members = {m[0]: m for m in _members(s)}
    if not _family_matches(str(members["addressType"][1]) if "addressType" in members else "", ip):
        return None
    edits: list[tuple[int, int, str]] = []
    old = members.get("endpoints")
    conditions = {"ready": True}
    if old is not None and isinstance(old[1], list) and old[1] and isinstance(old[1][0], dict):
        conditions = old[1][0].get("conditions", conditions)
    endpoints = jsonwire_dumps([{"addresses": [ip], "conditions": conditions}])
    if old is not None:
        edits.append((old[2], old[3], endpoints))
    ports = members.get("ports")
    if ports is not None and isinstance(ports[1], list):
        new_ports = [_port_json(p, port, len(ports[1]) == 1) if isinstance(p, dict) else p for p in ports[1]]
        edits.append((ports[2], ports[3], jsonwire_dumps(new_ports)))
    for start, end, text in sorted(edits, reverse=True):
        s = s[:start] + text + s[end:]
    new = s.encode()
    return None if new == jsonwire.compact(bytes(obj)) else new


def _redirect_endpoints_json(obj: bytes, ip: str, port: int) -> bytes | None:
    s = jsonwire.compact(bytes(obj)).decode()
    member = next((m for m in _members(s) if m[0] == "subsets"), None)
    if member is None or not isinstance(member[1], list):
        return None
    ports = [p for sub in member[1] if isinstance(sub, dict) for p in (sub.get("ports") or []) if isinstance(p, dict)]
    if not ports:
        return None
    subset = {"addresses": [{"ip": ip}], "ports": [_port_json(p, port, len(ports) == 1) for p in ports]}
    new = _splice(s, member[2], member[3], jsonwire_dumps([subset]))
    return None if new == s.encode() else new


def jsonwire_dumps(value: Any) -> str:
    """A JSON value as Go's encoding/json writes it, compact (strings escaped as jsonwire.go_string does)."""
    if isinstance(value, dict):
        return "{" + ",".join(jsonwire.go_string(k) + ":" + jsonwire_dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(jsonwire_dumps(v) for v in value) + "]"
    if isinstance(value, str):
        return jsonwire.go_string(value)
    if isinstance(value, float):
        raise ValueError("floats are not rewritten")  # no field rewritten here holds one; Go formats them its own way
    return json.dumps(value)


# --- the public rewrites ---------------------------------------------------------------------------------------


def _family_matches(address_type: str, ip: str) -> bool:
    """The slice's addressType (IPv4, IPv6, FQDN) fits the IP it would point at: a slice of the other family is left
    alone (its clients would not use an address of this one)."""
    version = ipaddress.ip_address(ip).version
    return address_type == f"IPv{version}"


def _guard(what: str, fn: Callable[..., bytes | None], *args: Any) -> bytes | None:
    try:
        return fn(*args)
    except errors.DecodeError:
        raise
    except _FOREIGN as e:
        raise errors.DecodeError(f"{what}: {e}") from e


def keep_endpoints(encoding: str, obj: bytes, local: Local) -> bytes | None:
    """An EndpointSlice with only its local endpoints; None when all or none are local (left as it is)."""
    if encoding == "protobuf":
        return _guard("EndpointSlice", _keep_pb, obj, local)
    return _guard("EndpointSlice", _keep_json, obj, local)


def redirect_slice(encoding: str, obj: bytes, ip: str, port: int) -> bytes | None:
    """An EndpointSlice whose endpoints are one endpoint at `ip` (conditions of the first endpoint it had, else
    ready) and whose https port is `port`; None when the address family differs or it is so already."""
    if encoding == "protobuf":
        return _guard("EndpointSlice", _redirect_slice_pb, obj, ip, port)
    return _guard("EndpointSlice", _redirect_slice_json, obj, ip, port)


def redirect_endpoints(encoding: str, obj: bytes, ip: str, port: int) -> bytes | None:
    """core/v1 Endpoints with one subset: `ip`, and its ports with https (or the only one) set to `port`."""
    if encoding == "protobuf":
        return _guard("Endpoints", _redirect_endpoints_pb, obj, ip, port)
    return _guard("Endpoints", _redirect_endpoints_json, obj, ip, port)


def slice_meta(encoding: str, obj: bytes) -> tuple[str, str, dict[str, str]]:
    """(namespace, name, labels) of an object in either encoding."""
    m = protobuf.object_meta(obj) if encoding == "protobuf" else jsonwire.object_meta(obj)
    return m.namespace, m.name, m.labels
