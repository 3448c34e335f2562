"""Bounded label values: what a client's User-Agent may put into metric series and debug buffers.

The component (the User-Agent's first word) labels every request counter and open-watch gauge and keys the
per-component debug record. A client choosing it freely made 10,000 User-Agents into 20,000 series and a 1 MB one
into a 600 MB /metrics (issue 14 D4). `component(name)` keeps the well-known node components and the configured
aliases' targets, plus the first `MAX_EXTRA` other names of a sane shape (lowercase letters, digits, `.`, `_`,
`-`, at most 63 characters); any other name becomes "other". `resource` and `verb` bound those labels the same
way (a request for /api/v1/<anything> names a resource). `path(p)` clips a request path for logs and debug buffers.

Boundary: pure decisions over strings, with a small bounded set of admitted names. Neighbours: proxy.py (metrics and
request logs), logs.py.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

KNOWN = frozenset({
    "", "kubelet", "kube-proxy", "coredns", "kubectl", "kube-controller-manager", "kube-scheduler", "kubeadm",
    "flanneld", "calico-node", "cilium-agent", "cilium-operator", "node-problem-detector", "containerd",
    "csi-node-driver-registrar", "metrics-server", "edgeproxy", "hollow-kubelet", "hollow-proxy",
})
MAX_EXTRA = 32
OTHER = "other"
MAX_PATH = 512
_SHAPE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


class Bounded:
    """Admits the names in `known` and the first `extra` other names of a sane shape; everything else is OTHER."""

    __slots__ = ("_admitted", "_lock", "extra", "known")

    def __init__(self, known: Iterable[str], extra: int) -> None:
        self.known = frozenset(known)
        self.extra = extra
        self._admitted: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, name: str) -> str:
        if name in self.known or name in self._admitted:
            return name
        if len(self._admitted) >= self.extra or not _SHAPE.fullmatch(name):
            return OTHER
        with self._lock:
            if len(self._admitted) < self.extra:
                self._admitted.add(name)
                return name
        return OTHER

    def reset(self) -> None:
        with self._lock:
            self._admitted.clear()


RESOURCES = frozenset({
    "", "pods", "nodes", "services", "endpoints", "endpointslices", "configmaps", "secrets", "serviceaccounts",
    "namespaces", "events", "leases", "persistentvolumes", "persistentvolumeclaims", "csinodes", "csidrivers",
    "volumeattachments", "runtimeclasses", "storageclasses", "certificatesigningrequests", "networkpolicies",
    "ingresses", "deployments", "replicasets", "daemonsets", "statefulsets", "jobs", "cronjobs",
    "customresourcedefinitions", "apiservices", "priorityclasses", "resourceslices", "resourceclaims",
})
component = Bounded(KNOWN, MAX_EXTRA)
resource = Bounded(RESOURCES, 64)
verb = Bounded({"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "connect",
                "head", "options", "post", "put", "unknown"}, 0)


def path(p: str) -> str:
    """A request path for a log line or a debug buffer: at most MAX_PATH characters, printable."""
    if len(p) <= MAX_PATH and p.isascii() and p.isprintable():
        return p
    s = p.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    return s if len(s) <= MAX_PATH else s[:MAX_PATH] + f"...(+{len(s) - MAX_PATH} chars)"


def configure(extra_known: Iterable[str]) -> None:
    """Also admit these component names always (the component aliases' targets)."""
    component.known = KNOWN | frozenset(extra_known)


def reset() -> None:
    """Forget the admitted names (a test's clean slate)."""
    component.reset()
    resource.reset()
