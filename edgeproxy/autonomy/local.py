"""Offline answers from the cache: get, list and watch as the API server would give them, and the offline writes.

The proxy's `local` hook: `Local.handle(request, info, reason)` answers what could not go upstream (offline, or a
request that failed before any byte reached the client). Each client is served from its own views only.
- GET: the stored answer to that GET, else the object from one of the client's views, in the encoding the client
  accepts; PartialObjectMetadata is cut from the object's metadata; Table is answered with the plain object. Not
  cached → 503, never 404, unless a complete view that would hold the object proves it does not exist.
- LIST: the exact view, or a complete wider view of the same client filtered (same resource, namespace or cluster
  scope, selectors that cover the request's); limit/continue with our own continue tokens; resourceVersion as the
  API server treats it (newer than the cache → 504 TooLarge, Exact on another version → 410). No complete view → 503:
  a partial or empty list makes kubelet kill pods and kube-proxy exit. Lists are joined from the stored item bytes;
  a whole view's joined body is kept (bounded LRU) while the view is unchanged, for clients relisting.
- WATCH: headers at once; a BOOKMARK at the view's resourceVersion at once and every `bookmark_interval` when asked;
  held until timeoutSeconds; ended within a second of the upstream coming back, so clients re-watch upstream from
  their last resourceVersion (a watch that failed over while the prober still says online is held FAILOVER_HOLD).
  Watch-list replays the view as ADDED, then the initial-events-end bookmark. A resourceVersion the view cannot
  continue from (older: history unknown; newer: not seen yet) → ERROR 410.
- Writes: writes.decide() says which answer; the node agent's Lease and node status are applied to the cache.
Every answer carries `X-Edgeproxy-Source: cache`.
What it does not do: forward, record, or decide online/offline (proxy, record, upstream do). Neighbours: cache
(reads, and the Writer for local writes), views (keys), writes (policy), tokens (TokenRequests), kube.* (wire).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cache import store as store_
from cache import writer as writer_
from edgeproxy import memory
from edgeproxy.autonomy import tokens as tokens_
from edgeproxy.autonomy import views, writes
from edgeproxy.guard import limits, warn
from edgeproxy.kube import errors, jsonwire, protobuf, schema, selectors, status
from edgeproxy.kube import request as kube_request

log = logging.getLogger(__name__)

POM = views.POM
INITIAL_EVENTS_END = "k8s.io/initial-events-end"
LIST_BLUEPRINT = "kubernetes.io/initial-events-list-blueprint"
BOOKMARK_INTERVAL = 60.0  # the API server sends one about every minute (cacher nextBookmarkTime)
DEFAULT_WATCH_TIMEOUT = 1800  # the API server's --min-request-timeout, used when a watch names no timeoutSeconds
MIN_WATCH_AGE = 1.1  # client-go: a watch closed within 1 s with no event is an error, and the reflector relists
# A watch answered locally while the prober still says online (one request failed over) is held this long, then
# ended: the client re-watches, upstream if it is back, here again if not. Long enough not to be a "very short watch"
# (client-go backs off and relists after one under a second with no event).
FAILOVER_HOLD = 5.0
CONTINUE_VERSION = "edgeproxy/v1"
BODY_CACHE_BYTES = 16 << 20  # joined LIST bodies kept for repeated offline LISTs of an unchanged view (a setting)
JSON_CT = "application/json"
PB_CT = "application/vnd.kubernetes.protobuf"
# Every local answer says where it came from (the API server's own headers plus this one; clients ignore it).
SOURCE_HEADER = "X-Edgeproxy-Source"
_NO_CACHE = {"Cache-Control": "no-cache, private", SOURCE_HEADER: "cache"}


@dataclass(frozen=True, slots=True)
class Source:
    """A view an answer is taken from; `filtered` when it is wider than the request."""

    key: store_.ViewKey
    meta: store_.ViewMeta
    filtered: bool


class Local:
    """The local side of the proxy. One per process."""

    __slots__ = ("_back", "_changed", "_local_base", "bodies", "bookmark_interval", "failover_hold", "is_online",
                 "node", "store", "tokens", "watch_timeout", "writer")

    def __init__(self, store: store_.Store, writer: writer_.Writer | None, *, tokens: tokens_.TokenBook | None = None,
                 node: str | None = None, bookmark_interval: float = BOOKMARK_INTERVAL,
                 watch_timeout: int = DEFAULT_WATCH_TIMEOUT, is_online: Callable[[], bool] = lambda: False,
                 failover_hold: float = FAILOVER_HOLD, body_cache_bytes: int = BODY_CACHE_BYTES) -> None:
        self.store = store
        self.writer = writer
        self.tokens = tokens
        self.node = node
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.is_online = is_online
        self.failover_hold = failover_hold
        self.bodies = Bodies(body_cache_bytes)
        self._back = asyncio.Event()  # set when the upstream comes back: every offline watch ends
        self._changed = asyncio.Event()  # set (and replaced) at every online/offline change: holds re-evaluate
        self._local_base: dict[tuple[str, str, str, str], tuple[str, str]] = {}  # key -> (upstream rv, local rv)

    def upstream_changed(self, online: bool) -> None:
        """Register with Upstream.on_change: coming back online ends every offline watch (within a second)."""
        if online:
            self._back.set()
        elif self._back.is_set():
            self._back = asyncio.Event()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # ---------------------------------------------------------------- dispatch

    async def handle(self, request: web.Request, info: Any, reason: str) -> web.StreamResponse:
        if info is None:
            return _error(status.service_unavailable(f"the API server is unreachable ({reason})"))
        try:
            if info.is_resource and info.accept and not self._clauses(info):
                kube_request.negotiate(info)  # no clause a cache can serve: 406 NotAcceptable, as the API server says
            if not info.is_resource:
                return self._non_resource(info, reason)
            verb = info.verb
            if verb == "get":
                return await self._get(info, reason)
            if verb == "list":
                return await self._list(info, reason, request)
            if verb == "watch":
                return await self._watch(request, info, reason)
            return await self._write(request, info, reason)
        except errors.KubeError as e:
            return _error(status.from_error(e))
        except (ValueError, RecursionError, UnicodeError) as e:
            # a body, token or header nothing can read (JSON nested thousands deep, invalid UTF-8, not JSON at all):
            # the client's error, and what the API server answers too
            warn.client_error("offline-unreadable", "%s %s: %s", info.verb, info.path, f"{type(e).__name__}: {e}")
            return _error(status.bad_request(f"the request could not be read: {type(e).__name__}: "
                                             f"{warn.clip(e, 200)}"))

    # ---------------------------------------------------------------- representation

    @staticmethod
    def acceptable(info: Any) -> list[tuple[str, str]]:
        """(encoding, shape) the client accepts, best first. Table is never produced: the plain form that follows it
        in kubectl's Accept is (kubectl prints anything that is not a Table itself, wire brief §4)."""
        return Local._clauses(info) or [("json", "")]

    @staticmethod
    def _clauses(info: Any) -> list[tuple[str, str]]:
        """acceptable() without its fallback: empty when no Accept clause names something a cache can serve."""
        out: list[tuple[str, str]] = []
        for m in getattr(info, "accept", ()) or ():
            as_ = getattr(m, "as_", "") or ""
            if as_ and as_ not in (POM, POM + "List"):
                continue
            shape = POM if as_ else ""
            enc = getattr(m, "encoding", None)
            encs = (enc,) if enc else (("json", "protobuf") if "*" in (m.type, m.subtype) else ())
            for e in encs:
                if (e, shape) not in out:
                    out.append((e, shape))
        return out

    # ---------------------------------------------------------------- non-resource (discovery)

    def _non_resource(self, info: Any, reason: str) -> web.StreamResponse:
        if info.verb == "get" and views.is_discovery(info.path):
            client = info.client.key
            for m in getattr(info, "accept", ()) or ():
                candidates = [str(m)]
                if "*" in (m.type, m.subtype):
                    candidates = [JSON_CT, PB_CT]
                for ct in candidates:
                    body = self.store.get_blob(client, views.blob_name(info.path, ct))
                    if body is not None:
                        return _ok(200, ct, body)
            body = self.store.get_blob(client, views.blob_name(info.path, JSON_CT))
            if body is not None:
                return _ok(200, JSON_CT, body)
        return _unavailable(info, reason)

    # ---------------------------------------------------------------- GET

    async def _get(self, info: Any, reason: str) -> web.StreamResponse:
        if info.subresource:
            return _unavailable(info, reason)
        found = self.find_object(info)
        if found is not None:
            return _ok(200, *found)
        if self._proves_absent(info):
            return _error(status.not_found(info.resource, info.name, info.api_group or ""))
        return _unavailable(info, reason)

    def find_object(self, info: Any) -> tuple[str, bytes] | None:
        """(content type, body) of the object a GET names, from the client's cache, or None."""
        ns, name = info.namespace or "", info.name or ""
        for enc, shape in self.acceptable(info):
            body = self.store.get_object(views.object_key(info, shape=shape, encoding=enc))
            if body is not None:
                return _content_type(enc), body
            if shape == POM:
                body = self.store.get_object(views.object_key(info, shape="", encoding=enc))
                if body is not None:
                    return _content_type(enc), _pom_object(enc, body)
            for src in self._views_of(info, enc, shape):
                item = self.store.item(src.key, ns, name)
                if item is None:
                    continue
                kind, api_version = _object_kind(src, shape)
                raw = _pom_item(enc, item.raw) if shape == POM and src.key.shape != POM else item.raw
                if enc == "protobuf":
                    return PB_CT, protobuf.wrap(api_version, kind, raw)
                return JSON_CT, jsonwire.object_body(raw, kind, api_version)
        return None

    def _views_of(self, info: Any, enc: str, shape: str) -> Iterable[Source]:
        """The client's views of the request's resource in `enc` usable for `shape`, newest first."""
        out = []
        for key, meta in self.store.views(info.client.key):
            if (key.group, key.version, key.resource) != (info.api_group or "", info.api_version or "", info.resource):
                continue
            if key.encoding != enc or key.shape not in (shape, ""):
                continue
            out.append(Source(key, meta, True))
        out.sort(key=lambda s: (s.meta.complete, store_.rv_number(s.meta.resource_version)), reverse=True)
        return out

    def _proves_absent(self, info: Any) -> bool:
        """A complete view that would hold the object if it existed, and does not: the one case for 404."""
        ns, name = info.namespace or "", info.name or ""
        for key, meta in self.store.views(info.client.key):
            if not meta.complete or (key.group, key.version, key.resource) != (info.api_group or "",
                                                                              info.api_version or "", info.resource):
                continue
            if key.namespace not in ("", ns) or key.label_selector:
                continue
            fsel = selectors.parse_fields(key.field_selector)
            if not fsel.empty and not fsel.matches({"metadata.name": name, "metadata.namespace": ns}):
                continue
            if not fsel.empty and set(r.field for r in fsel.requirements) - {"metadata.name", "metadata.namespace"}:
                continue
            if self.store.item(key, ns, name) is None:
                return True
        return False

    # ---------------------------------------------------------------- LIST

    def find_list_source(self, info: Any, enc: str, shape: str) -> Source | None:
        """The exact complete view of the request, or the freshest complete wider view that covers it."""
        exact = views.view_key(info, shape=shape, encoding=enc)
        meta = self.store.view(exact)
        if meta is not None and meta.complete:
            return Source(exact, meta, False)
        labels = selectors.parse_labels(info.label_selector or "")
        fields = selectors.parse_fields(info.field_selector or "", info.resource, info.api_group or "")
        ns = info.namespace or ""
        best: Source | None = None
        for key, m in self.store.views(info.client.key):
            if not m.complete or key.encoding != enc or key.shape not in (shape, ""):
                continue
            if (key.group, key.version, key.resource) != (info.api_group or "", info.api_version or "", info.resource):
                continue
            if key.namespace not in ("", ns):
                continue
            try:
                wide_l = selectors.parse_labels(key.label_selector)
                wide_f = selectors.parse_fields(key.field_selector)
            except errors.KubeError:
                continue
            if not (selectors.covers(wide_l, labels) and selectors.covers(wide_f, fields)):
                continue
            if key == exact:
                continue
            cand = Source(key, m, True)
            if best is None or store_.rv_number(m.resource_version) > store_.rv_number(best.meta.resource_version):
                best = cand
        return best

    async def _list(self, info: Any, reason: str, request: web.BaseRequest | None = None) -> web.StreamResponse:
        for enc, shape in self.acceptable(info):
            src = self.find_list_source(info, enc, shape)
            if src is not None:
                resp = await asyncio.to_thread(self.list_response, info, src, enc, shape)
                size = resp.content_length or 0
                memory.trim(size)  # the items read to build it are freed: give that heap back
                if request is not None and size >= memory.TRIM_AFTER and isinstance(resp, web.Response):
                    return await _send_unheld(request, resp)
                return resp
        return _unavailable(info, reason, what="no complete cached list for this query")

    def list_response(self, info: Any, src: Source, enc: str, shape: str) -> web.StreamResponse:
        """The LIST answer from one view (runs in a thread: reading and joining 50k items takes a while)."""
        view_rv = src.meta.resource_version
        problem = _list_rv_problem(info, view_rv)
        if problem is not None:
            return _error(problem)
        start = ""
        if info.continue_:
            start = _decode_continue(info.continue_, view_rv)
            if start is None:
                return _error(status.expired_continue())
        convert = shape == POM and src.key.shape != POM
        want = self._item_filter(info, src)
        if want is None and not start and not convert and not _limited(info):
            # the fast path: the whole view, joined as stored; the joined body is kept while the view is unchanged
            # (offline, views change only when the link is back), so a client relisting costs no read at all
            m = src.meta
            body_key = (src.key.view_id(), m.resource_version, m.updated_at, m.count, enc, shape)
            body = self.bodies.get(body_key)
            if body is None:
                got_raw = self.store.read_raw(src.key)
                if got_raw is None or not got_raw[0].complete:  # a corrupt item was skipped: never a short list
                    return _unavailable(info, "offline", what="the cached list has a record that does not read back")
                body = _build_list(src, enc, shape, view_rv, got_raw[1], "")
                got = got_raw[0]
                if (got.resource_version, got.updated_at, got.count) == (m.resource_version, m.updated_at, m.count):
                    self.bodies.put(body_key, body)
            return _ok(200, _content_type(enc), body)
        got = self.store.read_view(src.key)
        if got is None or not got[0].complete:
            return _unavailable(info, "offline", what="the cached list has a record that does not read back")
        raws: list[bytes] = []
        limit = info.limit if _limited(info) else None
        cont = last = ""
        for item in got[1]:
            key = f"{item.namespace}/{item.name}"
            if start and key <= start:
                continue
            if want is not None and not want(item):
                continue
            if limit is not None and len(raws) == limit:
                cont = _encode_continue(view_rv, last)
                break
            raws.append(_pom_item(enc, item.raw) if convert else item.raw)
            last = key
        return _ok(200, _content_type(enc), _build_list(src, enc, shape, view_rv, raws, cont))

    def _item_filter(self, info: Any, src: Source) -> Any:
        """A predicate for the items of a wider view that the request selects, or None when all are selected."""
        if not src.filtered:
            return None
        ns = info.namespace or ""
        labels = selectors.parse_labels(info.label_selector or "")
        fields = selectors.parse_fields(info.field_selector or "", info.resource, info.api_group or "")
        by_ns = bool(ns) and not src.key.namespace
        if not by_ns and labels.empty and fields.empty:
            return None

        def want(item: store_.Item) -> bool:
            if by_ns and item.namespace != ns:
                return False
            return labels.matches(item.labels) and fields.matches(item.fields)

        return want

    # ---------------------------------------------------------------- WATCH

    async def _watch(self, request: web.Request, info: Any, reason: str) -> web.StreamResponse:
        src = enc = shape = None
        for e, s in self.acceptable(info):
            src = self.find_list_source(info, e, s)
            if src is None:
                exact = views.view_key(info, shape=s, encoding=e)
                meta = self.store.view(exact)
                if meta is not None:  # an incomplete view still has a resourceVersion to hold a plain watch at
                    src = Source(exact, meta, False)
            if src is not None:
                enc, shape = e, s
                break
        if src is None:
            return _unavailable(info, reason, what="no cached view for this watch")
        assert enc is not None and shape is not None
        view_rv = src.meta.resource_version
        rv = info.resource_version or ""
        replay = bool(info.send_initial_events) or rv in ("", "0")
        if replay and not src.meta.complete:
            return _unavailable(info, reason, what="no complete cached list for this watch")
        kind, api_version = _object_kind(src, shape)
        cmp = store_.compare_rv(rv, view_rv) if rv not in ("", "0") else 0
        frames: list[bytes] | None = None
        if replay and not (cmp is not None and cmp > 0):
            # read before the headers go: a view found short of a corrupt item is still answered 503
            frames = await asyncio.to_thread(self._initial_events, info, src, enc, shape, kind, api_version)
            if frames is None:
                return _unavailable(info, reason, what="the cached list has a record that does not read back")
        resp = web.StreamResponse(status=200, headers={
            "Content-Type": protobuf.WATCH_CONTENT_TYPE if enc == "protobuf" else JSON_CT, **_NO_CACHE})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        if (not replay and cmp != 0) or (cmp is not None and cmp > 0):
            # older: the events since are unknown (no history offline); newer: not seen yet (a watch-list too: its
            # snapshot cannot be as new as asked). Either way the reflector relists (or retries the watch-list with
            # resourceVersion=""), which the cache answers (wire brief §3).
            st = status.too_old_rv(rv, view_rv) if cmp is None or cmp < 0 else status.gone(
                f"too large resource version: {rv}, current: {view_rv}")
            await resp.write(status.watch_error_event(st, enc))
            await resp.write_eof()
            return resp
        if frames is not None:
            for chunk in _batches(frames):
                await resp.write(chunk)
            if info.send_initial_events:
                blueprint = _blueprint(enc, kind, api_version)
                await resp.write(_bookmark(enc, kind, api_version, view_rv,
                                           {INITIAL_EVENTS_END: "true", LIST_BLUEPRINT: blueprint}))
        bookmarks = bool(info.allow_watch_bookmarks)
        if bookmarks and not info.send_initial_events:
            await resp.write(_bookmark(enc, kind, api_version, view_rv))
        await self._hold(resp, info, enc, kind, api_version, view_rv, bookmarks)
        return resp

    def _initial_events(self, info: Any, src: Source, enc: str, shape: str, kind: str,
                        api_version: str) -> list[bytes] | None:
        """The view as ADDED events; None when it cannot be replayed whole (a record did not read back)."""
        want = self._item_filter(info, src)
        convert = shape == POM and src.key.shape != POM
        got = self.store.read_view(src.key)
        if got is None or not got[0].complete:
            return None
        out = []
        for item in got[1]:
            if want is not None and not want(item):
                continue
            raw = _pom_item(enc, item.raw) if convert else item.raw
            if enc == "protobuf":
                out.append(protobuf.encode_event("ADDED", api_version, kind, raw))
            else:
                out.append(jsonwire.encode_event("ADDED", jsonwire.typed(raw, kind, api_version)))
        return out

    async def _hold(self, resp: web.StreamResponse, info: Any, enc: str, kind: str, api_version: str, rv: str,
                    bookmarks: bool) -> None:
        """Keep the stream open until timeoutSeconds or the upstream's return, with bookmarks if asked."""
        loop = asyncio.get_running_loop()
        timeout = info.timeout_seconds if info.timeout_seconds else self.watch_timeout
        deadline = loop.time() + timeout
        next_bookmark = loop.time() + self.bookmark_interval
        # Per-request failover: the prober still says online, so no state change will tell us the upstream is back;
        # hold failover_hold at most. Once the prober agrees the upstream is gone, this is an ordinary offline watch,
        # ended when the upstream comes back (the client then re-watches upstream from its last resourceVersion).
        failover_until = loop.time() + self.failover_hold if self.is_online() else None
        # client-go takes a watch that ends within a second of its start with no event as an error (a "very short
        # watch") and relists from scratch: the upstream's return ends none younger than that
        youngest_end = loop.time() + MIN_WATCH_AGE
        while True:
            if failover_until is not None and not self.is_online():
                failover_until = None
            if failover_until is None and self._back.is_set():
                if loop.time() >= youngest_end:
                    break
                deadline = min(deadline, youngest_end)
            now = loop.time()
            end = deadline if failover_until is None else min(deadline, failover_until)
            if now >= end:
                if bookmarks:  # the API server sends one just before it ends a watch at its timeout
                    await resp.write(_bookmark(enc, kind, api_version, rv))
                break
            changed = self._changed
            try:
                async with asyncio.timeout(min(end, next_bookmark) - now):
                    await changed.wait()
            except TimeoutError:
                if bookmarks and loop.time() >= next_bookmark:
                    await resp.write(_bookmark(enc, kind, api_version, rv))
                    next_bookmark = loop.time() + self.bookmark_interval
        await resp.write_eof()

    # ---------------------------------------------------------------- writes

    async def _write(self, request: web.Request, info: Any, reason: str) -> web.StreamResponse:
        body = await limits.read_body(request)
        content_type = request.headers.get("Content-Type", "")
        if body and "json" in content_type.split(";")[0]:
            json.loads(body)  # JSON (or a JSON patch) that does not parse is 400 offline as online, whatever comes next
        created = writes.body_name(body, content_type) if info.verb == "create" else None
        decision = writes.decide(info, node=self.node, created=created, holds=self._holds(info))
        log.debug("offline write %s %s: %s", info.verb, info.path, decision.why)
        action = writes.Action
        if decision.action is action.RENEW_LEASE:
            return self._renew_lease(info, body, content_type)
        if decision.action is action.PATCH_NODE_STATUS:
            return self._patch_node_status(info, body)
        if decision.action is action.ALREADY_EXISTS:
            assert created is not None
            return _error(status.already_exists(info.resource, created[1], info.api_group or ""))
        if decision.action is action.ECHO_EVENT:
            ct, out = writes.echo_event(info, body, content_type)
            return _ok(decision.status, ct, out)
        if decision.action is action.TOKEN and self.tokens is not None:
            ask = tokens_.read_request(body, content_type, info.namespace or "", info.name or "")
            refusal = tokens_.node_refusal(ask, self.node, self.pod_facts(ask))
            if refusal is not None:
                code, why = refusal
                log.warning("offline TokenRequest %s/%s refused (%d): %s", ask.namespace, ask.service_account,
                            code, why)
                if code == 403:
                    return _error(status.forbidden("serviceaccounts", ask.service_account, why))
                if code == 400:
                    return _error(status.bad_request(why))
                return _unavailable(info, reason, what=why)
            enc = "protobuf" if ("protobuf", "") in self.acceptable(info)[:1] else "json"
            answer = self.tokens.answer(ask, enc, body, content_type)
            log.info("offline TokenRequest %s/%s for %s: %s token", ask.namespace, ask.service_account,
                     ask.binding.name if ask.binding else "-", answer.source)
            return _ok(answer.status, answer.content_type, answer.body)
        return _unavailable(info, reason, what=f"{info.verb} is not possible offline")

    def pod_facts(self, ask: tokens_.Ask) -> tokens_.PodFacts | None:
        """The node, service account and uid of the pod `ask` is bound to, from the node identity's views of pods
        (any of its components' partitions: all of them were filled with the node's own credentials), the freshest
        view first; None when no such view holds the pod."""
        b = ask.binding
        if b is None or b.kind != "Pod":
            return None
        found: list[tuple[int, store_.ViewKey]] = []
        for key, meta in self.store.views():
            if "@" in key.client or (key.group, key.resource) != ("", "pods"):
                continue
            if key.namespace not in ("", ask.namespace):
                continue
            found.append((store_.rv_number(meta.resource_version), key))
        for _, key in sorted(found, key=lambda f: f[0], reverse=True):
            item = self.store.item(key, ask.namespace, b.name)
            if item is None:
                continue
            try:
                meta_ = protobuf.object_meta(item.raw) if key.encoding == "protobuf" else jsonwire.object_meta(item.raw)
            except errors.KubeError:
                continue
            return tokens_.PodFacts(item.fields.get("spec.nodeName", ""),
                                    item.fields.get("spec.serviceAccountName") or "default", meta_.uid)
        return None

    def _holds(self, info: Any) -> Any:
        def holds(namespace: str, name: str) -> bool:
            probe = _Probe(info, namespace, name)
            for enc in ("protobuf", "json"):
                if self.store.get_object(views.object_key(probe, shape="", encoding=enc)) is not None:
                    return True
                if any(self.store.item(s.key, namespace, name) is not None for s in self._views_of(probe, enc, "")):
                    return True
            return False

        return holds

    def _local_rv(self, key: tuple[str, str, str, str], sent_rv: str) -> str:
        """One past the upstream version the object was based on, the same for every local write of the outage."""
        base, local = self._local_base.get(key, ("", ""))
        if sent_rv != local or not base:
            base = sent_rv
        local = writes.local_resource_version(base)
        self._local_base[key] = (base, local)
        return local

    def _renew_lease(self, info: Any, body: bytes, content_type: str) -> web.StreamResponse:
        enc = "protobuf" if content_type.split(";")[0].strip() == PB_CT else "json"
        if enc == "protobuf":
            sent_rv = protobuf.object_meta(protobuf.unwrap(body).raw).resource_version
        else:
            sent_rv = jsonwire.object_meta(body).resource_version
        rv = self._local_rv((info.client.key, "leases", info.namespace or "", info.name or ""), sent_rv)
        out = writes.renew_lease(body, content_type, rv)
        if self.writer is not None:  # a later GET of the lease (kubelet's ensureLease) sees the renewal
            self.writer.put_object(views.object_key(info, shape="", encoding=enc), out)
        return _ok(200, _content_type(enc), out)

    def _patch_node_status(self, info: Any, body: bytes) -> web.StreamResponse:
        probe = _Probe(info, "", info.name or "", resource="nodes", subresource=None)
        try:
            patch = json.loads(body)
        except ValueError as e:
            raise errors.InvalidRequest(f"the patch is not JSON: {e}") from e
        encodings = [e for e, shape in self.acceptable(info) if not shape] or ["json"]
        for enc in dict.fromkeys([*encodings, "protobuf", "json"]):
            node = self._node_doc(probe, enc)
            if node is None:
                continue
            upstream_rv = (node.get("metadata") or {}).get("resourceVersion", "")
            rv = self._local_rv((info.client.key, "nodes", "", info.name or ""), upstream_rv)
            patched = writes.patch_node_status(node, patch if isinstance(patch, dict) else {}, rv)
            patched = {"kind": "Node", "apiVersion": "v1",
                       **{k: v for k, v in patched.items() if k not in ("kind", "apiVersion")}}
            if enc == "protobuf":
                out = protobuf.wrap("v1", "Node", schema.to_protobuf(patched, "Node"))
            else:
                out = json.dumps(patched, separators=(",", ":")).encode() + b"\n"
            if self.writer is not None:  # kubelet's next GET nodes/<node>?resourceVersion=0 sees its own status
                self.writer.put_object(views.object_key(probe, shape="", encoding=enc), out)
            return _ok(200, _content_type(enc), out)
        return _unavailable(info, "offline", what="the node is not cached")

    def _node_doc(self, probe: Any, enc: str) -> dict[str, Any] | None:
        """The cached Node (the stored GET, else from one of the client's views) as its JSON dict."""
        body = self.store.get_object(views.object_key(probe, shape="", encoding=enc))
        raw: bytes | None = None
        if body is not None:
            if enc == "json":
                return json.loads(body)
            raw = protobuf.unwrap(body).raw
        else:
            for src in self._views_of(probe, enc, ""):
                item = self.store.item(src.key, "", probe.name)
                if item is not None:
                    if enc == "json":
                        return json.loads(item.raw)
                    raw = item.raw
                    break
        return schema.to_json("Node", raw) if raw is not None else None


