"""A lean HTTP/1.1 client for the hot path to the API server: keep-alive connections, streamed response bodies.

Why not aiohttp's client: a forwarded small GET spent most of its time in aiohttp's general-purpose request machinery
(URL handling, cookie jar, tracing, timeouts, payload objects). The proxy needs much less: send bytes it already has,
read a status line and headers, hand the body on chunk by chunk as it arrives (chunked or Content-Length framing,
decoded here, re-framed by the server side), and keep the connection for the next request. Flow control: a body the
client reads slower than the API server sends pauses reading from the API server. A request may carry a deadline for
its response head; past it the connection is dropped and the caller gets HeadTimeout.

The boundary: one connection carries one request at a time; the pool is keyed by (server, TLS context), so a request
with its own Authorization never shares a connection that presented the node's client certificate. It knows nothing
of Kubernetes, health or failover (upstream.py). Neighbours: upstream.py is its only user.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterable

from multidict import CIMultiDict, CIMultiDictProxy

from edgeproxy import tasks

_HIGH_WATER = 1 << 20  # body bytes buffered before reading from the server pauses
_LOW_WATER = 1 << 18
_MAX_HEAD = 1 << 20  # a response head larger than this is an error
_NO_BODY_STATUS = frozenset({204, 304})
SWEEP_INTERVAL = 0.1  # seconds: how late past its deadline a request without a response head may be failed


class HttpClientError(Exception):
    """Root of this module's errors."""


class ConnectFailed(HttpClientError):
    """No connection could be made (refused, timed out, TLS handshake failed): nothing was sent."""


class Stale(HttpClientError):
    """A kept-alive connection closed under a request before any response byte: the server may never have seen it."""


class Broken(HttpClientError):
    """The connection failed mid-response: the body is incomplete."""


class HeadTimeout(HttpClientError):
    """No response head by the request's deadline (a hung server, a black-holed link): the connection was dropped.
    The request may have reached the server; its outcome is unknown."""


class Response:
    """The head of a response and its body, read with `read()` (b"" at the end). `release()` or `close()` after.
    `raw_head`: the status line and header lines as received, without the blank line that ends them."""

    __slots__ = ("_conn", "headers", "raw_head", "reason", "status")

    def __init__(self, conn: _Conn, status: int, reason: str, headers: CIMultiDictProxy[str],
                 raw_head: bytes = b"") -> None:
        self._conn = conn
        self.status = status
        self.reason = reason
        self.headers = headers
        self.raw_head = raw_head

    async def read(self) -> bytes:
        """The next body bytes as they arrived; b"" once the body is complete. Raises Broken."""
        return await self._conn.read_body()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self._conn.read_body():
            yield chunk

    def release(self) -> None:
        """Done with a fully read body: the connection goes back to the pool (or is closed if it cannot be reused)."""
        self._conn.finish()

    def close(self) -> None:
        """Drop the connection now, whatever was left unread (a client that went away; going offline)."""
        self._conn.abort()


