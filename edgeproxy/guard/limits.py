"""Bounds on what one client connection may hold: head size, head and body read time, connections per listener.

The numbers, and the API server's for comparison (kube-apiserver's http.Server: MaxHeaderBytes 1 MiB,
ReadHeaderTimeout 32 s, IdleTimeout 90 s; request bodies up to 3 MiB for JSON):

| bound | here | past it |
|---|---|---|
| request line (method, path, query): a long labelSelector must still reach the API server | 1 MiB | 400 Status |
| one header field | 64 KiB (`MAX_FIELD`) | 400 Status |
| header fields | 128 (`MAX_HEADERS`) | 400 Status |
| request line + headers together | 1 MiB + 4 KiB (`MAX_HEAD`) | 431 Status |
| the head's arrival, from its first byte (slowloris) | 32 s (`HEAD_TIMEOUT`) | connection closed |
| an idle kept-alive connection | 90 s (`IDLE_TIMEOUT`) | connection closed |
| a request body read whole (`proxy.MAX_BUFFERED_BODY`; larger ones stream upstream online) | 4 MiB | offline 413 |
| a body's arrival: no new byte for | 60 s (`BODY_TIMEOUT`) | 408 Status, connection closed |
| open connections per listener (plain, HTTPS) | 2048 (`MAX_CONNECTIONS`) | 503 Status, connection closed |

A watch is untouched by all of them once its head is in: nothing times an open response. `GuardedServer` is the
proxy listener's aiohttp server with these bounds; its errors are metav1.Status bodies like the API server's, and are
logged as client errors (guard.warn), never with a traceback.

Boundary: connection-level HTTP/1.1 only; no Kubernetes wire, no upstream. Neighbours: server.py (builds the proxy
listener with it), proxy.py (the handler it runs, which applies BODY_TIMEOUT and MAX_HEAD), metrics (counters).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web, web_protocol

from edgeproxy import metrics
from edgeproxy.guard import warn

MAX_REQUEST_LINE = 1 << 20
MAX_FIELD = 64 << 10
MAX_HEADERS = 128
MAX_HEAD = (1 << 20) + 4096
HEAD_TIMEOUT = 32.0
IDLE_TIMEOUT = 90.0
BODY_TIMEOUT = 60.0
MAX_CONNECTIONS = 2048


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    head_timeout: float = HEAD_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    max_request_line: int = MAX_REQUEST_LINE
    max_field: int = MAX_FIELD
    max_headers: int = MAX_HEADERS
    max_head: int = MAX_HEAD


def status_bytes(code: int, reason: str, message: str) -> bytes:
    """A metav1.Status body (JSON), as the API server shapes its errors."""
    return json.dumps({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code}, separators=(",", ":")).encode()


_REASONS = {400: "BadRequest", 408: "Timeout", 413: "RequestEntityTooLarge", 414: "RequestURITooLong",
            431: "RequestHeaderFieldsTooLarge", 500: "InternalError", 503: "ServiceUnavailable"}


def head_size(request: web.BaseRequest) -> int:
    """Bytes of the request line and headers as received (near enough: names, values, separators)."""
    return head_size_of(request.raw_path, request.raw_headers)


def head_size_of(raw_path: str, raw_headers: tuple[tuple[bytes, bytes], ...]) -> int:
    return len(raw_path) + sum(len(k) + len(v) + 4 for k, v in raw_headers)


class GuardedHandler(web_protocol.RequestHandler):
    """aiohttp's per-connection protocol with a head deadline, a per-listener connection bound, and Status errors."""

    __slots__ = ("_guard_listener", "_head_timer")

    def __init__(self, manager: GuardedServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)  # type: ignore[arg-type]
        self._head_timer: asyncio.TimerHandle | None = None
        self._guard_listener = ""

    @property
    def _guard(self) -> GuardedServer:
        return self._manager  # type: ignore[return-value]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        guard = self._guard
        listener = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        super().connection_made(transport)
        if guard.open_connections[listener] >= guard.limits.max_connections:
            metrics.CLIENT_LIMITS.labels("connections").inc()
            warn.client_error("connection-limit", "%s listener has %s open connections (the bound): refused one",
                              listener, guard.limits.max_connections)
            body = status_bytes(503, "ServiceUnavailable", f"edgeproxy: too many open connections on this listener "
                                                           f"(bound {guard.limits.max_connections})")
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"  # type: ignore[attr-defined]
                            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            self.force_close()
            transport.close()
            return
        self._guard_listener = listener
        guard.open_connections[listener] += 1
        metrics.CLIENT_CONNECTIONS.labels(listener).inc()
        self._arm_head_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._guard_listener:
            self._guard.open_connections[self._guard_listener] -= 1
            metrics.CLIENT_CONNECTIONS.labels(self._guard_listener).dec()
            self._guard_listener = ""
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._payload_parser is not None or self._upgraded:
            super().data_received(data)  # a body or a tunnel: not a head
            return
        before = self._request_count
        self._heads_received(data)
        if self._request_count != before:
            self._disarm_head_timer()  # a whole head arrived (a later partial one is the idle timer's)
        elif data and self._head_timer is None:
            self._arm_head_timer()  # a head begun: timed from here (armed only now: a timer per request costs ~1 us)

    def _heads_received(self, data: bytes) -> None:
        """Bytes of request heads: aiohttp parses them and queues the requests (edgeproxy.h1.lane takes some first)."""
        super().data_received(data)

    def _arm_head_timer(self) -> None:
        self._head_timer = self._loop.call_later(self._guard.limits.head_timeout, self._head_expired)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if self._current_request is not None or self.transport is None:
            return  # a request is being handled (its head came in whole): nothing to time
        if self._messages:
            return
        metrics.CLIENT_LIMITS.labels("head_timeout").inc()
        warn.client_error("head-timeout", "no complete request head within %s s from %s: connection closed",
                          self._guard.limits.head_timeout, self.remote_address())
        self.force_close()
        if self.transport is not None:
            self.transport.close()

    def remote_address(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """A malformed request (400, 413, 431...) is the client's error: a Status body and one rate-limited WARNING
        line. A 500 is ours: aiohttp's handling, traceback included."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        text = message or (getattr(exc, "message", None) or str(exc) if exc is not None else "") or "bad request"
        metrics.CLIENT_LIMITS.labels("malformed").inc()
        warn.client_error(f"http-{status}", "%s from %s", text, self.remote_address())
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        resp = web.Response(status=status, body=status_bytes(status, _REASONS.get(status, "BadRequest"),
                                                              warn.clip(text, 1000)),
                            headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"})
        resp.force_close()
        return resp


class GuardedServer(web.Server):
    """web.Server whose connections are GuardedHandler, with `limits`; aiohttp's own bounds set from them."""

    def __init__(self, handler: Any, *, limits: Limits | None = None, **kwargs: Any) -> None:
        self.limits = limits or Limits()
        self.open_connections: dict[str, int] = {"http": 0, "https": 0}  # per listener
        kwargs.setdefault("max_line_size", self.limits.max_request_line)
        kwargs.setdefault("max_field_size", self.limits.max_field)
        kwargs.setdefault("max_headers", self.limits.max_headers)
        kwargs.setdefault("keepalive_timeout", self.limits.idle_timeout)
        super().__init__(handler, **kwargs)

    def __call__(self) -> GuardedHandler:
        return GuardedHandler(self, loop=self._loop, **self._kwargs)


class BodyError(Exception):
    """A request body that cannot be read within the bounds: `status` 408 (too slow) or 413 (too large)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: web.BaseRequest, timeout: float = BODY_TIMEOUT) -> bytes:
    """The whole request body (at most the request's client_max_size), arriving within `timeout` seconds; raises
    BodyError (408, 413) otherwise."""
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        metrics.CLIENT_LIMITS.labels("body_timeout").inc()
        raise BodyError(408, f"the request body did not arrive within {timeout:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        # aiohttp refuses a body of client_max_size bytes or more (its exception does not keep the bound)
        most = getattr(request, "_client_max_size", 0) - 1
        raise BodyError(413, f"the request body is larger than {most} bytes, the most edgeproxy reads "
                             "whole") from None


async def stream_body(chunks: AsyncIterator[bytes], timeout: float = BODY_TIMEOUT) -> AsyncIterator[bytes]:
    """`chunks` with a bound on the wait for each: a body that stalls for `timeout` seconds ends in BodyError."""
    iterator = chunks.__aiter__()
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk = await iterator.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            metrics.CLIENT_LIMITS.labels("body_timeout").inc()
            raise BodyError(408, f"the request body stalled for {timeout:g} s") from None
        yield chunk


def error_response(status: int, message: str) -> web.Response:
    """A Status error answer of the proxy itself for a client error (no Retry-After)."""
    return web.Response(status=status, body=status_bytes(status, _REASONS.get(status, "BadRequest"), message),
                        headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"})
