"""The autonomy companion: pods on nodes that opted in are not evicted by an unreachable/not-ready taint before
their node's autonomy duration, while that node's edgeproxy reports a healthy cache.

Cloud side (`edgeproxy companion`, deploy/companion.yaml), pure decisions at the bottom, I/O shells on top:

    main ─┬─ webhook ──┐                     (every replica: pod CREATEs bound to a node)
          ├─ elector ── controller ──┐       (the Lease holder: patches bound pods)
          │     └─ lease             ├── nodes ── informer ── kubeapi   (aiohttp JSON client)
          └─ certs (webhook TLS)     └── policy ── health              (pure: verdicts, plans, patches)

Edge side: `reporter` (run by `edgeproxy serve`) keeps the node annotation `edgeproxy.io/cache-health` current while
online, judged by health.judge. `errors` holds the package's errors.
"""
