"""edgeproxy beside the API server direct, YurtHub and nginx, on a real kube-apiserver across a cuttable WAN.

    python -m benchmarks real [--quick]        (or python -m benchmarks.real; root: network namespaces)

EDGEPROXY_REAL_BIN=DIR uses the binaries in DIR as they are (default: run tests/real/build.sh, a no-op when built).

The cluster is the real tier's (tests/real: etcd + kube-apiserver v1.37 built from Go modules by tests/real/build.sh,
TLS, Node,RBAC authorization). Each edge host is a network namespace whose only way to the API server is a TCP relay
(the "WAN") that the benchmark cuts and counts. Every proxy runs inside the edge namespace with its defaults for
when to go offline: edgeproxy probes /readyz every 5 s (offline after 3 failures, a 10 s response-header deadline),
YurtHub v1.7.0 renews the node's Lease every 10 s (unhealthy after one failed renewal); nginx only forwards. Measured:

1. LIST of a node's 10,000 pods (1,000 with --quick), ~1.5 KB of protobuf each as kube-apiserver stores them (the
   managedFields and service-account volume it adds included): the kubelet's query
   (`/api/v1/pods?fieldSelector=spec.nodeName=N`, kubelet's User-Agent, the node's identity), protobuf and JSON,
   by the same client (benchmarks/loadgen.py, in the edge namespace, whole body read) direct (TLS with the node's
   certificate across the WAN) and through each proxy (plain HTTP on 127.0.0.1, the proxy going up as the node);
   online (median of 5), then with the WAN cut (the first LIST, and the median of the next ones).
2. Resident memory of each proxy, anonymous and file-backed (/proc/PID/status RssAnon/RssFile), idle, after the
   online LISTs and after the offline ones.
3. Per variant (direct, edgeproxy, YurtHub), a fresh edge host running a hollow kubelet (kubemark: real kubelet
   code, fake runtime) with 50 pods (10 with --quick) and a hollow kube-proxy (its own ServiceAccount token, over
   the proxy's HTTPS listener): the TCP connections open across the WAN in steady state;
   the time from a kubelet restart to all its pods running again (its /metrics kubelet_running_pods and its /pods),
   online (the floor) and with the WAN cut; then the WAN back, and the LIST requests that reach the API server in
   the minute after (apiserver_request_total).
Reports figures; asserts nothing. Pods of part 3 mount no service-account token (what TokenRequest offline does
differs between the proxies and is not measured here).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import harness, realpods
from benchmarks import yurthub as yh
from benchmarks.passthrough import nginx_conf

SCENARIO = "real"
UA = "kubelet/v1.37.2 (linux/amd64) kubernetes/bench"
ACCEPT = {"protobuf": "application/vnd.kubernetes.protobuf, */*", "json": "application/json"}
NGINX = "/usr/sbin/nginx"
LIST_NODE = "bench-node"
# edgeproxy with its own defaults (the tests' edge host probes faster), and --plain-as-node on: YurtHub's model, every
# request without credentials on the plain-HTTP listener acts as the node, so one client and query serve all variants
# of the LISTs (the kubelet of part 3 uses edgeproxy's HTTPS listener with the node's certificate, as in production)
EDGEPROXY_DEFAULTS = ("--probe-interval", "5", "--probe-timeout", "2", "--offline-after", "3", "--online-after", "2",
                      "--upstream-header-timeout", "10", "--plain-as-node", "on")
ROOT = harness.ROOT


def _row(metric: str, value: float | None, unit: str, **extra: Any) -> dict[str, object]:
    if isinstance(value, float):
        value = round(value, 2)
    return harness.row(SCENARIO, metric, value, unit, **extra)


def build() -> Path:
    """tests/real/build.sh: a no-op when its stamps are fresh; the binary directory."""
    r = subprocess.run(["bash", str(ROOT / "tests" / "real" / "build.sh")], capture_output=True, text=True,
                       timeout=7200)
    if r.returncode != 0:
        raise RuntimeError(f"tests/real/build.sh failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the edge namespace


@contextlib.contextmanager
def hosts_file(netns: str, host_ip: str) -> Iterator[None]:
    """/etc/netns/<ns>/hosts, which `ip netns exec` mounts over /etc/hosts: `kubernetes` is the WAN relay's address
    there, so clients that cannot set a TLS server name (YurtHub, nginx, loadgen) verify the API server's
    certificate (it names `kubernetes`, not the relay's address)."""
    d = Path("/etc/netns") / netns
    d.mkdir(parents=True, exist_ok=True)
    (d / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{host_ip} kubernetes\n")
    try:
        yield
    finally:
        shutil.rmtree(d, ignore_errors=True)


def start_edgeproxy(edge: Any, cluster: Any) -> None:
    """The edge host's edgeproxy, its upstream the WAN by the name `kubernetes` (hosts_file()), as YurtHub and nginx
    reach it."""
    from tests.real.cluster import write_kubeconfig

    assert edge.wan is not None
    cert, key = cluster.node_cert(edge.node)
    edge.upstream_kubeconfig = write_kubeconfig(edge.dir / "upstream-by-name.kubeconfig",
                                                f"https://kubernetes:{edge.wan.port}", ca_file=cluster.ca_file,
                                                cert=cert, key=key)
    edge.start_component("edgeproxy")


def tree_rss(pid: int) -> dict[str, float]:
    """rss() of a process plus its children (nginx's worker)."""
    total: dict[str, float] = yh.rss(pid)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                for k, v in yh.rss(int(entry.name)).items():
                    total[k] = total.get(k, 0.0) + v
    return total


class Client:
    """benchmarks/loadgen.py run inside the edge namespace: one client for every variant."""

    def __init__(self, netns: str) -> None:
        self.prefix = ["ip", "netns", "exec", netns]

    def get(self, url: str, accept: str, runs: int, tls: dict[str, str] | None = None) -> dict[str, Any]:
        res = harness.loadgen(url, requests=runs, headers=[f"Accept: {accept}"], user_agent=UA, prefix=self.prefix,
                              **(tls or {}))
        if res["errors"]:
            raise RuntimeError(f"GET {url}: {res['errors']} of {runs} failed (statuses {res.get('statuses')}, "
                               f"{res['seconds']} s)")
        return res

    def ok(self, url: str) -> bool:
        with contextlib.suppress(RuntimeError):
            return harness.loadgen(url, requests=1, user_agent=UA, prefix=self.prefix, timeout=30)["errors"] == 0
        return False


def wait(cond: Callable[[], object], timeout: float, what: str, every: float = 0.2) -> float:
    """Poll until cond() is true; the seconds it took (TimeoutError naming `what`)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(Exception):
            if cond():
                return time.monotonic() - t0
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


def wait_each(checks: dict[str, Callable[[], object]], timeout: float) -> dict[str, float | None]:
    """Poll every check from now until each is true; the seconds each took (None: not within `timeout`)."""
    t0 = time.monotonic()
    took: dict[str, float | None] = {}
    while len(took) < len(checks) and time.monotonic() - t0 < timeout:
        for name, cond in checks.items():
            if name not in took:
                with contextlib.suppress(Exception):
                    if cond():
                        took[name] = time.monotonic() - t0
        time.sleep(0.1)
    return {name: took.get(name) for name in checks}


# ---------------------------------------------------------------- 1 + 2: LISTs and memory


def lists_and_memory(opts: harness.Options, cluster: Any, work: Path, pods: int) -> list[dict[str, object]]:
    from tests.real.edge import EdgeHost

    rows: list[dict[str, object]] = []
    runs = 3 if opts.quick else 5
    t0 = time.perf_counter()
    sizes = asyncio.run(_seed(cluster, pods))
    rows.append(_row("seed: pods created", sizes["pods"], "pods", note=f"in {time.perf_counter() - t0:.0f} s, "
                     f"{sizes['protobuf_bytes_per_pod']:.0f} B protobuf / {sizes['json_bytes_per_pod']:.0f} B JSON "
                     "per pod as listed"))
    edge = EdgeHost(cluster, work / "lists", LIST_NODE, components=(), proxy_flags=EDGEPROXY_DEFAULTS)
    with edge, hosts_file(edge.netns.name, edge.netns.host_ip):
        assert edge.wan is not None
        start_edgeproxy(edge, cluster)
        cert, key = cluster.node_cert(LIST_NODE)
        hub = yh.YurtHub(work / "yurthub", server=f"https://kubernetes:{edge.wan.port}", node_name=LIST_NODE,
                         ca_cert=cluster.ca_file, ca_key=cluster.pki.ca_key, node_ip=edge.netns.edge_ip,
                         ops_host=edge.netns.edge_ip, prefix=["ip", "netns", "exec", edge.netns.name])
        nginx_port = harness.free_port()
        conf = work / "nginx.conf"
        conf.write_text(nginx_conf(work, nginx_port, f"kubernetes:{edge.wan.port}", cert, key, cluster.ca_file,
                                   ssl_name="kubernetes"))
        nginx = None
        client = Client(edge.netns.name)
        try:
            try:
                hub.start()
                rows.append(_row("YurtHub start to ready", time.monotonic() - hub.started_at, "s",
                                 variant="yurthub", note="/v1/readyz 200: certificates, yurt-hub-cfg, filters synced"))
            except yh.YurtHubError as e:
                rows.append(_row("YurtHub start", None, "", variant="yurthub", note=f"failed: {str(e)[:300]}"))
                hub.stop()
                hub = None
            if Path(NGINX).exists():
                nginx = subprocess.Popen(["ip", "netns", "exec", edge.netns.name, NGINX, "-p", str(work), "-c",
                                          str(conf), "-e", str(work / "nginx-error.log")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
            proxies: dict[str, tuple[str, int]] = {"edgeproxy": ("http://127.0.0.1:10261",
                                                                 edge.procs["edgeproxy"].pid)}
            if hub is not None:
                proxies["yurthub"] = (hub.url, hub.pid)
            if nginx is not None:
                proxies["nginx"] = (f"http://127.0.0.1:{nginx_port}", nginx.pid)
                wait(lambda: client.ok(proxies["nginx"][0] + "/version"), 30, "nginx answering")
            tls = {"cert": str(cert), "key": str(key), "ca": str(cluster.ca_file)}
            variants = {"direct": (f"https://kubernetes:{edge.wan.port}", tls),
                        **{name: (url, {}) for name, (url, _) in proxies.items()}}
            query = f"/api/v1/pods?fieldSelector=spec.nodeName%3D{LIST_NODE}"
            time.sleep(2)
            rows += _memory(proxies, "idle")
            online: dict[tuple[str, str], float] = {}
            for enc, accept in ACCEPT.items():
                for url, kw in variants.values():
                    client.get(url + query, accept, 1, kw)  # warm-up; the proxies record it
                # interleaved rounds, one LIST each: a neighbour's burst on this shared machine hits all alike
                times: dict[str, list[float]] = {name: [] for name in variants}
                size: dict[str, int] = {}
                for _ in range(runs):
                    for name, (url, kw) in variants.items():
                        res = client.get(url + query, accept, 1, kw)
                        times[name].append(float(res["p50_ms"]))
                        size[name] = int(res["bytes"])
                for name in variants:
                    online[(enc, name)] = statistics.median(times[name])
                    rows.append(_row(f"{pods // 1000}k-pod LIST {enc} online", online[(enc, name)], "ms",
                                     variant=name, note=f"{size[name] / 1e6:.1f} MB, median of {runs} rounds"))
            time.sleep(10)  # the proxies' caches written (YurtHub persists a 10k-pod list object by object)
            rows += _memory(proxies, "after online LISTs")
            edge.wan.cut()
            checks = {"edgeproxy": lambda: not edge.proxy_online()}
            if hub is not None:
                checks["yurthub"] = lambda: not hub.online()
            notes = {"edgeproxy": "probes /readyz every 5 s, 2 s timeout, offline after 3 failures",
                     "yurthub": "Lease heartbeat every 10 s, unhealthy after one failed heartbeat"}
            for name, took in wait_each(checks, 120).items():
                rows.append(_row("WAN cut to offline (own health check)", took, "s", variant=name, note=notes[name]))
            for enc, accept in ACCEPT.items():
                for name in [n for n in ("edgeproxy", "yurthub") if n in proxies]:
                    url = proxies[name][0] + query
                    try:
                        first = client.get(url, accept, 1)
                        rest = client.get(url, accept, runs)
                    except RuntimeError as e:
                        rows.append(_row(f"{pods // 1000}k-pod LIST {enc} offline", None, "ms", variant=name,
                                         note=f"failed: {e}"))
                        continue
                    rows.append(_row(f"{pods // 1000}k-pod LIST {enc} offline, first", first["p50_ms"], "ms",
                                     variant=name, baseline=online[(enc, "direct")],
                                     note=f"{int(first['bytes']) / 1e6:.1f} MB; baseline: direct online"))
                    rows.append(_row(f"{pods // 1000}k-pod LIST {enc} offline, repeated", rest["p50_ms"], "ms",
                                     variant=name, note=f"median of {runs}"))
            rows += _memory({k: v for k, v in proxies.items() if k != "nginx"}, "after offline LISTs")
            edge.wan.restore()
        finally:
            if nginx is not None and nginx.poll() is None:
                nginx.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    nginx.wait(10)
                if nginx.poll() is None:
                    nginx.kill()
            if hub is not None:
                hub.stop()
    return rows


async def _seed(cluster: Any, pods: int) -> dict[str, float]:
    async with realpods.Api(cluster.url, cluster.ca_file, *cluster.pki.admin) as api:
        await realpods.seed(api, pods, LIST_NODE)
        return await realpods.stored_sizes(api, LIST_NODE)


def _memory(proxies: dict[str, tuple[str, int]], when: str) -> list[dict[str, object]]:
    rows = []
    for name, (_, pid) in proxies.items():
        m = tree_rss(pid)
        rows.append(_row(f"RSS {when}", m["total"], "MiB", variant=name,
                         note=f"anon {m['anon']:.1f} MiB, file {m['file']:.1f} MiB", anon=round(m["anon"], 1),
                         file=round(m["file"], 1)))
    return rows


# ---------------------------------------------------------------- 3: a kubelet through each


def kubelet_restarts(opts: harness.Options, cluster: Any, work: Path, variant: str) -> list[dict[str, object]]:
    from tests.real.cluster import count_diff, write_kubeconfig
    from tests.real.edge import EdgeHost

    npods = 10 if opts.quick else 50
    window = 20.0 if opts.quick else 60.0
    node = f"restart-{variant}"
    ns = f"restart-{variant}"
    cluster.create_pods(node, npods, namespace=ns)
    rows: list[dict[str, object]] = []
    edge = EdgeHost(cluster, work / node, node, components=(), proxy_flags=EDGEPROXY_DEFAULTS)
    hub = None
    with edge, hosts_file(edge.netns.name, edge.netns.host_ip):
        assert edge.wan is not None
        try:
            if variant == "edgeproxy":
                start_edgeproxy(edge, cluster)
            if variant == "yurthub":
                hub = yh.YurtHub(work / f"{node}-yurthub", server=f"https://kubernetes:{edge.wan.port}",
                                 node_name=node, ca_cert=cluster.ca_file, ca_key=cluster.pki.ca_key,
                                 node_ip=edge.netns.edge_ip, ops_host=edge.netns.edge_ip,
                                 prefix=["ip", "netns", "exec", edge.netns.name])
                hub.start()
                kc = write_kubeconfig(edge.dir / "kubelet-yurthub.kubeconfig", hub.url)  # plain HTTP, as the node
                edge._kubelet_kubeconfig = lambda: kc
            elif variant == "direct":
                edge._kubelet_kubeconfig = lambda: edge.upstream_kubeconfig  # the WAN, as the node
            mine = [f"{ns}/{node}-pod-{i}" for i in range(npods)]

            def all_running() -> bool:
                have = edge.kubelet_pods()
                return edge.running_pods() == npods and all(k in have for k in mine)

            edge.start_component("kubelet")
            wait(all_running, 180, f"{npods} pods running on the kubelet ({variant})")
            # kube-proxy with its ServiceAccount token: edgeproxy's HTTPS listener, YurtHub's, or the WAN itself
            if variant == "direct":
                kp = write_kubeconfig(edge.dir / "kube-proxy-direct.kubeconfig", edge.wan.url,
                                      ca_file=cluster.ca_file, token=edge.tokens["kube-proxy"],
                                      tls_server_name="kubernetes")
                edge._token_kubeconfig = lambda who: kp
            elif hub is not None:
                kp = write_kubeconfig(edge.dir / "kube-proxy-yurthub.kubeconfig",
                                      f"https://127.0.0.1:{hub.secure_port}", ca_file=cluster.ca_file,
                                      token=edge.tokens["kube-proxy"])
                edge._token_kubeconfig = lambda who: kp
            edge.start_component("kube-proxy")
            time.sleep(5 if opts.quick else 15)  # steady state
            conns = []
            for _ in range(5):
                conns.append(edge.wan.stats()["connections_open"])
                time.sleep(1)
            rows.append(_row("TCP connections across the WAN, steady state", max(conns), "connections",
                             variant=variant, note=f"kubelet ({npods} pods) and kube-proxy, and the proxy itself; "
                                                   f"samples {conns}"))
            floor = _restart(edge, all_running, 180)
            rows.append(_row(f"kubelet restart to {npods} pods running, online", floor, "s", variant=variant,
                             note="the floor"))
            edge.wan.cut()
            if variant == "edgeproxy":
                wait(lambda: not edge.proxy_online(), 60, "edgeproxy offline")
            elif hub is not None:
                wait(lambda: not hub.online(), 120, "YurtHub offline")
            offline_timeout = 60.0 if opts.quick else 120.0
            try:
                took: float | None = _restart(edge, all_running, offline_timeout)
                note = "WAN cut, proxy offline, then the kubelet restarted"
            except (TimeoutError, RuntimeError) as e:
                took, note = None, f"not within {offline_timeout:.0f} s ({str(e)[:80]})"
            rows.append(_row(f"kubelet restart to {npods} pods running, offline", took, "s", variant=variant,
                             baseline=round(floor, 2), note=note))
            before = cluster.request_counts()
            edge.wan.restore()
            time.sleep(window)
            lists = count_diff(cluster.request_counts(), before, "LIST")
            rows.append(_row(f"LISTs reaching the API server in the {window:.0f} s after reconnection",
                             sum(lists.values()), "requests", variant=variant,
                             note=", ".join(f"{r or '-'} {n}" for (_, r), n in sorted(lists.items())) or "none"))
        finally:
            if hub is not None:
                hub.stop()
    return rows


def _restart(edge: Any, all_running: Callable[[], bool], timeout: float) -> float:
    edge.stop_component("kubelet")
    t0 = time.monotonic()
    edge.start_component("kubelet")
    wait(all_running, timeout - (time.monotonic() - t0), "pods running after the kubelet restart", every=0.1)
    return time.monotonic() - t0


# ---------------------------------------------------------------- run


def run(opts: harness.Options) -> list[dict[str, object]]:
    from tests.real.cluster import Cluster

    work = opts.work or Path("/tmp/edgeproxy-bench-real")
    bin_dir = Path(os.environ["EDGEPROXY_REAL_BIN"]) if os.environ.get("EDGEPROXY_REAL_BIN") else build()
    yh.BIN_DIR = bin_dir
    pods = 1000 if opts.quick else 10_000
    rows: list[dict[str, object]] = []
    with Cluster(work / "cluster", bin_dir) as cluster:
        asyncio.run(_apply(cluster, yh.RBAC))
        rows += lists_and_memory(opts, cluster, work, pods)
        for variant in ("direct", "edgeproxy", "yurthub"):
            try:
                rows += kubelet_restarts(opts, cluster, work, variant)
            except Exception as e:  # report what failed, keep the other variants' figures
                rows.append(_row("kubelet restarts: run failed", None, "", variant=variant, note=str(e)[:300]))
    return rows


async def _apply(cluster: Any, objects: list[tuple[str, dict[str, Any]]]) -> None:
    async with realpods.Api(cluster.url, cluster.ca_file, *cluster.pki.admin) as api:
        for path, body in objects:
            await api.ensure(path, body)


if __name__ == "__main__":
    sys.exit(harness.main(run))
