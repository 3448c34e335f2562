"""python-hyper h2's connection as both sides' sessions use it (session.py, serversession.py): pure, no I/O.

- hpack logs every integer and header it codes at DEBUG (`log.debug(...)`, ~30 calls per request: a tenth of an
  HTTP/2 request's CPU); edgeproxy never runs hpack at DEBUG, so importing this module makes its logger a no-op.
- `Connection` is h2's, less the repr of every received frame that h2 builds even for a logger that drops it (a sixth
  of an HTTP/2 request's CPU).
- `ClientConnection` also keeps the streams the server took when a GOAWAY comes (RFC 9113 §6.8).
- `Decoder`, HPACK decoding for either side's h2 decoder, and `decode_huffman`: hpack's results a third of its CPU.
"""

from __future__ import annotations

import struct

import h2.connection
import h2.errors
import h2.exceptions
import hpack.exceptions
import hpack.hpack
import hpack.huffman_table
import hpack.table
import hyperframe.frame

FRAME_HEAD = struct.Struct(">HBBBL")  # length (24 bits as 16 + 8), type, flags, reserved bit + stream id
_HEADERS, _CONTINUATION = 0x1, 0x9
_END_HEADERS = 0x4


def write_headers(out: bytearray, block: bytes, flags: int, stream_id: int, size: int) -> None:
    """Append a header block as HEADERS (with `flags`, END_HEADERS when it fits) and CONTINUATION frames of at most
    `size` bytes (RFC 9113 §6.10), as h2's send_headers frames it; both sessions' fast paths write through here."""
    if len(block) <= size:
        n = len(block)
        out += FRAME_HEAD.pack(n >> 8, n & 0xFF, _HEADERS, flags | _END_HEADERS, stream_id)
        out += block
        return
    for i in range(0, len(block), size):
        part = block[i:i + size]
        n = len(part)
        last = _END_HEADERS if i + size >= len(block) else 0
        out += FRAME_HEAD.pack(n >> 8, n & 0xFF, _CONTINUATION if i else _HEADERS, (0 if i else flags) | last,
                               stream_id)
        out += part


class _Quiet:
    """hpack's module logger while edgeproxy runs: drops its DEBUG calls without formatting them."""

    @staticmethod
    def debug(*args: object, **kwargs: object) -> None:
        return None


hpack.hpack.log = _Quiet()  # type: ignore[assignment]


_HUFFMAN_CACHE = 512  # Huffman-coded strings remembered per connection
_STATIC = hpack.table.HeaderTable.STATIC_TABLE
_STATIC_LENGTH = len(_STATIC)
_NIBBLES = hpack.huffman_table.HUFFMAN_TABLE  # (state, nibble) -> (next state, flags, symbol), hpack's own
_H_COMPLETE, _H_EMIT, _H_FAIL = (hpack.huffman_table.HUFFMAN_COMPLETE, hpack.huffman_table.HUFFMAN_EMIT_SYMBOL,
                                 hpack.huffman_table.HUFFMAN_FAIL)
_BYTE_ROWS: list[list[tuple[int, bytes, int]] | None] = [None] * 256  # a state's 256 byte steps, built when reached


def _byte_row(state: int) -> list[tuple[int, bytes, int]]:
    """hpack's Huffman state machine two nibbles at a time from `state`: per input byte, (next state, symbols
    emitted, flags: _H_FAIL if either nibble fails, else the second nibble's _H_COMPLETE)."""
    row = []
    for byte in range(256):
        s, out, flags = state, b"", 0
        for nibble in (byte >> 4, byte & 0x0F):
            s, flags, symbol = _NIBBLES[s * 16 + nibble]
            if flags & _H_FAIL:
                break
            if flags & _H_EMIT:
                out += bytes((symbol,))
        row.append((s, out, _H_FAIL if flags & _H_FAIL else flags & _H_COMPLETE))
    _BYTE_ROWS[state] = row
    return row


def decode_huffman(data: bytes) -> bytes:
    """hpack's decode_huffman (the same bytes and errors; the tests compare them) a byte per step instead of a
    nibble, through a table built from hpack's as its states are reached: a third of its CPU."""
    if not data:
        return b""
    rows = _BYTE_ROWS
    state, flags, out = 0, 0, []
    for byte in data:
        row = rows[state] or _byte_row(state)
        state, symbols, flags = row[byte]
        if flags & _H_FAIL:
            raise hpack.exceptions.HPACKDecodingError("Invalid Huffman string")
        if symbols:
            out.append(symbols)
    if not flags & _H_COMPLETE:
        raise hpack.exceptions.HPACKDecodingError("Incomplete Huffman string")
    return b"".join(out)


class Decoder:
    """HPACK decoding of header blocks (both sides install it as their h2 decoder's `decode`): the same table, fields
    and errors as hpack's decoder (which the tests compare it with; fields as plain tuples), a third of its CPU.
    hpack builds a HeaderTuple per field, slices a memoryview per field and Huffman-decodes every literal anew; here
    a block is walked by index, and Huffman-coded strings seen before (a Date within its second, a content type, a
    Content-Length) are remembered (bounded)."""

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
                plain = decode_huffman(text)
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
        dynamic = table.dynamic_entries
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
                # table.get_by_index, inline for the fields in the tables (it raises for the rest)
                if 0 < index <= _STATIC_LENGTH:
                    name, value = _STATIC[index - 1]
                elif _STATIC_LENGTH < index <= _STATIC_LENGTH + len(dynamic):
                    name, value = dynamic[index - _STATIC_LENGTH - 1]
                else:
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


class Connection(h2.connection.H2Connection):
    """h2's connection, with `_receive_frame` h2's own less its `logger.trace("Received frame: %s", repr(frame))`."""

    def preface(self, conn_window: int) -> bytes:
        """Our opening bytes (the client's preface, and either side's SETTINGS), with the connection's receive
        window opened to `conn_window`."""
        self.initiate_connection()
        grow = conn_window - self.inbound_flow_control_window
        if grow > 0:
            self.increment_flow_control_window(grow)
        return self.data_to_send()

    def _receive_frame(self, frame):  # type: ignore[no-untyped-def]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except h2.exceptions.StreamClosedError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                # frames for a stream reset here: answer RST_STREAM and go on
                f = hyperframe.frame.RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except h2.exceptions.StreamIDTooLowError as e:
            if self._stream_is_closed_by_reset(e.stream_id):
                f = hyperframe.frame.RstStreamFrame(e.stream_id)
                f.error_code = h2.errors.ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise h2.exceptions.StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            self._prepare_for_sending(frames)
        return events


class ClientConnection(Connection):
    """The client side, except that a GOAWAY received does not end the connection. h2 moves the whole connection to
    CLOSED on GOAWAY and then refuses every frame after it, but RFC 9113 §6.8 lets the streams up to the server's last
    stream id run to completion (a watch may go on for minutes): only new streams are off (Session.can_open)."""

    def _receive_goaway_frame(self, frame):  # type: ignore[no-untyped-def]
        state = self.state_machine.state
        result = super()._receive_goaway_frame(frame)
        if state is h2.connection.ConnectionState.CLIENT_OPEN:
            self.state_machine.state = state
        return result
