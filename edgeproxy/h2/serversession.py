"""The server side of one HTTP/2 connection as pure state: request heads and bodies in, responses out, no I/O.

A thin layer over python-hyper's sans-I/O `h2.connection.H2Connection` (client_side=False) adding what the proxy's
HTTPS listener needs and `h2` leaves to its user:

- Bounds as HTTP/2 settings and checks, matching the HTTP/1.1 listener's (guard/limits.py): at most MAX_STREAMS
  concurrent streams (Go's net/http server: 250), a header list of at most MAX_HEADER_LIST bytes (the HTTP/1.1 head's
  bound plus HPACK's 32 bytes per field; past it `h2` ends the connection with ENHANCE_YOUR_CALM), and per request
  `check_head`: a :path over the request-line bound is 414, a field over 64 KiB or more than 128 fields is 431.
- Flow control as back-pressure on request bodies: a stream's window is handed back only as its handler reads
  (`consumed`), so a body nobody reads holds at most STREAM_WINDOW bytes here; the connection's window is handed back
  as bytes arrive, so one unread body never stalls the other streams. Responses go out as DATA frames no larger
  than the client's windows allow (`send_data` returns what was taken; the rest waits for `window()` to open).
- Rapid reset (CVE-2023-44487): streams the client opens and resets at once cost the server their handlers while
  never counting against the stream limit. Each client RST_STREAM spends a token of a bucket (RESET_BURST, refilled
  at RESET_RATE a second); an empty bucket ends the connection with GOAWAY ENHANCE_YOUR_CALM.
- No CONNECT: exec, attach and port-forward reach the API server as HTTP/1.1 upgrades (client-go negotiates
  HTTP/1.1 for them); `check_head` answers an h2 CONNECT 405 with a message saying so.
- CPU: request heads are decoded by h2conn.Decoder, and a final response's HEADERS and DATA frames are written here
  rather than by h2 (its frame objects were two thirds of a small response's sending), keeping h2's stream states
  and send windows as h2 keeps them; `ServerSession(fast=False)` writes everything through h2 (the tests compare).

The shell (server.py) feeds received bytes to `receive()` with the time, writes `output()` to the socket, and runs a
handler per `Request`. Nothing here knows about sockets, TLS, asyncio or aiohttp.
"""

from __future__ import annotations

import dataclasses

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import h2.stream
import hpack.hpack
import hpack.table

from edgeproxy.guard import limits
from edgeproxy.h2 import h2conn

MAX_STREAMS = 250  # concurrent streams a client may open (Go's http2.Server default)
MAX_HEADER_LIST = limits.MAX_HEAD + 32 * limits.MAX_HEADERS  # RFC 9113 §6.5.2: name + value + 32 per field
STREAM_WINDOW = 1 << 20  # request body bytes buffered per stream before the client must wait (Go's server: 1 MiB)
CONN_WINDOW = 4 << 20  # the connection's receive window, handed back as bytes arrive
MAX_FRAME = 64 << 10  # frames we accept; bounds h2's CONTINUATION backlog (64 frames) to 4 MiB of header block
RESET_BURST = 200  # client RST_STREAMs taken at once ...
RESET_RATE = 50.0  # ... and per second after that, before GOAWAY ENHANCE_YOUR_CALM

# The frames the response fast path writes (RFC 9113 §6)
_FRAME_HEAD = h2conn.FRAME_HEAD
_DATA, _HEADERS = 0x0, 0x1
_END_STREAM, _END_HEADERS = 0x1, 0x4
_SERVER_OPEN = h2.connection.ConnectionState.SERVER_OPEN
_S_OPEN, _S_HALF_CLOSED_REMOTE = h2.stream.StreamState.OPEN, h2.stream.StreamState.HALF_CLOSED_REMOTE
_S_HALF_CLOSED_LOCAL, _S_CLOSED = h2.stream.StreamState.HALF_CLOSED_LOCAL, h2.stream.StreamState.CLOSED
_SENT_END = h2.stream.StreamClosedBy.SEND_END_STREAM

# RFC 9113 §8.2.2: connection-specific fields must not be sent over HTTP/2.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"})


class StreamClosed(Exception):
    """The stream cannot be answered any more: the client reset it, or its answer ended, or the connection went."""


