"""edgeproxy.h2.session, the pure layer, against python-hyper's h2 as the server, bytes handed across in memory."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
import hpack.huffman
import hpack.huffman_constants
import hpack.huffman_table
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeproxy.h2 import h2conn, session

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"api"), (b":path", b"/api/v1/pods")]


class Server:
    def __init__(self, client: session.Session, max_streams: int = 100) -> None:
        self.client = client
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.h2.initiate_connection()
        self.events: list = []
        self.pump(client.start())

    def pump(self, from_client: bytes = b"") -> session.Changes:
        """Hand bytes both ways until both sides are quiet; returns the client's last changes."""
        changes = session.Changes()
        while True:
            if from_client:
                self.events += self.h2.receive_data(from_client)
            to_client = self.h2.data_to_send()
            if not to_client:
                return changes
            changes = self.client.receive(to_client)
            from_client = self.client.output()

    def answer(self, stream_id: int) -> None:
        self.h2.send_headers(stream_id, [(b":status", b"200"), (b"content-type", b"application/json")])

    def send_all(self, stream_id: int, data: bytes) -> int:
        """Send as much as the client's windows allow; returns how much went."""
        room = min(self.h2.local_flow_control_window(stream_id), len(data))
        sent = 0
        while sent < room:
            n = min(room - sent, self.h2.max_outbound_frame_size)
            self.h2.send_data(stream_id, data[sent:sent + n])
            sent += n
        return sent


def test_a_stalled_reader_holds_only_its_own_stream():
    client = session.Session(stream_window=1 << 16, conn_window=1 << 20)
    server = Server(client)
    a = client.open(REQUEST, end_stream=True)
    b = client.open(REQUEST, end_stream=True)
    server.pump(client.output())
    server.answer(a.id)
    server.answer(b.id)
    blob = b"x" * (1 << 20)
    assert server.send_all(a.id, blob) == 1 << 16  # the stream's window, and no more
    server.pump()
    assert a.buffered == 1 << 16 and server.h2.local_flow_control_window(a.id) == 0
    # b goes on and on while a is not read: the connection's window is handed back as bytes arrive.
    for _ in range(8):  # 8 MiB through a 1 MiB connection window
        assert server.send_all(b.id, blob) > 0
        server.pump()
        data = b.take()
        client.consumed(b, len(data))
        server.pump(client.output())
    assert a.buffered == 1 << 16  # still bounded
    # a's reader comes back: its window opens again.
    client.consumed(a, len(a.take()))
    server.pump(client.output())
    assert server.h2.local_flow_control_window(a.id) > 0


def test_cancel_sends_rst_stream_and_frees_the_slot():
    client = session.Session()
    server = Server(client)
    a = client.open(REQUEST, end_stream=True)
    server.pump(client.output())
    assert client.open_streams == 1
    client.cancel(a)
    server.pump(client.output())
    assert any(isinstance(e, h2.events.StreamReset) and e.stream_id == a.id for e in server.events)
    assert client.open_streams == 0


def test_stream_limit_from_the_servers_settings():
    client = session.Session()
    assert client.max_streams == session.DEFAULT_MAX_STREAMS  # before the server's SETTINGS
    server = Server(client, max_streams=2)
    assert client.max_streams == 2
    client.open(REQUEST, end_stream=True)
    client.open(REQUEST, end_stream=True)
    server.pump(client.output())
    assert not client.can_open()


def test_goaway_lets_the_streams_in_flight_finish():
    client = session.Session()
    server = Server(client)
    a = client.open(REQUEST, end_stream=True)
    server.pump(client.output())
    server.answer(a.id)
    server.h2.close_connection(last_stream_id=a.id)
    server.h2.state_machine.state = h2.connection.ConnectionState.SERVER_OPEN
    changes = server.pump()
    assert client.goaway == (a.id, 0) and not client.can_open()
    server.h2.send_data(a.id, b"the rest", end_stream=True)  # in the same read as nothing else: still taken
    server.pump()
    assert changes is not None and a.take() == b"the rest" and a.ended


