"""Deferred releases: delegate leases that must be freed but could not be while the delegate was offline.

One file per lease (`<network>/journal/<owner>@<ifname>.json`) so adding and dropping are single atomic renames.
An entry carries everything the release needs later, when the pod and its config may be gone: the owner container id,
the interface, CNI_ARGS and the delegate's stdin config. commands.py writes an entry *before* asking the delegate to
release (so a crash in between is replayed, never forgotten) and drops it once the delegate said yes; it replays
pending entries whenever the delegate has just answered. Callers hold records.Store.lock() around add/drop.
It also notes containers whose ADD the delegate refused while offline (`journal/no-lease/`): they hold no lease, so
the DELs the runtime sends for those failed sandboxes (one per retry, for the whole outage) need no release at all.
Neighbours: records.py (the directory and its lock), durable.py, commands.py, inspection.py.
"""

from __future__ import annotations

import os

from cni_plugin import durable, jsonio, log, records
from cni_plugin.value import Value


class Release(Value):
    """owner (the container id the delegate's lease is held under), ifname, key (the record this lease backs, "" if
    none), cni_args, conf (the delegate's stdin config), created, attempts, last_error."""

    _fields = ("owner", "ifname", "key", "cni_args", "conf", "created", "attempts", "last_error")
    __slots__ = _fields
    _defaults = {"attempts": 0, "last_error": ""}

    @property
    def name(self) -> str:
        return entry_name(self.owner, self.ifname)


def entry_name(owner: str, ifname: str) -> str:
    return records.quote(f"{owner}@{ifname}", safe="@") + ".json"


NO_LEASE_MAX_AGE = 86400.0  # a runtime sends the DELs of a failed sandbox within minutes; a day is plenty


class Journal:
    __slots__ = ("dir", "no_lease")

    def __init__(self, store: records.Store):
        self.dir: str = store.path("journal")
        self.no_lease: str = os.path.join(self.dir, "no-lease")

    def note_no_lease(self, owner: str, ifname: str) -> None:
        """Best effort: remember that (owner, ifname) got no lease (its ADD failed with the delegate offline)."""
        try:
            os.makedirs(self.no_lease, exist_ok=True)
            durable.write(os.path.join(self.no_lease, entry_name(owner, ifname)), b"")
        except OSError as e:
            log.warning("cannot note that %s holds no lease: %s", owner, e)

    def holds_no_lease(self, owner: str, ifname: str) -> bool:
        return os.path.exists(os.path.join(self.no_lease, entry_name(owner, ifname)))

    def prune_no_lease(self, now: float) -> None:
        with durable.suppress(OSError):
            for entry in os.scandir(self.no_lease):
                if entry.name.startswith(durable.TMP_PREFIX) or now - entry.stat().st_mtime > NO_LEASE_MAX_AGE:
                    with durable.suppress(OSError):
                        os.unlink(entry.path)

    def add(self, release: Release) -> None:
        path = os.path.join(self.dir, release.name)
        try:
            # 0600: the delegate's config may carry what an API-backed IPAM needs to authenticate.
            durable.write(path, jsonio.dumps(release.as_dict(), sort_keys=True).encode() + b"\n", 0o600)
        except OSError as e:
            raise records.io_error(f"write journal entry {path}", e) from e

    def drop(self, owner: str, ifname: str) -> bool:
        try:
            return durable.remove(os.path.join(self.dir, entry_name(owner, ifname)))
        except OSError as e:
            raise records.io_error("drop journal entry", e) from e

    def get(self, owner: str, ifname: str) -> Release | None:
        return self._load(os.path.join(self.dir, entry_name(owner, ifname)))

    def _load(self, path: str) -> Release | None:
        try:
            with open(path, "rb") as f:
                raw = jsonio.loads(f.read())
            if not isinstance(raw, dict):
                raise TypeError("not an object")
            return Release(**raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            log.error("journal entry %s does not decode (%s); moved aside", path, e)
            with durable.suppress(OSError):
                os.replace(path, path + ".corrupt")
            return None
        except OSError as e:
            raise records.io_error(f"read {path}", e) from e

    def any_pending(self) -> bool:
        with durable.suppress(OSError):
            return any(e.name.endswith(".json") and not e.name.startswith(durable.TMP_PREFIX)
                       for e in os.scandir(self.dir))
        return False

    def pending(self) -> list[Release]:
        try:
            names = sorted(n for n in os.listdir(self.dir) if n.endswith(".json"))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise records.io_error(f"list {self.dir}", e) from e
        entries = [e for e in (self._load(os.path.join(self.dir, n)) for n in names) if e is not None]
        return sorted(entries, key=lambda e: e.created)
