"""The simulator seeded with the fixture cluster answers every recorded request as the real API server did:
same status, same Content-Type, same body bytes (curl's User-Agent makes both pretty-print JSON)."""

from __future__ import annotations

import re

import pytest

from tests.sim.conftest import FIXTURES


def _rows() -> list[tuple[str, str, str, int]]:
    rows = []
    for line in (FIXTURES / "INDEX.md").read_text().splitlines():
        m = re.match(r"\| `([^`]+)\.body`<br>.*?\| `([^`]+)` \| `([^`]+)` \| (\d+) \|", line)
        if m and not m.group(1).startswith(("watch", "gone", "pods-edge1.table")):
            rows.append((m.group(1), m.group(2), m.group(3), int(m.group(4))))
    assert len(rows) >= 20
    return rows


def _content_type(name: str) -> str:
    headers = (FIXTURES / f"{name}.headers").read_text()
    return re.search(r"(?im)^content-type: (.*)$", headers).group(1).strip()


@pytest.mark.parametrize(("name", "path", "accept", "status"), _rows(), ids=[r[0] for r in _rows()])
async def test_recorded_request_gets_the_recorded_answer(admin, node, name, path, accept, status):
    client = node if name.startswith("node-edge1.") else admin
    async with client.get(path, headers={"Accept": accept, "User-Agent": "curl/8.5.0"}) as r:
        body = await r.read()
        assert r.status == status
        assert r.headers["Content-Type"] == _content_type(name)
    assert body == (FIXTURES / f"{name}.body").read_bytes()


async def test_compact_json_for_other_clients(admin):
    async with admin.get("/api/v1/namespaces/edge/configmaps/web-config", headers={"Accept": "application/json"}) as r:
        body = await r.read()
    assert body.endswith(b"}\n") and b"\n" not in body[:-1]
    assert body.startswith(b'{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"web-config"')


async def test_the_fixture_cluster_is_complete(sim):
    objs = sim.store.objects
    assert sorted(k[1] for k in objs["nodes"]) == ["edge-1", "edge-2"]
    pods = [e.obj for e in objs["pods"].values()]
    assert len(pods) == 30
    assert sum(p["spec"]["nodeName"] == "edge-2" for p in pods) == 15
    assert sum(p["status"]["phase"] == "Pending" for p in pods) == 2
    assert len(objs["services"]) == 6 and len(objs["endpointslices"]) == 5
    assert len([k for k in objs["configmaps"] if k[0] == "edge"]) == 10 and len(objs["secrets"]) == 3
    assert sorted(k for k in objs["leases"]) == [("kube-node-lease", "edge-1"), ("kube-node-lease", "edge-2")]
    assert sim.store.rv == 304
