"""Which requests a follower may take from its pool leader instead of the API server. Pure.

Shared: reads (get, list, watch — watch-list too) of the pool-scoped resources, the ones every node of the cluster
reads in full and may read: by default Services, EndpointSlices, RuntimeClasses and CSIDrivers. Everything else goes
to the API server with the node's own identity: writes, subresources, and above all anything identity-specific —
Secrets, ConfigMaps, Pods, ServiceAccounts and their tokens, the Node and its Lease, CSINodes, volumes — which no
configuration can add (a request for one would hand one node's view of the cluster to another). A request carrying its
own credentials (a pod's bearer token, impersonation) is the API server's to authorize: it is shared only when the
operator says so (`tokens=True`), since the leader answers every node alike.
Neighbours: kube.request (classifies the request this judges), errors.
"""

from __future__ import annotations

import dataclasses

from edgeproxy.kube import request
from edgeproxy.pool import errors

# (group, resource): "" is the core group.
DEFAULT_RESOURCES = frozenset({
    ("", "services"),
    ("discovery.k8s.io", "endpointslices"),
    ("node.k8s.io", "runtimeclasses"),
    ("storage.k8s.io", "csidrivers"),
})
# Never shared, whatever the configuration: objects that carry or reveal a node's (or a workload's) identity, or that
# the Node authorizer shows each node only in part.
NEVER = frozenset({
    ("", "secrets"), ("", "configmaps"), ("", "pods"), ("", "serviceaccounts"), ("", "nodes"),
    ("", "persistentvolumeclaims"), ("", "persistentvolumes"), ("", "events"), ("", "bindings"),
    ("coordination.k8s.io", "leases"), ("storage.k8s.io", "csinodes"), ("storage.k8s.io", "volumeattachments"),
    ("certificates.k8s.io", "certificatesigningrequests"), ("authentication.k8s.io", "tokenreviews"),
    ("authorization.k8s.io", "subjectaccessreviews"), ("resource.k8s.io", "resourceclaims"),
    ("resource.k8s.io", "resourceslices"), ("events.k8s.io", "events"),
})
READS = frozenset({"get", "list", "watch"})


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    shared: bool
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Policy:
    resources: frozenset[tuple[str, str]] = DEFAULT_RESOURCES
    tokens: bool = False  # share requests that carry their own bearer token too

    def __post_init__(self) -> None:
        refused = sorted(_name(r) for r in self.resources & NEVER)
        if refused:
            raise errors.ConfigError(f"pool sharing can never include {', '.join(refused)}: identity-specific")

    def decide(self, info: request.RequestInfo, *, impersonating: bool = False) -> Decision:
        if not info.is_resource:
            return Decision(False, "not a resource request")
        key = (info.api_group, info.resource)
        if key in NEVER:
            return Decision(False, f"{_name(key)} are identity-specific")
        if key not in self.resources:
            return Decision(False, f"{_name(key)} are not pool-scoped")
        if info.verb not in READS:
            return Decision(False, f"{info.verb} is not a read")
        if info.subresource:
            return Decision(False, f"the {info.subresource} subresource is not shared")
        if impersonating:
            return Decision(False, "impersonation: the API server authorizes it")
        if info.client.identity and not self.tokens:
            return Decision(False, "own credentials: the API server authorizes them")
        return Decision(True, f"{info.verb} {_name(key)}")


def parse_resources(value: str) -> frozenset[tuple[str, str]]:
    """"services,endpointslices.discovery.k8s.io" (resource[.group], comma-separated) → the set; ConfigError for an
    empty entry or a resource that is never shared."""
    out = set()
    for raw in value.split(","):
        item = raw.strip()
        resource, _, group = item.partition(".")
        if not resource or not resource.isascii() or not resource.isalnum() or resource.lower() != resource:
            raise errors.ConfigError(
                f"pool resource {raw!r} is not resource[.group] (e.g. endpointslices.discovery.k8s.io)")
        out.add((group, resource))
    resources = frozenset(out)
    Policy(resources)  # refuses identity-specific ones
    return resources


def _name(key: tuple[str, str]) -> str:
    group, resource = key
    return f"{resource}.{group}" if group else resource
