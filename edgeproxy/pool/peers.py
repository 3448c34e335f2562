"""The leader's peer listener: who may ask (nodes of the cluster) and what (pool-scoped reads), then an answer seam.

A peer connects over TLS and must present a client certificate that the cluster CA verified (CERT_REQUIRED: no
certificate, no handshake) whose subject is `CN=system:node:<name>, O=system:nodes` — a kubelet client certificate,
the proof kube-apiserver itself accepts that the caller is a node. Anything else gets 403 and nothing. A node's
request is classified by kube.request and judged by pool.policy; what the policy does not share gets 403 with the
policy's reason (the follower then asks the API server itself). What is shared goes to `answer(info, request)`:
`views_answer(views)` while this node leads (view.Views: its upstream list/watch per query, memory and LMDB); until
then, and on a node that does not lead, 503 so a follower goes to the API server. A follower whose own API server is
reachable says so (X-Edgeproxy-Pool-Fallback-Ok: true): what the view cannot answer then sends it there instead of
an answer the API server might not give (a watch from before the leader's ring).
The serving certificate is reloaded when its files change (`reloader`, as kubelet's serving certificate rotates):
new handshakes present the new one, open connections keep theirs.
Neighbours: policy (what is shared), view (the answers), kube.request and kube.status (the wire), tls (Reloader).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from edgeproxy import metrics, tls
from edgeproxy.kube import errors as kube_errors
from edgeproxy.kube import request as kube_request
from edgeproxy.kube import status as kube_status
from edgeproxy.pool import policy, view

log = logging.getLogger(__name__)

NODE_PREFIX = "system:node:"
NODES_GROUP = "system:nodes"
FALLBACK_OK_HEADER = "X-Edgeproxy-Pool-Fallback-Ok"

Answer = Callable[[kube_request.RequestInfo, web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass(frozen=True, slots=True)
class Peer:
    node: str  # the peer's node name; "" when refused
    refusal: str = ""


def admit(peercert: dict[str, Any] | None) -> Peer:
    """The peer of a verified client certificate (ssl.SSLObject.getpeercert(): empty unless the CA verified it)."""
    if not peercert:
        return Peer("", "a node client certificate issued by the cluster CA is required")
    cn, groups = "", []
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = str(value)
            elif key == "organizationName":
                groups.append(str(value))
    if not cn.startswith(NODE_PREFIX) or not cn[len(NODE_PREFIX):]:
        return Peer("", f"{cn or 'a certificate without a common name'} is not a node (system:node:<name>)")
    if NODES_GROUP not in groups:
        return Peer("", f"{cn} is not in the group {NODES_GROUP}")
    return Peer(cn[len(NODE_PREFIX):])


def server_context(cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str],
                   cluster_ca_file: str | os.PathLike[str] | None, cluster_ca_data: bytes | None = None
                   ) -> ssl.SSLContext:
    """TLS for the peer listener: our serving certificate, peers' client certificates REQUIRED and verified against
    the cluster CA (a file, or PEM data from the kubeconfig)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if cluster_ca_file:
        ctx.load_verify_locations(cafile=str(cluster_ca_file))
    else:
        ctx.load_verify_locations(cadata=(cluster_ca_data or b"").decode("ascii", "replace"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def reloader(ctx: ssl.SSLContext, cert_file: str, key_file: str, cluster_ca_file: str | None = None, *,
             interval: float = 10.0, warn_days: float = 30.0) -> tls.Reloader:
    """A tls.Reloader putting the serving certificate (and the cluster CA file, whose new CAs are added) into the
    live context `ctx` when the files change. The pair is loaded into a scratch context first: one that does not
    load yet (half written, a key not matching its certificate yet) leaves the old one in use, and is tried again
    at the next poll."""
    paths = [p for p in (cert_file, key_file, cluster_ca_file) if p]

    def reload() -> None:
        try:
            scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            scratch.load_cert_chain(cert_file, key_file)
            if cluster_ca_file:
                scratch.load_verify_locations(cafile=cluster_ca_file)
            ctx.load_cert_chain(cert_file, key_file)
            if cluster_ca_file:
                ctx.load_verify_locations(cafile=cluster_ca_file)
        except Exception:
            metrics.CERT_RELOADS.labels("failed").inc()
            raise
        metrics.CERT_RELOADS.labels("ok").inc()
        log.info("pool peer listener: serving certificate %s reloaded", cert_file)

    return tls.Reloader(lambda: paths, reload, certs=lambda: [cert_file], interval=interval, warn_days=warn_days,
                        on_expiry=lambda path, ts: metrics.CERT_EXPIRY.labels(path).set(ts))


async def _not_yet(info: kube_request.RequestInfo, request: web.Request) -> web.StreamResponse:
    resp = _status(kube_status.service_unavailable("this node does not lead its pool (or its view is not ready)"))
    resp.headers[view.FALLBACK_HEADER] = "not the leader"
    return resp


def views_answer(views: view.Views) -> Answer:
    """The `answer` of a leading node: its pool views."""

    async def answer(info: kube_request.RequestInfo, request: web.Request) -> web.StreamResponse:
        reply = await views.reply(info, fallback_ok=request.headers.get(FALLBACK_OK_HEADER, "") == "true")
        return await send(reply, request)

    return answer


async def send(reply: view.Reply, request: web.Request) -> web.StreamResponse:
    """A view.Reply as the aiohttp response to `request`; the body bytes count toward edgeproxy_pool_peer_bytes."""
    if reply.stream is None:
        metrics.POOL_PEER_BYTES.inc(len(reply.body))
        return web.Response(status=reply.status, body=reply.body, headers=reply.headers)
    resp = web.StreamResponse(status=reply.status, headers=reply.headers)
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        async for chunk in reply.stream:
            metrics.POOL_PEER_BYTES.inc(len(chunk))
            await resp.write(chunk)
        await resp.write_eof()
    except ConnectionResetError:  # the follower went away (its client did, or it is shutting down)
        pass
    finally:
        await reply.stream.aclose()  # type: ignore[attr-defined]
    return resp


def _status(st: dict[str, Any]) -> web.Response:
    return web.Response(status=int(st["code"]), body=kube_status.encode_json(st),
                        headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"})


class PeerListener:
    """The aiohttp application of the peer listener; serve it with `server_context(...)`."""

    __slots__ = ("_open", "answer", "policy")

    def __init__(self, pool_policy: policy.Policy | None = None, answer: Answer | None = None) -> None:
        self.policy = pool_policy or policy.Policy()
        self.answer = answer or _not_yet
        self._open: dict[str, int] = {}  # node -> requests open now (edgeproxy_pool_followers)

    def lead(self, answer: Answer | None) -> None:
        """Serve `answer` (this node leads), or nothing (None: 503, go to the API server)."""
        self.answer = answer or _not_yet

    @property
    def followers(self) -> list[str]:
        return sorted(self._open)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        peer = admit(ssl_object.getpeercert() if ssl_object is not None else None)
        if not peer.node:
            log.warning("pool peer %s refused: %s", request.remote, peer.refusal)
            return _status(kube_status.forbidden("", "", f"the pool leader serves nodes only: {peer.refusal}"))
        try:
            info = kube_request.parse(request.method, request.raw_path, "", dict(request.headers))
        except kube_errors.KubeError as e:
            return _status(kube_status.from_error(e))
        impersonating = any(k.lower().startswith("impersonate-") for k in request.headers)
        decision = self.policy.decide(info, impersonating=impersonating)
        if not decision.shared:
            return _status(kube_status.forbidden(
                info.resource, info.name, f"the pool leader does not serve this to node {peer.node}: "
                f"{decision.reason}; ask the API server", info.api_group))
        self._open[peer.node] = self._open.get(peer.node, 0) + 1
        metrics.POOL_FOLLOWERS.set(len(self._open))
        try:
            return await self.answer(info, request)
        finally:
            left = self._open.pop(peer.node) - 1
            if left:
                self._open[peer.node] = left
            metrics.POOL_FOLLOWERS.set(len(self._open))