class _Conn(asyncio.Protocol):
    """One connection, one request at a time. Parses the response head, then the body's framing."""

    __slots__ = (
        "_body", "_body_bytes", "_chunk_left", "_closed_exc", "_done", "_head", "_head_waiter", "_is_head",
        "_keep_alive", "_length_left", "_loop", "_mode", "_paused", "_pool", "_raw_head", "_reader_waiter", "_received",
        "_state", "head_deadline", "idle_since", "key", "transport",
    )

    def __init__(self, pool: Pool, key: tuple[object, ...]) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()  # (get_running_loop() asks the kernel for the pid each time)
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.head_deadline = 0.0  # loop time by which the response head must have come; 0: none
        self._reset()
        self._closed_exc: Exception | None = None

    def _reset(self) -> None:
        self._head = bytearray()
        self._raw_head = b""
        self._head_waiter: asyncio.Future[tuple[int, str, CIMultiDictProxy[str]]] | None = None
        self._state = "idle"  # idle | head | body | done
        self._mode = ""  # length | chunked | close | none
        self._length_left = 0
        self._chunk_left = -1  # -1: expecting a size line; -2: expecting the CRLF after data; -3: trailers
        self._body: collections.deque[bytes] = collections.deque()
        self._body_bytes = 0
        self._reader_waiter: asyncio.Future[None] | None = None
        self._done = False
        self._paused = False
        self._keep_alive = True
        self._received = False
        self._is_head = False

    # ---- asyncio.Protocol ----
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A request goes out in one write and waits for its answer: Nagle's algorithm would only add delay.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self._received = True
        if self._state == "head":
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > _MAX_HEAD:
                    self._fail(Broken("response head too large"))
                return
            head = bytes(self._head[:end])
            rest = bytes(self._head[end + 4:])
            self._head = bytearray()
            try:
                status, reason, headers = _parse_head(head)
            except ValueError as e:
                self._fail(Broken(f"bad response head: {e}"))
                return
            if 100 <= status < 200 and status != 101:
                # An interim answer (100 Continue, 103 Early Hints): the final head follows.
                if rest:
                    self.data_received(rest)
                return
            self._raw_head = head
            self._start_body(status, headers)
            waiter = self._head_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result((status, reason, headers))
            if self._mode == "none":
                if rest:
                    self._keep_alive = False  # bytes where no body may be: the connection is not reusable
                self._end_body()
            elif rest:
                self._feed(rest)
            elif self._mode == "length" and self._length_left == 0:
                self._end_body()
        elif self._state == "body":
            self._feed(data)
        elif self._state == "idle":
            # Bytes on an idle kept-alive connection: the server broke the protocol. Drop it.
            self.abort()
        else:  # bytes after a complete body: the connection is not reusable
            self._keep_alive = False

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._pool.forget(self)
        if self._state == "body" and self._mode == "close":
            self._end_body()
            return
        if self._state in ("head", "body"):
            if self._state == "head" and not self._received:
                self._fail(Stale(f"connection closed before the response: {exc or 'EOF'}"))
            else:
                self._fail(Broken(f"connection lost mid-response: {exc or 'EOF'}"))

    def pause_writing(self) -> None:
        pass

    def resume_writing(self) -> None:
        pass

    # ---- request side ----
    async def request(self, head: bytes, body: bytes | None, method: str) -> Response:
        assert self.transport is not None
        self._reset()
        self._state = "head"
        self._head_waiter = self._loop.create_future()
        self._is_head = method == "HEAD"
        self.transport.write(head + body if body else head)
        status, reason, headers = await self._head_waiter
        return Response(self, status, reason, headers, self._raw_head)

    async def request_streamed(self, head: bytes, chunks: AsyncIterator[bytes], method: str) -> Response:
        """A request body of unknown length, sent with chunked framing as it is read."""
        assert self.transport is not None
        self._reset()
        self._state = "head"
        self._head_waiter = self._loop.create_future()
        self._is_head = method == "HEAD"
        self.transport.write(head)
        async for chunk in chunks:
            if self.transport is None:
                break
            if chunk:
                self.transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
        if self.transport is not None:
            self.transport.write(b"0\r\n\r\n")
        status, reason, headers = await self._head_waiter
        return Response(self, status, reason, headers, self._raw_head)

    # ---- body parsing ----
    def _start_body(self, status: int, headers: CIMultiDictProxy[str]) -> None:
        self._state = "body"
        connection = headers.get("Connection", "").lower()
        if "close" in connection:
            self._keep_alive = False
        te = headers.get("Transfer-Encoding", "").lower()
        if self._is_head or status in _NO_BODY_STATUS or 100 <= status < 200:
            self._mode = "none"
            if self._is_head:
                # a server may send a HEAD answer's body anyway, after we stopped reading: such bytes would be the
                # next request's "response head" on a pooled connection (issue 14 D7), so it is not reused
                self._keep_alive = False
        elif "chunked" in te:
            self._mode = "chunked"
            self._chunk_left = -1
        elif "Content-Length" in headers:
            try:
                self._length_left = int(headers["Content-Length"])
            except ValueError:
                self._mode = "close"
                self._keep_alive = False
            else:
                self._mode = "length"
        else:
            self._mode = "close"
            self._keep_alive = False

    def _feed(self, data: bytes) -> None:
        mode = self._mode
        if mode == "length":
            if len(data) >= self._length_left:
                if len(data) > self._length_left:
                    self._keep_alive = False  # bytes past the body: the connection is not reusable
                    data = data[: self._length_left]
                self._length_left = 0
                self._push(data)
                self._end_body()
            else:
                self._length_left -= len(data)
                self._push(data)
        elif mode == "close":
            self._push(data)
        elif mode == "chunked":
            self._feed_chunked(data)
        else:
            self._keep_alive = False

    def _feed_chunked(self, data: bytes) -> None:
        buf = self._head + data if self._head else data
        self._head = bytearray()
        pos, n = 0, len(buf)
        out = []
        while pos < n:
            left = self._chunk_left
            if left > 0:
                take = min(left, n - pos)
                out.append(buf[pos:pos + take])
                pos += take
                self._chunk_left = left - take
                if self._chunk_left == 0:
                    self._chunk_left = -2
            elif left == -2:  # CRLF after chunk data
                if n - pos < 2:
                    break
                pos += 2
                self._chunk_left = -1
            else:  # -1 size line, -3 trailer lines
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    break
                line = buf[pos:eol]
                pos = eol + 2
                if left == -3:
                    if not line:  # end of trailers: the body is complete
                        if out:
                            self._push(b"".join(out))
                        if pos < n:
                            self._keep_alive = False
                        self._end_body()
                        return
                    continue
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self._fail(Broken("bad chunk size line"))
                    return
                self._chunk_left = size if size else -3
        if pos < n:
            self._head = bytearray(buf[pos:])
        if out:
            self._push(out[0] if len(out) == 1 else b"".join(out))

    def _push(self, data: bytes) -> None:
        if not data:
            return
        self._body.append(data)
        self._body_bytes += len(data)
        if self._body_bytes > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def _end_body(self) -> None:
        self._state = "done"
        self._done = True
        self._wake()

    def _fail(self, exc: Exception) -> None:
        self._closed_exc = exc
        self._keep_alive = False
        waiter = self._head_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._state = "failed"
        self._wake()
        if self.transport is not None:
            self.transport.abort()

    def _wake(self) -> None:
        waiter = self._reader_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def read_body(self) -> bytes:
        while True:
            if self._body:
                if len(self._body) == 1:
                    data = self._body.popleft()
                else:
                    data = b"".join(self._body)
                    self._body.clear()
                self._body_bytes = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self._done:
                return b""
            if self._state == "failed":
                raise self._closed_exc or Broken("connection failed")
            if self._state == "closed":
                raise Broken("response closed")
            self._reader_waiter = self._loop.create_future()
            try:
                await self._reader_waiter
            finally:
                self._reader_waiter = None

    # ---- lifecycle ----
    def finish(self) -> None:
        if self._done and self._keep_alive and self.transport is not None and not self.transport.is_closing():
            self._state = "idle"
            self._pool.put(self)
        else:
            self.abort()

    def abort(self) -> None:
        if self._state in ("head", "body"):
            self._closed_exc = Broken("response closed")
            self._state = "closed"
            self._wake()
        if self.transport is not None:
            self.transport.abort()
            self.transport = None
        self._pool.forget(self)


