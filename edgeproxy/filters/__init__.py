"""The response-filter stage: rewrites what some clients read, before it reaches them and the cache.

    stage   the I/O side: per (client, resource) selection, streams through kube.rewrite, stats for /debug/state
    chain   the filters and their decisions (servicetopology, inclusterredirect), pure
    facts   this node's pool (its Node's labels) and the kubernetes Service's ClusterIPs, read upstream
    incluster   whether the in-cluster serving certificate is one pods will accept

The byte work is in the wire layer: kube.endpoints (EndpointSlice/Endpoints rewrites) and kube.rewrite (lists,
objects, watch streams). Neighbours: proxy (calls the stage), server (builds it from the settings).
"""
