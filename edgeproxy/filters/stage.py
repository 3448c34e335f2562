"""The response-filter stage: between the API server's answer and both the client and the recorder.

The proxy asks `select(info)` before it forwards a request: a Chain when filters apply to that (client, resource),
else None and nothing changes on that path. For a filtered request the proxy asks the API server for an identity
encoding (a filter must read the body; gzip would hide it), waits for `prepare(chain)` (the node's pool, at most
PREPARE_TIMEOUT on the first request), then passes every body chunk through the Transform that `begin()` returns:
- a list or an object is buffered whole and rewritten at its end (kube.rewrite: untouched items keep their bytes, an
  untouched answer is passed on as it came);
- a watch is rewritten frame by frame as it streams (no event is held back past its own last byte).
What the client gets is what the recorder gets, so the cache holds the filtered view and offline answers equal the
online ones. A body that does not decode is passed on unchanged (a filter never breaks a client's read; the
recorder then judges the bytes as it would have).

When what a filter depends on changes (the node's pool, the redirect being withheld or applied), open filtered
watches end with an ERROR 410 Expired event, so their clients relist through the filters as they are now, and the
views they filled are marked incomplete until that relist is recorded (a list at an unchanged resourceVersion would
otherwise be taken for the old, differently filtered one). The same holds across restarts (`reconcile`).

`state()` (in /debug/state, shown by `edgeproxy debug diagnose`) says which filters touched which views.
Neighbours: chain (the decisions), facts (the node's pool), proxy (calls select/prepare/begin), views (view keys).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cache import store
from edgeproxy.autonomy import views
from edgeproxy.filters import chain as chain_
from edgeproxy.filters import facts as facts_
from edgeproxy.kube import errors as kube_errors
from edgeproxy.kube import rewrite
from edgeproxy.kube import status as kube_status

log = logging.getLogger(__name__)

PREPARE_TIMEOUT = 3.0  # seconds the first filtered request waits for the node's pool (then it is served unfiltered)
FILTERED_RESOURCES = frozenset({"endpointslices", "endpoints"})
MAX_BODY = 256 << 20  # a list body larger than this is passed on unfiltered rather than held in memory


class Stage:
    """One per process.

    invalidate(view key): the cache writer's mark_incomplete (set by the server). cert_ips: the IP addresses the
    in-cluster serving certificate is valid for; when given, the redirect is withheld until the `kubernetes`
    Service's ClusterIPs are read and covered (a pod whose TLS check fails cannot reach the API server at all).
    memo: a file remembering what the cached views were filtered with; when that differs at start (settings changed
    across a restart) or later (the pool changed), the cached EndpointSlice/Endpoints views are marked incomplete
    until they are relisted, so a list at an unchanged resourceVersion is recorded again, filtered the new way.
    stored_views(): the views the cache holds. complete(view key): whether the cache holds that view complete (or
    not at all): a filtered client's watch on a view marked incomplete, which no list has refilled since, ends at
    once with 410 Expired: resuming from its resourceVersion, the client would never be sent the objects again, and
    would keep what it was sent filtered the old way (kube-proxy pointing at the API server after the redirect was
    turned on)."""

    __slots__ = ("_fresh", "_views", "_watches", "cert_ips", "complete", "facts", "invalidate", "memo", "settings",
                 "stored_views", "withheld")

    def __init__(self, settings: chain_.Settings, facts: facts_.Facts | None = None,
                 invalidate: Callable[[store.ViewKey], None] | None = None, *,
                 cert_ips: frozenset[str] | None = None, memo: Path | None = None,
                 stored_views: Callable[[], Iterable[store.ViewKey]] | None = None,
                 complete: Callable[[store.ViewKey], bool] | None = None) -> None:
        self.settings = settings
        self.facts = facts
        self.invalidate = invalidate
        self.cert_ips = cert_ips
        self.memo = memo
        self.stored_views = stored_views
        self.complete = complete
        self._fresh: set[store.ViewKey] = set()  # views a filtered list refilled since they were last invalidated
        self.withheld = ""  # why the redirect is not applied now ("" when it is, or is off)
        # (client key, view) -> {"filters": {name: objects changed}, "requests": n, "last": ts, "key", "names"}
        self._views: dict[tuple[str, str], dict[str, Any]] = {}
        self._watches: set[Transform] = set()
        if facts is not None:
            facts.on_change(self._facts_changed)

    def place(self) -> chain_.Place:
        return self.facts.current() if self.facts is not None else chain_.Place()

    def target(self) -> tuple[str, int] | None:
        """The redirect's (IP, port), or None: off, or withheld until the certificate is known to cover the
        `kubernetes` Service's ClusterIPs."""
        redirect = self.settings.redirect
        if redirect is None or self.cert_ips is None:
            self.withheld = ""
            return redirect
        ips = self.facts.cluster_ips if self.facts is not None else None
        if ips is None:
            self.withheld = "the kubernetes Service's ClusterIP is not known yet"
            return None
        missing = [ip for ip in ips if ip not in self.cert_ips]
        if missing:
            self.withheld = (f"the in-cluster serving certificate is not valid for the kubernetes Service's "
                             f"ClusterIP {', '.join(missing)}: pods would fail its TLS check")
            return None
        self.withheld = ""
        return redirect

    def select(self, info: Any) -> chain_.Chain | None:
        if info is None or not info.is_resource:
            return None
        names = chain_.names_for(self.settings, info.client.component, info.api_group or "", info.resource or "",
                                 info.verb, info.subresource or "")
        if not names:
            return None
        return chain_.Chain(names, info.resource, self.place, self.target)

    async def prepare(self, chain: chain_.Chain) -> None:
        if self.facts is not None:
            await self.facts.ensure(PREPARE_TIMEOUT)

    def begin(self, chain: chain_.Chain, info: Any, status: int, headers: Any,
              abort: Callable[[], None] | None = None) -> Transform | None:
        """A Transform for a response the chain can read (200, JSON or protobuf, full objects, not compressed)."""
        content_type = headers.get("Content-Type", "")
        encoding = views.encoding_of(content_type)
        if status != 200 or encoding is None or views.shape_of(content_type) or headers.get("Content-Encoding"):
            return None
        key = views.safe_view_key(info, shape="", encoding=encoding) if info.verb != "get" else None
        label = key.describe() if key is not None else f"{info.client.key} {info.path}"
        stats = self._views.setdefault((info.client.key, label), {"filters": {}, "requests": 0, "last": None,
                                                                  "errors": 0, "key": key, "names": chain.names})
        stats["requests"] += 1
        t = Transform(self, chain, encoding, info.verb, stats, abort)
        if key is not None and info.verb == "list" and not info.continue_:
            self._fresh.add(key)
        if info.verb == "watch":
            self._watches.add(t)
            if key is not None and self._stale(key) and not info.send_initial_events:
                t.expire()  # the client relists through the filters as they are now
        return t

    def _stale(self, key: store.ViewKey) -> bool:
        if key in self._fresh or self.complete is None:
            return False
        try:
            return not self.complete(key)
        except Exception:  # the cache cannot tell: let the watch be
            log.exception("filters: cannot read the state of %s", key.describe())
            return False

    # ---- when what the filters depend on changes

    def fingerprint(self) -> dict[str, object]:
        """What the views recorded from now on are filtered with; None for what is not known yet."""
        if not self.settings.any:
            return {}
        out: dict[str, object] = {"components": sorted(self.settings.components)}
        fetched = self.facts is not None and bool(self.facts.fetched_at)
        if self.settings.topology:
            out["pool"] = self.place().pool if fetched else None
        if self.settings.redirect is not None:
            target = self.target()
            known = self.cert_ips is None or fetched
            out["redirect"] = (f"{target[0]}:{target[1]}" if target else "withheld") if known else None
        return out

    def reconcile(self) -> bool:
        """Remember what the cache is filtered with (remember() below); True when cached views were marked."""
        if self.memo is None:
            return False
        marked = remember(self.memo, self.fingerprint(), self.stored_views, self.invalidate)
        if marked:
            self._fresh.clear()
        return marked

    def _facts_changed(self, what: str) -> None:
        name = chain_.TOPOLOGY if what == "pool" else chain_.REDIRECT
        for t in list(self._watches):
            if name in t.chain.names:
                t.expire()
        if self.invalidate is not None:
            for stats in self._views.values():
                if stats["key"] is not None and name in stats["names"]:
                    self.invalidate(stats["key"])
                    self._fresh.discard(stats["key"])
        self.reconcile()

    def state(self) -> dict[str, object]:
        target = self.target()
        return {
            "settings": {"components": sorted(self.settings.components), "servicetopology": self.settings.topology,
                         "inclusterredirect": (f"{self.settings.redirect[0]}:{self.settings.redirect[1]}"
                                               if self.settings.redirect else None),
                         "topology_label": f"{chain_.TOPOLOGY_LABEL}={chain_.TOPOLOGY_POOL}"},
            "redirect_applied": f"{target[0]}:{target[1]}" if target else None,
            "redirect_withheld": self.withheld or None,
            "facts": self.facts.state() if self.facts is not None else None,
            "views": [{"client": client, "view": view, "requests": s["requests"], "touched": dict(s["filters"]),
                       "errors": s["errors"], "last_touched": s["last"]}
                      for (client, view), s in sorted(self._views.items())],
            "open_watches": len(self._watches),
        }


