"""The pool of API servers: identity and TLS from a kubeconfig, health probing, per-request failover, online state.

Everything else reads `Upstream.online` (and registers `on_change` callbacks) to decide between forwarding and
answering locally; nothing else opens connections to the API server. The boundary: this module sends a request and
hands back the response head and body stream; it never reads a body it forwards (proxy.py streams it) and knows nothing
of the cache. Forwarded requests go over HTTP/2 (edgeproxy/h2: one multiplexed connection per server and identity,
ALPN h2) or, when the server does not choose h2 or `http2` is off, httpclient.py's lean HTTP/1.1 keep-alive
connections; upgrades (exec, attach, port-forward) always over HTTP/1.1; probes use an aiohttp session.
Neighbours: proxy.py (its one user on the data path), server.py (builds and starts it), httpclient.py, h2/,
metrics.py.

Liveness. An HTTP/2 connection that hears nothing for `ping_idle` seconds is PINGed, and so is every HTTP/2
connection to a server whose probe timed out; no answer within `ping_timeout` and its server counts as down at once (as
after `offline_after` failed probes): the link is dead even if every stream on it was a quiet watch. Probes bring it
back up as after any other failure.

Identity. A request without an Authorization header goes up as the kubeconfig's user: its client certificate in TLS
and, if it has one, its bearer token. A request with its own Authorization header goes up over a TLS connection that
presents NO client certificate: kube-apiserver authenticates x509 before bearer tokens and takes the first that
succeeds (k8s.io/apiserver pkg/authentication/request/union), so a pod's token sent beside the node's certificate would
be read as the node.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
import re
import ssl
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import aiohttp
import yaml
from multidict import CIMultiDict

from edgeproxy import httpclient, metrics, tasks
from edgeproxy.h2 import client as h2client

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """Root of this module's errors."""


class KubeconfigError(UpstreamError):
    """A kubeconfig that cannot be used: unreadable, no such context, no server, a credential file missing."""


class Unavailable(UpstreamError):
    """No server accepted the request: nothing was sent to the client yet, so it can be answered locally."""


@dataclasses.dataclass(frozen=True, slots=True)
class Credentials:
    """What a kubeconfig says about reaching and authenticating to the cluster. Paths are absolute."""

    servers: tuple[str, ...]
    ca_file: str | None = None
    ca_data: bytes | None = None
    cert_file: str | None = None
    cert_data: bytes | None = None
    key_file: str | None = None
    key_data: bytes | None = None
    token: str | None = None
    token_file: str | None = None
    insecure: bool = False
    tls_server_name: str | None = None
    source: str = ""

    @property
    def has_client_cert(self) -> bool:
        return bool(self.cert_file or self.cert_data)


