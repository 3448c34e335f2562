"""reporter (edge side): `edgeproxy serve` keeps its Node's cache-health annotation current while online."""

import aiohttp
import pytest

from edgeproxy.companion import health
from tests.e2e.edge import edge, until

pytestmark = pytest.mark.timeout(60)


def reported(sim):
    text = ((sim.get("nodes", "edge-1")["metadata"].get("annotations") or {}).get(health.ANNOTATION))
    return None if text is None else health.decode(text)


async def test_the_node_is_reported_healthy_once_kubelets_pods_are_cached(tmp_path):
    async with edge(tmp_path, settings={"health_check_interval": 0.1, "health_report_interval": 60.0},
                    bookmark_interval=0.5) as e:
        await until(lambda: reported(e.sim) is not None, timeout=20)
        first = reported(e.sim)
        assert not first.healthy and "not cached complete" in first.reason  # kubelet has not listed its pods yet
        kubelet = aiohttp.ClientSession(headers={"User-Agent": "kubelet/v1.37.2 (linux/amd64)"})
        async with kubelet, kubelet.get(e.url + "/api/v1/pods", params={"fieldSelector": "spec.nodeName=edge-1"}) as r:
            assert r.status == 200
            await r.read()
        await until(lambda: reported(e.sim).healthy, timeout=20)