def remember(memo: Path, now: dict[str, object], stored_views: Callable[[], Iterable[store.ViewKey]] | None,
             invalidate: Callable[[store.ViewKey], None] | None) -> bool:
    """Compare `now` with the fingerprint the cache's views were recorded with (the file `memo`; none: a cache
    filled without filters); when they differ, mark every cached EndpointSlice/Endpoints view incomplete (relisted
    online, 503 offline rather than served filtered the other way) and remember `now`. A part unknown on either side
    (None: the pool before it was read) counts as unchanged. True when views were marked."""
    try:
        old = json.loads(memo.read_text())
    except FileNotFoundError:
        old = {}
    except (OSError, ValueError):
        old = None  # unreadable: assume the worst
    merged = dict(now)
    if isinstance(old, dict):
        for k, v in now.items():
            if v is None:
                merged[k] = old.get(k)
    same = isinstance(old, dict) and old.keys() == merged.keys() and all(
        merged[k] is None or old[k] is None or merged[k] == old[k] for k in merged)
    if same and merged == old:
        return False
    marked = 0
    if not same and invalidate is not None and stored_views is not None:
        for key in stored_views():
            if key.resource in FILTERED_RESOURCES:
                invalidate(key)
                marked += 1
    try:
        tmp = memo.with_suffix(".tmp")
        tmp.write_text(json.dumps(merged, sort_keys=True) + "\n")
        tmp.chmod(0o600)
        tmp.replace(memo)
    except OSError as e:
        log.warning("filters: cannot remember the filter settings in %s: %s", memo, e)
    if marked:
        log.info("filters: the filtering changed (%s -> %s): %d cached views to be relisted", old, merged, marked,
                 extra={"event": "filters_changed", "views": marked})
    return marked > 0


