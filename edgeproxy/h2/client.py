"""HTTP/2 connections to the API servers on asyncio: one per upstream identity, every request and watch multiplexed.

What it does: `Pool.request` sends a request on the connection of its (server, TLS context, identity), opening it
with ALPN `h2` if there is none, or a second one only when every open one is at the server's
SETTINGS_MAX_CONCURRENT_STREAMS. Concurrent first requests wait for the one connection being opened rather than each
opening their own. The response head comes back as a `Response` whose body is read chunk by chunk; a reader that
stops holds only its own stream's window (session.py). `close()` on an unfinished response sends RST_STREAM (CANCEL):
the server stops that one request and the connection carries on.

Liveness: a connection that has received nothing for `read_idle` seconds is sent a PING; no answer within
`ping_timeout` and it is dead: its streams fail (Broken; Stale if nothing of theirs had come back), it is closed, and
`on_dead(host, port, why)` tells upstream.py, whose offline decision takes it from there. A request whose response
head misses its deadline is reset (HeadTimeout) and its connection PINGed at once; a probe that times out PINGs every
connection to its server at once (`ping_server`).

GOAWAY: the streams the server says it processed finish; those above its last stream id fail Stale (never processed,
safe to send again: the pool retries them once on a new connection); new requests go to a new connection; the old one
is closed when its last stream ends. `drain()` does the same by our choice (a rotated client certificate: new
connections present the new one, watches on the old connection run on until they end).

When ALPN does not choose h2 the connection is closed and NotH2 raised; the server is remembered as HTTP/1.1-only for
H1_RECHECK seconds, and the caller (upstream.py) uses httpclient.py meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

from multidict import CIMultiDict, CIMultiDictProxy

from edgeproxy import metrics, tasks
from edgeproxy.h2 import session as h2session
from edgeproxy.httpclient import Broken, ConnectFailed, HeadTimeout, HttpClientError, Stale

log = logging.getLogger(__name__)

H1_RECHECK = 300.0  # seconds a server whose ALPN chose HTTP/1.1 is not asked for h2 again
_REASONS = {s.value: s.phrase for s in http.HTTPStatus}
_CANONICAL: dict[bytes, str] = {}  # b"content-type" -> "Content-Type", as Go's transport presents h2 headers
# b"content-type" -> ("Content-Type", b"\r\nContent-Type: "): its name and header line start for head_fields
_HEAD_NAMES: dict[bytes, tuple[str, bytes]] = {}


class NotH2(HttpClientError):
    """The server's ALPN did not choose h2: use HTTP/1.1 (nothing was sent). `transport`: the connection that chose
    HTTP/1.1, open and unused, for the HTTP/1.1 pool to adopt (None when there is none)."""

    def __init__(self, message: str, transport: asyncio.Transport | None = None) -> None:
        super().__init__(message)
        self.transport = transport


def canonical(name: bytes) -> str:
    """Go's CanonicalMIMEHeaderKey of an h2 (lower-case) header name: what an HTTP/1.1 client got before."""
    text = _CANONICAL.get(name)
    if text is None:
        text = "-".join(p[:1].upper() + p[1:] for p in name.decode("latin-1").split("-"))
        if len(_CANONICAL) < 4096:
            _CANONICAL[name] = text
    return text


def head_fields(head: list[tuple[bytes, bytes]]) -> tuple[CIMultiDictProxy[str], bytes]:
    """A response head's fields (pseudo-headers left out) as an HTTP/1.1 client presents them: canonical names, and
    their header lines ("\r\nName: value" each) for Response.raw_head; b"" lines when a field holds a CR or LF."""
    pairs: list[tuple[str, str]] = []
    lines: list[bytes] = []
    names = _HEAD_NAMES
    for name, value in head:
        entry = names.get(name)
        if entry is None:
            if name[:1] == b":":
                continue
            text = canonical(name)
            entry = (text, b"\r\n" + text.encode("latin-1") + b": ")
            if len(names) < 4096:
                names[name] = entry
        pairs.append((entry[0], value.decode("latin-1")))
        lines.append(entry[1])
        lines.append(value)
    raw = b"".join(lines)
    if raw.count(b"\n") != len(pairs) or raw.count(b"\r") != len(pairs):
        raw = b""  # a CR or LF inside a field: no head to relay as it is
    return CIMultiDictProxy(CIMultiDict(pairs)), raw


