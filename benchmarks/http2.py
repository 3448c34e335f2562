"""edgeproxy's HTTP/2 upstream beside its HTTP/1.1 upstream and nginx: CPU, latency, big LISTs, watch events,
and how many connections each holds to the API server.

    python -m benchmarks http2 [--quick] [--duration S]

One simulator process (TLS, client certificates, N pods) with its front (edgeproxy.sim.h2front, in the same process,
relaying each request to the simulator through one aiohttp client session; it speaks h2 by ALPN and HTTP/1.1
otherwise). Every variant goes through that front, so each row has the same extra hop:
- direct:          the load generator to the front, HTTP/1.1 over TLS;
- edgeproxy h1:    `edgeproxy serve --cache off --upstream-http2 off` to the front (HTTP/1.1 keep-alive pool);
- edgeproxy h2:    `edgeproxy serve --cache off` to the front: one HTTP/2 connection, every request a stream;
- nginx:           one worker, keep-alive HTTP/1.1 upstream pool (nginx has no HTTP/2 to upstreams).
"added" latency is a variant's p50 less direct's. Upstream connections are counted from /proc while 16 clients send
small GETs.

Downstream (the proxy's HTTPS listener, clients with the node's certificate, upstream HTTP/1.1 to the simulator):
16 HTTP/1.1 keep-alive connections (benchmarks/loadgen.py) against 16 streams on one HTTP/2 connection
(benchmarks/h2load.py): the proxy's CPU per small GET, req/s, and watch events/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from benchmarks import harness, passthrough

SCENARIO = "http2"


@contextlib.contextmanager
def edgeproxy(work: Path, server: str, pki: passthrough.Pki, name: str, *extra: str) -> Iterator[tuple[str, int]]:
    kubeconfig = passthrough.write_kubeconfig(work / f"{name}.kubeconfig", server, pki)
    port = harness.free_port()
    argv = [sys.executable, "-m", "edgeproxy", "--log-level", "warning", "serve", "--kubeconfig", str(kubeconfig),
            "--listen", f"127.0.0.1:{port}", "--ops-listen", "", "--cache-dir", str(work / f"{name}-cache"),
            "--cache", "off", "--plain-as-node", "on", *extra]  # token-less load acts as the node (guard/trust.py)
    with harness.process(argv, port=port, log=work / f"{name}.log") as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


def connections_to(pid: int, port: int) -> int:
    """Established TCP connections of process `pid` (and its children) to 127.0.0.1:`port`."""
    inodes = set()
    for p in [pid, *_children(pid)]:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{p}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "01" and int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                    n += 1
    return n


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


def run(opts: harness.Options) -> list[dict[str, object]]:
    work = opts.work or Path("/tmp")
    pods = 1000 if opts.quick else 10_000
    rows: list[dict[str, object]] = []
    with harness.simulator_h2(work, pods=pods, http1=True) as (sim_url, front_url, pki_dir):
        pki = passthrough.Pki.at(pki_dir)
        with edgeproxy(work, front_url, pki, "edgeproxy-h1", "--upstream-http2", "off") as h1, \
                edgeproxy(work, front_url, pki, "edgeproxy-h2") as h2, passthrough.nginx(work, front_url, pki) as ng:
            proxies = {"edgeproxy h1": h1, "edgeproxy h2": h2, "nginx": ng}
            proxies = {k: v for k, v in proxies.items() if v is not None}
            ports = dict.fromkeys(proxies, int(front_url.rsplit(":", 1)[1]))
            rows += _measure(opts, pods, front_url, proxies, pki, ports)
        rows += _downstream(opts, work, sim_url, pki_dir, pods)
    rows += asyncio.run(_black_hole(work))
    return rows


def h2load(url: str, **kw: object) -> dict[str, object]:
    """benchmarks/h2load.py in its own process (every request a stream on one connection), as harness.loadgen runs
    benchmarks/loadgen.py."""
    import json
    import subprocess

    argv = [sys.executable, "-m", "benchmarks.h2load", url]
    for name, value in kw.items():
        if name == "headers":
            for h in value:  # type: ignore[attr-defined]
                argv += ["--header", h]
        elif value is not None:
            argv += [f"--{name.replace('_', '-')}", str(value)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=harness.ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"h2load failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)


def _downstream(opts: harness.Options, work: Path, sim_url: str, pki_dir: Path, pods: int) -> list[dict[str, object]]:
    """Clients to edgeproxy's HTTPS listener with the node's certificate, HTTP/1.1 (16 keep-alive connections) against
    HTTP/2 (16 streams on one connection), same upstream (HTTP/1.1 to the simulator): the proxy's CPU per small GET
    and watch events/s. h2load is pure Python and may limit the h2 req/s; the CPU per request is the proxy's own."""
    pki = passthrough.Pki.at(pki_dir)
    tls_port = harness.free_port()
    extra = ["--upstream-http2", "off", "--tls-listen", f"127.0.0.1:{tls_port}", "--tls-cert-file",
             str(pki_dir / "server.crt"), "--tls-key-file", str(pki_dir / "server.key"), "--client-ca-file",
             str(pki.ca_cert), "--node-name", "edge-1"]
    url = f"https://127.0.0.1:{tls_port}"
    tls = {"cert": str(pki_dir / "node.crt"), "key": str(pki_dir / "node.key"), "ca": str(pki.ca_cert)}
    small = "/api/v1/namespaces/default/services/kubernetes"
    gens = {"HTTPS HTTP/1.1 (16 connections)": harness.loadgen, "HTTPS h2 (16 streams, 1 connection)": h2load}
    rows: list[dict[str, object]] = []
    rounds = 2 if opts.quick else 5
    with edgeproxy(work, sim_url, pki, "edgeproxy-downstream", *extra) as (_, pid):
        for gen in gens.values():
            gen(url + small, requests=200, concurrency=4, headers=[passthrough.JSON], **tls)
        cpu: dict[str, list[float]] = {name: [] for name in gens}
        rates: dict[str, list[float]] = {name: [] for name in gens}
        for _ in range(rounds):
            for name, gen in gens.items():
                before = harness.cpu_seconds(pid)
                res = gen(url + small, concurrency=16, duration=opts.duration, headers=[passthrough.JSON], **tls)
                if res["requests"]:
                    cpu[name].append((harness.cpu_seconds(pid) - before) / float(res["requests"]) * 1e6)
                rates[name].append(float(res["req_per_s"]))
        for name in gens:
            rows.append(harness.row(SCENARIO, "downstream small GET proxy CPU", round(statistics.median(cpu[name]), 1),
                                    "us/request", variant=name, note=f"median of {rounds}; upstream HTTP/1.1"))
            rows.append(harness.row(SCENARIO, "downstream small GET throughput", statistics.median(rates[name]),
                                    "req/s", variant=name, note="h2: the Python load generator may be the limit"))
        watch_path = ("/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
                      "&allowWatchBookmarks=true&timeoutSeconds=60")
        for name, gen in gens.items():
            res = gen(url + watch_path, watch_events=pods, headers=[passthrough.PROTOBUF], **tls)
            rows.append(harness.row(SCENARIO, "downstream watch events/s (protobuf)", res["events_per_s"],
                                    "events/s", variant=name, note=res.get("error") or f"{res['events']} events"))
    return rows


