"""A Kubernetes API simulator that speaks JSON and protobuf as a real kube-apiserver does (see tests/fixtures).

Modules: simulator (the Simulator object: listener, faults, in-process API), api (HTTP), store (state, history,
watchers), writes (write semantics), patch, seed (fixture cluster and synthetic load), resources (what is served),
main (the `edgeproxy sim` command).
"""

from edgeproxy.sim.simulator import Simulator

__all__ = ["Simulator"]
