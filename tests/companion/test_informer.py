"""informer: list then watch; a watch cut mid-frame resumes, a compacted history (410) relists, and nothing is
lost or left behind either way."""

import asyncio

import pytest

from edgeproxy import tasks
from edgeproxy.companion import informer
from tests.e2e.edge import until

pytestmark = pytest.mark.timeout(60)


def pod(name):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "edge"},
            "spec": {"nodeName": "edge-1", "containers": [{"name": "c", "image": "x"}]}}


def names(inf):
    return {name for ns, name in inf.items if ns == "edge"}


def truth(sim):
    return {e.obj["metadata"]["name"] for e in sim.store.snapshot("pods").values()
            if e.obj["metadata"]["namespace"] == "edge"}


async def test_cut_and_compacted_watches_converge(sim, kube):
    changes = []
    inf = informer.Informer(kube, "/api/v1/pods", on_change=lambda old, new: changes.append((old, new)))
    running = tasks.spawn(inf.run(), name="t-informer")
    try:
        await asyncio.wait_for(inf.wait_synced(), 20)
        assert names(inf) == truth(sim)
        sim.cut_watches()
        sim.create("pods", pod("after-cut"), namespace="edge")
        await until(lambda: "after-cut" in names(inf), timeout=20)
        # the history is compacted and the watch broken: however it resumes (or relists after 410), it converges
        sim.compact()
        assert sim.delete("pods", "after-cut", namespace="edge", grace=0)
        sim.create("pods", pod("after-compaction"), namespace="edge")
        sim.cut_watches()
        await until(lambda: names(inf) == truth(sim) and "after-compaction" in names(inf), timeout=20)
        assert "after-cut" not in names(inf)
        assert any(old is not None and new is None and old["metadata"]["name"] == "after-cut"
                   for old, new in changes)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
