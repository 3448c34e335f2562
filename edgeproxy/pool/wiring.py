"""Wiring of pool sharing for `edgeproxy serve` (--pool on): views, peer listener, router, elector.

`build(config, up, local)` makes the parts (before the proxy, which takes the router); the Lease and the leader's views
use --pool-kubeconfig's identity when given (a real cluster's NodeRestriction refuses nodes the Lease, and nodes may
not list EndpointSlices), else the node's `up`; `start(...)` binds the peer
listener on --pool-listen (TLS: --pool-cert-file, peers verified against the cluster CA), learns the pool's name
(--pool-name, else the name remembered from before a restart (remember: <cache dir>/pool.json) until the Node
answers, else this node's --pool-label label, read from its Node until it is there) and runs the elector on the
pool's Lease, advertising the listener's address. When this node leads, the listener serves its views and its own
clients are answered from them; when it stops leading, its views stop (their followers' watches end and go
elsewhere). While its API server is unreachable, a node answers peers from the views it holds in memory or in its
cache even if it does not know itself leader (restarted offline, it cannot renew its Lease: its followers, who
cannot read the Lease either, still ask it).
Neighbours: server (calls build/start/stop), the parts in this package, upstream, config.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from edgeproxy import config as config_mod
from edgeproxy import metrics, tasks, upstream
from edgeproxy.guard import trust
from edgeproxy.pool import election, elector, follower, peers, policy, remember, route, view

log = logging.getLogger(__name__)
NAME_RETRY = 5.0  # seconds between reads of the Node while its pool label is not known
MOVE_EVERY = 5.0  # seconds between looks for client watches on the API server that the pool could take
STOP_WAIT = 10.0  # seconds a stop waits for the election (its Lease release is bounded by 5 s) and the views
MOVE_AGE = 10.0  # only watches open this long are moved (never a "very short watch", which client-go relists after);
# one the pool could not take (route.MOVE_HOLD) goes back upstream and is tried again later


@dataclasses.dataclass(slots=True)
class Pool:
    config: config_mod.Config
    up: upstream.Upstream  # the node's own (its identity: the Node's pool label, the client certificate for peers)
    api: upstream.Upstream  # the pool's requests (Lease, views): --pool-kubeconfig's identity, else `up`
    node: str
    views: view.Views
    router: route.Router
    listener: peers.PeerListener
    url: str = ""
    name: str = ""
    elector: elector.Elector | None = None
    task: asyncio.Task[None] | None = None
    mover: asyncio.Task[None] | None = None
    memory: remember.Memory | None = None  # the pool's name and leader from before a restart (<cache dir>/pool.json)
    recheck: asyncio.Task[None] | None = None
    cert_reload: asyncio.Task[None] | None = None  # the peer listener's serving certificate, reloaded on rotation
    move_every: float = MOVE_EVERY
    move_age: float = MOVE_AGE
    move_rounds: int = 0  # looks the mover took while the pool was usable
    _stopping: asyncio.Task[None] | None = None

    def state(self) -> dict[str, Any]:
        v = self.router.role
        return {"pool": self.name or None, "node": self.node, "listen": self.url, "role": v.role.value,
                "leader": v.holder or None,
                "leader_address": f"{v.leader_address[0]}:{v.leader_address[1]}" if v.leader_address else None,
                "followers": self.listener.followers, "views": self.views.state()}

    async def answer(self, info: Any, request: web.Request) -> web.StreamResponse:
        """The peer listener's answers: the views while this node leads; while its API server is unreachable, the
        views it kept (a leader restarted offline: its followers still find its last view); else 503, go upstream."""
        if self.router.role.role is election.Role.LEADER:
            reply = await self.views.reply(info, fallback_ok=request.headers.get(peers.FALLBACK_OK_HEADER) == "true")
        elif not self.api.online:
            reply = await self.views.reply(info, cached_only=True)
        else:
            reply = view.fallback_reply("this node does not lead its pool")
        return await peers.send(reply, request)

    def _role(self, v: election.View) -> None:
        if v.role is not election.Role.LEADER:
            self._stop_views()

    def _upstream_changed(self, online: bool) -> None:
        if online and self.router.role.role is not election.Role.LEADER:
            self._stop_views()  # views served while offline: the leader keeps them now

    def _stop_views(self) -> None:
        if self.views.views:  # stop the upstream watches: the leader keeps them
            self._stopping = tasks.spawn(self.views.close(), name="pool-views-stop")


def build(config: config_mod.Config, up: upstream.Upstream, local: Any) -> Pool:
    settings = config_mod.pool_settings(config)
    node = trust.node_name(config, up.credentials)
    if not node:
        raise config_mod.ConfigError("--pool on needs this node's name (--node-name, or a kubeconfig client "
                                     "certificate of system:node:NAME)")
    st, w = getattr(local, "store", None), getattr(local, "writer", None)
    api = up
    if config.pool_kubeconfig:
        try:
            creds = upstream.load_kubeconfig(config.pool_kubeconfig, "", config.servers)
        except (OSError, upstream.KubeconfigError) as e:
            raise config_mod.ConfigError(f"--pool-kubeconfig {config.pool_kubeconfig}: {e}") from e
        api = upstream.Upstream(creds, probe_interval=config.probe_interval, probe_timeout=config.probe_timeout,
                                offline_after=config.offline_after, online_after=config.online_after,
                                connect_timeout=config.connect_timeout, header_timeout=config.upstream_header_timeout,
                                http2=config.upstream_http2, ping_idle=config.upstream_ping_idle,
                                ping_timeout=config.upstream_ping_timeout)
    views = view.Views(api, store=st, writer=w)
    shared = policy.Policy(settings["resources"])  # type: ignore[arg-type]
    ca = config.pool_ca_file or config.client_ca_file
    cache: dict[str, Any] = {}

    def client_ssl() -> ssl.SSLContext:
        """The node's client certificate (rotations picked up), the leader verified against the cluster CA."""
        creds = up.credentials
        if cache.get("creds") is not creds:
            ctx = upstream.ssl_context(creds)
            if ca:
                ctx.load_verify_locations(cafile=ca)
            cache.update(creds=creds, ctx=ctx)
        return cache["ctx"]

    router = route.Router(shared, tokens=config.pool_tokens, views=views, ssl_factory=client_ssl, store=st,
                          header_timeout=min(route.HEADER_TIMEOUT, config.upstream_header_timeout or 3.0))
    pool = Pool(config, up, api, node, views, router, peers.PeerListener(shared),
                memory=remember.Memory(config.cache_dir))
    pool.listener.lead(pool.answer)
    router.on_role = pool._role
    api.on_change(pool._upstream_changed)
    return pool


