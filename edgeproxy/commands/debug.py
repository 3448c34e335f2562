"""`edgeproxy debug check | diagnose COMPONENT | collect`: what an operator runs on an edge host when something is off.

- check: configuration, files and permissions, certificates, each upstream server (reachable? TLS trust? credentials
  accepted? latency), the running proxy (ops listener), the cache (every record read back). One line per finding,
  a `fix:` line under each problem, a verdict at the end; exit 0 when nothing failed.
- diagnose COMPONENT: what that component asked, what it got, its last errors (the running proxy's
  /debug/components on the ops listener), and the views the cache holds for it.
- collect: one tarball for a ticket: configuration with secrets redacted, the check report, recent logs, a metrics
  snapshot, the proxy's state, cache stats. No secret value goes in (tokens, keys, credentials are redacted and
  every member is scrubbed once more before it is written).

Boundary: reads, never repairs; talks to the upstream servers only to probe /readyz. Neighbours: config.py (the same
settings `serve` reads), upstream.py (the same kubeconfig and TLS code the proxy uses), tls.py (certificates),
server.py (the ops listener's JSON), cache.store (verify, stats), logs.py (the records behind /debug/components).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import http.client
import io
import json
import os
import platform
import pwd
import re
import socket
import ssl
import stat
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edgeproxy import config as config_mod
from edgeproxy import tls, upstream

DEFAULT_ENV_FILE = "/etc/default/edgeproxy"
KUBELET_DROPIN = "/etc/systemd/system/kubelet.service.d/20-edgeproxy.conf"
SERVICE_USER = "edgeproxy"
WARN_DAYS = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    status: str  # "ok" | "warn" | "fail"
    area: str
    message: str
    fix: str = ""


@dataclasses.dataclass(slots=True)
class Report:
    findings: list[Finding] = dataclasses.field(default_factory=list)

    def add(self, status: str, area: str, message: str, fix: str = "") -> Finding:
        finding = Finding(status, area, message, fix)
        self.findings.append(finding)
        return finding

    @property
    def failed(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "fail"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.status == "warn"]

    def render(self) -> str:
        marks = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}
        lines = [f"{marks[f.status]}  {f.area:<12} {f.message}" + (f"\n      {'':<12} fix: {f.fix}" if f.fix else "")
                 for f in self.findings]
        if self.failed:
            verdict = f"verdict: {len(self.failed)} problem(s) to fix"
        elif self.warnings:
            verdict = "verdict: working"
        else:
            verdict = "verdict: healthy"
        if self.warnings:
            verdict += f", {len(self.warnings)} warning(s)"
        return "\n".join([*lines, verdict]) + "\n"


# ---- settings -------------------------------------------------------------------------------------------------------


def load_settings(args: argparse.Namespace, report: Report | None = None) -> config_mod.Config | None:
    """The Config `serve` would run with: flags here, the environment, and the env file systemd gives the unit."""
    env_file = args.config or os.environ.get("EDGEPROXY_CONFIG") or (
        DEFAULT_ENV_FILE if os.path.exists(DEFAULT_ENV_FILE) else None)
    ns = argparse.Namespace(config=env_file, kubeconfig=args.kubeconfig, cache_dir=args.cache_dir,
                            ops_listen=args.ops_listen)
    try:
        cfg = config_mod.load(ns)
    except config_mod.ConfigError as e:
        if report is not None:
            report.add("fail", "config", str(e), f"edit {env_file or 'the EDGEPROXY_* settings'}")
        return None
    if report is not None:
        source = env_file or "environment and defaults"
        report.add("ok", "config", f"{source}: listen {cfg.listen}, ops {cfg.ops_listen or 'off'}, "
                                   f"cache {cfg.cache_dir}")
    return cfg


# ---- files and permissions -------------------------------------------------------------------------------------------


def _service_uid() -> int | None:
    try:
        return pwd.getpwnam(SERVICE_USER).pw_uid
    except KeyError:
        return None


def check_files(cfg: config_mod.Config, report: Report) -> upstream.Credentials | None:
    creds: upstream.Credentials | None = None
    if not cfg.kubeconfig:
        report.add("fail", "files", "no upstream kubeconfig configured",
                   "set EDGEPROXY_KUBECONFIG (write one with `edgeproxy kubeconfig --component upstream`)")
    else:
        try:
            creds = upstream.load_kubeconfig(cfg.kubeconfig, cfg.context, cfg.servers)
        except upstream.UpstreamError as e:
            report.add("fail", "files", str(e), "fix the kubeconfig or the files it names")
        else:
            report.add("ok", "files", f"kubeconfig {cfg.kubeconfig}: {', '.join(creds.servers)}")
    cache_dir = Path(cfg.cache_dir)
    writable = unit_writable_paths()
    if cfg.cache and writable is not None and not any(_under(cache_dir, w) for w in
                                                      [*writable, "/tmp", "/var/tmp", "/dev/shm"]):
        # The cause an operator cannot see from the directory itself: the service's sandbox. It starts, says
        # online, and runs with no cache at all (nothing served offline).
        home = (writable or ["/var/lib/edgeproxy"])[0]
        report.add("fail", "files", f"cache directory {cache_dir} is outside the unit's ReadWritePaths= "
                   f"({' '.join(writable)}): under ProtectSystem=strict the service cannot write it and runs without "
                   "a cache, so nothing is answered offline",
                   f"set EDGEPROXY_CACHE_DIR under {home} in {DEFAULT_ENV_FILE}, or let the unit write it: "
                   f"systemctl edit edgeproxy ([Service] ReadWritePaths={cache_dir}); then systemctl restart edgeproxy")
        st = None
    else:
        st = _stat_cache_dir(cache_dir, report)
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
        uid = _service_uid()
        if mode & 0o077:
            report.add("fail", "files", f"cache directory {cache_dir} is mode {mode:04o}: others can read the cache",
                       f"chmod 0700 {cache_dir}")
        elif uid is not None and st.st_uid != uid:
            report.add("warn", "files", f"cache directory {cache_dir} is not owned by {SERVICE_USER}",
                       f"chown -R {SERVICE_USER}:{SERVICE_USER} {cache_dir}")
        else:
            report.add("ok", "files", f"cache directory {cache_dir} (mode {mode:04o})")
    if creds is not None:
        for key_file in {creds.key_file} - {None}:
            try:
                mode = stat.S_IMODE(os.stat(key_file).st_mode)
            except OSError as e:
                report.add("fail", "files", f"client key {key_file}: {e}", "check the kubeconfig's client-key")
                continue
            if mode & 0o077:
                report.add("warn", "files", f"client key {key_file} is mode {mode:04o}", f"chmod 0600 {key_file}")
    return creds


UNIT_FILE = "/etc/systemd/system/edgeproxy.service"
UNIT_DROPIN_DIRS = ("/etc/systemd/system/edgeproxy.service.d", "/run/systemd/system/edgeproxy.service.d")


def unit_writable_paths(unit_file: str | None = None, dropin_dirs: Iterable[str] | None = None) -> list[str] | None:
    """The paths edgeproxy.service may write under ProtectSystem=strict (ReadWritePaths=, StateDirectory=,
    CacheDirectory=, ... as the unit file and its drop-ins set them), or None when there is no such unit or it does
    not make the file system read-only."""
    texts = []
    for path in [unit_file or UNIT_FILE, *sorted(str(p) for d in (dropin_dirs if dropin_dirs is not None
                                                                    else UNIT_DROPIN_DIRS)
                                                 for p in Path(d).glob("*.conf"))]:
        try:
            texts.append(Path(path).read_text())
        except OSError:
            if path == (unit_file or UNIT_FILE):
                return None
    protect = ""
    writable: list[str] = []
    roots = {"StateDirectory": "/var/lib", "CacheDirectory": "/var/cache", "LogsDirectory": "/var/log",
             "RuntimeDirectory": "/run"}
    for text in texts:
        for key, value in re.findall(r"^\s*(\w+)\s*=\s*(.*?)\s*$", text, re.M):
            if key == "ProtectSystem":
                protect = value
            elif key == "ReadWritePaths":
                writable = [] if not value else writable + [v.lstrip("-+") for v in value.split()]
            elif key in roots and value:
                writable += [f"{roots[key]}/{v.split(':')[0]}" for v in value.split()]
    if protect != "strict":
        return None
    return list(dict.fromkeys(writable))


def _under(path: Path, parent: str) -> bool:
    return os.path.normpath(path) == os.path.normpath(parent) or os.path.normpath(path).startswith(
        os.path.normpath(parent).rstrip("/") + "/")


def _stat_cache_dir(cache_dir: Path, report: Report) -> os.stat_result | None:
    try:
        return cache_dir.stat()
    except FileNotFoundError:
        report.add("warn", "files", f"cache directory {cache_dir} does not exist yet",
                   "systemd-tmpfiles --create /etc/tmpfiles.d/edgeproxy.conf (or start the service once)")
    except OSError as e:
        report.add("fail", "files", f"cache directory {cache_dir}: {e}", f"ls -ld {cache_dir}")
    return None


# ---- certificates ---------------------------------------------------------------------------------------------------


def check_certificate(report: Report, what: str, path: str | None, data: bytes | None = None,
                      warn_days: float = WARN_DAYS) -> None:
    from cryptography import x509

    source = path or "inline data"
    try:
        if path:
            cert = tls.load_certificate(path)
        elif data:
            cert = x509.load_pem_x509_certificates(data[data.find(tls.PEM_CERT_BEGIN):])[0]
        else:
            return
    except (OSError, ValueError) as e:
        report.add("fail", "certificate", f"{what} {source}: unreadable: {e}",
                   f"replace {source} with a PEM certificate")
        return
    now = datetime.datetime.now(datetime.UTC)
    days = tls.seconds_left(cert, now) / 86400
    until = cert.not_valid_after_utc.date().isoformat()
    subject = cert.subject.rfc4514_string()
    if days < 0:
        fix = ("kubelet rotates the node certificate: check `journalctl -u kubelet | grep -i certificate`, then "
               "`systemctl start edgeproxy-credentials`" if what == "client" else f"renew {source}")
        report.add("fail", "certificate", f"{what} certificate {source} ({subject}) EXPIRED on {until}, "
                   f"{-days:.0f} days ago", fix)
    elif cert.not_valid_before_utc > now:
        report.add("fail", "certificate", f"{what} certificate {source} is not valid before "
                   f"{cert.not_valid_before_utc.isoformat()}", "check the host clock (timedatectl)")
    elif days < warn_days:
        report.add("warn", "certificate", f"{what} certificate {source} ({subject}) expires in {days:.0f} days "
                   f"({until})", "make sure its rotation works before then")
    else:
        report.add("ok", "certificate", f"{what} certificate {source} ({subject}) valid until {until}")


def check_certificates(creds: upstream.Credentials, cfg: config_mod.Config, report: Report) -> None:
    check_certificate(report, "cluster CA", creds.ca_file, creds.ca_data)
    check_certificate(report, "client", creds.cert_file, creds.cert_data)
    for what, name in (("serving", "tls_cert_file"), ("client CA", "client_ca_file")):
        path = getattr(cfg, name, "")
        if path:
            check_certificate(report, what, path)
    if creds.has_client_cert:
        try:
            upstream.ssl_context(creds)
        except (ssl.SSLError, OSError) as e:
            report.add("fail", "certificate", f"client certificate and key do not load together: {e}",
                       "the key must be the certificate's (a rotation half done?); re-run edgeproxy-credentials")


# ---- upstream reachability ------------------------------------------------------------------------------------------


def probe_server(url: str, creds: upstream.Credentials, timeout: float) -> Finding:
    """Connect, handshake and GET /readyz as the proxy would; one finding that says what is wrong and what to do."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    area = "upstream"
    try:
        ctx = upstream.ssl_context(creds) if parts.scheme == "https" else None
    except (ssl.SSLError, OSError) as e:
        return Finding("fail", area, f"{url}: cannot build TLS settings: {e}", "fix the kubeconfig's CA/client files")
    started = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except TimeoutError:
        return Finding("fail", area, f"{url}: UNREACHABLE: no answer within {timeout:.0f} s",
                       "check the WAN link, routes and firewalls to the API server; the proxy serves from its cache")
    except OSError as e:
        return Finding("fail", area, f"{url}: UNREACHABLE: {e.strerror or e}",
                       "check the API server address and that it is up; the proxy serves from its cache")
    connect_ms = (time.monotonic() - started) * 1000
    try:
        if ctx is not None:
            try:
                sock = ctx.wrap_socket(sock, server_hostname=creds.tls_server_name or host)
            except ssl.SSLCertVerificationError as e:
                reason = e.verify_message or str(e)
                if "hostname" in reason.lower() or "ip address mismatch" in reason.lower():
                    return Finding("fail", area, f"{url}: the server's certificate is not for {host}: {reason}",
                                   "use the address in the certificate, or set tls-server-name in the kubeconfig")
                ca = creds.ca_file or ("certificate-authority-data" if creds.ca_data else "the system CAs")
                return Finding("fail", area, f"{url}: WRONG CA: the server's certificate does not verify against "
                               f"{ca} ({reason})",
                               "put the cluster's CA in the kubeconfig (kubeadm: /etc/kubernetes/pki/ca.crt)")
            except (ssl.SSLError, OSError) as e:
                return Finding("fail", area, f"{url}: TLS handshake failed: {e}",
                               "a client certificate the server rejects? check it is signed by the cluster CA")
        handshake_ms = (time.monotonic() - started) * 1000
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = sock
        headers = {"User-Agent": "edgeproxy-debug", "Accept": "text/plain"}
        token = creds.token
        if creds.token_file:
            try:
                token = Path(creds.token_file).read_text().strip()
            except OSError:
                pass
        if token:
            headers["Authorization"] = f"Bearer {token}"
        asked = time.monotonic()
        try:
            conn.request("GET", "/readyz", headers=headers)
            resp = conn.getresponse()
            body = resp.read(2000).decode(errors="replace")
        except (OSError, http.client.HTTPException) as e:
            return Finding("fail", area, f"{url}: connected but /readyz failed: {e}", "check the API server's logs")
        finally:
            conn.close()
    finally:
        sock.close()
    readyz_ms = (time.monotonic() - asked) * 1000
    timing = f"connect {connect_ms:.0f} ms, TLS {handshake_ms - connect_ms:.0f} ms, /readyz {readyz_ms:.0f} ms"
    if resp.status == 200:
        return Finding("ok", area, f"{url}: ready ({timing})")
    if resp.status == 401:
        return Finding("fail", area, f"{url}: credentials REJECTED (401) ({timing})",
                       "the client certificate or token is not accepted: expired, or from another cluster")
    if resp.status == 403:
        return Finding("warn", area, f"{url}: reachable, /readyz forbidden (403) for this identity ({timing})")
    return Finding("fail", area, f"{url}: /readyz answered {resp.status}: {body.strip()[:200]} ({timing})",
                   "the API server is up but not ready: its etcd or its own health")


