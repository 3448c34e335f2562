"""The lane: plain GETs on an HTTP/1.1 client connection, answered without aiohttp's per-request machinery.

Why: a forwarded small GET spent about a third of its CPU in aiohttp's web server around the handler (a task, a
BaseRequest, a StreamWriter and a StreamResponse per request, header re-serialisation, the finish and keep-alive
bookkeeping). Most requests a node sends are plain GETs forwarded unchanged, so those skip it: aiohttp's C parser
still reads every head, and for one that `lane(message, conn)` accepts (edgeproxy.proxy.Proxy.lane: online, a GET
without body or upgrade, no watch, no filter, allowed to act) the answer is one task that forwards the request and
writes the API server's answer straight to the transport. Everything else, and any request queued behind one in
progress, takes aiohttp's ordinary path unchanged; a lane request that ends up answered locally (the API server
unreachable) is handed to that path too (`answer`).

What it keeps of the ordinary path: answers in request order (bytes arriving while a lane request is in progress wait
for it), the guard's bounds (edgeproxy.guard.limits.GuardedHandler: head deadline, idle timeout, connection bound),
a client that goes away cancelling its request, graceful shutdown waiting for it, write flow control.

Boundary: one HTTP/1.1 connection's request scheduling; what a request means and where it goes is proxy.py's.
Neighbours: guard/limits.py (the handler it extends), server.py (builds the proxy listeners with `LaneServer`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_writer import StreamWriter
from aiohttp.streams import EMPTY_PAYLOAD
from aiohttp.web_protocol import _ErrInfo

from edgeproxy.guard import limits

log = logging.getLogger(__name__)

Lane = Callable[[Any, "LaneHandler"], Coroutine[Any, Any, None] | None]
MAX_BACKLOG = 1 << 20  # bytes a client may send ahead while a lane request is in progress before reading pauses


class LaneHandler(limits.GuardedHandler):
    """GuardedHandler whose plain GETs may take the lane; implements edgeproxy.proxy.Conn for them."""

    __slots__ = ("_answered", "_backlog", "_backlog_paused", "_head_bytes", "_lane_task", "_lane_wrote")

    def __init__(self, manager: LaneServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._lane_task: asyncio.Task[None] | None = None
        self._lane_wrote = False
        self._backlog = b""
        self._backlog_paused = False
        self._answered = 0  # requests answered, by either path: the connection is idle when all parsed ones are
        self._head_bytes = 0  # bytes received since the last complete head: a bound on the size of the next

    # ---- reading ----
    def data_received(self, data: bytes) -> None:
        if self._lane_task is not None:  # answers go out in order: later bytes wait for the request in progress
            self._backlog += data
            if len(self._backlog) > MAX_BACKLOG and not self._backlog_paused and self.transport is not None:
                self._backlog_paused = True
                self.transport.pause_reading()
            return
        super().data_received(data)

    def _heads_received(self, data: bytes) -> None:
        lane = self._guard.lane  # type: ignore[attr-defined]
        head_bytes = self._head_bytes = self._head_bytes + len(data)
        if (lane is None or self._force_close or self._close or self._parser is None
                or self._answered != self._request_count):  # aiohttp's path has requests of this connection
            before = self._request_count
            super()._heads_received(data)
            if self._request_count != before:
                self._head_bytes = len(data)  # at most this much of the next head came with it
            return
        try:
            messages, upgraded, tail = self._parser.feed_data(data)
        except HttpProcessingError as exc:
            messages, upgraded, tail = [(_ErrInfo(status=400, exc=exc, message=exc.message), EMPTY_PAYLOAD)], False, b""
        if messages:
            self._head_bytes = len(data)
        if len(messages) == 1 and not upgraded:
            message, payload = messages[0]
            max_head = self._guard.limits.max_head
            if (payload is EMPTY_PAYLOAD and not isinstance(message, _ErrInfo)
                    and (head_bytes <= max_head or limits.head_size_of(message.path, message.raw_headers) <= max_head)):
                # (a head over the bound is answered 431 by the ordinary path)
                coro = lane(message, self)
                if coro is not None:
                    self._request_count += 1
                    self._parser.message_consumed()
                    self._request_in_progress = True  # aiohttp's shutdown() waits for it
                    self._lane_wrote = False
                    self._lane_task = self._loop.create_task(self._run(coro))
                    return
        self._queue(messages, upgraded, tail)

    def _queue(self, messages: list[tuple[Any, Any]], upgraded: bool, tail: bytes) -> None:
        """What aiohttp's data_received does with what its parser returned: the requests go to its queue."""
        for message in messages:
            self._request_count += 1
            self._messages.append(message)
        waiter = self._waiter
        if messages and waiter is not None and not waiter.done():
            waiter.set_result(None)
        if not self._buffer_paused and len(self._messages) >= self._max_msg_queue_size:
            self._pause_reading_for_buffer()
        self._upgraded = upgraded
        if upgraded and tail:
            self._message_tail = tail

    async def _run(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # ours: aiohttp's path would answer 500 with a traceback in the log; so does the lane
            log.exception("the lane's handler failed")
            if not self._lane_wrote and self.transport is not None:
                self.transport.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=utf-8"
                                     b"\r\nContent-Length: 21\r\nConnection: close\r\n\r\n500 Internal Server Error")
            self.force_close()
        finally:
            self._answered += 1
            self._lane_task = None
            self._request_in_progress = False
            waiter = self._handler_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            self._lane_done()

    def _lane_done(self) -> None:
        if self.transport is None or self._force_close or self._close:
            return
        self._keepalive = True
        if self._keepalive_timeout > 0:
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
            if self._keepalive_handle is None:
                self._keepalive_handle = self._loop.call_at(self._next_keepalive_close_time, self._process_keepalive)
        if self._backlog_paused:
            self._backlog_paused = False
            self.transport.resume_reading()
        if self._backlog:
            data, self._backlog = self._backlog, b""
            self.data_received(data)

    async def _handle_request(self, request: web.BaseRequest, start_time: float | None,
                              request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
                              ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super()._handle_request(request, start_time, request_handler)
        finally:
            self._answered += 1

    def _process_keepalive(self) -> None:
        if self._lane_task is not None:  # not idle: a lane request is in progress
            self._keepalive_handle = self._loop.call_at(self._loop.time() + self._keepalive_timeout,
                                                        self._process_keepalive)
            return
        super()._process_keepalive()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._lane_task is not None:  # the client went away: its request is cancelled (handler_cancellation)
            self._lane_task.cancel()
        super().connection_lost(exc)

    async def shutdown(self, timeout: float | None = 15.0) -> None:
        await super().shutdown(timeout)
        if self._lane_task is not None:
            self._lane_task.cancel()

    # ---- edgeproxy.proxy.Conn ----
    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("the client connection is closed")
        self._lane_wrote = True
        transport.write(data)

    async def drain(self) -> None:
        if self._paused:
            await self._drain_helper()

    def drop(self) -> None:
        self.force_close()

    async def answer(self, message: Any, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        """This lane request answered by `handler` on aiohttp's ordinary path (request, response, finish)."""
        assert self._request_factory is not None
        request = self._request_factory(message, EMPTY_PAYLOAD, self, StreamWriter(self, self._loop),
                                        asyncio.current_task())
        self._lane_wrote = True  # whatever happens now, aiohttp's path answers (a 500 included)
        try:
            resp, reset = await web_protocol.RequestHandler._handle_request(self, request, None, handler)
        finally:
            self._request_in_progress = True  # until the lane's task ends
            request._task = None  # type: ignore[assignment]
        if reset or not resp.keep_alive:
            self.force_close()
        return resp


class LaneServer(limits.GuardedServer):
    """GuardedServer whose connections are LaneHandler; `lane`: the proxy's Proxy.lane (None: no lane)."""

    def __init__(self, handler: Any, *, lane: Lane | None = None, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.lane = lane

    def __call__(self) -> LaneHandler:
        return LaneHandler(self, loop=self._loop, **self._kwargs)