class ConnectionFailed(Exception):
    """The client broke the protocol (or spent its reset budget): GOAWAY is in output(); close after writing it.
    `code` is the HTTP/2 error code sent, `kind` a bounded metric label."""

    def __init__(self, message: str, code: int, kind: str) -> None:
        super().__init__(message)
        self.code = code
        self.kind = kind


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    """A stream's request head came in: `headers` as sent (lower-case bytes names, pseudo-headers first); `ended`
    when it has no body."""

    stream_id: int
    headers: list[tuple[bytes, bytes]]
    ended: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Body:
    """Request body bytes of a stream; `ended` when they are its last."""

    stream_id: int
    data: bytes
    ended: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Reset:
    """The client reset a stream (it went away from that request): `code` its error code."""

    stream_id: int
    code: int


@dataclasses.dataclass(frozen=True, slots=True)
class Head:
    """A request head's parts the shell needs: method, :path, :authority, the other fields as (name, value) str
    pairs (UTF-8, undecodable bytes kept as surrogates, as aiohttp's HTTP/1.1 parser gives them) and their raw
    bytes."""

    method: str
    path: str
    authority: str
    fields: list[tuple[str, str]]
    raw: list[tuple[bytes, bytes]]


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A request the proxy answers itself: `status`, a Status `reason` and `message`."""

    status: int
    reason: str
    message: str


def _text(b: bytes) -> str:
    return b.decode("utf-8", "surrogateescape")


def check_head(headers: list[tuple[bytes, bytes]], bounds: limits.Limits | None = None) -> Head | Refusal:
    """The request head of a stream, or why the proxy refuses it (the same bounds as the HTTP/1.1 listener's)."""
    bounds = bounds or limits.Limits()
    method = path = authority = b""
    fields: list[tuple[str, str]] = []
    raw: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            continue
        if len(value) > bounds.max_field or len(name) > bounds.max_field:
            return Refusal(431, "RequestHeaderFieldsTooLarge",
                           f"the header field {_text(name[:64])!r} is over {bounds.max_field} bytes")
        fields.append((_text(name), _text(value)))
        raw.append((name, value))
    if len(fields) > bounds.max_headers:
        return Refusal(431, "RequestHeaderFieldsTooLarge",
                       f"{len(fields)} header fields: more than {bounds.max_headers}")
    if method == b"CONNECT":
        return Refusal(405, "MethodNotAllowed", "CONNECT over HTTP/2 is not served: exec, attach and port-forward "
                                                "go over HTTP/1.1 upgrades (client-go negotiates HTTP/1.1 for them)")
    if len(path) > bounds.max_request_line:
        return Refusal(414, "RequestURITooLong", f"the request path is over {bounds.max_request_line} bytes")
    if not path.startswith(b"/"):
        return Refusal(400, "BadRequest", "the request :path must start with /")
    return Head(_text(method), _text(path), _text(authority), fields, raw)


def response_headers(status: int, headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """An HTTP/2 response header block: :status, then the fields lower-cased, connection-specific ones dropped."""
    out = [(b":status", str(status).encode())]
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            continue
        out.append((lower.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape")))
    return out


def _integer(n: int, bits: int, flags: int) -> bytes:
    """An HPACK integer with a `bits`-bit prefix (RFC 7541 §5.1)."""
    limit = (1 << bits) - 1
    if n < limit:
        return bytes((flags | n,))
    out = bytearray((flags | limit,))
    n -= limit
    while n >= 128:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_STATIC_NAMES: dict[bytes, int] = {}
for _i, (_name, _) in enumerate(hpack.table.HeaderTable.STATIC_TABLE, 1):
    _STATIC_NAMES.setdefault(_name, _i)
_MEMO: dict[tuple[bytes, bytes], bytes] = {}
_MEMO_MAX = 4096


class StaticEncoder:
    """HPACK (RFC 7541) for response heads without a dynamic table: every field a literal without indexing (§6.2.2),
    its name from the static table when there. The first block begins with a dynamic table size update to 0 (§6.3),
    so the client's decoder keeps no state of ours and an encoded field is the same bytes on every connection: they
    are memoized (content-type, cache-control, audit ids, a Date a second). hpack's own encoder searched and grew the
    dynamic table in pure Python for every field, a third of a small response's CPU; loopback does not need the
    bytes it saves. h2 sets `header_table_size` when the client changes its table size; nothing here uses one."""

    __slots__ = ("_started", "header_table_size")

    def __init__(self) -> None:
        self._started = False
        self.header_table_size = 4096

    def encode(self, headers: object, huffman: bool = True) -> bytes:
        parts = [] if self._started else [b"\x20"]
        self._started = True
        memo = _MEMO
        for name, value in headers:  # type: ignore[attr-defined]
            key = (name, value)
            field = memo.get(key)
            if field is None:
                index = _STATIC_NAMES.get(name)
                if index is not None:
                    field = _integer(index, 4, 0x00) + _integer(len(value), 7, 0x00) + value
                else:
                    field = b"\x00" + _integer(len(name), 7, 0x00) + name + _integer(len(value), 7, 0x00) + value
                if len(value) <= 256:
                    if len(memo) >= _MEMO_MAX:
                        memo.clear()
                    memo[key] = field
            parts.append(field)
        return b"".join(parts)


class ServerSession:
    """One client connection. Feed `receive(data, now)`; write `output()`; answer each Request with `send_headers`,
    `send_data` (as far as `window()` allows) and `end`, or `reset`."""

    __slots__ = ("_conn", "_fast", "_reset_tokens", "_reset_when", "closing", "conn_window", "goaway_received",
                 "max_streams", "open", "stream_window", "unacked", "window_opened")

    def __init__(self, *, max_streams: int = MAX_STREAMS, stream_window: int = STREAM_WINDOW,
                 conn_window: int = CONN_WINDOW, max_header_list: int = MAX_HEADER_LIST, fast: bool = True) -> None:
        config = h2.config.H2Configuration(
            client_side=False, header_encoding=None,
            # inbound fields are checked (a hostile client); outbound ones come from response_headers(), already
            # lower-case and without connection-specific fields
            validate_inbound_headers=True, normalize_inbound_headers=True,
            validate_outbound_headers=False, normalize_outbound_headers=False)
        self._conn = h2conn.Connection(config=config)
        self._conn.encoder = StaticEncoder()  # type: ignore[assignment]
        self._conn.decoder.decode = h2conn.Decoder(self._conn.decoder)  # type: ignore[method-assign]
        self._conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: max_header_list,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
        })
        # Settings given as initial values count as acknowledged already, so h2 never applies them itself.
        self._conn.decoder.max_header_list_size = max_header_list
        self._conn.max_inbound_frame_size = MAX_FRAME
        self.max_streams = max_streams
        self.stream_window = stream_window
        self.conn_window = conn_window
        self.window_opened = False  # a WINDOW_UPDATE or SETTINGS came: writers waiting for a window may go on
        self.open: set[int] = set()  # streams whose request came and whose answer is not over
        self.unacked: dict[int, int] = {}  # per stream, body bytes read by its handler not yet handed back
        self.closing = False  # GOAWAY sent: no new streams
        self.goaway_received = False
        self._reset_tokens = float(RESET_BURST)
        self._reset_when: float | None = None
        # Responses written here (on): a final response's HEADERS and its DATA frames on an open stream go out
        # without h2's frame objects, with h2's stream states and windows kept as h2 keeps them; anything else (a
        # 1xx head, a stream not open, the connection closing) is h2's. Off: all through h2 (the tests' reference).
        self._fast = fast

    def start(self) -> bytes:
        """Our SETTINGS (the server's preface), with the connection window opened to `conn_window`."""
        return self._conn.preface(self.conn_window)

    def output(self) -> bytes:
        return self._conn.data_to_send()

    # ---- receiving ----
    def receive(self, data: bytes, now: float) -> list[Request | Body | Reset]:
        """Feed bytes from the socket. Raises ConnectionFailed on a protocol violation or a spent reset budget
        (GOAWAY is then in output())."""
        try:
            events = self._conn.receive_data(data)
        except h2.exceptions.DenialOfServiceError as e:
            raise ConnectionFailed(f"HTTP/2 client over a bound: {e}", int(e.error_code), "calm") from e
        except h2.exceptions.ProtocolError as e:
            raise ConnectionFailed(f"HTTP/2 protocol error from the client: {e}", int(e.error_code),
                                   "protocol_error") from e
        except h2.exceptions.H2Error as e:
            raise ConnectionFailed(f"HTTP/2 error: {e}", h2.errors.ErrorCodes.PROTOCOL_ERROR, "protocol_error") from e
        out: list[Request | Body | Reset] = []
        whole: set[int] = set()  # requests without a body: their StreamEnded is no news
        for ev in events:
            kind = type(ev)
            if kind is h2.events.DataReceived:
                sid = ev.stream_id
                # padding is never read: hand it back now
                pad = ev.flow_controlled_length - len(ev.data)
                if sid in self.open:
                    out.append(Body(sid, ev.data, False))  # the end comes as StreamEnded
                    if pad:
                        self.consumed(sid, pad)
                else:  # a body for a stream already answered: nobody reads it
                    self._ack_stream(sid, ev.flow_controlled_length)
            elif kind is h2.events.RequestReceived:
                if self.closing:
                    self._refuse(ev.stream_id)
                    continue
                self.open.add(ev.stream_id)
                out.append(Request(ev.stream_id, ev.headers, ev.stream_ended is not None))
                if ev.stream_ended is not None:
                    whole.add(ev.stream_id)
            elif kind is h2.events.StreamEnded:
                if ev.stream_id in self.open and ev.stream_id not in whole:
                    out.append(Body(ev.stream_id, b"", True))
            elif kind is h2.events.TrailersReceived:  # trailers end a body; their fields are not forwarded
                if ev.stream_ended is not None and ev.stream_id in self.open:
                    out.append(Body(ev.stream_id, b"", True))
            elif kind is h2.events.StreamReset:
                if ev.stream_id in self.open:
                    self._forget(ev.stream_id)
                    out.append(Reset(ev.stream_id, int(ev.error_code or 0)))
                    self._spend_reset(now)
            elif kind is h2.events.WindowUpdated or kind is h2.events.RemoteSettingsChanged:
                self.window_opened = True
            elif kind is h2.events.ConnectionTerminated:
                self.goaway_received = True
            # PingReceived (h2 answers it), SettingsAcknowledged and the rest need nothing from us.
        window = self._conn.inbound_flow_control_window
        if window < self.conn_window - (self.conn_window >> 2):
            self._conn.increment_flow_control_window(self.conn_window - window)
        return out

    def _spend_reset(self, now: float) -> None:
        if self._reset_when is not None:
            self._reset_tokens = min(float(RESET_BURST), self._reset_tokens + (now - self._reset_when) * RESET_RATE)
        self._reset_when = now
        self._reset_tokens -= 1
        if self._reset_tokens < 0:
            self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
            raise ConnectionFailed(f"more than {RESET_BURST} stream resets at once (rapid reset, CVE-2023-44487)",
                                   h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "rapid_reset")

    def _refuse(self, stream_id: int) -> None:
        # RFC 9113 §8.7: REFUSED_STREAM means the request was not processed; the client may send it again
        try:
            self._conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
        except h2.exceptions.H2Error:
            pass

    # ---- flow control of request bodies ----
    def consumed(self, stream_id: int, n: int) -> None:
        """The handler read `n` body bytes of the stream: hand them back to the client's window (a quarter window
        at a time, so a big upload costs one WINDOW_UPDATE per 256 KiB, not one per chunk)."""
        if stream_id not in self.open:
            return
        pending = self.unacked.get(stream_id, 0) + n
        if pending >= self.stream_window >> 2:
            self._ack_stream(stream_id, pending)
            pending = 0
        self.unacked[stream_id] = pending

    def _ack_stream(self, stream_id: int, n: int) -> None:
        if n <= 0:
            return
        try:
            self._conn.increment_flow_control_window(n, stream_id)
        except (h2.exceptions.H2Error, KeyError):
            pass  # the stream closed meanwhile: its window no longer matters

    # ---- sending ----
    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool = False) -> None:
        """The response head (`end`: and no body). Raises StreamClosed."""
        if stream_id not in self.open:
            raise StreamClosed(stream_id)
        try:
            if not (self._fast and self._head_fast(stream_id, headers, end)):
                self._conn.send_headers(stream_id, headers, end_stream=end)
        except h2.exceptions.H2Error as e:
            self._forget(stream_id)
            raise StreamClosed(stream_id) from e
        if end:
            self._done(stream_id)

    def _stream_for_sending(self, stream_id: int) -> h2.stream.H2Stream | None:
        """h2's stream when the fast path may write on it: the connection open, the stream open on our side."""
        conn = self._conn
        h = conn.streams.get(stream_id)
        if h is None or conn.state_machine.state is not _SERVER_OPEN:
            return None
        state = h.state_machine.state
        return h if state is _S_HALF_CLOSED_REMOTE or state is _S_OPEN else None

    @staticmethod
    def _end_sent(h: h2.stream.H2Stream) -> None:
        """h2's SEND_END_STREAM on an open or half-closed (remote) stream."""
        machine = h.state_machine
        if machine.state is _S_HALF_CLOSED_REMOTE:
            machine.state = _S_CLOSED
            machine.stream_closed_by = _SENT_END
        else:
            machine.state = _S_HALF_CLOSED_LOCAL

    def _head_fast(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> bool:
        """A final response head as h2's send_headers writes it (HEADERS, CONTINUATION past the client's frame
        size), less its frame objects and header copies. False: h2 writes it."""
        h = self._stream_for_sending(stream_id)
        if (h is None or h.state_machine.headers_sent or h.state_machine.client is not False or not headers
                or headers[0][0] != b":status" or headers[0][1][:1] == b"1"):
            return False
        conn = self._conn
        block = conn.encoder.encode(headers)
        h.state_machine.headers_sent = True
        h.request_method = None  # h2 takes it from the block it sends (a response has no :method)
        if end:
            self._end_sent(h)
        h2conn.write_headers(conn._data_to_send, block, _END_STREAM if end else 0, stream_id,
                             conn.max_outbound_frame_size)
        return True

    def send_informational(self, stream_id: int, status: int) -> None:
        """A 1xx answer (100 Continue) before the response."""
        self.send_headers(stream_id, [(b":status", str(status).encode())])

    def window(self, stream_id: int) -> int:
        """Bytes that may go out on the stream now (its window and the connection's); 0: wait for a WINDOW_UPDATE.
        Raises StreamClosed."""
        if stream_id not in self.open:
            raise StreamClosed(stream_id)
        try:
            return max(0, self._conn.local_flow_control_window(stream_id))
        except h2.exceptions.H2Error as e:
            self._forget(stream_id)
            raise StreamClosed(stream_id) from e

    def send_data(self, stream_id: int, data: bytes | memoryview, end: bool = False) -> int:
        """Send as much of `data` as the windows allow, in frames the client accepts; returns the bytes taken.
        `end` ends the stream when all of `data` went. Raises StreamClosed."""
        window = self.window(stream_id)
        conn = self._conn
        frame = conn.max_outbound_frame_size
        taken = 0
        total = len(data)
        h = self._stream_for_sending(stream_id) if self._fast else None
        try:
            while taken < total and window > 0:
                n = min(window, frame, total - taken)
                last = end and taken + n == total
                if h is not None:  # h2's send_data, less its frame objects: the same windows, state and bytes
                    out = conn._data_to_send
                    out += _FRAME_HEAD.pack(n >> 8, n & 0xFF, _DATA, _END_STREAM if last else 0, stream_id)
                    out += data[taken:taken + n]
                    h.outbound_flow_control_window -= n
                    conn.outbound_flow_control_window -= n
                    if last:
                        self._end_sent(h)
                else:
                    conn.send_data(stream_id, data[taken:taken + n], end_stream=last)
                taken += n
                window -= n
            if end and total == 0:
                if h is not None:
                    conn._data_to_send += _FRAME_HEAD.pack(0, 0, _DATA, _END_STREAM, stream_id)
                    self._end_sent(h)
                else:
                    conn.end_stream(stream_id)
        except h2.exceptions.H2Error as e:
            self._forget(stream_id)
            raise StreamClosed(stream_id) from e
        if end and taken == total:
            self._done(stream_id)
        return taken

    def end(self, stream_id: int) -> None:
        """END_STREAM on a stream whose response went out whole. Raises StreamClosed."""
        self.send_data(stream_id, b"", end=True)

    def _done(self, stream_id: int) -> None:
        # Our END_STREAM went. If the client is still sending a body nobody will read, stop it (RFC 9113 §8.1:
        # RST_STREAM NO_ERROR after a complete response).
        stream = self._conn.streams.get(stream_id)
        if stream is not None and not stream.closed:
            try:
                self._conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.H2Error:
                pass
        self._forget(stream_id)

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        """RST_STREAM: the response cannot be completed (the client then sees it fail, not end short)."""
        if stream_id in self.open:
            try:
                self._conn.reset_stream(stream_id, code)
            except h2.exceptions.H2Error:
                pass
            self._forget(stream_id)

    def _forget(self, stream_id: int) -> None:
        self.open.discard(stream_id)
        self.unacked.pop(stream_id, None)

    def goaway(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        """GOAWAY with the last stream we took: those finish, none are opened after."""
        if self.closing:
            return
        self.closing = True
        state = self._conn.state_machine.state
        try:
            self._conn.close_connection(code, last_stream_id=self._conn.highest_inbound_stream_id)
        except h2.exceptions.H2Error:
            return
        if code == h2.errors.ErrorCodes.NO_ERROR:
            # h2 takes a GOAWAY sent as the connection's end and refuses every frame after it; RFC 9113 §6.8 lets
            # the streams it admits run to completion (a watch for up to the shutdown timeout)
            self._conn.state_machine.state = state