def check_upstream(creds: upstream.Credentials, report: Report, timeout: float) -> None:
    for url in creds.servers:
        report.findings.append(probe_server(url, creds, timeout))


# ---- the running proxy and the cache --------------------------------------------------------------------------------


def ops_base(cfg: config_mod.Config | None, explicit: str | None) -> str | None:
    if explicit:
        return explicit.rstrip("/")
    if cfg is None or not cfg.ops_listen:
        return None
    host, port = config_mod.split_address(cfg.ops_listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def fetch(base: str, path: str, timeout: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(base + path, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check_proxy(base: str | None, report: Report, timeout: float) -> None:
    if base is None:
        report.add("warn", "proxy", "ops listener disabled: cannot ask the running proxy")
        return
    try:
        status, body = fetch(base, "/readyz", timeout)
    except OSError as e:
        report.add("warn", "proxy", f"edgeproxy is not answering on {base}: {getattr(e, 'reason', e)}",
                   "systemctl status edgeproxy; journalctl -u edgeproxy -n 50")
        return
    text = body.decode(errors="replace")
    first = text.split("\n", 1)[0]
    if status == 200 and "offline" in first:
        report.add("warn", "proxy", f"running on {base}, OFFLINE: answering from the cache")
    elif status == 200 and "connecting" in first:
        report.add("warn", "proxy", f"running on {base}, connecting: no API server has answered it yet")
    elif status == 200:
        report.add("ok", "proxy", f"running on {base}, online")
    else:
        report.add("fail", "proxy", f"running on {base} but not ready ({status}): {text.strip()[:200]}",
                   "journalctl -u edgeproxy -n 50")
        return
    off = re.search(r"^\[-\]cache off: (.*)$", text, re.M)
    if off and "disabled" in off.group(1):
        report.add("warn", "proxy", f"the running proxy has its cache turned off: {off.group(1)}")
    elif off:
        report.add("fail", "proxy", f"the running proxy has NO CACHE: {off.group(1)}; nothing is answered offline",
                   "fix the cause above, then systemctl restart edgeproxy")


def check_pool(cfg: config_mod.Config, base: str | None, report: Report, timeout: float) -> None:
    """--pool on: the settings, the peer listener's certificate, and this node's role as the running proxy says."""
    if not cfg.pool:
        return
    try:
        settings = config_mod.pool_settings(cfg)
    except config_mod.ConfigError as e:
        report.add("fail", "pool", str(e), "see the README's \"Branch sharing\"")
        return
    check_certificate(report, "pool serving", str(settings["cert"]))
    if base is None:
        return
    try:
        status, body = fetch(base, "/debug/state", timeout)
        pool = json.loads(body).get("pool") if status == 200 else None
    except (OSError, ValueError):
        return  # check_proxy said why
    if not pool:
        report.add("warn", "pool", "--pool on, but the running proxy does not share", "systemctl restart edgeproxy")
        return
    name = pool.get("pool") or "(its name is not known yet)"
    if pool.get("role") == "leader":
        views = pool.get("views") or []
        report.add("ok", "pool", f"pool {name}: this node leads; followers now: "
                   f"{', '.join(pool.get('followers') or []) or 'none'}; {len(views)} view(s)")
    elif pool.get("role") == "follower":
        report.add("ok", "pool", f"pool {name}: follows {pool.get('leader')} at {pool.get('leader_address')}")
    else:
        lease = f"edgeproxy-pool-{pool.get('pool')}" if pool.get("pool") else "(no pool name: set --pool-name)"
        report.add("warn", "pool", f"pool {name}: no leader known: every request goes to the API server",
                   f"kubectl -n {cfg.pool_namespace} get lease {lease} -o yaml; the pool's requests need the "
                   "ServiceAccount of deploy/pool/rbac.yaml (--pool-kubeconfig)")


def find_store(cache_dir: str) -> Path | None:
    """The cache directory that holds the LMDB environment: cache_dir itself or one level below."""
    root = Path(cache_dir)
    if (root / "data.mdb").exists():
        return root
    try:
        for child in sorted(root.iterdir()):
            if (child / "data.mdb").exists():
                return child
    except OSError:
        return None
    return None


def open_store(cache_dir: str) -> Any:
    from cache import store as store_mod

    path = find_store(cache_dir)
    if path is None:
        return None
    return store_mod.Store.open(str(path), create=False)


def check_cache(cfg: config_mod.Config, report: Report) -> None:
    try:
        store = open_store(cfg.cache_dir)
    except Exception as e:  # a corrupt or locked environment is exactly what this check is for
        report.add("fail", "cache", f"cannot open the cache in {cfg.cache_dir}: {type(e).__name__}: {e}",
                   "stop edgeproxy, move the cache directory aside, start it again (it refills online)")
        return
    if store is None:
        report.add("warn", "cache", f"no cache in {cfg.cache_dir} yet: offline answers need one online run first")
        return
    try:
        result = store.verify()
        stats = store.stats()
    finally:
        store.close()
    summary = (f"{result.views} views, {result.items} items, {result.objects} objects, "
               f"{stats.get('used_bytes', 0) / 1e6:.1f} MB of {stats.get('max_bytes', 0) / 1e6:.0f} MB")
    if result.problems:
        first = result.problems[0]
        report.add("fail", "cache", f"{len(result.problems)} bad record(s) ({summary}); first: {first.db}: "
                   f"{first.what}", "edgeproxy cache purge (the proxy refills it online)")
    else:
        extra = f", {result.sealed_unopened} sealed records unchecked (no key)" if result.sealed_unopened else ""
        report.add("ok", "cache", f"every record reads back: {summary}{extra}")


def _kubeconfig_server(path: str) -> str:
    """The server of a kubeconfig's current context, without opening the files it names (kubelet's client
    certificate is root's, and this check may run as another user)."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
        name = doc.get("current-context") or ""
        contexts = doc.get("contexts") or []
        ctx = next((c.get("context") or {} for c in contexts if c.get("name") == name), None)
        ctx = ctx if ctx is not None else ((contexts[0].get("context") or {}) if len(contexts) == 1 else {})
        cluster = next((c.get("cluster") or {} for c in doc.get("clusters") or []
                        if c.get("name") == ctx.get("cluster")), {})
    except (OSError, yaml.YAMLError, AttributeError, TypeError) as e:
        raise upstream.KubeconfigError(f"cannot read kubeconfig {path}: {e}") from e
    server = str(cluster.get("server") or "").rstrip("/")
    if not server:
        raise upstream.KubeconfigError(f"{path}: no server for context {name!r}")
    return server


def check_kubelet(cfg: config_mod.Config, report: Report, dropin: str = KUBELET_DROPIN) -> None:
    """Whether kubelet is wired to the proxy: the drop-in is there and its kubeconfig names the proxy listener."""
    if not os.path.exists(dropin):
        if os.path.isdir("/etc/systemd/system/kubelet.service.d") or os.path.exists("/etc/kubernetes/kubelet.conf"):
            report.add("warn", "kubelet", "kubelet talks to the API server directly (no edgeproxy drop-in)",
                       "edgeproxy install-systemd, then systemctl restart kubelet")
        return
    match = re.search(r"--kubeconfig=(\S+?)\"?$", Path(dropin).read_text(), re.M)
    if not match:
        report.add("warn", "kubelet", f"{dropin} sets no --kubeconfig", "edgeproxy install-systemd --force")
        return
    try:
        server = _kubeconfig_server(match.group(1))
    except upstream.UpstreamError as e:
        report.add("fail", "kubelet", f"kubelet's kubeconfig: {e}", "edgeproxy install-systemd")
        return
    # kubelet acts as the node over HTTPS with its client certificate; over plain HTTP only with --plain-as-node on
    wanted: set[str] = set()
    for scheme, address in (("https", cfg.tls_listen), ("http", cfg.listen if cfg.plain_as_node else "")):
        if address:
            host, port = config_mod.split_address(address)
            wanted.add(f"{scheme}://{host}:{port}")
            if host == "127.0.0.1":
                wanted.add(f"{scheme}://localhost:{port}")
    listens = " or ".join(f"{scheme} {a}" for scheme, a in (("https", cfg.tls_listen), ("http", cfg.listen)) if a)
    if server not in wanted:
        why = (" (plain HTTP acts as the node only with --plain-as-node on)"
               if server.startswith("http://") and not cfg.plain_as_node else "")
        target = f"https://{cfg.tls_listen}" if cfg.tls_listen else f"http://{cfg.listen}"
        report.add("fail", "kubelet", f"kubelet's kubeconfig {match.group(1)} points at {server}, the proxy listens "
                   f"on {listens}{why}", f"edgeproxy kubeconfig --component kubelet --server {target} "
                   f"--out {match.group(1)}; systemctl restart kubelet")
    else:
        report.add("ok", "kubelet", f"kubelet goes through the proxy ({server})")


def run_check(args: argparse.Namespace) -> Report:
    report = Report()
    cfg = load_settings(args, report)
    if cfg is None:
        return report
    creds = check_files(cfg, report)
    check_kubelet(cfg, report)
    if creds is not None:
        check_certificates(creds, cfg, report)
        check_upstream(creds, report, args.timeout)
    check_proxy(ops_base(cfg, args.ops_url), report, args.timeout)
    check_pool(cfg, ops_base(cfg, args.ops_url), report, args.timeout)
    if not args.skip_cache:
        check_cache(cfg, report)
    return report


# ---- diagnose -------------------------------------------------------------------------------------------------------


def run_diagnose(args: argparse.Namespace) -> int:
    cfg = load_settings(args)
    base = ops_base(cfg, args.ops_url)
    out = sys.stdout
    if base is None:
        print("the ops listener is disabled (EDGEPROXY_OPS_LISTEN=''): nothing to ask", file=sys.stderr)
        return 2
    try:
        status, body = fetch(base, "/debug/components?component=" + urllib.parse.quote(args.component),
                             args.timeout)
    except OSError as e:
        print(f"edgeproxy is not answering on {base}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"{base}/debug/components answered {status}", file=sys.stderr)
        return 1
    doc = json.loads(body)
    known = sorted(doc.get("known", []))
    data = doc.get("components", {}).get(args.component)
    if not data:
        print(f"{args.component}: no requests seen since the proxy started. Components seen: "
              f"{', '.join(known) or 'none'}", file=out)
        return 1
    print(f"{args.component}: {data['total']} requests since "
          f"{datetime.datetime.fromtimestamp(data['first_seen'], datetime.UTC):%Y-%m-%d %H:%M:%S} UTC", file=out)
    print("\nwhat it asked, and what it got:", file=out)
    print(f"  {'verb':<8} {'resource':<28} {'code':>4} {'from':<9} {'n':>7}", file=out)
    for row in data["counts"][: args.limit]:
        print(f"  {row['verb']:<8} {row['resource'] or '-':<28} {row['code']:>4} {row['source']:<9} {row['n']:>7}",
              file=out)
    print("\nlast requests:", file=out)
    for entry in data["last"][-args.limit:]:
        print("  " + _entry_line(entry), file=out)
    print(f"\nlast errors ({len(data['errors'])}):" if data["errors"] else "\nno errors", file=out)
    for entry in data["errors"][-args.limit:]:
        print("  " + _entry_line(entry), file=out)
    _print_filters(base, args.component, args.timeout, out)
    watches = _open_watches(base, args.component, args.timeout)
    if watches:
        print("\nwatches open now: " + ", ".join(f"{n} from {who}" for who, n in sorted(watches.items())), file=out)
    if cfg is not None and not args.skip_cache:
        _print_views(cfg, args.component, out)


def _print_filters(base: str, component: str, timeout: float, out: Any) -> None:
    """Which response filters touched which of the component's views (/debug/state's `filters`)."""
    try:
        status, body = fetch(base, "/debug/state", timeout)
        filters = json.loads(body).get("filters") if status == 200 else None
    except (OSError, ValueError):
        return
    if not filters:
        return
    mine = [v for v in filters.get("views", [])
            if v["client"] == component or v["client"].startswith(component + "@")]
    facts = filters.get("facts") or {}
    pool = f", node pool {facts.get('pool')!r}" if facts.get("pool") is not None else ""
    withheld = filters.get("redirect_withheld")
    if withheld:
        pool += f"; in-cluster redirect withheld: {withheld}"
    print(f"\nresponse filters ({', '.join(k for k, v in filters['settings'].items() if v and k != 'components')}"
          f"{pool}):" if mine else "\nresponse filters: none applied to it", file=out)
    for v in mine:
        touched = ", ".join(f"{name} changed {n}" for name, n in sorted(v["touched"].items())) or "nothing changed"
        errors = f", {v['errors']} passed unfiltered (undecodable)" if v["errors"] else ""
        print(f"  {v['view']}: {v['requests']} answers, {touched}{errors}", file=out)


def _open_watches(base: str, component: str, timeout: float) -> dict[str, int]:
    """{answered_by: n} of the component's open watches, from the metrics."""
    from prometheus_client import parser

    try:
        status, body = fetch(base, "/metrics", timeout)
    except OSError:
        return {}
    if status != 200:
        return {}
    out: dict[str, int] = {}
    for family in parser.text_string_to_metric_families(body.decode(errors="replace")):
        if family.name == "edgeproxy_open_watches":
            for sample in family.samples:
                if sample.labels.get("component") == component and sample.value:
                    out[sample.labels.get("answered_by", "?")] = int(sample.value)
    return out
    return 0


def _entry_line(entry: dict[str, Any]) -> str:
    ts = datetime.datetime.fromtimestamp(entry["ts"], datetime.UTC).strftime("%H:%M:%S")
    line = (f"{ts} {entry['verb']:<6} {entry['code']} {entry['source']:<8} {entry['duration_ms']:>8.1f} ms "
            f"{entry['path']}")
    return line + (f"  ({entry['note']})" if entry.get("note") else "")


def _print_views(cfg: config_mod.Config, component: str, out: Any) -> None:
    try:
        store = open_store(cfg.cache_dir)
    except Exception as e:
        print(f"\ncache: cannot open ({e})", file=out)
        return
    if store is None:
        print("\ncache: none yet", file=out)
        return
    try:
        views = [(k, m) for k, m in store.views() if k.client == component or k.client.startswith(component + "@")]
    finally:
        store.close()
    print(f"\nwhat the cache holds for it ({len(views)} views):", file=out)
    for key, meta in views:
        state = "complete" if meta.complete else "INCOMPLETE (offline lists of it get 503)"
        print(f"  {key.describe()}  rv={meta.resource_version}  {state}", file=out)


# ---- collect --------------------------------------------------------------------------------------------------------

_SECRET_KEY = re.compile(r"(token|password|passwd|secret|credential|client-key-data|private|bearer|apikey|api-key)",
                         re.I)
_PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S)
_BEARER = re.compile(rb"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
REDACTED = "REDACTED"


def _is_path_setting(key: str, value: str) -> bool:
    return key.lower().endswith(("file", "_path", "-path", "dir")) or value.startswith("/")


def redact_env(text: str) -> str:
    """KEY=value lines with the values of secret-looking keys replaced (file paths are kept: they are not secrets)."""
    out = []
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and _SECRET_KEY.search(key) \
                and not _is_path_setting(key.strip(), value.strip().strip("'\"")):
            line = f"{key}={REDACTED}"
        out.append(line)
    return "\n".join(out) + "\n"


def redact_kubeconfig(text: str) -> str:
    """A kubeconfig with tokens, keys and passwords (and exec/auth-provider configs) replaced; paths kept."""
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return "# unparseable kubeconfig, withheld\n"

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for k, v in node.items():
                key = str(k)
                secret = (key in ("exec", "auth-provider")
                          or (key.endswith("-data") and key != "certificate-authority-data")
                          or (_SECRET_KEY.search(key) and not (isinstance(v, str) and _is_path_setting(key, v))))
                if secret:
                    out[k] = REDACTED
                else:
                    out[k] = walk(v)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return yaml.safe_dump(walk(doc), sort_keys=False)


def scrub(data: bytes, secrets: Iterable[bytes]) -> bytes:
    """The last line of defence: known secret values, private keys, bearer tokens and JWTs removed from any text."""
    for secret in sorted({s for s in secrets if len(s) >= 8}, key=len, reverse=True):
        data = data.replace(secret, REDACTED.encode())
    data = _PRIVATE_KEY.sub(b"[private key " + REDACTED.encode() + b"]", data)
    data = _BEARER.sub(rb"\1" + REDACTED.encode(), data)
    return _JWT.sub(REDACTED.encode(), data)


def known_secrets(cfg: config_mod.Config | None) -> set[bytes]:
    """Secret values this host holds that must never reach a tarball: tokens, key bytes."""
    found: set[bytes] = set()
    if cfg is None or not cfg.kubeconfig:
        return found
    try:
        creds = upstream.load_kubeconfig(cfg.kubeconfig, cfg.context, cfg.servers)
    except upstream.UpstreamError:
        return found
    if creds.token:
        found.add(creds.token.encode())
    if creds.key_data:
        found.add(creds.key_data)
    for path in (creds.token_file, creds.key_file):
        if path:
            try:
                found.add(Path(path).read_bytes().strip())
            except OSError:
                pass
    for seal_key in Path(cfg.cache_dir).glob("**/seal.key"):
        try:
            found.add(seal_key.read_bytes().strip())
        except OSError:
            pass
    return found


def run_collect(args: argparse.Namespace) -> int:
    cfg = load_settings(args)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = f"edgeproxy-debug-{socket.gethostname()}-{stamp}"
    out_path = Path(args.out or f"{name}.tar.gz")
    members: dict[str, bytes] = {}
    notes: list[str] = []

    def add(member: str, produce: Callable[[], bytes | str | None]) -> None:
        try:
            value = produce()
        except Exception as e:  # collect what can be collected; say what could not
            notes.append(f"{member}: {type(e).__name__}: {e}")
            return
        if value is not None:
            members[member] = value.encode() if isinstance(value, str) else value

    check_args = argparse.Namespace(**{**vars(args), "skip_cache": args.skip_cache})
    add("check.txt", lambda: run_check(check_args).render())
    env_file = args.config or os.environ.get("EDGEPROXY_CONFIG") or DEFAULT_ENV_FILE
    add("config/edgeproxy.env", lambda: redact_env(Path(env_file).read_text()) if Path(env_file).exists() else None)
    add("config/environment", lambda: redact_env("\n".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                                                            if k.startswith("EDGEPROXY_"))))
    if cfg is not None and cfg.kubeconfig:
        add("config/upstream.kubeconfig", lambda: redact_kubeconfig(Path(cfg.kubeconfig).read_text()))
    for extra in ("/etc/edgeproxy/kubelet.kubeconfig", "/etc/systemd/system/edgeproxy.service",
                  "/etc/systemd/system/kubelet.service.d/20-edgeproxy.conf"):
        if Path(extra).exists():
            add("config/" + Path(extra).name, lambda p=extra: redact_kubeconfig(Path(p).read_text())
                if p.endswith("kubeconfig") else Path(p).read_text())
    base = ops_base(cfg, args.ops_url)
    if base is not None:
        for member, path in (("state.json", "/debug/state"), ("metrics.txt", "/metrics"),
                             ("components.json", "/debug/components"), ("logs/recent.jsonl", "/debug/logs")):
            add(member, lambda p=path: _ok_body(base, p, args.timeout))
    if "logs/recent.jsonl" not in members:
        add("logs/journal.txt", _journal)
    if cfg is not None and not args.skip_cache:
        add("cache-stats.json", lambda: _cache_stats(cfg.cache_dir))
    add("host.txt", _host_info)
    if notes:
        members["NOT-COLLECTED.txt"] = ("\n".join(notes) + "\n").encode()
    secrets = known_secrets(cfg)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        where = "the current directory" if args.out is None else str(out_path.parent)
        print(f"edgeproxy debug collect: cannot write {out_path.absolute()}: {e.strerror or e}; {where} is not "
              "writable here: pass --out /tmp/edgeproxy-debug.tar.gz (or another writable path)", file=sys.stderr)
        return 1
    with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for member, data in members.items():
            data = scrub(data, secrets)
            info = tarfile.TarInfo(f"{name}/{member}")
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    print(f"wrote {out_path} ({len(members)} files{'; ' + str(len(notes)) + ' not collected' if notes else ''})")
    return 0


def _ok_body(base: str, path: str, timeout: float) -> bytes:
    status, body = fetch(base, path, timeout)
    if status != 200:
        raise RuntimeError(f"{path} answered {status}")
    return body


def _journal() -> bytes | None:
    try:
        result = subprocess.run(["journalctl", "-u", "edgeproxy", "-n", "2000", "--no-pager", "-o", "short-iso"],
                                capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout or None


def _cache_stats(cache_dir: str) -> str | None:
    store = open_store(cache_dir)
    if store is None:
        return None
    try:
        return json.dumps(store.stats(), indent=2, default=str) + "\n"
    finally:
        store.close()


def _host_info() -> str:
    from edgeproxy import __version__

    return "\n".join([f"edgeproxy {__version__}", f"python {sys.version.split()[0]}", platform.platform(),
                      f"hostname {socket.gethostname()}", f"time {datetime.datetime.now(datetime.UTC).isoformat()}",
                      f"uid {os.geteuid()}"]) + "\n"


# ---- command --------------------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", help=f"env file of EDGEPROXY_* settings (default {DEFAULT_ENV_FILE} if present)")
        p.add_argument("--kubeconfig", help="upstream kubeconfig (default: from the settings)")
        p.add_argument("--cache-dir", help="cache directory (default: from the settings)")
        p.add_argument("--ops-listen", help="the proxy's ops listener HOST:PORT (default: from the settings)")
        p.add_argument("--ops-url", help="base URL of the ops listener, if not http://OPS_LISTEN")
        p.add_argument("--timeout", type=float, default=5.0, help="seconds per network probe (default 5)")
        p.add_argument("--skip-cache", action="store_true", help="do not open the cache")

    sub = parser.add_subparsers(dest="debug_command", metavar="ACTION", required=True)
    p = sub.add_parser("check", help="a one-screen verdict: config, files, certificates, upstream, proxy, cache")
    common(p)
    p = sub.add_parser("diagnose", help="what COMPONENT asked, what it got, its last errors, its cached views")
    p.add_argument("component", help="kubelet, kube-proxy, coredns, ... (as the proxy names them from User-Agent)")
    p.add_argument("--limit", type=int, default=15, help="rows per table (default 15)")
    common(p)
    p = sub.add_parser("collect", help="a tarball for a ticket: redacted config, check, logs, metrics, cache stats")
    p.add_argument("--out", help="tarball path (default ./edgeproxy-debug-HOST-TIME.tar.gz)")
    common(p)


def run(args: argparse.Namespace) -> int:
    if args.debug_command == "check":
        report = run_check(args)
        sys.stdout.write(report.render())
        return 1 if report.failed else 0
    if args.debug_command == "diagnose":
        return run_diagnose(args)
    return run_collect(args)