def _server_context(config: config_mod.Config, up: upstream.Upstream) -> ssl.SSLContext:
    settings = config_mod.pool_settings(config)
    ca = config.pool_ca_file or config.client_ca_file or up.credentials.ca_file
    cadata = None if ca else up.credentials.ca_data
    if not ca and not cadata:
        raise config_mod.ConfigError("--pool on needs the cluster CA (--pool-ca-file, --client-ca-file, or the "
                                     "kubeconfig's certificate-authority) to verify the peers' certificates")
    return peers.server_context(str(settings["cert"]), str(settings["key"]), ca or None, cadata)


async def start(pool: Pool, runners: list[web.BaseRunner], proxy: Any = None) -> None:
    """Bind the peer listener and start the election (once the pool's name is known); with the `proxy`, move its
    clients' watches to the pool once it can take them."""
    config = pool.config
    if pool.api is not pool.up:
        await pool.api.start()
    host, port = config_mod.split_address(config.pool_listen)
    runner = web.AppRunner(pool.listener.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    runners.append(runner)
    ctx = _server_context(config, pool.up)
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ctx)
    await site.start()
    if config.cert_reload_interval > 0:
        settings = config_mod.pool_settings(config)
        pool.cert_reload = tasks.spawn(peers.reloader(
            ctx, str(settings["cert"]), str(settings["key"]), config.pool_ca_file or config.client_ca_file or
            pool.up.credentials.ca_file or None, interval=config.cert_reload_interval,
            warn_days=config.cert_warn_days).run(), name="pool-cert-reloader")
    bound = runner.addresses[-1][1]
    address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
    pool.url = f"https://{address}"
    pool.task = tasks.spawn(_elect(pool, address), name="pool-elector")
    if proxy is not None:
        pool.mover = tasks.spawn(_move(pool, proxy), name="pool-watch-mover")
    log.info("pool peer listener on %s", pool.url)


