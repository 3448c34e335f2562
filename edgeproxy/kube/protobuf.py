"""Schema-less protobuf for the Kubernetes wire: the "k8s\\0" envelope, lists, watch frames, ObjectMeta.

Reads what the proxy needs without decoding whole objects and writes lists, objects and watch events from raw
item bytes. Pure: bytes in, values out. Neighbours: jsonwire (the same for JSON), watch (frame splitting).
"""

from __future__ import annotations

from collections.abc import Iterator

from edgeproxy.kube import errors

MAGIC = b"k8s\x00"
WATCH_CONTENT_TYPE = "application/vnd.kubernetes.protobuf;stream=watch"

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5


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
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field_bytes(no: int, data: bytes | memoryview) -> bytes:
    """A length-delimited field (string, bytes, embedded message)."""
    return encode_varint(no << 3 | LEN) + encode_varint(len(data)) + bytes(data)


def field_varint(no: int, n: int) -> bytes:
    return encode_varint(no << 3 | VARINT) + encode_varint(n)
