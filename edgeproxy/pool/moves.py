"""Shared watches still open upstream, moved to the pool's leader once there is one (issue 16).

A watch a client opened while its node knew no leader (sharing just switched on, the leader's Lease not yet read, a
failover) goes to the API server and would stay there for as long as the API server keeps it open (30 minutes and
more): the branch would keep one upstream watch per node. So the proxy tracks its upstream watches of shared queries
here, and when the node comes to follow a leader (or lead itself, or the leader changes) each is ended within a
random `spread` of seconds (a branch does not move all at once): cleanly, at an event boundary, as the API server ends
a watch at its timeout, so client-go re-watches from its last resourceVersion, without a relist, and that request goes
to the leader. To end at a boundary, a tracked watch's body goes to the client in whole events only (`Boundary`
holds back the tail of an event still arriving; ending drops it, the client has the events before it).

The leader answers a watch from a resourceVersion older than its view (its view listed after the client's last event)
with "go to the API server" (the follower's own API server can serve it), so a moved watch may come back upstream.
Such a watch is moved again, at most every `retry` seconds, once it has received an event or a bookmark since it was
opened (its resourceVersion advanced, past the leader's view; the API server sends a bookmark every minute).
Pure decisions (`Boundary`, `Moves.due`) with a small shell (`Moves.run`, the timers ending the watches).
Neighbours: route (the Router owns one and tells it of elections), proxy (tracks its upstream watches), election.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Callable, Hashable
from typing import Any

from edgeproxy import tasks

log = logging.getLogger(__name__)

SPREAD = 5.0  # seconds over which a node's watches are moved
RETRY = 20.0  # seconds before a watch that came back upstream is moved again (once it advanced)
_BE32 = struct.Struct(">I")


class Boundary:
    """Whole watch events out of any chunking: a protobuf watch's 4-byte length-prefixed frames, or a JSON watch's
    lines. `feed` returns the bytes up to the last whole event (maybe b""), keeping the rest. Pure."""

    __slots__ = ("_json", "_tail", "events")

    def __init__(self, content_type: str) -> None:
        self._json = "protobuf" not in content_type.lower()
        self._tail = b""
        self.events = 0  # whole events passed on

    def feed(self, chunk: bytes) -> bytes:
        data = self._tail + chunk if self._tail else chunk
        if self._json:
            cut = data.rfind(b"\n") + 1
            if cut:
                self.events += data.count(b"\n", 0, cut)
        else:
            cut, end = 0, len(data)
            while end - cut >= 4:
                size = _BE32.unpack_from(data, cut)[0]
                if end - cut - 4 < size:
                    break
                cut += 4 + size
                self.events += 1
        self._tail = data[cut:]
        return data[:cut] if cut < len(data) else data


class Tracked:
    """One upstream watch of a shared query, as the proxy relays it: the proxy reads it through `read()`, which
    `end()` makes return b"" (the end of the body) while a read of the upstream response is pending. (Closing the
    upstream response is not enough: an HTTP/2 stream reset by its reader wakes no pending read.)"""

    __slots__ = ("_pending", "_up", "boundary", "ended", "key", "opened")

    def __init__(self, up: Any, content_type: str, key: Hashable, now: float) -> None:
        self._up = up
        self.boundary = Boundary(content_type)
        self.key = key  # the query and its client, without the resourceVersion
        self.opened = now
        self.ended = False
        self._pending: asyncio.Timeout | None = None  # the read in progress, which end() cuts short

    def feed(self, chunk: bytes) -> bytes:
        return self.boundary.feed(chunk)

    async def read(self) -> bytes:
        """The upstream response's next bytes, or b"" once ended (the proxy then closes the upstream response)."""
        if self.ended:
            return b""
        try:
            async with asyncio.timeout(None) as self._pending:
                return await self._up.read()
        except TimeoutError:
            if self.ended:
                return b""
            raise
        finally:
            self._pending = None

    def end(self) -> None:
        """End it now: the proxy's read returns b"" and the client's response ends after the last whole event."""
        if not self.ended:
            self.ended = True
            if self._pending is not None:
                self._pending.reschedule(asyncio.get_running_loop().time())


class Moves:
    """The tracked watches of one node, and the moves. `ready()`: a leader is known and usable (this node leads,
    or follows a leader it may ask)."""

    __slots__ = ("_attempts", "_rng", "_task", "moved", "open", "ready", "retry", "spread")

    def __init__(self, ready: Callable[[], bool], *, spread: float = SPREAD, retry: float = RETRY,
                 rng: random.Random | None = None) -> None:
        self.ready = ready
        self.spread, self.retry = spread, retry
        self.open: set[Tracked] = set()
        self.moved = 0  # watches ended to move them (for tests and /debug)
        self._rng = rng or random.Random()
        self._attempts: dict[Hashable, tuple[int, float]] = {}  # query -> (moves since the leader changed, when last)
        self._task: asyncio.Task[None] | None = None

    def track(self, up: Any, content_type: str, key: Hashable) -> Tracked:
        t = Tracked(up, content_type, key, time.monotonic())
        self.open.add(t)
        if self._task is None:
            try:
                self._task = tasks.spawn(self.run(), name="pool-watch-moves")
            except RuntimeError:  # no running loop (a Router used outside asyncio)
                pass
        return t

    def untrack(self, t: Tracked) -> None:
        self.open.discard(t)

    def due(self, t: Tracked, now: float, *, leader_changed: bool) -> bool:
        """Whether to move this watch now. Pure. After an election every open watch goes; otherwise one that has
        been open `retry` seconds and received an event or bookmark since it opened, and whose query was not moved
        in vain too often already (the wait doubles with each move since the leader changed, up to 32 x `retry`:
        a query the leader never serves, say a metadata-only watch, is not restarted every `retry` seconds)."""
        if t.ended:
            return False
        if leader_changed:
            return True
        count, last = self._attempts.get(t.key, (0, 0.0))
        if count and now - last < self.retry * 2 ** min(count - 1, 5):
            return False
        return now - t.opened >= self.retry and t.boundary.events > 0

    def elected(self, old: Any, new: Any) -> None:
        """The Router's role changed: a (new) leader to move to → every tracked watch, spread over `spread`."""
        leads = new.role.value in ("leader", "follower")
        if leads and (old.role, old.holder, old.leader_address) != (new.role, new.holder, new.leader_address):
            self._attempts.clear()
            self.sweep(leader_changed=True)

    def sweep(self, *, leader_changed: bool = False) -> int:
        if not self.ready():
            return 0
        now = time.monotonic()
        n = 0
        loop = asyncio.get_running_loop()
        for t in list(self.open):
            if self.due(t, now, leader_changed=leader_changed):
                t.opened = now + self.retry  # not picked again before its end fires
                loop.call_later(self._rng.uniform(0, self.spread), self._end, t)
                n += 1
        if n:
            log.info("pool: moving %d shared watch(es) from the API server to the leader over %.0fs", n, self.spread)
        return n

    def _end(self, t: Tracked) -> None:
        if t in self.open and not t.ended and self.ready():
            self.moved += 1
            count, _ = self._attempts.get(t.key, (0, 0.0))
            self._attempts[t.key] = (count + 1, time.monotonic())
            t.end()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def run(self) -> None:
        """Every retry/2 seconds: watches that came back upstream are moved again once they advanced."""
        while True:
            await asyncio.sleep(self.retry / 2)  # the re-check period, not synchronisation
            self.sweep()
