"""edgeproxy.h2.serversession: the server side of an HTTP/2 connection as pure state, driven by python-hyper's h2
client in memory (no sockets, no event loop)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from edgeproxy.guard import limits
from edgeproxy.h2 import serversession as ss

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1"), (b":path", b"/api/v1/pods")]


class Pair:
    """A client (h2) and our server session, wired back to back."""

    def __init__(self, **kw: object) -> None:
        self.server = ss.ServerSession(**kw)  # type: ignore[arg-type]
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.now = 0.0
        self.to_client(self.server.start())
        self.got: list[object] = []
        self.pump()

    def to_client(self, data: bytes) -> list[h2.events.Event]:
        return self.client.receive_data(data) if data else []

    def pump(self) -> list[h2.events.Event]:
        """Exchange bytes until both sides are quiet; returns the client's events."""
        events: list[h2.events.Event] = []
        while True:
            out = self.client.data_to_send()
            if out:
                self.got += self.server.receive(out, self.now)
            back = self.server.output()
            if not out and not back:
                return events
            events += self.to_client(back)

    def request(self, headers=GET, end: bool = True) -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, headers, end_stream=end)
        return sid


def test_a_request_and_its_answer():
    p = Pair()
    sid = p.request()
    p.pump()
    assert p.got == [ss.Request(sid, GET, True)]
    p.server.send_headers(sid, ss.response_headers(200, [("Content-Type", "application/json"),
                                                           ("Connection", "keep-alive"),
                                                           ("Transfer-Encoding", "chunked")]))
    assert p.server.send_data(sid, b'{"kind":"PodList"}', end=True) == 18
    events = p.pump()
    head = next(e for e in events if isinstance(e, h2.events.ResponseReceived))
    assert head.headers == [(b":status", b"200"), (b"content-type", b"application/json")]  # no hop-by-hop fields
    assert b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived)) == b'{"kind":"PodList"}'
    assert any(isinstance(e, h2.events.StreamEnded) for e in events)
    assert sid not in p.server.open


@pytest.mark.parametrize(("extra", "status"), [
    ([(b"x-big", b"a" * (limits.MAX_FIELD + 1))], 431),
    ([(b"x-%d" % i, b"v") for i in range(limits.MAX_HEADERS + 1)], 431),
    ([], None),
])
def test_check_head_bounds_as_http1(extra, status):
    verdict = ss.check_head(GET + extra)
    if status is None:
        assert isinstance(verdict, ss.Head) and verdict.method == "GET" and verdict.path == "/api/v1/pods"
        assert verdict.authority == "127.0.0.1"
    else:
        assert isinstance(verdict, ss.Refusal) and verdict.status == status


def test_check_head_refusals():
    long_path = [(b":method", b"GET"), (b":path", b"/" + b"a" * limits.MAX_REQUEST_LINE)]
    assert ss.check_head(long_path).status == 414  # type: ignore[union-attr]
    connect = ss.check_head([(b":method", b"CONNECT"), (b":authority", b"x:1")])
    assert isinstance(connect, ss.Refusal) and connect.status == 405 and "HTTP/1.1" in connect.message
    assert ss.check_head([(b":method", b"OPTIONS"), (b":path", b"*")]).status == 400  # type: ignore[union-attr]
    # undecodable bytes are kept, as aiohttp's HTTP/1.1 parser keeps them (surrogates)
    head = ss.check_head([*GET, (b"x-raw", b"\xff")])
    assert isinstance(head, ss.Head) and head.fields == [("x-raw", "\udcff")] and head.raw == [(b"x-raw", b"\xff")]


def test_response_writes_wait_for_the_clients_stream_window_not_the_others():
    p = Pair()
    slow, fast = p.request(), p.request()
    p.pump()
    for sid in (slow, fast):
        p.server.send_headers(sid, ss.response_headers(200, []))
    body = b"x" * 100_000
    sent = p.server.send_data(slow, body)
    assert sent == 65535  # the client's default stream window, then nothing until it hands bytes back
    assert p.server.window(slow) == 0
    events = p.pump()  # the client reads but does not acknowledge: the slow stream's window stays shut
    assert sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived)) == 65535
    assert p.server.send_data(slow, body[sent:]) == 0
    # the other stream is not held by it (the client's connection window is its own business: open it)
    p.client.increment_flow_control_window(1 << 20)
    p.pump()
    assert p.server.send_data(fast, b"y" * 1000, end=True) == 1000
    p.client.increment_flow_control_window(65535, slow)
    p.pump()
    assert p.server.window(slow) > 0
    with pytest.raises(ss.StreamClosed):
        p.server.send_data(fast, b"more")


