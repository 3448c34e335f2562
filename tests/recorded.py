"""An upstream for proxy tests that answers with the bytes recorded from a real kube-apiserver (tests/fixtures).

Each known request maps to a recording; `.pb` is served when Accept names protobuf, else `.json`. Watch recordings are
sent frame by frame: the first frame at once, the rest only after `release_watch` is set, so a test can prove an
event reached the client while the stream was still open. Everything else it records about the requests it saw
(headers, disconnects) is for the tests' assertions. /readyz answers 200 "ok" for the prober.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

FIXTURES = Path(__file__).resolve().parent / "fixtures"

# (path, raw query) -> recording name (without .json/.pb)
ROUTES = {
    ("/api/v1/pods", "fieldSelector=spec.nodeName%3Dedge-1"): "pods-edge1.list",
    ("/api/v1/nodes", "fieldSelector=metadata.name%3Dedge-1"): "nodes-edge1.list",
    ("/api/v1/namespaces/edge/configmaps/web-config", ""): "configmap-web-config.get",
    ("/api/v1/namespaces/edge/secrets/db-credentials", ""): "secret-db-credentials.get",
    ("/api/v1/pods", "watch=true&fieldSelector=spec.nodeName%3Dedge-1&resourceVersion=304&allowWatchBookmarks=true"
                     "&timeoutSeconds=20"): "watch.pods-edge1",
    ("/api", ""): "api",
    ("/version", ""): "version",
}
JSON_ONLY = {"version"}
NOT_FOUND = "configmap-missing.get.json"


@dataclasses.dataclass(frozen=True, slots=True)
class Recording:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def content_type(self) -> str:
        return dict(self.headers).get("content-type", "")


def load(name: str) -> Recording:
    """`name` like 'pods-edge1.list.pb': the status, headers and body the real server sent."""
    lines = (FIXTURES / f"{name}.headers").read_text().splitlines()
    status = int(lines[0].split()[1])
    headers = tuple((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line))
    return Recording(status, headers, (FIXTURES / f"{name}.body").read_bytes())


def frames(body: bytes, content_type: str) -> list[bytes]:
    """A recorded watch body cut at event boundaries: 4-byte length-prefixed frames, or JSON lines."""
    out = []
    if "protobuf" in content_type:
        pos = 0
        while pos < len(body):
            (n,) = struct.unpack_from(">I", body, pos)
            out.append(body[pos:pos + 4 + n])
            pos += 4 + n
    else:
        out = [line + b"\n" for line in body.split(b"\n") if line]
    return out


class RecordedAPIServer:
    """The aiohttp application and what it observed."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, CIMultiDict[str]]] = []  # (method, path_qs, headers)
        self.release_watch = asyncio.Event()
        self.watch_started = asyncio.Event()
        self.watch_gone = asyncio.Event()  # a watch's client went away mid-stream
        self.ready = True  # /readyz: 200 "ok", or 500 as an API server whose etcd is gone answers
        self.hang = asyncio.Event()  # set: requests (other than /readyz) get no answer, as from a hung server
        self.hanging = asyncio.Event()  # a request is hanging now
        self.app = web.Application(client_max_size=64 << 20)
        self.app.router.add_route("*", "/{tail:.*}", self.handle)

    def pick(self, path: str, query: str, accept: str) -> str | None:
        name = ROUTES.get((path, query))
        if name is None:
            return None
        return f"{name}.json" if "protobuf" not in accept or name in JSON_ONLY else f"{name}.pb"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.raw_path, CIMultiDict(request.headers)))
        path, _, query = request.raw_path.partition("?")
        if path == "/readyz":
            return web.Response(text="ok") if self.ready else web.Response(status=500, text="[-]etcd failed")
        if self.hang.is_set():
            self.hanging.set()
            await asyncio.Event().wait()
        if request.method in ("POST", "PUT", "PATCH"):
            # Echo what arrived: the test checks that a body went up unchanged (not an API answer).
            body = await request.read()
            return web.Response(status=201, body=body, content_type="application/json")
        name = self.pick(path, query, request.headers.get("Accept", ""))
        if name is None:
            rec = load(NOT_FOUND)
            return web.Response(status=rec.status, body=rec.body, headers=_headers(rec))
        rec = load(name)
        if name.startswith("watch."):
            return await self._watch(request, rec)
        return web.Response(status=rec.status, body=rec.body, headers=_headers(rec))

    async def _watch(self, request: web.Request, rec: Recording) -> web.StreamResponse:
        resp = web.StreamResponse(status=rec.status, headers=_headers(rec))
        await resp.prepare(request)
        events = frames(rec.body, rec.content_type)
        self.watch_started.set()
        try:
            await resp.write(events[0])
            await self.release_watch.wait()
            for event in events[1:]:
                await resp.write(event)
        except (asyncio.CancelledError, ConnectionError):
            self.watch_gone.set()
            raise
        await resp.write_eof()
        return resp


def _headers(rec: Recording) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for k, v in rec.headers:
        if k.lower() not in ("content-length", "date"):
            out.add(k, v)
    return out
