"""The write path: one thread, a bounded queue, group commit; the caller is never made to wait.

Callers (the proxy's event loop) enqueue operations and return at once. The writer thread drains everything
pending into one LMDB transaction and commits it (durable: fsync), then starts over; under load one commit carries
hundreds of events, and commits happen at most every `interval` seconds, which bounds fsyncs on slow flash. Past
`max_pending_bytes` of queued data, an operation is dropped instead of queued and its view is marked incomplete: a
client's stream is never held back by the disk. A failed transaction (map full, a bad item) is retried one
operation at a time; what still fails is counted and its view marked incomplete; nothing is raised to the caller.
Does not parse the wire (edgeproxy.autonomy.record does) and does not read. Neighbours: store (the transaction-level
writes), edgeproxy.autonomy.record (the caller).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence

import lmdb

from cache import errors
from cache import store as store_

log = logging.getLogger(__name__)

_ITEM_OVERHEAD = 128  # bytes a queued item costs beyond its raw bytes (name, labels, fields, tuple)
_READS_EVERY = 5.0  # seconds between saving last-read times (they only steer eviction)
_CHUNK_ITEMS = 512
# Commit latency (seconds) is counted into these buckets for the metrics module (which cannot live here: cache/
# knows nothing of the proxy); each commit adds one count, cheap enough for every commit.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_MAX_BATCH = 4096  # operations per transaction  # a list assembly hands items to the writer in chunks of this many


class Writer:
    """Owns the write transactions of one Store. start() it, close() it; flush() waits for what was enqueued."""

    __slots__ = (
        "_applied",
        "_broken_gens",
        "_closed",
        "_dropped",
        "_enqueued",
        "_last_reads",
        "_lock",
        "_lockfd",
        "_object_ops",
        "_queue",
        "_seq",
        "_thread",
        "_unsettled",
        "_wake",
        "commit_counts",
        "commit_seconds",
        "interval",
        "max_pending_bytes",
        "objects_unchanged",
        "store",
    )

    def __init__(self, store: store_.Store, *, max_pending_bytes: int = 64 << 20, interval: float = 0.005) -> None:
        self.store = store
        self.commit_counts = [0] * (len(COMMIT_BUCKETS) + 1)  # per bucket (not cumulative); the last is +Inf
        self.commit_seconds = 0.0  # sum of commit durations
        self.max_pending_bytes = max_pending_bytes
        self.interval = interval
        self._queue: collections.deque[tuple] = collections.deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._seq = 0
        self._enqueued = 0  # bytes ever queued (caller side)
        self._applied = 0  # bytes ever taken off the queue (writer side)
        self._dropped: dict[bytes, int] = {}  # view_id -> seq of the last operation dropped for it
        # view_id -> seq of the last operation that will mark it incomplete (queued or dropped, not yet committed)
        self._unsettled: dict[bytes, int] = {}
        self._broken_gens: set[bytes] = set()
        self._object_ops: dict[bytes, int] = {}  # object key -> its operations queued, not committed yet
        self.objects_unchanged = 0  # put_object calls that found the same body stored: nothing to write
        self._thread: threading.Thread | None = None
        self._lockfd: int | None = None
        self._closed = False
        self._last_reads = time.monotonic()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Writer:
        """Take the cache's writer lock, sweep lists a killed writer left half-assembled, start the thread."""
        fd = os.open(os.path.join(self.store.path, "writer.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            os.close(fd)
            raise errors.WriterBusy(f"another process writes the cache at {self.store.path}") from e
        self._lockfd = fd
        with self.store.env.begin(write=True) as txn:
            swept = self.store.sweep_staging(txn)
        if swept:
            log.info("cache: dropped %d list(s) left half-assembled by a previous process", swept)
        self._thread = threading.Thread(target=self._run, name="cache-writer", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float | None = 30.0) -> None:
        """Commit what is queued, stop the thread, release the lock. The Store stays open."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._put(("stop",), 0)
            self._thread.join(timeout)
        if self._lockfd is not None:
            os.close(self._lockfd)
            self._lockfd = None

    @property
    def pending_bytes(self) -> int:
        return self._enqueued - self._applied

    @property
    def pending_ops(self) -> int:
        return len(self._queue)

    def stats(self) -> dict:
        """The queue, for the metrics module (the store's counters are in Store.stats())."""
        return {"pending_bytes": self.pending_bytes, "pending_ops": self.pending_ops,
                "max_pending_bytes": self.max_pending_bytes}

    # ---------------------------------------------------------------- the caller's side: never blocks

    def _put(self, op: tuple, size: int, unsettles: bytes | None = None, obj: bytes | None = None) -> None:
        with self._lock:
            self._seq += 1
            self._enqueued += size
            self._queue.append((self._seq, size, op))
            if unsettles is not None:
                self._unsettled[unsettles] = self._seq
            if obj is not None:
                self._object_ops[obj] = self._object_ops.get(obj, 0) + 1
        if not self._wake.is_set():
            self._wake.set()

    def _put_data(self, view_id: bytes | None, op: tuple, size: int, obj: bytes | None = None) -> bool:
        """Queue a data operation unless the queue is past its bound; then remember the view lost a write."""
        with self._lock:
            self._seq += 1
            pending = self._enqueued - self._applied
            # past the bound: drop; one operation larger than the bound alone still goes when nothing is pending
            if self._closed or (pending and pending + size > self.max_pending_bytes):
                if view_id is not None:
                    self._dropped[view_id] = self._unsettled[view_id] = self._seq
                self.store.writes_dropped += 1
                wake = True
                queued = False
            else:
                self._enqueued += size
                self._queue.append((self._seq, size, op))
                if obj is not None:
                    self._object_ops[obj] = self._object_ops.get(obj, 0) + 1
                wake = not self._wake.is_set()
                queued = True
        if wake:
            self._wake.set()
        return queued

    def replace_view(self, key: store_.ViewKey, meta: store_.ViewMeta, items: Sequence[store_.Item]) -> None:
        """A whole list response: the view becomes exactly `items`, atomically."""
        items = list(items)
        self._put_data(key.view_id(), ("replace", key, meta, items), _size(items))

    def apply_events(self, key: store_.ViewKey, events: Sequence[tuple[str, store_.Item | None, str]]) -> None:
        """Watch events (type, Item|None, resourceVersion), in stream order. See Store.apply_events."""
        events = list(events)
        try:
            size = sum(len(e[1].raw) + _ITEM_OVERHEAD if e[1] is not None else 32 for e in events)
        except (TypeError, AttributeError, IndexError):  # malformed: fails in the writer, counted
            size = _ITEM_OVERHEAD * len(events)
        self._put_data(key.view_id(), ("events", key, events), size)

    def mark_incomplete(self, key: store_.ViewKey) -> None:
        """The view missed something (ERROR event, broken stream): offline it must not be served as complete."""
        self._put(("incomplete", key), 0, key.view_id())

    def unsettled(self, key: store_.ViewKey) -> bool:
        """Whether the view is about to be marked incomplete (a mark or a dropped write not committed yet): what
        the store says of it now is not to be trusted as complete."""
        return key.view_id() in self._unsettled

    def put_object(self, okey: store_.ObjectKey, body: bytes) -> None:
        """A single-object GET answer. When the store already holds exactly this body for it and no write to it is
        queued, there is nothing to write: a client polling an object that does not change costs a read, not a
        transaction (the store's bytes are compared, not a remembered digest: another process may purge them)."""
        k = okey.key()
        if k not in self._object_ops and self.store.holds_object(okey, body, k):
            self.objects_unchanged += 1
            return
        if not self._put_data(None, ("object", okey, body), len(body) + _ITEM_OVERHEAD, k):
            self._put(("delobject", okey), 0, obj=k)  # better no answer offline than an outdated one

    def delete_object(self, okey: store_.ObjectKey) -> None:
        self._put(("delobject", okey), 0, obj=okey.key())

    def put_blob(self, client: str, name: str, body: bytes) -> None:
        self._put_data(None, ("blob", client, name, body), len(body) + _ITEM_OVERHEAD)

    def begin_list(self, key: store_.ViewKey, kind: str, api_version: str) -> ListAssembly:
        """A list that arrives in pieces: chunks (limit/continue) or a watch-list's initial ADDED events."""
        return ListAssembly(self, key, kind, api_version)

    async def flush(self) -> None:
        """Wait until everything enqueued before this call is committed (or has failed and been counted)."""
        if self._thread is None or not self._thread.is_alive():
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def done() -> None:
            loop.call_soon_threadsafe(_resolve, fut)

        self._put(("flush", done), 0)
        await fut

    def flush_sync(self, timeout: float | None = None) -> bool:
        if self._thread is None or not self._thread.is_alive():
            return True
        event = threading.Event()
        self._put(("flush", event.set), 0)
        return event.wait(timeout)

    # ---------------------------------------------------------------- the writer thread

    def _run(self) -> None:
        stop = False
        while not stop:
            self._wake.wait(_READS_EVERY)
            self._wake.clear()
            started = time.monotonic()
            ops: list[tuple] = []
            popleft = self._queue.popleft
            for _ in range(_MAX_BATCH):  # bounded: a commit's latency (and its hold on the GIL) stays small
                try:
                    ops.append(popleft())
                except IndexError:
                    break
            else:
                self._wake.set()  # more is pending: go round again at once
            with self._lock:
                dropped, self._dropped = self._dropped, {}
            reads_due = started - self._last_reads >= _READS_EVERY and self.store.reads_pending()
            if ops or dropped or reads_due:
                try:
                    stop = self._commit(ops, dropped)
                except Exception:  # the writer must outlive anything; the batch is counted as failed
                    log.exception("cache writer: batch failed")
                    self.store.writes_failed += len(ops)
                    stop = any(op[2][0] == "stop" for op in ops)
                    self._finish(ops, dropped)
            # Let go of the batch before sleeping and waiting: a big list's items would otherwise stay alive (tens
            # of MB for a 10k-pod list) until the next write came along.
            ops = dropped = None
            spent = time.monotonic() - started
            if not stop and spent < self.interval:
                time.sleep(self.interval - spent)  # pace commits: at most one fsync per interval

    def _observe_commit(self, seconds: float) -> None:
        # The whole transaction, fsync included: what a burst of watch events waits for before it is on disk.
        self.commit_seconds += seconds
        for i, bound in enumerate(COMMIT_BUCKETS):
            if seconds <= bound:
                self.commit_counts[i] += 1
                return
        self.commit_counts[-1] += 1

    def _finish(self, ops: list[tuple], dropped: dict[bytes, int] | None = None) -> None:
        self._applied += sum(op[1] for op in ops)
        settled = max([op[0] for op in ops] + list((dropped or {}).values()), default=0)
        if self._unsettled:
            with self._lock:  # marks up to this batch are in the store now (or in Store._stale)
                for view_id, seq in list(self._unsettled.items()):
                    if seq <= settled:
                        del self._unsettled[view_id]
        if self._object_ops:
            with self._lock:  # these objects are as the store says now (written, or failed and counted)
                for _, _, op in ops:
                    if op[0] in ("object", "delobject"):
                        k = op[1].key()
                        left = self._object_ops.get(k, 0) - 1
                        if left > 0:
                            self._object_ops[k] = left
                        else:
                            self._object_ops.pop(k, None)
        for _, _, op in ops:
            if op[0] == "flush":
                op[1]()

    def _commit(self, ops: list[tuple], dropped: dict[bytes, int]) -> bool:
        st = self.store
        saved = {name: getattr(st, name) for name in _WRITER_COUNTERS}
        reads = None
        now = time.monotonic()
        if now - self._last_reads >= _READS_EVERY:
            self._last_reads = now
            reads = st.take_reads()
        try:
            with st.env.begin(write=True) as txn:
                persisted = st.persist_stale(txn)  # first: a list in this batch may make such a view whole again
                reset = self._apply_all(txn, ops)
                self._mark_dropped(txn, dropped, reset)
                if reads:
                    st.apply_reads(txn, reads)
                st.evict(txn)
                st.commits += 1
                st.save_counters(txn)
            st.stale_persisted(persisted)
            self._observe_commit(time.monotonic() - now)
        except Exception as e:
            for name, value in saved.items():
                setattr(st, name, value)
            log.warning("cache: a group commit of %d operations failed (%s); retrying them one by one", len(ops), e)
            self._one_by_one(ops, dropped, e)
        self._finish(ops, dropped)
        return any(op[2][0] == "stop" for op in ops)

    def _apply_all(self, txn, ops: list[tuple]) -> dict[bytes, int]:
        """Apply in order; consecutive event batches of one view are merged into one call (one meta update)."""
        reset: dict[bytes, int] = {}
        pending: dict[bytes, tuple[store_.ViewKey, list]] = {}
        st = self.store
        for seq, _, op in ops:
            kind = op[0]
            if kind == "events":
                key = op[1]
                view_id = key.view_id()
                if view_id in pending:
                    pending[view_id][1].extend(op[2])
                else:
                    pending[view_id] = (key, list(op[2]))
                continue
            view_id = _view_of(op)
            if view_id is not None and view_id in pending:
                key, events = pending.pop(view_id)
                st.apply_events(txn, key, events)
            self._apply(txn, op)
            if kind in ("replace", "commit") and view_id is not None:
                reset[view_id] = seq
        for key, events in pending.values():
            st.apply_events(txn, key, events)
        return reset

    def _apply(self, txn, op: tuple) -> None:
        st = self.store
        kind = op[0]
        if kind == "replace":
            st.apply_replace(txn, op[1], op[2], op[3])
        elif kind == "events":
            st.apply_events(txn, op[1], op[2])
        elif kind == "stage":
            if op[1] not in self._broken_gens:
                st.apply_stage(txn, op[1], op[2], op[3], op[4])
        elif kind == "commit":
            gen, key, meta = op[1], op[2], op[3]
            if gen in self._broken_gens:
                self._broken_gens.discard(gen)
                st.apply_abort(txn, gen)
                st.apply_mark_incomplete(txn, key)
            else:
                st.apply_commit(txn, gen, key, meta, op[4])
        elif kind == "abort":
            self._broken_gens.discard(op[1])
            st.apply_abort(txn, op[1])
        elif kind == "incomplete":
            st.apply_mark_incomplete(txn, op[1])
        elif kind == "object":
            st.apply_put_object(txn, op[1], op[2])
        elif kind == "delobject":
            st.apply_delete_object(txn, op[1])
        elif kind == "blob":
            st.apply_put_blob(txn, op[1], op[2], op[3])
        # "flush" and "stop" act after the commit

    def _mark_dropped(self, txn, dropped: dict[bytes, int], reset: dict[bytes, int]) -> None:
        # A drop after the view's last replacement in this batch means the view lacks a change: incomplete.
        for view_id, seq in dropped.items():
            if reset.get(view_id, 0) < seq:
                self.store.apply_mark_incomplete(txn, view_id)

    def _one_by_one(self, ops: list[tuple], dropped: dict[bytes, int], first: Exception) -> None:
        st = self.store
        failed_views: set[bytes] = set(dropped)
        map_full = isinstance(first, lmdb.MapFullError)
        for _seq, _, op in ops:
            if op[0] in ("flush", "stop"):
                continue
            try:
                with st.env.begin(write=True) as txn:
                    if op[0] == "events":
                        st.apply_events(txn, op[1], op[2])
                    else:
                        self._apply(txn, op)
                    st.commits += 1
            except Exception as e:
                st.writes_failed += 1
                if isinstance(e, lmdb.MapFullError):
                    map_full = True
                view_id = _view_of(op)
                if view_id is not None:
                    failed_views.add(view_id)
                if op[0] == "stage":
                    self._broken_gens.add(op[1])
                elif op[0] == "commit":
                    self._broken_gens.discard(op[1])
                    self._try(lambda txn, g=op[1]: st.apply_abort(txn, g))
            else:
                if op[0] in ("replace", "commit"):
                    failed_views.discard(_view_of(op))
        if map_full:
            st.map_full += 1
        for view_id in failed_views:
            if not self._try(lambda txn, v=view_id: st.apply_mark_incomplete(txn, v)):
                st.mark_stale(view_id)  # the db could not even take the flag: report it incomplete from memory
        self._try(st.save_counters)

    def _try(self, fn: Callable) -> bool:
        try:
            with self.store.env.begin(write=True) as txn:
                fn(txn)
            return True
        except Exception:
            return False


class ListAssembly:
    """A list arriving in pieces, committed as the view's new content only when the last piece arrived.

    Chunked lists (limit/continue): add() each chunk's items, commit(rv) after the chunk without a continue token.
    Watch-list (sendInitialEvents=true): add() each initial ADDED object, commit(rv) at the BOOKMARK annotated
    k8s.io/initial-events-end (KEP-3157); later events go to Writer.apply_events. abort() (or leaving a `with`
    block without commit) discards the pieces; the view keeps its previous content. Items go to LMDB in chunks as
    they come (a staging generation), not held in memory.
    """

    __slots__ = ("_buffer", "_done", "_lost", "_writer", "api_version", "count", "gen", "key", "kind")

    def __init__(self, writer: Writer, key: store_.ViewKey, kind: str, api_version: str) -> None:
        self._writer = writer
        self.key = key
        self.kind = kind
        self.api_version = api_version
        self.gen = writer.store.new_gen()
        self._buffer: list[store_.Item] = []
        self._lost = False
        self._done = False
        self.count = 0

    def add(self, items: Iterable[store_.Item]) -> None:
        if self._done:
            return
        self._buffer.extend(items)
        if len(self._buffer) >= _CHUNK_ITEMS:
            self._ship()

    def _ship(self) -> None:
        items, self._buffer = self._buffer, []
        if not items or self._lost:
            return
        first = self.count == 0
        self.count += len(items)
        op = ("stage", self.gen, self.key, items, first)
        if not self._writer._put_data(self.key.view_id(), op, _size(items)):
            self._lost = True

    def commit(self, resource_version: str, *, complete: bool = True) -> None:
        if self._done:
            return
        self._ship()
        self._done = True
        w = self._writer
        if self._lost:  # a piece was dropped: the previous content stays, and is no longer the latest
            w._put(("abort", self.gen), 0)
            w._put(("incomplete", self.key), 0, self.key.view_id())
            return
        meta = store_.ViewMeta(self.kind, self.api_version, resource_version, complete, time.time())
        w._put(("commit", self.gen, self.key, meta, self.count), 0)

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = []
        self._writer._put(("abort", self.gen), 0)

    def __enter__(self) -> ListAssembly:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()


_WRITER_COUNTERS = ("commits", "events_applied", "events_ignored", "lists_replaced", "lists_behind", "evictions")


def _size(items: Sequence[store_.Item]) -> int:
    try:
        return sum(len(i.raw) for i in items) + _ITEM_OVERHEAD * len(items)
    except (TypeError, AttributeError):  # a malformed item fails in the writer, counted; never in the caller
        return _ITEM_OVERHEAD * len(items)


def _view_of(op: tuple) -> bytes | None:
    kind = op[0]
    if kind in ("replace", "events", "incomplete"):
        return op[1].view_id()
    if kind in ("stage", "commit"):
        return op[2].view_id()
    return None


def _resolve(fut: asyncio.Future) -> None:
    with contextlib.suppress(asyncio.InvalidStateError):
        fut.set_result(None)