class Response:
    """A response head and its streamed body; the same interface as httpclient.Response. `raw_head`: the head as
    an HTTP/1.1 server would have sent it (status line and header lines with the names in canonical form, without
    the blank line that ends them), for proxy.response_head to relay as it is; b"" when a name or value holds a CR
    or LF (that head is then built, and refused, field by field)."""

    __slots__ = ("_conn", "_stream", "headers", "raw_head", "reason", "status")

    def __init__(self, conn: Connection, stream: h2session.Stream, status: int,
                 headers: CIMultiDictProxy[str], raw_head: bytes = b"") -> None:
        self._conn = conn
        self._stream = stream
        self.status = status
        self.reason = reason = _REASONS.get(status, "")
        self.headers = headers
        self.raw_head = b"HTTP/1.1 %d %s%b" % (status, reason.encode("latin-1"), raw_head) if raw_head else b""

    async def read(self) -> bytes:
        """The next body bytes as they arrived; b"" once the body is complete. Raises Broken."""
        return await self._conn.read(self._stream)

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._conn.read(self._stream):
            yield chunk

    def release(self) -> None:
        """Done with the body (read to its end, or not: then the stream is reset)."""
        self._conn.done(self._stream)

    def close(self) -> None:
        """The reader went away: RST_STREAM (CANCEL) if the response is not complete; the connection stays."""
        self._conn.done(self._stream)


