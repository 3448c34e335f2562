"""Logging for the service: level and format from flags or the environment, JSON lines, sampled request logs.

- `setup(level, fmt)`: the root logger writes to stderr (the journal under systemd) as text or as JSON, one object
  per line with any `extra=` fields as keys; a bounded in-memory ring keeps the last lines for `debug collect`.
  When stderr is the journal's stream ($JOURNAL_STREAM names its device:inode), every line starts with its syslog
  priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which journald takes as the entry's PRIORITY and
  strips: `journalctl -u edgeproxy -p warning` shows the warnings and errors.
- `state_change(event, **fields)`: one line per state change (online/offline, view complete, eviction, certificate
  reloaded), always at INFO, with the fields as JSON keys, on the `edgeproxy.state` logger.
- `request(...)`: the request log, one request in N (EDGEPROXY_LOG_REQUEST_SAMPLE, default 100) plus every 5xx; all of
  them at DEBUG level. Every request, sampled or not, also lands in a small per-component record (the last requests,
  the last errors, counts by verb/resource/code/source) that the ops listener serves to `edgeproxy debug diagnose`.

Boundary: formatting and routing of log records only; nothing here decides what is worth logging. Neighbours: cli.py
calls setup(); proxy/upstream/record call state_change() and request(); debug.py reads recent().
"""

from __future__ import annotations

import collections
import datetime
import io
import itertools
import json
import logging
import os
import sys
import threading
import time
from typing import Any

ENV_LEVEL = "EDGEPROXY_LOG_LEVEL"
ENV_FORMAT = "EDGEPROXY_LOG_FORMAT"
ENV_SAMPLE = "EDGEPROXY_LOG_REQUEST_SAMPLE"
DEFAULT_SAMPLE = 100
RING_SIZE = 2000
RING_LINE_MAX = 8 << 10  # characters of one line kept in the ring (2,000 lines: at most 16 MiB)

state_log = logging.getLogger("edgeproxy.state")
request_log = logging.getLogger("edgeproxy.request")

# Attributes every LogRecord has; anything else on a record came from `extra=` and is emitted as a field.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime", "taskName"}


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339, UTC), level, logger, msg, the extra fields, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`time level logger: message key=value ...`; without the time under systemd, whose journal stamps each line."""

    def __init__(self, with_time: bool = True) -> None:
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s" if with_time else "%(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = extra_fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c.isspace() or c in '"=' for c in text)) else text


SYSLOG_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a logging level: 2 crit, 3 err, 4 warning, 6 info, 7 debug."""
    for threshold, priority in SYSLOG_PRIORITY:
        if levelno >= threshold:
            return priority
    return 7


def is_journal_stream(stream: Any) -> bool:
    """Whether `stream` is connected to the journal: systemd sets $JOURNAL_STREAM to "device:inode" of the stream it
    gives a service (systemd.exec(5)); a stream redirected elsewhere (a pipe, a file) does not match."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError, io.UnsupportedOperation):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class JournalPriorityFormatter(logging.Formatter):
    """Prefixes each line of another formatter's output with `<N>`, the record's syslog priority: journald reads it as
    the entry's PRIORITY (SyslogLevelPrefix=, on by default) and removes it from the message. Every line of a
    multi-line record (a traceback in the text format) is its own journal entry, so each gets the prefix."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in self.inner.format(record).split("\n"))


class RingHandler(logging.Handler):
    """Keeps the last `capacity` records, formatted as JSON lines, for `debug collect` and the ops endpoint."""

    def __init__(self, capacity: int = RING_SIZE) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(JsonFormatter())

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            if len(line) > RING_LINE_MAX:  # a line quoting what a client sent (a 1 MB path): the ring stays small
                line = line[:RING_LINE_MAX] + f"...(+{len(line) - RING_LINE_MAX} chars)"
            self.lines.append(line)
        except Exception:
            self.handleError(record)


_ring = RingHandler()


def recent(limit: int | None = None) -> list[str]:
    """The last log lines as JSON strings, oldest first."""
    lines = list(_ring.lines)
    return lines if limit is None else lines[-limit:]


def parse_level(level: str | int | None) -> int:
    if level is None or level == "":
        return logging.INFO
    if isinstance(level, int):
        return level
    name = level.strip().upper()
    if name == "WARN":
        name = "WARNING"
    value = logging.getLevelName(name)
    if not isinstance(value, int):
        raise ValueError(f"unknown log level {level!r} (debug, info, warning, error)")
    return value


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to sys.stderr as it is at each line (as logging's last resort does): one that swaps it for a while (a
    test harness capturing output, then closing its file) does not leave the service logging to a closed file."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup(level: str | int | None = None, fmt: str | None = None, stream: Any = None) -> None:
    """Configure the root logger once per process (calling again replaces what the last call installed).

    Flags win over the environment: `level` else $EDGEPROXY_LOG_LEVEL else info; `fmt` ("text"|"json") else
    $EDGEPROXY_LOG_FORMAT else text.
    """
    level_value = parse_level(level if level is not None else os.environ.get(ENV_LEVEL))
    fmt = (fmt or os.environ.get(ENV_FORMAT) or "text").strip().lower()
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r} (text, json)")
    handler = logging.StreamHandler(stream) if stream is not None else _Stderr()
    stream = handler.stream
    # Under systemd ($JOURNAL_STREAM set) the journal timestamps each line; the text format leaves its own out.
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter("JOURNAL_STREAM" not in
                                                                                        os.environ)
    if is_journal_stream(stream):
        formatter = JournalPriorityFormatter(formatter)
    handler.setFormatter(formatter)
    handler._edgeproxy = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_edgeproxy", False) or h is _ring]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.addHandler(_ring)
    root.setLevel(level_value)
    # aiohttp's access log duplicates the sampled request log.
    logging.getLogger("aiohttp.access").setLevel(max(level_value, logging.WARNING))
    _sampler.every = _sample_rate()