async def _black_hole(work: Path) -> list[dict[str, object]]:
    """A link that drops everything (the front accepts, then never answers, not even PINGs) under one idle watch:
    seconds until the proxy's upstream is offline, with the default probing and with probes off (the PING alone)."""
    import dataclasses

    from multidict import CIMultiDict

    from edgeproxy import upstream
    from edgeproxy.sim import Simulator
    from edgeproxy.sim.h2front import H2Front

    rows: list[dict[str, object]] = []
    for label, probe_interval in (("probes every 5 s + PING (defaults)", 5.0), ("PING alone (no probes)", 3600.0)):
        async with Simulator(pki_dir=work / "blackhole-pki") as sim:
            front = H2Front(sim)
            await front.start()
            creds = dataclasses.replace(upstream.load_kubeconfig(sim.kubeconfig(work / "bh.kubeconfig")),
                                        servers=(front.url,))
            up = upstream.Upstream(creds, probe_interval=probe_interval)
            await up.start()
            try:
                _, watch = await up.send("GET", f"/api/v1/namespaces/edge/configmaps?watch=true&resourceVersion="
                                         f"{sim.store.rv}", CIMultiDict(), header_timeout=10)
                loop = asyncio.get_running_loop()
                front.blackhole()
                start = loop.time()
                while up.online and loop.time() - start < 120:
                    await asyncio.sleep(0.05)
                took = loop.time() - start
                watch.close()
            finally:
                await up.close()
                await front.stop()
        rows.append(harness.row(SCENARIO, "black-holed link, idle watch: offline after", round(took, 1), "s",
                                variant=f"edgeproxy h2, {label}", note="PING after 30 s idle, 15 s timeout"))
    return rows


