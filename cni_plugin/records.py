"""The snapshot store: one small JSON record per pod interface under `<dataDir>/<network>/records/`.

A record remembers the IPAM result a pod got, which container uses it now (`container`) and which container id the
delegate's lease was taken under (`owner`: a release must name it, or the lease leaks). States:
  ACTIVE   a container is attached; the delegate lease is held by `owner`.
  HELD     the container was deleted while the delegate was offline; the lease is still held, its release journaled.
  RELEASED the lease was (or is being) released; the IP may belong to someone else now, so it is never served offline.
Invariant kept by commands.py: a record is ACTIVE or HELD only while its owner's lease is believed held.
Files are written with durable.write; `lock()` (the network-wide flock) is held only around read-modify-write, never
around a delegate exec; `key_lock(key)` serialises operations on one pod. A record that does not decode is moved aside
to `*.corrupt` and treated as absent. Neighbours: durable.py (bytes on disk), journal.py, commands.py, inspection.py.
"""

from __future__ import annotations

import os
import time

from cni_plugin import durable, errors, jsonio, log
from cni_plugin.value import Value

ACTIVE, HELD, RELEASED = "ACTIVE", "HELD", "RELEASED"
STATES = (ACTIVE, HELD, RELEASED)
SUFFIX = ".json"
FORMAT = 1  # the "v" of every record file
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


class Record(Value):
    """key, state, container, owner, ifname; result (result.normalize() form); created, updated (last write) and
    since (when it entered its current state: HELD age, RELEASED age), Unix times."""

    _fields = ("key", "state", "container", "owner", "ifname", "result", "created", "updated", "since")
    __slots__ = _fields

    def servable(self, now: float, held_max_age: float | None) -> bool:
        """May this record be handed out while the delegate is offline?"""
        if self.state == ACTIVE:
            return True
        if self.state == HELD:
            return held_max_age is None or now - self.since <= held_max_age
        return False

    def replace(self, **changes) -> Record:
        now = time.time()
        if changes.get("state", self.state) != self.state:
            changes.setdefault("since", now)
        return self.evolve(updated=now, **changes)

    def to_json(self) -> bytes:
        return jsonio.dumps({"v": FORMAT, **self.as_dict()}, sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        raw = jsonio.loads(data)
        fields = set(cls.__slots__)
        # Strict, so a damaged file is caught; a later format must convert FORMAT 1 records here, not reject them.
        if not isinstance(raw, dict) or raw.pop("v", None) != FORMAT:
            raise ValueError(f"not a format {FORMAT} record")
        if set(raw) != fields or raw["state"] not in STATES:
            raise ValueError("record fields or state are not what this version writes")
        if not isinstance(raw["result"], dict) or not isinstance(raw["result"].get("ips"), list):
            raise ValueError("record result has no ips")
        return cls(**raw)


def quote(text: str, safe: str = "") -> str:
    """urllib.parse.quote(text, safe=safe), without importing urllib (or re, which it imports)."""
    keep = _UNRESERVED | frozenset(safe.encode())
    return "".join(chr(b) if b in keep else f"%{b:02X}" for b in text.encode())


def filename(key: str) -> str:
    return quote(key) + SUFFIX


def io_error(what: str, e: OSError) -> errors.StoreFailure:
    return errors.StoreFailure(f"snapshot store: cannot {what}: {e.strerror or e}", str(e))


class Store:
    """One network's directory: records/, locks/, journal/ and the network lock."""

    __slots__ = ("quarantine", "records", "root")

    def __init__(self, root: str):
        self.root = os.fspath(root)
        self.records = os.path.join(self.root, "records")
        self.quarantine = True  # move undecodable records aside (inspect turns this off: it must not write)

    @classmethod
    def open(cls, data_dir: str, network: str) -> Store:
        store = cls(os.path.join(data_dir, network))
        for d in (store.root, store.records, store.path("locks"), store.path("journal")):
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as e:
                if not os.path.isdir(d):
                    raise io_error(f"create {d}", e) from e
        return store

    def lock(self) -> _NetworkLock:
        """The network-wide lock for read-modify-write of records and journal (short; never around an exec)."""
        return _NetworkLock(self)

    def key_lock(self, key: str, *, blocking: bool = True) -> _KeyLock:
        """Serialise operations on one pod interface (held across its delegate exec; other pods are not blocked).
        `with store.key_lock(key, blocking=False) as got:` gives False if another process holds it."""
        return _KeyLock(self.path("locks", filename(key)), blocking)

    def get(self, key: str) -> Record | None:
        return self._load(os.path.join(self.records, filename(key)))

    def path(self, *parts: str) -> str:
        return os.path.join(self.root, *parts)

    def _load(self, path: str) -> Record | None:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise io_error(f"read {path}", e) from e
        try:
            return Record.from_json(data)
        except (ValueError, TypeError, KeyError) as e:
            if not self.quarantine:
                return None
            aside = path + ".corrupt"
            log.error("record %s does not decode (%s); moved aside to %s", path, e, os.path.basename(aside))
            with durable.suppress(OSError):
                os.replace(path, aside)
            return None

    def put(self, record: Record) -> None:
        path = os.path.join(self.records, filename(record.key))
        try:
            durable.write(path, record.to_json())
        except OSError as e:
            raise io_error(f"write {path}", e) from e

    def delete(self, key: str) -> None:
        try:
            durable.remove(os.path.join(self.records, filename(key)))
        except OSError as e:
            raise io_error(f"remove record {key}", e) from e

    def all(self) -> list[Record]:
        try:
            names = sorted(n for n in os.listdir(self.records) if n.endswith(SUFFIX))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise io_error(f"list {self.records}", e) from e
        return [r for r in (self._load(os.path.join(self.records, n)) for n in names) if r is not None]

    def pruned_before(self, when: float) -> bool:
        try:
            return os.stat(self.path("pruned")).st_mtime < when
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def mark_pruned(self) -> None:
        try:
            with open(self.path("pruned"), "ab"):
                pass
            os.utime(self.path("pruned"))
        except OSError as e:
            raise io_error("mark the prune time", e) from e

    def corrupt(self) -> list[str]:
        with durable.suppress(OSError):
            return sorted(n for n in os.listdir(self.records) if n.endswith(".corrupt"))
        return []


class _NetworkLock:
    __slots__ = ("held", "store")

    def __init__(self, store: Store):
        self.store, self.held = store, None

    def __enter__(self) -> None:
        held = durable.locked(self.store.path("lock"))
        try:
            held.__enter__()
        except OSError as e:
            raise io_error(f"lock {self.store.root}", e) from e
        self.held = held
        try:
            durable.sweep_tmp(self.store.records)
            durable.sweep_tmp(self.store.path("journal"))
        except BaseException:
            self.held = None
            held.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        if self.held is not None:
            self.held.__exit__(*exc)
            self.held = None


class _KeyLock:
    __slots__ = ("blocking", "held", "path")

    def __init__(self, path: str, blocking: bool):
        self.path, self.blocking, self.held = path, blocking, None

    def __enter__(self) -> bool:
        held = durable.locked(self.path, blocking=self.blocking)
        try:
            got = held.__enter__()
        except OSError as e:
            # No lock file and none can be made (read-only store): nothing can be written either, so go on
            # unlocked and let the first write report the store failure.
            log.warning("cannot lock %s: %s", self.path, e)
            return True
        self.held = held
        return got

    def __exit__(self, *exc) -> None:
        if self.held is not None:
            self.held.__exit__(*exc)
            self.held = None
