"""Pass-through cost of edgeproxy online, side by side with the API server direct and with nginx as a reverse proxy.

    python -m benchmarks passthrough [--quick] [--duration S]

One simulator (TLS, client certificates, N pods) is the upstream of all three variants:
- direct:    the load generator talks TLS to the simulator with the admin client certificate;
- edgeproxy: `edgeproxy serve` on 127.0.0.1 (plain HTTP, --plain-as-node on), upstream TLS with the certificate,
             recording every list/get/watch into its cache as it forwards (what it does in production);
- edgeproxy --cache off: the same, forwarding only (the pass-through cost alone);
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
import statistics
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
def edgeproxy(work: Path, server: str, pki, *, cache: bool = True) -> Iterator[tuple[str, int]]:
    name = "edgeproxy" if cache else "edgeproxy-nocache"
    kubeconfig = write_kubeconfig(work / "kubeconfig", server, pki)
    port = harness.free_port()
    argv = [sys.executable, "-m", "edgeproxy", "--log-level", "warning", "serve", "--kubeconfig", str(kubeconfig),
            "--listen", f"127.0.0.1:{port}", "--ops-listen", "", "--cache-dir", str(work / f"{name}-cache"),
            "--cache", "on" if cache else "off", "--plain-as-node", "on"]
    with harness.process(argv, port=port, log=work / f"{name}.log") as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


def nginx_conf(work: Path, port: int, upstream: str, cert: Path, key: Path, ca: Path,
               ssl_name: str = "localhost") -> str:
    """nginx as a TLS-terminating-and-originating baseline in front of `upstream` (host:port); also used by real.py."""
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
          upstream api {{ server {upstream}; keepalive 64; keepalive_requests 1000000; }}
          server {{
            listen 127.0.0.1:{port};
            keepalive_requests 1000000;
            location / {{
              proxy_pass https://api;
              proxy_http_version 1.1;
              proxy_set_header Connection "";
              proxy_buffering off;
              proxy_request_buffering off;
              proxy_read_timeout 1h;
              proxy_ssl_certificate {cert};
              proxy_ssl_certificate_key {key};
              proxy_ssl_trusted_certificate {ca};
              proxy_ssl_verify on;
              proxy_ssl_name {ssl_name};  # nginx matches names, not IP SANs
              proxy_ssl_session_reuse on;
            }}
          }}
        }}
        """)


@contextlib.contextmanager
def nginx(work: Path, server: str, pki) -> Iterator[tuple[str, int] | None]:
    if not Path(NGINX).exists():
        yield None
        return
    port = harness.free_port()
    conf = work / "nginx.conf"
    conf.write_text(nginx_conf(work, port, f"127.0.0.1:{server.rsplit(':', 1)[1]}", pki.admin_cert, pki.admin_key,
                               pki.ca_cert))
    with harness.process([NGINX, "-p", str(work), "-c", str(conf), "-e", str(work / "nginx-error.log")], port=port,
                         log=work / "nginx.log") as proc:
        yield f"http://127.0.0.1:{port}", proc.pid


def run(opts: harness.Options) -> list[dict[str, object]]:
    work = opts.work or Path("/tmp")
    pods = 1000 if opts.quick else 10_000
    rows: list[dict[str, object]] = []
    with harness.simulator(work, pods=pods) as (sim_url, pki_dir):
        pki = Pki.at(pki_dir)
        with edgeproxy(work, sim_url, pki) as ep, edgeproxy(work, sim_url, pki, cache=False) as bare, \
                nginx(work, sim_url, pki) as ng:
            proxies = {"edgeproxy": ep, "edgeproxy --cache off": bare, "nginx": ng}
            rows += _measure(opts, pods, sim_url, {k: v for k, v in proxies.items() if v is not None}, pki)
    return rows


