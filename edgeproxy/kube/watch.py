"""Incremental splitters for watch streams: feed any chunking of the body, get back complete events.

A protobuf watch is 4-byte big-endian length-prefixed frames (apimachinery pkg/util/framer/framer.go); a JSON watch is
one compact JSON document per line (Go's json.Encoder writes "\\n" after each, and a compact document has no raw
newline). The splitters only cut; decoding a frame is protobuf.decode_event / jsonwire.decode_event. Pure: no I/O.
Neighbours: protobuf, jsonwire; the proxy's recorder feeds them what it tees from upstream.
"""

from __future__ import annotations

import struct

from edgeproxy.kube import errors

# A bound on one event. The API server limits a request body to 3 MiB and etcd a value to 1.5 MiB by default;
# 64 MiB leaves room for any real object while keeping a corrupt length prefix from buffering without end.
MAX_FRAME = 64 * 1024 * 1024

_BE32 = struct.Struct(">I")


class _Splitter:
    """What both splitters share: the carry-over buffer, the frame bound, and staying failed once a bound broke."""

    __slots__ = ("_buf", "_failed", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._failed = False
        self.max_frame = max_frame

    @property
    def pending(self) -> bytes:
        """Bytes received but not yet part of a complete frame."""
        return bytes(self._buf)

    def _check(self) -> None:
        if self._failed:
            raise errors.DecodeError("watch: stream already failed to decode")


class ProtobufSplitter(_Splitter):
    """Cuts a protobuf watch body into frame bodies (the WatchEvent bytes, without the length prefix)."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._check()
        buf = self._buf
        if buf:
            buf += chunk
            data: bytes | bytearray = buf
        else:
            data = chunk  # fast path: frames are sliced straight out of the chunk, no copy into the buffer
        out: list[bytes] = []
        pos = 0
        end = len(data)
        unpack = _BE32.unpack_from
        max_frame = self.max_frame
        while end - pos >= 4:
            (n,) = unpack(data, pos)
            if n > max_frame:
                self._failed = True
                raise errors.DecodeError(f"watch: frame of {n} bytes exceeds the {max_frame} byte bound")
            nxt = pos + 4 + n
            if nxt > end:
                break
            out.append(bytes(data[pos + 4 : nxt]))
            pos = nxt
        if data is buf:
            del buf[:pos]
        elif pos < end:
            buf += data[pos:]
        return out


class JsonSplitter(_Splitter):
    """Cuts a JSON watch body into lines, each one event document (without its newline); blank lines are dropped."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> list[bytes]:
        self._check()
        buf = self._buf
        if b"\n" not in chunk:
            buf += chunk
            if len(buf) > self.max_frame:
                self._failed = True
                raise errors.DecodeError(f"watch: JSON event longer than the {self.max_frame} byte bound")
            return []
        parts = bytes(chunk).split(b"\n")
        if buf:
            buf += parts[0]
            parts[0] = bytes(buf)
            buf.clear()
        tail = parts.pop()
        if tail:
            buf += tail
        max_frame = self.max_frame
        out = []
        for line in parts:
            if len(line) > max_frame:
                self._failed = True
                raise errors.DecodeError(f"watch: JSON event longer than the {max_frame} byte bound")
            if line.strip():
                out.append(line.rstrip(b"\r"))
        if len(buf) > max_frame:
            self._failed = True
            raise errors.DecodeError(f"watch: JSON event longer than the {max_frame} byte bound")
        return out


def splitter_for(content_type: str) -> ProtobufSplitter | JsonSplitter:
    """The splitter for a watch response's Content-Type (application/json or the protobuf ;stream=watch type)."""
    base = content_type.split(";", 1)[0].strip().lower()
    if base == "application/vnd.kubernetes.protobuf":
        return ProtobufSplitter()
    if base == "application/json" or (base.startswith("application/") and base.endswith("+json")):
        return JsonSplitter()
    raise errors.DecodeError(f"watch: no splitter for content type {content_type!r}")