class Pool:
    """Idle keep-alive connections per (host, port, TLS context) and the means to open new ones."""

    __slots__ = ("_idle", "_sweeper", "_waiting", "connect_timeout", "idle_timeout")

    def __init__(self, *, connect_timeout: float = 3.0, idle_timeout: float = 30.0) -> None:
        # idle_timeout: shorter than the API server's and common load balancers' idle timeouts, so a pooled
        # connection is not reused just as the other side closes it (a write could then not be retried safely).
        self._idle: dict[tuple[object, ...], list[_Conn]] = {}
        self._waiting: set[_Conn] = set()  # sent, no response head yet
        self._sweeper: asyncio.Task[None] | None = None  # fails requests past their head deadline
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout

    async def request(self, host: str, port: int, ssl: object, server_hostname: str | None, method: str,
                      head: bytes, body: bytes | AsyncIterator[bytes] | None, *, retry_stale: bool,
                      deadline: float | None = None) -> Response:
        """Send `head` (+ body) on a pooled or new connection and return the response head.

        Raises ConnectFailed (nothing sent), Stale (a reused connection died before answering; retried once on a
        fresh connection when `retry_stale`), Broken, HeadTimeout (no head by `deadline`, loop time: the connection
        is dropped, never pooled again, since a late answer would be read as the next request's; connecting is
        bounded by it too).

        A write is retried on a stale connection too (unlike Go's transport): the API server closing an idle
        keep-alive connection just as a request was written is the common case, and Kubernetes writes carry their own
        guards (resourceVersion preconditions, AlreadyExists), so a write that did land is refused, not doubled.
        """
        key = (host, port, id(ssl))
        conn = self._take(key)
        if conn is not None:
            try:
                return await self._send(conn, method, head, body, deadline)
            except Stale:
                if not retry_stale:
                    raise
        conn = await self._connect(key, host, port, ssl, server_hostname, deadline)
        try:
            return await self._send(conn, method, head, body, deadline)
        except Stale as e:
            raise Broken(str(e)) from e

    async def _send(self, conn: _Conn, method: str, head: bytes, body: bytes | AsyncIterator[bytes] | None,
                    deadline: float | None) -> Response:
        self._waiting.add(conn)
        if deadline:
            # One sweeper for all waiting requests rather than a timer each: a uvloop timer armed and cancelled per
            # request costs ~4 us, a twentieth of a forwarded small GET.
            conn.head_deadline = deadline
            if self._sweeper is None:
                self._sweeper = tasks.spawn(self._sweep(), name="httpclient-head-deadlines")
        else:
            conn.head_deadline = 0.0
        try:
            if body is None or isinstance(body, bytes | bytearray):
                return await conn.request(head, body, method)
            return await conn.request_streamed(head, body, method)
        except asyncio.CancelledError:
            conn.abort()
            raise
        finally:
            self._waiting.discard(conn)

    async def _sweep(self) -> None:
        """Fail each request still waiting for its head past its deadline (to within SWEEP_INTERVAL); runs while
        any waiting request has a deadline."""
        loop = asyncio.get_running_loop()
        try:
            while any(c.head_deadline for c in self._waiting):
                await asyncio.sleep(SWEEP_INTERVAL)
                now = loop.time()
                for conn in [c for c in self._waiting if c.head_deadline and c.head_deadline <= now]:
                    conn._fail(HeadTimeout("no response head by the deadline"))
        finally:
            self._sweeper = None

    def abort_waiting(self, why: str) -> int:
        """Fail every request still waiting for its response head (a hung API server): their callers get Broken
        and can answer some other way. Returns how many there were."""
        waiting = list(self._waiting)
        for conn in waiting:
            conn._fail(Broken(why))
        return len(waiting)

    async def _connect(self, key: tuple[object, ...], host: str, port: int, ssl: object,
                       server_hostname: str | None, deadline: float | None = None) -> _Conn:
        loop = asyncio.get_running_loop()
        timeout = self.connect_timeout if not deadline else min(self.connect_timeout, deadline - loop.time())
        try:
            async with asyncio.timeout(timeout):
                _, conn = await loop.create_connection(
                    lambda: _Conn(self, key), host, port, ssl=ssl,  # type: ignore[arg-type]
                    server_hostname=server_hostname if ssl else None,
                )
        except (OSError, TimeoutError) as e:  # ssl.SSLError is an OSError
            raise ConnectFailed(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
        return conn

    def _take(self, key: tuple[object, ...]) -> _Conn | None:
        idle = self._idle.get(key)
        cutoff = time.monotonic() - self.idle_timeout
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing() and conn.idle_since >= cutoff:
                return conn
            conn.abort()  # closed by the server, or idle long enough that a load balancer may have dropped it
        return None

    def adopt(self, host: str, port: int, ssl: object, transport: asyncio.Transport) -> None:
        """Take an open connection made elsewhere (the HTTP/2 pool's, when ALPN chose HTTP/1.1) as an idle one for
        (host, port, ssl): the next request to it goes out without another handshake."""
        conn = _Conn(self, (host, port, id(ssl)))
        transport.set_protocol(conn)
        conn.connection_made(transport)
        self.put(conn)

    def put(self, conn: _Conn) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.key, []).append(conn)

    def forget(self, conn: _Conn) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)

    def discard_idle(self, host: str, port: int) -> int:
        """Close the idle connections to host:port (under every TLS context); returns how many. After one went silent
        under a request, those opened over the same path (a NAT or conntrack entry dropped, a link black-holed) are
        suspect too: the next request opens a fresh one rather than spend its deadline finding out."""
        closed = 0
        for key, conns in self._idle.items():
            if key[:2] == (host, port):
                for conn in list(conns):
                    conns.remove(conn)
                    conn.abort()
                    closed += 1
        return closed

    def prune(self) -> None:
        """Close connections idle longer than idle_timeout (the API server closes them too, eventually)."""
        cutoff = time.monotonic() - self.idle_timeout
        for conns in self._idle.values():
            for conn in [c for c in conns if c.idle_since < cutoff]:
                conns.remove(conn)
                conn.abort()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conns in self._idle.values():
            for conn in list(conns):
                conn.abort()
        self._idle.clear()


