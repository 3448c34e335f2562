"""Benchmark: offline answers. LIST of 1k/10k/50k pods from the cache (protobuf and JSON) side by side with the same
list from the simulator online (direct, and through the proxy); proxy start with the upstream down to its first
served list; upstream death to the first locally served answer.

Three processes, as in production: the simulator (a child of this module, `--sim-child`), `edgeproxy serve` (a child,
uvloop), and this process as the client (aiohttp, whole body read). Pods are the simulator's clones of the recorded
fixture pod (about 4.3 KB protobuf / 6.5 KB JSON each, managedFields included: heavier than the 1.5 / 5.6 KB of the
aim). Run alone: `python -m benchmarks.offline [--quick] [--sizes 1000,10000]`. Reports figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks import harness

SCENARIO = "offline"
NAMESPACE = "bench"
PB = "application/vnd.kubernetes.protobuf"
ACCEPT = {"protobuf": f"{PB}, */*", "json": "application/json"}
UA = "kubelet/v1.32.0 (linux/amd64) kubernetes/cd13ec4"


def _row(metric: str, value: float, unit: str, **extra: Any) -> dict:
    return {"scenario": SCENARIO, "metric": metric, "value": round(value, 2), "unit": unit, **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the simulator child


async def _sim_child(pods: int, pki: str, kubeconfig: str, bookmark_interval: float) -> None:
    from edgeproxy import sim as sim_pkg

    sim = sim_pkg.Simulator(pki_dir=pki, control_port=0, bookmark_interval=bookmark_interval)
    await sim.start()
    sim.seed(pods=pods, namespace=NAMESPACE)
    sim.kubeconfig(kubeconfig, user="admin")
    print(json.dumps({"url": sim.url, "control": sim.control_url, "ca": str(sim.pki.ca_cert),
                      "cert": [str(p) for p in sim.pki.client("admin")]}), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await sim.stop()


class Sim:
    def __init__(self, pods: int, workdir: Path, bookmark_interval: float = 60.0) -> None:
        self.kubeconfig = workdir / "kubeconfig"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.offline", "--sim-child", str(pods), str(workdir / "pki"),
             str(self.kubeconfig), str(bookmark_interval)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        info = json.loads(self.proc.stdout.readline())
        self.url, self.control = info["url"], info["control"]
        ctx = ssl.create_default_context(cafile=info["ca"])
        ctx.load_cert_chain(*info["cert"])
        self.ssl = ctx

    async def fault(self, session: aiohttp.ClientSession, **switches: Any) -> None:
        async with session.post(f"{self.control}/__sim/faults", json=switches) as r:
            await r.read()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()


# Probing for the LIST runs: tolerant, since the single-threaded simulator answers no probe while it encodes a 50k-pod
# list; the death runs use the proxy's defaults (probe every 5 s, 2 s timeout, offline after 3 failures).
TOLERANT = ("--probe-interval", "0.5", "--probe-timeout", "10", "--offline-after", "3", "--online-after", "1")
DEFAULTS = ("--probe-interval", "5", "--probe-timeout", "2", "--offline-after", "3", "--online-after", "2")


class Proxy:
    def __init__(self, kubeconfig: Path, cache_dir: Path, probing: tuple[str, ...] = TOLERANT) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        ops = _free_port()
        self.ops_url = f"http://127.0.0.1:{ops}"
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeproxy", "--log-level", "warning", "serve", "--kubeconfig", str(kubeconfig),
             "--cache-dir", str(cache_dir), "--listen", f"127.0.0.1:{self.port}", "--ops-listen", f"127.0.0.1:{ops}",
             *probing, "--connect-timeout", "1", "--plain-as-node", "on"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(15)
        if self.proc.poll() is None:
            self.proc.kill()


# ---------------------------------------------------------------- measuring


# What kubelet, kube-proxy and CoreDNS keep informers on (traces/SUMMARY.md): 23 list+watch loops.
_INFORMERS = [
    ("kubelet", "/api/v1/pods", "spec.nodeName=edge-1", ""),
    ("kubelet", "/api/v1/nodes", "metadata.name=edge-1", ""),
    ("kubelet", "/api/v1/services", "spec.clusterIP!=None", ""),
    ("kubelet", "/apis/node.k8s.io/v1/runtimeclasses", "", ""),
    ("kubelet", "/apis/storage.k8s.io/v1/csidrivers", "", ""),
    *[("kubelet", "/api/v1/namespaces/edge/configmaps", f"metadata.name={n}", "")
      for n in ("api-config", "cache-config", "db-config", "edge-site-info", "feature-flags", "kube-root-ca.crt",
                "nginx-conf", "queue-config", "web-config")],
    *[("kubelet", "/api/v1/namespaces/edge/secrets", f"metadata.name={n}", "")
      for n in ("db-credentials", "registry-pull", "web-tls")],
    ("kube-proxy", "/api/v1/services", "spec.clusterIP!=None",
     "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"),
    ("kube-proxy", "/apis/discovery.k8s.io/v1/endpointslices", "",
     "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name"),
    ("kube-proxy", "/api/v1/nodes", "metadata.name=edge-1", ""),
    ("coredns", "/api/v1/namespaces", "", ""),
    ("coredns", "/api/v1/services", "", ""),
    ("coredns", "/apis/discovery.k8s.io/v1/endpointslices", "", ""),
]


async def _metric(session: aiohttp.ClientSession, proxy: Proxy, verb: str, answered_by: str) -> float:
    async with session.get(proxy.ops_url + "/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("edgeproxy_requests_total{") and f'verb="{verb}"' in line and \
                f'answered_by="{answered_by}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _reconnect(root: Path, outage: float, window: float) -> list[dict]:
    """The link drops for `outage` seconds under 23 informers (kubelet's, kube-proxy's, CoreDNS's, as reflectors
    on the kubernetes client); after it returns, the LIST requests that reach upstream in `window` seconds."""
    from tests.e2e.reflector import Reflector

    work = root / "reconnect"
    work.mkdir(parents=True, exist_ok=True)
    sim = Sim(0, work, bookmark_interval=1.0)
    proxy = Proxy(sim.kubeconfig, work / "cache")
    reflectors = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
            await _until(s, proxy.url + "/version", "application/json", None, time.perf_counter() + 30)
            for component, path, fields, labels in _INFORMERS:
                ua = f"{component}/v1.32.0 (linux/amd64) kubernetes/cd13ec4"
                reflectors.append(Reflector(proxy.url, path, field_selector=fields, label_selector=labels,
                                            user_agent=ua).start())
            for r in reflectors:
                await asyncio.to_thread(r.synced.wait, 30)
            await asyncio.sleep(3.0)  # watches going, lists recorded
            lists_before = sum(len(r.lists) for r in reflectors)
            await sim.fault(s, down=True)
            await asyncio.sleep(outage)
            upstream_lists = await _metric(s, proxy, "list", "upstream")
            relists_offline = sum(len(r.lists) for r in reflectors) - lists_before
            await sim.fault(s, down=False)
            t_up = time.perf_counter()
            await asyncio.sleep(window)
            after = await _metric(s, proxy, "list", "upstream") - upstream_lists
            relists_after = sum(len(r.lists) for r in reflectors) - lists_before - relists_offline
    finally:
        for r in reflectors:
            r.stop()
        proxy.stop()
        sim.stop()
    del t_up
    return [
        _row(f"LIST requests reaching upstream in the {window:.0f} s after reconnection ({len(_INFORMERS)} "
             f"informers, {outage:.0f} s outage)", after, "count", relists_by_clients_offline=relists_offline,
             relists_by_clients_after=relists_after, lists_upstream_before_the_outage=upstream_lists,
             baseline=17, baseline_name="kubelet alone without a caching proxy (traces/SUMMARY.md, first minute)"),
    ]


async def _death(root: Path, mode: str) -> dict:
    """Upstream death to the first locally served answer, a small recorded LIST polled every 5 ms (each request
    given 0.5 s). mode "down": the API server stops listening (connection refused); "hang": it accepts and never
    answers (a black hole): the client then waits as client-go does without a request timeout (30 s here), so the
    proxy's response-header deadline (--upstream-header-timeout, 10 s) or the prober, whichever comes first, tells."""
    work = root / f"death-{mode}"
    work.mkdir(parents=True, exist_ok=True)
    sim = Sim(100, work)
    proxy = Proxy(sim.kubeconfig, work / "cache", DEFAULTS)
    try:
        patience = 0.5 if mode == "down" else 30.0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=patience)) as s:
            small = proxy.url + "/api/v1/nodes"
            await _until(s, small, ACCEPT["protobuf"], None, time.perf_counter() + 30)
            await asyncio.sleep(1.0)  # recorded and committed
            t0 = time.perf_counter()
            await sim.fault(s, **{mode: True})
            t_local = await _until(s, small, ACCEPT["protobuf"], "cache", t0 + 60)
    finally:
        proxy.stop()
        sim.stop()
    what = "connection refused" if mode == "down" else "black hole: accepted, never answered"
    return _row(f"upstream death to first locally served answer ({what})", (t_local - t0) * 1000, "ms",
                note=f"a LIST every 5 ms, each given {patience:g} s; default probing: every 5 s, timeout 2 s, "
                     "offline after 3 failures; header deadline 10 s")