def load_kubeconfig(path: str | os.PathLike[str], context: str = "", extra_servers: Sequence[str] = ()) -> Credentials:
    """Read a kubeconfig (YAML or JSON) into Credentials; `extra_servers` are appended after the cluster's server.

    A kubeconfig names one server per cluster; edge hosts that can reach several API servers (or a load balancer and
    the servers behind it) list the others in `--servers`.
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise KubeconfigError(f"cannot read kubeconfig {path}: {e}") from e
    base = path.resolve().parent
    name = context or doc.get("current-context") or ""
    ctx = _named(doc.get("contexts"), name, "context", path) if name else _only(doc.get("contexts"), "context", path)
    cluster = _named(doc.get("clusters"), ctx.get("cluster", ""), "cluster", path)
    user = _named(doc.get("users"), ctx.get("user", ""), "user", path) if ctx.get("user") else {}
    server = str(cluster.get("server") or "").rstrip("/")
    servers = tuple(dict.fromkeys(s for s in (server, *(x.rstrip("/") for x in extra_servers)) if s))
    if not servers:
        raise KubeconfigError(f"{path}: cluster {ctx.get('cluster')!r} has no server")
    for url in servers:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise KubeconfigError(f"{path}: server {url!r} is not an http(s) URL")

    def file(d: Mapping[str, object], key: str) -> str | None:
        value = d.get(key)
        return str(base / str(value)) if value else None

    def data(d: Mapping[str, object], key: str) -> bytes | None:
        value = d.get(key)
        if not value:
            return None
        try:
            return base64.b64decode(str(value), validate=False)
        except ValueError as e:
            raise KubeconfigError(f"{path}: {key} is not base64") from e

    creds = Credentials(
        servers=servers,
        ca_file=file(cluster, "certificate-authority"),
        ca_data=data(cluster, "certificate-authority-data"),
        cert_file=file(user, "client-certificate"),
        cert_data=data(user, "client-certificate-data"),
        key_file=file(user, "client-key"),
        key_data=data(user, "client-key-data"),
        token=str(user["token"]) if user.get("token") else None,
        token_file=file(user, "tokenFile"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name") or None,
        source=str(path),
    )
    for f in (creds.ca_file, creds.cert_file, creds.key_file, creds.token_file):
        if f and not os.path.exists(f):
            raise KubeconfigError(f"{path}: file {f} does not exist")
    if creds.has_client_cert != bool(creds.key_file or creds.key_data):
        raise KubeconfigError(f"{path}: user has a client certificate without a key, or a key without one")
    return creds


def _named(items: object, name: str, what: str, path: Path) -> dict:
    for entry in items or ():
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry.get(what) or {}
    raise KubeconfigError(f"{path}: no {what} named {name!r}")


def _only(items: object, what: str, path: Path) -> dict:
    entries = [e for e in items or () if isinstance(e, dict)]
    if len(entries) != 1:
        raise KubeconfigError(f"{path}: no current-context and not exactly one {what}")
    return entries[0].get(what) or {}


def ssl_context(creds: Credentials, *, client_cert: bool = True, http2: bool = False) -> ssl.SSLContext:
    """The TLS client context for the API servers: the cluster CA, and the user's client certificate if asked.

    The one place TLS is set up, so a rotated client certificate (kubelet rotates its own) is picked up by building a
    new context and handing it to `Upstream.set_credentials`; connections already open keep the old one.
    """
    if (creds.ca_file or creds.ca_data) and not creds.insecure:
        # Only the cluster CA: loading the system store first (and dropping it) costs ~17 ms per context, paid on
        # the event loop at every certificate rotation.
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=creds.ca_file,
            cadata=creds.ca_data.decode("ascii", "replace") if creds.ca_data else None,
        )
    else:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if creds.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    if client_cert and creds.has_client_cert:
        if creds.cert_file and creds.key_file:
            ctx.load_cert_chain(creds.cert_file, creds.key_file)
        else:
            _load_chain_from_data(ctx, creds)
    return ctx


def _load_chain_from_data(ctx: ssl.SSLContext, creds: Credentials) -> None:
    # ssl can only load a key pair from files: write inline data to a private temporary directory for the call.
    with tempfile.TemporaryDirectory(prefix="edgeproxy-tls-") as tmp:
        cert = creds.cert_data or Path(creds.cert_file or "").read_bytes()
        key = creds.key_data or Path(creds.key_file or "").read_bytes()
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        for p, content in ((cert_path, cert), (key_path, key)):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(content)
        ctx.load_cert_chain(cert_path, key_path)


class Server:
    """One API server's health as the prober and the requests see it. Starts up: a server is presumed reachable
    until `offline_after` probes, connection attempts or response-head deadlines in a row fail (a request that cannot
    connect, or gets no head in time, is answered locally anyway, so starting with the API server down costs no
    wait)."""

    __slots__ = ("fails", "host", "last_error", "last_probe", "latency", "netloc", "oks", "port", "scheme", "up",
                 "url")

    def __init__(self, url: str) -> None:
        self.url = url
        parts = urllib.parse.urlsplit(url)
        self.scheme = parts.scheme
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.netloc = parts.netloc  # the Host header
        self.up = True
        self.oks = 0
        self.fails = 0
        self.last_error = ""
        self.last_probe = 0.0
        self.latency: float | None = None

    def state(self) -> dict[str, object]:
        return {"url": self.url, "up": self.up, "last_error": self.last_error, "last_probe": self.last_probe,
                "probe_latency_seconds": self.latency}


_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


class Upstream:
    """The API servers of one kubeconfig: a shared ClientSession, the prober, and the online state."""

    __slots__ = (
        "_creds", "_h2", "_listeners", "_pool", "_prober", "_reached_listeners", "_session", "_ssl_anonymous",
        "_ssl_anonymous_h2", "_ssl_identity", "_ssl_identity_h2", "_token", "_token_mtime", "_wake", "changed_at",
        "connect_timeout", "header_timeout", "http2", "interval", "offline_after", "online", "online_after",
        "probe_timeout", "reached", "servers",
    )

    def __init__(self, creds: Credentials, *, probe_interval: float = 5.0, probe_timeout: float = 2.0,
                 offline_after: int = 3, online_after: int = 2, connect_timeout: float = 3.0,
                 header_timeout: float = 10.0, http2: bool = True, ping_idle: float = 30.0,
                 ping_timeout: float = 15.0) -> None:
        self.servers = [Server(url) for url in creds.servers]
        self.interval = probe_interval
        self.probe_timeout = probe_timeout
        self.offline_after = max(1, offline_after)
        self.online_after = max(1, online_after)
        self.connect_timeout = connect_timeout
        self.header_timeout = header_timeout  # the default response-head deadline of a forwarded request; 0: none
        self.online = True  # until probes say otherwise
        # Whether any API server has answered since the start (a probe or a request). Until then `online` is only a
        # presumption (requests are tried upstream first), and the status line and /readyz say "connecting".
        self.reached = False
        self.changed_at = time.time()
        self._listeners: list[Callable[[bool], None]] = []
        self._reached_listeners: list[Callable[[], None]] = []
        self._session: aiohttp.ClientSession | None = None  # for probes only; requests use the lean pool
        self._pool = httpclient.Pool(connect_timeout=connect_timeout)
        self.http2 = http2
        self._h2 = h2client.Pool(connect_timeout=connect_timeout, read_idle=ping_idle, ping_timeout=ping_timeout,
                                 on_dead=self._connection_dead)
        self._prober: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._token: str | None = None
        self._token_mtime = 0.0
        self._creds = creds
        self._ssl_identity: ssl.SSLContext | None = None
        self._ssl_anonymous: ssl.SSLContext | None = None
        self._ssl_identity_h2: ssl.SSLContext | None = None
        self._ssl_anonymous_h2: ssl.SSLContext | None = None
        self.set_credentials(creds)
        metrics.ONLINE.set(1)
        for s in self.servers:
            metrics.UPSTREAM_UP.labels(server=s.url).set(1)

    # ---- lifecycle ----
    async def start(self) -> None:
        """Open the session and start probing."""
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=60, enable_cleanup_closed=False)
        self._session = aiohttp.ClientSession(  # the prober's
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout),
        )
        self._prober = tasks.spawn(self._probe_loop(), name="upstream-prober")

    async def close(self) -> None:
        await tasks.stop((self._prober,), what="upstream", timeout=10.0)
        if self._session is not None:
            await self._session.close()
        self._pool.close()
        self._h2.close()

    def on_change(self, callback: Callable[[bool], None]) -> None:
        """Call `callback(online)` on the event loop whenever the overall state flips."""
        self._listeners.append(callback)

    def on_reached(self, callback: Callable[[], None]) -> None:
        """Call `callback()` once, when an API server answers for the first time since the start."""
        self._reached_listeners.append(callback)

    @property
    def connecting(self) -> bool:
        """Online only by presumption: no API server has answered yet, and not yet declared offline."""
        return self.online and not self.reached

    def set_credentials(self, creds: Credentials) -> None:
        """Use new credentials for new connections (a rotated client certificate); open ones keep the old."""
        https = any(s.scheme == "https" for s in self.servers)
        self._creds = creds
        self._ssl_identity = ssl_context(creds) if https else None
        self._ssl_anonymous = ssl_context(creds, client_cert=False) if https else None
        if https and self.http2:
            # New requests go on new connections presenting the new certificate; the open ones carry their
            # watches on until they end, then close.
            self._ssl_identity_h2 = ssl_context(creds, http2=True)
            self._ssl_anonymous_h2 = ssl_context(creds, client_cert=False, http2=True)
            self._h2.drain()
        self._token = creds.token
        self._token_mtime = 0.0
        self._refresh_token()

    @property
    def credentials(self) -> Credentials:
        return self._creds

    # ---- requests ----
    def ssl_for(self, server: Server, own_auth: bool) -> ssl.SSLContext | None:
        if server.scheme != "https":
            return None
        return self._ssl_anonymous if own_auth else self._ssl_identity

    def authorize(self, headers: CIMultiDict[str]) -> bool:
        """Add the kubeconfig's bearer token unless the request has its own. True if it has its own."""
        if "Authorization" in headers:
            return True
        if self._token:
            headers["Authorization"] = "Bearer " + self._token
        return False

    def ordered(self) -> list[Server]:
        """Servers to try: those up in kubeconfig order, then those down."""
        return sorted(self.servers, key=lambda s: not s.up)

    async def send(self, method: str, path_qs: str, headers: CIMultiDict[str],
                   body: bytes | AsyncIterator[bytes] | None = None, *, header_timeout: float | None = None
                   ) -> tuple[Server, httpclient.Response]:
        """Send one request, failing over server by server; the caller streams the body, then releases or closes.

        Raises Unavailable when no server answered (nothing reached the client yet: it can be answered locally).
        `headers` are sent as given (hop-by-hop and framing headers already removed); the kubeconfig's token is added
        unless the request carries its own Authorization. Only idempotent requests (or ones that never left) go on
        to the next server.

        `header_timeout`: seconds, over all servers tried, until the response head (None or 0: no deadline). A
        server that sends no head in time (hung, or a black-holed link on a kept-alive connection) counts as a
        failure toward the offline hysteresis, its connection is dropped (never pooled again: a late answer would
        be read as the next request's), and Unavailable is raised. Not applied to a body still streaming from the
        client: its upload time is not the server's silence, and the body could not be answered locally anyway.
        """
        own_auth = self.authorize(headers)
        idempotent = method in _IDEMPOTENT and not isinstance(body, AsyncIterator)
        items = list(headers.items())
        h2_headers: list[tuple[bytes, bytes]] | None = None
        errors = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + header_timeout if header_timeout and not isinstance(body, AsyncIterator) else None
        for server in self.ordered():
            if deadline is not None and loop.time() >= deadline:  # spent connecting to the servers before
                errors.append(f"no response head within {header_timeout:g}s")
                break
            ctx = self.ssl_for(server, own_auth)
            try:
                if self.http2 and ctx is not None and self._h2.speaks_h2(server.host, server.port):
                    if h2_headers is None:
                        h2_headers = h2_request_headers(method, path_qs, items, body)
                    try:
                        resp = await self._h2.request(
                            server.host, server.port, self._ssl_anonymous_h2 if own_auth else self._ssl_identity_h2,
                            self._creds.tls_server_name or server.host,
                            headers.get("Authorization", "") if own_auth else "",
                            [(b":authority", server.netloc.encode("latin-1")), *h2_headers], body, label=server.url,
                            retry_stale=not isinstance(body, AsyncIterator), deadline=deadline)
                    except h2client.NotH2 as e:
                        if e.transport is not None and ctx is not None:  # the handshake is not wasted
                            self._pool.adopt(server.host, server.port, ctx, e.transport)
                        resp = None
                else:
                    resp = None
                if resp is None:
                    head = httpclient.request_head(method, path_qs, server.netloc, items, body)
                    resp = await self._pool.request(
                        server.host, server.port, ctx, (self._creds.tls_server_name or server.host) if ctx else None,
                        method, head, body, retry_stale=not isinstance(body, AsyncIterator), deadline=deadline)
            except httpclient.HeadTimeout as e:
                error = f"no response head within {header_timeout:g}s"
                errors.append(f"{server.url}: {error}")
                metrics.UPSTREAM_HEADER_TIMEOUTS.labels(server=server.url).inc()
                self._pool.discard_idle(server.host, server.port)  # its own connection was dropped already
                self.note_failure(server, error)
                # The deadline is the whole request's: no time is left for the next server. A write may have reached
                # the server: its outcome is unknown, and the local side answers it as it answers writes offline.
                raise Unavailable("; ".join(errors)) from e
            except httpclient.ConnectFailed as e:
                errors.append(f"{server.url}: {e}")
                self.note_failure(server, str(e))
                continue
            except httpclient.HttpClientError as e:
                errors.append(f"{server.url}: {e}")
                self.note_failure(server, str(e))
                if idempotent:
                    continue
                raise Unavailable("; ".join(errors)) from e
            if server.fails or not server.up or not self.reached:  # failures count only in a row
                self._record(server, True, "")
            return server, resp
        raise Unavailable("; ".join(errors) or "no API server configured")

    async def open_raw(self, head: Callable[[Server], bytes], own_auth: bool
                       ) -> tuple[Server, asyncio.StreamReader, asyncio.StreamWriter]:
        """A raw connection for an HTTP/1.1 Upgrade (exec, attach, port-forward) with `head(server)` already sent."""
        errors = []
        for server in self.ordered():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(
                    server.host, server.port, ssl=self.ssl_for(server, own_auth),
                    server_hostname=(self._creds.tls_server_name or server.host) if server.scheme == "https" else None,
                    limit=1 << 18,
                ), self.connect_timeout)
            except (TimeoutError, OSError, ssl.SSLError) as e:
                errors.append(f"{server.url}: {_describe(e)}")
                self.note_failure(server, _describe(e))
                continue
            writer.write(head(server))
            return server, reader, writer
        raise Unavailable("; ".join(errors) or "no API server configured")

    def _connection_dead(self, host: str, port: int, why: str) -> None:
        """An HTTP/2 connection did not answer a PING in time: its server is down now (the probes bring it back)."""
        for server in self.servers:
            if (server.host, server.port) == (host, port):
                metrics.UPSTREAM_FAILURES.labels(server=server.url).inc()
                server.fails = max(server.fails, self.offline_after - 1)
                self._record(server, False, why)
                self._pool.discard_idle(host, port)  # kept-alive HTTP/1.1 connections over the same dead path
                self._wake.set()

    def note_failure(self, server: Server, error: str) -> None:
        """A request could not connect, or got no response head in time: count it like a failed probe and probe
        again now."""
        metrics.UPSTREAM_FAILURES.labels(server=server.url).inc()
        self._record(server, False, error)
        self._wake.set()

    # ---- health ----
    async def probe(self, server: Server) -> bool:
        """One GET /readyz with a short timeout. 200 is up; 401/403 (reachable, not authorised to look) too."""
        assert self._session is not None
        headers: CIMultiDict[str] = CIMultiDict()
        self.authorize(headers)
        start = time.monotonic()
        if self.http2 and server.scheme == "https" and self._h2.speaks_h2(server.host, server.port):
            # Over the identity's one HTTP/2 connection: no connection of its own across the WAN, and it tests the
            # connection the requests use.
            try:
                ok, error = await self._probe_h2(server, headers)
            except h2client.NotH2 as e:
                if e.transport is not None and self._ssl_identity is not None:
                    self._pool.adopt(server.host, server.port, self._ssl_identity, e.transport)
            else:
                return self._probed(server, start, ok, error)
        try:
            async with self._session.get(
                server.url + "/readyz", headers=headers, ssl=self.ssl_for(server, False) or True,
                timeout=aiohttp.ClientTimeout(total=self.probe_timeout), allow_redirects=False,
                # the kubeconfig's tls-server-name, as for forwarded requests (a server reached by another address)
                server_hostname=self._creds.tls_server_name if server.scheme == "https" else None,
            ) as resp:
                await resp.read()
                ok = resp.status in (200, 401, 403)
                error = "" if ok else f"/readyz answered {resp.status}"
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            ok, error = False, _describe(e)
            if isinstance(e, TimeoutError):
                self._probe_timed_out(server)
        return self._probed(server, start, ok, error)

    async def _probe_h2(self, server: Server, headers: CIMultiDict[str]) -> tuple[bool, str]:
        h2_headers = [(b":authority", server.netloc.encode("latin-1")),
                      *h2_request_headers("GET", "/readyz", list(headers.items()), None)]
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.probe_timeout):
                resp = await self._h2.request(
                    server.host, server.port, self._ssl_identity_h2, self._creds.tls_server_name or server.host, "",
                    h2_headers, None, label=server.url, retry_stale=True, deadline=loop.time() + self.probe_timeout)
                try:
                    while await resp.read():
                        pass
                finally:
                    resp.release()
        except h2client.NotH2:
            raise
        except httpclient.ConnectFailed as e:
            return False, f"ConnectFailed: cannot connect to {server.host}:{server.port}: {e}"
        except (TimeoutError, httpclient.HttpClientError) as e:
            if isinstance(e, TimeoutError | httpclient.HeadTimeout):
                self._probe_timed_out(server)
            return False, _describe(e)
        ok = resp.status in (200, 401, 403)
        return ok, "" if ok else f"/readyz answered {resp.status}"

    def _probe_timed_out(self, server: Server) -> None:
        """A probe got no answer in time: PING the server's HTTP/2 connections now instead of after `ping_idle`. A
        dead link is then known within `ping_timeout` (`_connection_dead`), however many probes `offline_after`
        asks for; an answered PING leaves the decision to the probes."""
        if self._h2.ping_server(server.host, server.port):
            log.info("upstream %s: a probe timed out: PING on its HTTP/2 connections", server.url)

    def _probed(self, server: Server, start: float, ok: bool, error: str) -> bool:
        server.latency = time.monotonic() - start
        server.last_probe = time.time()
        metrics.PROBE_SECONDS.labels(server=server.url).observe(server.latency)
        self._record(server, ok, error)
        return ok

    async def probe_all(self) -> None:
        await asyncio.gather(*(self.probe(s) for s in self.servers))

    async def _probe_loop(self) -> None:
        while True:
            self._refresh_token()
            self._pool.prune()
            try:
                await self.probe_all()
            except Exception:  # a bug here must not stop probing
                log.exception("probe round failed")
            self._wake.clear()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that meets a set() (close hangs)
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _record(self, server: Server, ok: bool, error: str) -> None:
        if ok and not self.reached:
            self.reached = True
            for reached in list(self._reached_listeners):
                try:
                    reached()
                except Exception:
                    log.exception("reached listener failed")
        if ok:
            server.oks, server.fails = server.oks + 1, 0
        else:
            server.oks, server.fails = 0, server.fails + 1
            server.last_error = error
        before = server.up
        if before and server.fails >= self.offline_after:
            server.up = False
        elif not before and server.oks >= self.online_after:
            server.up = True
        if server.up != before:
            metrics.UPSTREAM_UP.labels(server=server.url).set(1 if server.up else 0)
            if server.up:
                log.info("upstream %s is up", server.url, extra={"event": "server_up", "server": server.url})
            else:
                log.warning("upstream %s is down: %s", server.url, server.last_error,
                            extra={"event": "server_down", "server": server.url, "error": server.last_error})
        online = any(s.up for s in self.servers)
        if online != self.online:
            self.online = online
            self.changed_at = time.time()
            metrics.ONLINE.set(1 if online else 0)
            metrics.STATE_CHANGES.labels(state="online" if online else "offline").inc()
            if not online:
                # Requests still waiting on a hung server are answered locally now instead of hanging on.
                self._pool.abort_waiting("the API server went offline before answering")
                self._h2.abort_waiting("the API server went offline before answering")
            log.warning("edgeproxy is %s", "ONLINE: forwarding to the API server" if online
                        else "OFFLINE: no API server reachable, answering locally",
                        extra={"event": "online" if online else "offline",
                               "servers_up": [s.url for s in self.servers if s.up]})
            for callback in list(self._listeners):
                try:
                    callback(online)
                except Exception:
                    log.exception("online-state listener failed")

    def _refresh_token(self) -> None:
        path = self._creds.token_file
        if not path:
            return
        try:
            mtime = os.stat(path).st_mtime
            if mtime != self._token_mtime:
                self._token = Path(path).read_text().strip() or self._creds.token
                self._token_mtime = mtime
        except OSError as e:
            log.warning("cannot read token file %s: %s", path, e)

    def state(self) -> dict[str, object]:
        conns: dict[str, list[dict[str, object]]] = {}
        for conn in self._h2.connections():
            conns.setdefault(conn.label, []).append({
                "protocol": "h2", "streams": len(conn.session.streams), "max_streams": conn.session.max_streams,
                "draining": conn.draining, "identity": "token" if conn.key[3] else "kubeconfig",
                "buffered_bytes": [st.buffered for st in conn.session.streams.values()]})
        servers = [{**s.state(), "connections": conns.get(s.url, [])} for s in self.servers]
        return {"online": self.online, "changed_at": self.changed_at, "servers": servers}