async def _move(pool: Pool, proxy: Any) -> None:
    """Client watches that went to the API server while no leader was known (before the first election, after a
    failover) stay there until they end, 5 to 10 minutes for client-go: end those the pool can take now, so each
    re-watches from its last resourceVersion through the pool (the API server's versions: no relist)."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(min(pool.move_every, 1.0))
        if loop.time() - last < pool.move_every:
            continue
        last = loop.time()
        if pool.router.usable:
            pool.move_rounds += 1
            moved = proxy.move_watches(pool.move_age, pool.router.movable)
            if moved:
                metrics.POOL_WATCHES_MOVED.inc(moved)
                log.info("pool %s: %d client watch(es) moved from the API server to the pool", pool.name, moved)


async def _elect(pool: Pool, address: str) -> None:
    config = pool.config
    remembered = pool.memory.pool if pool.memory is not None and not config.pool_name else ""
    name = config.pool_name or remembered or await _pool_label(pool)
    if remembered:  # used at once; the Node's label, once it answers, decides
        pool.recheck = tasks.spawn(_recheck(pool, address, remembered), name="pool-name-recheck")
    elif pool.memory is not None and not config.pool_name:
        pool.memory.remember_pool(name)
    pool.name = name
    d = config.pool_lease_duration
    cfg = election.Config(pool=name, identity=pool.node, address=address, namespace=config.pool_namespace,
                          duration=d, renew_deadline=d * 2 / 3, retry=max(0.2, d / 7.5))
    pool.elector = _elector(pool, cfg)
    log.info("pool %s: %s takes part in the election (Lease %s/%s, %s)", name, pool.node, cfg.namespace,
             cfg.lease_name, config.pool_election)
    await pool.elector.run()


def _elector(pool: Pool, cfg: election.Config) -> elector.Elector:
    """--pool-election companion (default): read the Lease the companion writes; lease: write it ourselves."""
    if pool.config.pool_election == "lease":  # as --pool-kubeconfig's identity: NodeRestriction refuses nodes
        return elector.Elector(pool.api, cfg, on_change=pool.router.elected)
    return follower.Follower(pool.up, cfg, on_change=pool.router.elected,  # patches its own Node: as the node
                             memory=pool.memory)


async def _recheck(pool: Pool, address: str, remembered: str) -> None:
    """The remembered pool name against the Node's label once the Node answers; another name restarts the election."""
    name = await _pool_label(pool, remembered)
    if name == remembered or pool.memory is None:
        return
    log.warning("pool: the Node's label now names the pool %s (%s before the restart): joining it", name, remembered)
    pool.memory.remember_pool(name)
    if pool.task is not None:  # the old elector releases what it held before the new one speaks
        pool.task.cancel()
        await asyncio.wait([pool.task])
    pool.task = tasks.spawn(_elect(pool, address), name="pool-elector")


async def _pool_label(pool: Pool, remembered: str = "") -> str:
    """The value of this node's --pool-label label, read from its Node (retried until it is there); with a
    `remembered` name, that name when the Node answers without a usable label."""
    label = pool.config.pool_label
    warned = bool(remembered)
    while True:
        why = ""
        try:
            _, resp = await pool.up.send("GET", f"/api/v1/nodes/{pool.node}",
                                         CIMultiDict({"Accept": "application/json", "User-Agent": "edgeproxy-pool"}),
                                         header_timeout=5.0)
            chunks = []
            try:
                while chunk := await resp.read():
                    chunks.append(chunk)
            finally:
                resp.close()
            if resp.status == 200:
                labels = (json.loads(b"".join(chunks)).get("metadata") or {}).get("labels") or {}
                value = labels.get(label, "")
                if value:
                    try:
                        election.lease_name(value)
                        return str(value)
                    except Exception as e:
                        why = str(e)
                else:
                    why = f"the Node has no label {label}"
                if remembered:  # the Node answered: the remembered name stays (with the reason why)
                    log.warning("pool %s (remembered from before the restart) kept: %s", remembered, why)
                    return remembered
            else:
                why = f"GET of the Node answered {resp.status}"
        except Exception as e:  # unreachable: try again
            why = f"{type(e).__name__}: {e}"
        if not warned:
            log.warning("pool: no pool name yet (%s); set --pool-name or label the node; retrying", why)
            warned = True
        await asyncio.sleep(NAME_RETRY)


async def stop(pool: Pool) -> None:
    """Stop the election (a leader releases its Lease: one PUT bounded by the elector's own timeout), the mover, the
    name's recheck, the certificate reloader and the views; each wait is bounded, so the service's shutdown goes on
    to commit its cache whatever hangs here."""
    await tasks.stop((pool.mover, pool.recheck, pool.cert_reload, pool.task), what=f"pool {pool.name}",
                     timeout=STOP_WAIT)
    await tasks.stop((pool._stopping,), what=f"pool {pool.name}", timeout=STOP_WAIT, cancel=False)
    await pool.views.close()
    pool.router.close()
    if pool.api is not pool.up:
        await pool.api.close()
