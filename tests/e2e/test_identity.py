"""Rotated ServiceAccount tokens keep their cache, forged ones get nothing: kube-proxy over the HTTPS listener.

Online, a kube-proxy-style client (the kubernetes Python client, its own bearer token, edgeproxy's HTTPS listener)
fills the cache with token A, which the simulator accepts (by its token table, so acceptance is the simulator's, as
it would be the API server's; its TokenRequest tokens are RS256 JWTs signed by the key it publishes). The proxy
restarts with the simulator down. The same client with a rotated token gets its lists back when the token is
believed: B, accepted online earlier; C, issued by the API server in a TokenRequest kubelet made through the proxy;
D, minted by edgeproxy for kubelet's offline TokenRequest; E, fetched by kubelet straight from the simulator and
never seen by the proxy, signed by the cluster's key (the proxy fetched /openid/v1/jwks online with A). A token
claiming the same subject that nothing vouches for (A's claims under another signature, a token signed by another
key, one for another audience) gets 503: it sees nothing the account cached.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from pathlib import Path

import aiohttp
import pytest
from kubernetes import client as kclient
from kubernetes.client.rest import ApiException

from edgeproxy import config, server
from edgeproxy.autonomy import tokens
from edgeproxy.sim import Simulator
from tests.e2e.edge import until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

NS, SA = "kube-system", "kube-proxy"
SUB = f"system:serviceaccount:{NS}:{SA}"
UA = "kube-proxy/v1.32.0 (linux/amd64) kubernetes/cd13ec4"
KUBELET_UA = "kubelet/v1.32.0 (linux/amd64) kubernetes/cd13ec4"
SELECTOR = "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"


def kube_proxy(url: str, ca: Path, token: str) -> kclient.CoreV1Api:
    conf = kclient.Configuration()
    conf.host = url
    conf.ssl_ca_cert = str(ca)
    conf.api_key = {"authorization": token}
    conf.api_key_prefix = {"authorization": "Bearer"}
    conf.retries = False
    api = kclient.ApiClient(conf)
    api.user_agent = UA
    return kclient.CoreV1Api(api)


async def lists(api: kclient.CoreV1Api) -> tuple[list[str], list[str]]:
    services = await asyncio.to_thread(api.list_service_for_all_namespaces, label_selector=SELECTOR)
    nodes = await asyncio.to_thread(api.list_node)
    return (sorted(f"{s.metadata.namespace}/{s.metadata.name}" for s in services.items),
            sorted(n.metadata.name for n in nodes.items))


async def status_of(api: kclient.CoreV1Api) -> int:
    try:
        await lists(api)
    except ApiException as e:
        return e.status
    return 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def forged(claims_from: str) -> str:
    """The claims of a real token under a header and signature nobody made: what a pod of another account could
    write to impersonate this one."""
    _, payload, _ = claims_from.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] = int(time.time()) + 3600
    return ".".join((_b64(b'{"alg":"RS256","kid":"edgeproxy-sim"}'), _b64(json.dumps(claims).encode()),
                     _b64(b"\x00" * 256)))


def kubelet_ssl(p: Proxy, sim: Simulator) -> ssl.SSLContext:
    """kubelet's side of the HTTPS listener: the proxy's CA, and the node's client certificate."""
    ctx = ssl.create_default_context(cafile=str(p.ca))
    ctx.load_cert_chain(str(sim.pki.node_cert), str(sim.pki.node_key))
    return ctx


def kube_proxy_pod(sim: Simulator, name: str) -> str:
    """A kube-proxy pod on edge-1 in the simulator; its uid (a node gets tokens only bound to its own pods)."""
    pod = sim.create("pods", {"metadata": {"name": name, "namespace": NS},
                              "spec": {"nodeName": "edge-1", "serviceAccountName": SA,
                                       "containers": [{"name": "kube-proxy", "image": "kube-proxy"}]}}, namespace=NS)
    return pod["metadata"]["uid"]


async def kubelet_pods(session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext) -> None:
    """kubelet's list of its node's pods (what the proxy checks an offline TokenRequest against)."""
    async with session.get(f"{url}/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1", ssl=ctx,
                           headers={"User-Agent": KUBELET_UA}) as r:
        assert r.status == 200, await r.text()


