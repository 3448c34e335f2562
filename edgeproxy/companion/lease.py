"""Leader election on a coordination.k8s.io/v1 Lease, the decisions: as client-go's leaderelection does. Pure.

Only the leader patches pods; every replica serves the webhook. A lease held by another replica is taken over only
when its record has not changed for `leaseDurationSeconds` as timed by THIS replica's clock (client-go's
observedTime), so clock skew between hosts never shortens a lease. Neighbours: elector (the I/O loop).
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping
from typing import Any


class Step(enum.Enum):
    CREATE = "create"  # no lease yet: create it, holding it
    RENEW = "renew"  # we hold it: renew
    ACQUIRE = "acquire"  # free or expired: take it over
    WAIT = "wait"  # someone else holds it


def micro_time(now: float) -> str:
    """metav1.MicroTime's wire form."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"


def holder(lease: Mapping[str, Any] | None) -> str:
    return str(((lease or {}).get("spec") or {}).get("holderIdentity") or "")


def decide(lease: Mapping[str, Any] | None, me: str, observed_for: float) -> Step:
    """`observed_for`: seconds since this replica saw the lease's record (holder, renewTime, ...) last change."""
    if lease is None:
        return Step.CREATE
    who = holder(lease)
    if who == me:
        return Step.RENEW
    spec = lease.get("spec") or {}
    duration = float(spec.get("leaseDurationSeconds") or 0)
    if who and observed_for < duration:
        return Step.WAIT
    return Step.ACQUIRE


def spec_for(lease: Mapping[str, Any] | None, me: str, duration: int, now: float) -> dict[str, Any]:
    """The spec to write when creating, renewing or acquiring: acquireTime and leaseTransitions change only when
    the holder changes."""
    old = dict((lease or {}).get("spec") or {})
    stamp = micro_time(now)
    spec: dict[str, Any] = {"holderIdentity": me, "leaseDurationSeconds": duration, "renewTime": stamp}
    if lease is not None and holder(lease) == me and old.get("acquireTime"):
        spec["acquireTime"] = old["acquireTime"]
        spec["leaseTransitions"] = int(old.get("leaseTransitions") or 0)
    else:
        spec["acquireTime"] = stamp
        transitions = int(old.get("leaseTransitions") or 0)
        spec["leaseTransitions"] = transitions + 1 if lease is not None and holder(lease) else transitions
    return spec


def released(lease: Mapping[str, Any]) -> dict[str, Any]:
    """The spec a leader writes when it stops (client-go ReleaseOnCancel): no holder, and a 1 s duration so the
    next replica takes over at once."""
    spec = dict(lease.get("spec") or {})
    spec["holderIdentity"] = ""
    spec["leaseDurationSeconds"] = 1
    return spec


@dataclasses.dataclass(slots=True)
class Observed:
    """The last lease record seen and when (monotonic): what `decide` needs across polls."""

    record: tuple[Any, ...] = ()
    since: float = 0.0

    def see(self, lease: Mapping[str, Any] | None, now: float) -> float:
        """Note the lease as read at monotonic `now`; return seconds since its record last changed."""
        spec = (lease or {}).get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"),
                  spec.get("leaseDurationSeconds"), spec.get("leaseTransitions"))
        if record != self.record:
            self.record, self.since = record, now
        return now - self.since
