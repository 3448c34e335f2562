"""The client side of one HTTP/2 connection as pure state: requests out, response heads and body chunks in, no I/O.

A thin layer over python-hyper's sans-I/O `h2.connection.H2Connection` that adds what the proxy needs and `h2`
leaves to its user:

- Stream state a reader can wait on: the response head, body chunks in arrival order, end or reset.
- Flow control as back-pressure. A stream's window is handed back to the server only as its reader consumes the
  bytes (`consumed`), so a reader that stops (a slow downstream watcher) holds at most STREAM_WINDOW bytes buffered
  here and stops only its own stream. The connection's window is handed back as bytes arrive, whatever the streams'
  readers do: one stalled stream never stalls the others.
- GOAWAY bookkeeping (the streams above the server's last stream id were never processed: safe to send again) and
  PING payloads for the liveness check the shell runs.
- Fast paths for the frames of every request (h2 is pure Python, and its frame objects, event lists and per-request
  walk over every open stream were most of a small GET's CPU): a request's HEADERS (and CONTINUATION) frames are
  built here; DATA and a response's one-frame HEADERS on an open stream of ours are taken here, within the same
  checks h2 makes (stream state, both flow-control windows, Content-Length, frame size), leaving h2's stream states,
  windows and HPACK tables as h2 would. Every other frame (SETTINGS, WINDOW_UPDATE, RST_STREAM, PING, GOAWAY,
  padding, CONTINUATION, priority, anything on a stream not open, anything that breaks a rule) goes to h2 in its
  order. `Session(fast=False)` sends everything through h2: the tests compare both on random exchanges.

The shell (client.py) feeds received bytes to `receive()`, writes `output()` to the socket, and wakes whoever waits on
the streams `receive()` reports. Nothing here knows about sockets, TLS, asyncio or the API server.
"""

from __future__ import annotations

import collections

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hpack.hpack

from edgeproxy.h2 import h2conn

STREAM_WINDOW = 4 << 20  # bytes a stream may have unread here before its server must wait (Go's transport: 4 MiB)
CONN_WINDOW = 16 << 20  # the connection's receive window; refilled as bytes arrive, never held by a slow reader
DEFAULT_MAX_STREAMS = 100  # streams assumed allowed until the server's SETTINGS arrive (as Go's transport assumes)
MAX_STREAMS_CAP = 1000  # never more streams on one connection than this, whatever the server allows
MAX_HEADER_LIST = 1 << 20  # a response head larger than this is refused


# Request fields that change with every request go out as literals "without indexing" naming their static-table entry
# (RFC 7541 §6.2.2): inserted into the dynamic table they would evict the identity's constant fields (a 1 KB token)
# and shift every index, so the constant fields could never be coded once and reused.
_UNINDEXED = {b":path": b"\x04", b"content-length": b"\x0f\x0d"}  # static indices 4 and 28 (4-bit prefix)
# Frame types and flags the fast paths below read and write (RFC 9113 §6).
_FRAME_HEAD = h2conn.FRAME_HEAD
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x4, 0x8, 0x20
_CLIENT_OPEN = h2.connection.ConnectionState.CLIENT_OPEN
_S_OPEN, _S_HALF_CLOSED_LOCAL = h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_LOCAL
_S_CLOSED = h2.stream.StreamState.CLOSED
_ODD = h2.connection.AllowedStreamIDs.ODD
_ENCODED_CACHE = 256  # header fields remembered per connection (the dynamic table holds far fewer)


