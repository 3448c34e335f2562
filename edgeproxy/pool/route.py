"""Where a shareable request of this node's clients goes: the leader's views (this node leads), the leader over TLS
(this node follows), or nowhere (None: the proxy sends it to the API server, or answers it from its cache offline).

`Router.send(info, method, path, headers, online)` is the proxy's pool seam. It returns a response with the shape of
httpclient.Response (status, headers, read(), release(), close()), so the proxy streams it to the client and tees it
into the node's own cache exactly as an upstream answer (a follower whose leader dies can then serve offline
itself), or None. A follower's request to the leader:
- goes over TLS with the node's client certificate (the kubeconfig's), the leader verified against the cluster CA
  and its address (from the Lease), without the client's own Authorization (the leader answers every node alike);
- falls back (None) at once when the leader cannot be reached (refused, TLS failure), sends no response head within
  `header_timeout` (plus view.REACH_BACK_WAIT for a watch from a resourceVersion: the leader may first reach back to
  it), or answers X-Edgeproxy-Pool-Fallback (what its view cannot answer); the leader is then not asked again for
  `retry_after` seconds or until the election names a leader again (the watches it serves go on); a watch sent back
  this way keeps its query off `movable` for MOVE_HOLD;
- a watch that asked for bookmarks and hears nothing from the leader for `silence` seconds (the leader sends one
  every few seconds) is ended as broken: the client re-watches from its last resourceVersion, which is the API
  server's own, so the API server takes it on without a relist.
Requests with their own bearer token (kube-proxy's and CoreDNS's ServiceAccount tokens) are shared per `tokens`:
"off" never; "on" always; "vouched" (the default) only once the API server answered that identity the same query
(a 2xx this process saw, reported by the proxy through `answered`, or a view in that identity's cache partition,
which only the API server's answers fill): so nobody gets more through the pool than the API server gave them.
Neighbours: policy (what is shared), view (the leader's answers), election (who leads), httpclient (the connection
to the leader), metrics.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from edgeproxy import httpclient, metrics, tasks
from edgeproxy.kube import errors as kube_errors
from edgeproxy.pool import election, policy, state, view

log = logging.getLogger(__name__)

TOKEN_MODES = ("off", "vouched", "on")
RETRY_AFTER = 10.0  # seconds a leader that failed is not asked again (unless the election names one again)
MOVE_HOLD = 30.0  # seconds a query whose watch the pool could not take is not moved again
HEADER_TIMEOUT = 4.0  # seconds for the leader's response head (it waits up to view.WAIT for its view itself)
FALLBACK_OK_HEADER = "X-Edgeproxy-Pool-Fallback-Ok"


class ReplyResponse:
    """A view.Reply as an httpclient.Response: the leader's own clients, answered from its views in-process."""

    __slots__ = ("_stream", "body", "headers", "reason", "status", "via_pool")

    def __init__(self, reply: view.Reply) -> None:
        self.status = reply.status
        self.reason = "OK" if reply.status == 200 else ""
        self.headers = CIMultiDictProxy(CIMultiDict(reply.headers))
        self.body = reply.body
        self._stream = reply.stream
        self.via_pool = True

    async def read(self) -> bytes:
        if self._stream is None:
            body, self.body = self.body, b""
            return body
        try:
            return await self._stream.__anext__()
        except StopAsyncIteration:
            self._stream = None
            return b""

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            tasks.spawn(stream.aclose(), name="pool-view-watch-close")  # type: ignore[attr-defined]


class LeaderResponse:
    """The leader's httpclient.Response; a read that waits longer than `silence` (a watch whose bookmarks stopped)
    is a dead leader: the connection is dropped and the read raises httpclient.Broken."""

    __slots__ = ("_on_silence", "_resp", "_silence", "headers", "reason", "status", "via_pool")

    def __init__(self, resp: httpclient.Response, silence: float | None, on_silence: Callable[[], None]) -> None:
        self._resp = resp
        self._silence = silence
        self._on_silence = on_silence
        self.status, self.reason, self.headers = resp.status, resp.reason, resp.headers
        self.via_pool = True

    async def read(self) -> bytes:
        if self._silence is None:
            return await self._resp.read()
        try:
            async with asyncio.timeout(self._silence):
                return await self._resp.read()
        except TimeoutError:
            self._resp.close()
            self._on_silence()
            raise httpclient.Broken(f"the pool leader sent nothing for {self._silence:g}s") from None

    def release(self) -> None:
        self._resp.release()

    def close(self) -> None:
        self._resp.close()


