"""The plugin's log: `edge-ipam-snapshot: LEVEL message` lines on stderr, which the runtime keeps.

What the plugin used `logging` for, without importing it (logging pulls in threading, traceback, string and weakref:
a tenth of a CNI call's start-up). Messages take %-style arguments, formatted only when the line is written.
WARNING and above by default; everything with EDGE_IPAM_SNAPSHOT_DEBUG set. Pure but for stderr; no neighbours.
"""

from __future__ import annotations

import os
import sys

DEBUG_ENV = "EDGE_IPAM_SNAPSHOT_DEBUG"
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "ERROR": 40}
threshold = 10 if os.environ.get(DEBUG_ENV) else 30


def _emit(level: str, msg: str, args: tuple) -> None:
    if _LEVELS[level] < threshold:
        return
    try:
        text = msg % args if args else msg
    except (TypeError, ValueError):
        text = f"{msg} {args!r}"
    try:
        sys.stderr.write(f"edge-ipam-snapshot: {level} {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass  # no stderr (closed by the runtime): the log is best effort, the result on stdout is what counts


def debug(msg: str, *args) -> None:
    _emit("DEBUG", msg, args)


def info(msg: str, *args) -> None:
    _emit("INFO", msg, args)


def warning(msg: str, *args) -> None:
    _emit("WARNING", msg, args)


def error(msg: str, *args) -> None:
    _emit("ERROR", msg, args)