async def _timed_get(session: aiohttp.ClientSession, url: str, accept: str, **kw: Any) -> tuple[float, int, int,
                                                                                                 str]:
    t = time.perf_counter()
    async with session.get(url, headers={"Accept": accept, "User-Agent": UA}, **kw) as r:
        data = await r.read()
        return time.perf_counter() - t, r.status, len(data), r.headers.get("X-Edgeproxy-Source", "upstream")


async def _median(session: aiohttp.ClientSession, url: str, accept: str, runs: int, want_type: bool = False,
                  **kw: Any) -> Any:
    times = []
    size = 0
    ct = ""
    for _ in range(runs):
        t = time.perf_counter()
        async with session.get(url, headers={"Accept": accept, "User-Agent": UA}, **kw) as r:
            data = await r.read()
            dt, code, size, ct = time.perf_counter() - t, r.status, len(data), r.headers.get("Content-Type", "")
        if code != 200:
            raise RuntimeError(f"GET {url}: {code}")
        times.append(dt)
    if want_type:
        return statistics.median(times) * 1000, size, ct
    return statistics.median(times) * 1000, size


async def _until(session: aiohttp.ClientSession, url: str, accept: str, source: str | None, deadline: float
                 ) -> float:
    """Poll until GET url answers 200 (from `source` if given); the time it completed (perf_counter)."""
    while time.perf_counter() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(url, headers={"Accept": accept, "User-Agent": UA}) as r:
                await r.read()
                if r.status == 200 and (source is None or r.headers.get("X-Edgeproxy-Source", "upstream") == source):
                    return time.perf_counter()
        await asyncio.sleep(0.005)
    raise TimeoutError(url)


