"""The object metadata both encodings yield: one value type, so protobuf and JSON answers compare equal.

Holds values only; the readers are protobuf.object_meta and jsonwire.object_meta. Neighbours: protobuf, jsonwire.
"""

from __future__ import annotations

import dataclasses
import datetime


@dataclasses.dataclass(frozen=True, slots=True)
class Meta:
    """The ObjectMeta fields the cache keys, filters and orders by. Strings are "" when the server left them out."""

    name: str
    namespace: str
    uid: str
    resource_version: str
    labels: dict[str, str]
    annotations: dict[str, str]
    deletion_timestamp: str | None = None


def rfc3339(seconds: int, nanos: int = 0) -> str:
    """metav1.Time as its JSON form: RFC 3339, UTC, whole seconds (apimachinery meta/v1 time.go MarshalJSON)."""
    del nanos  # metav1.Time drops sub-second precision on the wire
    try:
        t = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        # Out of Python's datetime range: no real object carries such a time; keep the raw seconds, still a string.
        return f"@{seconds}"
    return f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}Z"
