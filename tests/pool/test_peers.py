"""The pool leader's peer listener: only nodes of the cluster (verified client certificates), only pool-scoped reads."""

from __future__ import annotations

import asyncio
import json
import ssl

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgeproxy import metrics, tasks, tls
from edgeproxy.pool import peers


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("peer-pki")
    ca, other_ca = tls.make_ca("cluster-ca"), tls.make_ca("someone-else")
    ca.write(d / "ca.crt", d / "ca.key")
    tls.issue(ca, "edge-1", sans=("127.0.0.1",)).write(d / "leader.crt", d / "leader.key")
    certs = {
        "node": tls.issue(ca, "system:node:edge-2", ("system:nodes",), client=True),
        "admin": tls.issue(ca, "admin", ("system:masters",), client=True),
        "no-group": tls.issue(ca, "system:node:edge-3", ("system:masters",), client=True),
        "nameless": tls.issue(ca, "system:node:", ("system:nodes",), client=True),
        "foreign": tls.issue(other_ca, "system:node:edge-4", ("system:nodes",), client=True),
    }
    for name, issued in certs.items():
        issued.write(d / f"{name}.crt", d / f"{name}.key")
    return d


@pytest.fixture
async def leader(pki):
    served = []

    async def answer(info, request):
        served.append((info.verb, info.resource))
        return web.json_response({"kind": "ServiceList", "items": []})

    runner = web.AppRunner(peers.PeerListener(answer=answer).app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0,
                       ssl_context=peers.server_context(pki / "leader.crt", pki / "leader.key", pki / "ca.crt"))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"https://127.0.0.1:{port}", served
    await runner.cleanup()


def client_ssl(pki, who):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if who:
        ctx.load_cert_chain(pki / f"{who}.crt", pki / f"{who}.key")
    return ctx


async def get(pki, url, who, path, headers=None):
    connector = aiohttp.TCPConnector(ssl=client_ssl(pki, who))
    async with aiohttp.ClientSession(connector=connector) as s, s.get(url + path, headers=headers) as r:
        return r.status, json.loads(await r.read())


async def test_a_node_gets_the_pool_scoped_reads(pki, leader):
    url, served = leader
    status, body = await get(pki, url, "node", "/api/v1/services?watch=true&allowWatchBookmarks=true")
    assert (status, body["kind"]) == (200, "ServiceList")
    status, _ = await get(pki, url, "node", "/apis/discovery.k8s.io/v1/endpointslices?limit=500")
    assert status == 200
    assert served == [("watch", "services"), ("list", "endpointslices")]


@pytest.mark.parametrize(("path", "why"), [
    ("/api/v1/namespaces/kube-system/secrets/coredns", "secrets are identity-specific"),
    ("/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dx", "configmaps are identity-specific"),
    ("/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1", "pods are identity-specific"),
    ("/api/v1/nodes/edge-1", "nodes are identity-specific"),
    ("/version", "not a resource request"),
])
async def test_a_node_gets_nothing_identity_specific(pki, leader, path, why):
    url, served = leader
    status, body = await get(pki, url, "node", path)
    assert status == 403 and body["reason"] == "Forbidden"
    assert f"does not serve this to node edge-2: {why}" in body["message"]
    assert served == []


async def test_a_node_request_with_a_pod_token_or_impersonation_is_refused(pki, leader):
    url, served = leader
    status, body = await get(pki, url, "node", "/api/v1/services", {"Authorization": "Bearer x.y.z"})
    assert status == 403 and "own credentials" in body["message"]
    status, body = await get(pki, url, "node", "/api/v1/services", {"Impersonate-User": "admin"})
    assert status == 403 and "impersonation" in body["message"]
    assert served == []


@pytest.mark.parametrize(("who", "why"), [
    ("admin", "admin is not a node"),
    ("no-group", "system:node:edge-3 is not in the group system:nodes"),
    ("nameless", "system:node: is not a node"),
])
async def test_a_certificate_of_the_cluster_that_is_not_a_node_gets_nothing(pki, leader, who, why):
    url, served = leader
    status, body = await get(pki, url, who, "/api/v1/services")
    assert status == 403
    assert f"the pool leader serves nodes only: {why}" in body["message"]
    assert served == []


@pytest.mark.parametrize("who", ["foreign", None])
async def test_a_peer_without_a_certificate_of_the_cluster_ca_gets_no_connection(pki, leader, who):
    url, served = leader
    with pytest.raises(aiohttp.ClientError):
        await get(pki, url, who, "/api/v1/services")
    assert served == []


async def test_until_the_view_is_built_a_node_is_told_to_go_to_the_api_server(pki):
    runner = web.AppRunner(peers.PeerListener().app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0,
                       ssl_context=peers.server_context(pki / "leader.crt", pki / "leader.key", pki / "ca.crt"))
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]
        status, body = await get(pki, f"https://127.0.0.1:{port}", "node", "/api/v1/services")
        assert (status, body["reason"]) == (503, "ServiceUnavailable")
    finally:
        await runner.cleanup()


def test_admit_reads_only_a_verified_certificate():
    assert peers.admit(None).refusal.startswith("a node client certificate issued by the cluster CA")
    assert peers.admit({}).node == ""
    ok = {"subject": ((("organizationName", "system:nodes"),), (("commonName", "system:node:edge-9"),))}
    assert peers.admit(ok) == peers.Peer("edge-9")


async def served_certificate(port, pki):
    _, w = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl(pki, "node"))
    try:
        return w.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        w.close()


async def test_the_serving_certificate_is_reloaded_when_it_rotates(pki, tmp_path):
    ca = tls.Issued(x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes()),
                    serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None))
    cert, key = tmp_path / "serving.crt", tmp_path / "serving.key"
    cert.write_bytes((pki / "leader.crt").read_bytes())
    key.write_bytes((pki / "leader.key").read_bytes())
    ctx = peers.server_context(cert, key, pki / "ca.crt")
    runner = web.AppRunner(peers.PeerListener().app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    reloading = tasks.spawn(peers.reloader(ctx, str(cert), str(key), str(pki / "ca.crt"), interval=0.05).run(),
                            name="t-pool-cert-reloader")
    failed = metrics.CERT_RELOADS.labels("failed")._value.get()
    try:
        first = await served_certificate(port, pki)
        # a rotation caught half-written: the old certificate stays in use
        cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB")
        async with asyncio.timeout(10):
            while metrics.CERT_RELOADS.labels("failed")._value.get() == failed:
                await asyncio.sleep(0.02)
        assert await served_certificate(port, pki) == first
        # the rotation done: new handshakes get the new certificate, and nodes are served as before
        tls.issue(ca, "edge-1", sans=("127.0.0.1",)).write(cert, key)
        async with asyncio.timeout(10):
            while await served_certificate(port, pki) == first:
                await asyncio.sleep(0.02)
        status, body = await get(pki, f"https://127.0.0.1:{port}", "node", "/api/v1/services")
        assert status == 503 and body["reason"] == "ServiceUnavailable"  # no leader yet: go to the API server
    finally:
        reloading.cancel()
        await asyncio.gather(reloading, return_exceptions=True)
        await runner.cleanup()
