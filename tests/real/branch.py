"""A branch of the real cluster tier: N edge hosts on one LAN, reaching the API server through ONE WAN link.

    b = Branch(cluster, workdir, "branch-a", hosts=3, sims=5, proxy_flags=lambda node, ip: ())
    b.start()             # the LAN, the WAN relay, the hosts (edgeproxy + hollow kubelet + hollow kube-proxy), the sims
    b.wan.stats()         # the branch's WAN: every byte and connection of every node of the branch
    b.wan.cut() / .blackhole() / .restore()
    b.hosts[i]            # edge.EdgeHost (edge_host.netns.edge_ip: its LAN address)
    b.sims[i]             # SimNode: edgeproxy + a reflector client standing in for kube-proxy (no kubelet)
    b.views()             # {node: {"services": {ns/name: rv}, "endpointslices": {...}}} as each node's client has it
    b.stop()              # every process by PID, the namespaces (veths and bridge go with them), the host route

The network (addresses of 10.252.0.0/16, a /24 per branch taken under edge.py's lock file, so branches never collide
with each other nor with edge.py's 10.251.0.0/16 hosts):

    API server 127.0.0.1 ── Wan relay on <uplink host side> 10.252.K.253 (host namespace)
                                  │  veth epbu<K>  10.252.K.252/30
    router namespace  ep-branch-<pid>-<K>: uplink 10.252.K.254, bridge br0 10.252.K.1/25, forwarding on
                                  │  one veth per node into br0
    node namespaces   ep-branch-<pid>-<K>-<i>: lan0 10.252.K.(2+i)/25, default route via 10.252.K.1

Every node of the branch reaches the API server only through the branch's WAN relay (its edgeproxy's upstream is the
relay's address), and the other nodes directly over the LAN (what pool sharing's peer connections use). The test
process (host namespace) reaches every node's address through the route to the branch LAN.

Hosts run edgeproxy, a hollow kubelet (labelled with the branch's pool, topology.kubernetes.io/zone=<branch>) and a
hollow kube-proxy; CoreDNS is left out (CPU). A SimNode is a node the machine could not afford a kubelet for: a Node
object (made as admin, same label), the node's own edgeproxy (its own node certificate, cache and namespace) and a
reflector client (tests/real/reflector.py) that lists and watches Services and EndpointSlices through it exactly as
kube-proxy's informers do (protobuf, kube-proxy's label selector, its ServiceAccount token, watch-list or list+watch).
What a SimNode does not do: the kubelet's own traffic (its pods, Node status, Lease), which is node-specific and never
shared, so it adds the same bytes with sharing on or off.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .cluster import Cluster
from .edge import LOCK, TLS_PORT, EdgeHost
from .procs import Proc, RealError, Started, wait_for
from .reflector import QUERIES
from .wan import Wan

NET = ipaddress.ip_network("10.252.0.0/16")
ZONE = "topology.kubernetes.io/zone"
HOST_COMPONENTS = ("edgeproxy", "kubelet", "kube-proxy")
SIM_COMPONENTS = ("edgeproxy",)
HERE = Path(__file__).parent
POOL_PORT = 10270  # each node's peer listener, on its LAN address
POOL_NAMESPACE = "edgeproxy"  # where the pools' Leases live (edgeproxy's default)
POOL_RBAC = HERE.parents[1] / "deploy" / "pool" / "rbac.yaml"
COMPANION_MANIFEST = HERE.parents[1] / "deploy" / "companion" / "companion.yaml"
COMPANION_NS = "edgeproxy-system"

Flags = Callable[[str, str], Sequence[str]]  # (node, its LAN address) -> edgeproxy flags


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        raise RealError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def _sweep_stale() -> None:
    """Namespaces of branches whose test process is gone (a crashed or killed run)."""
    for line in _ip("netns", "list").stdout.splitlines():
        m = re.match(r"ep-branch-(\d+)-\S+", line)
        if m and not Path(f"/proc/{m.group(1)}").exists():
            _ip("netns", "del", m.group(0), check=False)


class NodeNet:
    """One node's namespace on the branch LAN (the shape edge.EdgeHost expects of its `netns`)."""

    def __init__(self, name: str, edge_ip: str, host_ip: str) -> None:
        self.name, self.edge_ip, self.host_ip = name, edge_ip, host_ip

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True,
                              timeout=timeout)


