"""Real clients through edgeproxy to the simulator over TLS with client certificates: what they get is what the API
server sends them direct."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.e2e.conftest import KUBECTL, kubectl_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PROTOBUF = "application/vnd.kubernetes.protobuf"


async def test_kubectl_get_and_yaml_match_direct(cluster):
    via_proxy = await cluster.kubectl("get", "pods", "-n", "edge", "-o", "name")
    assert via_proxy.split() and via_proxy == await cluster.kubectl("get", "pods", "-n", "edge", "-o", "name",
                                                                    via="direct")
    yaml_proxy = await cluster.kubectl("get", "configmap", "web-config", "-n", "edge", "-o", "yaml")
    assert "name: web-config" in yaml_proxy
    assert yaml_proxy == await cluster.kubectl("get", "configmap", "web-config", "-n", "edge", "-o", "yaml",
                                               via="direct")


async def test_kubectl_get_raw(cluster):
    assert json.loads(await cluster.kubectl("get", "--raw", "/version")) == json.loads(
        await cluster.kubectl("get", "--raw", "/version", via="direct"))


async def test_kubectl_apply_and_delete(cluster, tmp_path):
    # --validate=false: the simulator serves no OpenAPI document for kubectl to validate against.
    manifest = tmp_path / "cm.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: e2e-applied, namespace: edge}\n"
                        "data: {greeting: hello}\n")
    assert "created" in await cluster.kubectl("apply", "--validate=false", "-f", str(manifest))
    direct = json.loads(await cluster.kubectl("get", "configmap", "e2e-applied", "-n", "edge", "-o", "json",
                                              via="direct"))
    assert direct["data"] == {"greeting": "hello"}
    manifest.write_text(manifest.read_text().replace("hello", "bonjour"))
    assert "configured" in await cluster.kubectl("apply", "--validate=false", "-f", str(manifest))
    assert "deleted" in await cluster.kubectl("delete", "configmap", "e2e-applied", "-n", "edge")
    assert "e2e-applied" not in await cluster.kubectl("get", "configmaps", "-n", "edge", "-o", "name", via="direct")


async def test_kubectl_get_watch_sees_events_while_open(cluster):
    proc = await asyncio.create_subprocess_exec(
        str(KUBECTL), "--kubeconfig", str(cluster.proxy_kubeconfig), "get", "configmaps", "-n", "edge", "-w",
        "-o", "name", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=kubectl_env(),
    )
    try:
        async with asyncio.timeout(60):
            first = await proc.stdout.readline()  # the initial list comes first
            assert first.startswith(b"configmap/"), first
            await cluster.kubectl("create", "configmap", "e2e-watched", "-n", "edge", via="direct")
            while True:
                line = await proc.stdout.readline()
                assert line, "the watch ended"
                if b"e2e-watched" in line:
                    break
            assert proc.returncode is None  # still watching
    finally:
        proc.terminate()
        await proc.wait()


def _python_client(cluster):
    import kubernetes

    cfg = kubernetes.client.Configuration()
    cfg.host = cluster.proxy_url
    return kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(cfg))


async def test_kubernetes_python_client_list_and_watch(cluster):
    import kubernetes

    api = _python_client(cluster)
    pods = await asyncio.to_thread(api.list_namespaced_pod, "edge")
    assert {p.metadata.name for p in pods.items}
    rv = pods.metadata.resource_version

    def watch_until(name: str) -> str:
        w = kubernetes.watch.Watch()
        for event in w.stream(api.list_namespaced_config_map, "edge", resource_version=rv, timeout_seconds=30):
            if event["object"].metadata.name == name:
                w.stop()
                return event["type"]
        return "not seen"

    watcher = asyncio.ensure_future(asyncio.to_thread(watch_until, "e2e-py"))
    await cluster.kubectl("create", "configmap", "e2e-py", "-n", "edge", via="direct")
    async with asyncio.timeout(60):
        assert await watcher == "ADDED"


async def test_protobuf_bytes_through_proxy_equal_direct(cluster):
    paths = ["/api/v1/pods", "/api/v1/namespaces/edge/configmaps/web-config", "/api/v1/nodes?fieldSelector="
             "metadata.name%3Dedge-1", "/apis/discovery.k8s.io/v1/endpointslices"]
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        for path in paths:
            headers = {"Accept": PROTOBUF}
            async with s.get(cluster.sim_url + path, headers=headers, ssl=cluster.client_ssl()) as r:
                direct = (r.status, r.headers["Content-Type"], await r.read())
            async with s.get(cluster.proxy_url + path, headers=headers) as r:
                proxied = (r.status, r.headers["Content-Type"], await r.read())
            assert direct[0] == 200 and direct[2].startswith(b"k8s\x00")
            assert proxied == direct, path


async def test_protobuf_watch_streams_event_by_event(cluster):
    async with aiohttp.ClientSession() as s:
        async with s.get(cluster.proxy_url + "/api/v1/namespaces/edge/configmaps", headers={"Accept": PROTOBUF}) as r:
            body = await r.read()
        from edgeproxy.kube import protobuf

        rv = protobuf.parse_list(protobuf.unwrap(body).raw).resource_version
        url = f"{cluster.proxy_url}/api/v1/namespaces/edge/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=30"
        async with asyncio.timeout(60), s.get(url, headers={"Accept": PROTOBUF}) as r:
            assert r.headers["Content-Type"] == protobuf.WATCH_CONTENT_TYPE
            await cluster.kubectl("create", "configmap", "e2e-stream", "-n", "edge", via="direct")
            head = await r.content.readexactly(4)
            frame = await r.content.readexactly(int.from_bytes(head, "big"))
            event = protobuf.decode_event(frame)
            assert event.type == "ADDED" and protobuf.object_meta(event.raw).name == "e2e-stream"
            assert not r.content.at_eof()  # the stream is still open: the event came through on its own


async def test_client_going_away_cancels_upstream_watch(cluster):
    def open_upstream() -> list:
        return [w for w in cluster.sim.api.watches
                if w.request.transport is not None and not w.request.transport.is_closing()]

    async with aiohttp.ClientSession() as s, asyncio.timeout(30):
        r = await s.get(cluster.proxy_url + "/api/v1/namespaces/edge/configmaps?watch=true&resourceVersion=0")
        assert r.status == 200
        await r.content.readany()
        assert len(open_upstream()) == 1
        r.close()  # the client goes away
        while open_upstream():  # bounded by the timeout: the proxy drops the upstream connection
            await asyncio.sleep(0.01)


async def test_hop_by_hop_headers_removed_both_ways(cluster):
    async with aiohttp.ClientSession() as s, s.get(
        cluster.proxy_url + "/api/v1/namespaces/edge/configmaps/web-config",
        headers={"Connection": "keep-alive, X-Hop", "X-Hop": "1", "TE": "trailers", "Proxy-Authorization": "x"},
    ) as r:
        assert r.status == 200
        assert "Keep-Alive" not in r.headers and "Proxy-Authenticate" not in r.headers
        assert r.headers.get("Transfer-Encoding", "chunked") == "chunked"  # framing is the proxy's own


async def test_authorization_goes_up_as_sent(cluster):
    path = "/api/v1/namespaces/edge/configmaps/web-config"
    async with aiohttp.ClientSession() as s:
        async with s.get(cluster.proxy_url + path, headers={"Authorization": "Bearer not-a-token"}) as r:
            assert r.status == 401  # the simulator judged the caller's token, not the proxy's certificate
        async with s.get(cluster.proxy_url + path, headers={"Authorization": "Bearer pod-sa-token"}) as r:
            assert r.status == 200
        async with s.get(cluster.proxy_url + path) as r:
            assert r.status == 200  # no Authorization: the kubeconfig's client certificate


async def test_node_identity_is_used_without_authorization(sim, tmp_path):
    from tests.e2e.conftest import proxy_for

    node = sim.kubeconfig(tmp_path / "node.kubeconfig", "node")
    async with proxy_for(node, tmp_path) as service, aiohttp.ClientSession() as s:
        async with s.get(service.url + "/api/v1/pods") as r:
            assert r.status == 403  # the Node authorizer: all pods are not the node's to list
        async with s.get(service.url + "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1") as r:
            assert r.status == 200


async def test_upstream_down_is_503_status_then_back(cluster):
    await cluster.sim.down()
    async with aiohttp.ClientSession() as s:
        async with s.get(cluster.proxy_url + "/api/v1/namespaces/edge/configmaps/web-config") as r:
            assert r.status == 503
            st = await r.json()
        assert (st["kind"], st["status"], st["reason"], st["code"]) == ("Status", "Failure", "ServiceUnavailable", 503)
        await cluster.sim.up()
        async with asyncio.timeout(30):
            while True:  # bounded: the proxy forwards again once the simulator listens
                async with s.get(cluster.proxy_url + "/api/v1/namespaces/edge/configmaps/web-config") as r:
                    if r.status == 200:
                        break
                await cluster.service.upstream.probe_all()


async def test_failover_to_second_server(sim, tmp_path):
    from tests.e2e.conftest import proxy_for
    from tests.test_proxy import free_port

    dead = f"https://127.0.0.1:{free_port()}"
    kubeconfig = sim.kubeconfig(tmp_path / "k", "admin")
    doc = json.loads(kubeconfig.read_text())
    real = doc["clusters"][0]["cluster"]["server"]
    doc["clusters"][0]["cluster"]["server"] = dead  # the kubeconfig's server is down; --servers names the other
    kubeconfig.write_text(json.dumps(doc))
    async with proxy_for(kubeconfig, tmp_path, servers=(real,)) as service, aiohttp.ClientSession() as s:
        assert [x.url for x in service.upstream.servers] == [dead, real]
        async with s.get(service.url + "/api/v1/namespaces/edge/configmaps/web-config") as r:
            assert r.status == 200
            assert (await r.json())["metadata"]["name"] == "web-config"


async def test_hung_upstream_request_is_answered_from_the_cache(sim, tmp_path):
    from tests.e2e.conftest import proxy_for

    kubeconfig = sim.kubeconfig(tmp_path / "k", "admin")
    path = "/api/v1/namespaces/edge/configmaps/web-config"
    async with proxy_for(kubeconfig, tmp_path, probe_interval=0.2, probe_timeout=0.5, offline_after=2) as service, \
            aiohttp.ClientSession() as s, asyncio.timeout(60):
        async with s.get(service.url + path) as r:  # online: forwarded, and recorded
            assert r.status == 200
            online = await r.json()
        service.proxy.recorder.flush(10)  # the recording is committed before the link hangs
        sim.hang()
        async with s.get(service.url + path) as r:  # hangs upstream until the prober gives up, then the cache answers
            assert r.status == 200
            assert (await r.json())["metadata"] == online["metadata"]
        assert not service.upstream.online
        sim.hang(False)
