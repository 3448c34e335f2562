"""The "WAN" between an edge host and the API server: a TCP relay the tests can cut.

    wan = Wan(listen_host="10.251.3.1", target=("127.0.0.1", 6443)).start()
    wan.address        -> ("10.251.3.1", port)  what the edge side dials
    wan.cut()          the link goes down: every established connection is reset, new ones are refused
    wan.blackhole()    the link hangs: connections are accepted and kept, nothing is forwarded either way
    wan.restore()      the link is back
    wan.stats()        {"connections_total", "connections_open", "bytes_up", "bytes_down", "state"}
    wan.stop()

The relay runs its own asyncio loop in a daemon thread, so sync and async tests (and the benchmarks) use it alike.
Bytes are counted as they are written to the other side: `bytes_up` edge → API server, `bytes_down` back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

CHUNK = 256 * 1024


class Wan:
    def __init__(self, listen_host: str, target: tuple[str, int], *, port: int = 0) -> None:
        self.listen_host = listen_host
        self.target = target
        self.port = port
        self.state = "up"
        self.connections_total = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._flowing: asyncio.Event | None = None
        self._server: asyncio.base_events.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"wan-{listen_host}", daemon=True)

    # ---- the API (thread-safe)

    def start(self) -> Wan:
        self._thread.start()
        self._call(self._start())
        return self

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_host, self.port

    @property
    def url(self) -> str:
        return f"https://{self.listen_host}:{self.port}"

    def cut(self) -> None:
        self._call(self._cut())

    def blackhole(self) -> None:
        self._call(self._blackhole())

    def restore(self) -> None:
        self._call(self._restore())

    def stats(self) -> dict[str, Any]:
        return {"state": self.state, "connections_total": self.connections_total,
                "connections_open": len(self._conns), "bytes_up": self.bytes_up, "bytes_down": self.bytes_down}

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        with contextlib.suppress(Exception):
            self._loop.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # ---- inside the loop

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        await self._listen()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _cut(self) -> None:
        self.state = "cut"
        await self._close_listener()
        for down, up in list(self._conns):
            for w in (down, up):
                if w is not None:
                    w.transport.abort()  # RST, as a dropped connection looks to its ends
        self._conns.clear()

    async def _blackhole(self) -> None:
        self.state = "blackhole"
        assert self._flowing is not None
        self._flowing.clear()
        if self._server is None:
            await self._listen()

    async def _restore(self) -> None:
        self.state = "up"
        assert self._flowing is not None
        self._flowing.set()
        if self._server is None:
            await self._listen()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_total += 1
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._conns.add(pair)
        try:
            if self.state == "blackhole":  # hold it open until the link is back (or cut)
                assert self._flowing is not None
                await self._flowing.wait()
            if pair not in self._conns:
                return
            try:
                up_r, up_w = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            if pair not in self._conns:  # cut while connecting
                up_w.transport.abort()
                return
            self._conns.discard(pair)
            pair = (writer, up_w)
            self._conns.add(pair)
            await asyncio.gather(self._pump(reader, up_w, up=True), self._pump(up_r, writer, up=False),
                                 return_exceptions=True)
        finally:
            self._conns.discard(pair)
            for w in pair:
                if w is not None:
                    w.transport.abort() if self.state == "cut" else w.close()

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, *, up: bool) -> None:
        assert self._flowing is not None
        try:
            while True:
                await self._flowing.wait()
                data = await r.read(CHUNK)
                if not data:
                    break
                await self._flowing.wait()  # read before a black hole began: held, not delivered, until restore
                if up:  # counted before the write: a reader that got the bytes sees them counted
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                w.write(data)
                await w.drain()
        finally:
            with contextlib.suppress(Exception):
                if w.can_write_eof():
                    w.write_eof()
