"""HTTP/2 on the HTTPS listeners (ALPN h2): each client connection's streams become requests for the proxy's handler.

What it does: `Site` is the HTTPS listener's TCP site. After the TLS handshake, a connection whose ALPN chose `h2`
(client-go does: kubelet, kube-proxy, CoreDNS, pods) is a `Connection` speaking serversession.py; any other goes to
aiohttp's HTTP/1.1 handler exactly as before (exec/attach/port-forward upgrades, curl without --http2). The plain
listener never offers h2.

Each stream is one `web.BaseRequest` for the same handler as HTTP/1.1 (proxy.Proxy.handle, unchanged), run as its
own task: its body a StreamReader fed by DATA frames whose window is handed back as the handler reads; its response
written through `_Stream` (aiohttp's AbstractStreamWriter): write_headers → HEADERS, write → DATA as far as the
client's stream and connection windows allow (the writer waits for WINDOW_UPDATE: a watcher that stops reading
holds only its own stream and its own upstream stream, and nothing is buffered without bound), write_eof →
END_STREAM. The request's transport is the stream: `get_extra_info` is the TLS connection's (guard/trust.py sees the
client certificate exactly as over HTTP/1.1), `close()` resets only this stream (RST_STREAM: the client sees a
broken response, as a closed HTTP/1.1 connection shows it).

A client RST_STREAM cancels that stream's handler (which closes its upstream request); a lost connection cancels
them all. Bounds as the HTTP/1.1 listener's (guard/limits.py): connections per listener (shared with HTTP/1.1),
the head deadline (no complete request within 32 s of connecting), the idle timeout (no stream for 90 s: GOAWAY),
the body size (the request's client_max_size), and serversession's stream, header and reset bounds. On shutdown
(aiohttp's runner calls `close` then `shutdown`): GOAWAY, the streams in flight get the shutdown timeout, then are
cancelled.

Neighbours: server.py (builds the site with the proxy listener's GuardedServer), serversession.py (the protocol
state), guard/limits.py (bounds, Status bodies), metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

import h2.errors
from aiohttp import streams, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import HttpVersion11
from aiohttp.http_parser import RawRequestMessage
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edgeproxy import metrics, tasks
from edgeproxy.guard import limits, warn
from edgeproxy.h2 import serversession

log = logging.getLogger(__name__)

ALPN = ("h2", "http/1.1")
# The version an h2 request shows aiohttp: 1.1, whose response code paths (chunking, Connection) the handlers were
# written for (local.py's offline watch enables chunked encoding, which aiohttp forbids for any other version); the
# HTTP/1.1-only headers they produce (Transfer-Encoding, Connection) are dropped on the way out (response_headers).
VERSION = HttpVersion11
MAX_BODY = 4 << 20  # bytes of a body read whole (the proxy listener's client_max_size: proxy.MAX_BUFFERED_BODY)


def offer(ctx: ssl.SSLContext) -> None:
    """Make the TLS context offer h2 first, HTTP/1.1 second (ALPN, RFC 7301)."""
    ctx.set_alpn_protocols(list(ALPN))


class Site(web.TCPSite):
    """A TLS site of `runner` whose connections speak h2 when ALPN chose it, aiohttp's HTTP/1.1 otherwise.
    `listener` names it in metrics (https, in-cluster)."""

    __slots__ = ("_listener", "_max_body")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, ssl_context: ssl.SSLContext,
                 listener: str = "https", max_body: int = MAX_BODY, **kwargs: Any) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, **kwargs)
        self._listener = listener
        self._max_body = max_body

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        listener, max_body = self._listener, self._max_body
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Negotiating(server, listener, max_body), self._host, self._port, ssl=self._ssl_context,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


class _Negotiating(asyncio.Protocol):
    """The protocol of a connection until its TLS handshake is done; then it hands the connection on by ALPN."""

    __slots__ = ("_listener", "_max_body", "_server")

    def __init__(self, server: web.Server, listener: str, max_body: int) -> None:
        self._server = server
        self._listener = listener
        self._max_body = max_body

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ssl_object = transport.get_extra_info("ssl_object")
        protocol: asyncio.Protocol
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            protocol = Connection(self._server, self._listener, self._max_body)
        else:
            protocol = self._server()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)


class _Body(streams.StreamReader):
    """A request body fed by DATA frames; what the handler reads goes back to the client's window."""

    __slots__ = ("_h2stream",)

    def __init__(self, stream: _Stream, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(stream, serversession.STREAM_WINDOW, loop=loop)  # type: ignore[arg-type]
        self._h2stream = stream

    def _read_nowait_chunk(self, n: int) -> bytes:
        data = super()._read_nowait_chunk(n)
        self._h2stream.consumed(len(data))
        return data


class _Stream(AbstractStreamWriter):
    """One h2 stream as aiohttp sees a request's connection: its `protocol` (ssl_context, peername, sockname,
    transport; and for the body's StreamReader, connected and pause/resume_reading), its `transport` (the TLS
    connection's extra info; close() resets the stream) and its payload writer (HEADERS and DATA frames within the
    client's windows)."""

    __slots__ = ("_conn", "_eof", "_head", "body", "id", "task")

    max_field_size = limits.MAX_FIELD  # what aiohttp's multipart reader asks of a protocol
    max_headers = limits.MAX_HEADERS

    def __init__(self, conn: Connection, stream_id: int) -> None:
        self._conn = conn
        self.id = stream_id
        self.body: _Body | None = None
        self.task: asyncio.Task[None] | None = None
        self._head: list[tuple[bytes, bytes]] | None = None  # a response head not sent yet
        self._eof = False
        self.output_size = 0
        self.buffer_size = 0
        self.length = None

    # ---- as the request's protocol ----
    @property
    def ssl_context(self) -> ssl.SSLContext | None:
        return self._conn.sslcontext

    @property
    def peername(self) -> Any:
        return self._conn.peername

    @property
    def sockname(self) -> Any:
        return self._conn.sockname

    @property
    def transport(self) -> _Stream | None:  # type: ignore[override]
        return self if self._conn.transport is not None else None

    # ---- as the request's transport ----
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self._conn.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def is_closing(self) -> bool:
        return self.id not in self._conn.session.open

    def close(self) -> None:
        """The handler drops the connection so the client sees its response as broken: over h2, RST_STREAM."""
        self._conn.reset(self, h2.errors.ErrorCodes.INTERNAL_ERROR)

    abort = close

    # ---- the request body's flow control: the stream's window, not pause/resume of the connection ----
    @property
    def connected(self) -> bool:
        return self._conn.transport is not None

    def pause_reading(self) -> None:
        return None

    def resume_reading(self, resume_parser: bool = True) -> None:
        return None

    def consumed(self, n: int) -> None:
        if n:
            self._conn.session.consumed(self.id, n)
            self._conn.flush()

    # ---- as the response's payload writer ----
    async def write_headers(self, status_line: str, headers: CIMultiDict[str]) -> None:
        status = int(status_line.split(" ", 2)[1])
        self._head = serversession.response_headers(status, list(headers.items()))

    def send_headers(self) -> None:
        if self._head is not None:
            self._send_head(end=False)
            self._conn.flush()

    def _send_head(self, end: bool) -> None:
        head, self._head = self._head, None
        assert head is not None
        try:
            self._conn.session.send_headers(self.id, head, end=end)
        except serversession.StreamClosed as e:
            raise ConnectionResetError("the client reset the HTTP/2 stream") from e

    async def write(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._head is not None:
            self._send_head(end=False)  # headers and the first DATA frame go out in one write
        if chunk:
            await self._send(chunk, end=False)

    async def write_eof(self, chunk: bytes = b"") -> None:
        if self._eof:
            return
        self._eof = True
        if self._head is not None and not chunk:
            self._send_head(end=True)
            self._conn.flush()
            return
        if self._head is not None:
            self._send_head(end=False)
        await self._send(chunk, end=True)

    async def _send(self, data: bytes | bytearray | memoryview, end: bool) -> None:
        conn = self._conn
        session = conn.session
        self.output_size += len(data)
        try:
            while True:
                n = session.send_data(self.id, data, end)
                conn.flush()
                if n == len(data):
                    break
                data = data[n:]
                await conn.wait_window(self.id)
        except serversession.StreamClosed as e:
            raise ConnectionResetError("the client reset the HTTP/2 stream") from e
        if conn.paused:
            await conn.wait_writable()

    async def drain(self) -> None:
        if self._conn.paused:
            await self._conn.wait_writable()

    def enable_compression(self, encoding: str = "deflate", strategy: int | None = None) -> None:
        return None  # the proxy never compresses (bodies pass as the API server sent them)

    def enable_chunking(self) -> None:
        return None  # HTTP/2 frames bodies itself


class Connection(asyncio.Protocol):
    """One HTTP/2 client connection on a TLS listener (see the module docstring)."""

    __slots__ = ("_counted", "_flushing", "_handler", "_limits", "_listener", "_loop", "_max_body", "_open_streams",
                 "_paused_waiters", "_server", "_streams", "_timer", "_waiting", "paused", "peername", "session",
                 "sockname", "sslcontext", "transport")

    _task_handler = None  # what web.Server.connection_lost asks of its connections

    def __init__(self, server: web.Server, listener: str, max_body: int = MAX_BODY) -> None:
        self._server = server
        self._listener = listener
        self._max_body = max_body
        self._handler = server.request_handler
        self._limits: limits.Limits = getattr(server, "limits", None) or limits.Limits()
        self._loop = asyncio.get_running_loop()
        self.session = serversession.ServerSession()
        self.transport: asyncio.Transport | None = None
        self.sslcontext: ssl.SSLContext | None = None
        self.peername: Any = None
        self.sockname: Any = None
        self.paused = False
        self._paused_waiters: list[asyncio.Future[None]] = []
        self._waiting: dict[int, asyncio.Future[None]] = {}  # streams waiting for their window to open
        self._streams: dict[int, _Stream] = {}  # streams whose handler runs
        self._timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._flushing = False  # a write of the session's output is scheduled
        self._open_streams = metrics.CLIENT_H2_STREAMS.labels(listener)  # looked up once, not per stream

    # ---- the connection ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sslcontext = transport.get_extra_info("sslcontext")
        self.peername = transport.get_extra_info("peername")
        self.sockname = transport.get_extra_info("sockname")
        counts: dict[str, int] | None = getattr(self._server, "open_connections", None)
        if counts is not None and counts.get("https", 0) >= self._limits.max_connections:
            # the bound the HTTP/1.1 listener has (the count is shared): GOAWAY before any stream, and close
            metrics.CLIENT_LIMITS.labels("connections").inc()
            warn.client_error("connection-limit", "%s listener has %s open connections (the bound): refused one",
                              self._listener, self._limits.max_connections)
            self.session.start()
            self.session.goaway(h2.errors.ErrorCodes.REFUSED_STREAM)
            transport.write(self.session.output())  # type: ignore[attr-defined]
            transport.close()
            self.transport = None
            return
        if counts is not None:
            counts["https"] = counts.get("https", 0) + 1
        self._counted = True
        metrics.CLIENT_CONNECTIONS.labels("https").inc()
        metrics.CLIENT_H2_CONNECTIONS.labels(self._listener).inc()
        self._server.connection_made(self, transport)  # type: ignore[arg-type]  # shut down with the runner
        transport.write(self.session.start())  # type: ignore[attr-defined]
        self._arm(self._limits.head_timeout, self._head_expired)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._disarm()
        if self._counted:
            self._counted = False
            counts = getattr(self._server, "open_connections", None)
            if counts is not None:
                counts["https"] -= 1
            metrics.CLIENT_CONNECTIONS.labels("https").dec()
            metrics.CLIENT_H2_CONNECTIONS.labels(self._listener).dec()
        self._server.connection_lost(self, exc)  # type: ignore[arg-type]
        for stream in list(self._streams.values()):
            if stream.body is not None:  # a body cut short must not read as whole
                stream.body.set_exception(ConnectionResetError("the HTTP/2 connection was lost"))
            if stream.task is not None:
                stream.task.cancel()
        self._wake_all()
        for fut in self._paused_waiters:
            if not fut.done():
                fut.set_result(None)
        self._paused_waiters.clear()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        waiters, self._paused_waiters = self._paused_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def wait_writable(self) -> None:
        if self.paused and self.transport is not None:
            fut = self._loop.create_future()
            self._paused_waiters.append(fut)
            await fut

    def flush(self) -> None:
        """Write what the session has to send, at the end of this turn of the event loop: every frame the streams
        produced meanwhile goes out in one TLS write (a TLS record and a syscall each cost more than the framing)."""
        if not self._flushing and self.transport is not None:
            self._flushing = True
            self._loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flushing = False
        data = self.session.output()
        if data and self.transport is not None:
            self.transport.write(data)

    def _close(self) -> None:
        """Write what is pending (a GOAWAY), then close."""
        self._write_out()
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.session.receive(data, self._loop.time())
        except serversession.ConnectionFailed as e:
            metrics.CLIENT_H2_EVENTS.labels(self._listener, e.kind).inc()
            warn.client_error(f"h2-{e.kind}", "%s from %s: connection closed (GOAWAY code %s)", e, self._peer(),
                              e.code)
            self._close()
            return
        for ev in events:
            kind = type(ev)
            if kind is serversession.Body:
                stream = self._streams.get(ev.stream_id)  # type: ignore[union-attr]
                if stream is not None and stream.body is not None:
                    if ev.data:  # type: ignore[union-attr]
                        stream.body.feed_data(ev.data)  # type: ignore[union-attr]
                    if ev.ended:  # type: ignore[union-attr]
                        stream.body.feed_eof()
            elif kind is serversession.Request:
                self._request(ev)  # type: ignore[arg-type]
            else:  # Reset: the client went away from that request
                metrics.CLIENT_H2_EVENTS.labels(self._listener, "client_reset").inc()
                stream = self._streams.get(ev.stream_id)
                if stream is not None:
                    if stream.body is not None:
                        stream.body.set_exception(ConnectionResetError("the client reset the HTTP/2 stream"))
                    if stream.task is not None:
                        stream.task.cancel()
        if self.session.window_opened:
            self.session.window_opened = False
            self._wake_all()
        if (self.session.goaway_received or self.session.closing) and not self._streams and self.transport:
            self._close()
        else:
            self.flush()

    def _peer(self) -> str:
        peer = self.peername
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"

    # ---- flow control of responses ----
    async def wait_window(self, stream_id: int) -> None:
        fut = self._loop.create_future()
        self._waiting[stream_id] = fut
        try:
            await fut
        finally:
            self._waiting.pop(stream_id, None)

    def _wake_all(self) -> None:
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_result(None)

    # ---- timers: the head deadline, then the idle timeout ----
    def _arm(self, delay: float, callback: Any) -> None:
        self._disarm()
        if delay > 0 and self.transport is not None:
            self._timer = self._loop.call_later(delay, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        self._timer = None
        metrics.CLIENT_LIMITS.labels("head_timeout").inc()
        warn.client_error("head-timeout", "no complete request head within %s s from %s: connection closed",
                          self._limits.head_timeout, self._peer())
        self._goaway_and_close()

    def _idle_expired(self) -> None:
        self._timer = None
        if not self._streams:
            self._goaway_and_close()

    def _goaway_and_close(self) -> None:
        self.session.goaway()
        self._close()

    # ---- streams ----
    def _request(self, req: serversession.Request) -> None:
        self._disarm()
        sid = req.stream_id
        head = serversession.check_head(req.headers, self._limits)
        if isinstance(head, serversession.Refusal):
            metrics.CLIENT_LIMITS.labels("malformed").inc()
            warn.client_error(f"http-{head.status}", "%s from %s", head.message, self._peer())
            self._answer(sid, head.status, head.reason, head.message)
            return
        if len(self._streams) >= self.session.max_streams:
            # handlers of streams the client reset may still be finishing: they count, so resets buy nothing
            metrics.CLIENT_H2_EVENTS.labels(self._listener, "refused").inc()
            self.session.reset(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        stream = _Stream(self, sid)
        fields = head.fields
        if not req.ended:
            stream.body = _Body(stream, self._loop)
            if any(k.lower() == "expect" for k, _ in fields):
                # 100-continue: the proxy takes every body it is sent, so say so now (HTTP/1.1's proxy.py writes
                # it itself; over h2 it is a HEADERS frame)
                fields = [(k, v) for k, v in fields if k.lower() != "expect"]
                if any(v.lower() == "100-continue" for k, v in head.fields if k.lower() == "expect"):
                    self.session.send_informational(sid, 100)
        try:
            message = _message(head, fields)
        except ValueError as e:
            self._answer(sid, 400, "BadRequest", f"the request path cannot be read: {e}")
            return
        self._streams[sid] = stream
        self._open_streams.inc()
        stream.task = tasks.spawn(self._serve(stream, message), name=f"h2-stream-{sid}")

    def _answer(self, stream_id: int, status: int, reason: str, message: str) -> None:
        body = limits.status_bytes(status, reason, message)
        try:
            self.session.send_headers(stream_id, [(b":status", str(status).encode()),
                                                  (b"content-type", b"application/json"),
                                                  (b"content-length", str(len(body)).encode())])
            self.session.send_data(stream_id, body, end=True)
        except serversession.StreamClosed:
            pass
        if not self._streams:
            self._arm(self._limits.idle_timeout, self._idle_expired)

    async def _serve(self, stream: _Stream, message: RawRequestMessage) -> None:
        payload = stream.body if stream.body is not None else streams.EMPTY_PAYLOAD
        request = web.BaseRequest(message, payload, stream, stream, asyncio.current_task(),  # type: ignore[arg-type]
                                  self._loop, client_max_size=self._max_body + 1)
        resp: web.StreamResponse | None = None
        try:
            try:
                resp = await self._handler(request)
            except web.HTTPException as e:
                resp = e
            await resp.prepare(request)
            await resp.write_eof()
        except asyncio.CancelledError:
            pass  # the client reset the stream or the connection went: nothing to answer
        except ConnectionResetError:
            pass
        except Exception:
            log.exception("HTTP/2 request %s %s failed", message.method, message.path[:200])
            if resp is None or not resp.prepared:
                with contextlib.suppress(Exception):  # the stream or the connection may be gone
                    await web.Response(status=500, body=limits.status_bytes(500, "InternalError", "internal error"),
                                       content_type="application/json").prepare(request)
        finally:
            self._finished(stream)

    def _finished(self, stream: _Stream) -> None:
        sid = stream.id
        if self._streams.pop(sid, None) is not None:
            self._open_streams.dec()
        if sid in self.session.open:  # the answer did not end: the client must not take it as whole
            self.session.reset(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
        self._waiting.pop(sid, None)
        if not self._streams and self.transport is not None and (self.session.closing or
                                                                 self.session.goaway_received):
            self._close()
            return
        self.flush()
        if not self._streams and self.transport is not None:
            self._arm(self._limits.idle_timeout, self._idle_expired)

    def reset(self, stream: _Stream, code: int) -> None:
        self.session.reset(stream.id, code)
        fut = self._waiting.pop(stream.id, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
        self.flush()

    # ---- shutdown, as aiohttp's runner asks of its connections ----
    def close(self) -> None:
        """No new streams (GOAWAY); the connection closes when its streams have ended."""
        self.session.goaway()
        if not self._streams:
            self._close()
        else:
            self.flush()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Give the streams in flight `timeout` seconds, then cancel them and close."""
        running = [s.task for s in self._streams.values() if s.task is not None]
        if running:
            _, pending = await asyncio.wait(running, timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)
        self._close()


def _message(head: serversession.Head, fields: list[tuple[str, str]]) -> RawRequestMessage:
    """aiohttp's parsed request head for an h2 request (VERSION), Host from :authority when not sent."""
    headers = CIMultiDict(fields)
    raw = head.raw
    if "Host" not in headers and head.authority:
        headers["Host"] = head.authority
        raw = [*raw, (b"host", head.authority.encode("utf-8", "surrogateescape"))]
    path = head.path
    query = ""
    if "?" in path:
        path, query = path.split("?", 1)
    fragment = ""
    if "#" in query:
        query, fragment = query.split("#", 1)
    elif "#" in path:
        path, fragment = path.split("#", 1)
    url = URL.build(path=path, query_string=query, fragment=fragment, encoded=True)
    return RawRequestMessage(head.method, head.path, VERSION, CIMultiDictProxy(headers), tuple(raw), False, None,
                             False, False, url)
