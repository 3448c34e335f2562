"""Pass-through cost of edgeproxy online, side by side with the API server direct and with nginx as a reverse proxy.

    python -m benchmarks passthrough [--quick] [--duration S]

One simulator (TLS, client certificates, N pods) is the upstream of all three variants:
- direct:    the load generator talks TLS to the simulator with the admin client certificate;
- edgeproxy: `edgeproxy serve` on 127.0.0.1 (plain HTTP, as kubelet uses it), upstream TLS with the certificate;
- nginx:     Debian's nginx, one worker (edgeproxy is one process too), a plain reverse proxy (keep-alive upstream
             pool, proxy_buffering off so watches stream) with the same upstream TLS and certificate.
Each runs as its own process, and the load generator (benchmarks/loadgen.py) too. Measured:
- small GETs: req/s at concurrency 16 for `duration` seconds; p50/p99 latency at concurrency 1, and the p50 added
  over direct;
- a LIST of every pod (10k; 1k with --quick), protobuf and JSON: MB/s of body;
- watch events/s: a watch-list (sendInitialEvents=true) of every pod, events as they arrive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from benchmarks import harness

SCENARIO = "passthrough"
NGINX = "/usr/sbin/nginx"
PROTOBUF = "Accept: application/vnd.kubernetes.protobuf"
JSON = "Accept: application/json"


@dataclasses.dataclass(frozen=True, slots=True)
class Pki:
    ca_cert: Path
    admin_cert: Path
    admin_key: Path

    @classmethod
    def at(cls, d: Path) -> Pki:
        return cls(d / "ca.crt", d / "admin.crt", d / "admin.key")


def write_kubeconfig(path: Path, server: str, pki) -> Path:
    path.write_text(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Config
        current-context: bench
        clusters: [{{name: sim, cluster: {{server: "{server}", certificate-authority: "{pki.ca_cert}"}}}}]
        users: [{{name: admin, user: {{client-certificate: "{pki.admin_cert}", client-key: "{pki.admin_key}"}}}}]
        contexts: [{{name: bench, context: {{cluster: sim, user: admin}}}}]
        """))
    return path


@contextlib.contextmanager
def edgeproxy(work: Path, server: str, pki) -> Iterator[str]:
    kubeconfig = write_kubeconfig(work / "kubeconfig", server, pki)
    port = harness.free_port()
    argv = [sys.executable, "-m", "edgeproxy", "--log-level", "warning", "serve", "--kubeconfig", str(kubeconfig),
            "--listen", f"127.0.0.1:{port}", "--ops-listen", "", "--cache-dir", str(work / "cache")]
    with harness.process(argv, port=port, log=work / "edgeproxy.log"):
        yield f"http://127.0.0.1:{port}"


def nginx_conf(work: Path, port: int, upstream_port: int, pki) -> str:
    return textwrap.dedent(f"""\
        worker_processes 1;
        user root;
        pid {work}/nginx.pid;
        error_log {work}/nginx-error.log warn;
        daemon off;
        events {{ worker_connections 4096; }}
        http {{
          access_log off;
          client_body_temp_path {work}/nginx-body; proxy_temp_path {work}/nginx-proxy;
          fastcgi_temp_path {work}/nginx-fcgi; uwsgi_temp_path {work}/nginx-uwsgi; scgi_temp_path {work}/nginx-scgi;
          upstream api {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
          server {{
            listen 127.0.0.1:{port};
            location / {{
              proxy_pass https://api;
              proxy_http_version 1.1;
              proxy_set_header Connection "";
              proxy_buffering off;
              proxy_request_buffering off;
              proxy_read_timeout 1h;
              proxy_ssl_certificate {pki.admin_cert};
              proxy_ssl_certificate_key {pki.admin_key};
              proxy_ssl_trusted_certificate {pki.ca_cert};
              proxy_ssl_verify on;
              proxy_ssl_name localhost;  # nginx matches names, not IP SANs
              proxy_ssl_session_reuse on;
            }}
          }}
        }}
        """)


