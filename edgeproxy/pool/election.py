"""Pool leader election on a coordination.k8s.io/v1 Lease, the decisions (client-go leaderelection's semantics). Pure.

One Lease per pool, `<namespace>/edgeproxy-pool-<pool>`. Each round the shell reads the Lease and asks `plan()`:
  - no Lease: CREATE it holding it (a 409 AlreadyExists means another node was first: a lost race, no error);
  - we hold it: UPDATE (renew) it — renewTime now, acquireTime and leaseTransitions kept;
  - free (empty holder) or expired: UPDATE it taking it over — acquireTime now, leaseTransitions + 1;
  - held by another node and not expired: WAIT, following that node.
Every UPDATE carries the resourceVersion read, so of two nodes racing for one Lease the API server lets one win and
answers the other 409 Conflict (optimistic concurrency; the loser simply follows next round).

Expiry is judged on THIS node's monotonic clock, never by comparing the Lease's renewTime with our wall clock: a Lease
counts as expired when its record (holder, renewTime, acquireTime, duration, transitions) has not changed for
leaseDurationSeconds since we first saw it that way (client-go's observedTime). Clock skew between nodes, or a wall
clock stepped by NTP, therefore never shortens another node's lease; the price is that a node that starts up waits one
full duration before it takes over a dead leader's Lease.

A leader leads while its last successful write is younger than `renew_deadline` (< duration, as client-go requires):
it stops serving peers before any other node can take the Lease over, and at once when it reads another holder.
Unlike client-go, an API server that cannot be reached at all (no answer, as opposed to an HTTP error) freezes what
each node saw (`unreachable`): nobody cut off can write the Lease, so a branch offline keeps its leader.
A follower learns the leader's peer address from the annotation `edgeproxy.io/pool-leader-address` ("host:port")
and forgets it when the Lease expires.
Neighbours: elector (the asyncio shell that sends what `plan()` decides), errors.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import time
from collections.abc import Mapping
from typing import Any

from edgeproxy.pool import errors

ADDRESS_ANNOTATION = "edgeproxy.io/pool-leader-address"
POOL_LABEL = "edgeproxy.io/pool"
LEASE_PREFIX = "edgeproxy-pool-"
_DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class Step(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, holding it
    RENEW = "renew"  # we hold it: update it
    ACQUIRE = "acquire"  # free or expired: update it, taking it over
    WAIT = "wait"  # another node holds it: follow


class Outcome(enum.Enum):
    OK = "ok"  # the API server accepted the write
    CONFLICT = "conflict"  # 409: another node wrote first (a lost race, not a failure)
    FAILED = "failed"  # anything else: the API server unreachable, 5xx, 403 ...


class Role(enum.Enum):
    LEADER = "leader"
    FOLLOWER = "follower"  # another node leads and its Lease is live
    CANDIDATE = "candidate"  # nobody is known to lead (or we cannot tell): go to the API server directly


def lease_name(pool: str) -> str:
    """The Lease's name for a pool; ConfigError for a pool name that would not make a valid object name."""
    name = LEASE_PREFIX + pool
    if not pool or len(name) > 253 or not _DNS1123_SUBDOMAIN.fullmatch(pool):
        raise errors.ConfigError(
            f"pool name {pool!r} is not usable: it must be lowercase letters, digits, '-' and '.', starting and ending "
            f"with a letter or digit, at most {253 - len(LEASE_PREFIX)} characters")
    return name


def parse_address(value: str) -> tuple[str, int]:
    """"host:port" or "[v6]:port" → (host, port); ConfigError otherwise."""
    host, sep, port = value.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        host = ""  # an unbracketed IPv6 address: ambiguous
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise errors.ConfigError(f"peer address {value!r} is not host:port (IPv6 as [addr]:port)")
    return host, int(port)


