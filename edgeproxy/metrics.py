"""Every Prometheus metric edgeproxy exports, in one module, on its own registry.

The boundary: metrics are defined and rendered here; the modules that observe them (upstream, proxy, and later record,
local and the cache writer) import this module and update them. Served by server.py on the ops listener at /metrics.
Label values stay bounded: component, verb and resource come from request classification (never a raw path or a
name), servers from the kubeconfig.
"""

from __future__ import annotations

import prometheus_client as prom

REGISTRY = prom.CollectorRegistry(auto_describe=True)

# Latency buckets around what a local proxy adds (sub-millisecond) up to a slow WAN list (seconds).
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# ---- requests (proxy.py) ----
REQUESTS = prom.Counter(
    "edgeproxy_requests", "Requests answered, by client component, verb, resource, HTTP code and who answered "
    "(upstream: forwarded; cache: answered locally; proxy: rejected by the proxy itself).",
    ["component", "verb", "resource", "code", "answered_by"], registry=REGISTRY,
)
REQUEST_SECONDS = prom.Histogram(
    "edgeproxy_request_duration_seconds", "Time from the request's arrival to its response headers being sent.",
    ["verb", "answered_by"], buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
OPEN_WATCHES = prom.Gauge(
    "edgeproxy_open_watches", "Watch streams open now, by client component and who serves them.",
    ["component", "answered_by"], registry=REGISTRY,
)
OPEN_TUNNELS = prom.Gauge(
    "edgeproxy_open_tunnels", "Upgraded connections (exec, attach, port-forward) open now.", registry=REGISTRY,
)

# ---- the WAN side (upstream.py, proxy.py) ----
UPSTREAM_BYTES = prom.Counter(
    "edgeproxy_upstream_bytes", "Body bytes exchanged with the API servers (received: responses; sent: requests).",
    ["direction"], registry=REGISTRY,
)
UPSTREAM_UP = prom.Gauge(
    "edgeproxy_upstream_up", "1 when the server's health probe (with hysteresis) says it is up.", ["server"],
    registry=REGISTRY,
)
UPSTREAM_FAILURES = prom.Counter(
    "edgeproxy_upstream_connect_failures", "Requests that could not connect to a server (then failed over).",
    ["server"], registry=REGISTRY,
)
PROBE_SECONDS = prom.Histogram(
    "edgeproxy_upstream_probe_duration_seconds", "Duration of /readyz probes.", ["server"],
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
ONLINE = prom.Gauge("edgeproxy_online", "1 while any API server is up; 0 while answering from the cache.",
                    registry=REGISTRY)
STATE_CHANGES = prom.Counter("edgeproxy_state_changes", "Online/offline transitions, by the state entered.",
                             ["state"], registry=REGISTRY)

# ---- the cache (record.py, local.py, cache.Writer): issue 4/6 add theirs here ----
# hits and misses by component/resource, views and bytes held, commit latency, pending writes, evictions,
# seconds offline. Keep the names under edgeproxy_cache_* and the labels bounded as above.

# ---- TLS and operations (issue 7: tls.py via server.py) ----
CERT_EXPIRY = prom.Gauge(
    "edgeproxy_certificate_expiry_timestamp_seconds", "When each certificate the proxy uses expires (Unix time), by "
    "file: the upstream client certificate, the cluster CA, the HTTPS listener's certificate.", ["file"],
    registry=REGISTRY,
)
CERT_RELOADS = prom.Counter(
    "edgeproxy_certificate_reloads", "Reloads of the upstream credentials after their files changed, by result "
    "(ok; failed: the old ones stay in use, retried at the next check).", ["result"], registry=REGISTRY,
)

CONTENT_TYPE = prom.CONTENT_TYPE_LATEST


def render() -> bytes:
    """The text exposition of every metric above."""
    return prom.generate_latest(REGISTRY)
