"""Settings for `edgeproxy serve`: one frozen Config built from flags, the environment and an optional file.

Precedence, highest first: a flag given on the command line, an `EDGEPROXY_<NAME>` environment variable, a line
`EDGEPROXY_<NAME>=value` in the file named by `--config` (the same file systemd's `EnvironmentFile=` reads, so one
file configures both), the default here. This module only reads settings; it opens no sockets and reads no
kubeconfig (upstream.py does). Neighbours: server.py builds the application from a Config; the ops commands
(install, debug) read and write the same names.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
from collections.abc import Mapping
from pathlib import Path

ENV_PREFIX = "EDGEPROXY_"


class ConfigError(ValueError):
    """A setting that cannot be used: a bad address, a number that is not one, a file that cannot be read."""


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    kubeconfig: str = ""
    context: str = ""  # kubeconfig context; "" = current-context
    servers: tuple[str, ...] = ()  # extra API servers tried after the kubeconfig's, in order
    listen: str = "127.0.0.1:10261"  # the proxy listener: every path on it belongs to Kubernetes clients
    ops_listen: str = "127.0.0.1:10267"  # /healthz /readyz /metrics /debug/state; "" disables it
    cache_dir: str = "/var/lib/edgeproxy/cache"  # as `edgeproxy cache` and /etc/default/edgeproxy have it
    cache: bool = True  # record responses and answer from them offline; off: a plain pass-through proxy
    cache_map_size: int = 0  # bytes of the cache's LMDB map, the most it can ever hold; 0 = cache.store's default
    # The proxy's memory bounds (issue 15), sized for a small edge host; each is a cap on one buffer of the process.
    offline_body_cache: int = 16 << 20  # joined LIST bodies kept for repeated offline LISTs of an unchanged view
    record_queue: int = 128 << 20  # response bytes waiting to be parsed for the cache (one of any size always fits)
    cache_write_queue: int = 32 << 20  # parsed bytes waiting for the cache writer; a big list waits at half of it
    probe_interval: float = 5.0  # seconds between /readyz probes of each server
    probe_timeout: float = 2.0
    offline_after: int = 3  # consecutive failed probes before a server counts as down
    online_after: int = 2  # consecutive good probes before a down server counts as up again
    connect_timeout: float = 3.0  # per upstream connection attempt, before failing over to the next server
    # Seconds a forwarded request waits for the API server's response head before it is answered locally (a hung
    # or black-holed server); half the request's own `timeout` when that is shorter; 0 disables.
    upstream_header_timeout: float = 10.0
    # HTTP/2 to the API servers (ALPN h2; HTTP/1.1 when the server does not choose it); off forces HTTP/1.1.
    upstream_http2: bool = True
    upstream_ping_idle: float = 30.0  # seconds without a frame from the server before an h2 PING; 0: no PINGs
    upstream_ping_timeout: float = 15.0  # seconds for the PING's answer, else the connection (and server) is dead
    shutdown_timeout: float = 5.0  # SIGTERM: seconds open requests get to finish
    component_aliases: tuple[tuple[str, str], ...] = (("hollow-kubelet", "kubelet"), ("hollow-proxy", "kube-proxy"))
    log_level: str = "info"
    log_format: str = "text"
    # The HTTPS listener for in-cluster clients with their own ServiceAccount tokens (issue 7). "" = off.
    tls_listen: str = ""
    tls_cert_file: str = ""  # with tls_key_file; both "" = a certificate from the proxy's own CA in tls_pki_dir
    tls_key_file: str = ""
    tls_pki_dir: str = ""  # "" = <cache_dir>/pki
    tls_sans: str = "127.0.0.1,::1,localhost"  # names of that own certificate, comma-separated
    client_ca_file: str = ""  # verify presented client certificates against it (the cluster CA)
    # HTTP/2 on the HTTPS listeners (ALPN h2 offered, then http/1.1): client-go multiplexes its watches on one
    # connection; off: HTTP/1.1 only, one connection per watch (the plain listener is always HTTP/1.1).
    listen_http2: bool = True
    # Who may act as the node (guard/trust.py): a client certificate of system:node:<node_name> on the HTTPS
    # listener; on the plain listener only with plain_as_node (anyone who can connect to it is then the node).
    node_name: str = ""  # "" = from the upstream client certificate (CN system:node:<name>)
    plain_as_node: bool = False
    # Response filters (edgeproxy/filters). The in-cluster redirect is off until an address is given: then edgeproxy
    # also serves HTTPS there (bearer tokens only) and kube-proxy's view of default/kubernetes points at it.
    in_cluster_address: str = ""
    in_cluster_cert_file: str = ""  # its serving certificate (signed by the cluster CA); "" = tls_cert_file
    in_cluster_key_file: str = ""
    service_topology: bool = True  # Services labelled edgeproxy.io/topology=pool get this pool's endpoints only
    pool_label: str = "topology.kubernetes.io/zone"  # the node label naming its pool (branch)
    filter_components: str = "kube-proxy,coredns"  # the clients whose EndpointSlices/Endpoints are filtered
    # Pool sharing (edgeproxy/pool, issue 16): the nodes of a branch elect a leader on a Lease; it keeps one upstream
    # list+watch per pool-scoped query and serves the others over TLS (node client certificates only).
    pool: bool = False
    pool_name: str = ""  # "" = the value of this node's pool_label label
    pool_listen: str = ""  # the peer listener, NODE_IP:PORT: the address followers reach this node at when it leads
    pool_resources: str = ("services,endpointslices.discovery.k8s.io,runtimeclasses.node.k8s.io,"
                           "csidrivers.storage.k8s.io")
    pool_cert_file: str = ""  # the peer listener's serving certificate, signed by the cluster CA; "" = tls_cert_file
    pool_key_file: str = ""  # "" = tls_key_file (or pool_cert_file when that file holds the key too)
    pool_ca_file: str = ""  # the cluster CA peers are verified against; "" = client_ca_file, else the kubeconfig's
    pool_tokens: str = "vouched"  # off | vouched | on: requests with their own bearer token (see pool/route.py)
    pool_namespace: str = "edgeproxy"  # where the pools' Leases live
    # The identity of the pool's own API requests (with --pool-election lease, the Lease; the leader's views): "" =
    # the upstream kubeconfig's (the node's). NodeRestriction refuses nodes any Lease outside kube-node-lease, so
    # --pool-election lease needs one (deploy/pool/lease-election.yaml makes the ServiceAccount edgeproxy-pool).
    pool_kubeconfig: str = ""
    pool_lease_duration: int = 15  # seconds; a dead leader is replaced within about this
    pool_election: str = "companion"  # companion: the companion names the leader, nodes read the Lease; lease: nodes
    # write it (needs an admission without NodeRestriction)
    cert_reload_interval: float = 10.0  # seconds between checks of the upstream credential files
    cert_warn_days: float = 30.0  # log a warning this many days before a certificate expires
    # Seconds between re-reports of the cache's health on the Node (edgeproxy.io/cache-health, read by the
    # autonomy companion); a change is reported within health_check_interval. 0 = never report.
    health_report_interval: float = 300.0
    health_check_interval: float = 10.0

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return split_address(self.listen)

    @property
    def ops_host_port(self) -> tuple[str, int] | None:
        return split_address(self.ops_listen) if self.ops_listen else None


# flag/env name -> help; the dataclass field is the name with "-" -> "_".
_HELP = {
    "kubeconfig": "kubeconfig naming the API server(s), CA and client identity (env EDGEPROXY_KUBECONFIG)",
    "context": "kubeconfig context to use (default: its current-context)",
    "servers": "extra API server URLs, comma-separated, tried in order after the kubeconfig's",
    "listen": "address of the proxy listener, HOST:PORT (default 127.0.0.1:10261)",
    "ops-listen": "address of the health/metrics listener, HOST:PORT; empty disables it (default 127.0.0.1:10267)",
    "cache-dir": "directory of the cache (default /var/lib/edgeproxy/cache, as `edgeproxy cache` reads it)",
    "cache": "on or off: record responses and answer from them offline (default on; off: forward only)",
    "cache-map-size": "bytes the cache may ever hold (its LMDB map; evicting from 3/4 of it; default 1 GiB)",
    "offline-body-cache": "bytes of joined LIST bodies kept in memory for clients relisting an unchanged view "
                          "offline; 0 keeps none (default 16777216, 16 MiB)",
    "record-queue": "bytes of responses waiting to be parsed for the cache; past it a response is forwarded but not "
                    "recorded and its view marked incomplete; one response of any size is always taken "
                    "(default 134217728, 128 MiB: two 10k-pod JSON lists)",
    "cache-write-queue": "bytes of parsed objects waiting for the cache writer; past it writes are dropped and their "
                         "views marked incomplete, and a big list is fed in as it drains (default 33554432, 32 MiB)",
    "probe-interval": "seconds between /readyz probes of each server (default 5)",
    "probe-timeout": "timeout of one probe in seconds (default 2)",
    "offline-after": "failed probes in a row before a server is down (default 3)",
    "online-after": "good probes in a row before a down server is up again (default 2)",
    "connect-timeout": "seconds to connect to one server before trying the next (default 3)",
    "upstream-header-timeout": "seconds a forwarded request waits for the API server's response headers before it "
                               "is answered locally, or half the request's own timeout= when shorter; 0 disables "
                               "(default 10)",
    "upstream-http2": "on or off: HTTP/2 to the API servers, one connection per identity, every request and watch "
                      "multiplexed (ALPN h2, HTTP/1.1 when the server does not choose it); off forces HTTP/1.1 "
                      "(default on)",
    "upstream-ping-idle": "seconds an HTTP/2 connection may receive nothing before it is PINGed; 0 disables "
                          "(default 30, as client-go)",
    "upstream-ping-timeout": "seconds for a PING's answer before the connection is dropped and its server counts as "
                             "down (default 15, as client-go)",
    "shutdown-timeout": "seconds open requests get to finish on SIGTERM (default 5)",
    "component-aliases": "User-Agent aliases, NAME=COMPONENT comma-separated (default hollow-kubelet=kubelet,...)",
    "tls-listen": "address of the HTTPS listener, HOST:PORT: kubelet with its client certificate (acts as the node), "
                  "kube-proxy, CoreDNS and pods with their own tokens; empty disables it (default)",
    "tls-cert-file": "serving certificate of the HTTPS listener (default: one from the proxy's own CA)",
    "tls-key-file": "its key",
    "tls-pki-dir": "where the proxy keeps its own CA and serving certificate (default CACHE_DIR/pki)",
    "tls-sans": "names (IPs, DNS) of that own serving certificate, comma-separated (default 127.0.0.1,::1,localhost)",
    "listen-http2": "on or off: offer HTTP/2 (ALPN h2) on the HTTPS listeners, so client-go multiplexes every "
                    "request and watch of a client on one connection; HTTP/1.1 stays for other clients and for "
                    "exec/attach/port-forward (default on); the plain listener is always HTTP/1.1",
    "client-ca-file": "CA to verify client certificates against on the HTTPS listener (the cluster CA)",
    "node-name": "this node's name (default: from the upstream kubeconfig's client certificate, "
                 "CN system:node:NAME); a client certificate of system:node:NAME acts as the node on the HTTPS "
                 "listener",
    "plain-as-node": "on or off: let every request without a bearer token on the plain-HTTP listener act as the node "
                     "(anyone who can connect to it reads and writes what the node may); default off: there, such "
                     "requests get 401, and kubelet uses the HTTPS listener with its client certificate",
    "in-cluster-address": "node-local IP:PORT that pods reach (e.g. 169.254.2.1:10268): serve HTTPS there and point "
                          "kube-proxy's default/kubernetes endpoints at it, so every pod's kubernetes.default traffic "
                          "goes through edgeproxy; needs --tls-cert-file signed by the cluster CA (default: off)",
    "in-cluster-cert-file": "serving certificate of the in-cluster address, signed by the cluster CA for "
                            "kubernetes.default.svc and the kubernetes Service's ClusterIP (default: --tls-cert-file)",
    "in-cluster-key-file": "its key (default: --tls-key-file)",
    "service-topology": "on or off: EndpointSlices of Services labelled edgeproxy.io/topology=pool keep only the "
                        "endpoints in this node's pool (default on)",
    "pool-label": "the node label naming the node's pool (default topology.kubernetes.io/zone)",
    "filter-components": "clients whose EndpointSlices and Endpoints are filtered, comma-separated "
                         "(default kube-proxy,coredns)",
    "pool": "on or off: share one view of the pool-scoped objects (Services, EndpointSlices...) with the other "
            "nodes of this node's pool: a leader elected on a Lease keeps one upstream watch per query and serves the "
            "others over TLS (default off)",
    "pool-name": "the pool (branch) this node shares with (default: the value of its --pool-label node label)",
    "pool-listen": "NODE_IP:PORT of the peer listener, the address the other nodes of the pool reach this node at "
                   "when it leads (advertised in the pool's Lease); required with --pool on",
    "pool-resources": "pool-scoped resources shared, resource[.group] comma-separated (default services,"
                      "endpointslices.discovery.k8s.io,runtimeclasses.node.k8s.io,csidrivers.storage.k8s.io); "
                      "identity-specific ones (secrets, configmaps, pods, nodes, leases...) are refused",
    "pool-cert-file": "serving certificate of the peer listener, signed by the cluster CA for the --pool-listen IP "
                      "(e.g. kubelet's /var/lib/kubelet/pki/kubelet-server-current.pem; default --tls-cert-file)",
    "pool-key-file": "its key (default --tls-key-file, or --pool-cert-file when that file holds the key too)",
    "pool-ca-file": "the cluster CA the peers' certificates are verified against (default --client-ca-file, else the "
                    "kubeconfig's certificate-authority)",
    "pool-tokens": "off, vouched or on: whether requests with their own bearer token (kube-proxy's, CoreDNS's) are "
                   "answered from the pool: vouched (default) only once the API server answered that identity the "
                   "same query",
    "pool-namespace": "namespace of the pools' Leases (default edgeproxy)",
    "pool-kubeconfig": "kubeconfig of the identity the pool's own requests use (with --pool-election lease the "
                       "Lease, and the leader's upstream lists and watches): the ServiceAccount edgeproxy-pool of "
                       "deploy/pool/lease-election.yaml; default the upstream kubeconfig's node identity, which a "
                       "cluster with NodeRestriction refuses the Lease",
    "pool-lease-duration": "seconds a pool leader's Lease lasts without renewal: a dead leader is replaced within "
                           "about this (default 15)",
    "pool-election": "companion or lease: who elects the pool's leader. companion (default): `edgeproxy companion` "
                     "names it on the pool's Lease and nodes only read it (nodes need get on leases in "
                     "--pool-namespace; deploy/pool/rbac.yaml); lease: the nodes write the Lease themselves, which "
                     "the NodeRestriction admission plugin refuses a node's identity in a standard cluster: give "
                     "them --pool-kubeconfig (deploy/pool/lease-election.yaml)",
    "cert-reload-interval": "seconds between checks of the upstream certificate files for rotation (default 10)",
    "cert-warn-days": "warn in the log this many days before a certificate expires (default 30)",
    "health-report-interval": "seconds between re-reports of the cache's health in the Node annotation "
                              "edgeproxy.io/cache-health, for the autonomy companion; 0 never reports (default 300)",
    "health-check-interval": "seconds between checks of the cache's health; a change is reported at once "
                             "(default 10)",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The serve flags. Every default is None so `load` can tell a flag given from one left out."""
    parser.add_argument("--config", default=None, help="file of EDGEPROXY_NAME=value lines (env EDGEPROXY_CONFIG)")
    for flag, help_text in _HELP.items():
        parser.add_argument(f"--{flag}", default=None, help=help_text)


