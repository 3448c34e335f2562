"""A small HTTP/1.1 load generator, run as its own process so it does not share an event loop with what it measures.

    python -m benchmarks.loadgen URL [--concurrency N] [--duration S | --requests N] [--cert F --key F --ca F]
                                     [--header 'Name: value'] [--watch-events N]
                                     [--user-agent UA]

Prints one JSON object: requests, errors, seconds, req_per_s, bytes, mb_per_s, and latency percentiles in ms (p50,
p90, p99) of complete responses. `--watch-events N` instead opens one streaming GET and reports how fast N newline- or
length-framed events arrive (events_per_s). Keep-alive connections, one request in flight per connection, a minimal
response parser (Content-Length or chunked): lighter than a general client, so the thing measured is the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import struct
import sys
import time
import urllib.parse
from collections.abc import Awaitable, Callable


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer


async def _connect(url: urllib.parse.SplitResult, ctx: ssl.SSLContext | None) -> _Conn:
    port = url.port or (443 if url.scheme == "https" else 80)
    reader, writer = await asyncio.open_connection(url.hostname, port, ssl=ctx, limit=1 << 20)
    return _Conn(reader, writer)


async def _response(reader: asyncio.StreamReader) -> tuple[int, int]:
    """Read one response; (status, body bytes)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    idx = lower.find(b"\r\ncontent-length:")
    if idx >= 0:
        end = lower.index(b"\r\n", idx + 2)
        n = int(lower[idx + 17:end])
        if n:
            await reader.readexactly(n)
        return status, n
    if b"transfer-encoding: chunked" in lower:
        total = 0
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, total
            await reader.readexactly(size + 2)
            total += size
    return status, 0


USER_AGENT = "edgeproxy-loadgen"


def request_target(url: urllib.parse.SplitResult) -> str:
    """The path and query a request for `url` names."""
    return (url.path or "/") + (f"?{url.query}" if url.query else "")


def load_result(latencies: list[float], errors: int, total: int, statuses: dict[int, int],
                elapsed: float) -> dict[str, object]:
    """The JSON object a load run prints (latencies in seconds, any order; percentiles in ms)."""
    latencies.sort()

    def pct(p: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 4) if latencies else None

    return {"requests": len(latencies), "errors": errors, "seconds": round(elapsed, 4),
            "req_per_s": round(len(latencies) / elapsed, 1), "bytes": total,
            "mb_per_s": round(total / elapsed / 1e6, 2), "p50_ms": pct(0.5), "p90_ms": pct(0.9),
            "p99_ms": pct(0.99), "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def take_events(buf: bytearray, protobuf: bool) -> int:
    """Remove the complete events at the head of `buf` (4-byte length-framed protobuf, else newline-ended JSON) and
    return how many there were."""
    if not protobuf:
        n = buf.count(b"\n")
        del buf[:buf.rfind(b"\n") + 1]
        return n
    got = 0
    while len(buf) >= 4:
        (n,) = struct.unpack_from(">I", buf)
        if len(buf) < 4 + n:
            break
        del buf[:4 + n]
        got += 1
    return got


def watch_result(events: int, total: int, elapsed: float) -> dict[str, object]:
    """The JSON object a watch run prints."""
    return {"events": events, "seconds": round(elapsed, 4),
            "events_per_s": round(events / elapsed, 1) if elapsed else None, "bytes": total,
            "mb_per_s": round(total / elapsed / 1e6, 2) if elapsed else None}


def _request_bytes(url: urllib.parse.SplitResult, headers: list[str]) -> bytes:
    lines = [f"GET {request_target(url)} HTTP/1.1", f"Host: {url.netloc}", f"User-Agent: {USER_AGENT}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def load(url_s: str, concurrency: int, duration: float | None, requests: int | None,
               ctx: ssl.SSLContext | None, headers: list[str]) -> dict[str, object]:
    url = urllib.parse.urlsplit(url_s)
    req = _request_bytes(url, headers)
    latencies: list[float] = []
    errors = 0
    total_bytes = 0
    remaining = [requests if requests is not None else 1 << 62]
    statuses: dict[int, int] = {}
    conns = [await _connect(url, ctx) for _ in range(concurrency)]
    start = time.perf_counter()
    deadline = start + duration if duration is not None else float("inf")

    async def worker(conn: _Conn) -> None:
        nonlocal errors, total_bytes
        while remaining[0] > 0 and time.perf_counter() < deadline:
            remaining[0] -= 1
            t0 = time.perf_counter()
            conn.writer.write(req)
            try:
                status, n = await _response(conn.reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                errors += 1
                conn.writer.close()
                new = await _connect(url, ctx)
                conn.reader, conn.writer = new.reader, new.writer
                continue
            latencies.append(time.perf_counter() - t0)
            total_bytes += n
            statuses[status] = statuses.get(status, 0) + 1
            if status >= 400:
                errors += 1

    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - start
    for c in conns:
        c.writer.close()
    return load_result(latencies, errors, total_bytes, statuses, elapsed)


async def watch(url_s: str, events: int, ctx: ssl.SSLContext | None, headers: list[str]) -> dict[str, object]:
    """Open one streaming GET; time from its headers to the arrival of `events` complete events."""
    url = urllib.parse.urlsplit(url_s)
    conn = await _connect(url, ctx)
    conn.writer.write(_request_bytes(url, headers))
    head = await conn.reader.readuntil(b"\r\n\r\n")
    if int(head[9:12]) != 200 or b"transfer-encoding: chunked" not in head.lower():
        conn.writer.close()
        return {"events": 0, "seconds": 0, "events_per_s": None, "error": head.decode("latin-1").split("\r\n")[0]}
    protobuf = b"protobuf" in head.lower()
    start = time.perf_counter()
    buf = bytearray()
    got = 0
    total = 0
    try:
        while got < events:
            size = int((await conn.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                break
            buf += await conn.reader.readexactly(size)
            await conn.reader.readexactly(2)
            total += size
            got += take_events(buf, protobuf)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    elapsed = time.perf_counter() - start
    conn.writer.close()
    return watch_result(got, total, elapsed)


def cli(argv: list[str] | None, prog: str, doc: str, user_agent: str, tls_always: bool) -> argparse.Namespace:
    """The command line both load generators take (loadgen.py, h2load.py); `args.ctx` is the TLS context (None for
    http:// unless `tls_always`)."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("url")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=None)
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--watch-events", type=int, default=None)
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--ca")
    p.add_argument("--user-agent", default=user_agent, help="e.g. kubelet's, for proxies that cache by component")
    args = p.parse_args(argv)
    args.ctx = None
    if tls_always or args.url.startswith("https"):
        args.ctx = ssl.create_default_context(cafile=args.ca)
        if args.cert:
            args.ctx.load_cert_chain(args.cert, args.key)
    if args.duration is None and args.requests is None:
        args.duration = 5.0
    return args


def run(args: argparse.Namespace, load: Callable[..., Awaitable[dict[str, object]]],
        watch: Callable[..., Awaitable[dict[str, object]]]) -> int:
    """Run `watch` or `load` as the parsed command line asks (on uvloop where installed); print the JSON result."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    if args.watch_events:
        result = runner(watch(args.url, args.watch_events, args.ctx, args.header))
    else:
        result = runner(load(args.url, args.concurrency, args.duration, args.requests, args.ctx, args.header))
    json.dump(result, sys.stdout)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    global USER_AGENT
    args = cli(argv, "python -m benchmarks.loadgen", __doc__, USER_AGENT, tls_always=False)
    USER_AGENT = args.user_agent
    return run(args, load, watch)


if __name__ == "__main__":
    sys.exit(main())
