"""OpenYurt YurtHub (v1.7.0) run standalone beside a plain kube-apiserver: the peer `python -m benchmarks real`
compares edgeproxy with. Not a scenario: a helper the real scenario uses.

What YurtHub needs, read from its source (cmd/yurthub/app, pkg/yurthub), with no yurt-manager and no OpenYurt CRDs:
- `--server-addr https://HOST:PORT` (https only), `--node-name N`, `--nodepool-name P` (required, any name),
  `--working-mode edge` (caches to disk, answers from it when the health checker calls the API server unhealthy).
- Its client certificate: `--bootstrap-file KUBECONFIG` (server + inline CA data). From it YurtHub writes
  `<root-dir>/yurthub.conf` pointing at `<root-dir>/pki/yurthub-current.pem` (certificate + key in one PEM) and
  `<root-dir>/pki/ca.crt`. If that PEM is missing it sends a CSR (CN system:node:N, O openyurt:yurthub +
  system:nodes, signer kubernetes.io/kube-apiserver-client) and waits for someone to approve it and for
  kube-controller-manager to sign it (yurt-manager auto-approves in a real OpenYurt). We write the PEM ourselves,
  signed by the cluster CA: client-go's certificate manager keeps a certificate that covers its template (same CN,
  no missing O, DNS or IP) and does not rotate it before 70% of its life.
- Its serving certificate, `<root-dir>/pki/yurthub-server-current.pem` (CN system:node:N, O system:nodes, signer
  kubelet-serving; IPs: the `kubernetes` Service's ClusterIP, 169.254.2.1, the bind addresses, --node-ip; DNS
  kubernetes[.default[.svc[.cluster.local]]]): pre-made the same way, else another CSR. Its readiness waits for both.
- RBAC: the `yurt-hub` ClusterRole of its Helm chart bound to group system:nodes (configmaps, leases, endpoints,
  endpointslices, events); the Node authorizer covers the rest of what a node identity does.
- `--enable-node-pool=false`: otherwise a filter waits for the apps.openyurt.io NodePool informer, which never syncs
  without the CRD, and /v1/readyz never answers 200. `--enable-dummy-if=false`: no dummy interface (169.254.2.1)
  on the host; the HTTPS listener then binds --bind-proxy-address.
- `--disk-cache-path` (default /etc/kubernetes/cache/) and `--root-dir` (default /var/lib/yurthub): per run.
- Ports: --serve-port 10267 (/v1/healthz, /v1/readyz, /metrics), --proxy-port 10261 (plain HTTP, what kubelet
  uses), --proxy-secure-port 10268, --multiplexer-port 10269 (on --node-ip): edgeproxy's defaults are the same
  numbers, so both get free ports here.
- Only requests whose User-Agent is a cache agent (kubelet, kube-proxy, coredns, flanneld, ...) are cached, and
  answered offline; more come from `cache_agents` in the kube-system/yurt-hub-cfg ConfigMap (here: hollow-kubelet
  and hollow-proxy, kubemark's kubelet and kube-proxy, which edgeproxy recognises by itself).
Clients point at `http://127.0.0.1:<proxy-port>` with no credentials (YurtHub goes upstream as the node), as kubelet
does in an OpenYurt node.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from benchmarks import harness

VERSION = "v1.7.0"
BIN_DIR = Path(os.environ.get("EDGEPROXY_REAL_BIN", Path.home() / ".cache/edgeproxy/realk8s/v1.37.2/bin"))
DUMMY_IP = "169.254.2.1"
KUBE_DNS_NAMES = ("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local")

# The Helm chart's RBAC (charts/yurthub/templates/yurthub-cfg.yaml), and its yurt-hub-cfg ConfigMap, whose
# cache_agents adds kubemark's hollow kubelet and kube-proxy (User-Agents hollow-kubelet/..., hollow-proxy/...) to
# the components YurtHub caches for.
RBAC = [
    ("/apis/rbac.authorization.k8s.io/v1/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "yurt-hub"},
        "rules": [
            {"apiGroups": [""], "resources": ["events"], "verbs": ["get"]},
            {"apiGroups": ["apps.openyurt.io"], "resources": ["nodepools"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["yurt-coordinator-yurthub-certs"],
             "verbs": ["list", "watch"]},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "update"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            {"apiGroups": [""], "resources": ["endpoints"], "verbs": ["list", "watch"]},
        ]}),
    ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "yurt-hub"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "yurt-hub"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}]}),
    ("/api/v1/namespaces/kube-system/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "yurt-hub-cfg", "namespace": "kube-system",
                     "labels": {"openyurt.io/configmap-name": "yurt-hub-cfg"}},
        "data": {"cache_agents": "hollow-kubelet,hollow-proxy", "servicetopology": "", "discardcloudservice": "",
                 "masterservice": ""}}),
]


class YurtHubError(RuntimeError):
    """YurtHub could not be prepared or did not become ready; the message says what and where its log is."""


def binary() -> Path:
    return BIN_DIR / "yurthub"  # BIN_DIR: set by the caller to the directory it built


def _pem_pair(issued) -> bytes:
    return issued.cert_pem + issued.key_pem


def _load_ca(ca_cert: Path, ca_key: Path):
    from edgeproxy.tls import Issued

    cert = x509.load_pem_x509_certificate(ca_cert.read_bytes())
    key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    return Issued(cert, key)  # type: ignore[arg-type]


def rss(pid: int) -> dict[str, float]:
    """Resident memory of a process from /proc/PID/status, in MiB: anon (heap, stacks), file (mapped files: the
    binary, and for edgeproxy the LMDB map), shmem, and their total."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
            out[{"VmRSS": "total", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem"}[key]] = \
                int(value.split()[0]) / 1024
    return out


class YurtHub:
    """One YurtHub process for node `node_name`, its state under `work`. `prefix` runs it elsewhere (e.g.
    `ip netns exec NS`). The proxy listens on 127.0.0.1 (plain HTTP, as kubelet uses it), the ops port
    (/v1/readyz, /metrics) on `ops_host`: an address of the namespace the caller can reach."""

    def __init__(self, work: Path, *, server: str, node_name: str, ca_cert: Path, ca_key: Path,
                 service_ip: str = "10.96.0.1", node_ip: str = "127.0.0.1", ops_host: str = "127.0.0.1",
                 prefix: Sequence[str] = (),
                 extra_args: Sequence[str] = (), heartbeat_interval: int = 10) -> None:
        self.work = work
        self.server = server
        self.node_name = node_name
        self.ca_cert, self.ca_key = ca_cert, ca_key
        self.service_ip = service_ip
        self.node_ip = node_ip
        self.ops_host = ops_host
        self.prefix = list(prefix)
        self.extra_args = list(extra_args)
        self.heartbeat_interval = heartbeat_interval
        self.root = work / "yurthub"
        self.cache_dir = work / "yurthub-cache"
        self.log = work / "yurthub.log"
        self.proxy_port = harness.free_port()
        self.serve_port = harness.free_port()
        self.secure_port = harness.free_port()
        self.mux_port = harness.free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def ops_url(self) -> str:
        return f"http://{self.ops_host}:{self.serve_port}"

    def prepare(self) -> None:
        """The bootstrap kubeconfig and both certificates, signed by the cluster CA (no CSR round trip)."""
        from edgeproxy.tls import issue

        ca = _load_ca(self.ca_cert, self.ca_key)
        pki = self.root / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        cn = f"system:node:{self.node_name}"
        client = issue(ca, cn, ["openyurt:yurthub", "system:nodes"], client=True)
        ips = sorted({self.service_ip, DUMMY_IP, "127.0.0.1", self.node_ip, self.ops_host})
        server = issue(ca, cn, ["system:nodes"], [*ips, *KUBE_DNS_NAMES])
        for name, issued in (("yurthub-current.pem", client), ("yurthub-server-current.pem", server)):
            path = pki / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(_pem_pair(issued))
        ca_data = base64.b64encode(self.ca_cert.read_bytes()).decode()
        self.bootstrap = self.root / "bootstrap-hub.conf"
        self.bootstrap.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "hub",
            "clusters": [{"name": "kubernetes", "cluster": {"server": self.server,
                                                            "certificate-authority-data": ca_data}}],
            "users": [{"name": "hub", "user": {"client-certificate": str(pki / "yurthub-current.pem"),
                                               "client-key": str(pki / "yurthub-current.pem")}}],
            "contexts": [{"name": "hub", "context": {"cluster": "kubernetes", "user": "hub"}}]}))

    def argv(self) -> list[str]:
        return [*self.prefix, str(binary()), "--v=2",
                f"--server-addr={self.server}", f"--node-name={self.node_name}", "--nodepool-name=bench",
                "--working-mode=edge", f"--bootstrap-file={self.bootstrap}", f"--root-dir={self.root}",
                f"--disk-cache-path={self.cache_dir}/", "--enable-dummy-if=false", "--enable-node-pool=false",
                f"--node-ip={self.node_ip}", f"--bind-address={self.ops_host}", "--bind-proxy-address=127.0.0.1",
                f"--serve-port={self.serve_port}", f"--proxy-port={self.proxy_port}",
                f"--proxy-secure-port={self.secure_port}", f"--multiplexer-port={self.mux_port}",
                f"--heartbeat-interval-seconds={self.heartbeat_interval}", *self.extra_args]

    def start(self, timeout: float = 120.0) -> None:
        if not binary().exists():
            raise YurtHubError(f"{binary()} is missing: build it with tests/real/build.sh yurthub")
        if not (self.root / "pki" / "yurthub-current.pem").exists():
            self.prepare()
        out = open(self.log, "ab")  # noqa: SIM115 - the child holds it; closed in stop()
        self._out = out
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> float:
        """Poll /v1/readyz (certificates ready, yurt-hub-cfg synced, filters' informers synced) until 200."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise YurtHubError(f"yurthub exited ({self.proc and self.proc.returncode}); log: {self.log}\n"
                                   + self.tail())
            try:
                with urllib.request.urlopen(self.ops_url + "/v1/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started_at
            except urllib.error.HTTPError as e:
                last = e.read().decode(errors="replace").strip()
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        raise YurtHubError(f"yurthub not ready after {timeout:.0f} s ({last}); log: {self.log}\n" + self.tail())

    def online(self) -> bool:
        """YurtHub's own view of the API server: node_yurthub_server_healthy_status (1 healthy, 0 not). Its health
        checker renews the node's Lease every --heartbeat-interval-seconds (with --heartbeat-failed-retry retries);
        one failed heartbeat makes the server unhealthy, --heartbeat-healthy-threshold (2) good ones healthy again.
        The gauge is set only on those transitions: no sample yet means the healthy start."""
        with urllib.request.urlopen(self.ops_url + "/metrics", timeout=3) as r:
            text = r.read().decode()
        values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                  if line.startswith("node_yurthub_server_healthy_status{")]
        return not values or any(v == 1 for v in values)

    def tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        return ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> dict[str, float]:
        return rss(self.pid)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(AttributeError):
            self._out.close()

    def __enter__(self) -> YurtHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
