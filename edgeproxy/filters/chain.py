"""Which filters apply to a request, and what they do to one object: the decisions of the filter stage, pure.

Two filters, each named, each for a set of clients and resources:

- `servicetopology`: an EndpointSlice of a Service that opted in (label `edgeproxy.io/topology=pool` on the Service,
  which the EndpointSlice controller copies onto its slices) keeps only the endpoints in this node's pool: those whose
  `zone` (the controller copies the endpoint's node label `topology.kubernetes.io/zone` into it) equals this node's
  pool, or whose `nodeName` is this node. A slice with no local endpoint is left whole.
- `inclusterredirect`: the default/kubernetes EndpointSlice and Endpoints point at edgeproxy's in-cluster listener
  (one endpoint, the operator's node-local address and port), so kube-proxy sends every pod's `kubernetes.default`
  traffic on this node to edgeproxy.

`Chain.rewrite(encoding, obj)` runs the selected filters over one object (kube.endpoints does the byte work) and
notes which filter touched it. Neighbours: stage (the I/O side: facts, streams, stats), kube.endpoints, kube.rewrite.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from edgeproxy.kube import endpoints

TOPOLOGY = "servicetopology"
REDIRECT = "inclusterredirect"
TOPOLOGY_LABEL = "edgeproxy.io/topology"  # on a Service (mirrored onto its EndpointSlices); value "pool" opts in
TOPOLOGY_POOL = "pool"
DISCOVERY = "discovery.k8s.io"


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    """What the operator turned on. `redirect` is the in-cluster listener's (IP, port), None when off."""

    components: frozenset[str] = frozenset({"kube-proxy", "coredns"})
    topology: bool = True
    redirect: tuple[str, int] | None = None

    @property
    def any(self) -> bool:
        return self.topology or self.redirect is not None


@dataclasses.dataclass(frozen=True, slots=True)
class Place:
    """Where this node is: its name and its pool ("" when its node carries no pool label, or it is not known yet)."""

    node: str = ""
    pool: str = ""

    def local(self, node_name: str, zone: str) -> bool:
        return bool((self.pool and zone == self.pool) or (self.node and node_name == self.node))


def names_for(settings: Settings, component: str, group: str, resource: str, verb: str, subresource: str = ""
              ) -> tuple[str, ...]:
    """The filters for a request of `component` on group/resource with `verb` (none for writes, subresources, or
    clients the operator did not name)."""
    if component not in settings.components or subresource or verb not in ("get", "list", "watch"):
        return ()
    names: list[str] = []
    if group == DISCOVERY and resource == "endpointslices":
        if settings.redirect is not None:
            names.append(REDIRECT)
        if settings.topology:
            names.append(TOPOLOGY)
    elif group == "" and resource == "endpoints" and settings.redirect is not None:
        names.append(REDIRECT)
    return tuple(names)


@dataclasses.dataclass(slots=True)
class Chain:
    """The filters of one request, over one kind of object; `touched` counts the objects each filter changed.
    `place()` is this node's Place now; `target()` the redirect's (IP, port), None while it is withheld."""

    names: tuple[str, ...]
    kind: str  # "endpointslices" or "endpoints"
    place: Callable[[], Place]
    target: Callable[[], tuple[str, int] | None]
    touched: dict[str, int] = dataclasses.field(default_factory=dict)

    def rewrite(self, encoding: str, obj: bytes) -> bytes | None:
        """The object as the filters leave it, or None when none of them changed it."""
        namespace, name, labels = endpoints.slice_meta(encoding, obj)
        out: bytes | None = None
        for fname in self.names:
            new = self._one(fname, encoding, obj if out is None else out, namespace, name, labels)
            if new is not None:
                out = new
                self.touched[fname] = self.touched.get(fname, 0) + 1
        return out

    def _one(self, fname: str, encoding: str, obj: bytes, namespace: str, name: str,
             labels: dict[str, str]) -> bytes | None:
        if fname == REDIRECT:
            target = self.target()
            if target is None or namespace != "default":
                return None
            ip, port = target
            if self.kind == "endpoints":
                return endpoints.redirect_endpoints(encoding, obj, ip, port) if name == "kubernetes" else None
            if labels.get(endpoints.SERVICE_NAME_LABEL) != "kubernetes":
                return None
            return endpoints.redirect_slice(encoding, obj, ip, port)
        if fname == TOPOLOGY:
            if labels.get(TOPOLOGY_LABEL) != TOPOLOGY_POOL:
                return None
            place = self.place()
            if not place.pool and not place.node:
                return None
            return endpoints.keep_endpoints(encoding, obj, place.local)
        return None
