"""The tee into the cache: upstream answers (list, get, watch, discovery) become cache writes, off the client's path.

Implements the proxy's recorder seam: `Recorder.begin(info, status, headers)` picks a sink for a response it can
cache; the proxy calls `sink.feed(chunk)` for every body chunk it wrote to the client and `sink.done(ok)` at the end.
feed() only hands the bytes to one parsing thread (a FIFO, so pages and events keep their order) and returns; the
thread parses with kube.protobuf / kube.jsonscan and enqueues to the cache Writer, which never blocks either. Past
`max_pending_bytes` of unparsed bytes a response is dropped (a watch's view marked incomplete; a response alone is
always taken): the client is never slowed down by the cache. The parsing thread itself waits for the writer to
drain between the pieces of a big list, so a 50k-pod list is recorded rather than dropped. An object answer has
nothing to parse: it goes straight to the Writer, which skips it when the store holds those bytes already.

What is recorded:
- a list replaces its view (a chunked list is assembled and committed at its last chunk); a list at the
  resourceVersion its complete view already has is not parsed again;
- a watch applies its events to the view of the same query; a watch-list (sendInitialEvents=true) becomes the view at
  its k8s.io/initial-events-end bookmark; a watch-list that breaks before it is dropped, the old view untouched;
- a single-object GET is stored as the answer to that GET (a 404 removes it: better no answer offline than a stale
  one); the node agent's Lease PUT and node status PATCH answers refresh the stored GET of that Lease and Node;
- discovery (/version, /api, /apis, /apis/G/V) per client and representation;
- TokenRequest answers go to tokens.TokenBook.

A plain watch that breaks (the upstream died, a timeout) leaves its view as it was: consistent at the last event's
resourceVersion, which is what offline clients are then served. An event that cannot be parsed marks the view
incomplete (the view would miss a change). Neighbours: proxy (calls the seam), cache.writer (writes), views (keys),
tokens, kube.* (parsing).
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import logging
import re
import threading
import time
import zlib
from typing import Any

from cache import store
from cache import writer as cache_writer
from edgeproxy import memory
from edgeproxy.autonomy import tokens as tokens_
from edgeproxy.autonomy import views
from edgeproxy.kube import errors, jsonscan, jsonwire, protobuf, watch

log = logging.getLogger(__name__)

INITIAL_EVENTS_END = "k8s.io/initial-events-end"
MAX_PENDING_BYTES = 256 << 20  # unparsed bytes queued to the parsing thread before responses are dropped
CHUNK_TTL = 300.0  # seconds a chunked list may take between pages before its pieces are dropped
BIG_LIST = 2000  # items: a longer list is handed to the writer in pieces of this many, as the writer drains
WRITER_WAIT = 60.0  # seconds the parsing thread waits for the writer per piece before handing it over anyway
# The parsing thread naps NAP seconds after every SLICE bytes of list items it decoded. Parsing holds the GIL, and a
# thread that never lets go keeps it for the interpreter's whole switch interval (5 ms) each time the event loop
# asks. Measured with 10k-pod JSON lists recorded back to back (each a new view): small GETs beside them went from
# p90 ~12 ms / p99 ~80 ms to p90 ~7 ms / p99 ~25 ms (medians of 4 interleaved runs on a shared 2-core machine), and
# the lists themselves were forwarded faster; p50 rose a little (0.4 -> 0.6 ms), and recording 65 MB takes ~0.15 s
# longer (2,000 naps). time.sleep(0) every few items measured no better than no nap.
SLICE = 32 << 10
NAP = 0.00005


class Recorder:
    """The recorder seam of edgeproxy.proxy. One per process."""

    __slots__ = ("_chunks", "_gets", "_handed", "_lock", "_objects_queued", "_owns_writer", "_pending", "_pool",
                 "dropped", "errors", "max_pending_bytes", "tokens", "unchanged", "writer")

    def __init__(self, writer: cache_writer.Writer, *, tokens: tokens_.TokenBook | None = None,
                 max_pending_bytes: int = MAX_PENDING_BYTES, owns_writer: bool = False) -> None:
        self.writer = writer
        self._owns_writer = owns_writer  # close() then commits what is queued and closes the writer and its store
        self.tokens = tokens
        self.max_pending_bytes = max_pending_bytes
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="record")
        self._lock = threading.Lock()
        self._pending = 0
        self._objects_queued = 0  # object answers handed to the parsing thread, not yet passed on to the writer
        # continue token -> (view key, assembly, last page time); touched only by the parsing thread
        self._chunks: dict[tuple[store.ViewKey, str], tuple[cache_writer.ListAssembly, float]] = {}
        # view key -> resourceVersion of the whole list last handed to the writer for it; parsing thread only
        self._handed: dict[store.ViewKey, str] = {}
        self.dropped = 0  # responses dropped because parsing fell behind
        self.errors = 0  # responses or events that did not parse
        self.unchanged = 0  # lists skipped: their complete view already held that resourceVersion
        # (id(info), Content-Type) -> (info, the handler storing its 200 answer, or None): clients repeat their GETs and
        # the classifier hands back the same info for the same request, so an object's key is worked out once
        self._gets: dict[tuple[int, str], tuple[Any, Any]] = {}

    # ---------------------------------------------------------------- the seam

    def begin(self, info: Any, status: int, headers: Any) -> _Sink | None:
        """A sink for a response worth caching, or None. Called before the first body byte."""
        content_type = headers.get("Content-Type", "")
        verb = info.verb
        if verb == "get" and status == 200:
            hit = self._gets.get((id(info), content_type))
            if hit is not None and hit[0] is info:  # (an entry holds its info: its id is not reused meanwhile)
                if hit[1] is None:
                    return None
                gzip = "Content-Encoding" in headers and headers["Content-Encoding"].lower() == "gzip"
                return _Sink(self, gzip, hit[1], object_=True)
        gzip = headers.get("Content-Encoding", "").lower() == "gzip"
        if not info.is_resource:
            if verb == "get" and status == 200 and views.is_discovery(info.path):
                name = views.blob_name(info.path, content_type)
                return _Sink(self, gzip, lambda body: self.writer.put_blob(info.client.key, name, body))
            return None
        encoding = views.encoding_of(content_type)
        if verb == "create" and info.resource == "serviceaccounts" and info.subresource == "token":
            if status == 201 and self.tokens is not None and encoding:
                return _Sink(self, gzip, lambda body: self._token(info, body, content_type))
            return None
        if encoding is None:
            self._remember_get(info, status, content_type, None)
            return None
        produced = _produced(info)
        if produced == "Table" or (produced and produced != views.POM):
            self._remember_get(info, status, content_type, None)
            return None  # a Table (whose Content-Type is plain application/json) is not cached: served plain offline
        shape = views.shape_of(content_type) or produced
        if verb == "get" and not info.subresource:
            okey = views.object_key(info, shape=shape, encoding=encoding)
            if status == 200:
                handle = functools.partial(self.writer.put_object, okey)
                self._remember_get(info, status, content_type, handle)
                return _Sink(self, gzip, handle, object_=True)
            if status == 404:
                self.writer.delete_object(okey)
            return None
        self._remember_get(info, status, content_type, None)
        if status != 200:
            return None
        if verb == "list":
            key = views.safe_view_key(info, shape=shape, encoding=encoding)
            if key is None:
                return None
            unchanged = None if info.continue_ else lambda head: self._unchanged(key, encoding, head)
            return _Sink(self, gzip, lambda body: self._list(info, key, encoding, body), unchanged)
        if verb == "watch":
            key = views.safe_view_key(info, shape=shape, encoding=encoding)
            if key is None:
                return None
            return _WatchSink(self, gzip, _WatchState(self, key, info.resource, encoding,
                                                      bool(info.send_initial_events)))
        if (verb, info.subresource or "") in (("update", ""), ("patch", "status")) and info.resource in ("leases",
                                                                                                      "nodes"):
            # the node agent's heartbeat answers: the freshest Lease and Node the API server gave, for GETs offline
            okey = views.object_key(info, shape="", encoding=encoding)
            return _Sink(self, gzip, lambda body: self.writer.put_object(okey, body), object_=True)
        return None

    def _remember_get(self, info: Any, status: int, content_type: str, handle: Any) -> None:
        if info.verb == "get" and status == 200:
            if len(self._gets) >= GETS_REMEMBERED:
                self._gets.clear()
            self._gets[(id(info), content_type)] = (info, handle)

    # ---------------------------------------------------------------- the parsing thread

    def _submit(self, size: int, fn: Any, *args: Any) -> bool:
        with self._lock:
            if self._pending and self._pending + size > self.max_pending_bytes:  # alone, any size is taken
                self.dropped += 1
                return False
            self._pending += size
        self._pool.submit(self._run, size, fn, *args)
        return True

    def _object(self, size: int, fn: Any) -> None:
        """An object answer through the parsing thread (gzip, or big), counted so that a later answer of the same
        object does not overtake it on the direct path (see _Sink.done)."""
        with self._lock:
            self._objects_queued += 1

        def run() -> None:
            try:
                fn()
            finally:
                with self._lock:
                    self._objects_queued -= 1

        if not self._submit(size, run):
            with self._lock:
                self._objects_queued -= 1

    def _run(self, size: int, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # a bad response must not stop the thread that records all others
            self.errors += 1
            log.exception("record: could not record a response")
        finally:
            with self._lock:
                self._pending -= size
            memory.trim(size)  # a big body and its parse buffers are freed now: give that heap back

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything handed over so far was parsed and enqueued to the writer (tests, shutdown)."""
        self._pool.submit(lambda: None).result(timeout)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self._owns_writer:  # at exit: commit what was handed over (the writer thread is a daemon), then close
            self.writer.close()
            self.writer.store.close()

    def _list(self, info: Any, key: store.ViewKey, encoding: str, body: bytes) -> None:
        if not info.continue_ and self._unchanged(key, encoding, body):
            self.unchanged += 1
            return
        resource = info.resource
        if encoding == "protobuf":
            u = protobuf.unwrap(body)
            if not u.kind.endswith("List"):
                return
            parts = protobuf.parse_list(u.raw)
            kind, api_version = u.kind, u.api_version
            pace = _Pacer()
            raws, make = parts.items, lambda raw: pace(_item(resource, encoding, raw))
        else:
            # msgspec finds the items' spans without decoding them (no copies yet), then each item's metadata
            # is decoded alone into typed structs (jsonscan): 4x the stdlib decoder's speed, and no dicts for the
            # garbage collector to walk. An indented body (?pretty, curl) is stored compact, as client-go gets it.
            pretty = body[1:2] == b"\n"
            pace = _Pacer()
            parts = jsonscan.scan_list(body, copy=False)
            kind, api_version = parts.kind, parts.api_version
            raws, make = parts.items, lambda raw: pace(_json_item(resource, raw, pretty))
        now = time.monotonic()
        self._expire_chunks(now)
        asked = info.continue_
        if not asked and not parts.continue_ and len(raws) <= BIG_LIST:
            items = [make(raw) for raw in raws]
            self.writer.replace_view(key, store.ViewMeta(kind, api_version, parts.resource_version, True), items)
            self._hand(key, parts.resource_version)
            return
        if asked:
            found = self._chunks.pop((key, asked), None)
            if found is None:
                return  # a page of a list whose start we did not see: nothing to assemble it into
            assembly = found[0]
        else:
            assembly = self.writer.begin_list(key, kind, api_version)
        for i in range(0, len(raws), BIG_LIST):
            self._wait_for_writer()
            assembly.add([make(raw) for raw in raws[i : i + BIG_LIST]])
        if parts.continue_:
            self._chunks[(key, parts.continue_)] = (assembly, now)
        else:
            assembly.commit(parts.resource_version)
            self._hand(key, parts.resource_version)

    def _hand(self, key: store.ViewKey, resource_version: str) -> None:
        if len(self._handed) >= 4096:
            self._handed.clear()  # only an optimisation (see _unchanged): forgetting is always safe
        self._handed[key] = resource_version

    def _wait_for_writer(self) -> None:
        """Back-pressure inside the parsing thread (never on a client): a big list goes to the writer piece by piece
        as it drains, instead of overflowing its bound and being dropped."""
        deadline = time.monotonic() + WRITER_WAIT
        bound = self.writer.max_pending_bytes // 2
        while self.writer.pending_bytes > bound and time.monotonic() < deadline:
            time.sleep(0.005)

    def _unchanged(self, key: store.ViewKey, encoding: str, body: bytes) -> bool:
        """Whether a whole list repeats what its complete view already holds: the same resourceVersion is the same
        state (etcd revisions), so a client relisting at an unchanged version costs one header read, not a parse.
        `body` may be the list's first bytes only (HEAD bytes hold the list's metadata as the API server writes it);
        False when they do not tell."""
        if encoding == "protobuf":
            found = _pb_list_meta(body)
            if found is None:
                return False
            rv, cont = found
        else:
            m = _JSON_LIST_META.match(body, 0, 1024)
            if m is None:
                return False
            rv, cont = m.group(1).decode(), ""
            if b'"continue"' in body[m.start() : m.end()]:
                return False
        if cont or not rv:
            return False
        if self._handed.pop(key, None) == rv:
            # The same version was handed to the writer a moment ago (a client relisting while the last list is
            # still being written): wait for that commit rather than parse the same list again. The wait is this
            # thread's only, and the decision below is then made on what the store holds, as for any list.
            self.writer.flush_sync(WRITER_WAIT)
        if self.writer.unsettled(key):  # marked incomplete a moment ago, not committed yet: the store's "complete"
            return False  # is stale, and only this list can make the view whole again
        meta = self.writer.store.view(key)
        if meta is None or not meta.complete or not meta.resource_version:
            return False
        return rv == meta.resource_version

    def _expire_chunks(self, now: float) -> None:
        for k, (assembly, at) in list(self._chunks.items()):
            if now - at > CHUNK_TTL:
                assembly.abort()
                del self._chunks[k]

    def _token(self, info: Any, body: bytes, content_type: str) -> None:
        assert self.tokens is not None
        ask = tokens_.read_request(body, content_type, info.namespace or "", info.name or "")
        self.tokens.remember(ask, body, content_type)


