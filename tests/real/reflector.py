"""A reflector client: what kube-proxy's Service and EndpointSlice informers ask of the API server, and nothing else.

    python -m tests.real.reflector --server https://127.0.0.1:10268 --ca CA --token TOKEN --out view.json
                                   [--watchlist on|off]

Run inside a simulated node's namespace against its edgeproxy (tests/real/branch.py). For each of Services and
EndpointSlices, as client-go's reflector does for kube-proxy (cmd/kube-proxy/app/server.go: one informer factory with
its selectors: Services `!service.kubernetes.io/service-proxy-name` and `spec.clusterIP!=None`, EndpointSlices
`!service.kubernetes.io/headless`; protobuf; User-Agent kube-proxy's):
  - watch-list on (client-go's WatchListClient, the default since 1.35): a watch with sendInitialEvents=true,
    resourceVersionMatch=NotOlderThan and bookmarks; synced at the bookmark annotated k8s.io/initial-events-end;
  - off: a LIST (resourceVersion=0, limit=500, pages followed), then a watch from the list's resourceVersion;
  - a watch that ends (timeoutSeconds 300-600 as client-go picks, or the connection lost) is made again from the last
    resourceVersion seen, after a pause of 1 s; an expired resourceVersion (410, or an ERROR event with code 410)
    relists.
Its store, {namespace/name: resourceVersion} per resource, plus whether both are synced and how many lists, watches and
relists it made, is written to --out (atomically, at most 5 times a second) for the test to compare with the API server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import ssl
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp

from edgeproxy.kube import jsonwire, protobuf, watch

# kube-proxy v1.37's queries, as its requests reach edgeproxy (seen in the real tier)
QUERIES = {
    "services": ("/api/v1/services", {"labelSelector": "!service.kubernetes.io/service-proxy-name",
                                      "fieldSelector": "spec.clusterIP!=None"}),
    "endpointslices": ("/apis/discovery.k8s.io/v1/endpointslices",
                       {"labelSelector": "!service.kubernetes.io/headless"}),
}
ACCEPT = "application/vnd.kubernetes.protobuf, */*"
UA = "kube-proxy/v1.37.2 (linux/amd64) kubernetes/reflector"
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


class Gone(Exception):
    """The resourceVersion asked for is too old: relist."""


class Reflector:
    def __init__(self, session: aiohttp.ClientSession, server: str, resource: str, watchlist: bool,
                 state: State) -> None:
        self.session, self.server, self.resource, self.watchlist = session, server, resource, watchlist
        self.state = state
        self.store: dict[str, str] = {}
        self.rv = ""
        self.synced = False

    def _url(self, **params: str) -> str:
        path, selectors = QUERIES[self.resource]
        return f"{self.server}{path}?{urllib.parse.urlencode(sorted({**selectors, **params}.items()))}"

    async def run(self) -> None:
        while True:
            try:
                if not self.synced:
                    await (self._watch_list() if self.watchlist else self._list_then_watch())
                else:
                    await self._watch({"allowWatchBookmarks": "true", "resourceVersion": self.rv})
            except Gone:
                self.state.counts["relists"] += 1
                self.synced = False
                continue
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                self.state.note(f"{self.resource}: {e!r}")
            await asyncio.sleep(1)

    async def _list_then_watch(self) -> None:
        items: dict[str, str] = {}
        cont = ""
        while True:
            params = {"limit": "500", "resourceVersion": "0"} if not cont else {"limit": "500", "continue": cont}
            self.state.counts["lists"] += 1
            async with self.session.get(self._url(**params), headers={"Accept": ACCEPT}) as r:
                body = await r.read()
                if r.status == 410:
                    raise Gone()
                if r.status != 200:
                    raise aiohttp.ClientError(f"LIST {self.resource}: {r.status} {body[:200]!r}")
                rv, cont, metas = _list(r.content_type, body)
            items.update({_key(m): m.resource_version for m in metas})
            if not cont:
                break
        self.store, self.rv, self.synced = items, rv, True
        self.state.changed()
        await self._watch({"allowWatchBookmarks": "true", "resourceVersion": self.rv})

    async def _watch_list(self) -> None:
        self.store = {}
        await self._watch({"allowWatchBookmarks": "true", "resourceVersionMatch": "NotOlderThan",
                           "sendInitialEvents": "true"}, initial=True)

    async def _watch(self, params: dict[str, str], *, initial: bool = False) -> None:
        params = {**params, "timeoutSeconds": str(random.randint(300, 600)), "watch": "true"}
        if not params.get("resourceVersion"):
            params.pop("resourceVersion", None)
        self.state.counts["watches"] += 1
        async with self.session.get(self._url(**params), headers={"Accept": ACCEPT},
                                    timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as r:
            if r.status == 410:
                raise Gone()
            if r.status != 200:
                raise aiohttp.ClientError(f"WATCH {self.resource}: {r.status} {(await r.read())[:200]!r}")
            proto = "protobuf" in (r.headers.get("Content-Type") or "")
            splitter = watch.ProtobufSplitter() if proto else watch.JsonSplitter()
            async for chunk in r.content.iter_any():
                for frame in splitter.feed(chunk):
                    self._event(frame, proto, initial)

    def _event(self, frame: bytes, proto: bool, initial: bool) -> None:
        if proto:
            ev = protobuf.decode_event(frame)
            etype = ev.type
            if etype == "ERROR":
                status = protobuf.parse_status(ev.raw)
            else:
                m = protobuf.object_meta(ev.raw)
        else:
            jev = jsonwire.decode_event(frame)
            etype = jev.type
            if etype == "ERROR":
                status = jev.doc
            else:
                m = jsonwire.object_meta(jev.doc)
        if etype == "ERROR":
            if status.get("code") == 410:
                raise Gone()
            raise aiohttp.ClientError(f"watch {self.resource}: ERROR {status}")
        if m.resource_version:
            self.rv = m.resource_version
        if etype == "BOOKMARK":
            if initial and not self.synced and m.annotations.get(INITIAL_EVENTS_END) == "true":
                self.synced = True
                self.state.changed()
            return
        if etype == "DELETED":
            self.store.pop(_key(m), None)
        else:
            self.store[_key(m)] = m.resource_version
        self.state.counts["events"] += 1
        self.state.changed()


def _key(m: Any) -> str:
    return f"{m.namespace}/{m.name}"


def _list(content_type: str, body: bytes) -> tuple[str, str, list[Any]]:
    if "protobuf" in content_type:
        parts = protobuf.parse_list(protobuf.unwrap(body).raw)
        return parts.resource_version, parts.continue_, [protobuf.object_meta(i) for i in parts.items]
    jparts = jsonwire.parse_list(body)
    return jparts.resource_version, jparts.continue_, [jsonwire.object_meta(d) for d in jparts.docs]


class State:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.reflectors: list[Reflector] = []
        self.counts = {"lists": 0, "watches": 0, "relists": 0, "events": 0}
        self.errors: list[str] = []
        self.dirty = asyncio.Event()

    def changed(self) -> None:
        self.dirty.set()

    def note(self, error: str) -> None:
        self.errors = [*self.errors[-9:], error]
        self.dirty.set()

    def write(self) -> None:
        doc = {"synced": all(r.synced for r in self.reflectors), **self.counts, "errors": self.errors,
               **{r.resource: r.store for r in self.reflectors}}
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.out)

    async def writer(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            self.write()
            await asyncio.sleep(0.2)


async def main_async(args: argparse.Namespace) -> None:
    ctx = ssl.create_default_context(cafile=args.ca)
    state = State(Path(args.out))
    headers = {"Authorization": f"Bearer {args.token}", "User-Agent": UA}
    async with aiohttp.ClientSession(headers=headers, connector=aiohttp.TCPConnector(ssl=ctx),
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=5)) as session:
        state.reflectors = [Reflector(session, args.server.rstrip("/"), res, args.watchlist == "on", state)
                            for res in QUERIES]
        state.write()
        await asyncio.gather(state.writer(), *(r.run() for r in state.reflectors))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.real.reflector", description=__doc__.splitlines()[0])
    p.add_argument("--server", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--watchlist", choices=("on", "off"), default="on")
    args = p.parse_args(argv)
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
