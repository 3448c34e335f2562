"""The request handler: classify, route, then forward upstream (with a tee to the recorder) or hand to the local side.

What it does: every request on the proxy listener is classified (kube.request), routed by the pure `route()` below,
and either forwarded to the API server with its response streamed back unchanged (status, headers minus hop-by-hop,
body bytes as they arrive: watch events are flushed one by one, gzip passes through still gzipped), tunnelled both
ways when it is an HTTP/1.1 Upgrade (exec, attach, port-forward), or answered by the `local` hook (local.py over the
cache; a 503 Status with `--cache off`). What it does not do: decode bodies (record.py does, off the client's path),
decide health (upstream.py), hold connections (httpclient.py), serve ops endpoints (server.py's second listener).

Seams for the cache:
- `recorder.begin(info, status, headers) -> sink | None` is called for get/list/watch (and create/update/patch:
  TokenRequests, the node agent's heartbeats) responses before the first body byte; `sink.feed(chunk)` gets every
  body chunk as it is written to the client and must not block (it enqueues); `sink.done(ok)` ends it (ok: the
  upstream body ended cleanly).
- `identities.resolve(info, headers)` / `.answered(info, headers, status)` (identity.py) decide the cache partition
  of a request with its own bearer token: the token's hash, or its ServiceAccount's once the token is believed.
- `pool.send(info, ...)` (pool/route.py, `serve --pool on`) answers a shareable read from the branch's pool leader
  (or, on the leader, its views) before the API server is asked, offline too; None sends it on as usual. Its answer
  streams and is teed exactly as an upstream one, but is not WAN traffic and does not vouch for a token.
- `local.handle(request, info, reason) -> StreamResponse` answers what cannot go upstream: routed LOCAL while
  offline, or a request that failed before any byte reached the client (per-request failover): it could not connect,
  or the API server sent no response head within `header_deadline()` (hung, or a black-holed link). A write whose
  body went up and got no head has an unknown outcome; the local side answers it as it answers writes offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any, Protocol

from aiohttp import helpers as aiohttp_helpers
from aiohttp import web
from aiohttp.http import HttpVersion11
from multidict import CIMultiDict, CIMultiDictProxy

from edgeproxy import httpclient, logs, metrics, upstream
from edgeproxy.guard import labels, warn
from edgeproxy.guard import limits as limits_
from edgeproxy.guard import trust as trust_
from edgeproxy.kube import duration
from edgeproxy.kube import errors as kube_errors
from edgeproxy.kube import request as kube_request
from edgeproxy.kube import status as kube_status

log = logging.getLogger(__name__)

# RFC 9110 §7.6.1: connection-specific fields a proxy must not forward; plus those the Connection header names.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade",
})
# The recorder sees reads, and the writes whose answers it keeps for offline use: TokenRequest answers (create
# serviceaccounts/token) and the node agent's Lease PUT / node status PATCH answers; it returns None for the rest.
_RECORDED_VERBS = frozenset({"get", "list", "watch", "create", "update", "patch"})
MAX_BUFFERED_BODY = 4 << 20  # request bodies up to this are read whole (retryable on failover); larger stream


class Route(enum.Enum):
    UPSTREAM = "upstream"  # forward, stream back, tee to the recorder
    LOCAL = "local"  # answer from the cache (offline)
    REJECT = "reject"  # answer with an error from the proxy itself
    UNAUTHORIZED = "unauthorized"  # 401: no bearer token, and this connection may not act as the node (guard.trust)


def route(info: kube_request.RequestInfo | None, online: bool, authorized: bool = True) -> Route:
    """Where a request goes: the one routing decision, pure. `info` is None when the request did not classify;
    `authorized` is False for a request without a bearer token on a connection that may not act as the node
    (guard.trust): it goes nowhere, online or offline.

    Online, everything goes upstream: the API server is the authority, even on requests the proxy could not parse.
    Offline, what the cache may answer goes to the local side; an unparseable request or a `connect` (exec, attach,
    port-forward: a live session with a container, nothing a cache holds) is rejected.
    """
    if not authorized:
        return Route.UNAUTHORIZED
    if online:
        return Route.UPSTREAM
    if info is None or info.verb == "connect":
        return Route.REJECT
    return Route.LOCAL


MIN_HEADER_DEADLINE = 1.0  # seconds: no client timeout makes the proxy give up on the API server sooner


def header_deadline(info: kube_request.RequestInfo | None, default: float) -> float | None:
    """Seconds a forwarded request waits for the API server's response head before it is answered locally; None for
    no deadline. Pure.

    A hung API server or a black-holed link (the connection accepted, or kept alive, and then silence) would
    otherwise hold the request until the prober declares the server down: ~20 s with the defaults, while kubelet's
    Lease PUT gives up at 10 s and two failed renewals make it close all its connections (wire brief §1). So:
    `default` (--upstream-header-timeout; 0 disables every deadline), or half the client's own `timeout` query
    parameter (client-go sends `timeout=10s` for a client with a 10 s Timeout) when that is shorter, so the local
    answer reaches the client before it gives up; never under MIN_HEADER_DEADLINE. A watch gets its headers at
    once from a real API server, so the deadline holds for them too; nothing after the head is timed (an idle
    watch is not hung), and upgrade tunnels never come here. None for a `connect` (exec, attach, port-forward,
    the proxy subresource) without an upgrade: its head comes from a pod, node or service behind the API server,
    however slow that is, and nothing local could answer it anyway.
    """
    if default <= 0 or (info is not None and info.verb == "connect"):
        return None
    deadline = default
    raw = info.timeout if info is not None else None
    if raw:
        client = duration.parse(raw)
        if client is not None and client > 0:
            deadline = min(deadline, max(MIN_HEADER_DEADLINE, client / 2))
    return deadline


class Sink(Protocol):
    def feed(self, chunk: bytes) -> None: ...

    def done(self, ok: bool) -> None: ...


class Recorder(Protocol):
    def begin(self, info: kube_request.RequestInfo, status: int, headers: CIMultiDictProxy[str]) -> Sink | None: ...


class Identities(Protocol):
    """edgeproxy.identity.Identities: the cache partition of a token-bearing request."""

    def resolve(self, info: kube_request.RequestInfo, headers: Mapping[str, str]) -> kube_request.RequestInfo: ...

    def answered(self, info: kube_request.RequestInfo, headers: Mapping[str, str],
                 status: int) -> kube_request.RequestInfo: ...


class Filters(Protocol):
    """edgeproxy.filters.stage.Stage: `select(info)` -> a chain or None (most requests), `prepare(chain)` before
    sending, `begin(chain, info, status, headers, abort)` -> a transform whose feed(chunk)/end() give the bytes to
    pass on to the client and the recorder alike."""

    def select(self, info: kube_request.RequestInfo | None) -> object | None: ...

    async def prepare(self, chain: object) -> None: ...

    def begin(self, chain: object, info: kube_request.RequestInfo, status: int, headers: CIMultiDictProxy[str],
              abort: object = None) -> object | None: ...


class Pool(Protocol):
    """edgeproxy.pool.route.Router: `shares(info, headers)`; `send(...)` -> an httpclient.Response-shaped answer from
    the pool (the leader's views, or the leader), or None (go upstream)."""

    def shares(self, info: kube_request.RequestInfo | None, headers: Any) -> bool: ...

    def answered(self, info: kube_request.RequestInfo, status: int) -> None: ...

    async def send(self, info: kube_request.RequestInfo, method: str, path: str, headers: CIMultiDict[str], *,
                   online: bool) -> Any | None: ...


class Local(Protocol):
    async def handle(self, request: web.BaseRequest, info: kube_request.RequestInfo | None,
                     reason: str) -> web.StreamResponse: ...


class Conn(Protocol):
    """The HTTP/1.1 client connection a lane request is answered on (edgeproxy.h1.lane.LaneHandler)."""

    transport: Any

    def write(self, data: bytes) -> None: ...  # raises ConnectionResetError once the client is gone

    async def drain(self) -> None: ...  # waits while the client reads slower than we write

    def drop(self) -> None: ...  # close the connection now (an answer that must not look complete)

    async def answer(self, message: Any, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse: ...  # the ordinary aiohttp path for this request, with `handler`


def status_response(code: int, reason: str, message: str) -> web.Response:
    """A metav1.Status error as the API server shapes it (JSON: clients accept it whatever they asked for)."""
    body = kube_status.status(code, reason, message)
    content_type, data = kube_status.encode(body, "json")
    headers = {"Content-Type": content_type, "Cache-Control": "no-cache, private"}
    return web.Response(status=code, body=data, headers=headers)


class Unavailable503:
    """The local side until the cache exists: 503 ServiceUnavailable, no Retry-After (callers' own loops retry)."""

    __slots__ = ()

    async def handle(self, request: web.BaseRequest, info: kube_request.RequestInfo | None,
                     reason: str) -> web.StreamResponse:
        return status_response(503, "ServiceUnavailable", f"the API server is unreachable: {reason}")


def forward_headers(headers: CIMultiDictProxy[str] | CIMultiDict[str], *, keep_upgrade: bool = False
                    ) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones (and those the Connection header lists), minus Host (rewritten upstream)."""
    named = _connection_tokens(headers.getall("Connection", ()))
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        dropped = lower in HOP_BY_HOP or lower in named or lower in ("host", "content-length", "expect")
        if dropped and not (keep_upgrade and lower in ("connection", "upgrade")):
            continue
        out.add(name, value)
    return out


_LANE_DROPPED = HOP_BY_HOP | {"content-length", "expect"}


def _lane_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """forward_headers for a lane GET: most carry nothing hop-by-hop, and their copy minus Host is made in C."""
    if not _LANE_DROPPED.isdisjoint(map(str.lower, headers.keys())):  # one pass in C: anything to drop but Host?
        return forward_headers(headers)
    out = headers.copy()
    out.popall("Host", None)
    return out


def _connection_tokens(values: Iterable[str]) -> frozenset[str]:
    return frozenset(t.strip().lower() for v in values for t in v.split(",") if t.strip()) - {"upgrade"}


class _Relayed(web.StreamResponse):
    """A response relaying the API server's: aiohttp adds a Server header where none was set; the API server sends
    none, so neither does the proxy (headers go out as the API server sent them, minus hop-by-hop ones)."""

    async def _prepare_headers(self) -> None:
        had_server = "Server" in self.headers
        await super()._prepare_headers()
        if not had_server:
            self.headers.popall("Server", None)


class _Buffered(_Relayed):
    # Headers go out with the first body chunk: one write for a small response instead of two. Watches use
    # _Relayed, whose headers go out at prepare(), before any event: client-go waits for them.
    _send_headers_immediately = False


class Proxy:
    """The catch-all handler. One per process; `handle` is the aiohttp handler."""

    __slots__ = ("_movable", "_rx", "_tx", "_watches", "body_timeout", "classify", "filters", "identities",
                 "lane_served", "local", "pool", "recorder", "trust", "upstream")

    def __init__(self, up: upstream.Upstream, *, recorder: Recorder | None = None, local: Local | None = None,
                 aliases: Mapping[str, str] | None = None, identities: Identities | None = None,
                 trust: trust_.NodeTrust | None = None, filters: Filters | None = None,
                 pool: Pool | None = None) -> None:
        self.upstream = up
        self.pool = pool  # pool sharing (edgeproxy/pool/route.py): the leader's views, or the leader, before upstream
        # who may act as the node (guard/trust.py); None: everyone (a Proxy built by hand in a test)
        self.trust = trust
        self.body_timeout = limits_.BODY_TIMEOUT  # a request body that stalls this long is the client's error (408)
        self.filters = filters  # the response-filter stage (edgeproxy.filters), between upstream and client+recorder
        self.identities = identities  # which token-bearing requests share a ServiceAccount's cache partition
        # aliases: User-Agent name -> component (hollow-kubelet -> kubelet)
        self.classify = Classifier(aliases, identities)
        self.recorder = recorder
        self.local: Local = local or Unavailable503()
        self._rx = metrics.UPSTREAM_BYTES.labels(direction="received")
        self._tx = metrics.UPSTREAM_BYTES.labels(direction="sent")
        self._watches: set[httpclient.Response] = set()
        # upstream watches the pool could serve: (since, info, headers), for move_watches
        self._movable: dict[Any, tuple[float, kube_request.RequestInfo, Any]] = {}
        self.lane_served = 0  # requests that took the lane (edgeproxy.h1.lane)
        up.on_change(self._state_changed)

    def move_watches(self, min_age: float, wanted: Any) -> int:
        """End the upstream watches the pool could serve now (`wanted(info, headers)`), open at least `min_age`
        seconds: each client re-watches from its last resourceVersion, and that watch goes to the pool. Pool sharing
        calls it once a leader is there, for the watches opened before. Old watches only: client-go relists after a
        watch that ends within a second with no event."""
        now = time.monotonic()
        moved = 0
        for up, (since, info, headers) in list(self._movable.items()):
            if now - since >= min_age and wanted(info, headers):
                self._movable.pop(up, None)
                up.close()
                moved += 1
        return moved

    def _state_changed(self, online: bool) -> None:
        """Going offline ends the watches still open upstream: over a dead or hung link they would sit silent until
        TCP gives up. Each client sees its watch end, re-watches from its last resourceVersion, and is answered
        locally."""
        if not online:
            for up in list(self._watches):
                up.close()

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        start = time.monotonic()
        answered_by = "proxy"
        note = ""  # why it was not answered upstream, for the request log and `debug diagnose`
        resp: web.StreamResponse | None = None
        info: kube_request.RequestInfo | None = None
        try:
            if limits_.head_size(request) > limits_.MAX_HEAD:  # aiohttp bounds each line; this, the whole head
                note = "request head too large"
                metrics.CLIENT_LIMITS.labels("head_too_large").inc()
                warn.client_error("head-too-large", "a request head over %s bytes from %s", limits_.MAX_HEAD,
                                  request.remote)
                resp = limits_.error_response(431, f"the request line and headers exceed {limits_.MAX_HEAD} bytes")
                resp.force_close()
                return resp
            try:
                info, error = self.classify(request)
                decision = route(info, self.upstream.online, self._may_act_as_node(request, info))
            except (ValueError, RecursionError, UnicodeError) as e:  # a request nothing can make sense of
                note = f"unreadable request: {type(e).__name__}"
                warn.client_error("unreadable-request", "%s %s from %s: %s", request.method,
                                  labels.path(request.path), request.remote, f"{type(e).__name__}: {e}")
                resp = limits_.error_response(400, f"the request could not be read ({type(e).__name__})")
                return resp
            if decision is Route.UPSTREAM:
                answered_by = "upstream"
                try:
                    if _is_upgrade(request):
                        resp = await self._tunnel(request, info, start)
                    else:
                        resp = await self._forward(request, info, start)
                except upstream.Unavailable as e:
                    answered_by, note = "cache", str(e)
                    resp = await self._local(request, info, str(e), start)
            elif decision is Route.LOCAL:
                answered_by, note = "cache", "offline"
                if self.pool is not None and self.pool.shares(info, request.headers):
                    try:  # offline, the pool's leader still answers over the LAN
                        answered_by = "upstream"
                        resp = await self._forward(request, info, start, pool_only=True)
                    except upstream.Unavailable:
                        answered_by = "cache"
                if resp is None:
                    resp = await self._local(request, info, "offline", start)
            elif decision is Route.UNAUTHORIZED:
                tls = request.transport is not None and request.transport.get_extra_info("ssl_object") is not None
                note = "no credentials and no node certificate"
                assert self.trust is not None
                self.trust.warn(request.remote, tls)
                resp = status_response(401, "Unauthorized", self.trust.refusal_message(tls))
            else:
                note = str(error) if error is not None else "offline"
                if error is not None:
                    resp = status_response(error.status, error.reason, str(error))
                else:
                    resp = status_response(503, "ServiceUnavailable", "the API server is unreachable (offline)")
                _observe_latency(info, answered_by, start)
            return resp
        except ConnectionResetError:
            # the client went away while its answer was being written (a watch it stopped reading): nothing to
            # answer, and not our bug, so no traceback (issue 14 D9)
            note = "the client went away"
            resp = web.Response(status=499)
            return resp
        except limits_.BodyError as e:  # a body too slow or too large: the client's error, answered by the proxy
            answered_by, note = "proxy", str(e)
            warn.client_error(f"body-{e.status}", "%s %s from %s: %s", request.method, labels.path(request.path),
                              request.remote, str(e))
            resp = limits_.error_response(e.status, str(e))
            resp.force_close()
            # sent and closed here: aiohttp would otherwise linger reading the rest of the body the client is not
            # sending
            with contextlib.suppress(ConnectionError, RuntimeError):
                await resp.prepare(request)
                await resp.write_eof()
            if request.transport is not None:
                request.transport.close()
            return resp
        finally:
            _account(info, request.method, request.path, resp.status if resp is not None else 499, answered_by, note,
                     start)

    def lane(self, message: Any, conn: Conn) -> Coroutine[Any, Any, None] | None:
        """The lean lane for a plain GET on an HTTP/1.1 connection (edgeproxy.h1.lane): its answer as a coroutine
        that forwards it and writes the API server's answer straight to the connection, or None for the ordinary
        path. Decided before anything is sent, and only for what the ordinary path would forward upstream
        untouched: a GET without body or upgrade, online, that classifies, is no watch, may act (a token, or a
        connection allowed to act as the node), has no response filter and is not the pool's to answer. `message`
        is aiohttp's parsed request head (RawRequestMessage); its size was checked by the lane (MAX_HEAD)."""
        if (message.method != "GET" or message.version != HttpVersion11 or message.should_close or message.upgrade
                or not self.upstream.online):
            return None
        headers = message.headers
        if "Upgrade" in headers:
            return None
        try:
            info, _ = self.classify.lookup("GET", message.path, headers)
        except (ValueError, RecursionError, UnicodeError):
            return None
        if info is None or info.watch:
            return None
        if not (info.client.identity or self.trust is None or self.trust.allows(conn.transport)):
            return None
        if self.filters is not None and self.filters.select(info) is not None:
            return None
        if self.pool is not None and self.pool.shares(info, headers):
            return None
        return self._serve_lane(conn, message, info, time.monotonic())

    async def _serve_lane(self, conn: Conn, message: Any, info: kube_request.RequestInfo, start: float) -> None:
        """`lane`'s answer: what `_forward` does for such a GET, without aiohttp's request and response objects (a
        third of a small GET's CPU): the response head is built here and goes out with the first body bytes."""
        answered_by, note, code = "upstream", "", 499
        self.lane_served += 1
        try:
            try:
                _, up = await self.upstream.send("GET", message.path, _lane_headers(message.headers), None,
                                                 header_timeout=header_deadline(info, self.upstream.header_timeout))
            except upstream.Unavailable as e:
                answered_by, note = "cache", str(e)
                reason = note
                resp = await conn.answer(message, lambda request: self._local(request, info, reason, start))
                code = resp.status
                return
            code = up.status
            await self._relay_lane(conn, up, info, message, start)
        except ConnectionResetError:
            note = "the client went away"
        finally:
            _account(info, "GET", message.url.path, code, answered_by, note, start)

    async def _relay_lane(self, conn: Conn, up: httpclient.Response, info: kube_request.RequestInfo, message: Any,
                          start: float) -> None:
        head, chunked = response_head(up.status, up.reason, up.headers, getattr(up, "raw_head", b""))
        _observe_latency(info, "upstream", start)
        if self.identities is not None and info.client.identity:
            info = self.identities.answered(info, message.headers, up.status)
        sink = self._begin_sink(info, up, message.path)
        ok = False
        try:
            try:
                while chunk := await up.read():
                    self._rx.inc(len(chunk))
                    if sink is not None:
                        sink.feed(chunk)
                    if chunked:
                        chunk = b"%x\r\n%b\r\n" % (len(chunk), chunk)
                    if head:
                        chunk, head = head + chunk, b""
                    conn.write(chunk)
                    await conn.drain()
                ok = True
            except httpclient.Broken as e:
                # the body must not look complete to the client: the connection is dropped (as `_forward` does)
                log.info("upstream stream broke on GET %s: %s", labels.path(message.path), e)
                conn.drop()
                return
            if head or chunked:
                conn.write(head + b"0\r\n\r\n" if chunked else head)
        finally:
            self._end_upstream(up, ok, sink, message.path)

    def _begin_sink(self, info: kube_request.RequestInfo | None, up: httpclient.Response, raw_path: str
                    ) -> Sink | None:
        """The recorder's sink for this answer (None: not recorded); the recorder never breaks forwarding."""
        if self.recorder is None or info is None or info.verb not in _RECORDED_VERBS:
            return None
        try:
            return self.recorder.begin(info, up.status, up.headers)
        except Exception:
            log.exception("recorder.begin failed for %s", labels.path(raw_path))
            return None

    @staticmethod
    def _end_upstream(up: httpclient.Response, ok: bool, sink: Sink | None, raw_path: str) -> None:
        # Closing (not releasing) the response drops the upstream connection when the body was not read to its
        # end: that is how a client that went away cancels its upstream request.
        if ok:
            up.release()
        else:
            up.close()
        if sink is not None:
            try:
                sink.done(ok)
            except Exception:
                log.exception("sink.done failed for %s", labels.path(raw_path))

    def _may_act_as_node(self, request: web.BaseRequest, info: kube_request.RequestInfo | None) -> bool:
        """True when the request has its own bearer token (not the node: the API server, or offline
        edgeproxy.identity, judges it), or when its connection may act as the node (guard.trust)."""
        has_token = bool(info.client.identity) if info is not None else bool(kube_request.bearer_token(request.headers))
        return has_token or self.trust is None or self.trust.allows(request.transport)

    async def _local(self, request: web.BaseRequest, info: kube_request.RequestInfo | None, reason: str,
                     start: float) -> web.StreamResponse:
        watching = info is not None and info.watch
        if watching:
            gauge = metrics.OPEN_WATCHES.labels(labels.component(info.client.component), "cache")
            gauge.inc()
        try:
            resp = await self.local.handle(request, info, reason)
        finally:
            if watching:
                gauge.dec()
        _observe_latency(info, "cache", start)
        return resp

    async def _forward(self, request: web.BaseRequest, info: kube_request.RequestInfo | None,
                       start: float, *, pool_only: bool = False) -> web.StreamResponse:
        headers = forward_headers(request.headers)
        body: bytes | AsyncIterator[bytes] | None = None
        if request.body_exists:
            if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
                # The proxy takes the body itself (no router here to do it), then sends it on without Expect.
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0
            length = request.content_length
            if length is not None and length <= MAX_BUFFERED_BODY:
                body = await limits_.read_body(request, self.body_timeout)
                self._tx.inc(len(body))
            else:
                body = _counted(limits_.stream_body(request.content.iter_any(), self.body_timeout), self._tx)
        chain = self.filters.select(info) if self.filters is not None else None
        if chain is not None:
            headers.popall("Accept-Encoding", None)  # a filter reads the body: ask for it uncompressed
            await self.filters.prepare(chain)
        up: Any = None
        if self.pool is not None and body is None and info is not None:
            up = await self.pool.send(info, request.method, request.raw_path, headers, online=self.upstream.online)
        pooled = up is not None
        if up is None:
            if pool_only:
                raise upstream.Unavailable("offline, and the pool leader cannot answer this")
            _, up = await self.upstream.send(request.method, request.raw_path, headers, body,
                                             header_timeout=header_deadline(info, self.upstream.header_timeout))
        rx = None if pooled else self._rx  # what came over the LAN from the pool leader is no WAN traffic
        watching = info is not None and info.watch and up.status == 200
        resp = (_Relayed if watching else _Buffered)(status=up.status, reason=up.reason)
        copy_response_headers(up.headers, resp.headers)
        transform: Any = None
        if chain is not None and info is not None:
            transform = self.filters.begin(chain, info, up.status, up.headers, up.close)
            if transform is not None:
                resp.headers.popall("Content-Length", None)  # a rewritten body has its own length
        if self.identities is not None and info is not None and info.client.identity and not pooled:
            # The API server's verdict on the caller's token (2xx: accepted) decides whose views this answer fills.
            info = self.identities.answered(info, request.headers, up.status)
        if self.pool is not None and info is not None and not pooled:
            self.pool.answered(info, up.status)  # a token the API server answered for a query may use the pool
        sink = self._begin_sink(info, up, request.raw_path)
        gauge = metrics.OPEN_WATCHES.labels(labels.component(info.client.component), "upstream") if watching else None
        ok = False
        try:
            await resp.prepare(request)
            _observe_latency(info, "upstream", start)
            if gauge is not None:
                gauge.inc()
                if not pooled:
                    self._watches.add(up)
                    if self.pool is not None and self.pool.shares(info, request.headers):
                        self._movable[up] = (time.monotonic(), info, request.headers)
            try:
                while chunk := await up.read():
                    if rx is not None:
                        rx.inc(len(chunk))
                    if transform is not None and not (chunk := transform.feed(chunk)):
                        continue
                    if sink is not None:
                        sink.feed(chunk)
                    await resp.write(chunk)
                ok = True
            except ConnectionResetError:  # the client went away mid-body (aiohttp's ClientConnectionResetError)
                return resp
            except httpclient.Broken as e:
                # The API server broke the stream. A watch just ends (the client re-watches from its last
                # resourceVersion); anything else must not look complete to the client, so the connection is dropped.
                log.info("upstream stream broke on %s %s: %s", request.method, labels.path(request.raw_path), e)
                if not watching:
                    resp.force_close()
                    if request.transport is not None:
                        request.transport.close()
                    return resp
            if transform is not None and (tail := transform.end()):
                # a filtered list or object whole; a filtered watch's closing ERROR (its filter's inputs changed)
                if sink is not None:
                    sink.feed(tail)
                await resp.write(tail)
            await resp.write_eof()
            return resp
        finally:
            if gauge is not None:
                gauge.dec()
                self._watches.discard(up)
                self._movable.pop(up, None)
            if transform is not None:
                transform.close()
            self._end_upstream(up, ok, sink, request.raw_path)

    async def _tunnel(self, request: web.BaseRequest, info: kube_request.RequestInfo | None,
                      start: float) -> web.StreamResponse:
        """HTTP/1.1 Upgrade (SPDY/3.1 or WebSocket for exec, attach, port-forward): a raw byte pipe both ways."""
        headers = forward_headers(request.headers, keep_upgrade=True)
        if request.body_exists and request.content_length:
            headers["Content-Length"] = str(request.content_length)
        own_auth = self.upstream.authorize(headers)

        def head(server: upstream.Server) -> bytes:
            lines = [f"{request.method} {request.raw_path} HTTP/1.1", f"Host: {server.host}:{server.port}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            # the header bytes as the client sent them (aiohttp decoded them as UTF-8 with surrogateescape)
            return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")

        server, reader, writer = await self.upstream.open_raw(head, own_auth)
        try:
            if request.body_exists and request.content_length:
                writer.write(await limits_.read_body(request, self.body_timeout))
            try:
                status, reason, up_headers = await _read_head(reader)
            except (ValueError, OSError, asyncio.IncompleteReadError) as e:
                raise upstream.Unavailable(f"{server.url}: bad upgrade answer: {e}") from e
            if status != 101:
                return await _relay_plain(request, status, reason, up_headers, reader, info, start)
            resp = web.StreamResponse(status=101, reason=reason)
            for name, value in up_headers:
                resp.headers.add(name, value)
            resp.force_close()
            await resp.prepare(request)
            _observe_latency(info, "upstream", start)
            metrics.OPEN_TUNNELS.inc()
            try:
                await _pipe(request, resp, reader, writer, self._rx)
            finally:
                metrics.OPEN_TUNNELS.dec()
            return resp
        finally:
            writer.close()


async def _counted(chunks: AsyncIterator[bytes], counter: metrics.prom.Counter) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        counter.inc(len(chunk))
        yield chunk


def classify(request: web.BaseRequest, aliases: Mapping[str, str] | None = None
             ) -> tuple[kube_request.RequestInfo | None, kube_errors.KubeError | None]:
    """kube.request.parse on an aiohttp request: (info, None), or (None, the error it raised)."""
    return _classify(request.method, request.raw_path, request.headers, aliases)


def _classify(method: str, raw_path: str, headers: Mapping[str, str], aliases: Mapping[str, str] | None
              ) -> tuple[kube_request.RequestInfo | None, kube_errors.KubeError | None]:
    path, _, query = raw_path.partition("?")
    try:
        return kube_request.parse(method, path, query, headers, aliases=aliases), None
    except kube_errors.KubeError as e:
        return None, e


MEMO_KEY_MAX = 8 << 10  # requests with a longer method+path+User-Agent+Authorization+Accept are not memoized


class Classifier:
    """`classify` with a memo: clients repeat the same requests (kubelet's lease and node status every 10 s, its
    per-object watches), and parse() is a pure function of the method, the path and query, and three headers.
    The client identity of a token-bearing request is then decided by `identities` (it changes when a token comes
    to be believed or is forgotten); the memo keeps the last decided info, so a steady client costs a lookup."""

    __slots__ = ("_memo", "aliases", "identities", "size")

    def __init__(self, aliases: Mapping[str, str] | None = None, identities: Identities | None = None,
                 size: int = 4096) -> None:
        self.aliases = dict(aliases or {})
        self.identities = identities
        self.size = size
        self._memo: dict[tuple[str | None, ...], tuple[kube_request.RequestInfo | None,
                                                      kube_errors.KubeError | None]] = {}

    def __call__(self, request: web.BaseRequest) -> tuple[kube_request.RequestInfo | None,
                                                          kube_errors.KubeError | None]:
        return self.lookup(request.method, request.raw_path, request.headers)

    def lookup(self, method: str, raw_path: str, h: Mapping[str, str]
               ) -> tuple[kube_request.RequestInfo | None, kube_errors.KubeError | None]:
        """`__call__` on a request's method, raw path (with the query) and headers."""
        key = (method, raw_path, h.get("User-Agent"), h.get("Authorization"), h.get("Accept"))
        hit = self._memo.get(key)
        if hit is None:
            hit = _classify(method, raw_path, h, self.aliases)
            if hit[1] is not None:
                # An error is not kept: its traceback holds the frames, the request and its (maybe 1 MiB) strings.
                hit[1].__traceback__ = hit[1].__context__ = hit[1].__cause__ = None
                return hit
            if sum(len(part) for part in key if part) > MEMO_KEY_MAX:
                return hit  # a huge selector, token or User-Agent is answered, not remembered
            if len(self._memo) >= self.size:
                self._memo.clear()  # cheaper than LRU bookkeeping on every request; refills with what is hot
            self._memo[key] = hit
        info = hit[0]
        if self.identities is not None and info is not None and info.client.identity:
            resolved = self.identities.resolve(info, h)
            if resolved is not info:
                hit = (resolved, None)
                if key in self._memo:
                    self._memo[key] = hit
        return hit


def copy_response_headers(source: CIMultiDictProxy[str], target: CIMultiDict[str]) -> None:
    named = _connection_tokens(source.getall("Connection", ()))
    for name, value in source.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named:
            continue
        target.add(name, value)


def _has_hop_by_hop(h: CIMultiDictProxy[str]) -> bool:
    """Any of HOP_BY_HOP in `h` (spelt out: a loop over them, or over `h`'s names, costs more)."""
    return ("Connection" in h or "Keep-Alive" in h or "Transfer-Encoding" in h or "Upgrade" in h or "TE" in h
            or "Trailer" in h or "Proxy-Connection" in h or "Proxy-Authenticate" in h or "Proxy-Authorization" in h)


def response_head(status: int, reason: str, headers: CIMultiDictProxy[str], raw: bytes = b"") -> tuple[bytes, bool]:
    """The HTTP/1.1 response head relaying an API server's answer to a GET (the lane's), as `_Relayed` and aiohttp
    would write it: its headers in order minus hop-by-hop ones, chunked framing where it sent no Content-Length, a
    Content-Type and Date where it sent none, no Server header; latin-1 as received. True: chunked. Raises
    ValueError for a CR or LF inside a header (aiohttp does too: a header that would split in two).

    `raw`, the head as the API server sent it (httpclient.Response.raw_head), goes out as it is when that is the
    same: HTTP/1.1, a Content-Length body, a Content-Type and a Date, nothing hop-by-hop (most answers: a fifth of
    the cost of building it again)."""
    if (raw.startswith(b"HTTP/1.1 ") and status >= 200 and status not in (204, 304) and "Date" in headers
            and (length := headers.get("Content-Length")) is not None and length.isdigit()
            and ("Content-Type" in headers or length == "0") and not _has_hop_by_hop(headers)):
        return raw + b"\r\n\r\n", False
    named = _connection_tokens(headers.getall("Connection", ())) if "Connection" in headers else ()
    empty = aiohttp_helpers.must_be_empty_body("GET", status)
    drop_length = empty and aiohttp_helpers.should_remove_content_length("GET", status)
    parts = [f"HTTP/1.1 {status} {reason}\r\n"]
    length = None
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named:
            continue
        if lower == "content-length":
            if drop_length:
                continue
            length = value
        parts.append(f"{name}: {value}\r\n")
    chunked = not empty and length is None
    if chunked:
        parts.append("Transfer-Encoding: chunked\r\n")
    if not empty and length != "0" and "Content-Type" not in headers:
        parts.append("Content-Type: application/octet-stream\r\n")
    if "Date" not in headers:
        parts.append(f"Date: {aiohttp_helpers.rfc822_formatted_time()}\r\n")
    parts.append("\r\n")
    head = "".join(parts)
    if head.count("\n") != len(parts) or head.count("\r") != len(parts):
        raise ValueError("a response header holds a CR or LF")
    return head.encode("latin-1"), chunked


_ACCOUNTS: dict[tuple[int, int, str], tuple[Any, ...]] = {}  # (id(info), code, answered_by) -> info, labels, counter
_LATENCIES: dict[tuple[str, str], Any] = {}


def _account(info: kube_request.RequestInfo | None, method: str, path: str, code: int, answered_by: str, note: str,
             start: float) -> None:
    """Every request's metrics and request log line, whoever answered it. Clients repeat their requests and the
    classifier hands back the same info for the same request (and path), so what they come to is kept per info:
    REQUESTS' child (labels() costs a microsecond), the bounded labels and the clipped path."""
    key = (id(info), code, answered_by)
    hit = _ACCOUNTS.get(key)
    if hit is None or hit[0] is not info:  # (an entry holds its info: its id is not reused while it is kept)
        if info is not None:
            component, verb, resource = (labels.component(info.client.component), info.verb,
                                         labels.resource(info.resource))
        else:
            component, verb, resource = "", labels.verb(method.lower()), ""
        counter = metrics.REQUESTS.labels(component, verb, resource, str(code), answered_by)
        hit = (info, component, verb, resource, counter, labels.path(path))
        if info is not None:
            if len(_ACCOUNTS) >= 4096:
                _ACCOUNTS.clear()
            _ACCOUNTS[key] = hit
    _, component, verb, resource, counter, clipped = hit
    counter.inc()
    logs.request(component=component, verb=verb, path=clipped, code=code, source=answered_by,
                 duration=time.monotonic() - start, resource=resource, note=note)


def _observe_latency(info: kube_request.RequestInfo | None, answered_by: str, start: float) -> None:
    key = (info.verb if info is not None else "unknown", answered_by)
    histogram = _LATENCIES.get(key)
    if histogram is None:
        histogram = _LATENCIES[key] = metrics.REQUEST_SECONDS.labels(*key)
    histogram.observe(time.monotonic() - start)


def _is_upgrade(request: web.BaseRequest) -> bool:
    """An upgrade to tunnel (SPDY, WebSocket). h2c is not one: kube-apiserver speaks HTTP/2 over TLS only and answers
    an h2c offer as the plain request it is, so it is forwarded as one (Upgrade is hop-by-hop and dropped)."""
    if "Upgrade" not in request.headers or "upgrade" not in request.headers.get("Connection", "").lower():
        return False
    offered = {p.strip().lower() for v in request.headers.getall("Upgrade", ()) for p in v.split(",")}
    return bool(offered - {"h2c", ""})


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, list[tuple[str, str]]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"not an HTTP/1.1 status line: {lines[0]!r}")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return int(code), reason, headers


async def _relay_plain(request: web.BaseRequest, status: int, reason: str, headers: list[tuple[str, str]],
                       reader: asyncio.StreamReader, info: kube_request.RequestInfo | None,
                       start: float) -> web.StreamResponse:
    """The server declined the upgrade (401, 403, 404, 400...): relay its answer as an ordinary response."""
    source: CIMultiDict[str] = CIMultiDict(headers)
    length = source.get("Content-Length")
    chunked = "chunked" in source.get("Transfer-Encoding", "").lower()
    resp = _Buffered(status=status, reason=reason)
    copy_response_headers(CIMultiDictProxy(source), resp.headers)
    await resp.prepare(request)
    _observe_latency(info, "upstream", start)
    if request.method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        pass  # no body follows, whatever Content-Length says (RFC 9110 §6.4.1)
    elif length is not None and length.isdigit():
        await resp.write(await reader.readexactly(int(length)))
    elif chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            await resp.write(await reader.readexactly(size))
            await reader.readexactly(2)
    else:
        while chunk := await reader.read(1 << 16):
            await resp.write(chunk)
    await resp.write_eof()
    return resp


class _TunnelParser:
    """Takes over the client connection after a 101: aiohttp feeds it every byte the client sends."""

    __slots__ = ("_closed", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._closed = False

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if not self._closed:
            self.writer.write(data)
        return False, b""

    def feed_eof(self) -> None:
        if not self._closed:
            self._closed = True
            if self.writer.can_write_eof():
                try:
                    self.writer.write_eof()
                except OSError:
                    pass


async def _pipe(request: web.BaseRequest, resp: web.StreamResponse, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, rx: metrics.prom.Counter) -> None:
    """Bytes both ways until the upstream side ends; the client's side ending cancels this handler (aiohttp)."""
    request.protocol.set_parser(_TunnelParser(writer))  # type: ignore[arg-type]
    request.protocol.keep_alive(False)
    try:
        while chunk := await reader.read(1 << 16):
            rx.inc(len(chunk))
            await resp.write(chunk)  # a 101 has no body framing: raw bytes, with aiohttp's flow control
    finally:
        if request.transport is not None:
            request.transport.close()
