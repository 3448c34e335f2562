"""edgeproxy: a caching reverse proxy for the Kubernetes API that keeps edge nodes working offline.

The data path reads down the tree; imports go downward only:

    cli ── server ── proxy ──┬── upstream        (kube-apiserver pool: TLS, health, failover)
                             ├── record ── cache (tee: list/get/watch responses → LMDB, never delays the client)
                             └── local  ── cache (offline answers: get, list, watch, writes)
    kube/   the pure wire layer under all of them: bytes in, values out, no I/O
    sim/    a Kubernetes API simulator for the demo, the tests and the benchmarks

`cache/` (the LMDB store) and `cni_plugin/` (the IPAM snapshot plugin) are sibling top-level packages:
`cache` knows nothing of HTTP, `cni_plugin` uses the standard library only.
"""

__version__ = "0.1.0"