def test_garbage_from_the_server_is_a_session_error():
    client = session.Session()
    client.start()
    with pytest.raises(session.SessionError):
        client.receive(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0


def test_status_of():
    assert session.status_of([(b":status", b"404"), (b"a", b"b")]) == 404
    with pytest.raises(session.SessionError):
        session.status_of([(b"a", b"b")])


def test_request_headers_arrive_exactly_and_repeated_fields_cost_one_byte():
    """Header blocks as the server decodes them, over many requests: paths that change every time, a new header value
    half-way, a token bigger than the whole table, the server shrinking the table; and once warm, a request repeating
    the identity's fields (a 1 KB token among them) costs little more than its path."""
    client = session.Session()
    server = Server(client)
    token = b"Bearer " + b"t" * 1000
    sent = []
    sizes = []
    for i in range(70):
        headers = [*REQUEST[:3], (b":path", f"/api/v1/namespaces/ns-{i}/pods?limit={i}".encode()),
                   (b"accept", b"application/json"), (b"user-agent", b"kubelet/v1.37.2" if i < 50 else b"kubectl"),
                   (b"authorization", token if i != 52 else b"Bearer " + b"x" * 5000)]
        if i % 7 == 0:
            headers.append((b"content-length", str(i * 1000).encode()))
        if i == 55:
            server.h2.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 1200})
            server.pump()
        stream = client.open(headers, end_stream=True)
        out = client.output()
        sizes.append(len(out))
        server.pump(out)
        client.forget(stream)
        sent.append(headers)
    got = [e.headers for e in server.events if isinstance(e, h2.events.RequestReceived)]
    assert got == sent
    # warm, with the same identity: the 1 KB token is not sent again (a HEADERS frame is 9 bytes + the block)
    assert max(sizes[2:50]) < 9 + 60 + 10


_NAMES = st.sampled_from([b":status", b"content-type", b"date", b"audit-id", b"content-length", b"x-kubernetes-pf"])
_FIELDS = st.lists(st.tuples(_NAMES | st.binary(min_size=1, max_size=20), st.binary(max_size=300), st.booleans()),
                   max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_FIELDS, st.booleans(), st.sampled_from([None, 0, 256, 4096])), max_size=12))
def test_response_header_blocks_decode_as_hpack_decodes_them(blocks):
    """The session's decoder against hpack's own, block after block on one table: literals indexed, not indexed and
    never indexed, Huffman or not, the table resized, fields larger than the table."""
    encoder, reference, ours = hpack.Encoder(), hpack.Decoder(), h2conn.Decoder(hpack.Decoder())
    for fields, huffman, table_size in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size
        block = encoder.encode(fields, huffman=huffman)
        assert ours(block, raw=True) == [tuple(h) for h in reference.decode(block, raw=True)]
        assert ours._table.dynamic_entries == reference.header_table.dynamic_entries


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_header_blocks_fail_as_hpack_fails_on_them(data):
    """Bytes from a broken server: the same fields or an error h2 turns into a protocol error (never another one)."""
    try:
        expected = [tuple(h) for h in hpack.Decoder().decode(data, raw=True)]
    except (hpack.HPACKError, IndexError, TypeError):
        expected = None
    try:
        got = h2conn.Decoder(hpack.Decoder())(data, raw=True)
    except (hpack.HPACKError, IndexError, TypeError):
        got = None
    assert got == expected


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=40) | st.binary(max_size=60).map(
    lambda b: hpack.huffman.HuffmanEncoder(hpack.huffman_constants.REQUEST_CODES,
                                           hpack.huffman_constants.REQUEST_CODES_LENGTH).encode(b)))
def test_huffman_strings_decode_as_hpack_decodes_them(data):
    """The byte-at-a-time Huffman decoder against hpack's nibble one: Huffman-coded strings, and any bytes (invalid
    codes, EOS, padding that is too long or not all ones fail alike)."""
    try:
        expected = hpack.huffman_table.decode_huffman(data)
    except hpack.HPACKDecodingError:
        expected = None
    try:
        got = h2conn.decode_huffman(data)
    except hpack.HPACKDecodingError:
        got = None
    assert got == expected
