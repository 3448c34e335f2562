"""`edgeproxy serve`: the proxy listener (every path forwarded) and the ops listener (health, metrics, debug state).

Two listeners, because every path on the proxy listener may belong to a Kubernetes client: `/healthz`, `/readyz` and
`/metrics` are the API server's own paths (kubectl get --raw /readyz must reach the API server, not the proxy), and
aggregated APIs can register any `/apis/...` path. So the proxy's own endpoints live on a second loopback listener,
127.0.0.1:10267 by default (`--ops-listen`), where Prometheus, systemd and `edgeproxy debug` find them:

    GET /healthz      200 "ok" while the event loop answers
    GET /readyz       200 while the proxy can answer (online, or offline from the cache); the body says which, and
                      whether the cache is off (X-Edgeproxy-Cache: off, "[-]cache off: why")
    GET /metrics      Prometheus text format (metrics.py)
    GET /debug/state  JSON: upstream servers and their health, online/offline, configuration (no secrets)
    GET /debug/components[?component=NAME]  JSON: per component, the last requests, errors, counts (debug diagnose)
    GET /debug/logs   the last log lines, JSON, one per line (debug collect)

With --tls-listen, the proxy listener also serves HTTPS (for clients with their own ServiceAccount tokens: client-go
sends credentials only to https:// servers), and under systemd it reports READY/WATCHDOG/STOPPING (notify.py).

The boundary: this module wires things together and owns process lifetime (uvloop, SIGTERM); it handles no Kubernetes
request itself (proxy.py does). Neighbours: config.py (settings), upstream.py, proxy.py, identity.py (token-bearing
clients' cache partition), metrics.py, tls.py (the HTTPS listener's certificate, credential reload), notify.py
(systemd); cli.py calls `configure` and `run`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from cache import store
from edgeproxy import config as config_mod
from edgeproxy import identity, logs, memory, metrics, notify, proxy, tasks, tls, upstream
from edgeproxy.filters import chain as filters_chain
from edgeproxy.filters import facts as filters_facts
from edgeproxy.filters import incluster as filters_incluster
from edgeproxy.filters import stage as filters_stage
from edgeproxy.guard import labels, trust
from edgeproxy.guard import limits as guard_limits
from edgeproxy.h1 import lane
from edgeproxy.h2 import server as h2server
from edgeproxy.kube import request as kube_request

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class Service:
    """A running proxy: its listeners' actual addresses (port 0 in tests picks free ones) and its parts."""

    config: config_mod.Config
    upstream: upstream.Upstream
    proxy: proxy.Proxy
    url: str
    ops_url: str | None
    started_at: float
    tls_url: str | None = None
    in_cluster_url: str | None = None
    filters: object | None = None  # edgeproxy.filters.stage.Stage, or None when every filter is off
    cache_off: str | None = None  # why the proxy runs without a cache (forward only, nothing offline), if it does
    pool: Any = None  # edgeproxy.pool.wiring.Pool with --pool on

    def state(self) -> dict[str, object]:
        cfg = dataclasses.asdict(self.config)
        return {
            "version": _version(),
            "started_at": self.started_at,
            "listen": self.url,
            "tls_listen": self.tls_url,
            "ops_listen": self.ops_url,
            "upstream": self.upstream.state(),
            "recorder": type(self.proxy.recorder).__name__ if self.proxy.recorder is not None else None,
            "local": type(self.proxy.local).__name__,
            "cache_off": self.cache_off,
            "token_identities": self.proxy.identities.state() if self.proxy.identities is not None else None,
            "in_cluster_listen": self.in_cluster_url,
            "filters": self.filters.state() if self.filters is not None else None,  # type: ignore[attr-defined]
            "pool": self.pool.state() if self.pool is not None else None,
            "config": cfg,  # names files, never their contents: no secret in here
        }


