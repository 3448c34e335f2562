"""The session's fast paths (a request's HEADERS built by the session, DATA and response HEADERS taken without h2's
frame objects) against the same session with every frame through h2: python-hyper h2 as the server, random
exchanges and byte boundaries, and both clients must send the same bytes, see the same streams and windows, and
fail on the same broken frames (padding, CONTINUATION, RST_STREAM, exhausted windows, bad lengths)."""

from __future__ import annotations

import itertools

import h2.config
import h2.connection
import h2.errors
import h2.settings
import hyperframe.frame
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeproxy.h2 import session

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"api"), (b":path", b"/")]


def _server(max_streams: int = 100) -> h2.connection.H2Connection:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None,
                                                                  validate_outbound_headers=False))
    server.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
    server.initiate_connection()
    return server


class Pair:
    """A fast session and a reference one (fast=False) fed the same bytes; the reference talks to the server."""

    def __init__(self, stream_window: int = 1 << 16, conn_window: int = 1 << 18) -> None:
        kw = {"stream_window": stream_window, "conn_window": conn_window}
        self.fast, self.ref = session.Session(**kw), session.Session(fast=False, **kw)
        self.server = _server()
        self.failed: str | None = None
        start = self.ref.start()
        assert self.fast.start() == start
        self.server.receive_data(start)
        self.deliver([])
        self.streams: list[tuple[session.Stream, session.Stream]] = []

    def deliver(self, cuts: list[int]) -> None:
        """The server's pending bytes to both clients, cut at `cuts`; their answers back to the server."""
        while self.failed is None:
            data = self.server.data_to_send()
            if not data:
                return
            points = sorted({c % len(data) for c in cuts} | {0, len(data)})
            for a, b in itertools.pairwise(points):
                results = []
                for client in (self.fast, self.ref):
                    try:
                        changes = client.receive(data[a:b])
                        results.append(("ok", sorted({s.id for s in changes.streams}), changes.window,
                                        changes.goaway, changes.pings))
                    except session.SessionError:
                        results.append(("error",))
                assert results[0] == results[1]
                if results[0][0] == "error":
                    # Both end the connection with a GOAWAY. Its code may differ for a frame on a stream h2 already
                    # closed: h2 drops closed streams from its table only when it counts open ones (at each request
                    # it sends; the fast open() does not ask it to), and judges such a frame by whether the stream
                    # is still in its table (STREAM_CLOSED) or not (PROTOCOL_ERROR).
                    goaways = [_last_frame(client.output()) for client in (self.fast, self.ref)]
                    assert goaways[0][0] == goaways[1][0] == 0x7
                    self.failed = "error"
                    return
                self.same_output()

    def same_output(self) -> None:
        out = self.fast.output()
        assert out == self.ref.output()
        if out and self.failed is None:
            try:
                self.server.receive_data(out)
            except h2.exceptions.ProtocolError:
                self.failed = "server"

    def same_state(self) -> None:
        f, r = self.fast, self.ref
        assert f._conn.inbound_flow_control_window == r._conn.inbound_flow_control_window
        assert f._conn.outbound_flow_control_window == r._conn.outbound_flow_control_window
        assert f.goaway == r.goaway and f.settings_seen == r.settings_seen and f.open_streams == r.open_streams
        assert f._conn.highest_outbound_stream_id == r._conn.highest_outbound_stream_id
        assert f._conn.decoder.header_table.dynamic_entries == r._conn.decoder.header_table.dynamic_entries
        for a, b in self.streams:
            # (h2 hands an empty DATA frame over as b"", the fast path not at all: the same bytes to read)
            assert (a.head, a.ended, a.reset, a.received, a.buffered, a.unacked, b"".join(a.body)) == \
                   (b.head, b.ended, b.reset, b.received, b.buffered, b.unacked, b"".join(b.body))
            ha, hb = f._conn.streams.get(a.id), r._conn.streams.get(b.id)
            if ha is not None and hb is not None:
                assert ha.state_machine.state == hb.state_machine.state
                assert ha._inbound_window_manager.current_window_size == \
                       hb._inbound_window_manager.current_window_size
                assert ha._actual_content_length == hb._actual_content_length
            assert f._conn._stream_closed_by(a.id) == r._conn._stream_closed_by(b.id)


