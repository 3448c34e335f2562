"""Benchmark: the WAN a branch of sharing edgeproxies costs at rest (issue 16's caveat: the election's Lease reads).

The simulator; the companion's real pool controller beside it (cloud side: its traffic is not the branch's); N
edgeproxies (`serve --pool on`, --pool-election companion, every other setting its default: probes every 5 s, pool
Lease of 15 s renewed by the companion every 5 s), in this process, each reaching the API server through one relay
that counts the bytes both ways: the branch's WAN. No clients: what is left is each node's own traffic at rest
(probes, HTTP/2 PINGs, and the pool Lease: read every 2 s before, watched now). Measured for `--duration` seconds
(default here 30; `--quick`: 3 nodes, 10 s) once every node knows its role, with the nodes' requests for the pool
Lease counted at the simulator. To compare with another version of edgeproxy, run this file from a checkout of it
(the relay and the set-up are here; `tests/pool/branch.py` is the branch). `python -m benchmarks poolrest`.
Reports figures, asserts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import time
from pathlib import Path
from typing import Any

from benchmarks import harness

SCENARIO = "poolrest"
ZONE = "topology.kubernetes.io/zone"
DEFAULTS = ("probe_interval", "probe_timeout", "offline_after", "online_after", "connect_timeout")


class Relay:
    """A TCP relay to (host, port) counting the bytes each way."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.down = self.up = 0
        self.server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _client(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            ur, uw = await asyncio.open_connection(*self.target)
        except OSError:
            w.close()
            return
        pipes = [asyncio.ensure_future(self._pipe(r, uw, "up")), asyncio.ensure_future(self._pipe(ur, w, "down"))]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes, return_exceptions=True)
        self._pipes.difference_update(pipes)

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter, way: str) -> None:
        try:
            while data := await r.read(65536):
                if way == "up":
                    self.up += len(data)
                else:
                    self.down += len(data)
                w.write(data)
                await w.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                w.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for t in list(self._pipes):
            t.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


async def _kubelets(sim: Any, names: list[str]) -> None:
    """The nodes' kubelets renewing their node Leases every 10 s (cloud side here: the companion's liveness input)."""
    n = 0
    while True:
        n += 1
        for name in names:
            sim.patch("leases", name, {"spec": {"renewTime": f"2026-01-01T00:{n // 60 % 60:02d}:{n % 60:02d}.000000Z"}},
                      namespace="kube-node-lease")
        await asyncio.sleep(10.0)  # the kubelets' renewal period


async def _measure(work: Path, nodes: int, seconds: float) -> list[dict[str, object]]:
    from edgeproxy import sim as sim_pkg
    from edgeproxy import tasks, upstream
    from edgeproxy.companion import kubeapi, poolctl
    from edgeproxy.sim import api as sim_api
    from tests.pool.branch import POOL, Branch

    counted = {"get": 0, "list": 0, "watch": 0}

    class Counting(sim_api.Api):
        async def _route(self, request: Any, encoding: Any, pretty: Any) -> Any:
            path = request.path.rstrip("/")
            if request.method == "GET" and "/namespaces/edgeproxy/leases" in path:
                if not path.endswith("/leases"):
                    counted["get"] += 1
                elif "fieldSelector" in request.query:
                    counted["watch" if request.query.get("watch") in ("true", "1") else "list"] += 1
            return await super()._route(request, encoding, pretty)

    sim = sim_pkg.Simulator(pki_dir=work / "pki")
    sim.api = Counting(sim)
    async with sim:
        names = [f"edge-{i}" for i in range(1, nodes + 1)]
        for name in names:
            for resource, ns in (("nodes", ""), ("leases", "kube-node-lease")):
                if sim.get(resource, name, ns) is None:
                    obj = copy.deepcopy(sim.get(resource, "edge-2", ns))
                    obj["metadata"] = {"name": name, "namespace": ns} if ns else {"name": name}
                    sim.create(resource, obj, ns)
            sim.patch("nodes", name, {"metadata": {"labels": {ZONE: POOL}}})
        host, _, sim_port = sim.url.removeprefix("https://").rpartition(":")
        relay = Relay(host, int(sim_port))
        port = await relay.start()
        kube = kubeapi.Kube(upstream.load_kubeconfig(sim.kubeconfig(work / "admin.kubeconfig")))
        ctrl = poolctl.PoolController(kube, namespace="edgeproxy", duration=15)
        running = [tasks.spawn(_kubelets(sim, names), name="bench-kubelets"),
                   tasks.spawn(ctrl.run(), name="bench-pools")]
        (work / "branch").mkdir()
        branch = Branch(sim, work / "branch", n=nodes)
        for node in branch.nodes:
            node.kubeconfig.write_text(node.kubeconfig.read_text().replace(sim.url, f"https://127.0.0.1:{port}"))
            for key in DEFAULTS:
                node.settings.pop(key)
            node.settings.update(pool_election="companion", pool_lease_duration=15)
        try:
            await branch.start()
            deadline = time.monotonic() + 120
            while sorted(n.role for n in branch.nodes) != ["follower"] * (nodes - 1) + ["leader"]:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"roles not settled: {[n.role for n in branch.nodes]}")
                await asyncio.sleep(0.2)
            await asyncio.sleep(5.0)  # a measurement's settling time, not synchronisation
            down, up, before, renewed = relay.down, relay.up, dict(counted), ctrl.writes["renewed"]
            t0 = time.monotonic()
            await asyncio.sleep(seconds)  # the measurement window
            elapsed = time.monotonic() - t0
            down, up = relay.down - down, relay.up - up
            requests = {k: counted[k] - before[k] for k in counted}
            renewals = ctrl.writes["renewed"] - renewed
        finally:
            await branch.stop()
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await kube.close()
            await relay.close()
    note = (f"{nodes} nodes, {elapsed:.0f} s; nodes' pool Lease requests: {requests['get']} GET, {requests['list']} "
            f"LIST, {requests['watch']} WATCH; {renewals} renewals by the companion")
    return [harness.row(SCENARIO, "WAN bytes/s down at rest, whole branch", down / elapsed, "B/s", note=note),
            harness.row(SCENARIO, "WAN bytes/s up at rest, whole branch", up / elapsed, "B/s"),
            harness.row(SCENARIO, "pool Lease GETs per node per minute", requests["get"] * 60 / elapsed / nodes,
                        "1/min")]


def run(opts: harness.Options) -> list[dict[str, object]]:
    work = opts.work or Path("/tmp")
    seconds = 10.0 if opts.quick else max(30.0, opts.duration)
    return asyncio.run(_measure(work, 3 if opts.quick else 15, seconds))


if __name__ == "__main__":
    raise SystemExit(harness.main(run))