def _parse_head(head: bytes) -> tuple[int, str, CIMultiDictProxy[str]]:
    text = head.decode("latin-1")
    lines = text.split("\r\n")
    if head.count(b"\n") != len(lines) - 1:  # a bare LF: a header that would split in two for the client
        raise ValueError("a lone LF in the response head")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    fields = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ValueError(f"bad header line {line[:80]!r}")
        fields.append((name.strip(), value.strip()))
    return int(code), reason, CIMultiDictProxy(CIMultiDict(fields))


def request_head(method: str, target: str, host: str, headers: Iterable[tuple[str, str]],
                 body: bytes | AsyncIterator[bytes] | None) -> bytes:
    """The request line and headers, with the framing of `body` (Content-Length, or chunked for a stream).
    `headers` come from an already-parsed request (no CR/LF inside values) without framing headers."""
    head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n"
    lines = "\r\n".join(map(": ".join, headers))  # in C: a Python loop over the headers cost twice as much
    if lines:
        head += lines + "\r\n"
    if isinstance(body, (bytes, bytearray)):  # a tuple: `bytes | bytearray` would be built at every call
        head += f"Content-Length: {len(body)}\r\n\r\n"
    elif body is not None:
        head += "Transfer-Encoding: chunked\r\n\r\n"
    elif method in ("POST", "PUT", "PATCH"):
        head += "Content-Length: 0\r\n\r\n"
    else:
        head += "\r\n"
    # the bytes the client sent: aiohttp decoded them as UTF-8 with surrogateescape (latin-1 changed U+0080-U+00FF
    # and failed on the rest, issue 14 D5)
    return head.encode("utf-8", "surrogateescape")
