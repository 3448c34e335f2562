"""What the proxy holds in memory: RSS anonymous and file-backed, idle, after online 10k-pod lists, after offline ones.

    python -m benchmarks memory [--quick]

The simulator with 10k pods (1k with --quick) and `edgeproxy serve` with a cache, as benchmarks.offline runs them.
Phases: idle (after /version); after LISTs of every pod online, in protobuf and JSON, each query a new view (so each
is forwarded, parsed and written), three per encoding, one after the other is recorded (relists, not a burst: a burst
past --record-queue is forwarded unrecorded); after the link drops and the same LISTs are answered from the
cache. RSS is read from /proc/PID/status once the proxy is idle again (its CPU time stopped moving): RssAnon (heap:
Python objects, buffers, malloc's free lists) and RssFile (mapped files: the LMDB pages read, the interpreter's own
libraries), apart; VmHWM is the peak. Reports figures, asserts nothing.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import harness, offline

SCENARIO = "memory"
LISTS = 3  # per encoding and phase, each its own view


def status(pid: int) -> dict[str, int]:
    """The memory lines of /proc/PID/status, in bytes."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _idle(pid: int, bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    last = harness.cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = harness.cpu_seconds(pid)
        if now - last < 0.01:
            return
        last = now


async def _lists(s: aiohttp.ClientSession, url: str, tag: str, pid: int) -> None:
    for enc, accept in offline.ACCEPT.items():
        for i in range(LISTS):
            await asyncio.to_thread(_idle, pid)  # each list recorded before the next: a relist, not a burst
            path = f"/api/v1/namespaces/{offline.NAMESPACE}/pods?labelSelector=mem{i}%21%3Dx"
            async with s.get(url + path, headers={"Accept": accept, "User-Agent": offline.UA}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"{tag} LIST {enc}: {r.status} {(await r.read())[:300]!r}")


def _rows(phase: str, st: dict[str, int], pods: int) -> list[dict[str, Any]]:
    mb = 1 << 20
    return [harness.row(SCENARIO, f"RSS anon, {phase}", round(st["RssAnon"] / mb, 1), "MiB", pods=pods),
            harness.row(SCENARIO, f"RSS file-backed, {phase}", round(st["RssFile"] / mb, 1), "MiB", pods=pods),
            harness.row(SCENARIO, f"peak RSS (VmHWM), {phase}", round(st["VmHWM"] / mb, 1), "MiB", pods=pods)]


async def _run(pods: int, root: Path) -> list[dict[str, Any]]:
    sim = offline.Sim(pods, root)
    # No response-head deadline: on a busy machine the simulator's first 10k-pod answer can take longer than 10 s.
    proxy = offline.Proxy(sim.kubeconfig, root / "cache", (*offline.TOLERANT, "--upstream-header-timeout", "0"))
    rows: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            await offline._until(s, proxy.url + "/version", "application/json", None, time.perf_counter() + 30)
            _idle(proxy.proc.pid)
            rows += _rows("idle", status(proxy.proc.pid), pods)
            await _lists(s, proxy.url, "online", proxy.proc.pid)
            await asyncio.to_thread(_idle, proxy.proc.pid)
            rows += _rows(f"after online {pods // 1000}k-pod LISTs", status(proxy.proc.pid), pods)
            await sim.fault(s, down=True)
            await offline._until(s, proxy.url + "/version", "application/json", "cache", time.perf_counter() + 60)
            await _lists(s, proxy.url, "offline", proxy.proc.pid)
            await asyncio.to_thread(_idle, proxy.proc.pid)
            rows += _rows(f"after offline {pods // 1000}k-pod LISTs", status(proxy.proc.pid), pods)
    finally:
        proxy.stop()
        sim.stop()
    return rows


def run(opts: harness.Options) -> list[dict[str, Any]]:
    pods = 1000 if opts.quick else 10_000
    root = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-memory-", dir=opts.work))
    return asyncio.run(_run(pods, root))


if __name__ == "__main__":
    sys.exit(harness.main(run))