# The head of a JSON list as the API server writes it: kind, apiVersion, then metadata with resourceVersion first.
_JSON_LIST_META = re.compile(rb'\s*\{\s*"kind"\s*:\s*"[^"]*"\s*,\s*"apiVersion"\s*:\s*"[^"]*"\s*,\s*"metadata"\s*:\s*'
                             rb'\{\s*"resourceVersion"\s*:\s*"(\d+)"[^{}]*\}')


def _pb_list_meta(head: bytes) -> tuple[str, str] | None:
    """(resourceVersion, continue) of a protobuf list body, reading only its ListMeta (the list's first field) from
    the body's first bytes; None when they do not hold it whole."""
    buf = memoryview(head)
    end = len(buf)
    pos = 4  # the magic
    try:
        while pos < end:  # the Unknown envelope: 1 typeMeta, 2 raw, 3 contentEncoding, 4 contentType (all LEN)
            tag, pos = protobuf.read_varint(buf, pos)
            if tag & 7 != protobuf.LEN:
                return None
            n, pos = protobuf.read_varint(buf, pos)
            if tag >> 3 != 2:
                pos += n
                continue
            tag, p = protobuf.read_varint(buf, pos)
            if tag >> 3 != 1 or tag & 7 != protobuf.LEN:
                return "", ""
            m, p = protobuf.read_varint(buf, p)
            if p + m > min(end, pos + n):
                return None
            meta = {g: bytes(x).decode() for g, wt, x in protobuf.iter_fields(buf[p : p + m]) if wt == protobuf.LEN}
            return meta.get(2, ""), meta.get(3, "")
    except (errors.DecodeError, UnicodeDecodeError):
        return None
    return None


