"""End-to-end fixtures: the simulator over TLS with client certificates, edgeproxy in front of it, real clients.

`cluster` gives both ways in: `direct_kubeconfig` (TLS to the simulator with the admin client certificate) and
`proxy_kubeconfig` (plain HTTP to edgeproxy on 127.0.0.1, no credentials, the proxy run with --plain-as-node on; it goes
upstream with the admin certificate). kubectl is the one installed next to this Python (never another on the machine),
and every call passes --kubeconfig (never ~/.kube/config).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgeproxy import config, server
from edgeproxy.sim.simulator import Simulator

KUBECTL = Path(sys.executable).with_name("kubectl")


TOKENS = {"pod-sa-token": ("system:serviceaccount:edge:default", ("system:serviceaccounts",))}


@dataclasses.dataclass
class Cluster:
    sim: Simulator
    service: server.Service
    direct_kubeconfig: Path
    proxy_kubeconfig: Path

    @property
    def sim_url(self) -> str:
        return self.sim.url

    @property
    def proxy_url(self) -> str:
        return self.service.url

    def client_ssl(self) -> ssl.SSLContext:
        return self.sim.client_ssl("admin")

    async def kubectl(self, *args: str, via: str = "proxy", timeout: float = 60) -> str:
        kubeconfig = self.proxy_kubeconfig if via == "proxy" else self.direct_kubeconfig
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL), "--kubeconfig", str(kubeconfig), *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=kubectl_env(),
        )
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
        return out.decode()


def kubectl_env() -> dict[str, str]:
    # No HOME: no user kubeconfig, and kubectl's discovery cache stays out of the test.
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"}


def proxy_kubeconfig(path: Path, server_url: str) -> Path:
    """What kubelet gets: http://127.0.0.1:PORT and no credentials (the proxy goes upstream as the node)."""
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: e2e\n"
        f'clusters: [{{name: c, cluster: {{server: "{server_url}"}}}}]\n'
        "users: [{name: u, user: {}}]\n"
        "contexts: [{name: e2e, context: {cluster: c, user: u}}]\n"
    )
    return path


@contextlib.asynccontextmanager
async def proxy_for(kubeconfig: Path, tmp_path: Path, **overrides: object) -> AsyncIterator[server.Service]:
    settings: dict[str, object] = {"listen": "127.0.0.1:0", "ops_listen": "127.0.0.1:0", "probe_interval": 30,
                                   "cache_dir": str(tmp_path / "cache"), "plain_as_node": True, **overrides}
    cfg = config.Config(kubeconfig=str(kubeconfig), **settings)  # type: ignore[arg-type]
    async with server.running(cfg) as service:
        yield service


@pytest.fixture
async def sim(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki", tokens=dict(TOKENS)) as s:
        yield s


@pytest.fixture
async def cluster(sim, tmp_path):
    direct = sim.kubeconfig(tmp_path / "direct.kubeconfig", "admin")
    async with proxy_for(direct, tmp_path) as service:
        yield Cluster(sim, service, direct, proxy_kubeconfig(tmp_path / "proxy.kubeconfig", service.url))