async def _size(n: int, root: Path, runs: int, rows: list[dict], extra: bool) -> None:
    """One encoding at a time (the cache's default size bound holds one 50k-pod list, not both): online direct and
    through the proxy (which records it), the link drops, the same LIST offline, the link returns."""
    work = root / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    sim = Sim(n, work)
    proxy = Proxy(sim.kubeconfig, work / "cache")
    path = f"/api/v1/namespaces/{NAMESPACE}/pods"
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as s:
            await _until(s, proxy.url + "/version", "application/json", None, time.perf_counter() + 30)
            for enc, accept in ACCEPT.items():
                direct, _ = await _median(s, sim.url + path, accept, runs, ssl=sim.ssl)
                through, _ = await _median(s, proxy.url + path, accept, runs)
                # let the recorder parse and the writer commit the list before the link drops (benchmark pacing)
                await asyncio.sleep(max(2.0, n / 2500))
                await sim.fault(s, down=True)
                # offline once /version comes from the cache (polling the big list itself would warm what we time)
                await _until(s, proxy.url + "/version", "application/json", "cache", time.perf_counter() + 60)
                first, _ = await _median(s, proxy.url + path, accept, 1)
                offline, size, ct = await _median(s, proxy.url + path, accept, runs, want_type=True)
                served = "protobuf" if ct.startswith(PB) else "json"
                rows.append(_row(f"LIST {n} pods {enc} offline (from the cache)", first, "ms", pods=n,
                                 encoding=served, bytes=size, baseline=round(direct, 2),
                                 baseline_name="simulator online, direct", proxy_online_ms=round(through, 2),
                                 repeated_ms=round(offline, 2),
                                 note="value: the first LIST after the link dropped (read from LMDB and joined); "
                                      "repeated_ms: the median of the next ones (the joined body kept)"))
                if extra and enc == "protobuf":
                    proxy.stop()
                    proxy = Proxy(sim.kubeconfig, work / "cache")  # a reboot with the upstream down
                    t_first = await _until(s, proxy.url + path, accept, "cache", proxy.started + 60)
                    rows.append(_row(f"proxy start with the upstream down to first served LIST ({n} pods, "
                                     "protobuf)", (t_first - proxy.started) * 1000, "ms",
                                     note="from exec of `edgeproxy serve` (interpreter start included)"))
                await sim.fault(s, down=False)
                await _until(s, proxy.url + "/version", "application/json", "upstream", time.perf_counter() + 60)
    finally:
        proxy.stop()
        sim.stop()


def run(opts: Any = None) -> list[dict]:
    quick = bool(getattr(opts, "quick", False))
    sizes = getattr(opts, "sizes", None) or ([1000, 10000] if quick else [1000, 10000, 50000])
    runs = 3 if quick else 7
    root = Path(getattr(opts, "workdir", None) or tempfile.mkdtemp(prefix="edgeproxy-bench-offline-"))
    rows: list[dict] = []
    rows += asyncio.run(_reconnect(root, outage=10.0, window=20.0 if quick else 60.0))
    for mode in ("down", "hang"):
        rows.append(asyncio.run(_death(root, mode)))
    for n in sizes:
        try:
            asyncio.run(_size(n, root, runs if n < 50000 else 3, rows,
                              extra=(n == 10000 or (n == sizes[0] and 10000 not in sizes))))
        except (RuntimeError, TimeoutError) as e:  # report what failed, keep the other figures
            rows.append(_row(f"LIST {n} pods: run failed", float("nan"), "", error=str(e)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.offline", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1k and 10k pods, 3 runs each")
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--sim-child", nargs=4, metavar=("PODS", "PKI", "KUBECONFIG", "BOOKMARKS"),
                        help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.sim_child:
        pods, pki, kubeconfig, bookmarks = opts.sim_child
        asyncio.run(_sim_child(int(pods), pki, kubeconfig, float(bookmarks)))
        return 0
    rows = run(opts)
    if opts.json:
        print(json.dumps(rows, indent=1))
    else:
        print(harness.table(rows))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
