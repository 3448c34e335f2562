"""The filter stage against the simulator: kube-proxy's EndpointSlices through edgeproxy, online, on the watch, and
offline from the cache; other clients and untouched objects get the API server's bytes."""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgeproxy import tls
from edgeproxy.kube import jsonwire, protobuf
from tests.e2e.edge import Edge, edge, until

pytestmark = pytest.mark.timeout(60)

KUBE_PROXY = "kube-proxy/v1.32.0 (linux/amd64) kubernetes/abcdef"
SLICES = "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"
PB = "application/vnd.kubernetes.protobuf"


def _slice(name: str, service: str, endpoints: list[tuple[str, str, str]], opted_in: bool) -> dict[str, Any]:
    labels = {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "test"}
    if opted_in:
        labels["edgeproxy.io/topology"] = "pool"
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": "shop", "labels": labels}, "addressType": "IPv4",
            "endpoints": [{"addresses": [ip], "conditions": {"ready": True}, "nodeName": node, "zone": zone}
                          for ip, node, zone in endpoints],
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}]}


TWO_POOLS = [("10.0.1.1", "edge-1", "branch-a"), ("10.0.1.2", "edge-3", "branch-a"),
             ("10.0.2.1", "edge-2", "branch-b"), ("10.0.2.2", "edge-4", "branch-b")]
FAR_ONLY = [("10.0.2.5", "edge-2", "branch-b"), ("10.0.2.6", "edge-4", "branch-b")]


def _seed(e: Edge) -> None:
    e.sim.patch("nodes", "edge-1", {"metadata": {"labels": {"topology.kubernetes.io/zone": "branch-a"}}})
    e.sim.create("namespaces", {"metadata": {"name": "shop"}})
    e.sim.create("endpointslices", _slice("opted-x1", "opted", TWO_POOLS, True), "shop")
    e.sim.create("endpointslices", _slice("plain-x1", "plain", TWO_POOLS, False), "shop")
    e.sim.create("endpointslices", _slice("far-x1", "far", FAR_ONLY, True), "shop")


async def _facts_read(e: Edge) -> None:
    """Until the proxy has read what its filters depend on (its Node's pool, the `kubernetes` Service): a filtered
    request waits 3 s at most for that read and is then served unfiltered, which a loaded machine can exceed."""
    await until(lambda: (e.service.state()["filters"]["facts"] or {}).get("fetched_at") is not None, 30)


async def _get(session: aiohttp.ClientSession, url: str, accept: str = "application/json",
               ua: str = KUBE_PROXY) -> tuple[int, bytes, dict[str, str]]:
    async with session.get(url, headers={"Accept": accept, "User-Agent": ua}) as r:
        return r.status, await r.read(), dict(r.headers)


def _addresses(body: bytes) -> dict[str, list[str]]:
    doc = json.loads(body)
    return {i["metadata"]["name"]: [a for ep in (i["endpoints"] or []) for a in ep["addresses"]]
            for i in doc["items"]}


async def _direct(e: Edge, path: str, accept: str) -> bytes:
    async with aiohttp.ClientSession() as s, s.get(e.sim.url + path, ssl=e.sim.client_ssl("admin"),
                                                   headers={"Accept": accept, "User-Agent": KUBE_PROXY}) as r:
        assert r.status == 200
        return await r.read()


@pytest.fixture
async def branch(tmp_path: Path):
    async with edge(tmp_path, settings={"node_name": "edge-1"}) as e:
        _seed(e)
        await _facts_read(e)
        yield e