def proxy_server(handler: proxy.Proxy, limits: guard_limits.Limits | None = None, handle: Any = None) -> web.Server:
    """The proxy listener's low-level server: every request goes to the one handler, with no router or middleware in
    the way (a third of aiohttp's per-request cost on a small GET). handler_cancellation: a client that goes away
    cancels its handler, which closes its upstream request (a watch would otherwise linger until its next event).
    guard.limits bounds what a connection may hold: the head's size and arrival time, idle time, connections per
    listener (the API server, Go's net/http with MaxHeaderBytes 1 MiB, takes request lines up to 1 MiB, aiohttp
    by default only 8190 bytes: a long label selector must reach it, not die here)."""

    def request_factory(message, payload, protocol, writer, task):  # type: ignore[no-untyped-def]
        # Bodies up to proxy.MAX_BUFFERED_BODY are read whole (larger ones stream, never through read()).
        return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=proxy.MAX_BUFFERED_BODY + 1)

    # Bodies pass as sent (gzip stays gzip). `handle`: another entry point (the in-cluster listener's, without the
    # lane: h1.lane takes plain GETs to Proxy.lane, past aiohttp's per-request objects).
    return lane.LaneServer(handle or handler.handle, lane=None if handle else handler.lane, limits=limits,
                           request_factory=request_factory, handler_cancellation=True, access_log=None,
                           auto_decompress=False)


