"""The recorded kube-apiserver responses of tests/fixtures (INDEX.md), loaded for the codec tests."""

from __future__ import annotations

import struct
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# Lists recorded in both encodings, with the resource (plural) they hold.
LISTS = {
    "pods-edge1.list": "pods",
    "pods-edge1.limit10.page1": "pods",
    "pods-edge1.limit10.page2": "pods",
    "nodes-edge1.list": "nodes",
    "services.proxysel.list": "services",
    "endpointslices.proxysel.list": "endpointslices",
}
OBJECTS = {"configmap-web-config.get": "configmaps", "secret-db-credentials.get": "secrets"}
WATCHES = ["watch.pods-edge1", "watchlist.pods-edge1", "gone.watch-old-rv"]
STATUSES = ["gone.pods-list-continue", "gone.pods-list-rv-exact"]  # 410 bodies in both encodings


def body(name: str, encoding: str) -> bytes:
    return (FIXTURES / f"{name}.{'pb' if encoding == 'protobuf' else 'json'}.body").read_bytes()


def pb_frames(data: bytes) -> list[bytes]:
    """Reference splitter for the tests: 4-byte big-endian length + body, no cleverness."""
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        out.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    assert pos == len(data)
    return out


def json_lines(data: bytes) -> list[bytes]:
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")
