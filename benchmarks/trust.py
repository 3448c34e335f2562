"""What kubelet's safe set-up costs: its requests over the HTTPS listener with its client certificate (verified,
matched to the node) against the plain listener with --plain-as-node on (issue 14 S2).

    python -m benchmarks trust [--quick] [--duration S]

One simulator, one `edgeproxy serve` with both listeners (the plain one opted in, so both act as the node), and the
load generator in its own process: small GETs at concurrency 16 (keep-alive connections, as kubelet keeps them),
in interleaved rounds; reported: req/s (median round) and the proxy's CPU time per request, the steadier figure on a
shared machine. The TLS handshake is paid once per connection; what remains per request is record encryption and
the per-connection node-certificate verdict (cached).
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

from benchmarks import harness, hostile

SCENARIO = "trust"
SMALL = "/api/v1/namespaces/kube-node-lease/leases/edge-1"
KUBELET = ["Accept: application/json"]  # the load generator sends its own User-Agent (a second one would be a 400)


def run(opts: harness.Options) -> list[dict[str, object]]:
    work = opts.work or Path(".")
    rows: list[dict[str, object]] = []
    with harness.simulator(work) as (server, pki):
        kubeconfig = hostile.kubeconfig(work, server, pki)  # upstream as system:node:edge-1
        port, tls_port = harness.free_port(), harness.free_port()
        argv = [sys.executable, "-m", "edgeproxy", "--log-level", "warning", "serve", "--kubeconfig", str(kubeconfig),
                "--listen", f"127.0.0.1:{port}", "--tls-listen", f"127.0.0.1:{tls_port}", "--ops-listen", "",
                "--client-ca-file", str(pki / "ca.crt"), "--cache-dir", str(work / "cache"), "--plain-as-node", "on"]
        with harness.process(argv, port=tls_port, log=work / "edgeproxy.log") as proc:
            variants = {
                "plain HTTP, --plain-as-node on": (f"http://127.0.0.1:{port}", {}),
                "HTTPS, kubelet's client certificate": (f"https://127.0.0.1:{tls_port}", {
                    "cert": str(pki / "node.crt"), "key": str(pki / "node.key"),
                    "ca": str(work / "cache" / "pki" / "ca.crt")}),
            }
            for url, kw in variants.values():
                harness.loadgen(url + SMALL, requests=200, concurrency=4, headers=KUBELET, **kw)
            rates: dict[str, list[float]] = {name: [] for name in variants}
            cpu: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(2 if opts.quick else 5):
                for name, (url, kw) in variants.items():
                    before = harness.cpu_seconds(proc.pid)
                    thr = harness.loadgen(url + SMALL, concurrency=16, duration=opts.duration, headers=KUBELET, **kw)
                    rates[name].append(float(thr["req_per_s"]))
                    if thr["requests"]:
                        cpu[name].append((harness.cpu_seconds(proc.pid) - before) / float(thr["requests"]) * 1e6)
            for name in variants:
                rows.append(harness.row(SCENARIO, "small GET throughput", statistics.median(rates[name]), "req/s",
                                        variant=name))
                rows.append(harness.row(SCENARIO, "proxy CPU per small GET", statistics.median(cpu[name]), "us",
                                        variant=name))
    return rows


if __name__ == "__main__":
    harness.main(run)