def ops_app(service: Service) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        up = service.upstream
        if up.connecting:
            line = "[-]upstream connecting: no API server has answered yet"
        elif up.online:
            line = "[+]upstream online"
        else:
            line = "[-]upstream offline: answering from the cache"
        servers = "\n".join(f"[{'+' if s.up else '-'}]server {s.url}" for s in up.servers)
        online = up.online and not up.connecting
        # Still 200 without a cache (online it forwards), but the body and a header say offline answers are gone.
        cache = f"[-]cache off: {service.cache_off}" if service.cache_off else "[+]cache"
        return web.Response(text=f"{line}\n{servers}\n{cache}\nok\n",
                            headers={"X-Edgeproxy-Online": str(online).lower(),
                                     "X-Edgeproxy-Cache": "off" if service.cache_off else "on"})

    async def metrics_endpoint(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def state(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(service.state(), indent=2, default=str) + "\n",
                            content_type="application/json")

    async def components(request: web.Request) -> web.Response:
        # What each component asked and got (logs.Activity), for `edgeproxy debug diagnose COMPONENT`.
        wanted = request.query.get("component")
        doc = {"known": sorted(logs.activity()), "components": logs.activity(wanted)}
        return web.Response(text=json.dumps(doc, default=str) + "\n", content_type="application/json")

    async def recent_logs(request: web.Request) -> web.Response:
        # The last log lines (JSON, one per line), for `edgeproxy debug collect`.
        return web.Response(text="".join(line + "\n" for line in logs.recent()), content_type="application/x-ndjson")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/debug/state", state)
    app.router.add_get("/debug/components", components)
    app.router.add_get("/debug/logs", recent_logs)
    return app


def cache_hooks(config: config_mod.Config, up: upstream.Upstream, off: list[str] | None = None
                ) -> tuple[proxy.Recorder | None, proxy.Local | None]:
    """The recorder (tee to the cache) and the local side (answers from it), as edgeproxy.autonomy.wiring wires them
    over the cache in config.cache_dir. With `--cache off`, or a cache that cannot be opened (a full disk at start):
    (None, None), forward only and 503 while offline; `off` then receives why, for /readyz and the status line."""
    if not config.cache:
        if off is not None:
            off.append("disabled (--cache off)")
        return None, None
    from edgeproxy.autonomy import wiring as autonomy_wiring

    try:
        return autonomy_wiring.hooks(config, up)
    except Exception as e:  # a full disk, a read-only or broken cache directory: forwarding must go on without it
        reason = f"{config.cache_dir} cannot be opened: {type(e).__name__}: {e}"
        if isinstance(e, OSError) and e.errno == errno.EROFS and os.environ.get("INVOCATION_ID"):
            # Under systemd, ProtectSystem=strict leaves only the unit's ReadWritePaths= writable.
            reason += " (outside the unit's ReadWritePaths=: keep EDGEPROXY_CACHE_DIR under /var/lib/edgeproxy)"
        log.exception("the cache at %s cannot be opened: forwarding only, nothing is recorded or answered offline",
                      config.cache_dir, extra={"event": "cache_off", "reason": reason})
        if off is not None:
            off.append(reason)
        return None, None


def response_filters(config: config_mod.Config, up: upstream.Upstream, recorder: proxy.Recorder | None,
                     local: proxy.Local | None = None) -> filters_stage.Stage | None:
    """The response-filter stage (edgeproxy/filters) the settings ask for, or None when every filter is off. The
    redirect's port is set once the in-cluster listener is bound. Raises incluster.CertificateError for an
    in-cluster serving certificate pods would refuse."""
    components = frozenset(c.strip().lower() for c in config.filter_components.split(",") if c.strip())
    redirect = (config_mod.split_address(config.in_cluster_address) if config.in_cluster_address else None)
    settings = filters_chain.Settings(components=components, topology=config.service_topology, redirect=redirect)
    writer = getattr(local, "writer", None) or getattr(recorder, "writer", None)  # the cache's one writer
    st = getattr(writer, "store", None)
    memo = Path(config.cache_dir) / "filters.json" if st is not None else None
    if not settings.any or not components:
        if memo is not None:  # views filtered by an earlier run are relisted, not served offline as they were
            filters_stage.remember(memo, {}, lambda: [k for k, _ in st.views()], writer.mark_incomplete)
        return None
    cert_ips = filters_incluster.check(config_mod.in_cluster_cert(config)[0]) if redirect is not None else None
    facts = filters_facts.Facts(up, trust.node_name(config, up.credentials) or "", config.pool_label,
                                want_pool=settings.topology, want_service=redirect is not None)
    def complete(key: store.ViewKey) -> bool:
        assert writer is not None and st is not None
        meta = st.view(key)
        return not writer.unsettled(key) and (meta is None or meta.complete)

    return filters_stage.Stage(
        settings, facts, invalidate=writer.mark_incomplete if writer is not None else None, cert_ips=cert_ips,
        memo=memo, stored_views=(lambda: [k for k, _ in st.views()]) if st is not None else None,
        complete=complete if st is not None else None)


def token_identities(config: config_mod.Config, local: proxy.Local | None,
                     up: upstream.Upstream) -> identity.Identities | None:
    """Which tokens share their ServiceAccount's cache partition (identity.py), remembered under the cache
    directory; the local side's token book vouches for the tokens it minted or relayed, the cluster's keys are
    fetched from `up`. None without a cache."""
    if local is None or not config.cache:
        return None
    book = getattr(local, "tokens", None)
    try:
        return identity.Identities(config.cache_dir, vouch=book.vouch if book is not None else None, upstream=up)
    except OSError:
        log.exception("token identities under %s unavailable: every token keeps its own partition", config.cache_dir)
        return None


@contextlib.asynccontextmanager
async def running(config: config_mod.Config, *, recorder: proxy.Recorder | None = None,
                  local: proxy.Local | None = None, creds: upstream.Credentials | None = None,
                  limits: guard_limits.Limits | None = None) -> AsyncIterator[Service]:
    """Start the proxy and ops listeners; stop them (and the upstream session) on exit. `limits`: the client
    bounds (guard/limits.py), their documented defaults unless given (tests shorten the timeouts)."""
    creds = creds or upstream.load_kubeconfig(config.kubeconfig, config.context, config.servers)
    up = upstream.Upstream(creds, probe_interval=config.probe_interval, probe_timeout=config.probe_timeout,
                           offline_after=config.offline_after, online_after=config.online_after,
                           connect_timeout=config.connect_timeout, header_timeout=config.upstream_header_timeout,
                           http2=config.upstream_http2, ping_idle=config.upstream_ping_idle,
                           ping_timeout=config.upstream_ping_timeout)
    off: list[str] = []
    if recorder is None and local is None:
        recorder, local = cache_hooks(config, up, off)
    identities = token_identities(config, local, up)
    node_trust = trust.NodeTrust(trust.node_name(config, creds), plain_as_node=config.plain_as_node)
    labels.configure(component for _, component in config.component_aliases)
    stage = response_filters(config, up, recorder, local)
    pool = None
    if config.pool:  # pool sharing (issue 16): the leader's views, or the leader, before the API server
        from edgeproxy.pool import wiring as pool_wiring

        pool = pool_wiring.build(config, up, local)
    handler = proxy.Proxy(up, recorder=recorder, local=local, aliases=dict(config.component_aliases),
                          identities=identities, trust=node_trust, filters=stage,
                          pool=pool.router if pool is not None else None)
    await up.start()
    runners: list[web.BaseRunner] = []
    background: list[asyncio.Task[None]] = []
    reloading: asyncio.Task[None] | None = None
    refreshing: asyncio.Task[None] | None = None
    try:
        host, port = config.listen_host_port
        if limits is not None:
            handler.body_timeout = limits.body_timeout
        url = await start_listener(runners, web.ServerRunner(proxy_server(handler, limits),
                                                             shutdown_timeout=config.shutdown_timeout), host, port)
        service = Service(config=config, upstream=up, proxy=handler, url=url, ops_url=None, started_at=time.time(),
                          cache_off=off[0] if off else None, pool=pool)
        if pool is not None:
            await pool_wiring.start(pool, runners, handler)
        if config.ops_host_port is not None:
            ops_host, ops_port = config.ops_host_port
            ops = web.AppRunner(ops_app(service), access_log=None, shutdown_timeout=1.0)
            service.ops_url = await start_listener(runners, ops, ops_host, ops_port)
        if config.tls_listen:
            service.tls_url, ca_waiting = await _start_tls(runners[0], config)
            if ca_waiting is not None:
                background.append(tasks.spawn(ca_waiting, name="client-ca-wait"))
        _log_trust(node_trust, service)
        service.filters = stage
        if config.in_cluster_address:
            service.in_cluster_url = await _start_in_cluster(runners, handler, config, limits)
            if stage is not None:  # the port actually bound (0 in tests picks one)
                ip = config_mod.split_address(config.in_cluster_address)[0]
                port = int(service.in_cluster_url.rsplit(":", 1)[1])
                stage.settings = dataclasses.replace(stage.settings, redirect=(ip, port))
        if stage is not None:
            stage.reconcile()  # settings changed since the cache was filled: its filtered views are relisted
            if stage.facts is not None:
                refreshing = tasks.spawn(stage.facts.run(), name="filters-facts-refresh")
        reloader = _credential_reloader(config, up)
        if reloader is not None:
            reloading = tasks.spawn(reloader.run(), name="credential-reloader")
        reporting = _health_reporter(config, up, local, node_trust.node)
        if reporting is not None:
            background.append(reporting)
        metrics.CACHE.attach(store=getattr(local, "store", None), writer=getattr(local, "writer", None), upstream=up,
                             recorder=recorder)
        metrics.MEMORY.bodies = getattr(local, "bodies", None)
        log.info("edgeproxy serving on %s (ops on %s), upstream %s", service.url, service.ops_url,
                 ", ".join(s.url for s in up.servers))
        yield service
    finally:
        metrics.CACHE.detach(up)
        if reloading is not None:
            reloading.cancel()
        if refreshing is not None:
            refreshing.cancel()
        for task in background:
            task.cancel()
        if pool is not None:
            await pool_wiring.stop(pool)
        for runner in reversed(runners):
            await runner.cleanup()
        await up.close()
        for hook in (recorder, local, identities):  # commit what the cache was handed before exiting
            close = getattr(hook, "close", None)
            if close is not None:
                await asyncio.to_thread(close)


def _health_reporter(config: config_mod.Config, up: upstream.Upstream, local: proxy.Local | None,
                     node: str | None) -> asyncio.Task[None] | None:
    """The cache-health report on this node's Node, for the autonomy companion (companion/reporter.py); None when
    disabled or when the node's name is unknown (nothing to patch)."""
    if config.health_report_interval <= 0:
        return None
    from edgeproxy.companion import reporter

    node = getattr(local, "node", None) or node
    if not node:
        log.info("cache health is not reported: the node's name is unknown (set --node-name)")
        return None
    rep = reporter.Reporter(up, getattr(local, "store", None), node, interval=config.health_report_interval,
                            check=min(config.health_check_interval, config.health_report_interval))
    return tasks.spawn(rep.run(), name="cache-health-reporter")


async def start_listener(runners: list[web.BaseRunner], runner: web.BaseRunner, host: str, port: int, *,
                         ssl_context: ssl.SSLContext | None = None, http2: str = "") -> str:
    """Set up `runner`, listen on host:port (port 0: any free one), append it to `runners`; return its base URL.
    `http2`: with ssl_context, offer h2 by ALPN (h2/server.py), the listener's name in metrics ("" = HTTP/1.1)."""
    await runner.setup()
    runners.append(runner)
    await _site(runner, host, port, ssl_context, http2).start()
    sock_host, sock_port = runner.addresses[-1][:2]
    scheme = "https" if ssl_context is not None else "http"
    return f"{scheme}://{'[' + sock_host + ']' if ':' in sock_host else sock_host}:{sock_port}"


async def serve(config: config_mod.Config) -> None:
    """Run until SIGTERM or SIGINT, then stop accepting, give open requests shutdown_timeout, and exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(config) as service:
        # Type=notify: ready once the listeners are bound, online or not (kubelet must start offline too); then the
        # watchdog is petted from this event loop, so a wedged loop gets the service restarted.
        notify.ready(_status_line(service))
        watchdog = notify.start_watchdog()
        service.upstream.on_change(lambda online: notify.status(_status_line(service)))
        service.upstream.on_reached(lambda: notify.status(_status_line(service)))
        await stop.wait()
        log.info("edgeproxy stopping")
        notify.stopping("stopping: finishing open requests")
        if watchdog is not None:
            watchdog.cancel()


def _status_line(service: Service) -> str:
    up = service.upstream
    if up.connecting:
        state = "connecting: no API server has answered yet"
    else:
        state = "online" if up.online else "OFFLINE, answering from the cache"
    line = f"{state}; serving on {service.url}" + (f" and {service.tls_url}" if service.tls_url else "")
    return line + (f"; NO CACHE ({service.cache_off}): nothing is answered offline" if service.cache_off else "")


# ---- the HTTPS listener and credential reload (issue 7; the pieces live in tls.py) ----


def _site(runner: web.BaseRunner, host: str, port: int, ctx: ssl.SSLContext | None, http2: str) -> web.TCPSite:
    """A TCP site; with TLS and `http2` (the listener's name), one offering h2 by ALPN before HTTP/1.1."""
    if ctx is not None and http2:
        h2server.offer(ctx)
        return h2server.Site(runner, host, port, ssl_context=ctx, listener=http2, backlog=1024, reuse_address=True,
                             max_body=proxy.MAX_BUFFERED_BODY)
    return web.TCPSite(runner, host, port, backlog=1024, reuse_address=True, ssl_context=ctx)


def _log_trust(node_trust: trust.NodeTrust, service: Service) -> None:
    """Say at start who may act as the node, and warn when nobody can (kubelet would get 401s)."""
    if node_trust.plain_as_node:
        log.warning("--plain-as-node is on: anyone who can connect to %s acts as %s", service.url,
                    node_trust.user or "the node", extra={"event": "plain_as_node"})
    elif service.tls_url is None or node_trust.node is None:
        log.warning("no client can act as the node: %s; requests without a bearer token get 401",
                    "the node's name is unknown (set --node-name)" if node_trust.node is None
                    else "the HTTPS listener is off (set --tls-listen, or --plain-as-node on)")
    else:
        log.info("%s acts as %s with its client certificate; %s does not act as the node", service.tls_url,
                 node_trust.user, service.url)


async def _wait_for_client_ca(ctx: ssl.SSLContext, path: str, interval: float) -> None:
    """The cluster CA is copied in by edgeproxy-credentials.service, maybe after the proxy started: once it is there,
    new connections are asked for client certificates verified against it (kubelet's then acts as the node)."""
    while not os.path.exists(path):
        await asyncio.sleep(interval)
    try:
        ctx.load_verify_locations(cafile=path)
    except (OSError, ssl.SSLError) as e:
        log.error("client CA %s cannot be loaded (%s): no client certificate is verified until a restart", path, e)
        return
    ctx.verify_mode = ssl.CERT_OPTIONAL
    log.info("client CA %s loaded: the HTTPS listener verifies client certificates now", path,
             extra={"event": "client_ca_loaded"})


async def _start_tls(runner: web.BaseRunner, config: config_mod.Config
                     ) -> tuple[str, Coroutine[None, None, None] | None]:
    """Add the HTTPS site to the proxy listener's runner: the same handler, so a request with its own token goes
    upstream with it and is cached under its identity. Client certificates, when presented, are verified against
    the client CA (the cluster CA); kubelet's acts as the node (guard/trust.py). Returns the URL, and a coroutine to
    run when the client CA is not there yet (it loads it when it appears)."""
    if config.tls_cert_file:
        cert, key = config.tls_cert_file, config.tls_key_file
    else:
        pki_dir = config.tls_pki_dir or os.path.join(config.cache_dir, "pki")
        sans = [s.strip() for s in config.tls_sans.split(",") if s.strip()]
        cert_path, key_path, ca_path = tls.own_serving_cert(pki_dir, sans)
        cert, key = str(cert_path), str(key_path)
        log.info("HTTPS listener uses a certificate from the proxy's own CA %s", ca_path)
    client_ca = config.client_ca_file or None
    if client_ca and not os.path.exists(client_ca):
        # The cluster CA is copied in by edgeproxy-credentials.service; until it is there, accept connections
        # without asking for client certificates rather than not serving in-cluster clients at all.
        log.warning("client CA %s is missing: the HTTPS listener does not verify client certificates (so none acts "
                    "as the node) until it appears", client_ca)
        waiting: str | None = client_ca
        client_ca = None
    else:
        waiting = None
    ctx = tls.server_context(cert, key, client_ca)
    metrics.CERT_EXPIRY.labels(cert).set(tls.load_certificate(cert).not_valid_after_utc.timestamp())
    host, port = config_mod.split_address(config.tls_listen)
    await _site(runner, host, port, ctx, "https" if config.listen_http2 else "").start()
    sock_host, sock_port = runner.addresses[-1][:2]
    url = f"https://{'[' + sock_host + ']' if ':' in sock_host else sock_host}:{sock_port}"
    interval = config.cert_reload_interval if config.cert_reload_interval > 0 else 10.0
    return url, (_wait_for_client_ca(ctx, waiting, interval) if waiting else None)


async def _start_in_cluster(runners: list[web.BaseRunner], handler: proxy.Proxy, config: config_mod.Config,
                            limits: guard_limits.Limits | None = None) -> str:
    """The in-cluster listener: HTTPS on the node-local address kube-proxy sends `kubernetes.default` traffic to.
    Any pod on the node can reach it, so a request without its own bearer token is refused here (401, as the API
    server answers an anonymous request it does not accept) instead of going upstream as the node."""

    async def token_only(request: web.BaseRequest) -> web.StreamResponse:
        if not kube_request.bearer_token(request.headers):
            return proxy.status_response(401, "Unauthorized", "Unauthorized")
        return await handler.handle(request)

    server = proxy_server(handler, limits, handle=token_only)  # pods get the bounds every client gets
    ctx = tls.server_context(*config_mod.in_cluster_cert(config), None)
    host, port = config_mod.split_address(config.in_cluster_address)
    url = await start_listener(runners, web.ServerRunner(server, shutdown_timeout=config.shutdown_timeout), host,
                               port, ssl_context=ctx, http2="in-cluster" if config.listen_http2 else "")
    log.info("in-cluster listener on %s: kube-proxy's default/kubernetes endpoints point here", url)
    return url


def _credential_reloader(config: config_mod.Config, up: upstream.Upstream) -> tls.Reloader | None:
    """Re-read the kubeconfig and the files it names when they change (kubelet rotates its client certificate):
    new connections use the new certificate; open ones, watches included, keep theirs."""
    if not config.kubeconfig or config.cert_reload_interval <= 0:
        return None

    def files() -> list[str]:
        c = up.credentials
        return [p for p in (config.kubeconfig, c.cert_file, c.key_file, c.ca_file) if p]

    def certs() -> list[str]:  # expiry reported and warned about; the listener's own files are not reloaded
        c = up.credentials
        return [p for p in (c.cert_file, c.ca_file, config.tls_cert_file, config.client_ca_file) if p]

    def reload() -> None:
        try:
            creds = upstream.load_kubeconfig(config.kubeconfig, config.context, config.servers)
            upstream.ssl_context(creds)  # a half-written pair fails here, and the old context stays in use
        except Exception:
            metrics.CERT_RELOADS.labels("failed").inc()
            raise
        up.set_credentials(creds)
        metrics.CERT_RELOADS.labels("ok").inc()

    return tls.Reloader(files, reload, certs=certs, interval=config.cert_reload_interval,
                        warn_days=config.cert_warn_days,
                        on_expiry=lambda path, ts: metrics.CERT_EXPIRY.labels(path).set(ts))


def configure(parser: argparse.ArgumentParser) -> None:
    config_mod.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_mod.load(args)
        if not config.kubeconfig:
            raise config_mod.ConfigError("--kubeconfig (or EDGEPROXY_KUBECONFIG) is required")
        upstream.load_kubeconfig(config.kubeconfig, config.context, config.servers)  # fail fast, before the loop
        for path in (config.tls_cert_file, config.tls_key_file) if config.tls_listen else ():
            if path and not os.access(path, os.R_OK):
                raise config_mod.ConfigError(f"--tls-listen: cannot read {path}")
        if config.in_cluster_address:
            filters_incluster.check(config_mod.in_cluster_cert(config)[0])
        # The log settings may come from the --config file too (cli.py set up logging from flags and environment).
        logs.setup(level=getattr(args, "log_level", None) or config.log_level,
                   fmt=getattr(args, "log_format", None) or config.log_format)
    except (config_mod.ConfigError, upstream.UpstreamError, ValueError) as e:  # incluster.CertificateError too
        print(f"edgeproxy serve: {e}", file=sys.stderr)
        return 2
    import uvloop

    memory.tune_malloc()  # big list buffers go back to the kernel when freed; two heap arenas, not one per thread
    # The cache's parsing and writing threads share the GIL with the event loop. With the default 5 ms switch
    # interval a CPU-bound parse makes the loop wait up to 5 ms each time it wants the GIL back, on every forwarded
    # chunk: a 10k-pod JSON list took 2.0 s through the proxy while the previous one was being recorded. 0.1 ms
    # brings it to 0.7 s (protobuf 0.78 -> 0.38 s) for ~8% more CPU on a small GET.
    sys.setswitchinterval(0.0001)
    uvloop.run(serve(config))
    return 0


def _version() -> str:
    from edgeproxy import __version__

    return __version__
