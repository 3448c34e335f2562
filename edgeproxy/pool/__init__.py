"""Pool sharing (issue 16, `serve --pool on`): the nodes of one branch share one view of the pool-scoped objects
through an elected leader.

Pure decisions and state at the bottom, the I/O shells on top:

    elector ── election     (a coordination.k8s.io/v1 Lease per pool: client-go leaderelection's semantics; the
       │                     follower learns the leader's peer address from an annotation)
       └── upstream         (the node's own API server pool and identity)
    peers ── policy         (the leader's peer listener: TLS with client certificates REQUIRED and verified against
      │                      the cluster CA, `CN=system:node:<name>, O=system:nodes` only; then policy; then an
      │                      `answer` seam: the views while this node leads, 503 otherwise)
      └── view ── state     (the leader's served view: one upstream list+watch per pool-scoped query, memory and
                             LMDB, list/watch semantics (resourceVersions, 410, bookmarks, watch-list); state is
                             its pure part: objects, resourceVersion, the ring of recent events, the frames)
    policy                  (pure: which requests a follower may take from the leader — reads of Services,
                             EndpointSlices, RuntimeClasses, CSIDrivers; never anything identity-specific)
    route ── policy         (where this node's shareable requests go: its own views while it leads, the leader over
                             TLS while it follows, else the API server; failover; the token rule)
    wiring                  (`serve --pool on`: builds and starts all of the above)
    errors
"""