async def test_kube_proxy_sees_its_pool_only_for_opted_in_services_and_other_bytes_are_untouched(branch) -> None:
    e = branch
    async with aiohttp.ClientSession() as s:
        status, body, _headers = await _get(s, e.url + SLICES)
        assert status == 200
        got = _addresses(body)
        assert got == {"far-x1": ["10.0.2.5", "10.0.2.6"],  # no local endpoint: all of them
                       "opted-x1": ["10.0.1.1", "10.0.1.2"],  # its pool only
                       "plain-x1": ["10.0.1.1", "10.0.1.2", "10.0.2.1", "10.0.2.2"]}  # not opted in: all
        for accept in ("application/json", PB):
            _, via, _ = await _get(s, e.url + SLICES, accept)
            direct = await _direct(e, SLICES, accept)
            if accept == PB:
                items_via = protobuf.parse_list(protobuf.unwrap(via).raw).items
                items_direct = protobuf.parse_list(protobuf.unwrap(direct).raw).items
                names = [protobuf.object_meta(i).name for i in items_direct]
            else:
                items_via, items_direct = jsonwire.parse_list(via).items, jsonwire.parse_list(direct).items
                names = [jsonwire.object_meta(i).name for i in items_direct]
            for name, a, b in zip(names, items_via, items_direct, strict=True):
                assert (bytes(a) == bytes(b)) == (name != "opted-x1"), name
            assert protobuf.unwrap(via).kind == "EndpointSliceList" if accept == PB else True
        # kubelet (not a filtered client) gets the API server's answer as it is
        _, as_kubelet, _ = await _get(s, e.url + SLICES, ua="kubelet/v1.32.0 (linux/amd64) kubernetes/abc")
        assert as_kubelet == await _direct(e, SLICES, "application/json")
        # a single object too
        _, one, _ = await _get(s, e.url + SLICES + "/opted-x1")
        assert [a for ep in json.loads(one)["endpoints"] for a in ep["addresses"]] == ["10.0.1.1", "10.0.1.2"]


async def test_watch_events_arrive_filtered_and_offline_answers_equal_the_online_ones(branch) -> None:
    e = branch
    async with aiohttp.ClientSession() as s:
        _, online_json, _ = await _get(s, e.url + SLICES)
        _, online_pb, _ = await _get(s, e.url + SLICES, PB)
        rv = json.loads(online_json)["metadata"]["resourceVersion"]
        seen: list[dict[str, Any]] = []
        async with s.get(e.url + SLICES + f"?watch=true&resourceVersion={rv}",
                         headers={"Accept": "application/json", "User-Agent": KUBE_PROXY}) as r:
            assert r.status == 200
            grown = [*TWO_POOLS, ("10.0.1.3", "edge-5", "branch-a"), ("10.0.2.3", "edge-6", "branch-b")]
            e.sim.patch("endpointslices", "opted-x1", {"endpoints": _slice("x", "x", grown, True)["endpoints"]},
                        namespace="shop")
            line = await r.content.readline()
            seen.append(json.loads(line))
        assert seen[0]["type"] == "MODIFIED"
        assert [a for ep in seen[0]["object"]["endpoints"] for a in ep["addresses"]] == \
            ["10.0.1.1", "10.0.1.2", "10.0.1.3"]
        _, online_json, _ = await _get(s, e.url + SLICES)
        _, online_pb, _ = await _get(s, e.url + SLICES, PB)
        await e.settle()
        await e.sim.down()
        await e.wait_state(online=False)
        status, offline_json, headers = await _get(s, e.url + SLICES)
        assert status == 200 and headers.get("X-Edgeproxy-Source") == "cache"
        assert offline_json == online_json
        status, offline_pb, _ = await _get(s, e.url + SLICES, PB)
        assert status == 200 and offline_pb == online_pb
    state = e.service.state()["filters"]
    touched = {v["view"]: v["touched"] for v in state["views"]}
    assert any(t.get("servicetopology") for t in touched.values())
    assert state["facts"]["pool"] == "branch-a"


def _kubernetes_slice() -> dict[str, Any]:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.0.2.10"], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "protocol": "TCP", "port": 6443}]}


