"""guard/trust.py: who may act as the node. A running proxy in front of the simulator, upstream as system:node:edge-1.

Issue 14 S2: on the plain listener, a request with no credentials (any local user: `runuser -u nobody -- curl`)
read the node's Secrets and patched its status. Now only kubelet's own client certificate, verified against the
cluster CA and naming this node, acts as the node (HTTPS listener); the plain listener does so only when the
operator opts in with --plain-as-node on.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edgeproxy import config, server, tls
from edgeproxy.guard import trust
from edgeproxy.sim.simulator import Simulator
from tests.e2e.edge import until

pytestmark = pytest.mark.timeout(60)

SECRET = "/api/v1/namespaces/edge/secrets/db-credentials"
STATUS = "/api/v1/nodes/edge-1/status"
PATCH = b'{"status":{"conditions":[{"type":"Ready","status":"True"}]}}'
MERGE = {"Content-Type": "application/strategic-merge-patch+json"}
TOKENS = {"coredns-sa-token-0123456789": ("system:serviceaccount:kube-system:coredns", ("system:serviceaccounts",))}


@contextlib.asynccontextmanager
async def proxy(tmp: Path, sim: Simulator, **overrides: object) -> AsyncIterator[server.Service]:
    kubeconfig = sim.kubeconfig(tmp / "upstream.kubeconfig", user="node")
    settings: dict[str, object] = dict(listen="127.0.0.1:0", ops_listen="", tls_listen="127.0.0.1:0",
                                       client_ca_file=str(sim.pki.ca_cert), cache_dir=str(tmp / "cache"),
                                       probe_interval=0.2, offline_after=3, online_after=1, connect_timeout=1.0,
                                       shutdown_timeout=0.5)
    settings.update(overrides)
    async with server.running(config.Config(kubeconfig=str(kubeconfig), **settings)) as svc:  # type: ignore[arg-type]
        yield svc


def client_ctx(tmp: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(tmp / "cache" / "pki" / "ca.crt"))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def status(s: aiohttp.ClientSession, method: str, url: str, **kw) -> int:
    async with s.request(method, url, **kw) as r:
        await r.read()
        return r.status


async def test_no_credentials_on_the_plain_listener_is_401_online_and_offline(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki", tokens=dict(TOKENS)) as sim, proxy(tmp_path, sim) as svc, \
            aiohttp.ClientSession() as s:
        node = client_ctx(tmp_path, sim.pki.node_cert, sim.pki.node_key)
        # kubelet's way: its client certificate on the HTTPS listener; this also fills the node's cache
        assert await status(s, "GET", svc.tls_url + SECRET, ssl=node) == 200
        assert await status(s, "PATCH", svc.tls_url + STATUS, data=PATCH, headers=MERGE, ssl=node) == 200
        # the probe's reproduction: anyone on the host, no credentials, plain HTTP
        async with s.get(svc.url + SECRET) as r:
            assert r.status == 401
            doc = await r.json()
        assert doc["reason"] == "Unauthorized" and "--plain-as-node" in doc["message"]
        assert await status(s, "PATCH", svc.url + STATUS, data=PATCH, headers=MERGE) == 401
        assert await status(s, "GET", svc.url + "/api/v1/namespaces/edge/pods?watch=true") == 401
        assert await status(s, "GET", svc.url + "/not/a/kubernetes/path") == 401  # unclassified: not forwarded either
        # a bearer token is not the node: the API server judges it
        token = {"Authorization": "Bearer coredns-sa-token-0123456789"}
        assert await status(s, "GET", svc.url + "/api/v1/pods", headers=token) == 200
        await sim.down()
        await until(lambda: not svc.upstream.online, 10)
        assert await status(s, "GET", svc.url + SECRET) == 401  # offline: the node's cache is not read either
        assert await status(s, "GET", svc.tls_url + SECRET, ssl=node) == 200


async def test_only_this_nodes_certificate_from_the_cluster_ca_acts_as_the_node(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim, proxy(tmp_path, sim) as svc, aiohttp.ClientSession() as s:
        assert await status(s, "GET", svc.tls_url + SECRET, ssl=client_ctx(tmp_path)) == 401  # no certificate
        # a certificate the cluster CA issued to someone else (admin, or another node) is not this node
        assert await status(s, "GET", svc.tls_url + SECRET,
                            ssl=client_ctx(tmp_path, sim.pki.admin_cert, sim.pki.admin_key)) == 401
        ca = tls.Issued(tls.load_certificate(sim.pki.ca_cert),
                        tls.serialization.load_pem_private_key(sim.pki.ca_key.read_bytes(), None))
        tls.issue(ca, "system:node:edge-2", ("system:nodes",), client=True).write(tmp_path / "n2.crt",
                                                                                 tmp_path / "n2.key")
        assert await status(s, "GET", svc.tls_url + SECRET,
                            ssl=client_ctx(tmp_path, tmp_path / "n2.crt", tmp_path / "n2.key")) == 401
        # this node's name from another CA does not even get through the handshake
        stranger = tls.make_ca("stranger")
        tls.issue(stranger, "system:node:edge-1", ("system:nodes",), client=True).write(tmp_path / "m.crt",
                                                                                       tmp_path / "m.key")
        with pytest.raises(aiohttp.ClientError):
            await status(s, "GET", svc.tls_url + SECRET, ssl=client_ctx(tmp_path, tmp_path / "m.crt",
                                                                        tmp_path / "m.key"))
        assert await status(s, "GET", svc.tls_url + SECRET,
                            ssl=client_ctx(tmp_path, sim.pki.node_cert, sim.pki.node_key)) == 200


async def test_plain_as_node_is_the_operators_explicit_choice(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim, proxy(tmp_path, sim, plain_as_node=True) as svc, \
            aiohttp.ClientSession() as s:
        assert await status(s, "GET", svc.url + SECRET) == 200
        assert await status(s, "GET", svc.tls_url + SECRET, ssl=client_ctx(tmp_path)) == 401  # HTTPS still needs proof


async def test_a_client_ca_copied_in_after_the_start_is_used_from_then_on(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        late = tmp_path / "late-ca.crt"
        async with proxy(tmp_path, sim, client_ca_file=str(late), cert_reload_interval=0.05) as svc, \
                aiohttp.ClientSession() as s:
            node = client_ctx(tmp_path, sim.pki.node_cert, sim.pki.node_key)
            assert await status(s, "GET", svc.tls_url + SECRET, ssl=node) == 401  # nothing to verify it against
            late.write_bytes(sim.pki.ca_cert.read_bytes())

            async def ok() -> bool:
                async with aiohttp.ClientSession() as fresh:  # a new connection gets the new verification
                    return await status(fresh, "GET", svc.tls_url + SECRET, ssl=node) == 200

            async with asyncio.timeout(10):  # polled: the proxy looks for the file every 0.05 s
                while not await ok():
                    await asyncio.sleep(0.05)


def test_node_name_and_peer_name():
    assert trust.peer_common_name({"subject": ((("organizationName", "system:nodes"),),
                                               (("commonName", "system:node:edge-1"),))}) == "system:node:edge-1"
    assert trust.peer_common_name({}) == "" and trust.peer_common_name(None) == ""
    t = trust.NodeTrust(None)
    assert t.user is None and "--node-name" in t.refusal_message(tls=True)
    assert not t.allows(None)
