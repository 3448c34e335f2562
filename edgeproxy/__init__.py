"""edgeproxy: a caching reverse proxy for the Kubernetes API that keeps edge nodes working offline.

The data path reads down the tree; imports go downward only:

    cli ── server ── proxy ──┬── upstream ─┬ httpclient   (API server pool: TLS, health, failover, header deadline)
      │                      │             └ h2/          (HTTP/2: one multiplexed connection per identity, PINGs)
      │                      ├── identity                 (bearer token → whose cache: service account or token hash)
      │                      ├── filters/                 (response filters between upstream and client+recorder:
      │                      │  stage, chain, facts,      servicetopology, inclusterredirect; bytes via kube.rewrite)
      │                      │  incluster
      │                      └── autonomy/  (offline: proxy's recorder and local seams, built for server by wiring)
      │                          ├── record ── views ── cache  (tee: answers → LMDB, never delays the client)
      │                          └── local  ── views ── cache  (offline answers: get, list, watch)
      │                                     ├── writes         (offline write policy, a pure decision)
      │                                     └── tokens         (TokenRequests offline: kept answers, then minted)
      ├── tls, metrics, logs, notify, tasks, memory       (the service's plumbing; memory: RSS by kind, malloc)
      ├── guard/    hostile local clients: trust (who may act as the node: kubelet's node certificate; plain
      │             HTTP only by opt-in), limits (head/body sizes and deadlines, connections per listener),
      │             labels (bounded metric label values), warn (one rate-limited line per kind of client error)
      ├── commands/ demo, kubeconfig, install, debug      (the other subcommands, one module each)
      └── host/ credentials, uninstall                   (copy-credentials run by a root unit; uninstall-systemd)
    kube/   the pure wire layer under all of them: bytes in, values out, no I/O (endpoints + rewrite: the filters'
            byte work; jsonscan: msgspec's fast JSON reading for the recorder, beside jsonwire, the stdlib reference)
    h2/     session (pure HTTP/2 client state over python-hyper h2) and client (its asyncio shell and pool);
            h2conn (h2's connection as both sessions use it); serversession (pure HTTP/2 server state) and server
            (its shell: h2 by ALPN on the HTTPS listeners, each stream a request for proxy, built by server)
    h1/     lane: the HTTP/1.1 listener's plain GETs answered by proxy.Proxy.lane past aiohttp's per-request objects
            (server builds the proxy listeners with lane.LaneServer, a guard.limits.GuardedServer)
    companion/  the cloud-side autonomy companion (`edgeproxy companion`: tolerations for pods on autonomous
            nodes; pools (pure) + poolctl: the leader of each branch's pool named on its Lease) and, run by server,
            its edge side (reporter: the cache's health on the Node)
    pool/   pool sharing between the nodes of a branch (issue 16): election (pure: a Lease per pool, client-go
            leaderelection semantics), elector (its asyncio shell over upstream; --pool-election lease), follow
            (pure) + follower (--pool-election companion, the default: watch the Lease the companion writes),
            remember (the pool's name and leader kept in the cache dir across a restart),
            policy (pure: which requests a follower may take from the leader), peers (the leader's listener: node
            certificates only), view (the
            leader's served view: one upstream list+watch per query, memory + LMDB) over state (pure: objects, ring),
            route (a node's shareable requests: own views, the leader over TLS, or upstream; failover), wiring
            (server's `--pool on`); proxy reaches it through its `pool` seam
    sim/    a Kubernetes API simulator for the demo, the tests and the benchmarks (recorded/: its recorded cluster;
            h2front: its HTTP/2 face, also relaying HTTP/1.1 for the benchmarks)

`cache/` (the LMDB store) and `cni_plugin/` (the IPAM snapshot plugin) are sibling top-level packages:
`cache` knows nothing of HTTP, `cni_plugin` uses the standard library only.
"""

__version__ = "0.1.0"
