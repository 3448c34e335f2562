"""The companion's tests: a simulator and the companion's Kubernetes client (as admin) against it."""

import pytest

from edgeproxy import sim as sim_pkg
from edgeproxy import upstream
from edgeproxy.companion import kubeapi


@pytest.fixture
async def sim(tmp_path):
    # bookmarks every half second: a watch handler notices its client went away when it writes one
    s = sim_pkg.Simulator(pki_dir=tmp_path / "pki", bookmark_interval=0.5)
    await s.start()
    yield s
    await s.stop()


@pytest.fixture
async def kube(sim, tmp_path):
    k = kubeapi.Kube(upstream.load_kubeconfig(sim.kubeconfig(tmp_path / "admin.kubeconfig")))
    yield k
    await k.close()