def test_request_body_window_is_handed_back_only_as_the_handler_reads():
    p = Pair(stream_window=1 << 16)
    sid = p.request([(b":method", b"POST"), *GET[1:]], end=False)
    p.pump()
    p.client.send_data(sid, b"a" * 60_000)
    p.pump()
    bodies = [g for g in p.got if isinstance(g, ss.Body)]
    assert sum(len(b.data) for b in bodies) == 60_000
    assert p.client.local_flow_control_window(sid) == 65536 - 60_000  # nothing read yet: nothing handed back
    p.server.consumed(sid, 60_000)
    p.pump()
    assert p.client.local_flow_control_window(sid) == 65536
    # the connection's window is handed back as bytes arrive, read or not
    assert p.client.local_flow_control_window(sid) <= p.client.outbound_flow_control_window


def test_client_reset_is_reported_and_rapid_resets_end_the_connection():
    p = Pair()
    sid = p.request()
    p.pump()
    p.client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)  # as Go's transport does
    p.pump()
    assert p.got[-1] == ss.Reset(sid, h2.errors.ErrorCodes.CANCEL) and sid not in p.server.open
    with pytest.raises(ss.ConnectionFailed) as failed:
        for _ in range(ss.RESET_BURST + 1):
            sid = p.request()
            p.client.reset_stream(sid)
            p.pump()
    assert failed.value.kind == "rapid_reset"
    events = p.to_client(p.server.output())
    goaway = next(e for e in events if isinstance(e, h2.events.ConnectionTerminated))
    assert goaway.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_resets_spread_over_time_are_fine():
    p = Pair()
    for i in range(ss.RESET_BURST * 3):
        p.now = i / ss.RESET_RATE * 1.5  # slower than the refill
        sid = p.request()
        p.client.reset_stream(sid)
        p.pump()
    assert not p.server.closing


def test_goaway_lets_the_streams_in_flight_finish_and_refuses_new_ones():
    p = Pair()
    sid = p.request()
    p.pump()
    p.server.goaway()
    events = p.pump()
    assert any(isinstance(e, h2.events.ConnectionTerminated) and e.error_code == 0 and e.last_stream_id == sid
               for e in events)
    p.server.send_headers(sid, ss.response_headers(200, []))
    assert p.server.send_data(sid, b"done", end=True) == 4  # still allowed after our GOAWAY


def test_new_streams_after_goaway_are_refused():
    # a client that missed the GOAWAY (it crossed on the wire): REFUSED_STREAM, never handled
    p = Pair()
    p.server.goaway()
    p.server.output()  # lost on the way
    sid = p.request()
    events = p.pump()
    assert not any(isinstance(g, ss.Request) for g in p.got)
    assert any(isinstance(e, h2.events.StreamReset) and e.stream_id == sid
               and e.error_code == h2.errors.ErrorCodes.REFUSED_STREAM for e in events)


def test_garbage_is_a_protocol_error():
    p = Pair()
    with pytest.raises(ss.ConnectionFailed) as failed:
        p.server.receive(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x", 0.0)  # DATA on stream 0
    assert failed.value.kind == "protocol_error" and failed.value.code == h2.errors.ErrorCodes.PROTOCOL_ERROR


def test_static_encoder_blocks_decode_as_sent():
    import hpack

    decoder = hpack.Decoder()
    encoder = ss.StaticEncoder()
    blocks = [
        [(b":status", b"200"), (b"content-type", b"application/json"), (b"x-long", b"v" * 300),
         (b"audit-id", b"0123"), (b"x-" + b"n" * 200, b"")],
        [(b":status", b"404"), (b"content-type", b"application/json"), (b"date", b"Fri, 04 Dec 2026 20:00:00 GMT")],
    ]
    for block in blocks:
        assert decoder.decode(encoder.encode(block), raw=True) == block
    assert len(decoder.header_table.dynamic_entries) == 0  # nothing indexed: the decoder holds no state of ours


def test_a_header_list_over_the_advertised_size_ends_the_connection():
    p = Pair(max_header_list=4096)
    p.request([*GET, (b"x-big", b"a" * 8000)])
    with pytest.raises(ss.ConnectionFailed) as failed:
        p.pump()
    assert failed.value.kind == "calm" and failed.value.code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
