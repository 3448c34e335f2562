"""The leader's served view: one upstream list+watch per pool-scoped query, served to followers with real list/watch
semantics from memory, persisted to the leader's LMDB cache. The I/O shell around state.ViewState.

`Views.reply(info)` answers a shared read (peers.PeerListener's `answer` seam, and the leader's own clients):
- the query (resource, namespace, canonical selectors, encoding as asked) names a `PoolView`, started at the first
  request for it and stopped once no follower used it for `idle` seconds. It LISTs upstream once (or takes the view
  the cache kept, from before a restart), then WATCHes with bookmarks from its resourceVersion; a watch that ends
  or breaks is resumed from the view's resourceVersion, and only a 410 from the API server makes it relist. Every
  change goes to memory (the objects and a bounded ring of events) and to the cache (client partition `pool@leader`,
  which no local client reads), so a restarted leader, or the whole branch offline, still serves its last view.
- LIST: the view at its resourceVersion, items in the API server's order, paged as kube-apiserver v1.37's watch
  cache pages (cacher computeListLimit, ListFromCacheSnapshot): `limit` is ignored for resourceVersion "0" (one whole
  page) and applied otherwise, with the API server's own continue token (state.encode_continue). A page with more
  to come keeps a snapshot of the view at its version (75 s, at most 8 per view, as the cacher keeps its B-tree
  snapshots), so the next pages are consistent however the view moves meanwhile. A continue token at the view's
  version or a kept snapshot's is served; at -1 (an inconsistent continue) from the view as it is; any other (too
  old, or taken elsewhere) is 410 Expired with the token to carry on inconsistently, as the API server says, or,
  when the follower's API server is reachable, fallback: the token is one the API server reads. resourceVersion
  newer than the view: waited for up to `wait`, then 504 "Too large resource version" as the API server says;
  resourceVersionMatch=Exact (or a legacy resourceVersion with a limit, which the API server takes as exact) on a
  version neither the view nor a snapshot holds: 410 Expired.
- GET of one object: from a synced view of that resource and encoding whose scope holds its namespace (views are
  not started for a GET: a one-off GET does not cost a LIST and a watch); present → the object as the API server
  answers it; absent from a view without selectors → 404 NotFound; else (only views with selectors, whose absence
  says nothing, or none) fallback. resourceVersion newer than the view: waited for, then fallback.
- WATCH from a resourceVersion N newer than the view: served at once from the view's own version, the events up to
  N skipped and no bookmark below N (a client moved from the API server holds a newer version from its bookmarks,
  while the view's moves only with its own query's events and bookmarks; the client has every event up to N).
- WATCH from resourceVersion N: the ring's events after N; N older than the ring: the view reaches back
  (`reach_back`: one short upstream watch from N, whose events up to a frame at or past the ring's floor extend the
  ring back to N, the frame proving nothing else happened in between); if it cannot (the API server no longer holds
  N either, the ring's bounds) → ERROR 410 "too old resource version" (client-go relists), as the API server's watch
  cache answers; "" or "0": ADDED for every object first;
  sendInitialEvents=true: ADDED for each, then the BOOKMARK with k8s.io/initial-events-end; allowWatchBookmarks:
  a BOOKMARK every `bookmark_interval` (followers take a silent watch for a dead leader). A relist of the view ends
  its open watches (they re-watch, and get 410 if the ring does not reach back).
- What the view cannot answer (not synced within `wait`, a GET no view holds, PartialObjectMetadata or Table, and,
  when the follower says its API server is reachable (`fallback_ok`), a too-old watch or continue token) gets 503
  with the header X-Edgeproxy-Pool-Fallback: the follower then asks the API server itself.
Neighbours: state (the pure state), peers (serves `reply` to nodes), route (the leader's own clients), upstream,
cache (persistence), metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from multidict import CIMultiDict

from cache import store as store_
from cache import writer as writer_
from edgeproxy import httpclient, metrics, tasks, upstream
from edgeproxy.kube import errors as kube_errors
from edgeproxy.kube import status as kube_status
from edgeproxy.kube import watch as kube_watch
from edgeproxy.pool import state

log = logging.getLogger(__name__)

POOL_CLIENT = "pool@leader"  # the cache partition of the leader's views ("@": never a local client's key alone)
FALLBACK_HEADER = "X-Edgeproxy-Pool-Fallback"
SOURCE_HEADER = "X-Edgeproxy-Source"
BOOKMARK_INTERVAL = 5.0  # seconds between bookmarks on a follower's watch that asked for them
IDLE = 300.0  # seconds a view nobody asked for is kept watching
WAIT = 2.0  # seconds a request waits for its view to sync, or to reach a newer resourceVersion (less than a
# follower's header deadline, route.HEADER_TIMEOUT: a leader waiting is not a leader failing)
DEFAULT_WATCH_TIMEOUT = 1800
STOP_WAIT = 5.0  # seconds a stop waits for the view's upstream task to end after its cancel
REACH_BACK_TIMEOUT = 3  # timeoutSeconds of a reach-back watch: the API server bookmarks it before it ends
REACH_BACK_WAIT = 5.0  # seconds a watch from a version older than the view waits for the reach-back
MIN_BACKOFF, MAX_BACKOFF = 0.5, 10.0
SNAPSHOT_TTL = 75.0  # seconds a paged list's snapshot is kept for its next pages (the cacher's event TTL)
SNAPSHOTS = 8  # at most this many per view
_RX = metrics.UPSTREAM_BYTES.labels(direction="received")  # the views' upstream traffic is WAN traffic too


@dataclasses.dataclass(slots=True)
class Reply:
    """An answer, transport-free: status, headers, and the body whole or as a stream of chunks."""

    status: int
    headers: CIMultiDict[str]
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None

    @property
    def fallback(self) -> str:
        return self.headers.get(FALLBACK_HEADER, "")


def _headers(content_type: str, **extra: str) -> CIMultiDict[str]:
    h: CIMultiDict[str] = CIMultiDict({"Content-Type": content_type, "Cache-Control": "no-cache, private",
                                       SOURCE_HEADER: "pool-leader"})
    for k, v in extra.items():
        h[k.replace("_", "-")] = v
    return h


def status_reply(st: dict[str, Any], fallback: str = "", encoding: str = "json") -> Reply:
    content_type, body = kube_status.encode(st, encoding)
    h = _headers(content_type)
    if fallback:
        h[FALLBACK_HEADER] = fallback
    return Reply(int(st["code"]), h, body)


def fallback_reply(why: str) -> Reply:
    return status_reply(kube_status.service_unavailable(f"the pool leader cannot answer this: {why}; ask the API "
                                                        "server"), why)


def to_item(o: state.Obj) -> store_.Item:
    return store_.Item(o.name, o.namespace, o.resource_version, o.labels, o.fields, o.raw)


def cache_key(q: state.Query) -> store_.ViewKey:
    return store_.ViewKey(client=POOL_CLIENT, group=q.group, version=q.version, resource=q.resource,
                          namespace=q.namespace, label_selector=q.label_selector, field_selector=q.field_selector,
                          shape="", encoding=q.encoding)


class PoolView:
    """One query: its upstream list+watch loop, its state, and the followers' watches waiting on it."""

    __slots__ = ("_changed", "_reaching", "_response", "_synced", "_task", "_too_old", "bookmark_interval", "last_used",
                 "lists", "query", "reach_backs", "snapshots", "st", "up", "watchers", "watches", "writer")

    def __init__(self, query: state.Query, up: upstream.Upstream, *, writer: writer_.Writer | None = None,
                 bookmark_interval: float = BOOKMARK_INTERVAL, ring_events: int = state.RING_EVENTS) -> None:
        self.query = query
        self.up = up
        self.writer = writer
        self.bookmark_interval = bookmark_interval
        self.st = state.ViewState(query, max_events=ring_events)
        self._changed = asyncio.Event()
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._response: httpclient.Response | Any = None
        self.last_used = time.monotonic()
        self.watchers = 0  # followers' watches open on it
        self.lists = 0  # upstream LISTs made (a relist storm would show here)
        self.watches = 0  # upstream WATCHes opened
        self.snapshots: dict[str, tuple[float, list[state.Obj]]] = {}  # rv -> (taken at, objects): paged lists
        self.reach_backs = 0  # short upstream WATCHes that made the ring reach back to an older client's version
        self._reaching = asyncio.Lock()
        self._too_old = (-1, 0)  # (generation, version): the API server said 410 reaching back to it

    # ---- life ----

    def load(self, st: store_.Store | None) -> None:
        """Take the view the cache kept (a restarted leader): served at once, and resumed from its version."""
        if st is None:
            return
        try:
            got = st.read_view(cache_key(self.query))
        except Exception:  # a cache that cannot be read: the view starts from the API server
            log.exception("pool view %s: the cached view does not read back", self.query.describe())
            return
        if got is None or not got[0].complete or not got[0].resource_version:
            return
        meta, items = got
        self.st.replace(meta.kind, meta.api_version, meta.resource_version,
                        (state.Obj(i.name, i.namespace, i.resource_version, dict(i.labels), dict(i.fields),
                                   bytes(i.raw)) for i in items))
        self._synced.set()
        log.info("pool view %s: %d objects at resourceVersion %s from the cache", self.query.describe(),
                 len(self.st.objects), meta.resource_version)

    def start(self) -> None:
        if self._task is None:
            metrics.POOL_UPSTREAM_WATCHES.inc()
            self._task = tasks.spawn(self.run(), name=f"pool-view {self.query.describe()}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            metrics.POOL_UPSTREAM_WATCHES.dec()
            await tasks.stop((task,), what=f"pool view {self.query.describe()}", timeout=STOP_WAIT)
        self._wake()

    def upstream_changed(self, online: bool) -> None:
        """Offline: the upstream watch over a dead link would sit silent; end it (it is resumed when back)."""
        if not online and self._response is not None:
            self._response.close()

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # ---- the upstream side ----

    async def run(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            try:
                if not self.st.synced:
                    await self._list()
                if await self._watch():
                    backoff = MIN_BACKOFF
                    continue
            except asyncio.CancelledError:
                raise
            except (upstream.Unavailable, httpclient.HttpClientError, kube_errors.KubeError, OSError,
                    TimeoutError) as e:
                log.info("pool view %s: upstream: %s: %s", self.query.describe(), type(e).__name__, e)
            except Exception:
                log.exception("pool view %s: upstream loop", self.query.describe())
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(MAX_BACKOFF, backoff * 2)

    async def _send(self, params: list[tuple[str, str]]) -> httpclient.Response:
        q = self.query
        headers = CIMultiDict({"Accept": q.content_type, "User-Agent": "edgeproxy-pool"})
        _, resp = await self.up.send("GET", f"{q.path}?{urlencode(params)}", headers,
                                     header_timeout=self.up.header_timeout or None)
        return resp

    async def _list(self) -> None:
        self.lists += 1
        metrics.POOL_UPSTREAM_REQUESTS.labels("list").inc()
        resp = await self._send(self.query.params())
        chunks = []
        try:
            while chunk := await resp.read():
                _RX.inc(len(chunk))
                chunks.append(chunk)
        except BaseException:
            resp.close()
            raise
        resp.release()
        body = b"".join(chunks)
        if resp.status != 200:
            raise upstream.Unavailable(f"LIST answered {resp.status}: {body[:200]!r}")
        kind, api_version, rv, objs = await asyncio.to_thread(state.parse_list, self.query, body)
        self.st.replace(kind, api_version, rv, objs)
        if self.writer is not None:
            self.writer.replace_view(cache_key(self.query), store_.ViewMeta(kind, api_version, rv, True),
                                     [to_item(o) for o in self.st.objects.values()])
        self._synced.set()
        self._wake()  # open watches of an older generation end
        log.info("pool view %s: listed %d objects at resourceVersion %s", self.query.describe(), len(objs), rv)

    async def _watch(self) -> bool:
        """One upstream watch from the view's resourceVersion; True when it ended cleanly (resume at once)."""
        self.watches += 1
        metrics.POOL_UPSTREAM_REQUESTS.labels("watch").inc()
        params = [*self.query.params(), ("watch", "true"), ("allowWatchBookmarks", "true"),
                  ("resourceVersion", self.st.rv), ("timeoutSeconds", str(random.randint(300, 600)))]
        resp = await self._send(params)
        if resp.status != 200:
            body = b""
            with contextlib.suppress(Exception):
                while (chunk := await resp.read()) and len(body) < 4096:
                    body += chunk
            resp.close()
            if resp.status == 410:
                self.st.synced = False
            raise upstream.Unavailable(f"WATCH answered {resp.status}: {body[:200]!r}")
        self._response = resp
        started, frames_seen = time.monotonic(), 0
        splitter = kube_watch.ProtobufSplitter() if self.query.encoding == "protobuf" else kube_watch.JsonSplitter()
        key = cache_key(self.query)
        ok = False
        try:
            while chunk := await resp.read():
                _RX.inc(len(chunk))
                persist: list[tuple[str, store_.Item | None, str]] = []
                for frame in splitter.feed(chunk):
                    frames_seen += 1
                    parsed = state.parse_frame(self.query, frame)
                    if parsed.type == "ERROR":
                        code = int((parsed.status or {}).get("code") or 0)
                        log.info("pool view %s: watch ended with %s: %s", self.query.describe(), code,
                                 (parsed.status or {}).get("message", ""))
                        if code == 410:
                            self.st.synced = False  # expired: relist
                        return False
                    event = self.st.apply(parsed)
                    if event is not None or parsed.type == "BOOKMARK":
                        obj = parsed.obj
                        persist.append((parsed.type, to_item(obj) if obj is not None else None,
                                        parsed.resource_version))
                if persist:
                    if self.writer is not None:
                        self.writer.apply_events(key, persist)
                    self._wake()
            ok = True
        finally:
            self._response = None
            if ok:
                resp.release()
            else:
                resp.close()
        # a watch ended at once with nothing in it (as client-go's "very short watch"): back off, do not spin
        return frames_seen > 0 or time.monotonic() - started >= 1.0

    # ---- the followers' side ----

    async def synced(self, wait: float) -> bool:
        if not self._synced.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._synced.wait()
        return self.st.synced or self._synced.is_set()

    async def reached(self, rv: str, wait: float) -> bool:
        """Whether the view reached resourceVersion `rv` (waiting up to `wait`)."""
        want = state.rv_number(rv)
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        while state.rv_number(self.st.rv) < want:
            left = end - loop.time()
            if left <= 0:
                return False
            changed = self._changed
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await changed.wait()
        return True

    async def reach_back(self, rv: str, wait: float) -> bool:
        """Make the ring reach back to `rv` (a client moved from the API server, or from another leader, whose
        version is older than this view's list): one short upstream watch from `rv` delivers the query's events since,
        and a frame at or past the ring's floor (an event, or the bookmark the API server sends before the watch's
        timeout) proves nothing else happened in between. False when it could not within `wait`, waiting for another
        reach-back included (the version is too old for the API server too: 410, remembered until a relist;
        unreachable; no proof in time): the client is answered as before."""
        n = state.rv_number(rv)
        try:
            async with asyncio.timeout(wait), self._reaching:
                st = self.st
                if n >= st.floor:
                    return True  # another request reached back meanwhile
                if self._too_old[0] == st.generation and n <= self._too_old[1]:
                    return False
                floor, generation = st.floor, st.generation
                self.reach_backs += 1
                metrics.POOL_UPSTREAM_REQUESTS.labels("reach_back").inc()
                got = await self._events_since(rv, floor)
                if got is None:
                    self._too_old = (generation, max(n, self._too_old[1] if self._too_old[0] == generation else 0))
                    return False
                if st.floor != floor or st.generation != generation:
                    return False  # relisted, or the ring moved on meanwhile
                return st.extend_back(rv, got)
        except (TimeoutError, upstream.Unavailable, httpclient.HttpClientError, kube_errors.KubeError, OSError) as e:
            log.info("pool view %s: reaching back to %s: %s: %s", self.query.describe(), rv, type(e).__name__, e)
            return False

    async def _events_since(self, rv: str, floor: int) -> list[state.Parsed] | None:
        """The query's events from `rv` up to the first frame at or past `floor`, from a short upstream watch; None
        when the API server answers that `rv` is too old; TimeoutError or upstream errors otherwise."""
        params = [*self.query.params(), ("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", rv),
                  ("timeoutSeconds", str(REACH_BACK_TIMEOUT))]
        resp = await self._send(params)
        try:
            if resp.status == 410:
                return None
            if resp.status != 200:
                raise upstream.Unavailable(f"WATCH answered {resp.status}")
            splitter = kube_watch.ProtobufSplitter() if self.query.encoding == "protobuf" else kube_watch.JsonSplitter()
            got: list[state.Parsed] = []
            while chunk := await resp.read():
                _RX.inc(len(chunk))
                for frame in splitter.feed(chunk):
                    parsed = state.parse_frame(self.query, frame)
                    if parsed.type == "ERROR":
                        if int((parsed.status or {}).get("code") or 0) == 410:
                            return None
                        raise upstream.Unavailable(f"WATCH ended with {parsed.status}")
                    got.append(parsed)
                    if state.rv_number(parsed.resource_version) >= floor:
                        return got
            raise TimeoutError("the watch ended before a frame at the view's version")
        finally:
            resp.close()

    def objects_at(self, rv: str) -> list[state.Obj] | None:
        """The view's objects, sorted, at `rv`: its own version, or a snapshot kept for a paged list; else None."""
        now = time.monotonic()
        for old in [k for k, (t, _) in self.snapshots.items() if now - t > SNAPSHOT_TTL]:
            del self.snapshots[old]
        if rv == self.st.rv:
            return self.st.sorted_objects()
        kept = self.snapshots.get(rv)
        return kept[1] if kept is not None else None

    def list_reply(self, rv: str = "", after: str = "", limit: int = 0) -> Reply:
        """A page of the view at `rv` (its own version by default; the caller checked objects_at(rv)) after list key
        `after`; a page with more to come keeps a snapshot for the next ones."""
        rv = rv or self.st.rv
        objs = self.objects_at(rv) or []
        body, more = self.st.page(objs, rv, after, limit)
        if more and rv not in self.snapshots:
            self.snapshots[rv] = (time.monotonic(), objs)
            while len(self.snapshots) > SNAPSHOTS:
                del self.snapshots[next(iter(self.snapshots))]
        return Reply(200, _headers(self.query.content_type), body)

    def continue_reply(self, cont: tuple[int, str], limit: int, fallback_ok: bool) -> Reply:
        """The next page of a paged list: at the token's version if the view or a snapshot holds it; -1 (carry on
        inconsistently) from the view as it is; else 410 Expired with such a token, or fallback."""
        rv, after = cont
        if rv == -1:
            return self.list_reply(after=after, limit=limit)
        if self.objects_at(str(rv)) is None:
            if fallback_ok:  # the token is the API server's form: it may still serve that version
                return fallback_reply("a continue token of a version the view does not hold")
            return status_reply(kube_status.expired_continue(state.encode_continue(-1, after)))
        return self.list_reply(str(rv), after, limit)

    def watch_reply(self, info: Any, fallback_ok: bool) -> Reply:
        """The watch answer (the caller checked the view is synced and not behind the asked resourceVersion)."""
        st = self.st
        rv = info.resource_version or ""
        first: list[bytes] = []
        replay = bool(info.send_initial_events) or rv in ("", "0")
        seen = 0 if replay else state.rv_number(rv)  # the client has every event up to it
        if replay:
            first = st.initial_frames()
            if info.send_initial_events:
                first.append(st.bookmark_frame(initial_end=True))
        else:
            try:
                first = [e.frame for e in st.since(rv)]
            except state.TooOld as e:
                if fallback_ok:
                    return fallback_reply(str(e))
                return Reply(200, _headers(self.query.watch_content_type),
                             stream=_once(st.error_frame(kube_status.too_old_rv(e.requested, e.oldest))))
        timeout = info.timeout_seconds or DEFAULT_WATCH_TIMEOUT
        return Reply(200, _headers(self.query.watch_content_type),
                     stream=self._follow(first, st.rv, st.generation, bool(info.allow_watch_bookmarks), timeout,
                                         seen))

    async def _follow(self, first: list[bytes], pos: str, generation: int, bookmarks: bool,
                      timeout: float, seen: int = 0) -> AsyncIterator[bytes]:
        """The watch stream from the view's version `pos`. `seen`: the version the client watched from; when it is
        newer than `pos` (a client from the API server, whose bookmarks carry newer versions than this query's view
        has reached) the events up to it are ones the client has (skipped) and no bookmark goes back before it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        self.watchers += 1
        metrics.POOL_FOLLOWER_WATCHES.inc()
        try:
            if first:
                yield b"".join(first)
            while True:
                self.last_used = time.monotonic()
                st = self.st
                if st.generation != generation or self._task is None:
                    return  # relisted, or stopped: the follower re-watches
                if state.rv_number(st.rv) > state.rv_number(pos):
                    try:
                        frames = [e.frame for e in st.since(pos) if e.rv > seen]
                    except state.TooOld:
                        return  # fell behind the ring: re-watching tells the client
                    pos = st.rv
                    if frames:
                        yield b"".join(frames)
                        continue
                now = loop.time()
                if now >= deadline:
                    if bookmarks:
                        yield st.bookmark_frame(_later(pos, seen))
                    return
                if bookmarks and now >= next_bookmark:
                    yield st.bookmark_frame(_later(pos, seen))
                    next_bookmark = now + self.bookmark_interval
                    continue
                changed = self._changed
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(deadline, next_bookmark if bookmarks else deadline) - now):
                        await changed.wait()
        finally:
            self.watchers -= 1
            metrics.POOL_FOLLOWER_WATCHES.dec()
            self.last_used = time.monotonic()


def _later(pos: str, seen: int) -> str:
    return pos if state.rv_number(pos) >= seen else str(seen)


async def _once(chunk: bytes) -> AsyncIterator[bytes]:
    yield chunk


class Views:
    """The leader's views, by query. `reply(info)` answers one shared read."""

    __slots__ = ("_janitor", "bookmark_interval", "idle", "reach_back_wait", "ring_events", "store", "up", "views",
                 "wait", "writer")

    def __init__(self, up: upstream.Upstream, *, store: store_.Store | None = None,
                 writer: writer_.Writer | None = None, bookmark_interval: float = BOOKMARK_INTERVAL,
                 idle: float = IDLE, wait: float = WAIT, ring_events: int = state.RING_EVENTS,
                 reach_back_wait: float = REACH_BACK_WAIT) -> None:
        self.up = up
        self.reach_back_wait = reach_back_wait
        self.store = store
        self.writer = writer
        self.bookmark_interval = bookmark_interval
        self.idle = idle
        self.wait = wait
        self.ring_events = ring_events
        self.views: dict[state.Query, PoolView] = {}
        self._janitor: asyncio.Task[None] | None = None
        up.on_change(self._upstream_changed)

    def _upstream_changed(self, online: bool) -> None:
        for v in list(self.views.values()):
            v.upstream_changed(online)

    def view(self, query: state.Query, *, cached_only: bool = False) -> PoolView | None:
        """The view of `query`, started if need be (from the cache's copy when there is one); with `cached_only`,
        None rather than a view that the cache holds no copy of."""
        v = self.views.get(query)
        if v is None:
            v = PoolView(query, self.up, writer=self.writer, bookmark_interval=self.bookmark_interval,
                         ring_events=self.ring_events)
            v.load(self.store)
            if cached_only and not v.st.synced:
                return None
            self.views[query] = v
            log.info("pool view %s: started for a follower", query.describe())
        v.start()
        v.last_used = time.monotonic()
        if self._janitor is None:
            self._janitor = tasks.spawn(self._sweep(), name="pool-views-janitor")
        return v

    async def _sweep(self) -> None:
        """Stop the views no follower used for `idle` seconds."""
        try:
            while self.views:
                await asyncio.sleep(min(self.idle / 4, 30.0))
                now = time.monotonic()
                for q, v in list(self.views.items()):
                    if v.watchers == 0 and now - v.last_used > self.idle:
                        log.info("pool view %s: unused for %.0fs, stopped", q.describe(), now - v.last_used)
                        del self.views[q]
                        await v.stop()
        finally:
            self._janitor = None

    async def close(self) -> None:
        """Stop every view there is now (one started meanwhile, by a new term as leader, is left running)."""
        if self._janitor is not None:
            self._janitor.cancel()
        for q in list(self.views):
            v = self.views.pop(q, None)
            if v is not None:
                await v.stop()

    def state(self) -> list[dict[str, Any]]:
        return [{"query": q.describe(), "resource_version": v.st.rv, "objects": len(v.st.objects),
                 "ring": len(v.st.ring), "followers": v.watchers, "upstream_lists": v.lists,
                 "upstream_watches": v.watches, "reach_backs": v.reach_backs} for q, v in self.views.items()]

    async def reply(self, info: Any, *, fallback_ok: bool = False, cached_only: bool = False) -> Reply:
        """The answer to a shared read (policy already said yes). `cached_only`: only from a view this node has,
        in memory or in its cache (a node that led, asked while the API server is unreachable)."""
        enc = _encoding(info)
        if enc is None:
            return fallback_reply("only plain objects in JSON or protobuf are served from the pool view")
        if info.verb == "get":
            return await self._get(info, enc)
        if info.verb not in ("list", "watch"):
            return fallback_reply(f"{info.verb} is not served from the pool view")
        cont: tuple[int, str] | None = None
        if info.continue_ and info.verb == "list":
            if info.resource_version:
                return status_reply(kube_status.bad_request(
                    "specifying resource version is not allowed when using continue"))
            try:
                cont = state.decode_continue(info.continue_)
            except ValueError as e:
                return status_reply(kube_status.bad_request(str(e)))
        try:
            query = state.Query.of(info, enc)
        except kube_errors.KubeError as e:
            return status_reply(kube_status.from_error(e))
        v = self.view(query, cached_only=cached_only)
        if v is None:
            return fallback_reply("this node does not lead its pool, and holds no copy of this view")
        if not await v.synced(self.wait):
            return fallback_reply("the view is not synced yet")
        if cont is not None:
            return v.continue_reply(cont, info.limit or 0, fallback_ok)
        rv = info.resource_version or ""
        if rv not in ("", "0") and not info.send_initial_events:
            if not rv.isdigit():
                return status_reply(kube_status.bad_request(f"invalid resource version {rv!r}"))
            if info.verb == "list":
                if not await v.reached(rv, self.wait):
                    st = kube_status.too_large_rv(rv, v.st.rv)
                    return status_reply(st, "too large resource version" if fallback_ok else "")
            elif state.rv_number(rv) < v.st.floor:
                # older than the view's list (a client moved from the API server, whose query had no event since):
                # the ring reaches back to it if the API server still can; if not, answered too old as before
                await v.reach_back(rv, self.reach_back_wait)
        if info.verb == "list":
            limit = (info.limit or 0) if rv != "0" else 0  # the watch cache ignores limit for resourceVersion "0"
            rvm = info.resource_version_match
            if rv not in ("", "0") and (rvm == "Exact" or (not rvm and limit)):  # a legacy rv with a limit: exact
                if v.objects_at(rv) is None:
                    # the view holds its own version and its paged lists' snapshots: older history it does not keep
                    return status_reply(kube_status.expired_list_rv(), "exact resourceVersion" if fallback_ok else "")
                return v.list_reply(rv, limit=limit)
            return v.list_reply(limit=limit)
        return v.watch_reply(info, fallback_ok)

    async def _get(self, info: Any, enc: str) -> Reply:
        """One object from a view that holds its namespace (see the module's doc); views are not started for it."""
        rv = info.resource_version or ""
        if rv not in ("", "0") and not rv.isdigit():
            return status_reply(kube_status.bad_request(f"invalid resource version {rv!r}"), encoding=enc)
        ns, group = info.namespace or "", info.api_group or ""
        candidates = sorted((v for q, v in self.views.items()
                             if (q.group, q.version, q.resource, q.encoding) == (group, info.api_version or "",
                                                                                  info.resource, enc)
                             and q.namespace in ("", ns) and v.st.synced),
                            key=lambda v: bool(v.query.label_selector or v.query.field_selector))
        for v in candidates:  # those without selectors first: their "absent" is an answer
            if rv not in ("", "0") and not await v.reached(rv, self.wait):
                return fallback_reply("too large resource version")
            v.last_used = time.monotonic()
            o = v.st.objects.get((ns, info.name))
            if o is not None:
                return Reply(200, _headers(v.query.content_type), v.st.object_body(o))
            if not v.query.label_selector and not v.query.field_selector:
                return status_reply(kube_status.not_found(info.resource, info.name, group), encoding=enc)
        return fallback_reply("no view of the leader holds this object")


def _encoding(info: Any) -> str | None:
    """The encoding of the first Accept clause the view can serve ("protobuf" or "json"); None when the first clause
    the API server would answer asks a shape (PartialObjectMetadata, Table) the view does not keep."""
    accept = getattr(info, "accept", ()) or ()
    if not accept:
        return "json"
    for m in accept:
        enc = getattr(m, "encoding", None)
        if enc is None and "*" not in (m.type, m.subtype):
            continue
        if getattr(m, "as_", ""):
            return None
        return enc or "json"
    return None