def _produced(info: Any) -> str:
    """The `as=` the API server answered with: the first Accept clause it can serve ("" plain, PartialObjectMetadata,
    Table). The response's Content-Type does not say: it is the bare media type (wire brief §4)."""
    for m in getattr(info, "accept", ()) or ():
        enc = getattr(m, "encoding", None)
        if enc is None and "*" not in (m.type, m.subtype):
            continue
        as_ = getattr(m, "as_", "") or ""
        if as_ == "Table" and enc == "protobuf":
            continue  # Table has no protobuf form; the server skips the clause
        return views.POM if as_ in (views.POM, views.POM + "List") else as_
    return ""


def _item(resource: str, encoding: str, raw: bytes) -> store.Item:
    if encoding == "protobuf":
        meta, fields = protobuf.extract(resource, raw)
    else:
        meta, fields = jsonscan.extract(resource, raw)
    return store.Item(meta.name, meta.namespace, meta.resource_version, meta.labels, fields, bytes(raw))


def _json_item(resource: str, raw: Any, pretty: bool) -> store.Item:
    raw = bytes(raw)  # a msgspec.Raw view into the list body: the item's own copy is made here
    meta, fields = jsonscan.extract(resource, raw)
    if pretty:
        raw = jsonwire.compact(raw)
    return store.Item(meta.name, meta.namespace, meta.resource_version, meta.labels, fields, raw)


