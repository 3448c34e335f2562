"""Client errors in the log: one WARNING line per kind, at most once per interval; tracebacks are for our own bugs.

A hostile or broken local client can send thousands of malformed requests a second; each used to log an ERROR with
a traceback. `client_error(kind, message, ...)` logs the first of a kind at once, then at most one line per
`INTERVAL` seconds per kind, saying how many were not logged meanwhile. Kinds are a small fixed set chosen by the
caller (never a value the client chose), so the table stays small.

Boundary: logging only. Neighbours: guard.limits and proxy.py report through it.
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("edgeproxy.clients")

INTERVAL = 60.0
MAX_KINDS = 64
MAX_MESSAGE = 300  # characters of the client-supplied part of a message that reach the log

_last: dict[str, float] = {}
_suppressed: dict[str, int] = {}


def clip(text: object, limit: int = MAX_MESSAGE) -> str:
    """`text` as one log-safe line of at most `limit` characters (a client chose it: it may be 1 MB or binary)."""
    s = str(text)
    s = s.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    s = s.replace("\r", "\\r").replace("\n", "\\n")
    return s if len(s) <= limit else s[:limit] + f"...(+{len(s) - limit} chars)"


def client_error(kind: str, message: str, *args: object, now: float | None = None) -> bool:
    """Log a client error of `kind` (WARNING, no traceback) unless one of that kind was logged within INTERVAL
    seconds; returns whether it was logged."""
    t = time.monotonic() if now is None else now
    last = _last.get(kind)
    if last is not None and t - last < INTERVAL:
        _suppressed[kind] = _suppressed.get(kind, 0) + 1
        return False
    if last is None and len(_last) >= MAX_KINDS:
        _last.clear()
        _suppressed.clear()
    _last[kind] = t
    skipped = _suppressed.pop(kind, 0)
    more = f" ({skipped} more like it in the last {INTERVAL:.0f} s not logged)" if skipped else ""
    log.warning("client error (%s): " + message + more, kind, *(clip(a) for a in args),
                extra={"event": "client_error", "kind": kind})
    return True
