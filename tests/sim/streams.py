"""Reading watch streams in the simulator tests: JSON lines or protobuf frames, decoded to (type, object dict)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from edgeproxy.kube import protobuf, schema, watch


class Stream:
    """An open watch: `await next()` gives (type, object as a JSON dict) in either encoding."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.protobuf = resp.headers["Content-Type"] == protobuf.WATCH_CONTENT_TYPE
        self.splitter = watch.ProtobufSplitter() if self.protobuf else watch.JsonSplitter()
        self.ready: list[bytes] = []
        self.raw: list[bytes] = []

    async def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]] | None:
        """The next event, or None when the stream ends."""
        async with asyncio.timeout(timeout):
            while not self.ready:
                chunk = await self.resp.content.readany()
                if not chunk:
                    return None
                self.ready.extend(self.splitter.feed(chunk))
        frame = self.ready.pop(0)
        self.raw.append(frame)
        if self.protobuf:
            ev = protobuf.decode_event(frame)
            return ev.type, schema.to_json(ev.kind, ev.raw)
        doc = json.loads(frame)
        return doc["type"], doc["object"]

    async def rest(self, timeout: float = 10.0) -> list[tuple[str, dict[str, Any]]]:
        out = []
        while (ev := await self.next(timeout)) is not None:
            out.append(ev)
        return out


def rv(obj: dict[str, Any]) -> str:
    return obj["metadata"]["resourceVersion"]
