"""A small HTTP/2 test client over python-hyper's h2 (client side), with the controls a test needs and a real client
hides: hold a stream's window (a watcher that stops reading), reset a stream, send raw bytes (malformed frames),
see the server's GOAWAY. Not edgeproxy's code: the server under test is edgeproxy.h2.server."""

from __future__ import annotations

import asyncio
import contextlib
import ssl

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from edgeproxy import tasks
from edgeproxy.h2 import h2conn

CONN_WINDOW = 64 << 20


class Stream:
    def __init__(self, sid: int) -> None:
        self.id = sid
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.informational: list[int] = []
        self.body = bytearray()
        self.ended = False
        self.reset: int | None = None
        self.held = False  # its window is not handed back: the server must stop sending to it
        self.unacked = 0

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)


class RawH2:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2conn.ClientConnection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, Stream] = {}
        self.goaway: tuple[int, int] | None = None  # (error code, last stream id) of the server's GOAWAY
        self.closed = False
        self.changed = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, url: str, ctx: ssl.SSLContext) -> RawH2:
        ctx.set_alpn_protocols(["h2"])
        host, port = url.removeprefix("https://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        client = cls(reader, writer)
        client.conn.initiate_connection()
        client.conn.increment_flow_control_window(CONN_WINDOW - 65535)
        client.flush()
        client._pump = tasks.spawn(client._read(), name="raw-h2-client")
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def _read(self) -> None:
        try:
            while data := await self.reader.read(1 << 16):
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for ev in events:
                    self._event(ev)
                self.flush()
                self.changed.set()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed = True
            self.changed.set()

    def _event(self, ev: h2.events.Event) -> None:
        st = self.streams.get(getattr(ev, "stream_id", 0) or 0)
        if isinstance(ev, h2.events.ResponseReceived) and st is not None:
            st.headers = list(ev.headers)
            st.status = int(dict(ev.headers)[b":status"])
        elif isinstance(ev, h2.events.InformationalResponseReceived) and st is not None:
            st.informational.append(int(dict(ev.headers)[b":status"]))
        elif isinstance(ev, h2.events.DataReceived) and st is not None:
            st.body += ev.data
            # the connection's window always goes back; the stream's only when it is not held
            if ev.flow_controlled_length:
                self.conn.increment_flow_control_window(ev.flow_controlled_length)
            if st.held:
                st.unacked += ev.flow_controlled_length
            elif ev.flow_controlled_length and not st.done:
                with contextlib.suppress(h2.exceptions.StreamClosedError):
                    self.conn.increment_flow_control_window(ev.flow_controlled_length, st.id)
        elif isinstance(ev, h2.events.StreamEnded) and st is not None:
            st.ended = True
        elif isinstance(ev, h2.events.StreamReset) and st is not None:
            st.reset = int(ev.error_code)
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.goaway = (int(ev.error_code), int(ev.last_stream_id))

    def request(self, method: str, path: str, headers: list[tuple[str, str]] | None = None,
                body: bytes | None = None, *, end: bool = True) -> Stream:
        sid = self.conn.get_next_available_stream_id()
        fields = [(b":method", method.encode()), (b":scheme", b"https"), (b":authority", b"127.0.0.1"),
                  (b":path", path.encode())]
        fields += [(k.lower().encode(), v.encode()) for k, v in headers or ()]
        st = self.streams[sid] = Stream(sid)
        self.conn.send_headers(sid, fields, end_stream=end and body is None)
        if body is not None:
            self.send_body(st, body, end=end)
        self.flush()
        return st

    def send_body(self, st: Stream, body: bytes, *, end: bool) -> int:
        """As much of `body` as the server's windows take now; returns the bytes sent."""
        n = min(len(body), self.conn.local_flow_control_window(st.id))
        frame = self.conn.max_outbound_frame_size
        for i in range(0, n, frame):
            self.conn.send_data(st.id, body[i:i + frame])
        if end and n == len(body):
            self.conn.end_stream(st.id)
        self.flush()
        return n

    async def upload(self, st: Stream, body: bytes) -> None:
        """Send `body` (then END_STREAM) as the server's windows open, until it is sent or the stream is over."""
        rest = body
        while rest and not st.done:
            rest = rest[self.send_body(st, rest, end=True):]
            if rest:
                await self.until(lambda: st.done or self.conn.local_flow_control_window(st.id) > 0,
                                 what="a window or the answer")

    def hold(self, st: Stream) -> None:
        st.held = True

    def release(self, st: Stream) -> None:
        st.held = False
        if st.unacked and not st.done:
            self.conn.increment_flow_control_window(st.unacked, st.id)
        st.unacked = 0
        self.flush()

    def reset(self, st: Stream) -> None:
        self.conn.reset_stream(st.id)
        st.reset = 8
        self.flush()

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def until(self, cond, timeout: float = 20.0, what: str = "condition") -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                if self.closed and not cond():
                    raise AssertionError(f"connection closed before {what}")
                self.changed.clear()
                await self.changed.wait()

    async def response(self, st: Stream, timeout: float = 20.0) -> Stream:
        await self.until(lambda: st.done, timeout, f"the end of stream {st.id}")
        return st

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close_connection()
            self.flush()
        self.writer.close()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pump
