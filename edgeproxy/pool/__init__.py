"""Pool sharing (issue 16): the nodes of one branch share one view of the pool-scoped objects through an elected leader.

Foundation so far; not yet wired into `edgeproxy serve`. Pure decisions at the bottom, the I/O shell on top:

    elector ── election     (a coordination.k8s.io/v1 Lease per pool: client-go leaderelection's semantics; the
       │                     follower learns the leader's peer address from an annotation)
       └── upstream         (the node's own API server pool and identity)
    peers ── policy         (the leader's peer listener: TLS with client certificates REQUIRED and verified against
                             the cluster CA, `CN=system:node:<name>, O=system:nodes` only; then policy; then an
                             `answer` seam — 503 until the leader's view exists)
    policy                  (pure: which requests a follower may take from the leader — reads of Services,
                             EndpointSlices, RuntimeClasses, CSIDrivers; never anything identity-specific)
    errors

To come (see issue 16): the leader's view (one upstream list/watch per pool-scoped query, served from memory and
LMDB with real list/watch semantics) behind the `answer` seam, wiring into `edgeproxy serve` (config, the follower's
routing and failover), metrics, the real-tier branch scenario and `python -m benchmarks branch`.
"""