class Transform:
    """One response through the chain. feed(chunk) -> bytes to pass on now; end() -> the bytes still to pass on."""

    __slots__ = ("_abort", "_body", "_expired", "_passthrough", "_size", "_stats", "_watch", "chain", "encoding",
                 "stage", "verb")

    def __init__(self, stage: Stage, chain: chain_.Chain, encoding: str, verb: str, stats: dict[str, Any],
                 abort: Callable[[], None] | None) -> None:
        self.stage = stage
        self.chain = chain
        self.encoding = encoding
        self.verb = verb
        self._stats = stats
        self._abort = abort
        self._body: list[bytes] = []
        self._size = 0
        self._expired = False
        self._passthrough = False
        self._watch = rewrite.WatchRewriter(encoding, self._rewrite) if verb == "watch" else None

    def _rewrite(self, obj: bytes) -> bytes | None:
        return self.chain.rewrite(self.encoding, obj)

    def feed(self, chunk: bytes) -> bytes:
        if self._passthrough:
            return b"" if self._watch is not None else chunk
        if self._watch is not None:
            errors_before = self._watch.errors
            try:
                out = self._watch.feed(chunk)
            except kube_errors.KubeError as e:
                # The stream cannot be cut into frames: end it at the last whole frame (the client re-watches).
                self._fail(e)
                if self._abort is not None:
                    self._abort()
                return b""
            if self._watch.errors != errors_before:
                self._stats["errors"] += self._watch.errors - errors_before
            self._note()
            return out
        self._body.append(chunk)
        self._size += len(chunk)
        if self._size > MAX_BODY:
            self._fail(None)
            body, self._body = b"".join(self._body), []
            return body
        return b""

    def end(self) -> bytes:
        """The rest: a buffered body rewritten; for a watch, an ERROR 410 when it was expired, else nothing."""
        self.stage._watches.discard(self)
        if self._watch is not None:
            if self._expired:
                return kube_status.watch_error_event(
                    kube_status.gone("what edgeproxy's filters depend on changed: relist"), self.encoding)
            return b""
        body, self._body = b"".join(self._body), []
        if self._passthrough:
            return body
        try:
            if self.verb == "list":
                out, _ = rewrite.list_body(self.encoding, body, self._rewrite)
            else:
                out, _ = rewrite.object_body(self.encoding, body, self._rewrite)
        except kube_errors.KubeError as e:
            self._fail(e)
            return body
        self._note()
        return out

    def close(self) -> None:
        """The response is over, however it ended."""
        self.stage._watches.discard(self)

    def expire(self) -> None:
        """End this watch: its client gets ERROR 410 and relists."""
        self._expired = True
        if self._abort is not None:
            self._abort()

    def _note(self) -> None:
        touched = self.chain.touched
        if touched:
            filters = self._stats["filters"]
            for name, n in touched.items():
                filters[name] = filters.get(name, 0) + n
            touched.clear()
            self._stats["last"] = time.time()

    def _fail(self, e: Exception | None) -> None:
        self._passthrough = True
        self._stats["errors"] += 1
        if e is not None:
            log.warning("filters: %s passed on unfiltered: %s", self._stats.get("key") or self.verb, e)
