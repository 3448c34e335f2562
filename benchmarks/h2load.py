"""A small HTTP/2 load generator (python-hyper h2), run as its own process: every request a stream on ONE TLS
connection (ALPN h2), as client-go multiplexes a component's requests and watches.

    python -m benchmarks.h2load URL [--concurrency N] [--duration S | --requests N] [--cert F --key F --ca F]
                                    [--header 'Name: value'] [--watch-events N] [--user-agent UA]

Prints one JSON object like benchmarks.loadgen's: requests, errors, seconds, req_per_s, bytes, latency percentiles in
ms of complete responses; `--concurrency` is the streams kept in flight. `--watch-events N` instead opens one
streaming GET and reports how fast N newline- or length-framed events arrive (events_per_s). Being pure Python, it
may itself limit req/s; the proxy's CPU per request (measured from the outside) is what it is for.
"""

from __future__ import annotations

import asyncio
import ssl
import sys
import time
import urllib.parse

import h2.config
import h2.connection
import h2.events
import h2.settings

from benchmarks import loadgen

USER_AGENT = "kubectl/v1.37.2 (linux/amd64) kubernetes/bench"
WINDOW = 16 << 20


class _Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: urllib.parse.SplitResult,
                 headers: list[str]) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW})
        self.conn.increment_flow_control_window(WINDOW)
        self.head = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", url.netloc.encode()),
                     (b":path", loadgen.request_target(url).encode()),
                     (b"user-agent", USER_AGENT.encode())]
        for h in headers:
            name, _, value = h.partition(":")
            self.head.append((name.strip().lower().encode(), value.strip().encode()))
        self.waiting: dict[int, asyncio.Future[tuple[int, int]]] = {}
        self.status: dict[int, int] = {}
        self.size: dict[int, int] = {}
        self.on_data = None  # (stream id, bytes) for a watch
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def get(self) -> asyncio.Future[tuple[int, int]]:
        sid = self.conn.get_next_available_stream_id()
        self.conn.send_headers(sid, self.head, end_stream=True)
        self.flush()
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        self.waiting[sid] = fut
        return fut

    async def pump(self) -> None:
        try:
            while data := await self.reader.read(1 << 18):
                for ev in self.conn.receive_data(data):
                    sid = getattr(ev, "stream_id", 0)
                    if isinstance(ev, h2.events.ResponseReceived):
                        self.status[sid] = int(dict(ev.headers)[b":status"])
                    elif isinstance(ev, h2.events.DataReceived):
                        self.size[sid] = self.size.get(sid, 0) + len(ev.data)
                        if ev.flow_controlled_length:
                            self.conn.acknowledge_received_data(ev.flow_controlled_length, sid)
                        if self.on_data is not None:
                            self.on_data(sid, ev.data)
                    elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                        fut = self.waiting.pop(sid, None)
                        if fut is not None and not fut.done():
                            fut.set_result((self.status.pop(sid, 0), self.size.pop(sid, 0)))
                self.flush()
        except (ConnectionError, ssl.SSLError):
            pass
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection closed"))


async def _connect(url_s: str, ctx: ssl.SSLContext, headers: list[str]) -> tuple[_Client, asyncio.Task[None]]:
    url = urllib.parse.urlsplit(url_s)
    ctx.set_alpn_protocols(["h2"])
    reader, writer = await asyncio.open_connection(url.hostname, url.port, ssl=ctx)
    if writer.get_extra_info("ssl_object").selected_alpn_protocol() != "h2":
        raise SystemExit(f"{url_s}: the server did not choose h2 by ALPN")
    client = _Client(reader, writer, url, headers)
    return client, asyncio.get_running_loop().create_task(client.pump())


async def load(url_s: str, concurrency: int, duration: float | None, requests: int | None, ctx: ssl.SSLContext,
               headers: list[str]) -> dict[str, object]:
    client, pump = await _connect(url_s, ctx, headers)
    latencies: list[float] = []
    errors = 0
    total = 0
    statuses: dict[int, int] = {}
    remaining = [requests if requests is not None else 1 << 62]
    start = time.perf_counter()
    deadline = start + duration if duration is not None else float("inf")

    async def worker() -> None:
        nonlocal errors, total
        while remaining[0] > 0 and time.perf_counter() < deadline:
            remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                status, n = await client.get()
            except ConnectionError:
                errors += 1
                return
            latencies.append(time.perf_counter() - t0)
            total += n
            statuses[status] = statuses.get(status, 0) + 1
            if status >= 400 or status == 0:
                errors += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    client.writer.close()
    pump.cancel()
    return loadgen.load_result(latencies, errors, total, statuses, elapsed)


async def watch(url_s: str, events: int, ctx: ssl.SSLContext, headers: list[str]) -> dict[str, object]:
    """One streaming GET on the connection; time from its headers to the arrival of `events` complete events."""
    client, pump = await _connect(url_s, ctx, headers)
    buf = bytearray()
    got = [0, 0]  # events, bytes
    started: list[float] = []
    done = asyncio.get_running_loop().create_future()

    def on_data(sid: int, data: bytes) -> None:
        if not started:
            started.append(time.perf_counter())
        buf.extend(data)
        got[1] += len(data)
        got[0] += loadgen.take_events(buf, protobuf)
        if got[0] >= events and not done.done():
            done.set_result(None)

    protobuf = any("protobuf" in h for h in headers)
    client.on_data = on_data
    end = client.get()
    await asyncio.wait([done, end], return_when=asyncio.FIRST_COMPLETED)
    elapsed = time.perf_counter() - started[0] if started else 0.0
    client.writer.close()
    pump.cancel()
    return loadgen.watch_result(got[0], got[1], elapsed)


def main(argv: list[str] | None = None) -> int:
    global USER_AGENT
    args = loadgen.cli(argv, "python -m benchmarks.h2load", __doc__, USER_AGENT, tls_always=True)
    USER_AGENT = args.user_agent
    return loadgen.run(args, load, watch)


if __name__ == "__main__":
    sys.exit(main())
