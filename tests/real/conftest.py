"""Fixtures of the real cluster tier (see tests/real/README.md).

    real_bin       session: the directory of the built binaries (runs tests/real/build.sh if one is missing)
    real_cluster   session: a running etcd + kube-apiserver (cluster.Cluster), no controller-manager
    edge_host      factory, function scope: edge_host("edge-7", watchlist=True, ...) -> a started EdgeHost,
                   stopped (processes, namespace, WAN relay) at the end of the test that made it

Module-scoped edge hosts are made with `edge.EdgeHost(...)` in a module's own fixture (see test_offline.py).
Every test here is marked `real` and needs root (network namespaces, iptables inside them).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import Cluster
from .edge import EdgeHost

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="the real cluster tier needs root (network namespaces)")
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.real)
            if os.geteuid() != 0:
                item.add_marker(skip)


NEEDED = ("etcd", "kube-apiserver", "kube-controller-manager", "kubemark", "coredns")


def bin_dir() -> Path:
    """Where build.sh puts the binaries (the same defaults and variables)."""
    version = os.environ.get("EDGEPROXY_K8S_VERSION", "v1.37.2")
    cache = os.environ.get("EDGEPROXY_REAL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edgeproxy", "realk8s")
    return Path(cache) / version / "bin"


def build() -> Path:
    """The binary directory: `make test` ran build.sh already; run it here only when a binary is missing (pytest run
    on its own on a fresh machine)."""
    d = bin_dir()
    if all((d / n).exists() for n in NEEDED):
        return d
    r = subprocess.run(["bash", str(HERE / "build.sh")], capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"tests/real/build.sh failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def real_bin() -> Path:
    return build()


@pytest.fixture(scope="session")
def real_cluster(real_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("real-cluster"), real_bin) as c:
        yield c


@pytest.fixture
def edge_host(real_cluster: Cluster, tmp_path: Path) -> Iterator[Callable[..., EdgeHost]]:
    made: list[EdgeHost] = []

    def make(node: str, **kw: Any) -> EdgeHost:
        e = EdgeHost(real_cluster, tmp_path / node, node, **kw)
        made.append(e)
        e.start()
        return e

    yield make
    for e in made:
        e.stop()