class _Encoder:
    """HPACK encoding of request header blocks, remembering each field's bytes while the dynamic table stands still.

    A proxy sends the same few fields for every request of one identity (:method, :scheme, :authority, Accept,
    User-Agent, Authorization); once each is in the dynamic table (or the static one) its encoding is one index,
    and as long as nothing is inserted those bytes stay right. hpack's encoder computes them anew per request
    (table searches, integer coding: a quarter of the h2 layer's CPU per request); this keeps them. Any insertion
    or eviction (a new field value) or a table size change forgets them all. No Huffman coding: on our own request
    fields it costs more CPU than the few bytes it saves, and repeated fields are one byte anyway.
    """

    __slots__ = ("_cache", "_encoder", "_entries", "_table")

    def __init__(self, encoder: hpack.hpack.Encoder) -> None:
        self._encoder = encoder
        self._table = encoder.header_table
        self._entries = encoder.header_table.dynamic_entries
        self._cache: dict[tuple[bytes, bytes], bytes] = {}

    def __call__(self, headers: list[tuple[bytes, bytes]], huffman: bool = False) -> bytes:
        table, cache, entries = self._table, self._cache, self._entries
        block: list[bytes] = []
        if table.resized:
            block.append(self._encoder._encode_table_size_change())
            table.resized = False
            cache.clear()
        for header in headers:
            out = cache.get(header) if type(header) is tuple else None
            if out is None:
                name, value = header[0], header[1]
                literal = _UNINDEXED.get(name)
                if literal is not None:
                    n = len(value)
                    block.append(literal + (bytes((n,)) if n < 127 else bytes(hpack.hpack.encode_integer(n, 7)))
                                 + value)
                    continue
                first, length = entries[0] if entries else None, len(entries)
                sensitive = type(header) is not tuple and not getattr(header, "indexable", True)
                out = self._encoder.add((name, value), sensitive, False)
                if (entries[0] if entries else None) is first and len(entries) == length:
                    if type(header) is tuple:
                        if len(cache) >= _ENCODED_CACHE:
                            cache.clear()
                        cache[header] = out
                else:
                    cache.clear()  # indices moved: what was remembered may point elsewhere now
            block.append(out)
        return b"".join(block)


class SessionError(Exception):
    """The server broke the HTTP/2 protocol (or the connection is closed): the connection cannot be used further."""


class Stream:
    """One request's response as it arrives. `head` is the response's header block (lower-case bytes names, with
    `:status`) once it came; `body` holds the unread DATA; `ended` once END_STREAM came; `reset` the error code of an
    RST_STREAM from the server."""

    __slots__ = ("body", "buffered", "ended", "error", "head", "id", "received", "reset", "sent_all", "unacked")

    def __init__(self, stream_id: int) -> None:
        self.id = stream_id
        self.head: list[tuple[bytes, bytes]] | None = None
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0  # bytes in body
        self.ended = False
        self.sent_all = False  # our END_STREAM went: the whole request is out
        self.reset: int | None = None
        self.received = False  # any frame of the response came (a stream with none may be re-sent after GOAWAY)
        self.unacked = 0  # bytes read by the consumer and not yet handed back to the server's window
        self.error: Exception | None = None  # set by the shell: why this stream failed (connection lost, deadline)

    def take(self) -> bytes:
        """All unread body bytes (b"" if none); the caller then reports them with Session.consumed."""
        body = self.body
        if not body:
            return b""
        data = body.popleft() if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        return data


class Changes:
    """What one `receive()` changed: streams to wake, whether send windows opened, a GOAWAY, PING answers."""

    __slots__ = ("goaway", "pings", "streams", "window")

    def __init__(self) -> None:
        self.streams: list[Stream] = []
        self.window = False
        self.goaway: tuple[int, int] | None = None  # (last stream id, error code)
        self.pings: list[bytes] = []


