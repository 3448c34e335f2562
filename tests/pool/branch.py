"""Test support: a branch of edgeproxies in front of one simulator, each a node of its own (node client certificate
system:node:edge-N from the cluster CA, peer listener on 127.0.0.N with a serving certificate of the cluster CA).

`Branch.start(pool=True)` runs them in this process (server.running); `Branch.spawn(...)` as `edgeproxy serve`
processes (for kill -9). Clients are tests/e2e/reflector.py informers, one per node and resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgeproxy import config, server, tls
from edgeproxy.pool import election

POOL = "branch-1"
LEASE = ("edgeproxy", election.lease_name(POOL))


async def until(cond: Callable[[], Any], timeout: float = 15.0, every: float = 0.05) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(every)


async def kubelets(sim: Any, alive: set[str] | list[str]) -> None:
    """The kubelets of the nodes in `alive`, renewing their node Leases every 0.2 s (the companion's pool controller
    names only nodes whose kubelet is alive)."""
    n = 0
    while True:
        n += 1
        for node in sorted(alive):
            sim.patch("leases", node, {"spec": {"renewTime": f"2026-01-01T00:00:{n % 60:02d}.{n:06d}Z"}},
                      namespace="kube-node-lease")
        await asyncio.sleep(0.2)  # the kubelets' renewal period in this test, not synchronisation


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Node:
    name: str
    ip: str
    dir: Path
    kubeconfig: Path
    settings: dict[str, Any]
    service: server.Service | None = None
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    stack: contextlib.AsyncExitStack | None = None

    @property
    def role(self) -> str:
        assert self.service is not None and self.service.pool is not None
        return self.service.pool.router.role.role.value


class Branch:
    def __init__(self, sim: Any, tmp: Path, n: int = 3) -> None:
        self.sim = sim
        self.tmp = tmp
        pki = sim.pki
        ca = tls.Issued(x509.load_pem_x509_certificate(pki.ca_cert.read_bytes()),
                        serialization.load_pem_private_key(pki.ca_key.read_bytes(), None))  # type: ignore[arg-type]
        self.ca_file = pki.ca_cert
        self.nodes: list[Node] = []
        for i in range(1, n + 1):
            name, ip = f"edge-{i}", f"127.0.0.{i}"
            d = tmp / name
            d.mkdir()
            tls.issue(ca, f"system:node:{name}", ("system:nodes",), client=True).write(d / "node.crt", d / "node.key")
            tls.issue(ca, name, sans=(ip,)).write(d / "serving.crt", d / "serving.key")
            kc = d / "kubeconfig"
            kc.write_text(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
                f"clusters: [{{name: s, cluster: {{server: \"{sim.url}\", "
                f"certificate-authority: \"{pki.ca_cert}\"}}}}]\n"
                f"users: [{{name: u, user: {{client-certificate: \"{d / 'node.crt'}\", "
                f"client-key: \"{d / 'node.key'}\"}}}}]\n"
                "contexts: [{name: c, context: {cluster: s, user: u}}]\n")
            settings = {"listen": f"127.0.0.1:{free_port('127.0.0.1')}", "ops_listen": "127.0.0.1:0",
                        "cache_dir": str(d / "cache"), "plain_as_node": True, "node_name": name,
                        "probe_interval": 0.3, "probe_timeout": 1.0, "offline_after": 2, "online_after": 1,
                        "connect_timeout": 1.0, "shutdown_timeout": 0.5, "cache_map_size": 64 << 20,
                        "pool_name": POOL, "pool_listen": f"{ip}:{free_port(ip)}",
                        "pool_cert_file": str(d / "serving.crt"),
                        "pool_key_file": str(d / "serving.key"), "pool_ca_file": str(pki.ca_cert),
                        "pool_lease_duration": 3, "pool_election": "lease"}
            self.nodes.append(Node(name, ip, d, kc, settings))

    async def start(self, *, pool: bool = True) -> None:
        for node in self.nodes:
            await self.start_node(node, pool=pool)

    async def start_node(self, node: Node, *, pool: bool = True) -> None:
        cfg = config.Config(kubeconfig=str(node.kubeconfig), pool=pool, **node.settings)
        node.stack = contextlib.AsyncExitStack()
        node.service = await node.stack.enter_async_context(server.running(cfg))
        node.url = node.service.url

    async def stop_node(self, node: Node) -> None:
        if node.stack is not None:
            stack, node.stack = node.stack, None
            await stack.aclose()

    async def stop(self) -> None:
        for node in self.nodes:
            await self.stop_node(node)
            self.kill(node)

    def leader(self) -> Node | None:
        lease = self.sim.store.get("leases", LEASE)
        holder = (lease.obj.get("spec") or {}).get("holderIdentity") if lease is not None else None
        return next((n for n in self.nodes if n.name == holder), None)

    # ---- as processes ----

    def spawn(self, node: Node) -> None:
        s = dict(node.settings)
        s["ops_listen"] = node.settings.setdefault("_ops", f"127.0.0.1:{free_port('127.0.0.1')}")
        s.pop("_ops", None)
        args = [sys.executable, "-m", "edgeproxy", "--log-level", "info", "serve", "--kubeconfig",
                str(node.kubeconfig), "--pool", "on"]
        for key, value in s.items():
            if key in ("cache_map_size",):
                continue
            if isinstance(value, bool):
                value = "on" if value else "off"
            args += [f"--{key.replace('_', '-')}", str(value)]
        log = open(node.dir / "edgeproxy.log", "ab")  # noqa: SIM115 - the process writes it while it runs
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
        node.proc = subprocess.Popen(args, stdout=log, stderr=log, env=env)
        log.close()
        node.url = f"http://{s['listen']}"

    def kill(self, node: Node) -> None:
        if node.proc is not None and node.proc.poll() is None:
            node.proc.send_signal(signal.SIGKILL)
            node.proc.wait(10)

    async def roles(self) -> dict[str, str]:
        """node name -> its pool role, as the running processes say (/debug/state)."""
        import aiohttp

        out = {}
        async with aiohttp.ClientSession() as session:
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    continue
                try:
                    async with session.get(f"http://{node.settings['_ops']}/debug/state") as r:
                        out[node.name] = (await r.json())["pool"]["role"]
                except (aiohttp.ClientError, KeyError, TypeError, ValueError):
                    out[node.name] = "?"
        return out

    async def wait_roles(self, leader: Node, timeout: float = 30.0) -> None:
        """Until `leader` leads and every other running node follows it."""
        async with asyncio.timeout(timeout):
            while True:
                roles = await self.roles()
                if all(r == ("leader" if name == leader.name else "follower") for name, r in roles.items()):
                    return
                await asyncio.sleep(0.1)

    async def wait_serving(self, node: Node, timeout: float = 20.0) -> None:
        host, port = node.settings["listen"].rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, w = await asyncio.open_connection(host, int(port))
                w.close()
                return
            except OSError as e:
                if time.monotonic() > deadline or (node.proc is not None and node.proc.poll() is not None):
                    log = (node.dir / "edgeproxy.log").read_text()
                    raise AssertionError(f"{node.name} is not serving: {log}") from e
                await asyncio.sleep(0.1)