class Connection(asyncio.Protocol):
    """One HTTP/2 connection: the session.Session state driven by a TLS transport."""

    def __init__(self, pool: Pool, key: tuple[object, ...], label: str) -> None:
        self.pool = pool
        self.key = key
        self.label = label  # the server's URL, for metrics and logs
        self.session = h2session.Session()
        self.transport: asyncio.Transport | None = None
        self.alpn = ""
        self.failed: Exception | None = None
        self.draining = False  # no new streams (GOAWAY, or drained by us)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.last_read = loop.time()
        self.idle_since = loop.time()
        self.ping_sent = 0.0  # loop time of the PING not yet answered; 0: none outstanding
        self.deadlines: dict[h2session.Stream, float] = {}  # streams waiting for a head by a deadline
        self._waiters: dict[int, asyncio.Future[None]] = {}  # stream id -> its one waiter (head or body)
        self._window: list[asyncio.Future[None]] = []  # body senders waiting for a window update
        self._ping_ids = itertools.count(1)
        self._streams_gauge = metrics.UPSTREAM_STREAMS.labels(server=label)
        self.settings: asyncio.Future[None] = loop.create_future()  # the server's first SETTINGS came
        self._flush_due = False  # a write of the session's output is scheduled for the end of this loop turn

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        ssl_object = transport.get_extra_info("ssl_object")
        self.alpn = (ssl_object.selected_alpn_protocol() or "") if ssl_object is not None else ""
        if self.alpn != "h2":
            return  # the pool closes it and raises NotH2
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(self.session.start())

    def data_received(self, data: bytes) -> None:
        self.last_read = self._loop.time()
        try:
            changes = self.session.receive(data)
        except h2session.SessionError as e:
            self._write()  # the GOAWAY, before the connection goes
            metrics.UPSTREAM_H2_EVENTS.labels(server=self.label, event="protocol_error").inc()
            self.fail(Broken(str(e)))
            return
        for stream in changes.streams:
            self._wake(stream.id)
        if changes.window:
            self._wake_senders()
            if not self.settings.done() and self.session.settings_seen:
                self.settings.set_result(None)
        if changes.pings:
            self.ping_sent = 0.0
        if changes.goaway is not None:
            self._goaway(*changes.goaway)
        self.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.fail(Broken(f"connection lost: {exc or 'EOF'}"))

    # ---- the pool's view ----
    def usable(self) -> bool:
        return self.failed is None and not self.draining and self.transport is not None and self.session.can_open()

    def flush(self) -> None:
        """Write the session's output once this loop turn is over: the frames queued meanwhile (the HEADERS of the
        requests that started together, window updates, acknowledgements) go out in one TLS record and one send."""
        if not self._flush_due and self.session.has_output():
            self._flush_due = True
            self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._flush_due = False
        out = self.session.output()
        if out and self.transport is not None:
            self.transport.write(out)

    def ping(self) -> None:
        if self.ping_sent or self.transport is None:
            return
        self.ping_sent = self._loop.time()
        self.session.ping(next(self._ping_ids).to_bytes(8, "big"))
        self.flush()

    def drain(self) -> None:
        """No new streams here; close once the open ones end."""
        self.draining = True
        if not self.session.streams:
            self.close()

    def close(self) -> None:
        """GOAWAY and close (the streams still open fail)."""
        if self.transport is not None:
            self.session.close()
            self._write()
            self.transport.close()
        self.fail(Broken("connection closed"))

    def fail(self, exc: Exception) -> None:
        """The connection is unusable: every open stream fails (Stale if none of its response came back)."""
        if self.failed is None:
            self.failed = exc
            self.pool.forget(self)
        for stream in list(self.session.streams.values()):
            if stream.error is None and not stream.ended:
                stream.error = exc if stream.received else Stale(f"{exc} (before any response)")
            self._wake(stream.id)
        self._wake_senders()
        if not self.settings.done():
            self.settings.set_exception(exc)
            self.settings.exception()  # retrieved
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def _goaway(self, last_stream_id: int, error_code: int) -> None:
        metrics.UPSTREAM_H2_EVENTS.labels(server=self.label, event="goaway").inc()
        log.info("upstream %s sent GOAWAY (last stream %d, error %d): new requests go to a new connection",
                 self.label, last_stream_id, error_code)
        self.draining = True
        self.pool.forget(self)
        for stream in list(self.session.streams.values()):
            if stream.id > last_stream_id:  # never processed: safe to send again
                stream.error = Stale(f"GOAWAY: stream {stream.id} was not processed")
                self._wake(stream.id)
        if not self.session.streams or all(s.id > last_stream_id for s in self.session.streams.values()):
            self.drain()

    def _wake(self, stream_id: int) -> None:
        waiter = self._waiters.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_senders(self) -> None:
        waiting, self._window = self._window, []
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self, stream: h2session.Stream) -> None:
        waiter = self._loop.create_future()
        self._waiters[stream.id] = waiter
        await waiter

    # ---- a request ----
    async def request(self, headers: list[tuple[bytes, bytes]], body: bytes | AsyncIterator[bytes] | None,
                      deadline: float | None) -> Response:
        try:
            stream = self.session.open(headers, end_stream=not body)
        except h2session.SessionError as e:
            raise Stale(str(e)) from e
        self._streams_gauge.inc()
        self.flush()
        try:
            if body:
                await self._send_body(stream, body)
            if deadline:
                self.deadlines[stream] = deadline
                self.pool.watch_deadlines()
            while stream.head is None:
                if stream.error is not None:
                    raise stream.error
                if stream.reset is not None:
                    raise Broken(f"the server reset the stream before answering (error {stream.reset})")
                await self._wait(stream)
            status = h2session.status_of(stream.head)
        except BaseException as e:  # cancelled, failed, timed out: this stream is over
            self.done(stream)
            if isinstance(e, h2session.SessionError):
                raise Broken(str(e)) from e
            raise
        finally:
            self.deadlines.pop(stream, None)
        headers_out, raw = head_fields(stream.head)
        return Response(self, stream, status, headers_out, raw)

    async def _send_body(self, stream: h2session.Stream, body: bytes | AsyncIterator[bytes]) -> None:
        if isinstance(body, bytes | bytearray):
            await self._send_chunk(stream, body, True)
            return
        async for chunk in body:
            if chunk:
                await self._send_chunk(stream, chunk, False)
        await self._send_chunk(stream, b"", True)

    async def _send_chunk(self, stream: h2session.Stream, data: bytes | bytearray, end: bool) -> None:
        view = memoryview(data)
        while True:
            if stream.error is not None:
                raise stream.error
            if stream.reset is not None or stream.ended:
                return  # the server answered (or refused) before taking the whole body: the head tells
            try:
                sent = self.session.send(stream, view, end)
            except h2session.SessionError as e:
                raise Broken(str(e)) from e
            self.flush()
            view = view[sent:]
            if not view:
                return
            waiter = self._loop.create_future()
            self._window.append(waiter)
            await waiter

    async def read(self, stream: h2session.Stream) -> bytes:
        while True:
            if stream.buffered:
                data = stream.take()
                self.session.consumed(stream, len(data))
                self.flush()
                return data
            if stream.ended:
                return b""
            if stream.error is not None:
                raise stream.error if isinstance(stream.error, Broken) else Broken(str(stream.error))
            if stream.reset is not None:
                raise Broken(f"the server reset the stream (error {stream.reset})")
            await self._wait(stream)

    def done(self, stream: h2session.Stream) -> None:
        """The stream's reader is finished with it: forget it (RST_STREAM CANCEL if it is not complete)."""
        if stream.id not in self.session.streams:
            return
        self._streams_gauge.dec()
        if (stream.ended and stream.sent_all) or stream.reset is not None or self.failed is not None \
                or self.transport is None:
            self.session.forget(stream)
        else:
            self.session.cancel(stream)
            if not stream.ended:
                metrics.UPSTREAM_H2_EVENTS.labels(server=self.label, event="stream_cancelled").inc()
            self.flush()
        if not stream.ended and stream.error is None and stream.reset is None:
            # a read still waiting on this stream (the proxy ending a watch it moves, or one left on a server gone
            # offline) ends now: nothing more will come for it
            stream.body.clear()
            stream.buffered = 0
            stream.error = Broken("the stream was closed by its reader")
        self._wake(stream.id)
        if not self.session.streams:
            self.idle_since = self._loop.time()
            if self.draining and self.failed is None:
                self.close()