def _last_frame(data: bytes) -> tuple[int, bytes]:
    """(type, payload) of the last frame in `data`."""
    i, last = 0, (-1, b"")
    while i + 9 <= len(data):
        length = int.from_bytes(data[i:i + 3], "big")
        last = (data[i + 3], data[i + 9:i + 9 + length])
        i += 9 + length
    return last


def _raw(frame: hyperframe.frame.Frame) -> bytes:
    return frame.serialize()


_BIG = b"v" * 20000  # a header field larger than a frame: HEADERS + CONTINUATION
ACTIONS = st.lists(st.tuples(
    st.sampled_from(["open", "open", "open", "open_body", "open_big", "open_head", "head_cl2", "head", "head", "head",
                     "head_cl", "head_big", "head_1xx", "head_prio", "data", "data", "data", "data", "data", "data",
                     "data_end", "data_end", "data_end", "data_pad", "data_over", "data_raw_nohead", "data_unknown",
                     "trailers", "reset", "server_window", "consume", "cancel", "forget", "send", "ping", "settings",
                     "goaway", "garbage", "head_pad_raw", "cl_mismatch"]),
    st.integers(0, 7), st.integers(0, 70000), st.lists(st.integers(0, 1 << 20), max_size=3)), max_size=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACTIONS)
def test_the_fast_paths_do_what_h2_does(actions):
    p = Pair()
    server = p.server
    for what, pick, size, cuts in actions:
        if p.failed:
            break
        live = [(a, b) for a, b in p.streams if a.id in p.ref.streams]
        pair = live[pick % len(live)] if live else None
        sid = pair[1].id if pair else 1
        try:
            if what.startswith("open"):
                if not p.ref.can_open():
                    continue
                method = {"open": b"GET", "open_head": b"HEAD"}.get(what, b"POST")
                headers = [(b":method", method), (b":scheme", b"https"),
                           (b":authority", b"api"), (b":path", f"/p/{size}".encode()), (b"accept", b"*/*")]
                if what == "open_big":
                    headers.append((b"x-big", _BIG))
                end = what != "open_body"
                p.streams.append((p.fast.open(headers, end), p.ref.open(headers, end)))
                p.same_output()
                continue
            if pair is None:
                continue
            a, b = pair
            if what == "head":
                server.send_headers(sid, [(b":status", b"200"), (b"audit-id", str(size).encode())],
                                    end_stream=size % 5 == 0)
            elif what == "head_cl":
                server.send_headers(sid, [(b":status", b"200"), (b"content-length", str(size % 100).encode())])
            elif what == "head_cl2":  # two Content-Lengths that differ, or one that is not a number
                server.send_headers(sid, [(b":status", b"200"), (b"content-length", b"5"),
                                          (b"content-length", b"6" if size % 2 else b"x")])
            elif what == "head_big":
                server.send_headers(sid, [(b":status", b"200"), (b"x-big", _BIG)])
            elif what == "head_1xx":
                server.send_headers(sid, [(b":status", b"100")])
            elif what == "head_prio":  # a server may not prioritise, but may send the flag
                f = hyperframe.frame.HeadersFrame(sid)
                f.data = server.encoder.encode([(b":status", b"204")])
                f.flags.add("END_HEADERS")
                f.flags.add("PRIORITY")
                f.depends_on, f.stream_weight = 0, 15
                server._data_to_send += _raw(f)
            elif what == "head_pad_raw":
                f = hyperframe.frame.HeadersFrame(sid)
                f.data = server.encoder.encode([(b":status", b"200")])
                f.flags.add("END_HEADERS")
                f.flags.add("PADDED")
                f.pad_length = size % 20
                server._data_to_send += _raw(f)
            elif what in ("data", "data_end", "data_pad"):
                if sid in server.streams and not server.streams[sid].state_machine.headers_sent:
                    server.send_headers(sid, [(b":status", b"200")])  # a body after a head (see data_raw_nohead)
                window = min(server.local_flow_control_window(sid), server.max_outbound_frame_size)
                n = min(size, window - (size % 20 + 1 if what == "data_pad" else 0))
                if n < 0:
                    continue
                server.send_data(sid, b"d" * n, end_stream=what == "data_end",
                                 pad_length=size % 20 if what == "data_pad" else None)
            elif what == "data_over":  # past the windows: the client's FLOW_CONTROL_ERROR
                f = hyperframe.frame.DataFrame(sid, b"o" * min(size, 16384))
                server._data_to_send += _raw(f)
            elif what == "data_raw_nohead":
                f = hyperframe.frame.DataFrame(sid, b"x" * (size % 50))
                server._data_to_send += _raw(f)
            elif what == "data_unknown":
                f = hyperframe.frame.DataFrame(sid + 2 * (1 + pick) * 1000, b"x")
                server._data_to_send += _raw(f)
            elif what == "cl_mismatch":
                f = hyperframe.frame.DataFrame(sid, b"c" * (size % 300))
                f.flags.add("END_STREAM")
                server._data_to_send += _raw(f)
            elif what == "trailers":
                server.send_headers(sid, [(b"grpc-status", b"0")], end_stream=size % 2 == 0)
            elif what == "reset":
                server.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            elif what == "server_window":
                server.increment_flow_control_window(1 + size, sid if size % 2 else None)
            elif what == "consume":
                p.fast.consumed(a, len(a.take()))
                p.ref.consumed(b, len(b.take()))
                p.same_output()
            elif what == "cancel":
                p.fast.cancel(a)
                p.ref.cancel(b)
                p.same_output()
            elif what == "forget":
                p.fast.forget(a)
                p.ref.forget(b)
            elif what == "send":
                results = []
                for client, stream in ((p.fast, a), (p.ref, b)):
                    try:
                        results.append(client.send(stream, b"s" * (size % 40000), end_stream=size % 2 == 0))
                    except session.SessionError:
                        results.append("error")
                assert results[0] == results[1]
                p.same_output()
            elif what == "ping":
                server.ping(size.to_bytes(8, "big"))
            elif what == "settings":
                server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: size,
                                        h2.settings.SettingCodes.HEADER_TABLE_SIZE: size % 8192})
            elif what == "goaway":
                server.close_connection(last_stream_id=sid)
                server.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
            elif what == "garbage":
                server._data_to_send += bytes([0, 0, 3, pick % 10, 0xFF, 0, 0, 0, sid]) + b"xyz"
        except (h2.exceptions.ProtocolError, h2.exceptions.FlowControlError, session.SessionError, KeyError):
            continue  # the server side refused the action (its own state): nothing was sent
        p.deliver(cuts)
        if not p.failed:
            p.same_state()


