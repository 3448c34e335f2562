"""Offline autonomy end to end: real clients through edgeproxy, the simulator going down and coming back.

An online phase fills the cache (kubectl, the kubernetes Python client, an informer-style reflector); the simulator
goes down; clients restart and get the same lists, gets and open watches; writes get the documented answers; the
simulator comes back with changes made meanwhile; the reflectors converge without relisting, and no LIST reaches the
simulator after reconnection.
"""

import asyncio
import json

import pytest
from kubernetes import client as kclient
from kubernetes.client.rest import ApiException

pytest.importorskip("edgeproxy.server")  # the proxy's listener; until it lands these tests wait

from tests.e2e import edge as edge_mod
from tests.e2e.edge import NODE, until
from tests.e2e.reflector import Reflector

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

PODS = "/api/v1/pods"
ON_NODE = f"spec.nodeName={NODE}"
KUBELET_UA = "kubelet/v1.32.0 (linux/amd64) kubernetes/cd13ec4"


def python_client(url: str, user_agent: str = "OpenAPI-Generator/37.0.2/python") -> kclient.CoreV1Api:
    conf = kclient.Configuration()
    conf.host = url
    conf.retries = False
    api = kclient.ApiClient(conf)
    api.user_agent = user_agent
    return kclient.CoreV1Api(api)


def names(items) -> list[str]:
    return sorted(f"{i.metadata.namespace}/{i.metadata.name}" for i in items)


def sim_pods_on_node(sim) -> dict[str, str]:
    out = {}
    for (ns, name), entry in sim.store.objects["pods"].items():
        obj = entry.obj
        if (obj.get("spec") or {}).get("nodeName") == NODE:
            out[f"{ns}/{name}"] = obj["metadata"]["resourceVersion"]
    return out


@pytest.fixture
async def e(tmp_path):
    async with edge_mod.edge(tmp_path, bookmark_interval=1.0) as running:
        yield running