class Router:
    """The pool seam of the proxy. `elected(view)` is the elector's on_change."""

    __slots__ = ("_bad_until", "_client", "_held", "_seen", "_ssl", "header_timeout", "on_role", "policy",
                 "retry_after", "role", "silence", "ssl_factory", "store", "tokens", "views")

    def __init__(self, pool_policy: policy.Policy, *, tokens: str = "vouched", views: view.Views | None = None,
                 ssl_factory: Callable[[], ssl.SSLContext] | None = None, store: Any = None,
                 header_timeout: float = HEADER_TIMEOUT, silence: float = 3 * view.BOOKMARK_INTERVAL,
                 retry_after: float = RETRY_AFTER, connect_timeout: float = 2.0,
                 on_role: Callable[[election.View], None] | None = None) -> None:
        if tokens not in TOKEN_MODES:
            raise ValueError(f"tokens must be one of {', '.join(TOKEN_MODES)}, not {tokens!r}")
        self.policy = policy.Policy(pool_policy.resources, tokens=tokens != "off")
        self.tokens = tokens
        self.views = views  # this node's views (used while it leads)
        self.ssl_factory = ssl_factory
        self.store = store  # the node's own cache (cache.store.Store), for "vouched"
        self.header_timeout = header_timeout
        self.silence = silence
        self.retry_after = retry_after
        self.role = election.View(election.Role.CANDIDATE)
        self.on_role = on_role
        self._client = httpclient.Pool(connect_timeout=connect_timeout)
        self._ssl: ssl.SSLContext | None = None
        self._bad_until = 0.0
        self._seen: set[tuple[str, ...]] = set()  # (client partition, query) the API server answered 2xx
        self._held: dict[tuple[str, ...], float] = {}  # query -> until when its watches are not moved (a fallback)
        _set_role(self.role.role)

    def elected(self, v: election.View) -> None:
        old, self.role = self.role, v
        if (old.role, old.holder) != (v.role, v.holder) and v.holder:
            metrics.POOL_LEADER_CHANGES.inc()
        if old.leader_address != v.leader_address:
            self._bad_until = 0.0  # a leader (re)named: try it at once
            self._client.close()
        _set_role(v.role)
        if self.on_role is not None:
            self.on_role(v)

    def close(self) -> None:
        self._client.close()

    @property
    def usable(self) -> bool:
        """Whether shared requests go to the pool now: this node leads, or it follows a leader not failed lately."""
        if self.role.role is election.Role.LEADER:
            return self.views is not None
        return (self.role.role is election.Role.FOLLOWER and self.role.leader_address is not None
                and self.ssl_factory is not None and time.monotonic() >= self._bad_until)

    def reset_tls(self) -> None:
        """New credentials (a rotated client certificate): new connections to the leader present them."""
        self._ssl = None
        self._client.close()

    def shares(self, info: Any, headers: Any) -> bool:
        """Whether the pool may answer this kind of request (policy.py, and --pool-tokens not off for a request
        with its own token). The proxy asks this before its fast lane and before its offline answers."""
        if info is None or not info.is_resource:
            return False
        impersonating = any(k.lower().startswith("impersonate-") for k in headers)
        return self.policy.decide(info, impersonating=impersonating).shared

    def takes(self, info: Any, headers: Any) -> bool:
        """shares(), and for a request with its own token under "vouched", the API server answered that identity
        the same query before (this process saw it answer 2xx, or the identity's cache partition holds the view)."""
        if not self.shares(info, headers):
            return False
        if info.client.identity and self.tokens == "vouched":
            return self._vouched(info)
        return True

    def movable(self, info: Any, headers: Any) -> bool:
        """takes(), and the pool did not send a watch of that query back to the API server lately: what the proxy's
        move_watches asks before it ends a client's upstream watch (so a watch the pool cannot take yet is not ended
        again and again)."""
        if not self.usable or not self.takes(info, headers):
            return False
        key = _vouch_key(info)
        return key is None or self._held.get(key[1:], 0.0) <= time.monotonic()

    def _hold(self, info: Any) -> None:
        key = _vouch_key(info)
        if key is not None and info.watch:
            if len(self._held) >= 1024:
                self._held.clear()
            self._held[key[1:]] = time.monotonic() + MOVE_HOLD

    def answered(self, info: Any, status: int) -> None:
        """The proxy's report of an upstream answer to a request this node's client sent: a 2xx to a list or watch
        of a shared query vouches for that identity and query (the API server authorized it)."""
        if 200 <= status < 300 and info.client.identity and self.tokens == "vouched" and info.verb in (
                "list", "watch"):
            key = _vouch_key(info)
            if key is not None:
                if len(self._seen) >= 4096:
                    self._seen.clear()  # only a shortcut: the cache partition still vouches
                self._seen.add(key)

    def _vouched(self, info: Any) -> bool:
        if _vouch_key(info) in self._seen:
            return True
        if self.store is None:
            return False
        from edgeproxy.autonomy import views as views_mod

        for enc in ("protobuf", "json"):
            try:
                meta = self.store.view(views_mod.view_key(info, shape="", encoding=enc))
            except kube_errors.KubeError:
                return False
            if meta is not None and meta.complete:
                return True
        return False

    async def send(self, info: Any, method: str, path: str, headers: CIMultiDict[str], *,
                   online: bool) -> Any | None:
        """The pool's answer to a request this node's client sent, or None (the API server, or the cache)."""
        if not self.takes(info, headers):
            if self.shares(info, headers):
                metrics.POOL_REQUESTS.labels("upstream").inc()
            return None
        role = self.role
        if role.role is election.Role.LEADER and self.views is not None:
            reply = await self.views.reply(info, fallback_ok=online)
            if reply.fallback:
                self._hold(info)
                metrics.POOL_REQUESTS.labels("upstream").inc()
                return None
            metrics.POOL_REQUESTS.labels("view").inc()
            return ReplyResponse(reply)
        if role.role is not election.Role.FOLLOWER or role.leader_address is None or self.ssl_factory is None:
            metrics.POOL_REQUESTS.labels("upstream").inc()
            return None
        if time.monotonic() < self._bad_until:
            metrics.POOL_REQUESTS.labels("upstream").inc()
            return None
        resp = await self._ask_leader(role.leader_address, info, method, path, headers, online)
        metrics.POOL_REQUESTS.labels("upstream" if resp is None else "leader").inc()
        return resp

    async def _ask_leader(self, address: tuple[str, int], info: Any, method: str, path: str,
                          headers: CIMultiDict[str], online: bool) -> Any | None:
        host, port = address
        if self._ssl is None:
            assert self.ssl_factory is not None
            self._ssl = self.ssl_factory()
        items = [(k, v) for k, v in headers.items() if k.lower() not in ("authorization", FALLBACK_OK_HEADER.lower())]
        if online:
            items.append((FALLBACK_OK_HEADER, "true"))
        netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        head = httpclient.request_head(method, path, netloc, items, None)
        loop = asyncio.get_running_loop()
        wait = self.header_timeout
        if info.watch and (info.resource_version or "0") != "0" and not info.send_initial_events:
            wait += view.REACH_BACK_WAIT  # a version older than the leader's view: it asks the API server first
        try:
            resp = await self._client.request(host, port, self._ssl, host, method, head, None, retry_stale=True,
                                              deadline=loop.time() + wait)
        except httpclient.HeadTimeout as e:
            self._failed("head_timeout", e)
            return None
        except httpclient.ConnectFailed as e:
            self._failed("connect", e)
            return None
        except httpclient.HttpClientError as e:
            self._failed("broken", e)
            return None
        if view.FALLBACK_HEADER in resp.headers or resp.status in (403, 503):
            # the leader cannot answer this one (not synced, not its to serve, a too-old watch): the API server
            log.debug("pool leader %s:%d: %s", host, port, resp.headers.get(view.FALLBACK_HEADER, resp.status))
            self._hold(info)
            await _drain(resp)
            return None
        silence = self.silence if info.watch and info.allow_watch_bookmarks and resp.status == 200 else None
        return LeaderResponse(resp, silence, lambda: self._failed("silent", None))

    def _failed(self, reason: str, error: Exception | None) -> None:
        metrics.POOL_FAILOVERS.labels(reason).inc()
        self._bad_until = time.monotonic() + self.retry_after
        self._client.close()  # its idle connections; the watches it serves end on their own (silence)
        log.warning("pool leader %s unusable (%s%s): to the API server for %.0fs", self.role.holder or "?", reason,
                    f": {error}" if error else "", self.retry_after, extra={"event": "pool_failover"})


async def _drain(resp: httpclient.Response) -> None:
    try:
        async with asyncio.timeout(2):
            while await resp.read():
                pass
        resp.release()
    except Exception:
        resp.close()


def _vouch_key(info: Any) -> tuple[str, ...] | None:
    try:
        q = state.Query.of(info, "")
    except kube_errors.KubeError:
        return None
    return (info.client.key, q.group, q.version, q.resource, q.namespace, q.label_selector, q.field_selector)


def _set_role(role: election.Role) -> None:
    for r in election.Role:
        metrics.POOL_ROLE.labels(r.value).set(1 if r is role else 0)

