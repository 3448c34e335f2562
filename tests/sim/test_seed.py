"""Seeding: synthetic objects by the ten thousand, served in protobuf and JSON (the benchmarks' scale)."""

from __future__ import annotations

from edgeproxy.kube import protobuf, schema


async def test_fifty_thousand_pods_and_a_ten_thousand_pod_protobuf_list(sim, admin):
    sim.seed(nodes=100, pods=50_000, services=500, endpointslices=500)
    assert len(sim.store.objects["pods"]) == 50_030 and len(sim.store.objects["nodes"]) == 102
    async with admin.get(
        "/api/v1/namespaces/edge/pods?limit=10000", headers={"Accept": "application/vnd.kubernetes.protobuf"}
    ) as r:
        body = await r.read()
    unknown = protobuf.unwrap(body)
    parts = protobuf.parse_list(unknown.raw)
    assert len(parts.items) == 10_000 and parts.continue_ and parts.remaining_item_count == 40_030
    pods = [schema.to_json("Pod", raw, typed=False) for raw in parts.items[-3:]]
    assert len({p["metadata"]["uid"] for p in pods}) == 3
    assert all(p["spec"]["nodeName"] and p["status"]["podIP"] for p in pods)
    async with admin.get("/api/v1/pods?fieldSelector=spec.nodeName%3Dload-node-00007") as r:
        doc = await r.json()
    assert len(doc["items"]) == 50_000 // 102 + (1 if 7 + 2 < 50_000 % 102 else 0)


async def test_seeded_objects_change_independently(sim):
    sim.seed(pods=3)
    sim.patch(
        "pods",
        "load-00001",
        {"spec": {"containers": [{"name": "api", "image": "x:2"}]}},
        namespace="edge",
        content_type="application/strategic-merge-patch+json",
    )
    a, b = sim.get("pods", "load-00000", "edge"), sim.get("pods", "load-00001", "edge")
    assert a["spec"]["containers"][0]["image"] != "x:2" and b["spec"]["containers"][0]["image"] == "x:2"


async def test_an_empty_cluster_seeded_from_the_templates(tmp_path):
    from edgeproxy import sim as sim_pkg

    s = sim_pkg.Simulator(fixture=False, pki_dir=tmp_path)
    assert not s.store.objects["pods"]
    s.seed(nodes=2, pods=10)
    assert len(s.store.objects["nodes"]) == 2 and len(s.store.objects["pods"]) == 10
    assert {e.obj["spec"]["nodeName"] for e in s.store.objects["pods"].values()} == {
        "load-node-00000",
        "load-node-00001",
    }
    assert ("", "edge") in s.store.objects["namespaces"]
