"""Pool sharing (issue 16): the nodes of one branch share one view of the pool-scoped objects through an elected leader.

Foundation so far; not yet wired into `edgeproxy serve`. Pure decisions at the bottom, the I/O shell on top:

    elector ── election     (a coordination.k8s.io/v1 Lease per pool: client-go leaderelection's semantics; the
       │                     follower learns the leader's peer address from an annotation)
       └── upstream         (the node's own API server pool and identity)
    policy                  (pure: which requests a follower may take from the leader — reads of Services,
                             EndpointSlices, RuntimeClasses, CSIDrivers; never anything identity-specific)
    errors

To come (see issue 16): the leader's peer listener (TLS, `system:node:*` client certificates), its upstream
list/watch per pool-scoped query served from memory and LMDB, the follower's routing and failover, metrics.
"""