@contextlib.contextmanager
def nginx(work: Path, server: str, pki) -> Iterator[str | None]:
    if not Path(NGINX).exists():
        yield None
        return
    port = harness.free_port()
    conf = work / "nginx.conf"
    conf.write_text(nginx_conf(work, port, int(server.rsplit(":", 1)[1]), pki))
    with harness.process([NGINX, "-p", str(work), "-c", str(conf), "-e", str(work / "nginx-error.log")], port=port,
                         log=work / "nginx.log"):
        yield f"http://127.0.0.1:{port}"


def run(opts: harness.Options) -> list[dict[str, object]]:
    work = opts.work or Path("/tmp")
    pods = 1000 if opts.quick else 10_000
    rows: list[dict[str, object]] = []
    with harness.simulator(work, pods=pods) as (sim_url, pki_dir):
        pki = Pki.at(pki_dir)
        with edgeproxy(work, sim_url, pki) as ep_url, nginx(work, sim_url, pki) as ng_url:
            rows += _measure(opts, pods, sim_url, ep_url, ng_url, pki)
    return rows


def _measure(opts: harness.Options, pods: int, sim_url: str, ep_url: str, ng_url: str | None,
             pki: Pki) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    tls = {"cert": str(pki.admin_cert), "key": str(pki.admin_key), "ca": str(pki.ca_cert)}
    variants = {"direct": (sim_url, tls), "edgeproxy": (ep_url, {}), "nginx": (ng_url, {})}
    variants = {k: v for k, v in variants.items() if v[0] is not None}
    small = "/api/v1/namespaces/default/services/kubernetes"
    list_path = "/api/v1/pods"
    watch_path = ("/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
                  "&allowWatchBookmarks=true&timeoutSeconds=60")
    for url, kw in variants.values():  # warm up every path once (TLS sessions, keep-alive pools)
        harness.loadgen(url + small, requests=200, concurrency=4, headers=[JSON], **kw)
    p50: dict[str, float] = {}
    for name, (url, kw) in variants.items():
        thr = harness.loadgen(url + small, concurrency=16, duration=opts.duration, headers=[JSON], **kw)
        rows.append(harness.row(SCENARIO, "small GET throughput", thr["req_per_s"], "req/s", variant=name,
                                note=f"c=16, {thr['errors']} errors" if thr["errors"] else "c=16"))
        lat = harness.loadgen(url + small, concurrency=1, requests=500 if opts.quick else 3000, headers=[JSON],
                              **kw)
        p50[name] = float(lat["p50_ms"])
        rows.append(harness.row(SCENARIO, "small GET p50 latency", lat["p50_ms"], "ms", variant=name))
        rows.append(harness.row(SCENARIO, "small GET p99 latency", lat["p99_ms"], "ms", variant=name))
    for name in variants:
        if name != "direct":
            rows.append(harness.row(SCENARIO, "small GET p50 added", round(p50[name] - p50["direct"], 4), "ms",
                                    variant=name))
    for enc, accept in (("protobuf", PROTOBUF), ("json", JSON)):
        for name, (url, kw) in variants.items():
            res = harness.loadgen(url + list_path, concurrency=1, requests=3 if opts.quick else 6,
                                  headers=[accept], **kw)
            rows.append(harness.row(SCENARIO, f"{pods // 1000}k-pod LIST {enc}", res["mb_per_s"], "MB/s",
                                    variant=name, note=f"{res['bytes'] // max(1, res['requests']):,} B, "
                                                       f"p50 {res['p50_ms']:.0f} ms"))
    for name, (url, kw) in variants.items():
        res = harness.loadgen(url + watch_path, watch_events=pods, headers=[PROTOBUF], **kw)
        rows.append(harness.row(SCENARIO, "watch events/s (protobuf)", res["events_per_s"], "events/s",
                                variant=name, note=res.get("error") or f"{res['events']} events"))
    return rows


if __name__ == "__main__":
    sys.exit(harness.main(run))