class Session:
    """The client end of one HTTP/2 connection."""

    __slots__ = ("_closing", "_conn", "_fast", "_pending", "_server_max", "conn_window", "goaway", "settings_seen",
                 "stream_window", "streams")

    def __init__(self, *, stream_window: int = STREAM_WINDOW, conn_window: int = CONN_WINDOW,
                 fast: bool = True) -> None:
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None,
            # Headers come from an already-parsed HTTP/1.1 request, lower-cased and stripped of connection-specific
            # fields by the caller: checking them again per request is pure cost.
            validate_outbound_headers=False, normalize_outbound_headers=False, normalize_inbound_headers=False,
            validate_inbound_headers=False,
        )
        self._conn = h2conn.ClientConnection(config=config)
        self._conn.encoder.encode = _Encoder(self._conn.encoder)  # type: ignore[method-assign]
        self._conn.decoder.decode = h2conn.Decoder(self._conn.decoder)  # type: ignore[method-assign]
        self._conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0,  # the server may open none (no push)
        })
        self.stream_window = stream_window
        self.conn_window = conn_window
        self.streams: dict[int, Stream] = {}
        self.goaway: tuple[int, int] | None = None
        self.settings_seen = False
        # The fast paths (on by default; off, every frame goes through h2, the reference the tests compare with):
        # a request's HEADERS built here, and the frames of an established exchange (DATA, and a response's
        # HEADERS in one frame) taken here without h2's frame objects and event lists. Each keeps h2's stream
        # states, flow-control windows and HPACK tables exactly as h2 would leave them; anything else is h2's.
        self._fast = fast
        self._pending = b""  # the start of a frame not yet complete (fast paths only)
        self._closing: set[int] = set()  # streams that may have closed in h2 since the last request went out
        self._server_max = self._conn.remote_settings.max_concurrent_streams  # as of the server's last SETTINGS

    def start(self) -> bytes:
        """The connection preface and our SETTINGS, with the connection window opened to `conn_window`."""
        return self._conn.preface(self.conn_window)

    # ---- capacity ----
    @property
    def max_streams(self) -> int:
        if not self.settings_seen:
            return DEFAULT_MAX_STREAMS
        return max(0, min(self._server_max, MAX_STREAMS_CAP))

    @property
    def open_streams(self) -> int:
        return len(self.streams)

    def can_open(self) -> bool:
        """A new stream may go on this connection now (no GOAWAY, under the server's stream limit)."""
        return self.goaway is None and len(self.streams) < self.max_streams

    # ---- sending ----
    def open(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> Stream:
        """Start a request: HEADERS (with END_STREAM when there is no body). Raises SessionError."""
        conn = self._conn
        try:
            stream_id = conn.get_next_available_stream_id()
            if (self._fast and conn.state_machine.state is _CLIENT_OPEN
                    and len(self.streams) < self._server_max):
                self._open_fast(stream_id, headers, end_stream)
            else:
                conn.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.H2Error as e:
            raise SessionError(f"cannot open a stream: {e!r}") from e
        stream = Stream(stream_id)
        stream.sent_all = end_stream
        self.streams[stream_id] = stream
        return stream

    def _open_fast(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        """h2's send_headers for a new request stream, less its frame objects, header copies and the count of open
        streams it walks every stream for (ours is the bound: every stream h2 counts open is one of ours): the same
        stream state, HPACK state and bytes out."""
        conn = self._conn
        # What h2 does first (counting open streams): drop the closed ones from its table. Only streams with an
        # event since the last request can have closed, so only they are looked at, not every stream.
        closing = self._closing
        if closing:
            streams = conn.streams
            for sid in closing:
                h = streams.get(sid)
                if h is not None and h.state_machine.state is _S_CLOSED:
                    del streams[sid]
                    conn._closed_streams[sid] = h.closed_by
            closing.clear()
        h = conn._begin_new_stream(stream_id, _ODD)
        machine = h.state_machine
        machine.client = True
        machine.headers_sent = True
        machine.state = _S_HALF_CLOSED_LOCAL if end_stream else _S_OPEN
        for name, value in headers:
            if name == b":method":
                h.request_method = value
                break
        block = conn.encoder.encode(headers)
        h2conn.write_headers(conn._data_to_send, block, _END_STREAM if end_stream else 0, stream_id,
                             conn.max_outbound_frame_size)

    def send_window(self, stream: Stream) -> int:
        """Body bytes the server accepts on `stream` now (0: wait for a window update)."""
        try:
            return self._conn.local_flow_control_window(stream.id)
        except h2.exceptions.H2Error:
            return 0

    def send(self, stream: Stream, data: bytes | memoryview, end_stream: bool) -> int:
        """Send as much of `data` as the windows allow (END_STREAM once all of it went); returns bytes sent."""
        conn = self._conn
        sent, total = 0, len(data)
        self._closing.add(stream.id)  # END_STREAM, or an error, may close it
        try:
            while sent < total:
                room = min(conn.local_flow_control_window(stream.id), conn.max_outbound_frame_size, total - sent)
                if room <= 0:
                    return sent
                conn.send_data(stream.id, data[sent:sent + room], end_stream=end_stream and sent + room == total)
                sent += room
            if end_stream and total == 0:
                conn.end_stream(stream.id)
            stream.sent_all = end_stream
        except h2.exceptions.H2Error as e:
            raise SessionError(f"cannot send on stream {stream.id}: {e!r}") from e
        return sent

    def consumed(self, stream: Stream, n: int) -> None:
        """The reader took `n` bytes of `stream`: hand them back to the server's window (in batches of a quarter
        window, so a busy stream costs one WINDOW_UPDATE per megabyte, not one per chunk)."""
        stream.unacked += n
        if stream.unacked >= self.stream_window >> 2 and not stream.ended and stream.reset is None:
            try:
                self._conn.increment_flow_control_window(stream.unacked, stream.id)
            except (h2.exceptions.H2Error, KeyError):
                pass  # the stream closed meanwhile
            stream.unacked = 0

    def cancel(self, stream: Stream) -> None:
        """The reader went away: RST_STREAM (CANCEL) unless the stream is over on both sides, and forget it. (A
        server that answered before taking the whole request body still counts the stream open until then.)"""
        self.streams.pop(stream.id, None)
        if (stream.ended and stream.sent_all) or stream.reset is not None:
            self._prune(stream.id)
            return
        try:
            self._conn.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.H2Error:
            pass  # already closed on the server's side
        self._prune(stream.id)

    def forget(self, stream: Stream) -> None:
        """A finished stream: no longer counted against the server's stream limit."""
        self.streams.pop(stream.id, None)
        self._prune(stream.id)

    def _prune(self, stream_id: int) -> None:
        """h2 drops a closed stream (remembering how it closed) only when it counts open streams, which the fast
        open() no longer asks it to: drop it here as h2 would, or h2's stream table would grow with every request."""
        conn = self._conn
        h = conn.streams.get(stream_id)
        if h is not None and h.state_machine.state is _S_CLOSED:
            del conn.streams[stream_id]
            conn._closed_streams[stream_id] = h.closed_by

    def ping(self, opaque: bytes) -> None:
        self._conn.ping(opaque)

    def close(self) -> None:
        """GOAWAY (NO_ERROR): we are done with this connection."""
        try:
            self._conn.close_connection()
        except h2.exceptions.H2Error:
            pass

    def output(self) -> bytes:
        return self._conn.data_to_send()

    def has_output(self) -> bool:
        """Frames are waiting for output() (h2 keeps them in one buffer)."""
        return bool(self._conn._data_to_send)

    # ---- receiving ----
    def receive(self, data: bytes) -> Changes:
        """Feed bytes from the socket. Raises SessionError on a protocol violation (GOAWAY is then in output())."""
        changes = Changes()
        conn = self._conn
        if not self._fast or conn.incoming_buffer._data:
            self._to_h2(data, changes)
        else:
            self._frames(data, changes)
        # The connection's window is handed back as bytes arrive, whoever reads them (streams hold their own).
        window = conn.inbound_flow_control_window
        if window < self.conn_window - (self.conn_window >> 2):
            conn.increment_flow_control_window(self.conn_window - window)
        return changes

    def _frames(self, data: bytes, changes: Changes) -> None:
        """Walk the complete frames in the bytes received: an established exchange's DATA and response HEADERS are
        taken here (_data, _head), every other frame goes to h2 in order; the start of an incomplete frame waits."""
        buf = self._pending + data if self._pending else data
        n, i, run = len(buf), 0, 0  # frames buf[run:i] are h2's, not yet handed over
        unpack = _FRAME_HEAD.unpack_from
        limit = self._conn.max_inbound_frame_size
        while n - i >= 9:
            high, low, kind, flags, stream_id = unpack(buf, i)
            length = high << 8 | low
            end = i + 9 + length
            if length > limit:  # h2's FRAME_SIZE_ERROR (once the frame is complete, as h2 has it)
                break
            if end > n:
                break
            if kind <= _HEADERS and not flags & _PADDED:
                if run < i:
                    self._to_h2(buf[run:i], changes)
                    run = i
                    limit = self._conn.max_inbound_frame_size
                if (self._data(buf, i + 9, end, flags, stream_id, changes) if kind == _DATA
                        else self._head(buf, i + 9, end, flags, stream_id, changes)):
                    run = end
            i = end
        # An incomplete frame waits here when it may be ours; any other is h2's at once, as h2 checks a frame's
        # header (its size, its stream) before its payload arrives.
        if i < n and (n - i < 9 or (buf[i + 3] <= _HEADERS and buf[i] << 16 | buf[i + 1] << 8 | buf[i + 2] <= limit
                                    and _FRAME_HEAD.unpack_from(buf, i)[4] & 0x7FFFFFFF)):
            self._pending = buf[i:]
            n = i
        else:
            self._pending = b""
        if run < n:
            self._to_h2(buf[run:n], changes)

    def _open_for_frames(self, stream_id: int) -> tuple[Stream, h2.stream.H2Stream] | None:
        """Our stream and h2's, when a frame on it may be taken here: the connection open, no header block being
        gathered, h2's stream open or half-closed by us, and it is ours (not forgotten)."""
        stream = self.streams.get(stream_id)
        if stream is None:
            return None
        conn = self._conn
        h = conn.streams.get(stream_id)
        if (h is None or conn.state_machine.state is not _CLIENT_OPEN or conn.incoming_buffer._headers_buffer
                or (h.state_machine.state is not _S_HALF_CLOSED_LOCAL and h.state_machine.state is not _S_OPEN)):
            return None
        return stream, h

    def _data(self, buf: bytes, start: int, end: int, flags: int, stream_id: int, changes: Changes) -> bool:
        """A DATA frame (not padded) on an open stream of ours whose head came, within both windows and any
        Content-Length: h2's accounting done here (windows consumed, the body length tracked, END_STREAM's state
        change). False: h2 takes it (and its error, if it is one)."""
        pair = self._open_for_frames(stream_id)
        if pair is None:
            return False
        stream, h = pair
        if not h.state_machine.headers_received:
            return False
        length = end - start
        conn_w, stream_w = self._conn._inbound_flow_control_window_manager, h._inbound_window_manager
        if conn_w.current_window_size < length or stream_w.current_window_size < length:
            return False
        expected, actual = h._expected_content_length, h._actual_content_length + length
        if expected is not None and (expected < actual or (flags & _END_STREAM and expected != actual)):
            return False
        conn_w.current_window_size -= length
        stream_w.current_window_size -= length
        h._actual_content_length = actual
        if length:
            stream.body.append(buf[start:end])
            stream.buffered += length
        stream.received = True
        changes.streams.append(stream)
        if flags & _END_STREAM:
            self._closing.add(stream_id)
            machine = h.state_machine
            if machine.state is _S_HALF_CLOSED_LOCAL:
                machine.state = _S_CLOSED
                machine.stream_closed_by = h2.stream.StreamClosedBy.RECV_END_STREAM
            else:
                machine.state = h2.stream.StreamState.HALF_CLOSED_REMOTE
            stream.ended = True
        return True

    def _head(self, buf: bytes, start: int, end: int, flags: int, stream_id: int, changes: Changes) -> bool:
        """A response's HEADERS in one frame (END_HEADERS, no priority) on an open stream of ours: decoded here and
        given to h2's stream as h2's connection would give it. False: h2 takes it."""
        if not flags & _END_HEADERS or flags & _PRIORITY:
            return False
        pair = self._open_for_frames(stream_id)
        if pair is None:
            return False
        conn, (stream, h) = self._conn, pair
        machine = h.state_machine
        try:
            headers = h2.connection._decode_headers(conn.decoder, buf[start:end])
            length = _content_length(headers) if h.request_method != b"HEAD" else 0
            if (machine.headers_received or not headers or headers[0][0] != b":status" or headers[0][1][:1] == b"1"
                    or length == -1):
                # trailers, an informational (1xx) head, pseudo-fields out of order, a bad Content-Length: h2's
                _, events = h.receive_headers(headers, bool(flags & _END_STREAM), None)
                self._events(events, changes)
                return True
        except h2.exceptions.ProtocolError as e:
            conn._terminate_connection(e.error_code)
            raise SessionError(f"HTTP/2 protocol error from the server: {e!r}") from e
        # A final response's head: what h2's stream does with it (receive_headers), less its event objects.
        machine.headers_received = True
        h._expected_content_length = length
        stream.head = headers
        stream.received = True
        changes.streams.append(stream)
        if flags & _END_STREAM:
            self._closing.add(stream_id)
            stream.ended = True
            if machine.state is _S_HALF_CLOSED_LOCAL:
                machine.state = _S_CLOSED
                machine.stream_closed_by = h2.stream.StreamClosedBy.RECV_END_STREAM
            else:
                machine.state = h2.stream.StreamState.HALF_CLOSED_REMOTE
        return True

    def _to_h2(self, data: bytes, changes: Changes) -> None:
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.H2Error as e:
            raise SessionError(f"HTTP/2 protocol error from the server: {e!r}") from e
        self._events(events, changes)

    def _events(self, events: list[h2.events.Event], changes: Changes) -> None:
        streams, closing = self.streams, self._closing
        for ev in events:
            kind = type(ev)
            if kind in _CLOSING_EVENTS:
                closing.add(ev.stream_id)
            if kind is h2.events.DataReceived:
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.body.append(ev.data)
                    stream.buffered += len(ev.data)
                    stream.unacked += ev.flow_controlled_length - len(ev.data)  # padding: never read, hand it back
                    stream.received = True
                    changes.streams.append(stream)
                    if ev.stream_ended is not None:
                        stream.ended = True
            elif kind is h2.events.ResponseReceived:
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.head = ev.headers
                    stream.received = True
                    if ev.stream_ended is not None:
                        stream.ended = True
                    changes.streams.append(stream)
            elif kind is h2.events.StreamEnded:
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.ended = True
                    changes.streams.append(stream)
            elif kind is h2.events.StreamReset:
                stream = streams.get(ev.stream_id)
                if stream is not None:
                    stream.reset = int(ev.error_code or 0)
                    changes.streams.append(stream)
            elif kind is h2.events.WindowUpdated:
                changes.window = True
            elif kind is h2.events.RemoteSettingsChanged:
                self.settings_seen = True
                self._server_max = self._conn.remote_settings.max_concurrent_streams
                changes.window = True
            elif kind is h2.events.PingAckReceived:
                changes.pings.append(ev.ping_data)
            elif kind is h2.events.ConnectionTerminated:
                self.goaway = changes.goaway = (int(ev.last_stream_id or 0), int(ev.error_code or 0))
            elif kind is h2.events.TrailersReceived:
                stream = streams.get(ev.stream_id)
                if stream is not None and ev.stream_ended is not None:
                    stream.ended = True
                    changes.streams.append(stream)
            # InformationalResponseReceived (1xx), PingReceived (h2 answers it), SettingsAcknowledged and the rest
            # need nothing from us.


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The Content-Length of a response head as h2 takes it (None: none; -1: not digits, or two that differ)."""
    length = None
    for name, value in headers:
        if name == b"content-length":
            if not value.isdigit():
                return -1
            n = int(value, 10)
            if length is not None and n != length:
                return -1
            length = n
    return length


# events after which h2 may have closed the stream
_CLOSING_EVENTS = frozenset({h2.events.DataReceived, h2.events.ResponseReceived, h2.events.StreamEnded,
                             h2.events.StreamReset, h2.events.TrailersReceived})


def status_of(head: list[tuple[bytes, bytes]]) -> int:
    """The `:status` of a response head. Raises SessionError if it has none or it is not a number."""
    for name, value in head:
        if name == b":status":
            try:
                return int(value)
            except ValueError:
                break
    raise SessionError("response head without a valid :status")