def _measure(opts: harness.Options, pods: int, sim_url: str, proxies: dict[str, tuple[str, int]],
             pki: Pki) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    tls = {"cert": str(pki.admin_cert), "key": str(pki.admin_key), "ca": str(pki.ca_cert)}
    variants: dict[str, tuple[str, dict[str, str]]] = {"direct": (sim_url, tls)}
    variants.update({name: (url, {}) for name, (url, _) in proxies.items()})
    small = "/api/v1/namespaces/default/services/kubernetes"
    list_path = "/api/v1/pods"
    watch_path = ("/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
                  "&allowWatchBookmarks=true&timeoutSeconds=60")
    for url, kw in variants.values():  # warm up every path once (TLS sessions, keep-alive pools)
        harness.loadgen(url + small, requests=200, concurrency=4, headers=[JSON], **kw)
    # Throughput, in interleaved rounds: on a shared machine a neighbour's burst then hits every variant alike.
    # The median round is reported; the proxy process's CPU time per request is the figure that does not depend on
    # what else the machine is doing.
    rounds = 2 if opts.quick else 5
    rates: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in proxies}
    for _ in range(rounds):
        for name, (url, kw) in variants.items():
            before = harness.cpu_seconds(proxies[name][1]) if name in proxies else 0.0
            thr = harness.loadgen(url + small, concurrency=16, duration=opts.duration, headers=[JSON], **kw)
            rates[name].append(float(thr["req_per_s"]))
            if name in proxies and thr["requests"]:
                used = harness.cpu_seconds(proxies[name][1]) - before
                cpu[name].append(used / float(thr["requests"]) * 1e6)
    for name in variants:
        rows.append(harness.row(SCENARIO, "small GET throughput", statistics.median(rates[name]), "req/s",
                                variant=name, note=f"c=16, median of {rounds}, best {max(rates[name]):,.0f}"))
    for name in proxies:
        rows.append(harness.row(SCENARIO, "small GET proxy CPU", round(statistics.median(cpu[name]), 1),
                                "us/request", variant=name, note="user+system time of the proxy process(es)"))
    p50: dict[str, float] = {}
    for name, (url, kw) in variants.items():
        lat = harness.loadgen(url + small, concurrency=1, requests=500 if opts.quick else 3000, headers=[JSON], **kw)
        p50[name] = float(lat["p50_ms"])
        rows.append(harness.row(SCENARIO, "small GET p50 latency", lat["p50_ms"], "ms", variant=name, note="c=1"))
        rows.append(harness.row(SCENARIO, "small GET p99 latency", lat["p99_ms"], "ms", variant=name, note="c=1"))
    for name in variants:
        if name != "direct":
            rows.append(harness.row(SCENARIO, "small GET p50 added", round(p50[name] - p50["direct"], 4), "ms",
                                    variant=name))
    for enc, accept in (("protobuf", PROTOBUF), ("json", JSON)):
        for name, (url, kw) in variants.items():
            harness.loadgen(url + list_path, requests=1, headers=[accept], **kw)  # warm-up
            res = harness.loadgen(url + list_path, concurrency=1, requests=3 if opts.quick else 7,
                                  headers=[accept], **kw)
            size = int(res["bytes"]) // max(1, int(res["requests"]))
            p50_ms = float(res["p50_ms"])
            rows.append(harness.row(SCENARIO, f"{pods // 1000}k-pod LIST {enc}", round(size / 1e3 / p50_ms, 1),
                                    "MB/s", variant=name, note=f"{size / 1e6:.1f} MB in {p50_ms:.0f} ms (p50)"))
    for name, (url, kw) in variants.items():
        res = harness.loadgen(url + watch_path, watch_events=pods, headers=[PROTOBUF], **kw)
        rows.append(harness.row(SCENARIO, "watch events/s (protobuf)", res["events_per_s"], "events/s",
                                variant=name, note=res.get("error") or f"{res['events']} events"))
    return rows


if __name__ == "__main__":
    sys.exit(harness.main(run))
