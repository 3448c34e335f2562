"""Every Prometheus metric edgeproxy exports, in one module, on its own registry.

The boundary: metrics are defined and rendered here; the modules that observe them (upstream, proxy, and later record,
local and the cache writer) import this module and update them. Served by server.py on the ops listener at /metrics.
Label values stay bounded: component, verb and resource come from request classification (never a raw path or a
name), servers from the kubeconfig.
"""

from __future__ import annotations

import time
from typing import Any

import prometheus_client as prom
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from cache import writer as cache_writer
from edgeproxy import memory

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
CLIENT_CONNECTIONS = prom.Gauge(
    "edgeproxy_client_connections", "Client connections open now, by listener (http, https).", ["listener"],
    registry=REGISTRY,
)
CLIENT_LIMITS = prom.Counter(
    "edgeproxy_client_limits", "Client connections and requests stopped by a bound (guard/limits.py): connections "
    "(over the per-listener bound), head_timeout, body_timeout, head_too_large, malformed.", ["bound"],
    registry=REGISTRY,
)
CLIENT_H2_CONNECTIONS = prom.Gauge(
    "edgeproxy_client_h2_connections", "Client connections speaking HTTP/2 (ALPN h2) open now, by TLS listener "
    "(https, in-cluster); the rest of edgeproxy_client_connections{listener=\"https\"} speak HTTP/1.1.",
    ["listener"], registry=REGISTRY,
)
CLIENT_H2_STREAMS = prom.Gauge(
    "edgeproxy_client_h2_streams", "HTTP/2 streams (requests and watches) being answered now on the client "
    "connections, by TLS listener.", ["listener"], registry=REGISTRY,
)
CLIENT_H2_EVENTS = prom.Counter(
    "edgeproxy_client_h2_events", "HTTP/2 client connection events by TLS listener: client_reset (RST_STREAM from "
    "the client), refused (REFUSED_STREAM: over the stream bound), protocol_error and calm (GOAWAY: a broken frame; "
    "a bound such as the header list size), rapid_reset (GOAWAY ENHANCE_YOUR_CALM: too many resets).",
    ["listener", "event"], registry=REGISTRY,
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
UPSTREAM_HEADER_TIMEOUTS = prom.Counter(
    "edgeproxy_upstream_header_timeouts", "Forwarded requests a server sent no response head for in time (then "
    "answered locally); each also counts as a failure toward the server's offline hysteresis.",
    ["server"], registry=REGISTRY,
)
UPSTREAM_FAILURES = prom.Counter(
    "edgeproxy_upstream_connect_failures", "Requests that could not connect to a server (then failed over).",
    ["server"], registry=REGISTRY,
)
UPSTREAM_CONNECTIONS = prom.Gauge(
    "edgeproxy_upstream_connections", "HTTP/2 connections open to each server (one per identity; more only when a "
    "server's stream limit is reached; draining ones included).", ["server", "protocol"], registry=REGISTRY,
)
UPSTREAM_STREAMS = prom.Gauge(
    "edgeproxy_upstream_streams", "HTTP/2 streams (requests and watches) open to each server.", ["server"],
    registry=REGISTRY,
)
UPSTREAM_H2_EVENTS = prom.Counter(
    "edgeproxy_upstream_h2_events", "HTTP/2 connection events per server: connect, goaway, ping_timeout, "
    "stream_cancelled (RST_STREAM for a client that went away), protocol_error, alpn_http1 (fell back to HTTP/1.1).",
    ["server", "event"], registry=REGISTRY,
)
PROBE_SECONDS = prom.Histogram(
    "edgeproxy_upstream_probe_duration_seconds", "Duration of /readyz probes.", ["server"],
    buckets=_LATENCY_BUCKETS, registry=REGISTRY,
)
ONLINE = prom.Gauge("edgeproxy_online", "1 while any API server is up; 0 while answering from the cache.",
                    registry=REGISTRY)
STATE_CHANGES = prom.Counter("edgeproxy_state_changes", "Online/offline transitions, by the state entered.",
                             ["state"], registry=REGISTRY)

# ---- pool sharing (edgeproxy/pool) ----
POOL_ROLE = prom.Gauge(
    "edgeproxy_pool_role", "1 for this node's role in its pool now (leader, follower, candidate: nobody known to "
    "lead), 0 for the others; all 0 with --pool off.", ["role"], registry=REGISTRY,
)
POOL_LEADER_CHANGES = prom.Counter(
    "edgeproxy_pool_leader_changes", "Times the pool's leader as this node sees it changed (elections won, lost, "
    "another node taking over).", registry=REGISTRY,
)
POOL_FAILOVERS = prom.Counter(
    "edgeproxy_pool_failovers", "Times a follower stopped using its leader and went to the API server (or its own "
    "cache) instead, by why: connect (refused, unreachable, TLS), head_timeout, broken, silent (a watch with no "
    "bookmark in time).", ["reason"], registry=REGISTRY,
)
POOL_WATCHES_MOVED = prom.Counter(
    "edgeproxy_pool_watches_moved", "Client watches a node ended on the API server because its pool could serve "
    "them (opened before a leader was known, or while it could not answer): each re-watches through the pool.",
    registry=REGISTRY,
)
POOL_UPSTREAM_WATCHES = prom.Gauge(
    "edgeproxy_pool_upstream_watches", "Pool views the leader keeps now: one upstream list+watch each.",
    registry=REGISTRY,
)
POOL_UPSTREAM_REQUESTS = prom.Counter(
    "edgeproxy_pool_upstream_requests",
    "LISTs, WATCHes and reach-backs (short watches from an older client's version) the leader's pool views sent to "
    "the API server.", ["verb"],
    registry=REGISTRY,
)
POOL_FOLLOWER_WATCHES = prom.Gauge(
    "edgeproxy_pool_follower_watches", "Watches open on the leader's pool views (followers' and its own clients').",
    registry=REGISTRY,
)
POOL_FOLLOWERS = prom.Gauge(
    "edgeproxy_pool_followers", "Follower nodes with a request open on this leader's peer listener now.",
    registry=REGISTRY,
)
POOL_PEER_BYTES = prom.Counter(
    "edgeproxy_pool_peer_bytes", "Body bytes the leader served to followers over its peer listener.",
    registry=REGISTRY,
)
POOL_REQUESTS = prom.Counter(
    "edgeproxy_pool_requests", "Shareable requests (policy.py) by where this node sent them: leader (a follower to "
    "its leader), view (the leader's own clients, from its views), upstream (the API server, or the cache offline).",
    ["via"], registry=REGISTRY,
)

# ---- the cache and time offline: read at scrape time from the running Store, Writer and Upstream ----
# Hits and misses are edgeproxy_requests_total{answered_by="cache"} by code (2xx: answered from the cache; 503: not
# cached, or not completely). The rest comes from the cache's own counters (kept across restarts in the store's meta
# database, so a restart does not reset them) through one collector: nothing on the data path pays for it.


class _CacheCollector:
    """edgeproxy_cache_* and edgeproxy_offline_*, from what server.py attaches (the last attach wins)."""

    def __init__(self) -> None:
        self.store: Any = None
        self.writer: Any = None
        self.recorder: Any = None
        self.upstream: Any = None
        self._offline_since: float | None = None
        self._offline_total = 0.0

    def attach(self, *, store: Any = None, writer: Any = None, upstream: Any = None, recorder: Any = None) -> None:
        self.store, self.writer, self.recorder = store, writer, recorder
        if upstream is not None:
            self.upstream = upstream
            self._offline_total = 0.0
            self._offline_since = None if upstream.online else time.monotonic()
            upstream.on_change(lambda online, up=upstream: self._changed(up, online))

    def detach(self, upstream: Any) -> None:
        if self.upstream is upstream:
            self.store = self.writer = self.recorder = self.upstream = None
            self._offline_since = None

    def _changed(self, upstream: Any, online: bool) -> None:
        if upstream is not self.upstream:
            return  # a proxy stopped earlier in this process (tests)
        now = time.monotonic()
        if online and self._offline_since is not None:
            self._offline_total += now - self._offline_since
            self._offline_since = None
        elif not online and self._offline_since is None:
            self._offline_since = now

    def describe(self) -> list[Any]:
        return []  # families vary with what is attached; auto_describe must not call collect() at registration

    def collect(self) -> Any:
        if self.upstream is not None:
            current = time.monotonic() - self._offline_since if self._offline_since is not None else 0.0
            yield GaugeMetricFamily("edgeproxy_offline_current_seconds", "Seconds the proxy has been offline now "
                                    "(0 while online).", value=current)
            yield CounterMetricFamily("edgeproxy_offline_seconds", "Seconds spent offline since the proxy started.",
                                      value=self._offline_total + current)
        store, writer = self.store, self.writer
        if store is not None:
            try:
                stats = store.stats()
            except Exception:  # a closing store: skip this scrape's cache families
                stats = None
            if stats is not None:
                for name, help_text in _CACHE_GAUGES:
                    yield GaugeMetricFamily(f"edgeproxy_cache_{name}", help_text, value=stats.get(name, 0))
                for name, help_text in _CACHE_COUNTERS:
                    yield CounterMetricFamily(f"edgeproxy_cache_{name}", help_text, value=stats.get(name, 0))
        recorder = self.recorder
        if recorder is not None and hasattr(recorder, "errors"):
            yield CounterMetricFamily("edgeproxy_cache_record_errors", "Upstream responses or watch frames that did "
                                      "not parse (forwarded unchanged; their views marked incomplete).",
                                      value=recorder.errors)
            yield CounterMetricFamily("edgeproxy_cache_record_dropped", "Responses not recorded because parsing fell "
                                      "behind (forwarded unchanged; their views marked incomplete).",
                                      value=recorder.dropped)
        if writer is not None:
            yield GaugeMetricFamily("edgeproxy_cache_pending_writes", "Operations queued for the cache writer.",
                                    value=writer.pending_ops)
            yield GaugeMetricFamily("edgeproxy_cache_pending_bytes", "Bytes queued for the cache writer (past its "
                                    "bound, events are dropped and their view marked incomplete).",
                                    value=writer.pending_bytes)
            counts = list(writer.commit_counts)
            buckets, running = [], 0
            for bound, n in zip((*cache_writer.COMMIT_BUCKETS, float("inf")), counts, strict=True):
                running += n
                buckets.append((_bound(bound), running))
            yield HistogramMetricFamily("edgeproxy_cache_commit_duration_seconds", "Duration of the cache's group "
                                        "commits (one LMDB transaction, fsync included).", buckets=buckets,
                                        sum_value=writer.commit_seconds)


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


_CACHE_GAUGES = (
    ("views", "List views held (per client and query)."),
    ("items", "Objects held in list views."),
    ("objects", "Single objects held (GETs)."),
    ("used_bytes", "Bytes of the pages the cache occupies."),
    ("max_bytes", "The cache's size bound; past it, least recently used views are evicted."),
)
_CACHE_COUNTERS = (
    ("evictions", "Views evicted to stay under the size bound."),
    ("commits", "Group commits (LMDB transactions) of the cache writer."),
    ("events_applied", "Watch events applied to views."),
    ("lists_replaced", "List responses that replaced a view."),
    ("lists_behind", "List responses not installed: older than the watch events their view already held."),
    ("writes_failed", "Writes that failed (their views were marked incomplete)."),
    ("writes_dropped", "Writes dropped because the writer's queue was full (views marked incomplete)."),
    ("corrupt_records", "Records that failed their checksum or seal on read (never served)."),
    ("map_full", "Group commits that found the cache's LMDB map (or the disk under it) full."),
)
CACHE = _CacheCollector()
REGISTRY.register(CACHE)


class _MemoryCollector:
    """The process's resident memory by kind, read at each scrape (memory.rss: /proc/self/status)."""

    def __init__(self) -> None:
        self.bodies: Any = None  # local.Bodies: the joined LIST bodies kept for offline relists

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        got = memory.rss()
        for kind, help_text in (("anon", "Resident anonymous memory (the proxy's heap: objects, buffers, free "
                                          "lists) in bytes; RssAnon of /proc/self/status."),
                                ("file", "Resident file-backed memory (LMDB pages read, shared libraries) in bytes; "
                                          "the kernel drops and re-reads these under pressure. RssFile.")):
            if kind in got:
                yield GaugeMetricFamily(f"edgeproxy_memory_rss_{kind}_bytes", help_text, value=got[kind])
        bodies = self.bodies
        if bodies is not None:
            yield GaugeMetricFamily("edgeproxy_memory_offline_bodies_bytes", "Bytes of joined LIST bodies kept for "
                                    "offline relists (bounded by --offline-body-cache).", value=bodies.size)


MEMORY = _MemoryCollector()
REGISTRY.register(MEMORY)

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
