"""The server session's response fast path (HEADERS and DATA written without h2's frame objects) against the same
session with every frame through h2: python-hyper h2 as the client, random exchanges, and both servers must write
the same bytes, keep the same windows and stream states, and refuse the same calls."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeproxy.h2 import serversession as ss

GET = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1"), (b":path", b"/api/v1/pods")]
POST = [(b":method", b"POST"), *GET[1:]]


class Pair:
    def __init__(self) -> None:
        self.fast, self.ref = ss.ServerSession(), ss.ServerSession(fast=False)
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        start = self.ref.start()
        assert self.fast.start() == start
        self.client.receive_data(start)
        self.dead = False
        self.streams: list[int] = []
        self.pump()

    def pump(self) -> None:
        """The client's bytes to both servers, the servers' (equal) answers back to the client, until quiet."""
        while not self.dead:
            data = self.client.data_to_send()
            if data:
                results = []
                for server in (self.fast, self.ref):
                    try:
                        got = server.receive(data, 0.0)
                        results.append([(type(e).__name__, e.stream_id) for e in got])
                    except ss.ConnectionFailed as e:
                        results.append(("failed", e.code))
                assert results[0] == results[1]
                if results[0] and results[0][0] == "failed":
                    self.dead = True
            if not self.same_output() and not data:
                return

    def same_output(self) -> bool:
        out = self.fast.output()
        assert out == self.ref.output()
        if out and not self.dead:
            try:
                for ev in self.client.receive_data(out):
                    if isinstance(ev, h2.events.DataReceived):
                        self.client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            except h2.exceptions.ProtocolError:
                self.dead = True
        return bool(out)

    def both(self, call: str, *args: object) -> None:
        results = []
        for server in (self.fast, self.ref):
            try:
                results.append(getattr(server, call)(*args))
            except ss.StreamClosed:
                results.append("closed")
        assert results[0] == results[1]
        self.same_output()

    def same_state(self) -> None:
        f, r = self.fast._conn, self.ref._conn
        assert f.outbound_flow_control_window == r.outbound_flow_control_window
        assert self.fast.open == self.ref.open
        for sid in self.streams:
            a, b = f.streams.get(sid), r.streams.get(sid)
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert a.state_machine.state == b.state_machine.state
                assert a.state_machine.headers_sent == b.state_machine.headers_sent
                assert a.state_machine.stream_closed_by == b.state_machine.stream_closed_by
                assert a.outbound_flow_control_window == b.outbound_flow_control_window


_BIG = "v" * 40000  # a response head larger than a frame: HEADERS + CONTINUATION
ACTIONS = st.lists(st.tuples(
    st.sampled_from(["get", "get", "post", "head", "head", "head_end", "head_big", "head_100", "data", "data",
                     "data_end", "data_end", "end", "reset", "client_reset", "client_window", "client_settings",
                     "client_frame", "goaway", "body"]),
    st.integers(0, 7), st.integers(0, 200_000)), max_size=30)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACTIONS)
def test_the_response_fast_path_does_what_h2_does(actions):
    p = Pair()
    client = p.client
    for what, pick, size in actions:
        if p.dead:
            break
        live = [sid for sid in p.streams if sid in p.ref.open]
        sid = live[pick % len(live)] if live else (p.streams[pick % len(p.streams)] if p.streams else 1)
        try:
            if what in ("get", "post"):
                new = client.get_next_available_stream_id()
                client.send_headers(new, GET if what == "get" else POST, end_stream=what == "get")
                p.streams.append(new)
            elif what == "body":
                client.send_data(sid, b"b" * min(size % 1000, client.local_flow_control_window(sid)),
                                 end_stream=size % 2 == 0)
            elif what == "client_reset":
                client.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
            elif what == "client_window":
                client.increment_flow_control_window(1 + size, sid if size % 2 else None)
            elif what == "client_settings":
                client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: size,
                                        h2.settings.SettingCodes.MAX_FRAME_SIZE: 16384 + size % 50000})
            elif what == "client_frame":
                client.ping(b"12345678")
            elif what == "head":
                p.both("send_headers", sid, ss.response_headers(200, [("Content-Type", "application/json"),
                                                                      ("Audit-Id", str(size))]))
            elif what == "head_end":
                p.both("send_headers", sid, ss.response_headers(204, []), True)
            elif what == "head_big":
                p.both("send_headers", sid, ss.response_headers(200, [("X-Big", _BIG[:size % 40000])]))
            elif what == "head_100":
                p.both("send_informational", sid, 100)
            elif what in ("data", "data_end"):
                p.both("send_data", sid, memoryview(b"d" * (size % 70000)), what == "data_end")
            elif what == "end":
                p.both("end", sid)
            elif what == "reset":
                p.both("reset", sid)
            elif what == "goaway":
                p.both("goaway")
        except (h2.exceptions.ProtocolError, h2.exceptions.FlowControlError, h2.exceptions.StreamClosedError,
                KeyError, ValueError):
            continue  # the client refused the action itself (its own state): nothing was sent
        p.pump()
        if not p.dead:
            p.same_state()
