"""python-hyper h2's connection as both sides' sessions use it (session.py, serversession.py): pure, no I/O.

- hpack logs every integer and header it codes at DEBUG (`log.debug(...)`, ~30 calls per request: a tenth of an
  HTTP/2 request's CPU); edgeproxy never runs hpack at DEBUG, so importing this module makes its logger a no-op.
- `Connection` is h2's, less the repr of every received frame that h2 builds even for a logger that drops it (a sixth
  of an HTTP/2 request's CPU).
- `ClientConnection` also keeps the streams the server took when a GOAWAY comes (RFC 9113 §6.8).
"""

from __future__ import annotations

import h2.connection
import h2.errors
import h2.exceptions
import hpack.hpack
import hyperframe.frame


class _Quiet:
    """hpack's module logger while edgeproxy runs: drops its DEBUG calls without formatting them."""

    @staticmethod
    def debug(*args: object, **kwargs: object) -> None:
        return None


hpack.hpack.log = _Quiet()  # type: ignore[assignment]


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