def test_oversized_frame_and_bytes_one_at_a_time():
    """A frame announced larger than the client's limit is h2's FRAME_SIZE_ERROR, however it is cut; a response fed
    one byte at a time arrives whole."""
    for feed in (1, 7, 10_000):
        fast, ref = session.Session(), session.Session(fast=False)
        server = _server()
        server.receive_data(fast.start())
        ref.start()
        data = server.data_to_send()
        for client in (fast, ref):
            client.receive(data)
        out = fast.output()
        assert out == ref.output()
        server.receive_data(out)
        a, b = fast.open(GET, True), ref.open(GET, True)
        out = fast.output()
        assert out == ref.output()
        server.receive_data(out)
        server.send_headers(a.id, [(b":status", b"200")])
        server.send_data(a.id, b"x" * 1000, end_stream=True)
        data = server.data_to_send()
        for i in range(0, len(data), feed):
            fast.receive(data[i:i + feed])
            ref.receive(data[i:i + feed])
        assert a.head == b.head == [(b":status", b"200")] and a.take() == b.take() == b"x" * 1000
        assert a.ended and b.ended
        big = bytes([0x01, 0x00, 0x00, 0, 0, 0, 0, 0, a.id]) + b"z" * 100  # 64 KiB announced, 16 KiB allowed
        for client in (fast, ref):
            with pytest.raises(session.SessionError):
                client.receive(big + b"z" * (1 << 16))
        assert fast.output() == ref.output()  # GOAWAY FRAME_SIZE_ERROR from both


def test_closed_streams_are_dropped_from_h2s_table():
    """The fast open() never asks h2 to count open streams (which is when h2 drops closed ones): the session drops
    them itself, so h2's table holds only live streams after thousands of requests."""
    client = session.Session()
    server = _server()
    server.receive_data(client.start())
    client.receive(server.data_to_send())
    server.receive_data(client.output())
    for _ in range(2000):
        stream = client.open(GET, True)
        server.receive_data(client.output())
        server.send_headers(stream.id, [(b":status", b"200")], end_stream=True)
        client.receive(server.data_to_send())
        assert stream.ended
        client.forget(stream)
    assert len(client._conn.streams) == 0
    assert client._conn._closed_streams[stream.id] is not None
