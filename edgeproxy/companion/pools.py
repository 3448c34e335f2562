"""Pool leaders chosen by the companion (issue 16): per pool, one node whose edgeproxy shares, named on a Lease. Pure.

Nodes cannot elect among themselves on a Lease of their own: kube-apiserver's NodeRestriction admission refuses a
node every Lease but its own in kube-node-lease, whatever RBAC grants. So the companion (cloud side, as OpenYurt's
pool controller) writes one Lease per pool, `<namespace>/edgeproxy-pool-<pool>` in the shape pool.election reads
(holderIdentity, leaseDurationSeconds, renewTime, acquireTime, leaseTransitions, the label edgeproxy.io/pool and
the leader's peer address in the annotation edgeproxy.io/pool-leader-address), and the nodes only read it.

A pool is the value of the node label `label` (default topology.kubernetes.io/zone). A node may lead when:
  - its edgeproxy shares: it wrote its peer address on its own Node (annotation edgeproxy.io/pool-peer, "host:port");
  - it is alive: its Lease in kube-node-lease (the kubelet renews it through edgeproxy, so a dead edgeproxy or node
    stops renewing it) changed within `grace` seconds (0: the Lease's own leaseDurationSeconds), timed by the
    companion's monotonic clock from the moment it saw the change (node clocks are never compared);
  - its Node is not being deleted.
The holder is kept while it may lead (sticky: a leader change costs every follower a re-watch); otherwise the first
eligible node by name (a stable order: every companion replica picks the same). With no eligible node, nothing is
written: the Lease expires and every node goes to the API server itself. A Lease is written when its holder or address
changes, and renewed every `renew` seconds. Neighbours: poolctl (the I/O: informers and writes), pool.election (the
Lease's shape, which the nodes read).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from edgeproxy.pool import election
from edgeproxy.pool import errors as pool_errors

PEER_ANNOTATION = "edgeproxy.io/pool-peer"  # written by a sharing node's edgeproxy on its own Node: "host:port"
NODE_LEASE_NAMESPACE = "kube-node-lease"


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """One node of a pool as the decisions see it."""

    node: str
    pool: str
    address: str  # its peer address ("" when its edgeproxy does not share, or wrote an unusable one)
    alive: bool  # its node Lease is fresh and the Node is not being deleted

    @property
    def eligible(self) -> bool:
        return self.alive and bool(self.address)


class Freshness:
    """When each node's Lease (in kube-node-lease) last changed, by this process's monotonic clock."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[str, tuple[tuple[Any, ...], float, float]] = {}  # node -> (record, since, duration)

    def see(self, lease: Mapping[str, Any] | None, name: str, mono: float) -> None:
        """A node Lease as read (None: deleted)."""
        if lease is None:
            self._seen.pop(name, None)
            return
        spec = lease.get("spec") or {}
        record = (spec.get("holderIdentity"), spec.get("renewTime"), spec.get("leaseDurationSeconds"))
        try:
            duration = float(spec.get("leaseDurationSeconds") or 0)
        except (TypeError, ValueError):
            duration = 0.0
        old = self._seen.get(name)
        if old is None or old[0] != record:
            self._seen[name] = (record, mono, duration)

    def fresh(self, name: str, mono: float, grace: float = 0.0) -> bool:
        seen = self._seen.get(name)
        if seen is None:
            return False
        _, since, duration = seen
        limit = grace if grace > 0 else duration
        return mono - since < limit


def _address(value: Any) -> str:
    """A usable peer address, or ""."""
    if not isinstance(value, str) or not value:
        return ""
    try:
        election.parse_address(value)
    except pool_errors.ConfigError:
        return ""
    return value.strip()


def _pool(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return ""
    try:
        election.lease_name(value)
    except pool_errors.ConfigError:
        return ""
    return value


def members(nodes: Iterable[Mapping[str, Any]], label: str, freshness: Freshness, mono: float,
            grace: float = 0.0) -> dict[str, list[Member]]:
    """Nodes (as the API server sends them, or slimmed to metadata) → {pool: its members, by name}. Nodes without
    a usable pool label belong to no pool."""
    out: dict[str, list[Member]] = {}
    for node in nodes:
        md = node.get("metadata") or {}
        name = str(md.get("name") or "")
        pool = _pool((md.get("labels") or {}).get(label))
        if not name or not pool:
            continue
        address = _address((md.get("annotations") or {}).get(PEER_ANNOTATION))
        alive = not md.get("deletionTimestamp") and freshness.fresh(name, mono, grace)
        out.setdefault(pool, []).append(Member(name, pool, address, alive))
    for group in out.values():
        group.sort(key=lambda m: m.node)
    return out


def choose(group: Iterable[Member], current: str) -> Member | None:
    """The pool's leader: the current holder while it may lead, else the first eligible node by name; None when no
    node may lead."""
    eligible = [m for m in group if m.eligible]
    for m in eligible:
        if m.node == current:
            return m
    return min(eligible, key=lambda m: m.node) if eligible else None


@dataclasses.dataclass(frozen=True, slots=True)
class Write:
    create: bool  # POST to the collection (no Lease yet), else PUT carrying the resourceVersion read
    body: dict[str, Any]
    holder: str
    changed: bool  # the holder or its address changes (else a renewal)


def lease_path(namespace: str, pool: str = "") -> str:
    base = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{base}/{election.lease_name(pool)}" if pool else base


def plan(pool: str, group: Iterable[Member], lease: Mapping[str, Any] | None, *, namespace: str, duration: int,
         renew: float, since_write: float | None, wall: float) -> Write | None:
    """What to write for one pool now, or None. `lease`: the pool's Lease as last read or written (None: there is
    none); `since_write`: seconds since this process last wrote it (None: never)."""
    current = election.holder(lease)
    spec = (lease or {}).get("spec") or {}
    annotations = ((lease or {}).get("metadata") or {}).get("annotations") or {}
    leader = choose(group, current)
    if leader is None:
        return None  # nobody may lead: the Lease expires, every node asks the API server
    changed = (leader.node != current or annotations.get(election.ADDRESS_ANNOTATION) != leader.address
               or spec.get("leaseDurationSeconds") != duration)
    if not changed and since_write is not None and since_write < renew:
        return None
    stamp = election.micro_time(wall)
    try:
        transitions = int(spec.get("leaseTransitions") or 0)
    except (TypeError, ValueError):
        transitions = 0
    new_spec: dict[str, Any] = {"holderIdentity": leader.node, "leaseDurationSeconds": duration, "renewTime": stamp}
    if leader.node == current and spec.get("acquireTime"):
        new_spec.update(acquireTime=spec["acquireTime"], leaseTransitions=transitions)
    else:
        new_spec.update(acquireTime=stamp, leaseTransitions=transitions + 1 if current else transitions)
    if lease is None:
        body: dict[str, Any] = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                                "metadata": {"name": election.lease_name(pool), "namespace": namespace}}
    else:
        body = dict(lease)
        md = dict(body.get("metadata") or {})
        for k in ("labels", "annotations"):
            md[k] = dict(md.get(k) or {})
        body["metadata"] = md
    md = body["metadata"]
    md.setdefault("labels", {})[election.POOL_LABEL] = pool
    md.setdefault("annotations", {})[election.ADDRESS_ANNOTATION] = leader.address
    body["spec"] = new_spec  # metadata.resourceVersion as read: a concurrent writer makes this a 409
    return Write(lease is None, body, leader.node, changed)
