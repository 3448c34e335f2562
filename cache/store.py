"""The LMDB store: what the API server answered, per client and per query (view), as the server sent it.

One LMDB environment, named databases:
  views    view_id(16) -> the view: its ViewKey, kind, apiVersion, list resourceVersion, complete, generation, counts
  items    generation(8) + namespace + "/" + name -> one list item: raw bytes + name, namespace, rv, labels, fields
  objects  ObjectKey bytes -> a single-object GET body
  blobs    client + "\\0" + name -> a non-resource body (/version, /api, discovery)
  staging  generation -> the view a chunked list / watch-list is being assembled for (crash leftovers are swept)
  access   view_id -> last read time (for least-recently-used eviction)
  meta     counters that outlive the process
A view's items live under its generation, so a list replaces a view by writing a new generation and flipping one
pointer in the same transaction; "/" sorts items exactly as etcd's keys (/registry/pods/<ns>/<name>) do, so a
prefix scan returns them in the API server's order. Every record is framed: format, crc32, the object's
resourceVersion as a uint64, then the body (sealed with AES-GCM for configured resources), so a corrupt record
is found, skipped and counted instead of served.

Reads are synchronous and safe from any thread (one read transaction each). Writes go through writer.Writer (one
thread, group commit); the `apply_*` methods here are what that thread runs inside its transaction.
Knows nothing of HTTP. Neighbours: writer (the write path), seal (AES-GCM), cli (the operator's view).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import lmdb
import msgpack

from cache import errors, seal

log = logging.getLogger(__name__)

DEFAULT_MAP_SIZE = 1 << 30
PROTECTED_COMPONENTS = ("kubelet", "kube-proxy", "coredns")
KEY_FILE = "seal.key"

PLAIN, SEALED = 1, 2
_HEAD = struct.Struct(">BIQ")  # format, crc32 of the rest of the record, resourceVersion as uint64
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_F64 = struct.Struct(">d")
_HEAD_LEN = _HEAD.size  # 13
_MAX_KEY = 480  # LMDB's default max key size is 511 bytes

_UINT64_MAX = (1 << 64) - 1


def rv_number(rv: str | None) -> int:
    """A resourceVersion as the uint64 decimal etcd makes it, 0 when it is not one.

    resourceVersion is opaque to clients (api-concepts.md#resource-versions), but every kube-apiserver backed by
    etcd issues decimal revisions, and the proxy needs an order to drop stale events. Every comparison in the
    cache goes through this one function; 0 means "unknown" and never wins or loses a comparison.
    """
    if not rv or len(rv) > 20 or not rv.isascii() or not rv.isdigit():
        return 0
    n = int(rv)
    return n if n <= _UINT64_MAX else 0


def compare_rv(a: str | None, b: str | None) -> int | None:
    """-1, 0, 1 as a is older than, equal to, newer than b; None when either is not a uint64 decimal."""
    x, y = rv_number(a), rv_number(b)
    if not x or not y:
        return None
    return (x > y) - (x < y)


_VIEW_IDS: dict[ViewKey, bytes] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class ViewKey:
    """One client's query: what the API server answered to it is one view."""

    client: str
    group: str
    version: str
    resource: str
    namespace: str = ""
    label_selector: str = ""
    field_selector: str = ""
    shape: str = ""  # "" (full objects) or "PartialObjectMetadata"
    encoding: str = "json"  # "json" or "protobuf"

    @property
    def component(self) -> str:
        return self.client.split("@", 1)[0]

    def fields(self) -> list[str]:
        return [self.client, self.group, self.version, self.resource, self.namespace, self.label_selector,
                self.field_selector, self.shape, self.encoding]

    def view_id(self) -> bytes:
        """16 bytes, stable across processes and versions (blake2b of the fields, not Python's hash)."""
        vid = _VIEW_IDS.get(self)
        if vid is None:  # memoised: every queued event asks for it
            if len(_VIEW_IDS) > 4096:
                _VIEW_IDS.clear()
            vid = _VIEW_IDS[self] = hashlib.blake2b(msgpack.packb(self.fields()), digest_size=16,
                                                   person=b"edgeproxy.view").digest()
        return vid

    def describe(self) -> str:
        gv = f"{self.group}/{self.version}" if self.group else self.version
        parts = [self.client, gv, self.resource]
        if self.namespace:
            parts.append(f"ns={self.namespace}")
        if self.label_selector:
            parts.append(f"l={self.label_selector}")
        if self.field_selector:
            parts.append(f"f={self.field_selector}")
        if self.shape:
            parts.append(self.shape)
        parts.append(self.encoding)
        return " ".join(parts)


@dataclasses.dataclass(frozen=True, slots=True)
class ViewMeta:
    kind: str  # the list kind, e.g. "PodList"
    api_version: str
    resource_version: str
    complete: bool
    updated_at: float = 0.0
    count: int = 0  # items in the view (filled in by the store)
    size: int = 0  # bytes of keys and records (filled in by the store)


@dataclasses.dataclass(frozen=True, slots=True)
class Item:
    """One object of a view. raw = the list-item bytes: a bare protobuf message, or JSON without kind/apiVersion."""

    name: str
    namespace: str
    resource_version: str
    labels: dict
    fields: dict
    raw: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class ObjectKey:
    """One client's single-object GET."""

    client: str
    group: str
    version: str
    resource: str
    namespace: str
    name: str
    shape: str = ""
    encoding: str = "json"

    def fields(self) -> list[str]:
        return [self.client, self.group, self.version, self.resource, self.namespace, self.name, self.shape,
                self.encoding]

    def key(self) -> bytes:
        return _bounded_key(self.client, "\0".join(self.fields()[1:]))


@dataclasses.dataclass(frozen=True, slots=True)
class Problem:
    db: str
    key: bytes
    what: str


@dataclasses.dataclass(frozen=True, slots=True)
class VerifyReport:
    views: int
    items: int
    objects: int
    blobs: int
    problems: tuple[Problem, ...]
    sealed_unopened: int  # sealed records that could not be checked for want of the key

    @property
    def ok(self) -> bool:
        return not self.problems


def _bounded_key(client: str, rest: str) -> bytes:
    key = f"{client}\0{rest}".encode()
    if len(key) > _MAX_KEY:  # a long discovery path or name: keep the client prefix (for purge), hash the rest
        key = f"{client}\0#".encode() + hashlib.blake2b(rest.encode(), digest_size=20).digest()
    return key


def _item_key(gen: bytes, namespace: str, name: str) -> bytes:
    return gen + f"{namespace}/{name}".encode()


# Counters kept across restarts (in the meta database) and exposed as attributes for the metrics module.
COUNTERS = (
    "commits", "events_applied", "events_ignored", "lists_replaced", "lists_behind", "writes_failed",
    "writes_dropped", "evictions", "corrupt_records", "map_full",
)


HELD_MAX = 16 << 10  # holds_object remembers a verified body up to this size ...
HELD_ENTRIES = 256  # ... for this many objects (at most 4 MiB)


class Store:
    """Reads (any thread) over one LMDB environment, and the transaction-level writes the writer thread runs."""

    __slots__ = (
        "path", "env", "sealer", "sealed_resources", "max_bytes", "low_water", "protected", "_views", "_items",
        "_objects", "_blobs", "_staging", "_access", "_meta", "_psize", "_reads", "_stale", "_unpersisted", "_lock",
        "_gen", "_held", *COUNTERS,
    )

    def __init__(self, path: str, env: lmdb.Environment, sealer: seal.Sealer | None,
                 sealed_resources: Iterable[str], max_bytes: int | None, protected: Iterable[str]) -> None:
        self.path = path
        self.env = env
        self.sealer = sealer
        self.sealed_resources = frozenset(sealed_resources)
        self.max_bytes = max_bytes
        self.low_water = 0.9  # evict down to this fraction of max_bytes, so eviction does not run every commit
        self.protected = frozenset(protected)
        self._views = env.open_db(b"views")
        self._items = env.open_db(b"items")
        self._objects = env.open_db(b"objects")
        self._blobs = env.open_db(b"blobs")
        self._staging = env.open_db(b"staging")
        self._access = env.open_db(b"access")
        self._meta = env.open_db(b"meta")
        self._psize = env.stat()["psize"]
        self._reads: dict[bytes, float] = {}
        self._stale: set[bytes] = set()  # views a failed write left behind: reported incomplete whatever the db says
        self._unpersisted: set[bytes] = set()  # stale views whose incomplete flag is not on disk yet
        self._lock = threading.Lock()
        self._held: dict[bytes, tuple[int, bytes]] = {}  # holds_object's verdicts: key -> (LMDB txn id, body)
        with env.begin() as txn:
            cur = txn.cursor(db=self._items)
            last = _U64.unpack(cur.key()[:8])[0] if cur.last() and len(cur.key()) >= 8 else 0
        self._gen = last
        for name in COUNTERS:
            setattr(self, name, 0)
        with env.begin() as txn:
            raw = txn.get(b"counters", db=self._meta)
        if raw is not None:
            try:
                saved = msgpack.unpackb(raw)
                for name in COUNTERS:
                    setattr(self, name, int(saved.get(name, 0)))
            except (ValueError, TypeError, AttributeError, msgpack.UnpackException):
                self.corrupt_records += 1

    @classmethod
    def open(cls, path: str, *, map_size: int = DEFAULT_MAP_SIZE, durable: bool = True,
             sealed_resources: Iterable[str] = ("secrets",), max_bytes: int | None = None,
             key_file: str | None = None, protected: Iterable[str] = PROTECTED_COMPONENTS,
             create: bool = True) -> Store:
        """Open (or create) the cache in directory `path` (made 0700).

        durable=True commits with fsync of data and meta pages (LMDB sync + metasync): a commit that returned is on
        disk. max_bytes bounds the pages in use (default 3/4 of map_size, leaving LMDB room for copy-on-write);
        past it the writer evicts least-recently-used views. key_file defaults to <path>/seal.key.
        """
        if not create and not os.path.exists(os.path.join(path, "data.mdb")):
            raise errors.NoCache(f"no cache at {path}")
        if create:
            os.makedirs(path, mode=0o700, exist_ok=True)
            os.chmod(path, 0o700)
        key_path = key_file or os.path.join(path, KEY_FILE)
        sealer: seal.Sealer | None
        if create:
            sealer = seal.Sealer.from_key_file(key_path, create=True)
        else:
            try:
                sealer = seal.Sealer.from_key_file(key_path, create=False)
            except errors.SealError:
                sealer = None  # an operator without the key still sees everything but sealed records
        env = lmdb.open(path, map_size=map_size, max_dbs=8, sync=durable, metasync=durable, subdir=True,
                        mode=0o600, max_readers=256)
        env.reader_check()  # free reader slots left by a killed process
        if max_bytes is None:
            max_bytes = env.info()["map_size"] * 3 // 4
        return cls(path, env, sealer, sealed_resources, max_bytes, protected)

    def close(self) -> None:
        self.env.close()

    # ---------------------------------------------------------------- record framing

    def _frame(self, body: bytes, rvn: int, associated: bytes | None) -> bytes:
        """format(1) crc32(4) rv(8) body, body sealed when `associated` (the record's key) is given."""
        rvb = _U64.pack(rvn)
        if associated is not None and self.sealer is not None:
            body = self.sealer.seal(body, associated + rvb)
            fmt = SEALED
        else:
            fmt = PLAIN
        crc = zlib.crc32(body, zlib.crc32(rvb))
        return b"".join((bytes((fmt,)), _U32.pack(crc), rvb, body))

    def _unframe(self, value: bytes, associated: bytes) -> bytes | memoryview:
        if len(value) < _HEAD_LEN:
            raise errors.CorruptRecord("record shorter than its header")
        fmt, crc, _ = _HEAD.unpack_from(value)
        mv = memoryview(value)
        if zlib.crc32(mv[5:]) != crc:
            raise errors.CorruptRecord("record checksum mismatch")
        if fmt == PLAIN:
            return mv[_HEAD_LEN:]
        if fmt == SEALED:
            if self.sealer is None:
                raise errors.SealError("record is sealed and the key is not available")
            return self.sealer.open(mv[_HEAD_LEN:], associated + value[5:_HEAD_LEN])
        raise errors.CorruptRecord(f"unknown record format {fmt}")

    def _encode_item(self, key: bytes, item: Item, sealed: bool) -> bytes:
        meta = msgpack.packb([item.name, item.namespace, item.resource_version, item.labels, item.fields])
        body = b"".join((_U32.pack(len(meta)), meta, item.raw))
        return self._frame(body, rv_number(item.resource_version), b"i" + key if sealed else None)

    def _decode_item(self, key: bytes, value: bytes) -> Item:
        body = self._unframe(value, b"i" + key)
        try:
            (n,) = _U32.unpack_from(body)
            name, namespace, rv, labels, fields = msgpack.unpackb(body[4 : 4 + n])
            return Item(name, namespace, rv, labels, fields, bytes(body[4 + n :]))
        except (ValueError, TypeError, struct.error, msgpack.UnpackException) as e:
            raise errors.CorruptRecord(f"item record does not decode: {e}") from e

    def _decode_raw(self, key: bytes, value: bytes) -> bytes:
        body = self._unframe(value, b"i" + key)
        try:
            (n,) = _U32.unpack_from(body)
        except struct.error as e:
            raise errors.CorruptRecord("item record does not decode") from e
        if 4 + n > len(body):
            raise errors.CorruptRecord("item record does not decode")
        return bytes(body[4 + n :])

    def _encode_doc(self, doc: dict) -> bytes:
        return self._frame(msgpack.packb(doc), 0, None)

    def _decode_doc(self, value: bytes, associated: bytes) -> dict:
        try:
            doc = msgpack.unpackb(self._unframe(value, associated))
        except (ValueError, TypeError, msgpack.UnpackException) as e:
            raise errors.CorruptRecord(f"record does not decode: {e}") from e
        if not isinstance(doc, dict):
            raise errors.CorruptRecord("record is not a map")
        return doc

    def _encode_body(self, key: bytes, tag: bytes, fields: list[str], body: bytes, sealed: bool) -> bytes:
        meta = msgpack.packb(fields)
        return self._frame(b"".join((_U32.pack(len(meta)), meta, body)), 0, tag + key if sealed else None)

    def _decode_body(self, key: bytes, tag: bytes, value: bytes) -> tuple[list[str], bytes]:
        body = self._unframe(value, tag + key)
        try:
            (n,) = _U32.unpack_from(body)
            return msgpack.unpackb(body[4 : 4 + n]), bytes(body[4 + n :])
        except (ValueError, TypeError, struct.error, msgpack.UnpackException) as e:
            raise errors.CorruptRecord(f"record does not decode: {e}") from e

    def _corrupt(self, view_id: bytes | None = None) -> None:
        """Count a record that did not decode; one of a view's items makes the view incomplete (a view short of
        an item must not be served as the list) until a fresh list replaces it."""
        with self._lock:
            self.corrupt_records += 1
            if view_id is not None:
                self._stale.add(view_id)
                self._unpersisted.add(view_id)

    # ---------------------------------------------------------------- reads

    def _view_doc(self, txn: lmdb.Transaction, view_id: bytes) -> dict | None:
        value = txn.get(view_id, db=self._views)
        if value is None:
            return None
        try:
            return self._decode_doc(value, b"v" + view_id)
        except errors.CorruptRecord:
            self._corrupt()
            return None

    def _meta_of(self, view_id: bytes, doc: dict) -> ViewMeta:
        return ViewMeta(doc["kind"], doc["av"], doc["rv"], bool(doc["c"]) and view_id not in self._stale,
                        doc["u"], doc["n"], doc["b"])

    def view(self, key: ViewKey) -> ViewMeta | None:
        view_id = key.view_id()
        with self.env.begin() as txn:
            doc = self._view_doc(txn, view_id)
        if doc is None:
            return None
        self._reads[view_id] = time.time()
        return self._meta_of(view_id, doc)

    def _scan(self, txn: lmdb.Transaction, gen: bytes) -> Iterator[tuple[bytes, bytes]]:
        cur = txn.cursor(db=self._items)
        if not cur.set_range(gen):
            return
        for k, v in cur:
            if k[:8] != gen:
                return
            yield k, v

    def read_view(self, key: ViewKey) -> tuple[ViewMeta, list[Item]] | None:
        """The view's meta and its items (namespace/name order), from one read transaction: consistent."""
        return self._read(key, self._decode_item)

    def read_raw(self, key: ViewKey) -> tuple[ViewMeta, list[bytes]] | None:
        """The view's meta and its items' raw bytes, ready to join into a list body: the fast offline LIST path."""
        return self._read(key, self._decode_raw)

    def _read(self, key: ViewKey, decode: Callable[[bytes, bytes], Any]) -> tuple[ViewMeta, list[Any]] | None:
        """One read transaction over a view: its meta and its decoded items; a corrupt item is skipped, counted and
        makes the view incomplete (see _corrupt)."""
        view_id = key.view_id()
        out: list[Any] = []
        append = out.append
        with self.env.begin() as txn:
            doc = self._view_doc(txn, view_id)
            if doc is None:
                return None
            for k, v in self._scan(txn, doc["g"]):
                try:
                    append(decode(k, v))
                except (errors.CorruptRecord, errors.SealError):
                    self._corrupt(view_id)
        self._reads[view_id] = time.time()
        return self._meta_of(view_id, doc), out

    def items(self, key: ViewKey) -> list[Item]:
        got = self.read_view(key)
        return got[1] if got else []

    def raw_items(self, key: ViewKey) -> list[bytes]:
        got = self.read_raw(key)
        return got[1] if got else []

    def item(self, key: ViewKey, namespace: str, name: str) -> Item | None:
        view_id = key.view_id()
        with self.env.begin() as txn:
            doc = self._view_doc(txn, view_id)
            if doc is None:
                return None
            k = _item_key(doc["g"], namespace, name)
            value = txn.get(k, db=self._items)
        if value is None:
            return None
        self._reads[view_id] = time.time()
        try:
            return self._decode_item(k, value)
        except (errors.CorruptRecord, errors.SealError):
            self._corrupt(view_id)
            return None

    def views(self, client: str | None = None) -> list[tuple[ViewKey, ViewMeta]]:
        out = []
        with self.env.begin() as txn:
            for view_id, value in txn.cursor(db=self._views):
                try:
                    doc = self._decode_doc(value, b"v" + view_id)
                    vk = ViewKey(*doc["k"])
                except (errors.CorruptRecord, TypeError, KeyError):
                    self._corrupt()
                    continue
                if client is None or vk.client == client:
                    out.append((vk, self._meta_of(view_id, doc)))
        out.sort(key=lambda kv: kv[0].fields())
        return out

    def get_object(self, okey: ObjectKey) -> bytes | None:
        k = okey.key()
        with self.env.begin() as txn:
            value = txn.get(k, db=self._objects)
        if value is None:
            return None
        try:
            fields, body = self._decode_body(k, b"o", value)
        except (errors.CorruptRecord, errors.SealError):
            self._corrupt()
            return None
        return body if fields == okey.fields() else None

    def holds_object(self, okey: ObjectKey, body: bytes, k: bytes | None = None) -> bool:
        """Whether the stored GET answer for okey is exactly `body` (a record that does not read back is not; it is
        not counted as corrupt here: the caller is about to overwrite it). `k`: okey.key(), when known."""
        if k is None:
            k = okey.key()
        with self.env.begin() as txn:
            txn_id = txn.id()  # the last transaction committed (by any process): while it stands, nothing changed
            held = self._held.get(k)
            if held is not None and held[0] == txn_id:
                return held[1] == body  # a client polling an object: no read, no unsealing, no decoding
            value = txn.get(k, db=self._objects)
        if value is None:
            return False
        try:
            fields, stored = self._decode_body(k, b"o", value)
        except (errors.CorruptRecord, errors.SealError):
            return False
        same = stored == body and fields == okey.fields()
        if same and len(body) <= HELD_MAX:
            if len(self._held) >= HELD_ENTRIES:
                self._held.clear()
            self._held[k] = (txn_id, body)
        return same

    def objects(self, client: str | None = None) -> list[tuple[ObjectKey, int]]:
        """(ObjectKey, body size) of the cached GETs; sealed ones without the key are left out."""
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._objects)
            it = cur.iternext() if client is None else self._prefixed(cur, f"{client}\0".encode())
            for k, value in it:
                try:
                    fields, body = self._decode_body(k, b"o", value)
                    out.append((ObjectKey(*fields), len(body)))
                except errors.SealError:
                    continue
                except (errors.CorruptRecord, TypeError):
                    self._corrupt()
        return out

    @staticmethod
    def _prefixed(cur: lmdb.Cursor, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        if not cur.set_range(prefix):
            return
        for k, v in cur:
            if not k.startswith(prefix):
                return
            yield k, v

    def get_blob(self, client: str, name: str) -> bytes | None:
        k = _bounded_key(client, name)
        with self.env.begin() as txn:
            value = txn.get(k, db=self._blobs)
        if value is None:
            return None
        try:
            fields, body = self._decode_body(k, b"b", value)
        except (errors.CorruptRecord, errors.SealError):
            self._corrupt()
            return None
        return body if fields == [client, name] else None

    def blobs(self, client: str | None = None) -> list[tuple[str, str, int]]:
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(db=self._blobs)
            it = cur.iternext() if client is None else self._prefixed(cur, f"{client}\0".encode())
            for k, value in it:
                try:
                    (c, name), body = self._decode_body(k, b"b", value)
                    out.append((c, name, len(body)))
                except (errors.CorruptRecord, errors.SealError, ValueError, TypeError):
                    self._corrupt()
        return out

    def used_bytes(self, txn: lmdb.Transaction | None = None) -> int:
        """Bytes of the pages the databases occupy (B-tree and overflow pages; LMDB's free list excluded)."""
        if txn is None:
            with self.env.begin() as t:
                return self.used_bytes(t)
        pages = 0
        for db in (self._views, self._items, self._objects, self._blobs, self._staging, self._access, self._meta):
            st = txn.stat(db)
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * self._psize

    def stats(self) -> dict:
        """Counters (since the cache was created) and sizes, for the metrics module and `edgeproxy cache stats`."""
        out: dict = {name: getattr(self, name) for name in COUNTERS}
        with self.env.begin() as txn:
            out["views"] = txn.stat(self._views)["entries"]
            out["items"] = txn.stat(self._items)["entries"]
            out["objects"] = txn.stat(self._objects)["entries"]
            out["blobs"] = txn.stat(self._blobs)["entries"]
            out["used_bytes"] = self.used_bytes(txn)
        out["map_size"] = self.env.info()["map_size"]
        out["max_bytes"] = self.max_bytes
        out["stale_views"] = len(self._stale)
        return out

    def verify(self) -> VerifyReport:
        """Read every record: checksums, seals, decoding, item counts, items no view owns."""
        problems: list[Problem] = []
        sealed_unopened = 0
        n_views = n_items = n_objects = n_blobs = 0
        gens: dict[bytes, bytes] = {}
        counts: dict[bytes, int] = {}
        with self.env.begin() as txn:
            for view_id, value in txn.cursor(db=self._views):
                n_views += 1
                try:
                    doc = self._decode_doc(value, b"v" + view_id)
                    ViewKey(*doc["k"])
                    gens[doc["g"]] = view_id
                    counts[view_id] = doc["n"]
                except (errors.CorruptRecord, TypeError, KeyError) as e:
                    problems.append(Problem("views", view_id, str(e)))
            staging = {k for k, _ in txn.cursor(db=self._staging)}
            seen: dict[bytes, int] = {}
            for k, v in txn.cursor(db=self._items):
                n_items += 1
                gen = k[:8]
                if gen not in gens and gen not in staging:
                    problems.append(Problem("items", k, "item of no view"))
                    continue
                try:
                    self._decode_item(k, v)
                except errors.SealError:
                    sealed_unopened += 1
                except errors.CorruptRecord as e:
                    problems.append(Problem("items", k, str(e)))
                if gen in gens:
                    seen[gens[gen]] = seen.get(gens[gen], 0) + 1
            for view_id, n in counts.items():
                if seen.get(view_id, 0) != n:
                    problems.append(Problem("views", view_id, f"holds {seen.get(view_id, 0)} items, says {n}"))
            for db, tag, name in ((self._objects, b"o", "objects"), (self._blobs, b"b", "blobs")):
                for k, v in txn.cursor(db=db):
                    if name == "objects":
                        n_objects += 1
                    else:
                        n_blobs += 1
                    try:
                        self._decode_body(k, tag, v)
                    except errors.SealError:
                        sealed_unopened += 1
                    except errors.CorruptRecord as e:
                        problems.append(Problem(name, k, str(e)))
        return VerifyReport(n_views, n_items, n_objects, n_blobs, tuple(problems), sealed_unopened)

    def reads_pending(self) -> bool:
        return bool(self._reads)

    def mark_stale(self, view_id: bytes) -> None:
        """Report the view incomplete from memory: for when even the flag could not be written (map full). The
        next commit that succeeds writes the flag (persist_stale), so a restart does not serve it as complete."""
        with self._lock:
            self._stale.add(view_id)
            self._unpersisted.add(view_id)

    def persist_stale(self, txn: lmdb.Transaction) -> frozenset[bytes]:
        """Write the incomplete flag of the views stale in memory only; call stale_persisted(them) once committed."""
        with self._lock:
            pending = frozenset(self._unpersisted)
        for view_id in pending:
            self.apply_mark_incomplete(txn, view_id)
        return pending

    def stale_persisted(self, view_ids: frozenset[bytes]) -> None:
        with self._lock:
            self._unpersisted -= view_ids

    def take_reads(self) -> dict[bytes, float]:
        reads, self._reads = self._reads, {}
        return reads

    # ---------------------------------------------------------------- writes (run inside the writer's transaction)

    def new_gen(self) -> bytes:
        """A generation id greater than any in the store: a new list's keys sort after every existing key, so
        LMDB can append them (MDB_APPEND fills pages instead of splitting them half-empty)."""
        with self._lock:
            self._gen = max(self._gen + 1, time.time_ns())
            return _U64.pack(self._gen)

    def _sealed(self, resource: str) -> bool:
        return resource in self.sealed_resources

    def _put_view(self, txn: lmdb.Transaction, view_id: bytes, key: ViewKey, meta: ViewMeta, gen: bytes,
                  n: int, size: int) -> None:
        doc = {"k": key.fields(), "kind": meta.kind, "av": meta.api_version, "rv": meta.resource_version,
               "c": meta.complete, "u": meta.updated_at or time.time(), "g": gen, "n": n, "b": size}
        txn.put(view_id, self._encode_doc(doc), db=self._views)

    def _delete_gen(self, txn: lmdb.Transaction, gen: bytes) -> None:
        cur = txn.cursor(db=self._items)
        if not cur.set_range(gen):
            return
        while cur.key()[:8] == gen:
            if not cur.delete():
                break

    def _write_items(self, txn: lmdb.Transaction, gen: bytes, items: Iterable[Item], sealed: bool) -> tuple[int, int]:
        encode = self._encode_item
        pairs = {}
        for item in items:  # the same object twice in one list: the last one counts
            k = _item_key(gen, item.namespace, item.name)
            pairs[k] = item
        keys = sorted(pairs)
        if not keys:
            return 0, 0
        db = self._items
        cur = txn.cursor(db=db)
        if not cur.last() or cur.key() < keys[0]:
            size = 0

            def encoded() -> Iterator[tuple[bytes, bytes]]:  # streamed: a big list is never held encoded twice
                nonlocal size
                for k in keys:
                    v = encode(k, pairs[k], sealed)
                    size += len(k) + len(v)
                    yield k, v

            _, n = cur.putmulti(encoded(), append=True)  # keys beyond every existing key: fill pages in order
            return n, size
        n = size = 0
        ordered = ((k, encode(k, pairs[k], sealed)) for k in keys)
        for k, v in ordered:  # a chunk of an older assembly interleaved with a newer one: plain puts
            old = txn.get(k, db=db)
            txn.put(k, v, db=db)
            if old is None:
                n += 1
                size += len(k) + len(v)
            else:
                size += len(v) - len(old)
        return n, size

    def _behind_view(self, txn: lmdb.Transaction, view_id: bytes, meta: ViewMeta) -> bool:
        """True when a list at meta.resource_version is older than what the view already holds (a LIST answered from
        the API server's watch cache, or one that raced a watch on the same query): installing it would take the
        view back in time and drop the newer watch events it has applied, a state the cluster never had once the
        next event lands on it (issue 14 D1). Such a list is not installed; the view keeps its newer state."""
        old = self._view_doc(txn, view_id)
        if old is None or compare_rv(meta.resource_version, old["rv"]) != -1:
            return False
        self.lists_behind += 1
        log.debug("cache: list at rv %s is older than the view's rv %s: not installed", meta.resource_version,
                  old["rv"])
        return True

    def apply_replace(self, txn: lmdb.Transaction, key: ViewKey, meta: ViewMeta, items: Iterable[Item]) -> None:
        """The view becomes exactly `items` at meta.resource_version (one list response), unless the view already
        holds a newer state (`_behind_view`)."""
        view_id = key.view_id()
        if self._behind_view(txn, view_id, meta):
            return
        gen = self.new_gen()
        n, size = self._write_items(txn, gen, items, self._sealed(key.resource))
        self._flip(txn, view_id, key, meta, gen, n, size)
        self.lists_replaced += 1

    def _flip(self, txn: lmdb.Transaction, view_id: bytes, key: ViewKey, meta: ViewMeta, gen: bytes,
              n: int, size: int) -> None:
        old = self._view_doc(txn, view_id)
        if old is not None:
            self._delete_gen(txn, old["g"])
        self._put_view(txn, view_id, key, meta, gen, n, size)
        if meta.complete and (old is None or not old["c"] or view_id in self._stale):
            # A state change (absent or incomplete -> complete): offline lists of this query can now be answered.
            # `event` and the fields become JSON keys with edgeproxy's log format (edgeproxy.logs).
            log.info("cache: view complete: %s (%d items, rv %s)", key.describe(), n, meta.resource_version,
                     extra={"event": "view_complete", "view": key.describe(), "items": n,
                            "resource_version": meta.resource_version})
        self._stale.discard(view_id)
        self._unpersisted.discard(view_id)

    def apply_stage(self, txn: lmdb.Transaction, gen: bytes, key: ViewKey, items: Sequence[Item],
                    first: bool = True) -> None:
        """One chunk of a list being assembled under `gen`; invisible until apply_commit. A later chunk whose
        staging record is gone (purged meanwhile) is dropped: apply_commit then discards the assembly."""
        st = txn.get(gen, db=self._staging)
        if st is None and not first:
            return
        n0, size0 = msgpack.unpackb(st)[1:] if st is not None else (0, 0)
        n, size = self._write_items(txn, gen, items, self._sealed(key.resource))
        txn.put(gen, msgpack.packb([key.view_id(), n0 + n, size0 + size]), db=self._staging)

    def apply_commit(self, txn: lmdb.Transaction, gen: bytes, key: ViewKey, meta: ViewMeta,
                     shipped: int = 0) -> None:
        """The assembled list becomes the view. `shipped`: items the assembly staged; if its staging record is
        gone (purged under it), the pieces are incomplete: discard them and mark the view instead."""
        st = txn.get(gen, db=self._staging)
        if st is None and shipped:
            self.apply_abort(txn, gen)
            self.apply_mark_incomplete(txn, key)
            return
        if self._behind_view(txn, key.view_id(), meta):
            self.apply_abort(txn, gen)
            return
        n, size = msgpack.unpackb(st)[1:] if st is not None else (0, 0)
        txn.delete(gen, db=self._staging)
        self._flip(txn, key.view_id(), key, meta, gen, n, size)
        self.lists_replaced += 1

    def apply_abort(self, txn: lmdb.Transaction, gen: bytes) -> None:
        self._delete_gen(txn, gen)
        txn.delete(gen, db=self._staging)

    def sweep_staging(self, txn: lmdb.Transaction) -> int:
        """Drop lists a killed process was assembling (run when a writer starts: it is the only writer)."""
        gens = [k for k, _ in txn.cursor(db=self._staging)]
        for gen in gens:
            self.apply_abort(txn, gen)
        return len(gens)

    def apply_mark_incomplete(self, txn: lmdb.Transaction, key: ViewKey | bytes) -> None:
        view_id = key if isinstance(key, bytes) else key.view_id()
        doc = self._view_doc(txn, view_id)
        if doc is not None and doc["c"]:
            doc["c"] = False
            txn.put(view_id, self._encode_doc(doc), db=self._views)

    def apply_events(self, txn: lmdb.Transaction, key: ViewKey, events: Iterable[tuple]) -> None:
        """Watch events, in order: ADDED/MODIFIED put, DELETED delete, BOOKMARK advances the resourceVersion.

        An event the view already reflects (its resourceVersion is not past the view's) or older than the stored
        object is ignored: a list at RV n contains every change up to n, and an object never goes back in time.
        An ERROR event, or an object without a name, marks the view incomplete. Events for a view that does not exist
        are ignored: they alone cannot make a view anyone could trust.
        """
        view_id = key.view_id()
        doc = self._view_doc(txn, view_id)
        if doc is None:
            self.events_ignored += sum(1 for _ in events)
            return
        gen = doc["g"]
        view_rvn = rv_number(doc["rv"])
        rv_str = doc["rv"]
        n, size, complete = doc["n"], doc["b"], doc["c"]
        sealed = self._sealed(key.resource)
        db = self._items
        applied = ignored = 0
        for typ, item, rv in events:
            rvn = rv_number(rv)
            if typ == "BOOKMARK":
                if rvn > view_rvn:
                    view_rvn, rv_str = rvn, rv
                applied += 1
                continue
            if typ == "ERROR" or item is None or not item.name:
                # an ERROR, or an object without a name (no metadata): nothing to store, and the view can no longer
                # be trusted to be the server's state (issue 14 D10)
                complete = False
                continue
            if rvn and rvn <= view_rvn:
                ignored += 1
                continue
            k = _item_key(gen, item.namespace, item.name)
            old = txn.get(k, db=db)
            if old is not None and rvn and len(old) >= _HEAD_LEN and _U64.unpack_from(old, 5)[0] > rvn:
                ignored += 1
                continue
            if typ == "DELETED":
                if old is not None:
                    txn.delete(k, db=db)
                    n -= 1
                    size -= len(k) + len(old)
            else:
                v = self._encode_item(k, item, sealed)
                txn.put(k, v, db=db)
                if old is None:
                    n += 1
                    size += len(k) + len(v)
                else:
                    size += len(v) - len(old)
            if rvn > view_rvn:
                view_rvn, rv_str = rvn, rv
            applied += 1
        self.events_applied += applied
        self.events_ignored += ignored
        doc.update(rv=rv_str, n=n, b=size, c=complete, u=time.time())
        txn.put(view_id, self._encode_doc(doc), db=self._views)

    def apply_put_object(self, txn: lmdb.Transaction, okey: ObjectKey, body: bytes) -> None:
        k = okey.key()
        txn.put(k, self._encode_body(k, b"o", okey.fields(), body, self._sealed(okey.resource)), db=self._objects)

    def apply_delete_object(self, txn: lmdb.Transaction, okey: ObjectKey) -> None:
        txn.delete(okey.key(), db=self._objects)

    def apply_put_blob(self, txn: lmdb.Transaction, client: str, name: str, body: bytes) -> None:
        k = _bounded_key(client, name)
        txn.put(k, self._encode_body(k, b"b", [client, name], body, False), db=self._blobs)

    def apply_reads(self, txn: lmdb.Transaction, reads: dict[bytes, float]) -> None:
        for view_id, t in reads.items():
            if txn.get(view_id, db=self._views) is not None:  # not for a view evicted or purged since
                txn.put(view_id, _F64.pack(t), db=self._access)

    def save_counters(self, txn: lmdb.Transaction) -> None:
        txn.put(b"counters", msgpack.packb({name: getattr(self, name) for name in COUNTERS}), db=self._meta)

    def _delete_view(self, txn: lmdb.Transaction, view_id: bytes, doc: dict) -> None:
        self._delete_gen(txn, doc["g"])
        txn.delete(view_id, db=self._views)
        txn.delete(view_id, db=self._access)
        self._stale.discard(view_id)
        self._unpersisted.discard(view_id)

    def evict(self, txn: lmdb.Transaction) -> int:
        """Past max_bytes, drop least-recently-used views (read or written) until under low_water * max_bytes.

        Views of the node's own agents (kubelet, kube-proxy, coredns) go last: without them the node cannot run
        its pods offline, while a kubectl list can be asked again.
        """
        if not self.max_bytes or self.used_bytes(txn) <= self.max_bytes:
            return 0
        candidates = []
        for view_id, value in txn.cursor(db=self._views):
            try:
                doc = self._decode_doc(value, b"v" + view_id)
                client = doc["k"][0]
            except (errors.CorruptRecord, KeyError, IndexError):
                continue
            read = txn.get(view_id, db=self._access)
            last = max(doc["u"], _F64.unpack(read)[0] if read and len(read) == 8 else 0.0,
                       self._reads.get(view_id, 0.0))
            candidates.append((client.split("@", 1)[0] in self.protected, last, view_id, doc))
        candidates.sort(key=lambda c: (c[0], c[1]))
        evicted = 0
        target = self.max_bytes * self.low_water
        gone: list[str] = []
        for _, _, view_id, doc in candidates:
            self._delete_view(txn, view_id, doc)
            evicted += 1
            gone.append(ViewKey(*doc["k"]).describe())
            if self.used_bytes(txn) <= target:
                break
        self.evictions += evicted
        log.info("cache: evicted %d view(s) to stay under %d bytes: %s", evicted, self.max_bytes,
                 ", ".join(gone[:5]) + (" ..." if len(gone) > 5 else ""),
                 extra={"event": "eviction", "views": evicted, "evicted": gone[:20], "max_bytes": self.max_bytes})
        return evicted

    def purge(self, client: str | None = None) -> int:
        """Delete every view, object and blob (of one client): an operator's command, its own transaction."""
        removed = 0
        with self.env.begin(write=True) as txn:
            if client is None:
                for db in (self._views, self._objects, self._blobs):
                    removed += txn.stat(db)["entries"]
                for db in (self._views, self._items, self._objects, self._blobs, self._staging, self._access):
                    txn.drop(db, delete=False)
                self._stale.clear()
                self._unpersisted.clear()
                return removed
            for view_id, value in list(txn.cursor(db=self._views)):
                try:
                    doc = self._decode_doc(value, b"v" + view_id)
                except errors.CorruptRecord:
                    continue
                if doc["k"][0] == client:
                    self._delete_view(txn, view_id, doc)
                    removed += 1
            prefix = f"{client}\0".encode()
            for db in (self._objects, self._blobs):
                keys = [k for k, _ in self._prefixed(txn.cursor(db=db), prefix)]
                for k in keys:
                    txn.delete(k, db=db)
                removed += len(keys)
        return removed