class Lan:
    """The router namespace with the branch's bridge, its uplink to the host, and the nodes' namespaces."""

    def __init__(self) -> None:
        self.slot = -1
        self.router = ""
        self.nodes: list[NodeNet] = []

    def create(self) -> Lan:
        LOCK.touch(exist_ok=True)
        with open(LOCK) as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _sweep_stale()
            taken = set(re.findall(r"inet (\d+\.\d+\.\d+\.\d+)/", _ip("-o", "-4", "addr").stdout))
            for slot in range(256):
                if str(NET[slot * 256 + 253]) not in taken:
                    break
            else:
                raise RealError("no free /24 in 10.252.0.0/16 for a branch")
            self.slot = slot
            base = slot * 256
            self.gateway, self.uplink_host, self.uplink_router = (str(NET[base + 1]), str(NET[base + 253]),
                                                                  str(NET[base + 254]))
            self.lan = f"{NET[base]}/25"
            self.router = f"ep-branch-{os.getpid()}-{slot}"
            self.host_if = f"epbu{slot}"
            _ip("link", "del", self.host_if, check=False)  # left by a run whose namespace is gone
            _ip("netns", "add", self.router)
            try:
                r = self.router
                _ip("link", "add", self.host_if, "type", "veth", "peer", "name", "uplink", "netns", r)
                _ip("addr", "add", f"{self.uplink_host}/30", "dev", self.host_if)
                _ip("link", "set", self.host_if, "up")
                for args in (("link", "set", "lo", "up"), ("addr", "add", f"{self.uplink_router}/30", "dev", "uplink"),
                             ("link", "set", "uplink", "up"), ("link", "add", "br0", "type", "bridge"),
                             ("addr", "add", f"{self.gateway}/25", "dev", "br0"), ("link", "set", "br0", "up"),
                             ("route", "add", "default", "via", self.uplink_host)):
                    _ip("-n", r, *args)
                sysctl = subprocess.run(["ip", "netns", "exec", r, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                                        capture_output=True, text=True, timeout=30)
                if sysctl.returncode != 0:
                    raise RealError(f"forwarding in {r}: {sysctl.stderr.strip()}")
                _ip("route", "add", self.lan, "via", self.uplink_router)
            except BaseException:
                self.delete()
                raise
        return self

    def add_node(self) -> NodeNet:
        """A node's namespace, its veth on the bridge, the next address of the LAN."""
        i = len(self.nodes)
        if i >= 120:
            raise RealError("a branch LAN holds 120 nodes")
        ns = f"{self.router}-{i}"
        ip = str(NET[self.slot * 256 + 2 + i])
        _ip("netns", "add", ns)
        node = NodeNet(ns, ip, self.uplink_host)
        self.nodes.append(node)
        _ip("-n", self.router, "link", "add", f"n{i}", "type", "veth", "peer", "name", "lan0", "netns", ns)
        _ip("-n", self.router, "link", "set", f"n{i}", "master", "br0")
        _ip("-n", self.router, "link", "set", f"n{i}", "up")
        for args in (("link", "set", "lo", "up"), ("addr", "add", f"{ip}/25", "dev", "lan0"),
                     ("link", "set", "lan0", "up"), ("route", "add", "default", "via", self.gateway)):
            _ip("-n", ns, *args)
        return node

    def delete(self) -> None:
        for node in self.nodes:
            _ip("netns", "del", node.name, check=False)
        self.nodes = []
        if self.router:
            _ip("route", "del", self.lan, check=False)
            _ip("netns", "del", self.router, check=False)  # takes the bridge and the veths with it
            _ip("link", "del", self.host_if, check=False)
            self.router = ""


class SimNode:
    """A simulated node: its own namespace and edgeproxy (an EdgeHost with edgeproxy only) plus a reflector client
    standing in for its kube-proxy."""

    def __init__(self, host: EdgeHost, *, watchlist: bool | None) -> None:
        self.host = host
        self.node = host.node
        self.watchlist = watchlist
        self.view_file = host.dir / "reflector-view.json"
        self.proc: Proc | None = None

    def start_reflector(self) -> Proc:
        self.stop_reflector()
        self.view_file.unlink(missing_ok=True)
        h = self.host
        argv = [sys.executable, "-m", "tests.real.reflector", "--server", f"https://127.0.0.1:{TLS_PORT}",
                "--ca", h.cache_dir / "pki" / "ca.crt", "--token", h.tokens["kube-proxy"], "--out", self.view_file,
                "--watchlist", "off" if self.watchlist is False else "on"]
        self.proc = Proc("reflector", argv, h.dir / "logs" / "reflector.log", netns=h.netns.name,
                         env={"PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), *sys.path])})
        wait_for(self.synced, 60, f"{self.node}'s reflector synced", procs=[self.proc])
        return self.proc

    def stop_reflector(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def view(self) -> dict[str, Any]:
        try:
            return json.loads(self.view_file.read_text())
        except (OSError, ValueError):
            return {}

    def synced(self) -> bool:
        return bool(self.view().get("synced"))


def apply_manifest(cluster: Cluster, path: Path, kinds: tuple[str, ...] = ()) -> None:
    """Create every object of a YAML manifest (of `kinds`, when given) as admin; those that exist are left as they
    are."""
    import yaml
    from kubernetes import utils

    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or (kinds and doc.get("kind") not in kinds):
            continue
        try:
            utils.create_from_dict(cluster.api, doc)
        except utils.FailToCreateError as e:
            if any(getattr(x, "status", None) != 409 for x in e.api_exceptions):
                raise


def grant_pool(cluster: Cluster) -> None:
    """What the README tells an operator to apply once per cluster for pool sharing: deploy/pool/rbac.yaml, as
    shipped."""
    apply_manifest(cluster, POOL_RBAC)


class Companion:
    """`edgeproxy companion` as its own process with deploy/companion/companion.yaml's ServiceAccount and RBAC (no
    webhook: --listen ''): here for its pool controller, which names each pool's leader on the pool's Lease (nodes
    cannot write it: NodeRestriction). A node may lead while its kubelet renews its Lease in kube-node-lease within
    `node_grace` seconds (through its edgeproxy: a dead edgeproxy stops the renewals) and its edgeproxy announced its
    peer address on its Node; simulated nodes have no kubelet, so they only follow."""

    def __init__(self, cluster: Cluster, workdir: Path, *, pool_lease: int = 6, node_grace: float = 12.0) -> None:
        self.cluster, self.dir = cluster, workdir
        self.pool_lease, self.node_grace = pool_lease, node_grace
        self.proc: Proc | None = None

    def start(self) -> Proc:
        apply_manifest(self.cluster, COMPANION_MANIFEST,
                       ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"))
        kubeconfig = self.cluster.kubeconfig(self.dir / "companion.kubeconfig",
                                             token=self.cluster.sa_token(COMPANION_NS, "edgeproxy-companion"))
        argv = [sys.executable, "-m", "edgeproxy", "companion", "--kubeconfig", kubeconfig, "--namespace",
                COMPANION_NS, "--listen", "", "--retry-period", "1", "--lease-duration", "5", "--renew-deadline", "4",
                "--pool-lease-duration", str(self.pool_lease), "--pool-node-grace", str(self.node_grace)]
        self.proc = Proc("companion", argv, self.dir / "logs" / "companion.log",
                         env={"PYTHONPATH": os.pathsep.join([str(HERE.parents[1]), *sys.path])})
        return self.proc

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def pool_flags(cluster: Cluster, *extra: str) -> Flags:
    """edgeproxy flags for sharing on: --pool on, the peer listener on the node's LAN address with a serving
    certificate the cluster CA signed for it (followers verify it), and `extra` flags."""
    assert cluster.pki is not None
    pki = cluster.pki

    def flags(node: str, ip: str) -> tuple[str, ...]:
        cert, key = pki.serving(f"pool-{node}", node, [ip])
        return ("--pool", "on", "--pool-listen", f"{ip}:{POOL_PORT}", "--pool-cert-file", str(cert),
                "--pool-key-file", str(key), *extra)

    return flags


def lease_holder(cluster: Cluster, pool: str, namespace: str = POOL_NAMESPACE) -> str:
    """The node holding the pool's Lease ("" when there is none, or it was released)."""
    try:
        doc = json.loads(cluster.get_raw(
            f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/edgeproxy-pool-{pool}"))
    except RealError:
        return ""
    return str((doc.get("spec") or {}).get("holderIdentity") or "")


class Branch(Started):
    def __init__(self, cluster: Cluster, workdir: Path, name: str = "branch-a", *, hosts: int = 3, sims: int = 0,
                 watchlist: bool | None = None, proxy_flags: Flags | None = None,
                 host_components: tuple[str, ...] = HOST_COMPONENTS) -> None:
        self.cluster = cluster
        self.dir = workdir
        self.name = name
        self.n_hosts, self.n_sims = hosts, sims
        self.watchlist = watchlist
        self.proxy_flags: Flags = proxy_flags or (lambda node, ip: ())
        self.host_components = host_components
        self.lan = Lan()
        self.wan: Wan | None = None
        self.hosts: list[EdgeHost] = []
        self.sims: list[SimNode] = []
        self.companion: Companion | None = None

    @property
    def nodes(self) -> list[EdgeHost]:
        """Every node's EdgeHost: the hosts, then the simulated nodes'."""
        return [*self.hosts, *(s.host for s in self.sims)]

    def node_names(self) -> list[str]:
        return [h.node for h in self.nodes]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lan.create()
        self.wan = Wan(self.lan.uplink_host, ("127.0.0.1", self.cluster.port)).start()
        for i in range(self.n_hosts):
            node = f"{self.name}-{i}"
            h = self._host(node, self.host_components,
                           kubelet_flags=(f"--node-labels={ZONE}={self.name}",))
            self.hosts.append(h)
            h.start()
        for i in range(self.n_sims):
            node = f"{self.name}-sim-{i}"
            self._register_node(node)
            sim = SimNode(self._host(node, SIM_COMPONENTS), watchlist=self.watchlist)
            self.sims.append(sim)
            sim.host.start()
            sim.start_reflector()

    def _host(self, node: str, components: tuple[str, ...], kubelet_flags: tuple[str, ...] = ()) -> EdgeHost:
        net = self.lan.add_node()
        return EdgeHost(self.cluster, self.dir / node, node, watchlist=self.watchlist, netns=net, wan=self.wan,
                        proxy_flags=tuple(self.proxy_flags(node, net.edge_ip)), kubelet_flags=kubelet_flags,
                        components=components)

    def _register_node(self, node: str) -> None:
        """The Node object of a simulated node (no kubelet registers it), labelled with the branch's pool."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        try:
            self.cluster.core.create_node(client.V1Node(metadata=client.V1ObjectMeta(
                name=node, labels={ZONE: self.name, "edgeproxy.test/simulated": "true"})))
        except ApiException as e:
            if e.status != 409:
                raise

    def stop(self) -> None:
        if self.companion is not None:
            self.companion.stop()
            self.companion = None
        for sim in self.sims:
            sim.stop_reflector()
        for h in self.nodes:
            h.stop()
        self.hosts, self.sims = [], []
        if self.wan is not None:
            self.wan.stop()
            self.wan = None
        self.lan.delete()

    # ---- edgeproxy across the branch

    def restart_proxies(self, proxy_flags: Flags | None = None) -> None:
        """Every node's edgeproxy stopped, then started again (with new flags when given); kubelets, kube-proxies and
        reflectors keep running and reconnect, as they would across an edgeproxy upgrade."""
        if proxy_flags is not None:
            self.proxy_flags = proxy_flags
        for h in self.nodes:
            h.stop_component("edgeproxy")
        for h in self.nodes:
            h.proxy_flags = tuple(self.proxy_flags(h.node, h.netns.edge_ip))
            h.start_component("edgeproxy")

    def sharing(self, on: bool, *extra: str, pool_lease: int = 6, node_grace: float = 12.0,
                elect: bool = True) -> None:
        """Every edgeproxy restarted with pool sharing on (`extra` flags added) or off; on: deploy/pool/rbac.yaml
        applied and, with `elect`, the companion started (start_companion)."""
        if on:
            grant_pool(self.cluster)
            if elect:
                self.start_companion(pool_lease, node_grace)
        elif self.companion is not None:
            self.companion.stop()
            self.companion = None
        self.restart_proxies(pool_flags(self.cluster, *extra) if on else (lambda node, ip: ()))

    def start_companion(self, pool_lease: int = 6, node_grace: float = 12.0) -> None:
        """The companion (once): its pool controller elects the branch's leader, `pool_lease` seconds a pool Lease
        lasts, `node_grace` seconds a leader's node Lease may go unrenewed."""
        if self.companion is None:
            self.companion = Companion(self.cluster, self.dir, pool_lease=pool_lease, node_grace=node_grace)
            self.companion.start()

    def node(self, name: str) -> EdgeHost:
        return next(h for h in self.nodes if h.node == name)

    def leader(self) -> str:
        """The node holding the branch's pool Lease ("" when none)."""
        return lease_holder(self.cluster, self.name)

    def roles(self) -> dict[str, str]:
        """Each node's role in the pool as its edgeproxy says (edgeproxy_pool_role: leader, follower, candidate; ""
        when it does not say)."""
        out = {}
        for h in self.nodes:
            try:
                m = re.search(r'^edgeproxy_pool_role\{role="(\w+)"\} 1(?:\.0)?$', h.proxy_metrics(), re.M)
            except OSError:
                m = None
            out[h.node] = m.group(1) if m else ""
        return out

    def settled(self) -> bool:
        """A leader holds the Lease and every node knows its place (leader or follower)."""
        return bool(self.leader()) and all(r in ("leader", "follower") for r in self.roles().values())

    # ---- what the nodes see

    def views(self) -> dict[str, dict[str, dict[str, str]]]:
        """Each node's view of Services and EndpointSlices, {node: {resource: {ns/name: resourceVersion}}}: a simulated
        node's as its reflector holds it, a host's as its edgeproxy serves kube-proxy (a LIST with kube-proxy's
        token and selector: the hollow kube-proxy exposes no view of its own)."""
        out: dict[str, dict[str, dict[str, str]]] = {}
        for h in self.hosts:
            out[h.node] = {res: served_list(h, res) for res in QUERIES}
        for s in self.sims:
            v = s.view()
            out[s.node] = {res: v.get(res, {}) for res in QUERIES}
        return out


def _query(resource: str) -> str:
    path, selectors = QUERIES[resource]
    return f"{path}?{urlencode(sorted(selectors.items()))}"


def served_list(h: EdgeHost, resource: str) -> dict[str, str]:
    """{ns/name: resourceVersion} of a LIST through the node's edgeproxy as kube-proxy: its token, its selectors, and
    protobuf as it asks (so a pool leader answers it from kube-proxy's own view instead of starting another)."""
    code = ("import json, ssl, sys, urllib.request\n"
            "sys.path[:0] = json.loads(sys.argv[4])\n"
            "from tests.real.reflector import ACCEPT, UA, _key, _list\n"
            "ctx = ssl.create_default_context(cafile=sys.argv[3])\n"
            "req = urllib.request.Request(sys.argv[1], headers={'Authorization': 'Bearer ' + sys.argv[2],"
            " 'User-Agent': UA, 'Accept': ACCEPT})\n"
            "r = urllib.request.urlopen(req, context=ctx, timeout=10)\n"
            "rv, cont, metas = _list(r.headers.get('Content-Type', ''), r.read())\n"
            "print(json.dumps({_key(m): m.resource_version for m in metas}))\n")
    r = h.netns.run(sys.executable, "-c", code, f"https://127.0.0.1:{TLS_PORT}{_query(resource)}",
                    h.tokens["kube-proxy"], str(h.cache_dir / "pki" / "ca.crt"),
                    json.dumps([str(HERE.parents[1]), *sys.path]))
    if r.returncode != 0:
        raise RealError(f"LIST {resource} through {h.node}'s edgeproxy: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout)


def api_view(cluster: Cluster) -> dict[str, dict[str, str]]:
    """The API server's Services and EndpointSlices as kube-proxy selects them, {resource: {ns/name: rv}}. Read one
    namespace at a time, so these LISTs (scope "namespace") never count with the nodes' cluster-wide ones."""
    out: dict[str, dict[str, str]] = {res: {} for res in QUERIES}
    namespaces = [n["metadata"]["name"] for n in json.loads(cluster.get_raw("/api/v1/namespaces"))["items"]]
    for ns in namespaces:
        for res in QUERIES:
            path, selectors = QUERIES[res]
            prefix, _, plural = path.rpartition("/")
            query = urlencode(sorted(selectors.items()))
            doc = json.loads(cluster.get_raw(f"{prefix}/namespaces/{ns}/{plural}?{query}"))
            out[res].update({f"{ns}/{i['metadata']['name']}": i["metadata"]["resourceVersion"] for i in doc["items"]})
    return out



PEER_GET = """
import json, ssl, sys, http.client
host, port, ca, cert, key, path = sys.argv[1:7]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False  # the leader's certificate names its IP; verified against the cluster CA all the same
if cert:
    ctx.load_cert_chain(cert, key)
try:
    c = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=10)
    c.request("GET", path, headers={"Accept": "application/vnd.kubernetes.protobuf", "User-Agent": "peer-probe"})
    r = c.getresponse()
    print(json.dumps({"status": r.status, "body": r.read().decode(errors="replace")}))
except (ssl.SSLError, ConnectionError, OSError) as e:
    print(json.dumps({"status": 0, "body": "", "error": repr(e)}))
"""


def peer_get(h: EdgeHost, address: tuple[str, int], path: str, cert: Path | None = None,
             key: Path | None = None, ca: Path | None = None) -> dict[str, Any]:
    """GET `path` from a peer listener at `address`, from node `h`'s namespace, with a client certificate (or none),
    in protobuf as the nodes' clients ask (so a leader answers from the view they use): {"status": HTTP status or 0
    when TLS or the connection failed, "body": the body as text (protobuf: names and kinds readable), "error": why}."""
    r = h.netns.run(sys.executable, "-c", PEER_GET, address[0], str(address[1]), str(ca or h.cluster.ca_file),
                    str(cert or ""), str(key or ""), path)
    if r.returncode != 0:
        raise RealError(f"peer GET {path}: {r.stderr.strip()[-500:]}")
    return json.loads(r.stdout)
