"""An object rewrite applied to a whole response: a list, one object, or a watch stream, in JSON or protobuf.

`Rewrite` is a function of one object's bytes (a bare protobuf message, or a JSON object) returning new bytes, or
None to leave the object as it is. Applied here:
- to a list: each item; when none changed the body is returned as it came (the same bytes object), else the list is
  rebuilt around the items, untouched items with their exact bytes (protobuf.build_list / jsonwire.build_list write
  what the API server writes);
- to an object body: the object, re-wrapped when changed;
- to a watch stream: frame by frame (`WatchRewriter`), each untouched frame passed on byte for byte, a changed one
  re-encoded with its type; BOOKMARK and ERROR events pass untouched.

Pure: bytes in, bytes out, no I/O. Malformed bodies raise DecodeError (the caller decides to pass them on).
Neighbours: endpoints (the rewrites themselves), protobuf, jsonwire, watch (the splitters).
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from edgeproxy.kube import errors, jsonwire, protobuf, watch

Rewrite = Callable[[bytes], "bytes | None"]

_BE32 = struct.Struct(">I")
_PASS = frozenset({"BOOKMARK", "ERROR"})


def list_body(encoding: str, body: bytes, rewrite: Rewrite) -> tuple[bytes, int]:
    """(the list with each item rewritten, how many items changed); `body` itself when none did."""
    if encoding == "protobuf":
        u = protobuf.unwrap(body)
        parts = protobuf.parse_list(u.raw)
        items = list(parts.items)
        changed = _apply(items, rewrite)
        if not changed:
            return body, 0
        return protobuf.build_list(u.api_version, u.kind, parts.resource_version, items, parts.continue_,
                                   parts.remaining_item_count), changed
    jparts = jsonwire.parse_list(body)
    items = list(jparts.items)
    changed = _apply(items, rewrite)
    if not changed:
        return body, 0
    if jparts.pretty:  # an indented body (curl, ?pretty): the rebuilt one is compact, as client-go gets it
        items = [jsonwire.compact(i) for i in items]
    return jsonwire.build_list(jparts.kind, jparts.api_version, jparts.resource_version, items, jparts.continue_,
                               jparts.remaining_item_count), changed


def _apply(items: list[bytes], rewrite: Rewrite) -> int:
    changed = 0
    for i, item in enumerate(items):
        new = rewrite(item)
        if new is not None:
            items[i] = new
            changed += 1
    return changed


def object_body(encoding: str, body: bytes, rewrite: Rewrite) -> tuple[bytes, int]:
    """(the object body rewritten, 1) or (body, 0) when the rewrite left it as it is."""
    if encoding == "protobuf":
        u = protobuf.unwrap(body)
        new = rewrite(u.raw)
        return (body, 0) if new is None else (protobuf.wrap(u.api_version, u.kind, new), 1)
    obj = body.rstrip(b"\n")
    new = rewrite(obj)
    return (body, 0) if new is None else (new + b"\n", 1)


class WatchRewriter:
    """A watch body, chunk by chunk: feed() returns the bytes to pass on (whole frames only; a partial frame waits
    for the rest). `changed` counts the events rewritten so far; `errors` the frames that did not decode, passed on
    as they came. feed() raises DecodeError only when the stream cannot be cut into frames (a frame past
    watch.MAX_FRAME)."""

    __slots__ = ("_encoding", "_rewrite", "_splitter", "changed", "errors")

    def __init__(self, encoding: str, rewrite: Rewrite) -> None:
        self._encoding = encoding
        self._rewrite = rewrite
        self._splitter: watch.ProtobufSplitter | watch.JsonSplitter = (
            watch.ProtobufSplitter() if encoding == "protobuf" else watch.JsonSplitter())
        self.changed = 0
        self.errors = 0

    def feed(self, chunk: bytes) -> bytes:
        frames = self._splitter.feed(chunk)
        if not frames:
            return b""
        return b"".join(self._frame(f) for f in frames)

    def _frame(self, frame: bytes) -> bytes:
        try:
            return self._rewritten(frame)
        except errors.DecodeError:
            self.errors += 1
            return _BE32.pack(len(frame)) + frame if self._encoding == "protobuf" else frame + b"\n"

    def _rewritten(self, frame: bytes) -> bytes:
        if self._encoding == "protobuf":
            ev = protobuf.decode_event(frame)
            new = None if ev.type in _PASS else self._rewrite(ev.raw)
            if new is None:
                return _BE32.pack(len(frame)) + frame
            self.changed += 1
            return protobuf.encode_event(ev.type, ev.api_version, ev.kind, new)
        jev = jsonwire.decode_event(frame)
        new = None if jev.type in _PASS else self._rewrite(jev.obj)
        if new is None:
            return frame + b"\n"
        self.changed += 1
        return jsonwire.encode_event(jev.type, new)

