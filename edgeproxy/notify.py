"""Tell systemd how the service is doing: sd_notify(3) over the datagram socket named by $NOTIFY_SOCKET.

READY=1 once the listeners are bound, STATUS= lines an operator sees in `systemctl status`, WATCHDOG=1 from the event
loop every half WatchdogSec (a wedged loop stops petting and systemd restarts the service), STOPPING=1 on shutdown.
Without $NOTIFY_SOCKET (a shell, a test, a container) every call is a cheap no-op returning False.

Boundary: the protocol only; what "healthy enough to pet the watchdog" means is the caller's `check`. Neighbours:
server.py calls ready()/stopping() and start_watchdog(); systemd/edgeproxy.service sets Type=notify and WatchdogSec.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable

from edgeproxy import tasks

log = logging.getLogger(__name__)


def _address() -> str | bytes | None:
    """The notify socket address, or None when not run by systemd with Type=notify."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    if path.startswith("@"):
        # An abstract socket: systemd writes '@' for the leading NUL byte (sd_notify(3)).
        return b"\0" + path[1:].encode()
    if not path.startswith("/"):
        return None  # vsock and other families are not for a local service
    return path


def send(*fields: str) -> bool:
    """Send one notification of newline-separated KEY=VALUE fields; False when there is nobody to tell."""
    address = _address()
    if address is None:
        return False
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
    except OSError as e:
        # Losing a notification must never take the proxy down; systemd's own timeouts catch a lasting problem.
        log.debug("sd_notify %r failed: %s", fields, e)
        return False
    return True


def ready(status: str | None = None) -> bool:
    """READY=1 (with MAINPID, so a wrapper process that execs the proxy is still accepted)."""
    fields = ["READY=1", f"MAINPID={os.getpid()}"]
    if status:
        fields.append(f"STATUS={_one_line(status)}")
    return send(*fields)


def status(text: str) -> bool:
    """A one-line status shown by `systemctl status edgeproxy`."""
    return send(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    return send("WATCHDOG=1")


def stopping(status: str | None = None) -> bool:
    fields = ["STOPPING=1"]
    if status:
        fields.append(f"STATUS={_one_line(status)}")
    return send(*fields)


def watchdog_interval() -> float | None:
    """Seconds between watchdog pets (half of WatchdogSec, as sd_watchdog_enabled(3) advises), or None if disabled.

    $WATCHDOG_PID, when set, names the process the watchdog is for; a child that inherited the environment does
    not pet its parent's watchdog.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1e6 / 2


async def watchdog_loop(interval: float, check: Callable[[], bool] | None = None) -> None:
    """Pet the watchdog every `interval` seconds while `check()` (if given) says the service is alive.

    The loop running at all proves the event loop is not wedged; `check` can add more (say, the cache writer
    thread still committing). A failed check skips a pet rather than sending WATCHDOG=trigger: a transient stall
    recovers by itself before the deadline, a lasting one gets the service restarted by systemd.
    """
    while True:
        healthy = True
        if check is not None:
            try:
                healthy = bool(check())
            except Exception:  # a broken check must not stop the pets forever by killing the loop
                log.exception("watchdog check failed")
                healthy = False
        if healthy:
            watchdog()
        else:
            log.warning("watchdog check failed; not petting the systemd watchdog")
        await asyncio.sleep(interval)


def start_watchdog(check: Callable[[], bool] | None = None) -> asyncio.Task[None] | None:
    """Start the watchdog loop in the running event loop if systemd asked for one (WatchdogSec= set)."""
    interval = watchdog_interval()
    if interval is None or _address() is None:
        return None
    return tasks.spawn(watchdog_loop(interval, check), name="sd-watchdog")


def _one_line(text: str) -> str:
    return " ".join(text.split())