def _measure(opts: harness.Options, pods: int, front_url: str, proxies: dict[str, tuple[str, int]],
             pki: passthrough.Pki, ports: dict[str, int]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    tls = {"cert": str(pki.admin_cert), "key": str(pki.admin_key), "ca": str(pki.ca_cert)}
    variants: dict[str, tuple[str, dict[str, str]]] = {"direct": (front_url, tls)}
    variants.update({name: (url, {}) for name, (url, _) in proxies.items()})
    small = "/api/v1/namespaces/default/services/kubernetes"
    json_h = passthrough.JSON
    for url, kw in variants.values():
        harness.loadgen(url + small, requests=200, concurrency=4, headers=[json_h], **kw)
    rounds = 2 if opts.quick else 5
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in proxies}
    conns: dict[str, int] = {}
    for _ in range(rounds):
        for name, (url, kw) in variants.items():
            before = harness.cpu_seconds(proxies[name][1]) if name in proxies else 0.0
            seen: list[int] = []
            if name in proxies:  # count upstream connections half-way through the round
                timer = threading.Timer(opts.duration / 2, lambda n=name, out=seen: out.append(
                    connections_to(proxies[n][1], ports[n])))
                timer.start()
            thr = harness.loadgen(url + small, concurrency=16, duration=opts.duration, headers=[json_h], **kw)
            if name in proxies:
                timer.join()
                conns[name] = max(conns.get(name, 0), *seen)
            rates[name].append(float(thr["req_per_s"]))
            if name in proxies and thr["requests"]:
                cpu[name].append((harness.cpu_seconds(proxies[name][1]) - before) / float(thr["requests"]) * 1e6)
    for name in variants:
        rows.append(harness.row(SCENARIO, "small GET throughput", statistics.median(rates[name]), "req/s",
                                variant=name, note=f"c=16, median of {rounds}"))
    for name in proxies:
        rows.append(harness.row(SCENARIO, "small GET proxy CPU", round(statistics.median(cpu[name]), 1),
                                "us/request", variant=name, note="user+system time of the proxy process"))
        rows.append(harness.row(SCENARIO, "upstream connections at c=16", conns.get(name, 0), "connections",
                                variant=name, note="established TCP connections to the API server"))
    p50: dict[str, float] = {}
    for name, (url, kw) in variants.items():
        before = harness.cpu_seconds(proxies[name][1]) if name in proxies else 0.0
        lat = harness.loadgen(url + small, concurrency=1, requests=500 if opts.quick else 3000, headers=[json_h], **kw)
        p50[name] = float(lat["p50_ms"])
        rows.append(harness.row(SCENARIO, "small GET p50 latency", lat["p50_ms"], "ms", variant=name, note="c=1"))
        if name in proxies and lat["requests"]:
            # one request at a time: every variant pays its whole per-request cost, however fast the front answers
            rows.append(harness.row(SCENARIO, "small GET proxy CPU at c=1", round(
                (harness.cpu_seconds(proxies[name][1]) - before) / float(lat["requests"]) * 1e6, 1), "us/request",
                variant=name, note="user+system time of the proxy process"))
    for name in proxies:
        rows.append(harness.row(SCENARIO, "small GET p50 added", round(p50[name] - p50["direct"], 4), "ms",
                                variant=name, note="over direct (both through the front)"))
    for enc, accept in (("protobuf", passthrough.PROTOBUF), ("json", json_h)):
        for name, (url, kw) in variants.items():
            harness.loadgen(url + "/api/v1/pods", requests=1, headers=[accept], **kw)
            res = harness.loadgen(url + "/api/v1/pods", concurrency=1, requests=3 if opts.quick else 7,
                                  headers=[accept], **kw)
            size = int(res["bytes"]) // max(1, int(res["requests"]))
            rows.append(harness.row(SCENARIO, f"{pods // 1000}k-pod LIST {enc} p50", res["p50_ms"], "ms",
                                    variant=name, note=f"{size / 1e6:.1f} MB"))
    watch_path = ("/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
                  "&allowWatchBookmarks=true&timeoutSeconds=60")
    for name, (url, kw) in variants.items():
        before = harness.cpu_seconds(proxies[name][1]) if name in proxies else 0.0
        res = harness.loadgen(url + watch_path, watch_events=pods, headers=[passthrough.PROTOBUF], **kw)
        rows.append(harness.row(SCENARIO, "watch events/s (protobuf)", res["events_per_s"], "events/s",
                                variant=name, note=res.get("error") or f"{res['events']} events"))
        if name in proxies and res["events"]:
            rows.append(harness.row(SCENARIO, "watch proxy CPU per event", round(
                (harness.cpu_seconds(proxies[name][1]) - before) / float(res["events"]) * 1e6, 1), "us/event",
                variant=name, note="user+system time of the proxy process, the whole watch"))
    return rows


if __name__ == "__main__":
    sys.exit(harness.main(run))