class Pool:
    """The h2 connections to every server, per identity, and the ticker that times heads and PINGs idle ones."""

    def __init__(self, *, connect_timeout: float = 3.0, read_idle: float = 30.0, ping_timeout: float = 15.0,
                 idle_timeout: float = 90.0, on_dead: Callable[[str, int, str], None] | None = None) -> None:
        self.connect_timeout = connect_timeout
        self.read_idle = read_idle  # seconds without a frame before a PING; 0: no PINGs
        self.ping_timeout = ping_timeout
        self.idle_timeout = idle_timeout  # a connection without streams this long is closed
        self.on_dead = on_dead
        self._conns: dict[tuple[object, ...], list[Connection]] = {}
        self._all: set[Connection] = set()  # including draining ones
        self._connecting: dict[tuple[object, ...], asyncio.Future[Connection]] = {}
        self._h1_only: dict[tuple[str, int], float] = {}  # (host, port) -> monotonic time to ask for h2 again
        self._ticker: asyncio.Task[None] | None = None
        self._wake_ticker: asyncio.Event | None = None
        self._fine = False  # the ticker looks every 0.1 s (a request waits on a head deadline)

    def speaks_h2(self, host: str, port: int) -> bool:
        """False while the server is remembered as choosing HTTP/1.1."""
        until = self._h1_only.get((host, port))
        if until is None:
            return True
        if time.monotonic() >= until:
            del self._h1_only[(host, port)]
            return True
        return False

    async def request(self, host: str, port: int, ssl: object, server_hostname: str | None, identity: str,
                      headers: list[tuple[bytes, bytes]], body: bytes | AsyncIterator[bytes] | None, *,
                      label: str, retry_stale: bool, deadline: float | None = None) -> Response:
        """Send one request on the (host, port, ssl, identity) connection. Raises NotH2 (use HTTP/1.1),
        ConnectFailed, Stale, Broken, HeadTimeout as httpclient.Pool.request does."""
        key = (host, port, ssl, identity)
        for conn in self._conns.get(key, ()):  # the usual case, without a coroutine for it
            if conn.usable():
                break
        else:
            conn = await self._connection(key, host, port, ssl, server_hostname, label, deadline)
        try:
            return await conn.request(headers, body, deadline)
        except Stale:
            if not retry_stale:
                raise
        conn = await self._connection(key, host, port, ssl, server_hostname, label, deadline)
        try:
            return await conn.request(headers, body, deadline)
        except Stale as e:
            raise Broken(str(e)) from e

    async def _connection(self, key: tuple[object, ...], host: str, port: int, ssl: object,
                          server_hostname: str | None, label: str, deadline: float | None) -> Connection:
        while True:
            for conn in self._conns.get(key, ()):
                if conn.usable():
                    return conn
            pending = self._connecting.get(key)
            if pending is not None:
                try:
                    await asyncio.shield(pending)  # its ConnectFailed is ours too
                except NotH2 as e:
                    raise NotH2(str(e)) from None  # its connection goes to one caller only
                continue
            pending = asyncio.get_running_loop().create_future()
            self._connecting[key] = pending
            try:
                conn = await self._connect(key, host, port, ssl, server_hostname, label, deadline)
            except BaseException as e:
                if isinstance(e, HttpClientError):
                    pending.set_exception(e)
                    pending.exception()  # retrieved: no warning when nobody else waited
                else:
                    pending.cancel()
                raise
            finally:
                del self._connecting[key]
            pending.set_result(conn)
            return conn

    async def _connect(self, key: tuple[object, ...], host: str, port: int, ssl: object,
                       server_hostname: str | None, label: str, deadline: float | None) -> Connection:
        if not self.speaks_h2(host, port):
            raise NotH2(f"{label} speaks HTTP/1.1")
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout if not deadline else min(self.connect_timeout, deadline - loop.time())
        started = loop.time()
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, key, label), host, port, ssl=ssl,  # type: ignore[arg-type]
                    server_hostname=server_hostname)
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            raise ConnectFailed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
        if conn.alpn != "h2":
            self._h1_only[(host, port)] = time.monotonic() + H1_RECHECK
            metrics.UPSTREAM_H2_EVENTS.labels(server=label, event="alpn_http1").inc()
            log.info("upstream %s chose %s over h2 in ALPN: HTTP/1.1 to it", label, conn.alpn or "no protocol")
            transport = conn.transport if conn.alpn == "http/1.1" else None
            if transport is None and conn.transport is not None:
                conn.transport.close()
            raise NotH2(f"{label} chose {conn.alpn or 'no protocol'} in ALPN", transport)
        # The server's SETTINGS follow its handshake at once: with them known, the requests waiting for this
        # connection all go on it up to the server's real stream limit, not the 100 assumed without them.
        try:
            async with asyncio.timeout(max(0.0, timeout - (loop.time() - started))):
                await asyncio.shield(conn.settings)
        except (TimeoutError, HttpClientError) as e:
            conn.close()
            raise ConnectFailed(f"no HTTP/2 SETTINGS from the server: {type(e).__name__}") from e
        metrics.UPSTREAM_H2_EVENTS.labels(server=label, event="connect").inc()
        metrics.UPSTREAM_CONNECTIONS.labels(server=label, protocol="h2").inc()
        self._conns.setdefault(key, []).append(conn)
        self._all.add(conn)
        if self._ticker is None:
            self._ticker = tasks.spawn(self._tick(), name="h2-liveness")
        return conn

    def forget(self, conn: Connection) -> None:
        """No new streams on `conn` (failed, GOAWAY, draining)."""
        conns = self._conns.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.key]
        if conn.failed is not None and conn in self._all:
            self._all.discard(conn)
            metrics.UPSTREAM_CONNECTIONS.labels(server=conn.label, protocol="h2").dec()

    def watch_deadlines(self) -> None:
        """A request with a head deadline started: the ticker looks every 0.1 s from now on (woken only if it was
        sleeping longer: not once per request)."""
        if not self._fine and self._wake_ticker is not None:
            self._fine = True
            self._wake_ticker.set()

    def connections(self) -> list[Connection]:
        return list(self._all)

    def ping_server(self, host: str, port: int) -> int:
        """PING every connection to (host, port) now, whatever its identity: a probe of that server got no answer in
        time. An answer within `ping_timeout` says the link lives (the probe's failure counts as usual); none and
        the connection is dead, as after an idle PING (`on_dead`). Returns how many connections were PINGed."""
        n = 0
        for conn in list(self._all):
            if conn.failed is None and conn.transport is not None and conn.key[0] == host and conn.key[1] == port:
                if not conn.ping_sent:
                    metrics.UPSTREAM_H2_EVENTS.labels(server=conn.label, event="probe_ping").inc()
                conn.ping()
                n += 1
        return n

    async def _tick(self) -> None:
        """Head deadlines (every 0.1 s while any request waits on one) and liveness (PINGs) of every connection."""
        loop = asyncio.get_running_loop()
        self._wake_ticker = asyncio.Event()
        try:
            while self._all:
                self._fine = fine = any(c.deadlines for c in self._all)
                period = 0.1 if fine else max(0.05, min(1.0, (self.read_idle or 4.0) / 4, self.ping_timeout / 4))
                self._wake_ticker.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(period):
                        await self._wake_ticker.wait()
                self.check(loop.time())
        finally:
            self._ticker = None
            self._wake_ticker = None
            self._fine = False

    def check(self, now: float) -> None:
        for conn in list(self._all):
            if conn.failed is not None:
                self._all.discard(conn)
                continue
            for stream, deadline in list(conn.deadlines.items()):
                if deadline <= now and stream.head is None:
                    stream.error = HeadTimeout("no response head by the deadline")
                    del conn.deadlines[stream]
                    conn._wake(stream.id)
                    conn.ping()  # is the connection itself alive?
            if conn.ping_sent:
                if now - conn.ping_sent >= self.ping_timeout:
                    why = f"no answer to a PING within {self.ping_timeout:g}s"
                    log.warning("upstream %s: %s: connection dropped", conn.label, why)
                    metrics.UPSTREAM_H2_EVENTS.labels(server=conn.label, event="ping_timeout").inc()
                    conn.fail(Broken(why))
                    if self.on_dead is not None:
                        self.on_dead(str(conn.key[0]), int(conn.key[1]), why)  # type: ignore[call-overload]
            elif self.read_idle > 0 and now - conn.last_read >= self.read_idle:
                conn.ping()
            if not conn.session.streams and conn.failed is None and (
                    conn.draining or now - conn.idle_since >= self.idle_timeout):
                conn.close()

    def abort_waiting(self, why: str) -> int:
        """Fail every request still waiting for its response head (going offline). Returns how many."""
        n = 0
        for conn in list(self._all):
            for stream in list(conn.session.streams.values()):
                if stream.head is None and stream.error is None:
                    stream.error = Broken(why)
                    conn._wake(stream.id)
                    n += 1
        return n

    def drain(self) -> None:
        """New requests go on new connections (new credentials); the open ones close as their streams end."""
        for conn in list(self._all):
            self.forget(conn)
            conn.drain()

    def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        for conn in list(self._all):
            conn.close()
        self._conns.clear()