class Bodies:
    """Least-recently-used joined LIST bodies, at most `max_bytes` in all; any thread."""

    __slots__ = ("_bytes", "_items", "_lock", "hits", "max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            body = self._items.get(key)
            if body is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return body

    def put(self, key: tuple, body: bytes) -> None:
        if len(body) > self.max_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            self._bytes += len(body) - (len(old) if old is not None else 0)
            self._items[key] = body
            while self._bytes > self.max_bytes:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    @property
    def size(self) -> int:
        return self._bytes


class _Probe:
    """The RequestInfo fields views.* read, for another object of the same client and resource."""

    __slots__ = ("api_group", "api_version", "client", "name", "namespace", "resource", "subresource")

    def __init__(self, info: Any, namespace: str, name: str, *, resource: str | None = None,
                 subresource: str | None = None) -> None:
        self.api_group, self.api_version, self.client = info.api_group, info.api_version, info.client
        self.resource = resource or info.resource
        self.subresource = subresource
        self.namespace, self.name = namespace, name


# ---------------------------------------------------------------- helpers


def _content_type(enc: str) -> str:
    return PB_CT if enc == "protobuf" else JSON_CT


async def _send_unheld(request: web.BaseRequest, resp: web.Response) -> web.StreamResponse:
    """Send a big built answer from the handler and return a response that holds no body. aiohttp keeps the
    response a handler returns until the connection's next request, and client-go keeps its connections: a 10k-pod
    list's 60 MB would stay resident per connection after it was served."""
    body = resp.body
    out = web.StreamResponse(status=resp.status, headers=resp.headers)
    out.content_length = len(body)
    del resp
    await out.prepare(request)
    await out.write(body)
    del body
    await out.write_eof()
    return out


def _ok(code: int, content_type: str, body: bytes) -> web.Response:
    return web.Response(status=code, body=body, headers={"Content-Type": content_type, **_NO_CACHE})


def _error(st: dict[str, Any]) -> web.Response:
    """A Status error in JSON (client-go reads it whatever it asked for), never with Retry-After: offline, waiting
    inside the request helps nobody; the caller's own loop retries (wire brief §5)."""
    ct, body = status.encode(st, "json")
    return web.Response(status=st["code"], body=body, headers={"Content-Type": ct, **_NO_CACHE})


def _unavailable(info: Any, reason: str, what: str = "not cached") -> web.Response:
    return _error(status.service_unavailable(f"the API server is unreachable ({reason}) and edgeproxy cannot answer "
                                             f"this offline: {what}"))


def _object_kind(src: Source, shape: str) -> tuple[str, str]:
    """(kind, apiVersion) of one object of a view ("PodList" → "Pod")."""
    if shape == POM:
        return POM, "meta.k8s.io/v1"
    kind = src.meta.kind
    return (kind[:-4] if kind.endswith("List") else kind), src.meta.api_version


def _pom_item(enc: str, raw: bytes) -> bytes:
    """A PartialObjectMetadata list item from a full object's bytes (wire brief §4)."""
    if enc == "protobuf":
        return protobuf.field_bytes(1, protobuf.metadata_field(raw))
    metadata = json.loads(raw).get("metadata") or {}
    return b'{"kind":"PartialObjectMetadata","apiVersion":"meta.k8s.io/v1","metadata":' + json.dumps(
        metadata, separators=(",", ":"), ensure_ascii=False).encode() + b"}"


def _pom_object(enc: str, body: bytes) -> bytes:
    if enc == "protobuf":
        return protobuf.wrap("meta.k8s.io/v1", POM, _pom_item(enc, protobuf.unwrap(body).raw))
    return _pom_item(enc, body) + b"\n"


def _build_list(src: Source, enc: str, shape: str, rv: str, raws: list[bytes], cont: str) -> bytes:
    if shape == POM:
        kind, api_version = POM + "List", "meta.k8s.io/v1"
    else:
        kind, api_version = src.meta.kind, src.meta.api_version
    if enc == "protobuf":
        return protobuf.build_list(api_version, kind, rv, raws, cont)
    return jsonwire.build_list(kind, api_version, rv, raws, cont)


def _limited(info: Any) -> bool:
    """Whether to page: a limit, unless resourceVersion=0, which the API server's watch cache answers whole."""
    return bool(info.limit) and info.limit > 0 and info.resource_version != "0"


def _list_rv_problem(info: Any, view_rv: str) -> dict[str, Any] | None:
    """The Status a LIST's resourceVersion earns against a view at `view_rv`, or None (wire brief §3)."""
    rv = info.resource_version
    if rv in (None, "", "0") or info.continue_:
        return None
    cmp = store_.compare_rv(rv, view_rv)
    if cmp is None:
        return None
    if cmp > 0:
        return status.too_large_rv(rv, view_rv)
    if info.resource_version_match == "Exact" and cmp < 0:
        return status.expired_list_rv()
    return None


def _encode_continue(rv: str, last: str) -> str:
    doc = json.dumps({"v": CONTINUE_VERSION, "rv": rv, "start": last}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(doc).rstrip(b"=").decode()


def _decode_continue(token: str, view_rv: str) -> str | None:
    """The key to continue after, or None when the token is not ours or the view moved since (→ 410 Expired). A
    token that is no continue token at all (not base64 JSON) is InvalidRequest (400), as the API server says."""
    try:
        doc = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (ValueError, binascii.Error, RecursionError) as e:
        raise errors.InvalidRequest(f"invalid continue token: {type(e).__name__}") from None
    if not isinstance(doc, dict):
        raise errors.InvalidRequest("invalid continue token: not an object")
    if doc.get("v") != CONTINUE_VERSION or doc.get("rv") != view_rv:
        return None
    start = doc.get("start")
    return start if isinstance(start, str) and start else None


def _bookmark(enc: str, kind: str, api_version: str, rv: str, annotations: dict[str, str] | None = None) -> bytes:
    if enc == "protobuf":
        return protobuf.encode_event("BOOKMARK", api_version, kind, protobuf.bookmark_raw(rv, annotations, kind))
    return jsonwire.encode_event("BOOKMARK", jsonwire.bookmark_obj(kind, api_version, rv, annotations))


def _blueprint(enc: str, kind: str, api_version: str) -> str:
    """The empty list the API server describes the watch-list's list type with (base64, in the stream's encoding)."""
    if enc == "protobuf":
        body = protobuf.build_list(api_version, kind + "List", "", [])
    else:
        body = json.dumps({"kind": kind + "List", "apiVersion": api_version, "metadata": {}, "items": None},
                          separators=(",", ":")).encode() + b"\n"
    return base64.b64encode(body).decode()


def _batches(frames: list[bytes], size: int = 1 << 20) -> Iterable[bytes]:
    batch: list[bytes] = []
    n = 0
    for f in frames:
        batch.append(f)
        n += len(f)
        if n >= size:
            yield b"".join(batch)
            batch, n = [], 0
    if batch:
        yield b"".join(batch)