class _Pacer:
    """Counts the bytes of the items made; naps (letting the event loop have the GIL) every SLICE of them."""

    __slots__ = ("_left",)

    def __init__(self) -> None:
        self._left = SLICE

    def __call__(self, item: store.Item) -> store.Item:
        self._left -= len(item.raw)
        if self._left <= 0:
            self._left = SLICE
            time.sleep(NAP)
        return item


HEAD = 4096  # bytes of a list body that hold its metadata, for `unchanged`
GETS_REMEMBERED = 4096  # Recorder.begin's decisions on GETs kept (an entry: a RequestInfo and an ObjectKey)
DIRECT_MAX = 256 << 10  # an object answer up to this size goes to the writer from the caller's thread


class _Sink:
    """Buffers a whole response body; at a clean end hands it to the parsing thread.

    unchanged(head) -> bool, when given, is asked first (in the parsing thread) with the body's first HEAD bytes:
    True drops the body unjoined (a big list is not copied once more only to be skipped). An object answer (object_)
    has nothing to parse: it goes to the writer at once, from the caller (the writer never blocks), unless it must be
    inflated or is big, or an earlier answer of an object still waits in the parsing thread (it must not be
    overtaken). Two thread hand-offs per GET were most of what recording cost a small GET."""

    __slots__ = ("_chunks", "_gzip", "_handle", "_object", "_recorder", "_size", "_unchanged")

    def __init__(self, recorder: Recorder, gzip: bool, handle: Any, unchanged: Any = None,
                 object_: bool = False) -> None:
        self._recorder = recorder
        self._gzip = gzip
        self._handle = handle
        self._unchanged = unchanged if not gzip else None
        self._object = object_
        self._chunks: list[bytes] = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)

    def done(self, ok: bool) -> None:
        chunks, self._chunks = self._chunks, []
        if not ok:
            return  # a truncated body tells nothing for sure
        gzip, handle, unchanged, recorder = self._gzip, self._handle, self._unchanged, self._recorder
        if self._object and not gzip and self._size <= DIRECT_MAX and not recorder._objects_queued:
            try:
                handle(b"".join(chunks))  # bytes, whatever the chunks are (one bytes chunk: itself)
            except Exception:  # counted as the parsing thread counts its failures; never the client's problem
                recorder.errors += 1
                log.exception("record: could not record a response")
            return

        whole = self._object  # an object answer is stored as it came: bytes

        def parse() -> None:
            if unchanged is not None and unchanged(_head(chunks)):
                recorder.unchanged += 1
                return
            body = b"".join(chunks) if whole else _join(chunks)
            handle(zlib.decompress(body, 31) if gzip else body)

        if self._object:
            recorder._object(self._size, parse)
        else:
            recorder._submit(self._size, parse)


