"""A real Kubernetes control plane for tests and benchmarks: etcd + kube-apiserver (+ kube-controller-manager).

    with Cluster(workdir, bin_dir) as c:             # or c = Cluster(...); c.start(); ...; c.stop()
        c.url, c.ca_file, c.admin_kubeconfig, c.core (kubernetes.client.CoreV1Api as admin)
        c.node_cert("edge-1") -> (cert, key)          # CN system:node:edge-1, O system:nodes
        c.kubeconfig(path, server=..., cert=..., key=..., token=..., tls_server_name=...)
        c.service_account("kube-system", "kube-proxy", cluster_role="system:node-proxier")
        c.sa_token("kube-system", "kube-proxy")       # TokenRequest, 1 h
        c.create_pods("edge-1", 20, namespace="default")
        c.request_counts()                            # {(verb, resource): n}: apiserver_request_total, LISTs
                                                      # from the audit log (the control plane's own left out)

Everything listens on 127.0.0.1 at free ports; the PKI (cluster CA, serving and client certificates, the
service-account key pair) is written under `workdir/pki` with `cryptography` (edgeproxy.tls). kube-apiserver runs
with TLS, --authorization-mode=Node,RBAC, NodeRestriction, a service-account issuer and signing key (TokenRequest and
/openid/v1/jwks work) and --service-cluster-ip-range 10.96.0.0/16. Its serving certificate carries the names
`kubernetes`, `kubernetes.default.svc...`, 127.0.0.1 and 10.96.0.1: clients reaching it through another address (a WAN
relay) set tls-server-name `kubernetes`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from edgeproxy import tls

from .procs import Proc, RealError, Started, free_port, wait_for

SERVICE_CIDR = "10.96.0.0/16"
SERVICE_IP = "10.96.0.1"
ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVER_NAME = "kubernetes"


class Pki:
    """The cluster's certificates, as files under one directory."""

    def __init__(self, d: Path) -> None:
        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        self.ca = tls.make_ca("edgeproxy-real-ca")
        self.ca_file, self.ca_key = d / "ca.crt", d / "ca.key"
        self.ca.write(self.ca_file, self.ca_key)
        sans = ["127.0.0.1", "::1", "localhost", SERVICE_IP, "kubernetes", "kubernetes.default",
                "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
        self.server = self._issue("apiserver", "kube-apiserver", sans=sans)
        self.admin = self.client("admin", "admin", ("system:masters",))
        self.kubelet_client = self.client("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
                                          ("system:masters",))
        self.controller_manager = self.client("controller-manager", "system:kube-controller-manager")
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key, self.sa_pub = d / "sa.key", d / "sa.pub"
        self.sa_key.write_bytes(sa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        self.sa_key.chmod(0o600)
        self.sa_pub.write_bytes(sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))

    def _issue(self, file: str, cn: str, orgs: tuple[str, ...] = (), sans: list[str] | None = None,
               client: bool = False) -> tuple[Path, Path]:
        cert, key = self.dir / f"{file}.crt", self.dir / f"{file}.key"
        tls.issue(self.ca, cn, orgs, sans or (), client=client).write(cert, key)
        return cert, key

    def serving(self, file: str, cn: str, sans: list[str]) -> tuple[Path, Path]:
        """A serving certificate for `sans` (names or IPs) signed by the cluster CA: (cert file, key file)."""
        return self._issue(file, cn, sans=sans)

    def client(self, file: str, cn: str, orgs: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A client certificate (CN = user, O = groups) signed by the cluster CA: (cert file, key file)."""
        return self._issue(file, cn, orgs, client=True)


def write_kubeconfig(path: Path, server: str, *, ca_file: Path | None = None, cert: Path | None = None,
                     key: Path | None = None, token: str | None = None, token_file: Path | None = None,
                     tls_server_name: str | None = None) -> Path:
    cluster: dict[str, Any] = {"server": server}
    if ca_file is not None:
        cluster["certificate-authority"] = str(ca_file)
    if tls_server_name:
        cluster["tls-server-name"] = tls_server_name
    user: dict[str, Any] = {}
    if cert is not None and key is not None:
        user["client-certificate"], user["client-key"] = str(cert), str(key)
    if token is not None:
        user["token"] = token
    if token_file is not None:
        user["tokenFile"] = str(token_file)
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "real",
           "clusters": [{"name": "real", "cluster": cluster}], "users": [{"name": "u", "user": user}],
           "contexts": [{"name": "real", "context": {"cluster": "real", "user": "u"}}]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1))  # JSON is YAML
    path.chmod(0o600)
    return path


_SAMPLE = re.compile(r'^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$', re.M)
_WATCH_LIST = re.compile(r'^apiserver_watch_list_duration_seconds_count\{([^}]*)\} ([0-9.e+]+)$', re.M)
_LONGRUNNING = re.compile(r'^apiserver_longrunning_requests\{([^}]*)\} ([0-9.e+]+)$', re.M)
_LABEL = re.compile(r'(\w+)="([^"]*)"')
# The API server's audit log, LISTs only, and not the control plane's own: kube-apiserver's Services repair loops LIST
# every Service every 3 minutes (pkg/registry/core/service/portallocator/controller/repair.go, repairLoopInterval in
# pkg/controlplane/instance.go), and kube-controller-manager's informers list what their controllers need. Counted
# from apiserver_request_total, those made "a Services LIST after reconnection" of whichever test window they fell in.
CONTROL_PLANE = ("system:apiserver", "system:kube-controller-manager")
AUDIT_POLICY = json.dumps({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",  # JSON is YAML
                           "omitStages": ["RequestReceived", "ResponseStarted"],
                           "rules": [{"level": "None", "users": list(CONTROL_PLANE)},
                                     {"level": "Metadata", "verbs": ["list"]}, {"level": "None"}]})


class Cluster(Started):
    def __init__(self, workdir: Path, bin_dir: Path, *, controller_manager: bool = False,
                 controller_manager_flags: tuple[str, ...] = (), apiserver_flags: tuple[str, ...] = (),
                 node_restriction: bool = True) -> None:
        self.dir = workdir
        self.node_restriction = node_restriction  # False: an API server without NodeRestriction (what-if runs only)
        self.bin = bin_dir
        self.want_cm = controller_manager
        self.cm_flags = tuple(controller_manager_flags)
        self.apiserver_flags = tuple(apiserver_flags)
        self.procs: dict[str, Proc] = {}
        self.audit_log = workdir / "logs" / "audit.log"  # LISTs the clients sent (request_counts)
        self.port = 0
        self.pki: Pki | None = None
        self._api: Any = None

    # ---- life cycle

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = Pki(self.dir / "pki")
        _on_free_ports(self._start_etcd)
        _on_free_ports(self._start_apiserver)
        if self.want_cm:
            self.start_controller_manager()

    def stop(self) -> None:
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            p = self.procs.pop(name, None)
            if p is not None:
                p.stop()
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()
            self._api = None
        shutil.rmtree(self.dir / "etcd-data", ignore_errors=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        assert self.pki is not None
        return self.pki.ca_file

    def _start_etcd(self) -> None:
        data = self.dir / "etcd-data"
        shutil.rmtree(data, ignore_errors=True)
        self.etcd_port, peer = free_port(), free_port()
        url = f"http://127.0.0.1:{self.etcd_port}"
        p = Proc("etcd", [self.bin / "etcd", "--name", "real", "--data-dir", data,
                          "--listen-client-urls", url, "--advertise-client-urls", url,
                          "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                          "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                          "--initial-cluster", f"real=http://127.0.0.1:{peer}",
                          "--unsafe-no-fsync", "--log-level", "warn", "--quota-backend-bytes", str(4 << 30)],
                 self.dir / "logs" / "etcd.log")
        self.procs["etcd"] = p
        wait_for(lambda: _http_ok(f"{url}/health"), 60, "etcd /health", procs=[p])

    def _start_apiserver(self) -> None:
        pki = self.pki
        assert pki is not None
        self.port = free_port()
        policy = self.dir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        self.audit_log.parent.mkdir(parents=True, exist_ok=True)
        self.audit_log.unlink(missing_ok=True)
        argv = [self.bin / "kube-apiserver",
                "--etcd-servers", f"http://127.0.0.1:{self.etcd_port}",
                "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
                "--secure-port", str(self.port),
                "--tls-cert-file", pki.server[0], "--tls-private-key-file", pki.server[1],
                "--client-ca-file", pki.ca_file,
                "--kubelet-client-certificate", pki.kubelet_client[0],
                "--kubelet-client-key", pki.kubelet_client[1],
                "--service-account-key-file", pki.sa_pub,
                "--service-account-signing-key-file", pki.sa_key,
                "--service-account-issuer", ISSUER,
                "--authorization-mode", "Node,RBAC",
                "--enable-admission-plugins", "NodeRestriction" if self.node_restriction else "NamespaceLifecycle",
                "--service-cluster-ip-range", SERVICE_CIDR,
                "--endpoint-reconciler-type", "none",  # 127.0.0.1 may not be the kubernetes Service's endpoint
                "--allow-privileged=true", "--profiling=false",
                "--cert-dir", self.dir / "apiserver-certs",
                "--audit-policy-file", policy, "--audit-log-path", self.audit_log, "--audit-log-format", "json",
                *self.apiserver_flags]
        p = Proc("kube-apiserver", argv, self.dir / "logs" / "kube-apiserver.log")
        self.procs["kube-apiserver"] = p
        self.admin_kubeconfig = write_kubeconfig(self.dir / "admin.kubeconfig", self.url, ca_file=pki.ca_file,
                                                 cert=pki.admin[0], key=pki.admin[1])
        wait_for(lambda: self.get_raw("/readyz") == b"ok", 120, "kube-apiserver /readyz", procs=[p], every=0.25)

    def start_controller_manager(self, *flags: str) -> Proc:
        """kube-controller-manager with the cluster's keys (service-account tokens, root CA publishing, CSR
        signing), no leader election, no serving port; `flags` (and the constructor's) are appended, so a test
        can pass e.g. --node-monitor-grace-period=20s or --controllers=nodelifecycle,serviceaccount-token."""
        pki = self.pki
        assert pki is not None
        old = self.procs.pop("kube-controller-manager", None)
        if old is not None:
            old.stop()
        kc = write_kubeconfig(self.dir / "controller-manager.kubeconfig", self.url, ca_file=pki.ca_file,
                              cert=pki.controller_manager[0], key=pki.controller_manager[1])
        argv = [self.bin / "kube-controller-manager", "--kubeconfig", kc,
                "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
                "--secure-port", "0", "--leader-elect=false",
                "--service-account-private-key-file", pki.sa_key, "--root-ca-file", pki.ca_file,
                "--use-service-account-credentials=true",
                "--cluster-signing-cert-file", pki.ca_file, "--cluster-signing-key-file", pki.ca_key,
                "--service-cluster-ip-range", SERVICE_CIDR,
                *self.cm_flags, *flags]
        p = Proc("kube-controller-manager", argv, self.dir / "logs" / "kube-controller-manager.log")
        self.procs["kube-controller-manager"] = p
        # ready when its service-account controller made the default ServiceAccount of `default`
        wait_for(lambda: self.core.read_namespaced_service_account("default", "default"), 90,
                 "kube-controller-manager (default ServiceAccount)", procs=[p], every=0.25)
        return p

    def stop_controller_manager(self) -> None:
        p = self.procs.pop("kube-controller-manager", None)
        if p is not None:
            p.stop()

    # ---- clients

    def admin_ssl(self) -> ssl.SSLContext:
        assert self.pki is not None
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_file))
        ctx.load_cert_chain(str(self.pki.admin[0]), str(self.pki.admin[1]))
        return ctx

    def get_raw(self, path: str, timeout: float = 10) -> bytes:
        """GET a path of the API server as admin; the body (RealError on a non-2xx status)."""
        try:
            with urllib.request.urlopen(self.url + path, context=self.admin_ssl(), timeout=timeout) as r:
                return r.read()
        except urllib.error.HTTPError as e:
            raise RealError(f"GET {path}: {e.code} {e.read()[:300]!r}") from e

    @property
    def api(self) -> Any:
        """kubernetes.client.ApiClient as admin (the `kubernetes` package)."""
        if self._api is None:
            from kubernetes import config
            self._api = config.new_client_from_config(str(self.admin_kubeconfig))
        return self._api

    @property
    def core(self) -> Any:
        from kubernetes import client
        return client.CoreV1Api(self.api)

    @property
    def rbac(self) -> Any:
        from kubernetes import client
        return client.RbacAuthorizationV1Api(self.api)

    def kubeconfig(self, path: Path, **kw: Any) -> Path:
        """A kubeconfig for this cluster (server defaults to the API server's loopback URL, CA to the cluster's)."""
        kw.setdefault("server", self.url)
        kw.setdefault("ca_file", self.ca_file)
        return write_kubeconfig(path, kw.pop("server"), **kw)

    def node_cert(self, node: str) -> tuple[Path, Path]:
        """A kubelet client certificate for `node` (CN system:node:<node>, O system:nodes)."""
        assert self.pki is not None
        return self.pki.client(f"node-{node}", f"system:node:{node}", ("system:nodes",))

    # ---- objects

    def ensure_namespace(self, name: str) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        try:
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        except ApiException as e:
            if e.status != 409:
                raise
        self._ensure(self.core.create_namespaced_service_account, name,
                     client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default")))

    def _ensure(self, create: Any, *args: Any) -> None:
        from kubernetes.client.rest import ApiException
        try:
            create(*args)
        except ApiException as e:
            if e.status != 409:
                raise

    def service_account(self, namespace: str, name: str, *, cluster_role: str | None = None,
                        rules: list[dict[str, Any]] | None = None) -> None:
        """Make a ServiceAccount, bound to `cluster_role` (an existing one, e.g. system:node-proxier) or to a new
        ClusterRole `edgeproxy-real:<name>` with `rules` ([{"apiGroups": [..], "resources": [..], "verbs": [..]}])."""
        from kubernetes import client
        self.ensure_namespace(namespace)
        self._ensure(self.core.create_namespaced_service_account, namespace,
                     client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name)))
        role = cluster_role
        if rules is not None:
            role = f"edgeproxy-real:{name}"
            self._ensure(self.rbac.create_cluster_role, client.V1ClusterRole(
                metadata=client.V1ObjectMeta(name=role),
                rules=[client.V1PolicyRule(api_groups=r["apiGroups"], resources=r["resources"], verbs=r["verbs"])
                       for r in rules]))
        if role is not None:
            self._ensure(self.rbac.create_cluster_role_binding, client.V1ClusterRoleBinding(
                metadata=client.V1ObjectMeta(name=f"edgeproxy-real:{namespace}:{name}"),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
                subjects=[client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)]))

    def sa_token(self, namespace: str, name: str, *, seconds: int = 3600,
                 audiences: list[str] | None = None) -> str:
        """A token for a ServiceAccount from the TokenRequest API."""
        from kubernetes import client
        spec = client.V1TokenRequestSpec(audiences=audiences or [ISSUER], expiration_seconds=seconds)
        tr = self.core.create_namespaced_service_account_token(
            name, namespace, client.AuthenticationV1TokenRequest(spec=spec))
        return tr.status.token

    def create_pods(self, node: str, count: int, *, namespace: str = "default", prefix: str | None = None,
                    labels: dict[str, str] | None = None, pad_bytes: int = 0) -> list[str]:
        """`count` pods bound to `node` (spec.nodeName: no scheduler needed), one container each, no service
        account token mounted. `pad_bytes` adds an annotation of that size (to make pods as big as real ones)."""
        from kubernetes import client
        self.ensure_namespace(namespace)
        prefix = prefix or f"{node}-pod"
        names = []
        ann = {"edgeproxy.test/pad": "x" * pad_bytes} if pad_bytes else None
        for i in range(count):
            name = f"{prefix}-{i}"
            pod = client.V1Pod(
                metadata=client.V1ObjectMeta(name=name, labels={"app": prefix, **(labels or {})}, annotations=ann),
                spec=client.V1PodSpec(node_name=node, automount_service_account_token=False,
                                      termination_grace_period_seconds=0,
                                      containers=[client.V1Container(name="c", image="registry.k8s.io/pause:3.10")]))
            self._ensure(self.core.create_namespaced_pod, namespace, pod)
            names.append(name)
        return names

    def create_service(self, namespace: str, name: str, *, port: int = 80,
                       selector: dict[str, str] | None = None) -> str:
        """A ClusterIP Service; its cluster IP."""
        from kubernetes import client
        self.ensure_namespace(namespace)
        svc = client.V1Service(metadata=client.V1ObjectMeta(name=name), spec=client.V1ServiceSpec(
            selector=selector or {"app": name}, ports=[client.V1ServicePort(port=port, name="p")]))
        self._ensure(self.core.create_namespaced_service, namespace, svc)
        return self.core.read_namespaced_service(name, namespace).spec.cluster_ip

    # ---- metrics

    def request_counts(self, scope: str | None = None) -> dict[tuple[str, str], int]:
        """apiserver_request_total summed per (verb, resource): e.g. {("LIST", "pods"): 3, ("WATCH", "pods"): 2}.
        Verbs are the API server's (LIST, WATCH, GET, POST, PUT, PATCH, DELETE, APPLY, CONNECT), plus "WATCHLIST":
        the watch-lists (sendInitialEvents=true) that reached their initial-events-end, from
        apiserver_watch_list_duration_seconds_count (a client with WatchListClient on lists that way). LISTs are
        counted from the audit log instead, without the control plane's own (CONTROL_PLANE): what the clients and the
        tests sent. `scope` ("cluster", "namespace", "resource") keeps that scope's requests only: kube-proxy lists
        Services and EndpointSlices cluster-wide, a test polling one namespace's is not counted with it."""
        text = self.get_raw("/metrics", timeout=30).decode()
        counts: dict[tuple[str, str], int] = {}
        for verb, pattern in ((None, _SAMPLE), ("WATCHLIST", _WATCH_LIST)):
            for labels, value in pattern.findall(text):
                d = dict(_LABEL.findall(labels))
                if (scope is not None and d.get("scope") != scope) or (verb is None and d.get("verb") == "LIST"):
                    continue
                key = (verb or d.get("verb", ""), d.get("resource", ""))
                counts[key] = counts.get(key, 0) + int(float(value))
        for key, n in self.audited_lists(scope).items():
            counts[key] = counts.get(key, 0) + n
        return counts

    def audited_lists(self, scope: str | None = None) -> dict[tuple[str, str], int]:
        """{("LIST", resource): n} of the LISTs in the audit log (completed or failed; the control plane's own are
        not logged); `scope` as request_counts()."""
        counts: dict[tuple[str, str], int] = {}
        with contextlib.suppress(FileNotFoundError), open(self.audit_log, encoding="utf-8") as f:
            for line in f:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # a line being written now: counted at the next call
                ref = event.get("objectRef") or {}
                if event.get("verb") != "list" or event.get("stage") not in ("ResponseComplete", "Panic"):
                    continue
                if scope is not None and ("namespace" if ref.get("namespace") else "cluster") != scope:
                    continue
                key = ("LIST", ref.get("resource", ""))
                counts[key] = counts.get(key, 0) + 1
        return counts

    def open_watches(self) -> dict[str, int]:
        """Watches open at the API server now, per resource (apiserver_longrunning_requests, verb WATCH): every
        client's, so compare with a figure taken before the clients of interest started."""
        counts: dict[str, int] = {}
        for labels, value in _LONGRUNNING.findall(self.get_raw("/metrics", timeout=30).decode()):
            d = dict(_LABEL.findall(labels))
            if d.get("verb") == "WATCH" and not d.get("subresource"):
                counts[d.get("resource", "")] = counts.get(d.get("resource", ""), 0) + int(float(value))
        return counts


def _on_free_ports(start: Callable[[], None], attempts: int = 3) -> None:
    """start() picks its ports with free_port() and then the process binds them: another process may take one in
    between. A start that failed with "address already in use" is made again on other ports."""
    for attempt in range(attempts):
        try:
            start()
            return
        except RealError as e:
            if "address already in use" not in str(e) or attempt == attempts - 1:
                raise


def count_diff(after: dict[tuple[str, str], int], before: dict[tuple[str, str], int],
               verb: str | None = None) -> dict[tuple[str, str], int]:
    """What changed between two request_counts() (only the keys that grew; only `verb` when given)."""
    return {k: v - before.get(k, 0) for k, v in after.items()
            if v > before.get(k, 0) and (verb is None or k[0] == verb)}


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200
