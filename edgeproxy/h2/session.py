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
import hpack.exceptions
import hpack.hpack
import hpack.huffman_table

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
_ENCODED_CACHE = 256  # header fields remembered per connection (the dynamic table holds far fewer)
_HUFFMAN_CACHE = 512  # Huffman-coded strings remembered per connection


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


class _Decoder:
    """HPACK decoding of response header blocks: the same table, results and errors as hpack's decoder (which the
    tests compare it with), a third of its CPU. hpack builds a HeaderTuple per field, slices a memoryview per field
    and Huffman-decodes every literal anew; here a block is walked by index, and Huffman-coded strings seen before
    (a Date within its second, a content type, a Content-Length) are remembered (bounded)."""

    __slots__ = ("_decoder", "_huffman", "_reference", "_table")

    def __init__(self, decoder: hpack.hpack.Decoder) -> None:
        self._decoder = decoder
        self._reference = decoder.decode  # for text results (never asked by h2 with header_encoding=None)
        self._table = decoder.header_table
        self._huffman: dict[bytes, bytes] = {}

    def _string(self, data: bytes, i: int) -> tuple[bytes, int]:
        """The string literal at data[i] (RFC 7541 §5.2) and the index after it."""
        first = data[i]
        n = first & 0x7F
        if n == 0x7F:
            n, used = hpack.hpack.decode_integer(memoryview(data)[i:], 7)
        else:
            used = 1
        start = i + used
        end = start + n
        if end > len(data):
            raise hpack.exceptions.HPACKDecodingError("Truncated header block")
        text = data[start:end]
        if first & 0x80:
            plain = self._huffman.get(text)
            if plain is None:
                plain = hpack.huffman_table.decode_huffman(text)
                if len(self._huffman) >= _HUFFMAN_CACHE:
                    self._huffman.clear()
                self._huffman[text] = plain
            text = plain
        return text, end

    def __call__(self, data: bytes, raw: bool = False) -> list[tuple[bytes, bytes]]:
        if not raw:
            return self._reference(data, raw)  # type: ignore[return-value]
        data = bytes(data)
        decoder, table = self._decoder, self._table
        headers: list[tuple[bytes, bytes]] = []
        size, i, n, limit = 0, 0, len(data), decoder.max_header_list_size
        while i < n:
            b = data[i]
            if b & 0x80:  # indexed field
                index = b & 0x7F
                if index == 0x7F:
                    index, used = hpack.hpack.decode_integer(memoryview(data)[i:], 7)
                    i += used
                else:
                    i += 1
                name, value = table.get_by_index(index)
            elif b & 0x40 or not b & 0x20:  # a literal, added to the table (0x40) or not (0x00, 0x10 never)
                insert = bool(b & 0x40)
                mask = 0x3F if insert else 0x0F
                index = b & mask
                if index == mask:
                    index, used = hpack.hpack.decode_integer(memoryview(data)[i:], 6 if insert else 4)
                    i += used
                else:
                    i += 1
                if index:
                    name = table.get_by_index(index)[0]
                else:
                    name, i = self._string(data, i)
                value, i = self._string(data, i)
                if insert:
                    table.add(name, value)
            else:  # a dynamic table size update
                if headers:
                    raise hpack.exceptions.HPACKDecodingError("Table size update not at the start of the block")
                i += decoder._update_encoding_context(memoryview(data)[i:])
                continue
            headers.append((name, value))
            size += 32 + len(name) + len(value)
            if size > limit:
                raise hpack.exceptions.OversizedHeaderListError(
                    f"A header list larger than {limit} has been received")
        decoder._assert_valid_table_size()
        return headers


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

    __slots__ = ("_conn", "conn_window", "goaway", "settings_seen", "stream_window", "streams")

    def __init__(self, *, stream_window: int = STREAM_WINDOW, conn_window: int = CONN_WINDOW) -> None:
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None,
            # Headers come from an already-parsed HTTP/1.1 request, lower-cased and stripped of connection-specific
            # fields by the caller: checking them again per request is pure cost.
            validate_outbound_headers=False, normalize_outbound_headers=False, normalize_inbound_headers=False,
            validate_inbound_headers=False,
        )
        self._conn = h2conn.ClientConnection(config=config)
        self._conn.encoder.encode = _Encoder(self._conn.encoder)  # type: ignore[method-assign]
        self._conn.decoder.decode = _Decoder(self._conn.decoder)  # type: ignore[method-assign]
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

    def start(self) -> bytes:
        """The connection preface and our SETTINGS, with the connection window opened to `conn_window`."""
        return self._conn.preface(self.conn_window)

    # ---- capacity ----
    @property
    def max_streams(self) -> int:
        if not self.settings_seen:
            return DEFAULT_MAX_STREAMS
        return max(0, min(self._conn.remote_settings.max_concurrent_streams, MAX_STREAMS_CAP))

    @property
    def open_streams(self) -> int:
        return len(self.streams)

    def can_open(self) -> bool:
        """A new stream may go on this connection now (no GOAWAY, under the server's stream limit)."""
        return self.goaway is None and len(self.streams) < self.max_streams

    # ---- sending ----
    def open(self, headers: list[tuple[bytes, bytes]], end_stream: bool) -> Stream:
        """Start a request: HEADERS (with END_STREAM when there is no body). Raises SessionError."""
        try:
            stream_id = self._conn.get_next_available_stream_id()
            self._conn.send_headers(stream_id, headers, end_stream=end_stream)
        except h2.exceptions.H2Error as e:
            raise SessionError(f"cannot open a stream: {e!r}") from e
        stream = Stream(stream_id)
        stream.sent_all = end_stream
        self.streams[stream_id] = stream
        return stream

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
            return
        try:
            self._conn.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
        except h2.exceptions.H2Error:
            pass  # already closed on the server's side

    def forget(self, stream: Stream) -> None:
        """A finished stream: no longer counted against the server's stream limit."""
        self.streams.pop(stream.id, None)

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
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.H2Error as e:
            raise SessionError(f"HTTP/2 protocol error from the server: {e!r}") from e
        changes = Changes()
        streams = self.streams
        for ev in events:
            kind = type(ev)
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
        # The connection's window is handed back as bytes arrive, whoever reads them (streams hold their own).
        window = self._conn.inbound_flow_control_window
        if window < self.conn_window - (self.conn_window >> 2):
            self._conn.increment_flow_control_window(self.conn_window - window)
        return changes


def status_of(head: list[tuple[bytes, bytes]]) -> int:
    """The `:status` of a response head. Raises SessionError if it has none or it is not a number."""
    for name, value in head:
        if name == b":status":
            try:
                return int(value)
            except ValueError:
                break
    raise SessionError("response head without a valid :status")
