"""pool.moves: shared watches open upstream are ended at an event boundary, spread out, when a leader is named."""

import asyncio
import random
import struct

import pytest

from edgeproxy import tasks
from edgeproxy.pool import election, moves


def pb(*bodies):
    return b"".join(struct.pack(">I", len(b)) + b for b in bodies)


def test_boundary_passes_whole_protobuf_frames_only_whatever_the_chunking():
    stream = pb(b"a" * 5, b"", b"b" * 300, b"c")
    for size in (1, 3, 4, 7, 50, len(stream)):
        bnd = moves.Boundary("application/vnd.kubernetes.protobuf;stream=watch")
        out = b""
        for i in range(0, len(stream), size):
            got = bnd.feed(stream[i:i + size])
            out += got
            # what went out is always a whole number of frames
            assert bnd.events == sum(1 for _ in _frames(out))
        assert out == stream and bnd.events == 4


def _frames(data):
    pos = 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        assert pos + 4 + n <= len(data), "a partial frame went out"
        yield data[pos + 4:pos + 4 + n]
        pos += 4 + n


def test_boundary_passes_whole_json_lines_only():
    bnd = moves.Boundary("application/json")
    assert bnd.feed(b'{"type":"ADDED"') == b""
    assert bnd.feed(b'}\n{"type":"MOD') == b'{"type":"ADDED"}\n'
    assert bnd.feed(b'IFIED"}\n') == b'{"type":"MODIFIED"}\n' and bnd.events == 2


class FakeUp:
    def __init__(self):
        self.closed = False

    def close(self):
        self.closed = True


class Roles:
    def __init__(self):
        self.view = election.View(election.Role.CANDIDATE)

    def ready(self):
        return self.view.role in (election.Role.LEADER, election.Role.FOLLOWER)


def follower_of(holder, port=10270):
    return election.View(election.Role.FOLLOWER, holder, ("10.0.0.9", port))


@pytest.mark.timeout(10)
async def test_a_leader_named_ends_every_tracked_watch_within_the_spread_and_only_then():
    roles = Roles()
    m = moves.Moves(roles.ready, spread=0.2, retry=60, rng=random.Random(1))
    ups = [FakeUp() for _ in range(5)]
    tracked = [m.track(u, "application/json", f"/api/v1/services?watch=1&n={i}") for i, u in enumerate(ups)]
    old = roles.view
    m.elected(old, old)  # nothing changed: nothing moves
    assert m.sweep(leader_changed=True) == 0  # no leader: nothing moves
    roles.view = follower_of("n2")
    m.elected(old, roles.view)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not all(t.ended for t in tracked) and loop.time() < deadline:
        await asyncio.sleep(0.02)  # polling for the condition, bounded by the deadline
    assert all(t.ended for t in tracked) and m.moved == 5
    for t in tracked:
        m.untrack(t)
    # the same leader again: nothing to move; a new leader: the watches open now move
    u = m.track(FakeUp(), "application/json", "/api/v1/services?watch=1")
    m.elected(roles.view, roles.view)
    assert m.sweep() == 0  # not open for `retry` yet, nor advanced
    m.elected(roles.view, follower_of("n3"))
    deadline = loop.time() + 5
    while not u.ended and loop.time() < deadline:
        await asyncio.sleep(0.02)
    assert u.ended
    m.close()


async def test_a_watch_back_upstream_moves_again_only_once_it_advanced_and_less_often_each_time():
    roles = Roles()
    roles.view = follower_of("n2")
    m = moves.Moves(roles.ready, spread=0.0, retry=10)
    t = m.track(FakeUp(), "application/json", "/p")
    assert not m.due(t, t.opened + 11, leader_changed=False)  # no event since it opened: its resourceVersion is old
    t.feed(b'{"type":"BOOKMARK"}\n')
    assert not m.due(t, t.opened + 9, leader_changed=False)
    assert m.due(t, t.opened + 11, leader_changed=False)
    m._end(t)  # moved once (in vain: it comes back)
    t2 = m.track(FakeUp(), "application/json", "/p")
    t2.feed(b'{"type":"BOOKMARK"}\n')
    assert m.due(t2, t2.opened + 11, leader_changed=False)
    m._end(t2)
    t3 = m.track(FakeUp(), "application/json", "/p")
    t3.feed(b'{"type":"BOOKMARK"}\n')
    assert not m.due(t3, t3.opened + 11, leader_changed=False)  # twice in vain: waits 2 x retry
    assert m.due(t3, t3.opened + 21, leader_changed=False)
    assert m.due(t3, t3.opened, leader_changed=True)  # a new leader: at once
    m.close()


class BlockedUp:
    """An upstream response whose next read waits (a watch with no event): closing it would wake nothing (h2)."""

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.gate = asyncio.Event()
        self.cancelled = 0

    async def read(self):
        if self.chunks:
            return self.chunks.pop(0)
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return b""

    def close(self):
        pass


@pytest.mark.timeout(10)
async def test_ending_a_watch_stops_its_pending_read_and_sends_only_whole_events():
    roles = Roles()
    roles.view = follower_of("n2")
    m = moves.Moves(roles.ready, spread=0.0, retry=60)
    up = BlockedUp([pb(b"event-1") + pb(b"event-2")[:5]])  # one whole event, and the head of the next
    t = m.track(up, "application/vnd.kubernetes.protobuf;stream=watch", "/p")
    sent = []
    async def relay():
        while chunk := await t.read():
            if out := t.feed(chunk):
                sent.append(out)
    task = tasks.spawn(relay(), name="relay")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not sent and loop.time() < deadline:
        await asyncio.sleep(0.01)  # polling for the condition, bounded by the deadline
    assert sent == [pb(b"event-1")]  # the partial second event is held back
    m.sweep(leader_changed=True)  # the leader named: spread 0, ended at the next loop turn
    await asyncio.wait_for(task, 5)
    assert sent == [pb(b"event-1")] and up.cancelled == 1 and t.ended and m.moved == 1
    m.close()
