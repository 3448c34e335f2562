"""What a node remembers of its pool across a restart: the pool's name and the leader it last followed, in
`<cache dir>/pool.json`.

At start, wiring takes the remembered name until the Node answers (before, an edgeproxy restarted while its Node could
not be read spent that time with "no pool name yet", every shareable request going to the API server), and the
follower follows the remembered leader until it reads the Lease: online that is its first LIST, a moment; with the
WAN down, as long as it stays down, as if the node had never restarted. Only a leader that is another node is
remembered: a node that led finds out from the Lease (offline, it answers its followers from its cached views
anyway). The file is written on a change only (a new name, another leader or address; never per renewal) to a
temporary file, fsynced, renamed over the old one, the directory fsynced: a crash leaves the old file or the new one.
A file that cannot be read or is not what we write is ignored with a warning, a write that fails is logged: the node
then learns it all again as on a first start. Neighbours: wiring (the name), follower (the leader), election (the
Lease's shape).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeproxy.pool import election

log = logging.getLogger(__name__)
FILE = "pool.json"


@dataclasses.dataclass(frozen=True, slots=True)
class Remembered:
    pool: str = ""
    lease: dict[str, Any] | None = None  # the pool's Lease as last seen naming another node (trimmed)


def trim(lease: Mapping[str, Any]) -> dict[str, Any]:
    """What follow.Following reads of a Lease: its holder record and the leader's address."""
    md = lease.get("metadata") or {}
    address = (md.get("annotations") or {}).get(election.ADDRESS_ANNOTATION)
    spec = lease.get("spec") or {}
    keep = ("holderIdentity", "leaseDurationSeconds", "acquireTime", "renewTime", "leaseTransitions")
    return {"metadata": {"name": md.get("name", ""), "annotations": {election.ADDRESS_ANNOTATION: address}
                         if address else {}},
            "spec": {k: spec[k] for k in keep if k in spec}}


def decode(raw: bytes) -> Remembered:
    """The file's content; ValueError when it is not what `encode` writes."""
    doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    pool = doc.get("pool", "")
    lease = doc.get("lease")
    if not isinstance(pool, str) or (lease is not None and not isinstance(lease, dict)):
        raise ValueError("pool must be a string and lease an object")
    if pool:
        election.lease_name(pool)  # a name that would make no Lease: not ours
    if lease is not None and not isinstance(lease.get("spec"), dict):
        raise ValueError("the lease has no spec")
    return Remembered(pool, lease)


def encode(r: Remembered) -> bytes:
    return json.dumps({"pool": r.pool, "lease": r.lease}, separators=(",", ":")).encode() + b"\n"


class Memory:
    """The remembered state of one node, read once at start, written when it changes."""

    __slots__ = ("path", "state")

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / FILE
        self.state = Remembered()
        try:
            self.state = decode(self.path.read_bytes())
        except FileNotFoundError:
            pass
        except Exception as e:  # unreadable or not ours: learnt again, as on a first start
            log.warning("pool: %s is ignored (%s: %s); the pool's name and leader are learnt again", self.path,
                        type(e).__name__, e)

    @property
    def pool(self) -> str:
        return self.state.pool

    def lease(self, pool: str) -> dict[str, Any] | None:
        """The remembered Lease of `pool` (it names another node than this one)."""
        return self.state.lease if self.state.pool == pool else None

    def remember_pool(self, pool: str) -> None:
        if pool != self.state.pool:
            self._write(Remembered(pool, None))

    def remember_lease(self, pool: str, lease: Mapping[str, Any] | None) -> None:
        """The Lease of the remembered pool now followed (None: none); written only when its holder or the leader's
        address changed. An elector of another pool (one being replaced) changes nothing."""
        if pool != self.state.pool:
            return
        trimmed = trim(lease) if lease is not None else None
        if _who(trimmed) != _who(self.state.lease):
            self._write(Remembered(pool, trimmed))

    def _write(self, r: Remembered) -> None:
        self.state = r
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{FILE}.", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(encode(r))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as e:
            log.warning("pool: cannot remember the pool in %s: %s", self.path, e)


def _who(lease: Mapping[str, Any] | None) -> tuple[str, str]:
    if lease is None:
        return "", ""
    return (election.holder(lease),
            str(((lease.get("metadata") or {}).get("annotations") or {}).get(election.ADDRESS_ANNOTATION) or ""))
