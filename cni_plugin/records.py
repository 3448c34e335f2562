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

import contextlib
import dataclasses
import json
import logging
import os
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cni_plugin import durable, errors

ACTIVE, HELD, RELEASED = "ACTIVE", "HELD", "RELEASED"
STATES = (ACTIVE, HELD, RELEASED)
SUFFIX = ".json"
FORMAT = 1  # the "v" of every record file
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    key: str
    state: str
    container: str
    owner: str
    ifname: str
    result: dict  # result.normalize() form
    created: float
    updated: float  # last write
    since: float  # when it entered its current state (HELD age, RELEASED age)

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
        return dataclasses.replace(self, updated=now, **changes)

    def to_json(self) -> bytes:
        return json.dumps({"v": FORMAT, **dataclasses.asdict(self)}, sort_keys=True, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> Record:
        raw = json.loads(data)
        fields = {f.name for f in dataclasses.fields(cls)}
        # Strict, so a damaged file is caught; a later format must convert FORMAT 1 records here, not reject them.
        if not isinstance(raw, dict) or raw.pop("v", None) != FORMAT:
            raise ValueError(f"not a format {FORMAT} record")
        if set(raw) != fields or raw["state"] not in STATES:
            raise ValueError("record fields or state are not what this version writes")
        if not isinstance(raw["result"], dict) or not isinstance(raw["result"].get("ips"), list):
            raise ValueError("record result has no ips")
        return cls(**raw)


def filename(key: str) -> str:
    return urllib.parse.quote(key, safe="") + SUFFIX


def io_error(what: str, e: OSError) -> errors.StoreFailure:
    return errors.StoreFailure(f"snapshot store: cannot {what}: {e.strerror or e}", str(e))


class Store:
    """One network's directory: records/, locks/, journal/ and the network lock."""

    __slots__ = ("quarantine", "records", "root")

    def __init__(self, root: Path):
        self.root = root
        self.records = root / "records"
        self.quarantine = True  # move undecodable records aside (inspect turns this off: it must not write)

    @classmethod
    def open(cls, data_dir: Path, network: str) -> Store:
        store = cls(data_dir / network)
        for d in (store.root, store.records, store.root / "locks", store.root / "journal"):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                if not d.is_dir():
                    raise io_error(f"create {d}", e) from e
        return store

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """The network-wide lock for read-modify-write of records and journal (short; never around an exec)."""
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(durable.locked(self.root / "lock"))
            except OSError as e:
                raise io_error(f"lock {self.root}", e) from e
            durable.sweep_tmp(self.records)
            durable.sweep_tmp(self.root / "journal")
            yield

    @contextlib.contextmanager
    def key_lock(self, key: str, *, blocking: bool = True) -> Iterator[bool]:
        """Serialise operations on one pod interface (held across its delegate exec; other pods are not blocked)."""
        path = self.root / "locks" / filename(key)
        with contextlib.ExitStack() as stack:
            try:
                got = stack.enter_context(durable.locked(path, blocking=blocking))
            except OSError as e:
                # No lock file and none can be made (read-only store): nothing can be written either, so go on
                # unlocked and let the first write report the store failure.
                log.warning("cannot lock %s: %s", path, e)
                got = True
            yield got

    def get(self, key: str) -> Record | None:
        return self._load(self.records / filename(key))

    def _load(self, path: Path) -> Record | None:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise io_error(f"read {path}", e) from e
        try:
            return Record.from_json(data)
        except (ValueError, TypeError, KeyError) as e:
            if not self.quarantine:
                return None
            aside = path.with_name(path.name + ".corrupt")
            log.error("record %s does not decode (%s); moved aside to %s", path, e, aside.name)
            with contextlib.suppress(OSError):
                os.replace(path, aside)
            return None

    def put(self, record: Record) -> None:
        path = self.records / filename(record.key)
        try:
            durable.write(path, record.to_json())
        except OSError as e:
            raise io_error(f"write {path}", e) from e

    def delete(self, key: str) -> None:
        try:
            durable.remove(self.records / filename(key))
        except OSError as e:
            raise io_error(f"remove record {key}", e) from e

    def all(self) -> list[Record]:
        try:
            names = sorted(n for n in os.listdir(self.records) if n.endswith(SUFFIX))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise io_error(f"list {self.records}", e) from e
        return [r for r in (self._load(self.records / n) for n in names) if r is not None]

    def pruned_before(self, when: float) -> bool:
        try:
            return (self.root / "pruned").stat().st_mtime < when
        except FileNotFoundError:
            return True
        except OSError:
            return False

    def mark_pruned(self) -> None:
        try:
            (self.root / "pruned").touch()
        except OSError as e:
            raise io_error("mark the prune time", e) from e

    def corrupt(self) -> list[str]:
        with contextlib.suppress(OSError):
            return sorted(n for n in os.listdir(self.records) if n.endswith(".corrupt"))
        return []
