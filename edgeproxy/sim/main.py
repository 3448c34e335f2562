"""`edgeproxy sim`: run the Kubernetes API simulator until interrupted.

Writes a PKI and admin/node kubeconfigs into --dir, prints where they are, the API URL and the control URL
(POST {"down": 5} etc. to /__sim/faults, see Simulator.control). Neighbours: sim.simulator does the work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import pathlib
import signal
import sys
import tempfile
import time

from edgeproxy.sim import simulator


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", default="127.0.0.1:0", help="address:port of the HTTPS API (default: a free port)")
    parser.add_argument("--dir", default=None, help="where to write pki/ and the kubeconfigs (default: a temp dir)")
    parser.add_argument(
        "--control-port",
        type=int,
        default=0,
        help="plain-HTTP loopback port for /__sim/faults that stays up while the API is down "
        "(0: a free port, -1: none)",
    )
    parser.add_argument("--no-fixture", action="store_true", help="start empty instead of with the fixture cluster")
    parser.add_argument("--nodes", type=int, default=0, help="add N synthetic nodes")
    parser.add_argument("--pods", type=int, default=0, help="add N synthetic pods (spread over the nodes)")
    parser.add_argument("--services", type=int, default=0, help="add N synthetic services")
    parser.add_argument("--endpointslices", type=int, default=0, help="add N synthetic endpointslices")
    parser.add_argument(
        "--plain-http",
        action="store_true",
        help="serve plain HTTP without authentication (for baselines that cannot present client certificates)",
    )
    parser.add_argument("--bookmark-interval", type=float, default=60.0, help="seconds between watch bookmarks")
    parser.add_argument("--history", type=int, default=10_000, help="events kept for watches and continue tokens")
    parser.add_argument("--ready-file", default=None, help="write a JSON line with the URLs and paths here once up")


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 0)


async def _serve(args: argparse.Namespace) -> int:
    host, port = _split(args.listen)
    directory = pathlib.Path(args.dir or tempfile.mkdtemp(prefix="edgeproxy-sim-"))
    directory.mkdir(parents=True, exist_ok=True)
    sim = simulator.Simulator(
        host=host,
        port=port,
        fixture=not args.no_fixture,
        pki_dir=directory / "pki",
        history_size=args.history,
        bookmark_interval=args.bookmark_interval,
        control_port=None if args.control_port < 0 else args.control_port,
        tls_enabled=not args.plain_http,
        anonymous=args.plain_http,
    )
    started = time.perf_counter()
    sim.seed(nodes=args.nodes, pods=args.pods, services=args.services, endpointslices=args.endpointslices)
    seeded = time.perf_counter() - started
    url = await sim.start()
    if args.plain_http:
        admin = node = sim.kubeconfig(directory / "admin.kubeconfig", "admin")
    else:
        admin = sim.kubeconfig(directory / "admin.kubeconfig", "admin")
        node = sim.kubeconfig(directory / "node.kubeconfig", "node")
    info = {
        "url": url,
        "control": sim.control_url,
        "admin_kubeconfig": str(admin),
        "node_kubeconfig": str(node),
        "pki": str(directory / "pki"),
        "resourceVersion": sim.store.rv,
        "objects": {k: len(v) for k, v in sim.store.objects.items() if v},
        "seed_seconds": round(seeded, 3),
    }
    print(f"edgeproxy sim: serving {url}")
    print(f"  admin kubeconfig: {admin}")
    print(f"  node kubeconfig:  {node}  (system:node:edge-1)")
    if sim.control_url:
        print(f"  faults: curl -X POST {sim.control_url}/__sim/faults -d '{{\"down\": 5}}'")
    print(f"  objects: {info['objects']}  (seeded in {seeded:.2f}s)")
    sys.stdout.flush()
    if args.ready_file:
        ready = pathlib.Path(args.ready_file)
        tmp = ready.with_name(ready.name + ".tmp")
        tmp.write_text(json.dumps(info) + "\n")
        tmp.rename(ready)  # whoever waits for the file sees it whole
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await sim.stop()
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(args))
