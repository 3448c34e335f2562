"""The nodes as the companion sees them: a node informer, when each node's cache-health report last changed, and the
verdict (policy.judge_node) for a node now.

Every replica keeps one (the webhook answers from it; the leader's controller too). A report's age is timed by this
process's monotonic clock from the moment the annotation's value changed, never by the edge host's clock; at start
every report counts as just seen. Neighbours: informer, policy, controller, webhook.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from edgeproxy.companion import health, informer, kubeapi, policy


def slim(node: dict[str, Any]) -> dict[str, Any]:
    """What the decisions read: name, the two annotations, the opt-in label, the Ready condition."""
    md = node.get("metadata") or {}
    ann = {k: v for k, v in (md.get("annotations") or {}).items() if k in (policy.DURATION, health.ANNOTATION)}
    labels = {k: v for k, v in (md.get("labels") or {}).items() if k == policy.DURATION}
    ready = [c for c in (node.get("status") or {}).get("conditions") or () if c.get("type") == "Ready"]
    return {"metadata": {"name": md.get("name"), "resourceVersion": md.get("resourceVersion"), "annotations": ann,
                         "labels": labels},
            "status": {"conditions": [{"type": "Ready", "status": c.get("status")} for c in ready]}}


class NodeView:
    __slots__ = ("_clock", "_listeners", "informer", "max_age", "seen")

    def __init__(self, kube: kubeapi.Kube, *, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.informer = informer.Informer(kube, "/api/v1/nodes", on_change=self._changed, slim=slim)
        self.max_age = max_age
        self.seen: dict[str, tuple[str | None, float]] = {}  # node -> (health annotation, when it last changed)
        self._clock = clock
        self._listeners: list[Callable[[str], None]] = []

    def on_change(self, listener: Callable[[str], None]) -> None:
        """`listener(node_name)` after any change of a node's decision inputs."""
        self._listeners.append(listener)

    def _changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        obj = new or old or {}
        name = str((obj.get("metadata") or {}).get("name") or "")
        if new is None:
            self.seen.pop(name, None)
        else:
            value = ((new.get("metadata") or {}).get("annotations") or {}).get(health.ANNOTATION)
            if name not in self.seen or self.seen[name][0] != value:
                self.seen[name] = (value, self._clock())
        if old is not None and new is not None and old.get("metadata", {}).get("annotations") == \
                new.get("metadata", {}).get("annotations") and old.get("metadata", {}).get("labels") == \
                new.get("metadata", {}).get("labels") and old.get("status") == new.get("status"):
            return  # nothing the decisions read changed
        for listener in self._listeners:
            listener(name)

    def node(self, name: str) -> dict[str, Any] | None:
        return self.informer.items.get(("", name))

    def report_age(self, name: str) -> float | None:
        value, since = self.seen.get(name, (None, 0.0))
        return None if value is None else self._clock() - since

    def verdict(self, name: str) -> policy.Verdict | None:
        """None for a node not (or no longer) in the cluster."""
        node = self.node(name)
        if node is None:
            return None
        return policy.judge_node(node, self.report_age(name), self.max_age)
