"""An HTTP/2 face for the simulator: a TLS listener speaking h2 (ALPN) that relays each stream to the simulator.

kube-apiserver serves HTTP/2 (Go's net/http); the simulator is aiohttp, HTTP/1.1 only. This front lets the tests and
benchmarks put edgeproxy's HTTP/2 upstream path in front of the simulator's real API semantics (lists, watches,
bookmarks, writes): each h2 stream becomes one HTTP/1.1 request to the simulator, its answer streamed back with h2
flow control (a stream whose client stops reading stops only itself). Requests with a bearer token keep it; the rest
reach the simulator as the front's `user` (its client certificate), since the client's certificate ends at the front.

With `http1=True` the listener also offers http/1.1 (ALPN, or a client that asks for none) and relays those requests
the same way, through the same client session: the benchmarks put the HTTP/1.1 and HTTP/2 paths behind the same hop.

Faults a real server shows over h2: `blackhole()` (connections are accepted and kept, nothing is ever answered, not
even PINGs: a dropped link), `goaway()` (GOAWAY on every connection, then close once its streams end),
`max_streams` (SETTINGS_MAX_CONCURRENT_STREAMS). `connections` counts the connections accepted, `peak_streams`
the most streams seen open on one. Neighbours: sim.simulator (what it fronts).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import aiohttp
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from aiohttp import web

from edgeproxy import tasks

_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "te", "proxy-connection"})


class H2Front:
    """`await H2Front(sim).start()` → https URL of an h2-only listener in front of `sim`."""

    def __init__(self, sim: Any, *, user: str = "admin", max_streams: int = 100, host: str = "127.0.0.1",
                 port: int = 0, alpn: tuple[str, ...] = ("h2",), http1: bool = False) -> None:
        self.sim = sim
        self.user = user
        self.max_streams = max_streams
        self.host = host
        self.http1 = http1
        self.alpn = (*alpn, "http/1.1") if http1 and "http/1.1" not in alpn else alpn
        self.port = port
        self.connections = 0  # accepted since start
        self.peak_streams = 0
        self.black_holed = False
        self._open: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._h1: web.Server | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def open_connections(self) -> int:
        return sum(1 for c in self._open if not c.closed)

    async def start(self) -> str:
        pki = self.sim.pki
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki.server_cert, pki.server_key)
        ctx.load_verify_locations(pki.ca_cert)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.set_alpn_protocols(list(self.alpn))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=self.sim.client_ssl(self.user)),
            timeout=aiohttp.ClientTimeout(total=None), auto_decompress=False)
        if self.http1:
            self._h1 = web.Server(self._relay_h1)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Conn(self), self.host, self.port, ssl=ctx)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._open):
            conn.abort()
        if self._h1 is not None:
            await self._h1.shutdown(0.1)
        if self._session is not None:
            await self._session.close()

    async def _relay_h1(self, request: web.BaseRequest) -> web.StreamResponse:
        """One HTTP/1.1 request relayed to the simulator as the h2 streams are (http1=True)."""
        if self.black_holed:
            await asyncio.get_running_loop().create_future()  # never answered (cancelled when the client goes)
        assert self._session is not None
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP and k.lower() != "host"]
        body = await request.read() if request.body_exists else None
        async with self._session.request(request.method, self.sim.url + request.raw_path, headers=headers,
                                         data=body or None, allow_redirects=False) as resp:
            out = web.StreamResponse(status=resp.status, reason=resp.reason)
            for k, v in resp.headers.items():
                if k.lower() not in _HOP:
                    out.headers.add(k, v)
            await out.prepare(request)
            async for chunk in resp.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out

    def blackhole(self, on: bool = True) -> None:
        """Accept and hold connections but never answer anything again (requests, PINGs); on=False undoes it for
        new bytes (what was swallowed stays lost, as on a real dropped link)."""
        self.black_holed = on

    def goaway(self) -> None:
        """GOAWAY (NO_ERROR) on every open connection: in-flight streams finish, new ones must go elsewhere."""
        for conn in list(self._open):
            conn.goaway()


_WHOLE = 16384  # a body up to this long (by Content-Length) is read whole and sent with its head in one write


class _Conn(asyncio.Protocol):
    def __init__(self, front: H2Front) -> None:
        self.front = front
        # What the client sends is checked as a real server checks it; our own answers need no checking.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: front.max_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
        })
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.going_away = False
        self._bodies: dict[int, list[bytes]] = {}
        self._requests: dict[int, list[tuple[bytes, bytes]]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._window: asyncio.Event = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.front.connections += 1
        ssl_object = transport.get_extra_info("ssl_object")
        if self.front._h1 is not None and (ssl_object is None or ssl_object.selected_alpn_protocol() != "h2"):
            handler = self.front._h1()  # aiohttp's HTTP/1.1 server protocol takes the connection over
            transport.set_protocol(handler)
            handler.connection_made(transport)
            return
        self.transport = transport  # type: ignore[assignment]
        self.front._open.add(self)
        if self.front.black_holed:
            return
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window((16 << 20) - 65535)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self.front._open.discard(self)
        for task in self._tasks.values():
            task.cancel()
        self._window.set()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def flush(self) -> None:
        # Written at once, not batched per loop turn: batching here stalled the 500-watch test now and then (the
        # relay's reads from the simulator stopped with 10 MB in flight; not understood yet).
        self._write()

    def _write(self) -> None:
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.front.black_holed:
            self.transport.write(out)

    def goaway(self) -> None:
        self.going_away = True
        state = self.h2.state_machine.state
        self.h2.close_connection(last_stream_id=self.h2.highest_inbound_stream_id)
        self.h2.state_machine.state = state  # h2 would refuse to finish the streams in flight (RFC 9113 §6.8 allows)
        self._write()
        if not self._tasks and self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.front.black_holed:
            return  # swallowed: nothing is processed, nothing answered
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._write()
            self.abort()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._requests[ev.stream_id] = ev.headers
                self._bodies[ev.stream_id] = []
                if ev.stream_ended is not None:
                    self._start(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                self._bodies.setdefault(ev.stream_id, []).append(ev.data)
                self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                if ev.stream_id in self._requests and ev.stream_id not in self._tasks:
                    self._start(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                task = self._tasks.pop(ev.stream_id, None)
                if task is not None:
                    task.cancel()
            elif isinstance(ev, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                self._window.set()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.abort()
        self.flush()

    def _start(self, stream_id: int) -> None:
        self._tasks[stream_id] = tasks.spawn(self._relay(stream_id), name=f"h2front-{stream_id}")
        self.front.peak_streams = max(self.front.peak_streams, len(self._tasks))

    async def _relay(self, stream_id: int) -> None:
        head = dict(self._requests.pop(stream_id))
        body = b"".join(self._bodies.pop(stream_id, []))
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._requests_items(head)]
        try:
            assert self.front._session is not None
            async with self.front._session.request(
                    head[b":method"].decode(), self.front.sim.url + head[b":path"].decode("latin-1"),
                    headers=headers, data=body or None, allow_redirects=False) as resp:
                out = [(b":status", str(resp.status).encode())]
                out += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in resp.headers.items()
                        if k.lower() not in _HOP]
                length = resp.content_length
                if length is not None and length <= _WHOLE:
                    # A small answer goes out as Go's server sends it (the API server's): HEADERS and DATA with
                    # END_STREAM in one write, not a write per frame and an empty DATA frame to end the stream.
                    body = await resp.read()
                    if not body:
                        self.h2.send_headers(stream_id, out, end_stream=True)
                        self.flush()
                        return
                    if len(body) <= min(self.h2.local_flow_control_window(stream_id),
                                        self.h2.max_outbound_frame_size):
                        self.h2.send_headers(stream_id, out)
                        self.h2.send_data(stream_id, body, end_stream=True)
                        self.flush()
                        return
                    self.h2.send_headers(stream_id, out)
                    self.flush()
                    await self._send(stream_id, body)
                    self.h2.end_stream(stream_id)
                    self.flush()
                    return
                self.h2.send_headers(stream_id, out)
                self.flush()
                async for chunk in resp.content.iter_any():
                    await self._send(stream_id, chunk)
                self.h2.end_stream(stream_id)
                self.flush()
        except (asyncio.CancelledError, aiohttp.ClientError, OSError, h2.exceptions.H2Error):
            with contextlib.suppress(h2.exceptions.H2Error, KeyError):
                self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                self.flush()
        finally:
            self._tasks.pop(stream_id, None)
            if self.going_away and not self._tasks and self.transport is not None:
                self._write()
                self.transport.close()

    @staticmethod
    def _requests_items(head: dict[bytes, bytes]) -> list[tuple[bytes, bytes]]:
        return [(k, v) for k, v in head.items() if not k.startswith(b":")]

    async def _send(self, stream_id: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            while self.front.black_holed or self.h2.local_flow_control_window(stream_id) <= 0:
                if self.closed:
                    raise ConnectionResetError("connection closed")
                self._window.clear()
                await self._window.wait()
            n = min(len(view), self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
            self.h2.send_data(stream_id, view[:n].tobytes())
            self.flush()
            view = view[n:]