async def test_clients_keep_working_offline_and_converge_after(e):
    # ---------------------------------------------------------------- online: fill the cache
    informer = Reflector(e.url, PODS, field_selector=ON_NODE, user_agent=KUBELET_UA).start()
    assert await asyncio.to_thread(informer.synced.wait, 10)
    _, pods_json, _ = await e.kubectl("get", "pods", "-n", "edge", "-o", "json")
    _, node_json, _ = await e.kubectl("get", "node", NODE, "-o", "json")
    api = python_client(e.url)
    cms_online = await asyncio.to_thread(api.list_namespaced_config_map, "edge")
    cm_online = await asyncio.to_thread(api.read_namespaced_config_map, "web-config", "edge")
    kubelet = python_client(e.url, KUBELET_UA)
    await asyncio.to_thread(kubelet.read_node, NODE)  # kubelet GETs its Node every 10 s before its status PATCH
    await e.settle()
    # a watch that ends under a second with no event is a "very short watch" (back off, relist): let the
    # informer's upstream watch get going (the simulator's bookmarks come every second), as any real one has
    await until(lambda: informer.events, 10)
    held_before = informer.snapshot()
    lists_before = len(informer.lists)
    assert held_before and lists_before == 1

    web = "web-ec1d301e21-146d3"  # a pod of edge-1 (kubelet asks tokens bound to its own pods)
    web_uid = e.sim.get("pods", web, "edge")["metadata"]["uid"]

    # ---------------------------------------------------------------- the simulator goes down
    await e.sim.down()
    await e.wait_state(online=False)

    # kubectl (a new process each time: discovery, then the list) gets the same answers
    _, pods_off, _ = await e.kubectl("get", "pods", "-n", "edge", "-o", "json")
    assert [p["metadata"]["name"] for p in json.loads(pods_off)["items"]] == \
        [p["metadata"]["name"] for p in json.loads(pods_json)["items"]]
    _, table, _ = await e.kubectl("get", "pods", "-n", "edge")  # asks for a Table: printed from the plain list
    assert all(p["metadata"]["name"] in table for p in json.loads(pods_json)["items"])
    _, node_off, _ = await e.kubectl("get", "node", NODE, "-o", "json")
    assert json.loads(node_off)["metadata"]["uid"] == json.loads(node_json)["metadata"]["uid"]

    # the Python client, restarted
    api = python_client(e.url)
    assert names((await asyncio.to_thread(api.list_namespaced_config_map, "edge")).items) == names(cms_online.items)
    cm = await asyncio.to_thread(api.read_namespaced_config_map, "web-config", "edge")
    assert cm.data == cm_online.data
    with pytest.raises(ApiException) as not_cached:
        await asyncio.to_thread(api.read_namespaced_secret, "db-credentials", "edge")
    assert not_cached.value.status == 503  # not cached: 503, never 404
    with pytest.raises(ApiException) as absent:
        await asyncio.to_thread(api.read_namespaced_config_map, "no-such-config", "edge")
    assert absent.value.status == 404  # the complete list of the namespace's configmaps proves it does not exist

    # the open informer re-watched locally (its upstream watch ended) without relisting
    await until(lambda: informer.watches >= 2, 10)
    assert len(informer.lists) == lists_before, informer.history
    assert informer.snapshot() == held_before
    # a restarted informer lists from the cache and holds a watch
    restarted = Reflector(e.url, PODS, field_selector=ON_NODE, user_agent=KUBELET_UA).start()
    assert await asyncio.to_thread(restarted.synced.wait, 10)
    assert restarted.snapshot() == held_before
    await until(lambda: any(t == "BOOKMARK" for t, _, _ in restarted.events), 10)

    # writes get the documented answers
    patched = await asyncio.to_thread(
        kubelet.patch_node_status, NODE, {"status": {"conditions": [{"type": "Ready",
                                                                      "lastHeartbeatTime": "2026-11-24T17:00:00Z"}]}})
    assert next(c for c in patched.status.conditions if c.type == "Ready").last_heartbeat_time.year == 2026
    with pytest.raises(ApiException) as exists:
        body = kclient.V1Node(metadata=kclient.V1ObjectMeta(name=NODE))
        await asyncio.to_thread(kubelet.create_node, body)
    assert exists.value.status == 409 and json.loads(exists.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as refused:
        await asyncio.to_thread(kubelet.create_namespaced_config_map, "edge",
                                kclient.V1ConfigMap(metadata=kclient.V1ObjectMeta(name="new")))
    assert refused.value.status == 503 and "retry-after" not in {k.lower() for k in refused.value.headers}
    event = kclient.CoreV1Event(metadata=kclient.V1ObjectMeta(name="edge-1.offline", namespace="default"),
                                involved_object=kclient.V1ObjectReference(kind="Node", name=NODE), reason="Test")
    created = await asyncio.to_thread(kubelet.create_namespaced_event, "default", event)
    assert created.reason == "Test"
    token = await asyncio.to_thread(
        kubelet.create_namespaced_service_account_token, "default", "edge",
        kclient.AuthenticationV1TokenRequest(spec=kclient.V1TokenRequestSpec(
            audiences=[], expiration_seconds=3600,
            bound_object_ref=kclient.V1BoundObjectReference(kind="Pod", api_version="v1", name=web, uid=web_uid))))
    assert token.status.token.count(".") == 2

    # ---------------------------------------------------------------- changes meanwhile, then the link returns
    template = next(iter(e.sim.store.objects["pods"].values()))
    late = json.loads(json.dumps(template.obj))
    late["metadata"] = {"name": "late-1", "namespace": "edge", "labels": {"app": "late"}}
    late["spec"]["nodeName"] = NODE
    late.pop("status", None)
    e.sim.create("pods", late, namespace="edge")
    gone = sorted(k for k in held_before if k.startswith("edge/"))[0]
    e.sim.delete("pods", gone.split("/")[1], namespace="edge", grace=0)
    reconnected = asyncio.get_running_loop().time()
    await e.sim.up()
    await e.wait_state(online=True)

    truth = sim_pods_on_node(e.sim)
    await until(lambda: set(informer.snapshot()) == set(truth), 15)
    await until(lambda: set(restarted.snapshot()) == set(truth), 15)
    assert "edge/late-1" in informer.snapshot() and gone not in informer.snapshot()
    # converged by watching from where they were: no relist, and no LIST reached the simulator since
    assert len(informer.lists) == lists_before and len(restarted.lists) == 1
    upstream_lists = [x for x in e.recorder.lists if x[0] >= reconnected]
    assert upstream_lists == []
    informer.stop()
    restarted.stop()


async def test_a_proxy_restarted_with_the_upstream_down_serves_its_cache(e):
    informer = Reflector(e.url, PODS, field_selector=ON_NODE, user_agent=KUBELET_UA).start()
    assert await asyncio.to_thread(informer.synced.wait, 10)
    held = informer.snapshot()
    informer.stop()
    await e.settle()
    await e.sim.down()
    await e.stop_proxy()
    await e.start_proxy()  # a reboot while offline; benchmarks/offline.py times start to first served list
    restarted = Reflector(e.url, PODS, field_selector=ON_NODE, user_agent=KUBELET_UA).start()
    assert await asyncio.to_thread(restarted.synced.wait, 10)
    assert restarted.snapshot() == held
    assert restarted.lists == ["0"] and restarted.list_errors == []
    restarted.stop()


async def test_a_big_offline_list_is_served_whole_again_and_again_on_one_connection(e):
    """A list past memory.TRIM_AFTER (1,500 pods, ~10 MB of JSON) is sent from the handler without aiohttp keeping
    its body after the answer (issue 15); what the client gets is still the list it got online, each time."""
    import aiohttp

    from edgeproxy import memory

    e.sim.seed(pods=1500, namespace="big")
    url = f"{e.url}/api/v1/namespaces/big/pods"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as s:  # one kept-alive connection
        async with s.get(url, headers={"Accept": "application/json", "User-Agent": KUBELET_UA}) as r:
            online = await r.read()
        assert r.status == 200 and len(online) >= memory.TRIM_AFTER
        await e.settle()
        await e.sim.down()
        await e.wait_state(False)
        for _ in range(2):
            async with s.get(url, headers={"Accept": "application/json", "User-Agent": KUBELET_UA}) as r:
                assert r.status == 200 and r.headers.get("X-Edgeproxy-Source") == "cache"
                assert int(r.headers["Content-Length"]) == len(online)
                assert await r.read() == online
