"""A node's role in its pool when the companion elects (--pool-election companion, the default): read the pool's
Lease, never write it. Pure.

kube-apiserver's NodeRestriction admission refuses a node every Lease outside kube-node-lease, so the companion
(companion/pools.py) names each pool's leader on the Lease `<namespace>/edgeproxy-pool-<pool>`, in the shape
election.py writes, and a node only reads it: holder = this node → LEADER; another holder with a live Lease → FOLLOWER
of the address in edgeproxy.io/pool-leader-address; no Lease, no holder, or a Lease whose record (holder, renewTime,
...) has not changed for leaseDurationSeconds on THIS node's monotonic clock → CANDIDATE (the API server directly).
An API server that cannot be reached at all freezes what the node saw, as election.Election.unreachable does: the
branch cut off from the WAN keeps its leader over the LAN. Neighbours: election (Lease shape, View, Role), follower
(the I/O), companion.pools (the writer).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from edgeproxy.pool import election, errors


class Following:
    """One node's reading of its pool's Lease across rounds."""

    __slots__ = ("_lease", "_observed", "_observed_at", "identity", "transitions_seen")

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self._lease: Mapping[str, Any] | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self.transitions_seen = 0

    def see(self, lease: Mapping[str, Any] | None, mono: float) -> None:
        """The Lease as just read (None: 404)."""
        spec = (lease or {}).get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"),
                  spec.get("leaseDurationSeconds"), spec.get("leaseTransitions"))
        if lease is None or record != self._observed:
            self._observed, self._observed_at = record, mono
        if lease is not None and self._lease is not None and election.holder(lease) != election.holder(self._lease):
            self.transitions_seen += 1
        self._lease = lease

    @property
    def lease(self) -> Mapping[str, Any] | None:
        """The Lease as last seen."""
        return self._lease

    def unreachable(self, mono: float) -> None:
        """No answer at all this round: the Lease does not age while nobody can renew it."""
        if self._lease is not None:
            self._observed_at = mono

    def _duration(self) -> float:
        try:
            duration = float(((self._lease or {}).get("spec") or {}).get("leaseDurationSeconds") or 0)
        except (TypeError, ValueError):
            duration = 0.0
        return max(duration, 0.0)

    def _expired(self, mono: float) -> bool:
        return mono - self._observed_at >= self._duration()

    def quiet(self, mono: float, margin: float) -> bool:
        """The Lease names a holder but its record has not changed for nearly its duration: from `margin` seconds
        before it expires to `margin` after. A watch over a dead link sees no change either, so the shell reads the
        Lease once in that window (no answer: `unreachable`, the leader stays); outside it, it reads nothing."""
        if self._lease is None or not election.holder(self._lease):
            return False
        age, duration = mono - self._observed_at, self._duration()
        return duration - margin <= age < duration + margin

    def view(self, mono: float) -> election.View:
        lease = self._lease
        who = election.holder(lease)
        if lease is None or not who or self._expired(mono):
            return election.View(election.Role.CANDIDATE)
        if who == self.identity:
            return election.View(election.Role.LEADER, who)
        raw = str(((lease.get("metadata") or {}).get("annotations") or {}).get(election.ADDRESS_ANNOTATION) or "")
        try:
            address = election.parse_address(raw)
        except errors.ConfigError as e:
            return election.View(election.Role.CANDIDATE, who, None, f"leader {who} advertises no usable address: {e}")
        return election.View(election.Role.FOLLOWER, who, address)


def lease_params(lease_name: str, resource_version: str = "", *, watch: bool = False,
                 timeout: int = 0) -> str:
    """The query string of a LIST (no `resource_version`) or WATCH of exactly one Lease, by name."""
    params = [("fieldSelector", f"metadata.name={lease_name}")]
    if watch:
        params += [("watch", "true"), ("allowWatchBookmarks", "true"), ("resourceVersion", resource_version)]
        if timeout:
            params.append(("timeoutSeconds", str(timeout)))
    return urlencode(params)
