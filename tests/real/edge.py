"""An edge host of the real cluster tier: its own network namespace, a cuttable WAN to the API server, and in the
namespace edgeproxy, a hollow kubelet, a hollow kube-proxy and CoreDNS.

    e = EdgeHost(cluster, workdir, "edge-1", watchlist=False)
    e.start()                    # netns + veth + WAN relay + edgeproxy + kubelet + kube-proxy + CoreDNS
    e.wan.cut() / .blackhole() / .restore() / .stats()
    e.restart("kubelet")         # or "edgeproxy", "kube-proxy", "coredns"; restart_all()
    e.running_pods()             # kubelet_running_pods (sandboxes running in the fake runtime)
    e.kubelet_pods()             # {name: phase} from the kubelet's read-only /pods
    e.dig("web.apps.svc.cluster.local")   # A records CoreDNS answers
    e.proxy_online()             # edgeproxy's own view (ops /readyz header X-Edgeproxy-Online)
    e.stop()                     # every process by PID, the namespace and the veth pair, the WAN relay

Addresses: each edge host takes a free /30 of 10.251.0.0/16 (host side .1, namespace side .2), chosen under a
lock file so concurrent test sessions never share one. The namespace is named `ep-real-<pid>-<slot>`; namespaces
left behind by a test process that no longer exists are deleted at the next start.

Inside the namespace: edgeproxy listens on 127.0.0.1:10261 (plain HTTP: bearer tokens only) and 127.0.0.1:10268
(HTTPS, client certificates verified against the cluster CA): the kubelet comes with the node's client certificate
(upstream as the node), kube-proxy and CoreDNS with their own ServiceAccount tokens; its ops listener is on
<edge ip>:10267; the WAN is https://<host ip>:<port>, relayed to the API server on loopback.
`proxy="forward"` (or EDGEPROXY_REAL_PROXY=forward) runs edgeproxy with --cache off: a plain forwarder, the baseline
the offline tests must fail against.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .cluster import SERVER_NAME, Cluster, write_kubeconfig
from .procs import Proc, RealError, Started, wait_for
from .wan import Wan

NET = ipaddress.ip_network("10.251.0.0/16")
LOCK = Path("/tmp/edgeproxy-real-netns.lock")
PROXY_PORT, OPS_PORT, TLS_PORT = 10261, 10267, 10268
COREDNS_RULES = [
    {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
]
COMPONENTS = ("edgeproxy", "kubelet", "kube-proxy", "coredns")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _sweep_stale() -> None:
    """Delete namespaces of ours whose test process is gone (a crashed or killed run)."""
    for line in _ip("netns", "list").stdout.splitlines():
        m = re.match(r"ep-real-(\d+)-(\d+)\b", line)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _ip("netns", "del", m.group(0), check=False)


def _taken_addresses() -> set[str]:
    out = _ip("-o", "-4", "addr").stdout
    return set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", out))


class Netns:
    """A network namespace joined to the host by a veth pair, addresses from a /30 of NET."""

    def __init__(self) -> None:
        self.name = ""
        self.slot = -1

    def create(self) -> Netns:
        LOCK.touch(exist_ok=True)
        with open(LOCK) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _sweep_stale()
            taken = _taken_addresses()
            for slot in range(NET.num_addresses // 4):
                if str(NET[slot * 4 + 1]) not in taken:
                    break
            else:
                raise RealError("no free /30 in 10.251.0.0/16 for an edge host")
            self.slot = slot
            self.host_ip, self.edge_ip = str(NET[slot * 4 + 1]), str(NET[slot * 4 + 2])
            self.name = f"ep-real-{os.getpid()}-{slot}"
            self.host_if, edge_if = f"eprh{slot}", f"epre{slot}"
            _ip("link", "del", self.host_if, check=False)  # a leftover of a run whose namespace is gone
            _ip("netns", "add", self.name)
            try:
                _ip("link", "add", self.host_if, "type", "veth", "peer", "name", edge_if, "netns", self.name)
                _ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
                _ip("link", "set", self.host_if, "up")
                for args in (("addr", "add", f"{self.edge_ip}/30", "dev", edge_if), ("link", "set", edge_if, "up"),
                             ("link", "set", "lo", "up")):
                    _ip("-n", self.name, *args)
            except BaseException:
                self.delete()
                raise
        return self

    def delete(self) -> None:
        if self.name:
            _ip("netns", "del", self.name, check=False)  # takes the veth pair with it
            _ip("link", "del", self.host_if, check=False)
            self.name = ""

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=timeout)


class EdgeHost(Started):
    def __init__(self, cluster: Cluster, workdir: Path, node: str = "edge-1", *, watchlist: bool | None = None,
                 proxy: str | None = None, proxy_flags: tuple[str, ...] = (),
                 kubelet_flags: tuple[str, ...] = (), components: tuple[str, ...] = COMPONENTS,
                 netns: Any = None, wan: Wan | None = None) -> None:
        self.cluster = cluster
        self.dir = workdir
        self.node = node
        self.watchlist = watchlist  # client-go's WatchListClient for kubelet, kube-proxy, CoreDNS; None: default
        self.proxy_kind = proxy or os.environ.get("EDGEPROXY_REAL_PROXY", "edgeproxy")
        if self.proxy_kind not in ("edgeproxy", "forward"):
            raise ValueError(f"EDGEPROXY_REAL_PROXY must be edgeproxy or forward, not {self.proxy_kind!r}")
        self.proxy_flags = tuple(proxy_flags)
        self.kubelet_flags = tuple(kubelet_flags)
        self.components = components
        # a namespace and WAN given by the caller (a branch's: tests/real/branch.py) are the caller's to create and
        # delete; otherwise this host makes its own
        self._own_net = netns is None
        self.netns = Netns() if netns is None else netns
        self.wan: Wan | None = wan
        self.procs: dict[str, Proc] = {}

    # ---- life cycle

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._own_net:
            self.netns.create()
            self.wan = Wan(self.netns.host_ip, ("127.0.0.1", self.cluster.port)).start()
        assert self.wan is not None
        c = self.cluster
        cert, key = c.node_cert(self.node)
        self.upstream_kubeconfig = write_kubeconfig(self.dir / "upstream.kubeconfig", self.wan.url,
                                                    ca_file=c.ca_file, cert=cert, key=key,
                                                    tls_server_name=SERVER_NAME)
        self.node_cert = (cert, key)
        c.service_account("kube-system", "kube-proxy", cluster_role="system:node-proxier")
        c.service_account("kube-system", "coredns", rules=COREDNS_RULES)
        self.tokens = {"kube-proxy": c.sa_token("kube-system", "kube-proxy"),
                       "coredns": c.sa_token("kube-system", "coredns")}
        self.cache_dir = self.dir / "edgeproxy-cache"
        for name in self.components:
            self.start_component(name)

    def stop(self) -> None:
        for name in reversed(COMPONENTS):
            p = self.procs.pop(name, None)
            if p is not None:
                p.stop()
        if self._own_net:
            if self.wan is not None:
                self.wan.stop()
                self.wan = None
            self.netns.delete()
        # the kubelets' scratch root dirs (they can hold read-only bits; never fatal)
        shutil.rmtree(self.dir / "tmp", ignore_errors=True)

    def start_component(self, name: str) -> Proc:
        start = {"edgeproxy": self._start_edgeproxy, "kubelet": self._start_kubelet,
                 "kube-proxy": self._start_kube_proxy, "coredns": self._start_coredns}[name]
        old = self.procs.pop(name, None)
        if old is not None:
            old.stop()
        return start()

    def stop_component(self, name: str, *, kill: bool = False) -> None:
        p = self.procs.pop(name, None)
        if p is not None:
            p.kill() if kill else p.stop()

    def restart(self, name: str) -> Proc:
        self.stop_component(name)
        return self.start_component(name)

    def restart_all(self) -> None:
        """Every component stopped, then started again in order (what a reboot of the edge host does)."""
        for name in reversed(self.components):
            self.stop_component(name)
        for name in self.components:
            self.start_component(name)

    def _proc(self, name: str, argv: list[Any], env: dict[str, str] | None = None) -> Proc:
        p = Proc(name, argv, self.dir / "logs" / f"{name}.log", netns=self.netns.name, env=env)
        self.procs[name] = p
        return p

    # ---- components

    def _start_edgeproxy(self) -> Proc:
        level = os.environ.get("EDGEPROXY_REAL_LOG_LEVEL", "info")
        argv = [sys.executable, "-m", "edgeproxy", "--log-level", level, "serve",
                "--kubeconfig", self.upstream_kubeconfig,
                "--listen", f"127.0.0.1:{PROXY_PORT}", "--tls-listen", f"127.0.0.1:{TLS_PORT}",
                "--client-ca-file", self.cluster.ca_file,
                "--ops-listen", f"{self.netns.edge_ip}:{OPS_PORT}", "--cache-dir", self.cache_dir,
                "--probe-interval", "1", "--offline-after", "2", "--online-after", "1", "--connect-timeout", "1",
                "--upstream-header-timeout", "5", "--shutdown-timeout", "1"]
        if self.proxy_kind == "forward":
            argv += ["--cache", "off"]
        p = self._proc("edgeproxy", [*argv, *self.proxy_flags], env={"PYTHONPATH": os.pathsep.join(sys.path)})
        wait_for(lambda: self._ops("/healthz")[0] == 200, 30, "edgeproxy /healthz", procs=[p])
        wait_for(lambda: (self.cache_dir / "pki" / "ca.crt").exists(), 10, "edgeproxy's own CA", procs=[p])
        return p

    def _feature_gates(self) -> list[str]:
        return [] if self.watchlist is None else [f"--feature-gates=WatchListClient={str(self.watchlist).lower()}"]

    def _start_kubelet(self) -> Proc:
        tmp = self.dir / "tmp"
        tmp.mkdir(exist_ok=True)
        argv = [self.cluster.bin / "kubemark", "--morph=kubelet", f"--name={self.node}",
                f"--kubeconfig={self._kubelet_kubeconfig()}", "--use-host-image-service=false",
                *self._feature_gates(), "--v=2", *self.kubelet_flags]
        # the hollow kubelet makes its root dir under $TMPDIR, a fresh one each start
        p = self._proc("kubelet", argv, env={"TMPDIR": str(tmp)})
        wait_for(lambda: self._kubelet_get("/healthz") == b"ok", 60, "kubelet /healthz", procs=[p])
        return p

    def _kubelet_kubeconfig(self) -> Path:
        """kubelet → edgeproxy's HTTPS listener with the node's client certificate (the plain listener does not act
        as the node unless --plain-as-node on)."""
        return write_kubeconfig(self.dir / "kubelet.kubeconfig", f"https://127.0.0.1:{TLS_PORT}",
                                ca_file=self.cache_dir / "pki" / "ca.crt", cert=self.node_cert[0],
                                key=self.node_cert[1])

    def _token_kubeconfig(self, who: str) -> Path:
        return write_kubeconfig(self.dir / f"{who}.kubeconfig", f"https://127.0.0.1:{TLS_PORT}",
                                ca_file=self.cache_dir / "pki" / "ca.crt", token=self.tokens[who])

    def _start_kube_proxy(self) -> Proc:
        argv = [self.cluster.bin / "kubemark", "--morph=proxy", f"--name={self.node}",
                f"--kubeconfig={self._token_kubeconfig('kube-proxy')}", *self._feature_gates(), "--v=2"]
        p = self._proc("kube-proxy", argv)
        # the hollow kube-proxy serves no health or metrics port: it is up when its informers say so
        wait_for(self.kube_proxy_synced, 60, "kube-proxy's Service and EndpointSlice informers synced", procs=[p])
        return p

    def _start_coredns(self) -> Proc:
        corefile = self.dir / "Corefile"
        corefile.write_text(
            ".:53 {\n    errors\n    ready :8181\n"
            "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n"
            f"        kubeconfig {self._token_kubeconfig('coredns')} real\n"
            "        fallthrough in-addr.arpa ip6.arpa\n    }\n}\n")
        env = {} if self.watchlist is None else {"KUBE_FEATURE_WatchListClient": str(self.watchlist).lower()}
        p = self._proc("coredns", [self.cluster.bin / "coredns", "-conf", corefile], env=env)
        wait_for(lambda: _http_get(f"http://{self.netns.edge_ip}:8181/ready") is not None, 60, "CoreDNS /ready",
                 procs=[p])
        return p

    # ---- observations

    def _ops(self, path: str) -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(f"http://{self.netns.edge_ip}:{OPS_PORT}{path}", timeout=3) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def proxy_online(self) -> bool:
        """edgeproxy's own view: online (forwarding) or offline (answering from its cache)."""
        headers = self._ops("/readyz")[1]
        return headers.get("X-Edgeproxy-Online", "").lower() in ("true", "1", "yes")

    def local_connections(self, port: int = TLS_PORT) -> dict[str, int]:
        """Established TCP connections to edgeproxy's 127.0.0.1:`port` in the namespace, per client component
        (`ss -tnp`: the process holding each client end, matched to this host's components by PID)."""
        out = self.netns.run("ss", "-Htnp", "state", "established", "dst", f"127.0.0.1:{port}").stdout
        names = {p.pid: name for name, p in self.procs.items()}
        counts: dict[str, int] = {}
        for pid in re.findall(r"pid=(\d+)", out):
            name = names.get(int(pid), "other")
            counts[name] = counts.get(name, 0) + 1
        return counts

    def served(self, component: str, resource: str | None = None) -> int:
        """How many list/watch requests of `component` (User-Agent component: kubelet, kube-proxy, coredns) on
        `resource` this edgeproxy process answered with 200, from upstream or its cache (/debug/components)."""
        doc = json.loads(self._ops(f"/debug/components?component={component}")[2] or b"{}")
        counts = doc.get("components", {}).get(component, {}).get("counts", [])
        return sum(c["n"] for c in counts if c["verb"] in ("list", "watch") and c["code"] == 200
                   and (resource is None or c["resource"] == resource))

    def kube_proxy_synced(self) -> bool:
        """This kube-proxy process has its Services and EndpointSlices (its informers synced, as its log says)."""
        p = self.procs.get("kube-proxy")
        log = p.log() if p is not None and p.alive() else ""
        return all(f'Caches are synced" controller="{c} config"' in log for c in ("service", "endpoint slice"))

    def proxy_metrics(self) -> str:
        return self._ops("/metrics")[2].decode()

    def _kubelet_get(self, path: str) -> bytes | None:
        return _http_get(f"http://{self.netns.edge_ip}:10255{path}")

    def kubelet_pods(self) -> dict[str, str]:
        """The kubelet's pods from its read-only /pods: {namespace/name: phase} (phase as the kubelet knows the API
        object; see running_pods() for what its runtime runs)."""
        body = self._kubelet_get("/pods")
        items = json.loads(body or b"{}").get("items") or []
        return {f"{p['metadata']['namespace']}/{p['metadata']['name']}": p.get("status", {}).get("phase", "")
                for p in items}

    def running_pods(self) -> int:
        """kubelet_running_pods: pods with a running sandbox in the kubelet's (fake) runtime, from /metrics."""
        text = (self._kubelet_get("/metrics") or b"").decode()
        m = re.search(r"^kubelet_running_pods(?:\{[^}]*\})? (\d+)", text, re.M)
        return int(m.group(1)) if m else -1

    def dig(self, name: str, rtype: str = "A") -> list[str]:
        """What CoreDNS answers for `name` (empty when NXDOMAIN/SERVFAIL or no answer)."""
        r = subprocess.run(["dig", "+short", "+time=2", "+tries=1", f"@{self.netns.edge_ip}", name, rtype],
                           capture_output=True, text=True, timeout=10)
        return [ln for ln in r.stdout.split() if ln and not ln.startswith(";")]


def _http_get(url: str, *, ok_only: bool = True, timeout: float = 3) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read()
    except urllib.error.HTTPError as e:
        return None if ok_only else e.read()
    except OSError:
        return None

