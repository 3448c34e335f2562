"""The edge cache's health report: what edgeproxy writes on its own Node and the companion reads. Pure.

edgeproxy (edge side, `reporter`) keeps the annotation `edgeproxy.io/cache-health` on its Node current while online:
a compact JSON object `{"healthy": true, "reason": "...", "at": "<RFC 3339>"}`. `judge()` decides it from facts the
proxy knows about its cache; `encode()`/`decode()` are the two ends of the annotation. The companion never trusts
the `at` clock of the edge host: it times a report by when it saw the annotation change (policy.judge_node).
Neighbours: reporter (edge I/O), policy (cloud decisions).
"""

from __future__ import annotations

import dataclasses
import json
import time

from edgeproxy.companion import errors

ANNOTATION = "edgeproxy.io/cache-health"

# Store counters whose growth since the last report means the cache cannot be trusted with an outage: recording
# failed (full disk or map) or dropped (queue overflow), or a record failed its checksum.
FAILURE_COUNTERS = ("writes_failed", "writes_dropped", "map_full", "corrupt_records")


@dataclasses.dataclass(frozen=True, slots=True)
class Report:
    healthy: bool
    reason: str
    at: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Facts:
    """What the proxy knows about its cache when it reports."""

    cache_open: bool  # False: `--cache off`, or the cache could not be opened (forwarding only)
    counters: dict[str, int]  # the store's counters now (cache.store.COUNTERS)
    previous: dict[str, int]  # the same at the previous report (empty at the first)
    kubelet_pods_complete: bool  # kubelet's list of this node's pods is cached complete
    node: str  # "" when the proxy does not know its node's name


def judge(facts: Facts) -> Report:
    """Healthy enough for autonomy: an open cache that records without failures and holds kubelet's complete list
    of this node's pods (what kubelet needs to restart its pods offline)."""
    if not facts.node:
        return Report(False, "the proxy does not know its node's name (set EDGEPROXY_NODE_NAME)")
    if not facts.cache_open:
        return Report(False, "no cache: the proxy only forwards (--cache off, or the cache could not be opened)")
    grown = [c for c in FAILURE_COUNTERS if facts.counters.get(c, 0) > facts.previous.get(c, facts.counters.get(c, 0))]
    if grown:
        return Report(False, "cache failures since the last report: " + ", ".join(grown))
    if not facts.kubelet_pods_complete:
        return Report(False, "kubelet's pods of this node are not cached complete yet")
    return Report(True, "")


def encode(report: Report, now: float | None = None) -> str:
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if now is None else now))
    doc: dict[str, object] = {"healthy": report.healthy, "at": at}
    if report.reason:
        doc["reason"] = report.reason
    return json.dumps(doc, separators=(",", ":"))


def decode(text: str) -> Report:
    """The annotation's value as a Report; InvalidAnnotation when it is not one."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise errors.InvalidAnnotation(f"{ANNOTATION} is not JSON: {text[:80]!r}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("healthy"), bool):
        raise errors.InvalidAnnotation(f"{ANNOTATION} has no boolean 'healthy': {text[:80]!r}")
    return Report(doc["healthy"], str(doc.get("reason") or ""), str(doc.get("at") or ""))