async def test_in_cluster_redirect_points_kube_proxy_at_the_listener_and_wants_tokens(tmp_path: Path) -> None:
    # the kubernetes Service's ClusterIP in the simulator is 10.96.0.1, as in a kubeadm cluster
    cert, key, ca = tls.own_serving_cert(tmp_path / "pki-serving", ["kubernetes.default.svc", "10.96.0.1",
                                                                    "127.0.0.1"])
    settings = {"node_name": "edge-1", "in_cluster_address": "127.0.0.1:0", "tls_cert_file": str(cert),
                "tls_key_file": str(key)}
    async with edge(tmp_path, settings=settings,
                    tokens={"pod-token": ("system:serviceaccount:shop:app", ("system:serviceaccounts",))}) as e:
        e.sim.create("endpointslices", _kubernetes_slice(), "default")
        await _facts_read(e)
        listener = e.service.in_cluster_url
        assert listener is not None
        port = int(listener.rsplit(":", 1)[1])
        path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
        async with aiohttp.ClientSession() as s:
            _, body, _ = await _get(s, e.url + path)
            item = json.loads(body)["items"][0]
            assert item["endpoints"] == [{"addresses": ["127.0.0.1"], "conditions": {"ready": True}}]
            assert item["ports"] == [{"name": "https", "protocol": "TCP", "port": port}]
            _, body, _ = await _get(s, e.url + path, ua="kubelet/v1.32.0")
            assert json.loads(body)["items"][0]["endpoints"][0]["addresses"] == ["192.0.2.10"]
            ctx = ssl.create_default_context(cafile=str(ca))
            async with s.get(listener + "/api/v1/namespaces/shop/pods", ssl=ctx) as r:
                assert r.status == 401  # no token: never upstream as the node
            async with s.get(listener.replace("127.0.0.1", "localhost") + "/version", ssl=False,
                             headers={"Authorization": "Bearer pod-token"}) as r:
                assert r.status == 200
        await until(lambda: bool(e.service.state()["filters"]["views"]))
        views = e.service.state()["filters"]["views"]
        assert any(v["touched"].get("inclusterredirect") for v in views)


async def test_a_changed_pool_ends_the_watch_with_410_and_the_relist_is_recorded(branch) -> None:
    e = branch
    async with aiohttp.ClientSession() as s:
        _, body, _ = await _get(s, e.url + SLICES)
        assert _addresses(body)["opted-x1"] == ["10.0.1.1", "10.0.1.2"]
        rv = json.loads(body)["metadata"]["resourceVersion"]
        async with s.get(e.url + SLICES + f"?watch=true&resourceVersion={rv}",
                         headers={"Accept": "application/json", "User-Agent": KUBE_PROXY}) as r:
            e.sim.patch("nodes", "edge-1", {"metadata": {"labels": {"topology.kubernetes.io/zone": "branch-b"}}})
            await e.service.filters.facts.refresh()  # what the 60 s refresh does
            event = json.loads(await r.content.readline())
            assert event["type"] == "ERROR" and event["object"]["code"] == 410
            assert await r.content.read() == b""  # and the watch ends
        # the client relists and gets the new pool's endpoints (and the one on this very node, whatever its zone)
        _, body, _ = await _get(s, e.url + SLICES)
        assert _addresses(body)["opted-x1"] == ["10.0.1.1", "10.0.2.1", "10.0.2.2"]
        await e.settle()
        await e.sim.down()
        await e.wait_state(online=False)
        status, offline, _ = await _get(s, e.url + SLICES)
        assert status == 200 and offline == body