def micro_time(wall: float) -> str:
    """metav1.MicroTime's wire form."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + f".{int(wall % 1 * 1e6):06d}Z"


def _spec(lease: Mapping[str, Any] | None) -> Mapping[str, Any]:
    spec = (lease or {}).get("spec")
    return spec if isinstance(spec, Mapping) else {}


def holder(lease: Mapping[str, Any] | None) -> str:
    return str(_spec(lease).get("holderIdentity") or "")


def _int(value: Any, default: int = 0) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    pool: str
    identity: str  # this node's name, the holderIdentity it writes
    address: str  # the peer address this node advertises when it leads ("host:port")
    namespace: str = "edgeproxy"
    duration: int = 15  # leaseDurationSeconds
    renew_deadline: float = 10.0  # a leader that could not renew for this long stops leading
    retry: float = 2.0  # seconds between rounds

    def __post_init__(self) -> None:
        lease_name(self.pool)
        parse_address(self.address)
        if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", self.namespace):
            raise errors.ConfigError(f"namespace {self.namespace!r} is not a valid namespace name (a DNS label)")
        if not self.identity:
            raise errors.ConfigError("the node's identity (its node name) is empty")
        if not 0 < self.retry < self.renew_deadline < self.duration:
            raise errors.ConfigError(
                f"need 0 < retry ({self.retry:g}s) < renew deadline ({self.renew_deadline:g}s) < lease duration "
                f"({self.duration}s): a leader must stop leading before another node may take its Lease over")

    @property
    def lease_name(self) -> str:
        return lease_name(self.pool)

    @property
    def collection_path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    @property
    def path(self) -> str:
        return f"{self.collection_path}/{self.lease_name}"


@dataclasses.dataclass(frozen=True, slots=True)
class Action:
    step: Step
    body: dict[str, Any] | None = None  # the Lease to create or update (None for WAIT)


@dataclasses.dataclass(frozen=True, slots=True)
class View:
    """What the rest of the node needs: its role, who leads, and where to reach the leader (followers only)."""

    role: Role
    holder: str = ""
    leader_address: tuple[str, int] | None = None
    problem: str = ""  # why a live leader cannot be followed (a bad address annotation), for logs and /debug


class Election:
    """The state of one node's election in one pool, across rounds. Times are passed in: `mono` from
    time.monotonic(), `wall` from time.time() (only ever written into the Lease, never compared)."""

    __slots__ = ("_last_renew", "_lease", "_observed", "_observed_at", "_pending", "config", "transitions_seen")

    def __init__(self, config: Config) -> None:
        self.config = config
        self._lease: Mapping[str, Any] | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0
        self._last_renew: float | None = None  # monotonic time of our last successful write
        self._pending: Step | None = None
        self.transitions_seen = 0

    # --- one round: plan, then outcome ----------------------------------------------------------------------------

    def plan(self, lease: Mapping[str, Any] | None, mono: float, wall: float) -> Action:
        """The Lease as just read (None: 404) → what to send."""
        self._see(lease, mono)
        me = self.config.identity
        who = holder(lease)
        if who != me and self._last_renew is not None:
            self._last_renew = None  # another node holds it now: step down at once (client-go waits out the deadline)
        if lease is None:
            step = Step.CREATE
        elif who == me:
            step = Step.RENEW
        elif who and not self._expired(lease, mono):
            step = Step.WAIT
        else:
            step = Step.ACQUIRE
        self._pending = step
        if step is Step.WAIT:
            return Action(step)
        return Action(step, self._body(lease, step, wall))

    def outcome(self, result: Outcome, written: Mapping[str, Any] | None, mono: float) -> None:
        """What became of the planned write; `written` is the API server's answer on OK (the Lease with its new
        resourceVersion)."""
        step, self._pending = self._pending, None
        if step is None or step is Step.WAIT:
            return
        if result is Outcome.OK:
            self._last_renew = mono
            if written is not None:
                self._see(written, mono)
        elif result is Outcome.CONFLICT and step is not Step.RENEW:
            self._last_renew = None  # lost the race: someone else holds it now
        # FAILED, or a conflicting renewal: keep leading until renew_deadline passes without a successful write
        # (client-go: a renewal that fails is retried until RenewDeadline)

    def unreachable(self, mono: float) -> None:
        """The API server could not be reached at all this round (not an HTTP error: no answer). Nobody whose link
        is down can write the Lease, so what this node saw holds while it lasts: a leader keeps leading, a follower
        keeps its leader, and the branch cut off from the WAN keeps its leader over the LAN. When the link returns,
        the Lease read decides: a node that finds another holder steps down at once. (A partition that leaves other
        nodes able to write lets them elect another leader after the lease duration; they follow it, and this node
        learns of it when its own link returns.)"""
        self._pending = None
        if self._last_renew is not None and self.leading(mono):
            self._last_renew = mono
        if self._lease is not None and holder(self._lease) != self.config.identity:
            self._observed_at = mono  # the leader's lease does not age while nobody can renew it

    def released_body(self) -> dict[str, Any] | None:
        """The Lease to write when this node stops leading (client-go ReleaseOnCancel: no holder, duration 1 s so
        the next node takes over at its next round), or None if we do not hold the last Lease seen."""
        if self._lease is None or holder(self._lease) != self.config.identity:
            return None
        body = _copy(self._lease)
        spec = dict(_spec(body))
        spec["holderIdentity"] = ""
        spec["leaseDurationSeconds"] = 1
        body["spec"] = spec
        annotations = dict((body.get("metadata") or {}).get("annotations") or {})
        annotations.pop(ADDRESS_ANNOTATION, None)
        body["metadata"]["annotations"] = annotations
        return body

    def released(self) -> None:
        self._last_renew = None

    # --- what the node sees ---------------------------------------------------------------------------------------

    def leading(self, mono: float) -> bool:
        return self._last_renew is not None and mono - self._last_renew < self.config.renew_deadline

    def view(self, mono: float) -> View:
        if self.leading(mono):
            return View(Role.LEADER, self.config.identity, None)
        lease = self._lease
        who = holder(lease)
        if lease is None or not who or who == self.config.identity or self._expired(lease, mono):
            return View(Role.CANDIDATE, "" if lease is None or self._expired(lease, mono) else who)
        raw = str(((lease.get("metadata") or {}).get("annotations") or {}).get(ADDRESS_ANNOTATION) or "")
        try:
            address = parse_address(raw)
        except errors.ConfigError as e:
            return View(Role.CANDIDATE, who, None, f"leader {who} advertises no usable address: {e}")
        return View(Role.FOLLOWER, who, address)

    # --- internals ------------------------------------------------------------------------------------------------

    def _see(self, lease: Mapping[str, Any] | None, mono: float) -> None:
        spec = _spec(lease)
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("acquireTime"),
                  spec.get("leaseDurationSeconds"), spec.get("leaseTransitions"))
        if lease is None or record != self._observed:
            self._observed, self._observed_at = record, mono
        if lease is not None and self._lease is not None and holder(lease) != holder(self._lease):
            self.transitions_seen += 1
        self._lease = lease

    def _expired(self, lease: Mapping[str, Any], mono: float) -> bool:
        duration = _int(_spec(lease).get("leaseDurationSeconds"), 0)
        return mono - self._observed_at >= max(duration, 0)

    def _body(self, lease: Mapping[str, Any] | None, step: Step, wall: float) -> dict[str, Any]:
        c = self.config
        stamp = micro_time(wall)
        old = _spec(lease)
        spec: dict[str, Any] = {"holderIdentity": c.identity, "leaseDurationSeconds": c.duration, "renewTime": stamp}
        if step is Step.RENEW and old.get("acquireTime"):
            spec["acquireTime"] = old["acquireTime"]
            spec["leaseTransitions"] = _int(old.get("leaseTransitions"))
        else:
            spec["acquireTime"] = stamp
            transitions = _int(old.get("leaseTransitions"))
            spec["leaseTransitions"] = transitions + 1 if step is Step.ACQUIRE and holder(lease) else transitions
        body = _copy(lease) if lease is not None else {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": c.lease_name, "namespace": c.namespace}}
        md = body["metadata"]
        md.setdefault("labels", {})[POOL_LABEL] = c.pool
        md.setdefault("annotations", {})[ADDRESS_ANNOTATION] = c.address
        body["spec"] = spec  # metadata.resourceVersion stays as read: the API server's optimistic concurrency check
        return body


def _copy(lease: Mapping[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in lease.items()}
    md = dict(body.get("metadata") or {})
    for k in ("labels", "annotations"):
        if isinstance(md.get(k), Mapping):
            md[k] = dict(md[k])
        elif k in md:
            md[k] = {}
    body["metadata"] = md
    body.setdefault("apiVersion", "coordination.k8s.io/v1")
    body.setdefault("kind", "Lease")
    return body