def state_change(event: str, **fields: Any) -> None:
    """Log one state change: `state_change("upstream_offline", server="https://10.0.0.1:6443", error="timeout")`."""
    message = event if not fields else event + " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
    state_log.info(message, extra={"event": event, **_safe_extra(fields)})


def _safe_extra(fields: dict[str, Any]) -> dict[str, Any]:
    # LogRecord refuses extra keys that shadow its own attributes ("name", "msg", ...); prefix those.
    return {(f"f_{k}" if k in _STANDARD else k): v for k, v in fields.items()}


class Sampler:
    """Lets one call in `every` through (every <= 1: all of them); thread-safe, deterministic (a counter)."""

    __slots__ = ("_counter", "every")

    def __init__(self, every: int) -> None:
        self.every = every
        self._counter = itertools.count()

    def take(self) -> bool:
        if self.every <= 1:
            return True
        return next(self._counter) % self.every == 0  # itertools.count's next() is atomic: no lock needed


def _sample_rate() -> int:
    try:
        return max(0, int(os.environ.get(ENV_SAMPLE, DEFAULT_SAMPLE)))
    except ValueError:
        return DEFAULT_SAMPLE


_sampler = Sampler(_sample_rate())


class Activity:
    """What one component asked and got: the last requests, the last errors, counts. Bounded in every dimension.
    Entries are kept as tuples (ts, verb, path, code, source, duration, note) and shaped only when read."""

    __slots__ = ("counts", "errors", "first_seen", "last", "total")
    MAX_COUNT_KEYS = 500

    def __init__(self) -> None:
        self.last: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=50)
        self.errors: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=20)
        self.counts: collections.Counter[tuple[str, str, int, str]] = collections.Counter()
        self.total = 0
        self.first_seen = time.time()

    def add(self, entry: tuple[Any, ...], resource: str) -> None:
        self.total += 1
        self.last.append(entry)
        _, verb, _, code, source, _, _ = entry
        if code >= 400:
            self.errors.append(entry)
        key = (verb, resource, code, source)
        counts = self.counts
        if key in counts or len(counts) < self.MAX_COUNT_KEYS:
            counts[key] += 1

    def snapshot(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "first_seen": self.first_seen,
            "counts": [{"verb": v, "resource": r, "code": c, "source": s, "n": n}
                       for (v, r, c, s), n in self.counts.most_common()],
            "last": [_entry(e) for e in self.last],
            "errors": [_entry(e) for e in self.errors],
        }


def _entry(e: tuple[Any, ...]) -> dict[str, Any]:
    ts, verb, path, code, source, duration, note = e
    out = {"ts": round(ts, 3), "verb": verb, "path": path, "code": code, "source": source,
           "duration_ms": round(duration * 1000, 3)}
    if note:
        out["note"] = note
    return out


MAX_COMPONENTS = 64
_activity: dict[str, Activity] = {}
_activity_lock = threading.Lock()


def activity(component: str | None = None) -> dict[str, Any]:
    """{component: snapshot} for every component seen (or just one), for the ops listener's /debug/components."""
    with _activity_lock:
        items = [(k, v) for k, v in _activity.items() if component is None or k == component]
        return {k: v.snapshot() for k, v in items}


def reset_activity() -> None:
    """Forget every component's record (a test's clean slate)."""
    with _activity_lock:
        _activity.clear()


def _record(component: str, resource: str, entry: tuple[Any, ...]) -> None:
    with _activity_lock:
        act = _activity.get(component)
        if act is None:
            # User-Agents are the client's to choose: past MAX_COMPONENTS names, newcomers share one record.
            if len(_activity) >= MAX_COMPONENTS:
                component = "(other)"
            act = _activity.setdefault(component, Activity())
        act.add(entry, resource)


def request(
    *,
    component: str,
    verb: str,
    path: str,
    code: int,
    source: str,
    duration: float,
    resource: str = "",
    note: str = "",
    **fields: Any,
) -> bool:
    """The request log: every request at DEBUG, else one in N and every 5xx at INFO. Returns whether it logged.

    `source` is who answered: "upstream" or "cache" (or "proxy" for the proxy's own refusals); `note` why it was not
    upstream, if it was not (offline, the connect error, a bad request); every call is also kept for `debug diagnose`.
    """
    _record(component, resource, (time.time(), verb, path, code, source, duration, note))
    if request_log.isEnabledFor(logging.DEBUG):
        level = logging.DEBUG
    elif code >= 500 or _sampler.take():
        level = logging.INFO
    else:
        return False
    if not request_log.isEnabledFor(level):
        return False
    extra = {"component": component, "verb": verb, "path": path, "code": code, "source": source,
             "duration_ms": round(duration * 1000, 3), **({"note": note} if note else {}), **_safe_extra(fields)}
    request_log.log(level, "%s %s %s %d %s %.1fms", component, verb, path, code, source, duration * 1000,
                    extra=extra)
    return True
