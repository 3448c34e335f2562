"""httpclient.py: response framing (Content-Length, chunked split anywhere, close-delimited, no body), keep-alive
reuse, a stale pooled connection retried, a body cut short reported, flow control. Bodies are recorded API server
bytes; the framing around them is what an HTTP/1.1 server writes."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from edgeproxy import httpclient
from tests import recorded

pytestmark = pytest.mark.timeout(30)

BODY = recorded.load("pods-edge1.list.json").body  # 207 KB
WATCH = recorded.load("watch.pods-edge1.json").body


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, pos, i = [], 0, 0
    while pos < len(body):
        n = sizes[i % len(sizes)]
        out.append(b"%x\r\n%b\r\n" % (len(body[pos:pos + n]), body[pos:pos + n]))
        pos += n
        i += 1
    return b"".join(out) + b"0\r\n\r\n"


class Server:
    """Answers each request on a connection with the next scripted bytes, written in pieces of `split` bytes."""

    def __init__(self, answers: list[bytes], split: int = 0, close_after: bool = False) -> None:
        self.answers = list(answers)
        self.split = split
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                if b"content-length:" in head.lower():
                    n = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    head += await reader.readexactly(n)
                self.requests.append(head)
                data = self.answers.pop(0)
                step = self.split or len(data) or 1  # b"": no answer at all (a hung server)
                for i in range(0, len(data), step):
                    writer.write(data[i:i + step])
                    await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@contextlib.asynccontextmanager
async def serving(server: Server):
    srv = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    pool = httpclient.Pool()
    try:
        yield pool, port
    finally:
        pool.close()
        srv.close()


async def fetch(pool: httpclient.Pool, port: int, method: str = "GET", body: bytes | None = None,
                retry_stale: bool = True) -> tuple[int, bytes, httpclient.Response]:
    head = httpclient.request_head(method, "/api/v1/pods", f"127.0.0.1:{port}", [("Accept", "application/json")], body)
    resp = await pool.request("127.0.0.1", port, None, None, method, head, body, retry_stale=retry_stale)
    data = b"".join([c async for c in resp.iter_chunks()])
    resp.release()
    return resp.status, data, resp


@pytest.mark.parametrize("split", [0, 1, 7, 4096])
async def test_content_length_and_chunked_any_split(split):
    answers = [b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY),
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(BODY, [1, 5000, 17, 65536]),
               b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(WATCH, [997])]
    if split == 1:  # byte by byte: a shorter body
        answers = answers[:2]
        answers[0] = b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n" + BODY[:2000]
        answers[1] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(BODY[:2000], [3, 700])
    server = Server(answers, split=split)
    async with serving(server) as (pool, port):
        expected = [BODY, BODY, WATCH] if split != 1 else [BODY[:2000], BODY[:2000]]
        for want in expected:
            status, data, _ = await fetch(pool, port)
            assert status == 200 and data == want
    assert server.connections == 1  # kept alive and reused


async def test_close_delimited_head_and_no_body():
    server = Server([b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY], close_after=True)
    async with serving(server) as (pool, port):
        _, data, _ = await fetch(pool, port)
        assert data == BODY
    server = Server([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(BODY),
                     b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n",
                     b"HTTP/1.1 204 No Content\r\n\r\n"])
    async with serving(server) as (pool, port):
        assert (await fetch(pool, port, method="HEAD"))[:2] == (200, b"")
        assert (await fetch(pool, port))[:2] == (304, b"")
        assert (await fetch(pool, port))[:2] == (204, b"")
    assert server.connections == 2  # a connection that answered a HEAD is not reused (see the next test)


async def test_body_bytes_after_a_head_answer_never_reach_the_next_request():
    """Issue 14 D7: a HEAD answer carrying body bytes left them on a pooled connection, and the next client's GET
    failed with "response head too large"."""
    junk = b"x" * 4096
    server = Server([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(junk), junk),
                     b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)])
    async with serving(server) as (pool, port):
        assert (await fetch(pool, port, method="HEAD"))[:2] == (200, b"")
        assert (await fetch(pool, port))[:2] == (200, BODY)


async def test_interim_responses_are_skipped():
    final = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)
    server = Server([b"HTTP/1.1 100 Continue\r\n\r\n" + final], split=3)
    async with serving(server) as (pool, port):
        status, data, _ = await fetch(pool, port, method="POST", body=b"{}")
        assert (status, data) == (200, BODY)


async def test_request_body_framing():
    server = Server([b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"] * 2)
    async with serving(server) as (pool, port):
        status, _, _ = await fetch(pool, port, method="POST", body=b'{"kind":"ConfigMap"}')
        assert status == 201
        assert server.requests[0].endswith(b"Content-Length: 20\r\n\r\n{\"kind\":\"ConfigMap\"}")
        assert server.requests[0].startswith(b"POST /api/v1/pods HTTP/1.1\r\nHost: 127.0.0.1:")
        await fetch(pool, port, method="POST")
        assert b"Content-Length: 0\r\n" in server.requests[1]


async def test_stale_pooled_connection_is_retried_for_idempotent_requests():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)
    server = Server([ok], close_after=True)  # answers once per connection, then closes it
    async with serving(server) as (pool, port):
        await fetch(pool, port)
        server.answers.append(ok)
        _, data, _ = await fetch(pool, port)  # the pooled connection is dead: a fresh one is used
        assert data == BODY
        assert server.connections == 2


async def test_body_cut_short_is_broken():
    server = Server([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY[:5000])],
                    close_after=True)
    async with serving(server) as (pool, port):
        with pytest.raises(httpclient.Broken):
            await fetch(pool, port)


async def test_connect_failed():
    from tests.test_proxy import free_port

    pool = httpclient.Pool(connect_timeout=2)
    with pytest.raises(httpclient.ConnectFailed):
        await pool.request("127.0.0.1", free_port(), None, None, "GET", b"GET / HTTP/1.1\r\n\r\n", None,
                           retry_stale=True)


async def test_slow_reader_pauses_the_server_side():
    big = BODY * 40  # 8 MB, past the high-water mark
    server = Server([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(big), big)])
    async with serving(server) as (pool, port):
        head = httpclient.request_head("GET", "/", "x", [], None)
        resp = await pool.request("127.0.0.1", port, None, None, "GET", head, None, retry_stale=True)
        first = await resp.read()
        async with asyncio.timeout(10):
            while not resp._conn._paused:  # bounded: the buffer fills while nobody reads
                await asyncio.sleep(0.01)
        got = len(first)
        while chunk := await resp.read():
            got += len(chunk)
        assert got == len(big)
        resp.release()


async def test_no_head_by_the_deadline_drops_the_connection():
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(BODY), BODY)
    server = Server([ok, b"", ok])  # the second request, on the kept-alive connection, gets no answer
    async with serving(server) as (pool, port), asyncio.timeout(20):
        await fetch(pool, port)
        head = httpclient.request_head("GET", "/api/v1/pods", "x", [], None)
        deadline = asyncio.get_running_loop().time() + 0.2
        with pytest.raises(httpclient.HeadTimeout):
            await pool.request("127.0.0.1", port, None, None, "GET", head, None, retry_stale=True, deadline=deadline)
        _, data, _ = await fetch(pool, port)  # on a new connection: the silent one was dropped, not pooled
        assert data == BODY and server.connections == 2
        while pool._sweeper is not None:  # the sweeper ends once no request waits with a deadline
            await asyncio.sleep(0.01)


async def test_a_lone_lf_in_a_response_head_is_broken_and_raw_head_is_kept():
    """A header holding a bare LF would split in two for the client downstream: the head is refused. A good head is
    kept as received, for the lane to relay byte for byte."""
    good = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Odd:  spaced \r\nContent-Length: 2"
    server = Server([good + b"\r\n\r\n{}", b"HTTP/1.1 200 OK\r\nX-A: 1\nInjected: yes\r\nContent-Length: 0\r\n\r\n"])
    async with serving(server) as (pool, port):
        status, data, resp = await fetch(pool, port)
        assert (status, data, resp.raw_head, resp.headers["X-Odd"]) == (200, b"{}", good, "spaced")
        with pytest.raises(httpclient.Broken, match="lone LF"):
            await fetch(pool, port)