def _join(chunks: list[bytes]) -> bytes | bytearray:
    """The chunks as one buffer, each chunk let go as it is copied: a big list's body is held about once, not twice
    (the chunks and the joined copy) while it is parsed. The list parsers read a bytearray as they read bytes."""
    if len(chunks) == 1:
        return chunks.pop()
    buf = bytearray()
    chunks.reverse()
    while chunks:
        buf += chunks.pop()  # grown in place (realloc/mremap): no second copy of what is already in
    return buf


def _head(chunks: list[bytes]) -> bytes:
    size = 0
    for n, chunk in enumerate(chunks, 1):
        size += len(chunk)
        if size >= HEAD:
            return b"".join(chunks[:n])[:HEAD] if n > 1 else chunk[:HEAD]
    return b"".join(chunks)


class _WatchState:
    """A watch stream being applied to its view; lives in the parsing thread."""

    __slots__ = ("assembly", "broken", "decomp", "encoding", "key", "recorder", "resource", "splitter")

    def __init__(self, recorder: Recorder, key: store.ViewKey, resource: str, encoding: str,
                 watch_list: bool) -> None:
        self.recorder = recorder
        self.key = key
        self.resource = resource
        self.encoding = encoding
        self.splitter = watch.ProtobufSplitter() if encoding == "protobuf" else watch.JsonSplitter()
        self.assembly: cache_writer.ListAssembly | None = None
        self.decomp: Any = None
        self.broken = False
        if watch_list:
            self.assembly = recorder.writer.begin_list(key, "", "")

    def process(self, chunk: bytes) -> None:
        if self.broken:
            return
        try:
            if self.decomp is not None:
                chunk = self._gunzip(chunk)
            frames = self.splitter.feed(chunk)
            events = [self._event(f) for f in frames]
        except (errors.KubeError, zlib.error) as e:
            self.fail(f"undecodable watch stream: {e}")
            return
        out: list[tuple[str, store.Item | None, str]] = []
        for typ, item, rv, end in events:
            if self.assembly is not None:
                if typ in ("ADDED", "MODIFIED") and item is not None:
                    self.assembly.add([item])
                elif typ == "BOOKMARK" and end:
                    self.assembly.commit(rv)
                    self.assembly = None
                elif typ == "ERROR":
                    self.end(False)
                    return
                continue
            if typ == "ERROR":
                # 410 and friends: the stream stops here; the view stays consistent at what it had applied
                break
            out.append((typ, item, rv))
        if out:
            self.recorder.writer.apply_events(self.key, out)

    def _gunzip(self, chunk: bytes) -> bytes:
        """kube-apiserver gzips a watch event by event: each one is a gzip member of its own, flushed as it goes.
        A member's end starts the next one (the bytes past it, or the next chunk)."""
        out = []
        while True:
            out.append(self.decomp.decompress(chunk))
            if not self.decomp.eof:
                return b"".join(out)
            chunk = self.decomp.unused_data
            self.decomp = zlib.decompressobj(31)
            if not chunk:
                return b"".join(out)

    def _event(self, frame: bytes) -> tuple[str, store.Item | None, str, bool]:
        if self.encoding == "protobuf":
            ev = protobuf.decode_event(frame)
            typ, raw = ev.type, ev.raw
            if self.assembly is not None and not self.assembly.kind and ev.kind:
                self.assembly.kind, self.assembly.api_version = ev.kind + "List", ev.api_version
        else:
            jev = jsonscan.decode_event(frame)
            typ, raw = jev.type, jev.obj
            if self.assembly is not None and not self.assembly.kind and typ != "ERROR":
                self.assembly.kind, self.assembly.api_version = _json_kind(raw)
            if typ != "ERROR":
                raw = jsonwire.untyped(raw)
        if typ == "ERROR":
            return typ, None, "", False
        if typ == "BOOKMARK":
            meta = protobuf.object_meta(raw) if self.encoding == "protobuf" else jsonscan.extract("", raw)[0]
            return typ, None, meta.resource_version, meta.annotations.get(INITIAL_EVENTS_END) == "true"
        item = _item(self.resource, self.encoding, raw)
        return typ, item, item.resource_version, False

    def end(self, ok: bool) -> None:
        if self.assembly is not None:  # a watch-list that never reached its initial-events-end bookmark
            self.assembly.abort()
            self.assembly = None
        del ok  # a plain watch that ends, cleanly or not, leaves its view consistent at its last event

    def fail(self, why: str) -> None:
        log.warning("record: %s for %s; view marked incomplete", why, self.key.describe(),
                    extra={"event": "view_incomplete", "view": self.key.describe(), "why": why})
        self.recorder.errors += 1
        self.broken = True
        self.end(False)
        self.recorder.writer.mark_incomplete(self.key)


def _json_kind(obj: bytes) -> tuple[str, str]:
    """(list kind, apiVersion) of a watched JSON object: "Pod", "v1" -> ("PodList", "v1")."""
    try:
        doc = json.loads(obj)
    except ValueError:
        return "", ""
    kind = doc.get("kind") or "" if isinstance(doc, dict) else ""
    return (kind + "List" if kind else ""), (doc.get("apiVersion") or "" if isinstance(doc, dict) else "")


class _WatchSink:
    """Hands each chunk of a watch stream to the parsing thread as it goes by."""

    __slots__ = ("_recorder", "_state")

    def __init__(self, recorder: Recorder, gzip: bool, state: _WatchState) -> None:
        self._recorder = recorder
        self._state = state
        if gzip:
            state.decomp = zlib.decompressobj(31)

    def feed(self, chunk: bytes) -> None:
        if not self._recorder._submit(len(chunk), self._state.process, chunk):
            self._recorder._submit(0, self._state.fail, "recording fell behind")

    def done(self, ok: bool) -> None:
        self._recorder._submit(0, self._state.end, ok)
