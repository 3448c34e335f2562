"""Schema-less protobuf for the Kubernetes wire: the "k8s\\0" envelope, lists, watch frames, ObjectMeta.

Reads what the proxy needs without decoding whole objects and writes lists, objects and watch events from raw
item bytes, byte for byte as kube-apiserver writes them (gogo-protobuf: fields in number order, non-pointer strings
always present even when empty). Pure: bytes in, values out; it does not split streams (watch does) and knows
nothing of HTTP. Neighbours: jsonwire (the same for JSON), watch (frame splitting), meta (the Meta value).

Field numbers: k8s.io/api */generated.proto, k8s.io/apimachinery pkg/apis/meta/v1/generated.proto and
pkg/runtime/generated.proto; summarised in shared/research/k8s-wire-semantics.md §2.

Every malformed input raises errors.DecodeError. The readers of the hot path (object_meta, extract, selector_fields,
decode_event) are hand-unrolled loops over `bytes` rather than iter_fields: a watch of pods runs them once per event,
and a generator plus a tuple per field costs several times what the loop does.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable, Iterator, Mapping

from edgeproxy.kube import errors, meta

MAGIC = b"k8s\x00"
WATCH_CONTENT_TYPE = "application/vnd.kubernetes.protobuf;stream=watch"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5

EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})

# Exceptions that a slice or index past the end, a bad UTF-8 string or a bogus length can raise inside the readers;
# each is turned into DecodeError at the public boundary.
_FOREIGN = (IndexError, ValueError, UnicodeDecodeError, TypeError, OverflowError, MemoryError, struct.error)

_BE32 = struct.Struct(">I")


@dataclasses.dataclass(frozen=True, slots=True)
class Unknown:
    """runtime.Unknown: what follows the magic in every protobuf body. raw is the bare object message."""

    api_version: str
    kind: str
    raw: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ListParts:
    """An XList taken apart: ListMeta fields and each item's exact bytes (bare messages, no envelope)."""

    resource_version: str
    continue_: str
    remaining_item_count: int | None
    items: list[bytes]


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One metav1.WatchEvent: its type and the object, unwrapped from its embedded envelope."""

    type: str
    api_version: str
    kind: str
    raw: bytes


# --- low level -------------------------------------------------------------------------------------------------


def read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode the varint at `pos`; return (value, position after it)."""
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise errors.DecodeError("protobuf: truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise errors.DecodeError("protobuf: varint longer than 10 bytes")


def iter_fields(buf: bytes | memoryview) -> Iterator[tuple[int, int, int | bytes | memoryview]]:
    """Yield (field number, wire type, value) for each field of one message; LEN values are slices of `buf`."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos)
        field, wt = key >> 3, key & 7
        if field == 0:
            raise errors.DecodeError("protobuf: field number 0")
        if wt == LEN:
            n, pos = read_varint(buf, pos)
            if pos + n > end:
                raise errors.DecodeError("protobuf: length-delimited field runs past the end")
            yield field, wt, buf[pos : pos + n]
            pos += n
        elif wt == VARINT:
            v, pos = read_varint(buf, pos)
            yield field, wt, v
        elif wt == FIXED64:
            if pos + 8 > end:
                raise errors.DecodeError("protobuf: truncated fixed64")
            yield field, wt, int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wt == FIXED32:
            if pos + 4 > end:
                raise errors.DecodeError("protobuf: truncated fixed32")
            yield field, wt, int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:
            raise errors.DecodeError(f"protobuf: unsupported wire type {wt}")


def encode_varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1  # int64 negatives are ten-byte two's complement varints
    if n < 0x80:
        return _SMALL[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL = [bytes((i,)) for i in range(128)]


def field_bytes(no: int, data: bytes | memoryview) -> bytes:
    """A length-delimited field (string, bytes, embedded message)."""
    return encode_varint(no << 3 | LEN) + encode_varint(len(data)) + bytes(data)


def field_varint(no: int, n: int) -> bytes:
    return encode_varint(no << 3 | VARINT) + encode_varint(n)


def _field_str(no: int, s: str) -> bytes:
    return field_bytes(no, s.encode())


# --- hot-path helpers (unchecked: callers catch _FOREIGN and check positions) ------------------------------------


def _skip(buf: bytes, pos: int, key: int) -> int:
    """Skip the value of a non-LEN field whose key was just read; return the position after it."""
    wt = key & 7
    if wt == VARINT:
        while buf[pos] >= 0x80:
            pos += 1
        return pos + 1
    if wt == FIXED64:
        return pos + 8
    if wt == FIXED32:
        return pos + 4
    raise errors.DecodeError(f"protobuf: unsupported wire type {wt}")


def _bad(msg: str) -> errors.DecodeError:
    return errors.DecodeError("protobuf: " + msg)


def _find(buf: bytes, pos: int, end: int, want: int) -> tuple[int, int]:
    """Span of the last LEN field `want` of the message buf[pos:end] ((-1, -1) if absent); validates the framing."""
    s = e = -1
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
            b = buf[pos]
            if b < 0x80:
                key = (key & 0x7F) | (b << 7)
                pos += 1
            else:
                key, pos = read_varint(buf, pos - 1)
        if key & 7 == 2:
            n = buf[pos]
            pos += 1
            if n >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                b = buf[pos]
                if b < 0x80:
                    n = (n & 0x7F) | (b << 7)
                    pos += 1
                else:
                    n, pos = read_varint(buf, pos - 1)
            nxt = pos + n
            if nxt > end:
                raise _bad("length-delimited field runs past the end")
            if key >> 3 == want:
                s, e = pos, nxt
            pos = nxt
        elif key < 8:
            raise _bad("field number 0")
        else:
            pos = _skip(buf, pos, key)
    if pos != end:
        raise _bad("message runs past its end")
    return s, e


def _entry(buf: bytes, pos: int, end: int) -> tuple[str, str]:
    """A map<string,string> entry {key=1, value=2}."""
    k = v = ""
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
            b = buf[pos]
            if b < 0x80:
                key = (key & 0x7F) | (b << 7)
                pos += 1
            else:
                key, pos = read_varint(buf, pos - 1)
        if key & 7 == 2:
            n = buf[pos]
            pos += 1
            if n >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                b = buf[pos]
                if b < 0x80:
                    n = (n & 0x7F) | (b << 7)
                    pos += 1
                else:
                    n, pos = read_varint(buf, pos - 1)
            nxt = pos + n
            if nxt > end:
                raise _bad("map entry runs past the end")
            if key == 0x0A:
                k = buf[pos:nxt].decode()
            elif key == 0x12:
                v = buf[pos:nxt].decode()
            pos = nxt
        elif key < 8:
            raise _bad("field number 0")
        else:
            pos = _skip(buf, pos, key)
    if pos != end:
        raise _bad("map entry runs past its end")
    return k, v


def _time(buf: bytes, pos: int, end: int) -> str:
    """metav1.Time {seconds=1, nanos=2} as its RFC 3339 JSON form."""
    seconds = nanos = 0
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
            b = buf[pos]
            if b < 0x80:
                key = (key & 0x7F) | (b << 7)
                pos += 1
            else:
                key, pos = read_varint(buf, pos - 1)
        if key == 0x08:
            seconds, pos = read_varint(buf, pos)
            if seconds >= 1 << 63:
                seconds -= 1 << 64
        elif key == 0x10:
            nanos, pos = read_varint(buf, pos)
        elif key & 7 == 2:
            n, pos = read_varint(buf, pos)
            pos += n
        elif key < 8:
            raise _bad("field number 0")
        else:
            pos = _skip(buf, pos, key)
    if pos != end:
        raise _bad("time runs past its end")
    return meta.rfc3339(seconds, nanos)


def _meta(buf: bytes, pos: int, end: int) -> meta.Meta:
    """ObjectMeta at buf[pos:end]. managedFields (17), ownerReferences and the rest are skipped by length."""
    name = namespace = uid = rv = ""
    deletion = None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
            b = buf[pos]
            if b < 0x80:
                key = (key & 0x7F) | (b << 7)
                pos += 1
            else:
                key, pos = read_varint(buf, pos - 1)
        if key & 7 == 2:
            n = buf[pos]
            pos += 1
            if n >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                b = buf[pos]
                if b < 0x80:
                    n = (n & 0x7F) | (b << 7)
                    pos += 1
                else:
                    n, pos = read_varint(buf, pos - 1)
            nxt = pos + n
            if nxt > end:
                raise _bad("ObjectMeta field runs past the end")
            if key == 0x0A:  # 1 name
                name = buf[pos:nxt].decode()
            elif key == 0x1A:  # 3 namespace
                namespace = buf[pos:nxt].decode()
            elif key == 0x2A:  # 5 uid
                uid = buf[pos:nxt].decode()
            elif key == 0x32:  # 6 resourceVersion
                rv = buf[pos:nxt].decode()
            elif key == 0x5A or key == 0x62:  # 11 labels, 12 annotations: map entries {key=1, value=2}
                # Fast path for an entry as gogo writes it, key then value, both shorter than 128 bytes (every
                # label is); anything else goes through the general reader.
                kl = buf[pos + 1]
                ke = pos + 2 + kl
                if buf[pos] == 0x0A and kl < 0x80 and ke + 2 <= nxt and buf[ke] == 0x12 and ke + 2 + buf[ke + 1] == nxt:
                    k = buf[pos + 2 : ke].decode()
                    v = buf[ke + 2 : nxt].decode()
                else:
                    k, v = _entry(buf, pos, nxt)
                if key == 0x5A:
                    labels[k] = v
                else:
                    annotations[k] = v
            elif key == 0x4A:  # 9 deletionTimestamp
                deletion = _time(buf, pos, nxt)
            pos = nxt
        elif key & 7 == 0 and key > 7:  # varint (int, bool, enum): skipped inline
            while buf[pos] >= 0x80:
                pos += 1
            pos += 1
        elif key < 8:
            raise _bad("field number 0")
        else:
            pos = _skip(buf, pos, key)
    if pos != end:
        raise _bad("ObjectMeta runs past its end")
    return meta.Meta(name, namespace, uid, rv, labels, annotations, deletion)


def _strings(buf: bytes, pos: int, end: int, want: Mapping[int, str], out: dict[str, str]) -> None:
    """Decode the string fields of buf[pos:end] whose *key* (field << 3 | LEN) is in `want` into out[want[key]];
    varint keys in `want` become "true"/"false" (Go's strconv.FormatBool of a bool field)."""
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
            b = buf[pos]
            if b < 0x80:
                key = (key & 0x7F) | (b << 7)
                pos += 1
            else:
                key, pos = read_varint(buf, pos - 1)
        if key & 7 == 2:
            n = buf[pos]
            pos += 1
            if n >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                b = buf[pos]
                if b < 0x80:
                    n = (n & 0x7F) | (b << 7)
                    pos += 1
                else:
                    n, pos = read_varint(buf, pos - 1)
            nxt = pos + n
            if nxt > end:
                raise _bad("field runs past the end")
            if key in want:
                out[want[key]] = buf[pos:nxt].decode()
            pos = nxt
        elif key in want:  # a bool (every key in `want` has a field number > 0)
            v, pos = read_varint(buf, pos)
            out[want[key]] = "true" if v else "false"
        elif key & 7 == 0 and key > 7:  # varint (int, bool, enum): skipped inline
            while buf[pos] >= 0x80:
                pos += 1
            pos += 1
        elif key < 8:
            raise _bad("field number 0")
        else:
            pos = _skip(buf, pos, key)
    if pos != end:
        raise _bad("message runs past its end")


def _key(no: int, wt: int = LEN) -> int:
    return no << 3 | wt


# {key: selector field} tables for _strings, and each resource's fields with the value the API server gives an
# absent one. Field numbers from k8s.io/api core/v1 generated.proto; the selectable fields from kubernetes
# pkg/registry/core/*/strategy.go ToSelectableFields (and pkg/apis/core/v1/conversion.go). Pods have their own
# readers (_pod_spec, _pod_status). "status.podIPs" (all pod IPs, comma-joined) is not an upstream selector field:
# it is offered for selectors.py to accept or refuse.
_NODE_SPEC = {_key(4, VARINT): "spec.unschedulable"}
_SERVICE_SPEC = {_key(3): "spec.clusterIP", _key(4): "spec.type"}
_NAMESPACE_STATUS = {_key(1): "status.phase"}
_EVENT_TOP = {_key(3): "reason", _key(9): "type", _key(14): "reportingComponent"}
_EVENT_INVOLVED = {_key(1): "involvedObject.kind", _key(2): "involvedObject.namespace",
                   _key(3): "involvedObject.name", _key(4): "involvedObject.uid",
                   _key(5): "involvedObject.apiVersion", _key(6): "involvedObject.resourceVersion",
                   _key(7): "involvedObject.fieldPath"}
_EVENT_SOURCE = {_key(1): "source"}  # "source" selects on source.component

_DEFAULTS: dict[str, dict[str, str]] = {
    "pods": {"spec.nodeName": "", "spec.restartPolicy": "", "spec.schedulerName": "", "spec.serviceAccountName": "",
             "spec.hostNetwork": "false", "status.phase": "", "status.podIP": "", "status.podIPs": "",
             "status.nominatedNodeName": ""},
    "nodes": {"spec.unschedulable": "false"},
    "services": {"spec.clusterIP": "", "spec.type": ""},
    "secrets": {"type": ""},
    "namespaces": {"status.phase": ""},
    "events": dict.fromkeys([*_EVENT_INVOLVED.values(), "reason", "type", "reportingComponent", "source"], ""),
    "replicationcontrollers": {"status.replicas": "0"},
}


def _pod_spec(buf: bytes, pos: int, end: int, out: dict[str, str]) -> None:
    """PodSpec: restartPolicy=3, serviceAccountName=8, nodeName=10, hostNetwork=11 (bool), schedulerName=19.
    An if-chain on the key rather than _strings' table: the pod spec is the widest message of the hot path."""
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:
            b = buf[pos]
            if b < 0x80:
                key = (key & 0x7F) | (b << 7)
                pos += 1
            else:
                key, pos = read_varint(buf, pos - 1)
        if key & 7 == 2:
            n = buf[pos]
            pos += 1
            if n >= 0x80:
                b = buf[pos]
                if b < 0x80:
                    n = (n & 0x7F) | (b << 7)
                    pos += 1
                else:
                    n, pos = read_varint(buf, pos - 1)
            nxt = pos + n
            if nxt > end:
                raise _bad("PodSpec field runs past the end")
            if key < 0x53:
                if key == 0x52:
                    out["spec.nodeName"] = buf[pos:nxt].decode()
                elif key == 0x1A:
                    out["spec.restartPolicy"] = buf[pos:nxt].decode()
                elif key == 0x42:
                    out["spec.serviceAccountName"] = buf[pos:nxt].decode()
            elif key == 0x9A:
                out["spec.schedulerName"] = buf[pos:nxt].decode()
            pos = nxt
        elif key == 0x58:
            v, pos = read_varint(buf, pos)
            out["spec.hostNetwork"] = "true" if v else "false"
        elif key & 7 == 0 and key > 7:
            while buf[pos] >= 0x80:
                pos += 1
            pos += 1
        elif key < 8:
            raise _bad("field number 0")
        else:
            pos = _skip(buf, pos, key)
    if pos != end:
        raise _bad("PodSpec runs past its end")


def _pod_status(buf: bytes, pos: int, end: int, out: dict[str, str]) -> None:
    ips: list[str] = []
    legacy = ""
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
            b = buf[pos]
            if b < 0x80:
                key = (key & 0x7F) | (b << 7)
                pos += 1
            else:
                key, pos = read_varint(buf, pos - 1)
        if key & 7 == 2:
            n = buf[pos]
            pos += 1
            if n >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                b = buf[pos]
                if b < 0x80:
                    n = (n & 0x7F) | (b << 7)
                    pos += 1
                else:
                    n, pos = read_varint(buf, pos - 1)
            nxt = pos + n
            if nxt > end:
                raise _bad("PodStatus field runs past the end")
            if key == 0x0A:  # 1 phase
                out["status.phase"] = buf[pos:nxt].decode()
            elif key == 0x62:  # 12 podIPs: PodIP{ip=1}
                s, e = _find(buf, pos, nxt, 1)
                ips.append(buf[s:e].decode() if s >= 0 else "")
            elif key == 0x32:  # 6 podIP (legacy single IP)
                legacy = buf[pos:nxt].decode()
            elif key == 0x5A:  # 11 nominatedNodeName
                out["status.nominatedNodeName"] = buf[pos:nxt].decode()
            pos = nxt
        elif key & 7 == 0 and key > 7:  # varint (int, bool, enum): skipped inline
            while buf[pos] >= 0x80:
                pos += 1
            pos += 1
        elif key < 8:
            raise _bad("field number 0")
        else:
            pos = _skip(buf, pos, key)
    if pos != end:
        raise _bad("PodStatus runs past its end")
    # v1 → internal conversion: podIPs[0] is the truth; a lone podIP becomes podIPs (core/v1 conversion.go).
    if not ips and legacy:
        ips.append(legacy)
    out["status.podIP"] = ips[0] if ips else ""
    out["status.podIPs"] = ",".join(ips)


def _top(buf: bytes, pos: int, end: int, resource: str, out: dict[str, str]) -> meta.Meta | None:
    """One pass over an object's top-level fields: the ObjectMeta and the resource's selectable fields."""
    m = None
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
            b = buf[pos]
            if b < 0x80:
                key = (key & 0x7F) | (b << 7)
                pos += 1
            else:
                key, pos = read_varint(buf, pos - 1)
        if key & 7 == 2:
            n = buf[pos]
            pos += 1
            if n >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                b = buf[pos]
                if b < 0x80:
                    n = (n & 0x7F) | (b << 7)
                    pos += 1
                else:
                    n, pos = read_varint(buf, pos - 1)
            nxt = pos + n
            if nxt > end:
                raise _bad("field runs past the end")
            if key == 0x0A:
                m = _meta(buf, pos, nxt)
            elif resource == "pods":
                if key == 0x12:
                    _pod_spec(buf, pos, nxt, out)
                elif key == 0x1A:
                    _pod_status(buf, pos, nxt, out)
            elif resource == "":
                pass
            elif resource == "nodes":
                if key == 0x12:
                    _strings(buf, pos, nxt, _NODE_SPEC, out)
            elif resource == "services":
                if key == 0x12:
                    _strings(buf, pos, nxt, _SERVICE_SPEC, out)
            elif resource == "secrets":
                if key == 0x1A:  # 3 type
                    out["type"] = buf[pos:nxt].decode()
            elif resource == "namespaces":
                if key == 0x1A:
                    _strings(buf, pos, nxt, _NAMESPACE_STATUS, out)
            elif resource == "events":
                if key == 0x12:
                    _strings(buf, pos, nxt, _EVENT_INVOLVED, out)
                elif key == 0x2A:
                    _strings(buf, pos, nxt, _EVENT_SOURCE, out)
                elif key in _EVENT_TOP:
                    out[_EVENT_TOP[key]] = buf[pos:nxt].decode()
            elif resource == "replicationcontrollers" and key == 0x1A:  # status{replicas=1}
                s = pos
                while s < nxt:  # ReplicationControllerStatus: replicas=1 is a varint
                    k2 = buf[s]
                    s += 1
                    if k2 >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                        b = buf[s]
                        if b < 0x80:
                            k2 = (k2 & 0x7F) | (b << 7)
                            s += 1
                        else:
                            k2, s = read_varint(buf, s - 1)
                    if k2 == 0x08:
                        v, s = read_varint(buf, s)
                        out["status.replicas"] = str(v - (1 << 64) if v >= 1 << 63 else v)
                    elif k2 & 7 == 2:
                        n2, s = read_varint(buf, s)
                        s += n2
                    elif k2 < 8:
                        raise _bad("field number 0")
                    else:
                        s = _skip(buf, s, k2)
                if s != nxt:
                    raise _bad("status runs past its end")
            pos = nxt
        elif key & 7 == 0 and key > 7:  # varint (int, bool, enum): skipped inline
            while buf[pos] >= 0x80:
                pos += 1
            pos += 1
        elif key < 8:
            raise _bad("field number 0")
        else:
            pos = _skip(buf, pos, key)
    if pos != end:
        raise _bad("object runs past its end")
    return m


_EMPTY_META = meta.Meta("", "", "", "", {}, {}, None)


def _as_bytes(raw: bytes | bytearray | memoryview) -> bytes:
    return raw if type(raw) is bytes else bytes(raw)


def extract(resource: str, raw: bytes) -> tuple[meta.Meta, dict[str, str]]:
    """(ObjectMeta, selectable fields) of a bare object in one pass. resource is the plural ("pods"); fields
    always hold metadata.name and metadata.namespace plus the resource's own (selectors.supported_fields)."""
    buf = _as_bytes(raw)
    defaults = _DEFAULTS.get(resource)
    out = defaults.copy() if defaults is not None else {}
    if defaults is None:
        resource = ""
    try:
        m = _top(buf, 0, len(buf), resource, out)
    except _FOREIGN as e:
        raise _bad(f"malformed object: {e}") from e
    if m is None:
        m = _EMPTY_META
    if resource == "events" and not out["source"]:
        out["source"] = out["reportingComponent"]  # source.component, else reportingComponent (event strategy.go)
    out["metadata.name"] = m.name
    out["metadata.namespace"] = m.namespace
    return m, out


def object_meta(raw: bytes) -> meta.Meta:
    """The ObjectMeta (field 1) of a bare object message."""
    return extract("", raw)[0]


def selector_fields(resource: str, raw: bytes) -> dict[str, str]:
    """The field-selector fields of a bare object of `resource` (plural), as the API server computes them."""
    return extract(resource, raw)[1]


def metadata_field(raw: bytes) -> bytes:
    """Field 1 of an object: its ObjectMeta bytes, which are also PartialObjectMetadata's bytes (wire brief §4)."""
    buf = _as_bytes(raw)
    try:
        s, e = _find(buf, 0, len(buf), 1)
    except _FOREIGN as exc:
        raise _bad(f"malformed object: {exc}") from exc
    return buf[s:e] if s >= 0 else b""


def partial_metadata(raw: bytes) -> bytes:
    """The PartialObjectMetadata message of an object: {metadata=1}, i.e. the object's field 1 with its tag. Items
    of a PartialObjectMetadataList (meta.k8s.io/v1); apiserver handlers/response.go asPartialObjectMetadataList."""
    return field_bytes(1, metadata_field(raw))


# --- envelope -------------------------------------------------------------------------------------------------


def unwrap(body: bytes) -> Unknown:
    """Take a "k8s\\0" + runtime.Unknown body apart. runtime.TypeMeta is {apiVersion=1, kind=2}."""
    buf = _as_bytes(body)
    if buf[:4] != MAGIC:
        raise _bad("body does not start with the k8s\\0 magic")
    try:
        return _unknown(buf, 4, len(buf))
    except _FOREIGN as e:
        raise _bad(f"malformed envelope: {e}") from e


def _unknown(buf: bytes, pos: int, end: int) -> Unknown:
    api_version = kind = ""
    raw = b""
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
            b = buf[pos]
            if b < 0x80:
                key = (key & 0x7F) | (b << 7)
                pos += 1
            else:
                key, pos = read_varint(buf, pos - 1)
        if key & 7 == 2:
            n = buf[pos]
            pos += 1
            if n >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                b = buf[pos]
                if b < 0x80:
                    n = (n & 0x7F) | (b << 7)
                    pos += 1
                else:
                    n, pos = read_varint(buf, pos - 1)
            nxt = pos + n
            if nxt > end:
                raise _bad("Unknown field runs past the end")
            if key == 0x0A:
                api_version, kind = _typemeta(buf, pos, nxt)
            elif key == 0x12:
                raw = buf[pos:nxt]
            pos = nxt
        elif key < 8:
            raise _bad("field number 0")
        else:
            pos = _skip(buf, pos, key)
    if pos != end:
        raise _bad("Unknown runs past its end")
    return Unknown(api_version, kind, raw)


def _typemeta(buf: bytes, pos: int, end: int) -> tuple[str, str]:
    api_version, kind = _entry(buf, pos, end)  # same shape as a map entry: two strings, fields 1 and 2
    return api_version, kind


def _envelope_head(api_version: str, kind: str, raw_len: int) -> bytes:
    tm = _field_str(1, api_version) + _field_str(2, kind)
    return MAGIC + b"\x0a" + encode_varint(len(tm)) + tm + b"\x12" + encode_varint(raw_len)


_ENVELOPE_TAIL = b"\x1a\x00\x22\x00"  # contentEncoding and contentType: always present, always empty


def wrap(api_version: str, kind: str, raw: bytes) -> bytes:
    """The body kube-apiserver sends for one object: magic + Unknown{typeMeta, raw, "", ""}."""
    return b"".join((_envelope_head(api_version, kind, len(raw)), raw, _ENVELOPE_TAIL))


# --- lists ----------------------------------------------------------------------------------------------------


def parse_list(raw: bytes) -> ListParts:
    """An XList message {metadata=1 ListMeta, items=2}: ListMeta fields and each item's bytes."""
    buf = _as_bytes(raw)
    rv = cont = ""
    remaining: int | None = None
    items: list[bytes] = []
    append = items.append
    end = len(buf)
    try:
        pos = 0
        while pos < end:
            key = buf[pos]
            pos += 1
            if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                b = buf[pos]
                if b < 0x80:
                    key = (key & 0x7F) | (b << 7)
                    pos += 1
                else:
                    key, pos = read_varint(buf, pos - 1)
            if key & 7 == 2:
                n = buf[pos]
                pos += 1
                if n >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                    b = buf[pos]
                    if b < 0x80:
                        n = (n & 0x7F) | (b << 7)
                        pos += 1
                    else:
                        n, pos = read_varint(buf, pos - 1)
                nxt = pos + n
                if nxt > end:
                    raise _bad("list field runs past the end")
                if key == 0x12:
                    append(buf[pos:nxt])
                elif key == 0x0A:
                    rv, cont, remaining = _list_meta(buf, pos, nxt)
                pos = nxt
            elif key < 8:
                raise _bad("field number 0")
            else:
                pos = _skip(buf, pos, key)
        if pos != end:
            raise _bad("list runs past its end")
    except _FOREIGN as e:
        raise _bad(f"malformed list: {e}") from e
    return ListParts(rv, cont, remaining, items)


def _list_meta(buf: bytes, pos: int, end: int) -> tuple[str, str, int | None]:
    rv = cont = ""
    remaining = None
    while pos < end:
        key = buf[pos]
        pos += 1
        if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
            b = buf[pos]
            if b < 0x80:
                key = (key & 0x7F) | (b << 7)
                pos += 1
            else:
                key, pos = read_varint(buf, pos - 1)
        if key & 7 == 2:
            n, pos = read_varint(buf, pos)
            nxt = pos + n
            if nxt > end:
                raise _bad("ListMeta field runs past the end")
            if key == 0x12:
                rv = buf[pos:nxt].decode()
            elif key == 0x1A:
                cont = buf[pos:nxt].decode()
            pos = nxt
        elif key == 0x20:
            remaining, pos = read_varint(buf, pos)
            if remaining >= 1 << 63:
                remaining -= 1 << 64
        elif key < 8:
            raise _bad("field number 0")
        else:
            pos = _skip(buf, pos, key)
    if pos != end:
        raise _bad("ListMeta runs past its end")
    return rv, cont, remaining


def list_meta_bytes(resource_version: str, continue_: str = "", remaining_item_count: int | None = None) -> bytes:
    """ListMeta{selfLink="", resourceVersion, continue, remainingItemCount?} as gogo-protobuf writes it."""
    out = b"\x0a\x00" + _field_str(2, resource_version) + _field_str(3, continue_)
    if remaining_item_count is not None:
        out += field_varint(4, remaining_item_count)
    return out


def build_list(api_version: str, kind: str, resource_version: str, items: Iterable[bytes], continue_: str = "",
               remaining_item_count: int | None = None) -> bytes:
    """The wrapped XList body the API server sends, from bare item messages; one join, no intermediate copies."""
    lm = list_meta_bytes(resource_version, continue_, remaining_item_count)
    parts = [b"", b"\x0a", encode_varint(len(lm)), lm]
    append = parts.append
    size = 1 + len(parts[2]) + len(lm)
    for item in items:
        n = len(item)
        head = b"\x12" + (_SMALL[n] if n < 0x80 else encode_varint(n))
        append(head)
        append(item)
        size += len(head) + n
    parts[0] = _envelope_head(api_version, kind, size)
    append(_ENVELOPE_TAIL)
    return b"".join(parts)


# --- watch ----------------------------------------------------------------------------------------------------


def decode_event(frame: bytes) -> Event:
    """A watch frame's body (after the 4-byte length): WatchEvent{type=1, object=2 RawExtension{raw=1}}, whose raw
    holds a full "k8s\\0" + Unknown envelope (apiserver handlers/watch.go)."""
    buf = _as_bytes(frame)
    end = len(buf)
    etype = ""
    os_ = oe = -1
    try:
        pos = 0
        while pos < end:
            key = buf[pos]
            pos += 1
            if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                b = buf[pos]
                if b < 0x80:
                    key = (key & 0x7F) | (b << 7)
                    pos += 1
                else:
                    key, pos = read_varint(buf, pos - 1)
            if key & 7 == 2:
                n = buf[pos]
                pos += 1
                if n >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                    b = buf[pos]
                    if b < 0x80:
                        n = (n & 0x7F) | (b << 7)
                        pos += 1
                    else:
                        n, pos = read_varint(buf, pos - 1)
                nxt = pos + n
                if nxt > end:
                    raise _bad("WatchEvent field runs past the end")
                if key == 0x0A:
                    etype = buf[pos:nxt].decode()
                elif key == 0x12:
                    os_, oe = pos, nxt
                pos = nxt
            elif key < 8:
                raise _bad("field number 0")
            else:
                pos = _skip(buf, pos, key)
        if pos != end:
            raise _bad("WatchEvent runs past its end")
        if etype not in EVENT_TYPES:
            raise _bad(f"unknown watch event type {etype[:40]!r}")
        if os_ < 0:
            raise _bad("watch event without an object")
        s, e = _find(buf, os_, oe, 1)
        if s < 0:
            raise _bad("watch event object without raw bytes")
        if buf[s : s + 4] != MAGIC or e - s < 4:
            raise _bad("watch event object does not start with the k8s\\0 magic")
        u = _unknown(buf, s + 4, e)
    except _FOREIGN as exc:
        raise _bad(f"malformed watch event: {exc}") from exc
    return Event(etype, u.api_version, u.kind, u.raw)


def encode_event(type: str, api_version: str, kind: str, raw: bytes) -> bytes:
    """One watch frame: 4-byte big-endian length + WatchEvent{type, RawExtension{raw=wrapped object}}."""
    head = _envelope_head(api_version, kind, len(raw))
    inner_len = len(head) + len(raw) + len(_ENVELOPE_TAIL)  # the wrapped object
    tb = type.encode()
    ext_len = 1 + len(encode_varint(inner_len)) + inner_len  # RawExtension{raw=1}
    prefix = (b"\x0a" + encode_varint(len(tb)) + tb + b"\x12" + encode_varint(ext_len) + b"\x0a"
              + encode_varint(inner_len))
    total = len(prefix) + inner_len
    return b"".join((_BE32.pack(total), prefix, head, raw, _ENVELOPE_TAIL))


# Empty spec/status a Go Pod carries in a BOOKMARK (every non-pointer string/bool/int written, all zero): copied
# from a recorded bookmark so our bookmarks are the bytes the API server sends. Other kinds get metadata only,
# which every client decodes the same way (a bookmark is read for metadata.resourceVersion alone).
_BOOKMARK_TAIL = {
    "Pod": bytes.fromhex("121c1a00320042004a0052005800600068008201008a01009a0100c201"
                         "001a100a001a0022002a0032004a005a007200"),
}


def bookmark_raw(resource_version: str, annotations: Mapping[str, str] | None = None, kind: str = "") -> bytes:
    """A bare object with only metadata.resourceVersion (and annotations, e.g. k8s.io/initial-events-end) set,
    as the API server writes BOOKMARK objects; kind="Pod" adds the zero spec/status Go writes for a Pod."""
    om = [b"\x0a\x00\x12\x00\x1a\x00\x22\x00\x2a\x00", _field_str(6, resource_version), b"\x38\x00\x42\x00"]
    for k in sorted(annotations or ()):  # gogo writes map entries sorted by key
        entry = _field_str(1, k) + _field_str(2, annotations[k])
        om.append(field_bytes(12, entry))
    m = b"".join(om)
    return field_bytes(1, m) + _BOOKMARK_TAIL.get(kind, b"")


# --- Status ---------------------------------------------------------------------------------------------------


def parse_status(raw: bytes) -> dict[str, object]:
    """A bare metav1.Status {metadata=1 ListMeta, status=2, message=3, reason=4, details=5, code=6} as the dict its
    JSON form decodes to (details left out: the proxy reads only status, reason, message and code)."""
    buf = _as_bytes(raw)
    out: dict[str, object] = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
    names = {0x12: "status", 0x1A: "message", 0x22: "reason"}
    end = len(buf)
    try:
        pos = 0
        while pos < end:
            key = buf[pos]
            pos += 1
            if key >= 0x80:  # two-byte varints inline: keys of fields 16+, lengths < 16 KiB
                b = buf[pos]
                if b < 0x80:
                    key = (key & 0x7F) | (b << 7)
                    pos += 1
                else:
                    key, pos = read_varint(buf, pos - 1)
            if key & 7 == 2:
                n, pos = read_varint(buf, pos)
                nxt = pos + n
                if nxt > end:
                    raise _bad("Status field runs past the end")
                if key in names:
                    out[names[key]] = buf[pos:nxt].decode()
                elif key == 0x0A:
                    rv, cont, remaining = _list_meta(buf, pos, nxt)
                    md: dict[str, object] = {}
                    if rv:
                        md["resourceVersion"] = rv
                    if cont:
                        md["continue"] = cont
                    if remaining is not None:
                        md["remainingItemCount"] = remaining
                    out["metadata"] = md
                pos = nxt
            elif key == 0x30:
                code, pos = read_varint(buf, pos)
                out["code"] = code - (1 << 64) if code >= 1 << 63 else code
            elif key < 8:
                raise _bad("field number 0")
            else:
                pos = _skip(buf, pos, key)
        if pos != end:
            raise _bad("Status runs past its end")
    except _FOREIGN as e:
        raise _bad(f"malformed Status: {e}") from e
    return out