_H2_DROP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "te"})


def h2_request_headers(method: str, path_qs: str, items: list[tuple[str, str]],
                       body: bytes | AsyncIterator[bytes] | None) -> list[tuple[bytes, bytes]]:
    """An HTTP/2 header block (all but :authority) for an already-filtered HTTP/1.1 request: names lower-cased,
    connection-specific fields dropped (RFC 9113 §8.2.2), Content-Length from a whole body."""
    # The bytes the client sent: aiohttp decoded them as UTF-8 with surrogateescape (latin-1 changed U+0080-U+00FF
    # and failed on the rest, issue 14 D5).
    out = [(b":method", method.encode("ascii")), (b":scheme", b"https"),
           (b":path", path_qs.encode("utf-8", "surrogateescape"))]
    for name, value in items:
        lower = name.lower()
        if lower not in _H2_DROP:
            out.append((lower.encode("utf-8", "surrogateescape"), value.encode("utf-8", "surrogateescape")))
    if isinstance(body, bytes | bytearray):
        out.append((b"content-length", str(len(body)).encode("ascii")))
    elif body is None and method in ("POST", "PUT", "PATCH"):
        out.append((b"content-length", b"0"))
    return out


_SSL_REPR = re.compile(r" ?ssl:<ssl\.SSLContext object at 0x[0-9a-f]+>")


def _describe(e: BaseException) -> str:
    """An error for logs and /debug/state: the exception's type and message, without aiohttp's repr of the TLS
    context ("ssl:<ssl.SSLContext object at 0x...>") that says nothing to an operator."""
    if isinstance(e, aiohttp.ClientConnectorError) and not isinstance(e, aiohttp.ClientSSLError):
        cause = e.os_error.strerror or str(e.os_error) or type(e.os_error).__name__
        return f"{type(e).__name__}: cannot connect to {e.host}:{e.port}: {cause}"
    text = _SSL_REPR.sub("", str(e))
    return f"{type(e).__name__}: {text}" if text else type(e).__name__