def load(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """The Config from flags (args), environment and the --config file, in that order of precedence."""
    environ = os.environ if environ is None else environ
    given = {k: v for k, v in vars(args).items() if v is not None} if args is not None else {}
    raw: dict[str, str] = {}
    path = given.get("config") or environ.get(ENV_PREFIX + "CONFIG")
    if path:
        raw.update(read_env_file(Path(path)))
    raw.update({k: v for k, v in environ.items() if k.startswith(ENV_PREFIX)})
    values: dict[str, object] = {}
    for field in dataclasses.fields(Config):
        env_name = ENV_PREFIX + field.name.upper()
        if field.name in given:
            text = given[field.name]
        elif env_name in raw:
            text = raw[env_name]
        else:
            continue
        values[field.name] = _convert(field.name, field.type, text)
    config = Config(**values)  # type: ignore[arg-type]
    split_address(config.listen)
    if config.ops_listen:
        split_address(config.ops_listen)
    if config.tls_listen:
        split_address(config.tls_listen)
    for name in ("offline_body_cache", "record_queue", "cache_write_queue"):
        if getattr(config, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')}: {getattr(config, name)} is not a number of bytes")
    if config.cache_write_queue < 1 << 20 or config.record_queue < 1 << 20:
        raise ConfigError("--record-queue and --cache-write-queue take at least 1048576 bytes (1 MiB)")
    if bool(config.tls_cert_file) != bool(config.tls_key_file):
        raise ConfigError("--tls-cert-file and --tls-key-file go together")
    if config.in_cluster_address:
        in_cluster_ip(config.in_cluster_address)
        if bool(config.in_cluster_cert_file) != bool(config.in_cluster_key_file):
            raise ConfigError("--in-cluster-cert-file and --in-cluster-key-file go together")
        if not in_cluster_cert(config)[0]:
            raise ConfigError("--in-cluster-address needs --in-cluster-cert-file/--in-cluster-key-file (or "
                              "--tls-cert-file/--tls-key-file): a serving certificate signed by the cluster CA for "
                              "kubernetes.default.svc and the Service's ClusterIP (pods trust only that CA)")
    if config.pool:
        pool_settings(config)
    return config


def pool_settings(config: Config) -> dict[str, object]:
    """The checked pool settings: listen (host, port), resources, certificate and key, tokens; ConfigError."""
    from edgeproxy.pool import errors as pool_errors
    from edgeproxy.pool import policy

    if not config.pool_listen:
        raise ConfigError("--pool on needs --pool-listen NODE_IP:PORT (the address the pool's other nodes reach)")
    host, port = split_address(config.pool_listen)
    if host in ("0.0.0.0", "::", ""):
        raise ConfigError(f"--pool-listen {config.pool_listen!r}: give this node's IP on the branch's network, which "
                          "the other nodes reach (it is advertised in the pool's Lease)")
    try:
        resources = policy.parse_resources(config.pool_resources)
    except pool_errors.ConfigError as e:
        raise ConfigError(f"--pool-resources: {e}") from e
    cert = config.pool_cert_file or config.tls_cert_file
    key = config.pool_key_file or (config.tls_key_file if not config.pool_cert_file else "") or cert
    if not cert:
        raise ConfigError("--pool on needs --pool-cert-file (or --tls-cert-file): a serving certificate signed by "
                          "the cluster CA for the --pool-listen IP, which the other nodes verify")
    if config.pool_tokens not in ("off", "vouched", "on"):
        raise ConfigError(f"--pool-tokens {config.pool_tokens!r}: off, vouched or on")
    if config.pool_election not in ("companion", "lease"):
        raise ConfigError(f"--pool-election {config.pool_election!r}: companion or lease")
    if config.pool_lease_duration < 3:
        raise ConfigError(f"--pool-lease-duration {config.pool_lease_duration}: at least 3 seconds")
    return {"listen": (host, port), "resources": resources, "cert": cert, "key": key}


def in_cluster_cert(config: Config) -> tuple[str, str]:
    """(certificate, key) files the in-cluster listener serves: its own, else the HTTPS listener's."""
    if config.in_cluster_cert_file:
        return config.in_cluster_cert_file, config.in_cluster_key_file
    return config.tls_cert_file, config.tls_key_file


def in_cluster_ip(address: str) -> tuple[str, int]:
    """(IP, port) of --in-cluster-address: an IP literal pods can reach, not loopback and not unspecified
    (an EndpointSlice holds addresses, and kube-proxy cannot DNAT a pod's traffic to the node's loopback)."""
    import ipaddress

    host, port = split_address(address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as e:
        raise ConfigError(f"--in-cluster-address {address!r}: want an IP address, not {host!r}") from e
    if ip.is_loopback or ip.is_unspecified or not port:
        raise ConfigError(f"--in-cluster-address {address!r}: pods cannot reach a loopback or unspecified address "
                          "(use a node IP, or a link-local address such as 169.254.2.1 on a dummy interface)")
    return str(ip), port


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads them: '#' comments, optional quotes, blank lines."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from e
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected NAME=value")
        value = value.strip()
        if value[:1] in ("'", '"'):
            try:
                value = shlex.split(value)[0] if value[1:-1] else ""
            except (ValueError, IndexError) as e:
                raise ConfigError(f"{path}:{lineno}: bad quoting") from e
        out[key.strip()] = value
    return out


def split_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:10261' / '[::1]:10261' / ':10261' -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"bad address {address!r}: want HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def _convert(name: str, type_: object, text: object) -> object:
    if not isinstance(text, str):
        return text
    type_name = type_ if isinstance(type_, str) else getattr(type_, "__name__", str(type_))
    if type_name == "bool":
        lowered = text.strip().lower()
        if lowered not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ConfigError(f"{name}: {text!r} is not on/off")
        return lowered in ("1", "true", "yes", "on")
    try:
        if type_name == "int":
            return int(text)
        if type_name == "float":
            return float(text)
    except ValueError as e:
        raise ConfigError(f"{name}: {text!r} is not a number") from e
    if name == "servers":
        return tuple(s.strip().rstrip("/") for s in text.split(",") if s.strip())
    if name == "component_aliases":
        pairs = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            alias, sep, component = part.partition("=")
            if not sep:
                raise ConfigError(f"component-aliases: {part!r} is not NAME=COMPONENT")
            pairs.append((alias.strip().lower(), component.strip().lower()))
        return tuple(pairs)
    return text