async def test_settings_changed_across_a_restart_never_serve_the_old_filtering_offline(tmp_path: Path) -> None:
    # (no cache-health reports on the Node: the cluster's resourceVersion must not move by itself here)
    async with edge(tmp_path, settings={"node_name": "edge-1", "service_topology": False,
                                        "health_report_interval": 0}) as e:
        _seed(e)
        async with aiohttp.ClientSession() as s:
            _, unfiltered, _ = await _get(s, e.url + SLICES)
            assert len(_addresses(unfiltered)["opted-x1"]) == 4
            await e.settle()
            await e.stop_proxy()
            e.settings["service_topology"] = True
            await e.start_proxy()
            await _facts_read(e)
            # kube-proxy relists at the resourceVersion it has: the same list, filtered now, must be what is cached
            _, filtered, _ = await _get(s, e.url + SLICES)
            assert _addresses(filtered)["opted-x1"] == ["10.0.1.1", "10.0.1.2"]
            assert json.loads(filtered)["metadata"] == json.loads(unfiltered)["metadata"]
            await e.settle()
            await e.sim.down()
            await e.wait_state(online=False)
            status, offline, _ = await _get(s, e.url + SLICES)
            assert status == 200 and offline == filtered


async def test_the_redirect_is_withheld_while_the_certificate_misses_the_cluster_ip(tmp_path: Path) -> None:
    cert, key, _ = tls.own_serving_cert(tmp_path / "pki-serving", ["kubernetes.default.svc", "127.0.0.1"])
    settings = {"node_name": "edge-1", "in_cluster_address": "127.0.0.1:0", "tls_cert_file": str(cert),
                "tls_key_file": str(key)}
    async with edge(tmp_path, settings=settings) as e:
        e.sim.create("endpointslices", _kubernetes_slice(), "default")
        path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
        async with aiohttp.ClientSession() as s:
            _, body, _ = await _get(s, e.url + path)
        assert body == await _direct(e, path, "application/json")  # pods keep going straight to the API server
        # why: known once the `kubernetes` Service was read (the first filtered request waits 3 s at most for that)
        await until(lambda: "ClusterIP is not known" not in (e.service.state()["filters"]["redirect_withheld"] or ""),
                    30)
        state = e.service.state()["filters"]
        assert state["redirect_applied"] is None
        assert "not valid for the kubernetes Service's ClusterIP 10.96.0.1" in state["redirect_withheld"]


async def test_turning_the_redirect_on_makes_kube_proxy_relist_instead_of_resuming(tmp_path: Path) -> None:
    cert, key, _ = tls.own_serving_cert(tmp_path / "pki-serving", ["kubernetes.default.svc", "10.96.0.1"])
    path = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices"
    async with edge(tmp_path, settings={"node_name": "edge-1", "health_report_interval": 0}) as e:
        e.sim.create("endpointslices", _kubernetes_slice(), "default")
        async with aiohttp.ClientSession() as s:
            _, body, _ = await _get(s, e.url + path)
            assert json.loads(body)["items"][0]["endpoints"][0]["addresses"] == ["192.0.2.10"]
            rv = json.loads(body)["metadata"]["resourceVersion"]
            await e.settle()
            await e.stop_proxy()
            e.settings.update(in_cluster_address="127.0.0.1:0", in_cluster_cert_file=str(cert),
                              in_cluster_key_file=str(key))
            await e.start_proxy()
            await _facts_read(e)
            # kube-proxy resumes its watch where it was: it is told to relist, and the list is redirected
            async with s.get(e.url + path + f"?watch=true&resourceVersion={rv}",
                             headers={"Accept": "application/json", "User-Agent": KUBE_PROXY}) as r:
                event = json.loads(await r.content.readline())
            assert event["type"] == "ERROR" and event["object"]["code"] == 410
            _, body, _ = await _get(s, e.url + path)
            assert json.loads(body)["items"][0]["endpoints"][0]["addresses"] == ["127.0.0.1"]
            rv = json.loads(body)["metadata"]["resourceVersion"]
            # once relisted, its watches resume as usual
            async with s.get(e.url + path + f"?watch=true&resourceVersion={rv}",
                             headers={"Accept": "application/json", "User-Agent": KUBE_PROXY}) as r:
                e.sim.patch("endpointslices", "kubernetes", {"metadata": {"labels": {"touched": "yes"}}},
                            namespace="default")
                event = json.loads(await r.content.readline())
            assert event["type"] == "MODIFIED"
            assert event["object"]["endpoints"][0]["addresses"] == ["127.0.0.1"]