async def token_request(session: aiohttp.ClientSession, url: str, ctx: ssl.SSLContext, pod: str, uid: str) -> str:
    """A TokenRequest as kubelet makes it for a pod (its client certificate: the node's identity), through the proxy."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"audiences": ["https://kubernetes.default.svc.cluster.local"], "expirationSeconds": 3600,
                     "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid}}}
    async with session.post(f"{url}/api/v1/namespaces/{NS}/serviceaccounts/{SA}/token", json=body, ssl=ctx,
                            headers={"User-Agent": KUBELET_UA}) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["status"]["token"]


class Proxy:
    def __init__(self, tmp: Path, sim: Simulator) -> None:
        self.kubeconfig = sim.kubeconfig(tmp / "upstream.kubeconfig", user="admin")
        self.cache_dir = tmp / "cache"
        self.ca = self.cache_dir / "pki" / "ca.crt"

    def running(self, sim: Simulator):
        cfg = config.Config(kubeconfig=str(self.kubeconfig), listen="127.0.0.1:0", ops_listen="",
                            tls_listen="127.0.0.1:0", client_ca_file=str(sim.pki.ca_cert), node_name="edge-1",
                            cache_dir=str(self.cache_dir), probe_interval=0.2,
                            probe_timeout=2.0, offline_after=2, online_after=1, connect_timeout=1.0,
                            shutdown_timeout=0.5)
        return server.running(cfg)


async def sim_token(sim: Simulator, audiences: tuple[str, ...] = ()) -> str:
    """A TokenRequest straight to the simulator (kubelet's refresh while the proxy is elsewhere)."""
    spec: dict = {"expirationSeconds": 3600}
    if audiences:
        spec["audiences"] = list(audiences)
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    url = f"{sim.url}/api/v1/namespaces/{NS}/serviceaccounts/{SA}/token"
    async with aiohttp.ClientSession() as s, s.post(url, json=body, ssl=sim.client_ssl("admin")) as r:
        assert r.status == 201, await r.text()
        return (await r.json())["status"]["token"]


async def test_rotated_tokens_keep_the_cache_and_forged_ones_see_nothing(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        sim.create("serviceaccounts", {"metadata": {"name": SA, "namespace": NS}}, namespace=NS)
        p = Proxy(tmp_path, sim)
        a, b = await sim_token(sim), await sim_token(sim)
        assert a != b and {a, b} <= set(sim.tokens)
        uids = {pod: kube_proxy_pod(sim, pod) for pod in ("kube-proxy-1", "kube-proxy-2")}
        async with p.running(sim) as svc:
            # ---------------------------------------------------- online: token A fills the cache
            want = await lists(kube_proxy(svc.tls_url, p.ca, a))
            assert want[0] and want[1]
            # and, with A's credentials, the proxy fetched the cluster's service-account keys
            await until(lambda: svc.proxy.identities.cluster_keys == 1, 10)
            assert svc.state()["token_identities"] == {
                "accepted_tokens": 1, "issuers": ["https://kubernetes.default.svc.cluster.local"], "cluster_keys": 1}
            # B, the rotation kubelet made later, was used online once: the simulator accepted it
            assert await asyncio.to_thread(kube_proxy(svc.tls_url, p.ca, b).get_api_resources)
            async with aiohttp.ClientSession() as kubelet:
                await kubelet_pods(kubelet, svc.tls_url, kubelet_ssl(p, sim))
                # a pod's token, issued by the API server, relayed by the proxy (never used online)
                c = await token_request(kubelet, svc.tls_url, kubelet_ssl(p, sim), "kube-proxy-1", uids["kube-proxy-1"])
            assert c in sim.tokens
            # online, a forged token is the API server's to refuse, and nothing is recorded for it
            assert await status_of(kube_proxy(svc.tls_url, p.ca, forged(a))) == 401
        # kubelet refreshes the token straight from the API server; nobody uses it before the link goes
        e = await sim_token(sim)
        vault = await sim_token(sim, ("vault",))  # the cluster's key, another audience
        # -------------------------------------------------------- offline: a restart with the simulator down
        await sim.down()
        async with p.running(sim) as svc:
            await until(lambda: not svc.upstream.online, 10)
            # what token A fetched is the account's, not the token's
            clients = {k.client for k, _ in svc.proxy.local.store.views()}
            assert f"kube-proxy@sa:{NS}:{SA}" in clients
            assert not [c for c in clients if c.startswith("kube-proxy@") and c != f"kube-proxy@sa:{NS}:{SA}"]
            assert await lists(kube_proxy(svc.tls_url, p.ca, b)) == want  # accepted online earlier
            assert await lists(kube_proxy(svc.tls_url, p.ca, c)) == want  # a relayed TokenRequest answer
            async with aiohttp.ClientSession() as kubelet:
                # a new pod offline: minted by edgeproxy
                d = await token_request(kubelet, svc.tls_url, kubelet_ssl(p, sim), "kube-proxy-2", uids["kube-proxy-2"])
            assert d not in sim.tokens and d not in (a, b, c)
            assert await lists(kube_proxy(svc.tls_url, p.ca, d)) == want
            assert await lists(kube_proxy(svc.tls_url, p.ca, e)) == want  # signed by the cluster's key
            assert await status_of(kube_proxy(svc.tls_url, p.ca, vault)) == 503
            # the same subject with nothing to vouch for it: an unsigned copy of A's claims, a token signed by
            # another key; and an opaque token. Each is its own, empty, partition.
            assert await status_of(kube_proxy(svc.tls_url, p.ca, forged(a))) == 503
            stranger = tokens.Signer.load_or_create(tmp_path / "stranger.pem", "edgeproxy://elsewhere")
            payload = d.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            assert await status_of(kube_proxy(svc.tls_url, p.ca, stranger.sign(claims))) == 503
            assert await status_of(kube_proxy(svc.tls_url, p.ca, "not-a-jwt")) == 503
