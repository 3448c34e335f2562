"""`edgeproxy serve`: the proxy listener (every path forwarded) and the ops listener (health, metrics, debug state).

Two listeners, because every path on the proxy listener may belong to a Kubernetes client: `/healthz`, `/readyz` and
`/metrics` are the API server's own paths (kubectl get --raw /readyz must reach the API server, not the proxy), and
aggregated APIs can register any `/apis/...` path. So the proxy's own endpoints live on a second loopback listener,
127.0.0.1:10267 by default (`--ops-listen`), where Prometheus, systemd and `edgeproxy debug` find them:

    GET /healthz      200 "ok" while the event loop answers
    GET /readyz       200 while the proxy can answer (online, or offline from the cache); the body says which
    GET /metrics      Prometheus text format (metrics.py)
    GET /debug/state  JSON: upstream servers and their health, online/offline, configuration (no secrets)

The boundary: this module wires things together and owns process lifetime (uvloop, SIGTERM); it handles no Kubernetes
request itself (proxy.py does). Neighbours: config.py (settings), upstream.py, proxy.py, metrics.py; cli.py calls
`configure` and `run`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import signal
import ssl
import sys
import time
from collections.abc import AsyncIterator

from aiohttp import web

from edgeproxy import config as config_mod
from edgeproxy import metrics, proxy, upstream

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

    def state(self) -> dict[str, object]:
        cfg = dataclasses.asdict(self.config)
        return {
            "version": _version(),
            "started_at": self.started_at,
            "listen": self.url,
            "ops_listen": self.ops_url,
            "upstream": self.upstream.state(),
            "recorder": type(self.proxy.recorder).__name__ if self.proxy.recorder is not None else None,
            "local": type(self.proxy.local).__name__,
            "config": cfg,  # names files, never their contents: no secret in here
        }


def proxy_server(handler: proxy.Proxy) -> web.Server:
    """The proxy listener's low-level server: every request goes to the one handler, with no router or middleware in
    the way (a third of aiohttp's per-request cost on a small GET). handler_cancellation: a client that goes away
    cancels its handler, which closes its upstream request (a watch would otherwise linger until its next event)."""

    def request_factory(message, payload, protocol, writer, task):  # type: ignore[no-untyped-def]
        # Bodies up to proxy.MAX_BUFFERED_BODY are read whole (larger ones stream, never through read()).
        return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop(),
                               client_max_size=proxy.MAX_BUFFERED_BODY + 1)

    return web.Server(handler.handle, request_factory=request_factory, handler_cancellation=True, access_log=None)


def ops_app(service: Service) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        up = service.upstream
        line = "[+]upstream online" if up.online else "[-]upstream offline: answering from the cache"
        servers = "\n".join(f"[{'+' if s.up else '-'}]server {s.url}" for s in up.servers)
        return web.Response(text=f"{line}\n{servers}\nok\n", headers={"X-Edgeproxy-Online": str(up.online).lower()})

    async def metrics_endpoint(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.CONTENT_TYPE})

    async def state(request: web.Request) -> web.Response:
        return web.Response(text=json.dumps(service.state(), indent=2, default=str) + "\n",
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/debug/state", state)
    return app


def cache_hooks(config: config_mod.Config, up: upstream.Upstream) -> tuple[proxy.Recorder | None, proxy.Local | None]:
    """The recorder (tee to the cache) and the local side (answers from it), as edgeproxy.offline wires them over
    the cache in config.cache_dir. With `--cache off`: (None, None), forward only and 503 while offline."""
    if not config.cache:
        return None, None
    from edgeproxy import offline

    return offline.hooks(config, up)


@contextlib.asynccontextmanager
async def running(config: config_mod.Config, *, recorder: proxy.Recorder | None = None,
                  local: proxy.Local | None = None, creds: upstream.Credentials | None = None
                  ) -> AsyncIterator[Service]:
    """Start the proxy and ops listeners; stop them (and the upstream session) on exit."""
    creds = creds or upstream.load_kubeconfig(config.kubeconfig, config.context, config.servers)
    up = upstream.Upstream(creds, probe_interval=config.probe_interval, probe_timeout=config.probe_timeout,
                           offline_after=config.offline_after, online_after=config.online_after,
                           connect_timeout=config.connect_timeout)
    if recorder is None and local is None:
        recorder, local = cache_hooks(config, up)
    handler = proxy.Proxy(up, recorder=recorder, local=local, aliases=dict(config.component_aliases))
    await up.start()
    runners: list[web.BaseRunner] = []
    try:
        host, port = config.listen_host_port
        url = await start_listener(runners, web.ServerRunner(proxy_server(handler),
                                                             shutdown_timeout=config.shutdown_timeout), host, port)
        service = Service(config=config, upstream=up, proxy=handler, url=url, ops_url=None, started_at=time.time())
        if config.ops_host_port is not None:
            ops_host, ops_port = config.ops_host_port
            ops = web.AppRunner(ops_app(service), access_log=None, shutdown_timeout=1.0)
            service.ops_url = await start_listener(runners, ops, ops_host, ops_port)
        log.info("edgeproxy serving on %s (ops on %s), upstream %s", service.url, service.ops_url,
                 ", ".join(s.url for s in up.servers))
        yield service
    finally:
        for runner in reversed(runners):
            await runner.cleanup()
        await up.close()
        for hook in (recorder, local):  # commit what the cache was handed before exiting
            close = getattr(hook, "close", None)
            if close is not None:
                await asyncio.to_thread(close)


async def start_listener(runners: list[web.BaseRunner], runner: web.BaseRunner, host: str, port: int, *,
                         ssl_context: ssl.SSLContext | None = None) -> str:
    """Set up `runner`, listen on host:port (port 0: any free one), append it to `runners`; return its base URL."""
    await runner.setup()
    runners.append(runner)
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True, ssl_context=ssl_context)
    await site.start()
    sock_host, sock_port = runner.addresses[-1][:2]
    scheme = "https" if ssl_context is not None else "http"
    return f"{scheme}://{'[' + sock_host + ']' if ':' in sock_host else sock_host}:{sock_port}"


async def serve(config: config_mod.Config) -> None:
    """Run until SIGTERM or SIGINT, then stop accepting, give open requests shutdown_timeout, and exit."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running(config):
        await stop.wait()
        log.info("edgeproxy stopping")


def configure(parser: argparse.ArgumentParser) -> None:
    config_mod.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        config = config_mod.load(args)
        if not config.kubeconfig:
            raise config_mod.ConfigError("--kubeconfig (or EDGEPROXY_KUBECONFIG) is required")
        upstream.load_kubeconfig(config.kubeconfig, config.context, config.servers)  # fail fast, before the loop
    except (config_mod.ConfigError, upstream.UpstreamError) as e:
        print(f"edgeproxy serve: {e}", file=sys.stderr)
        return 2
    import uvloop

    uvloop.run(serve(config))
    return 0


def _version() -> str:
    from edgeproxy import __version__

    return __version__
