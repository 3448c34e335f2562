"""`edgeproxy companion`: the cloud-side autonomy companion (deploy/companion.yaml runs it as a Deployment).

Every replica watches the nodes and serves the webhook; the replica holding the Lease also runs the controller
that patches bound pods and the pool controller (poolctl: the leader of each branch's pool sharing, on a Lease per
pool; --pools off leaves it out). Neighbours: nodes, webhook, certs, elector, controller, poolctl.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import tempfile
from pathlib import Path

from aiohttp import web

from edgeproxy import config as config_mod
from edgeproxy import tasks, upstream
from edgeproxy.companion import certs, controller, elector, errors, kubeapi, nodes, poolctl, webhook

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--kubeconfig", default="", help="out of a pod: the kubeconfig to use (default: the pod's ServiceAccount)")
    a("--namespace", default="", help="where the Lease and the certificate Secret live (default: the pod's)")
    a("--listen", default="0.0.0.0:8443", help="the webhook's HTTPS address; '' serves no webhook")
    a("--tls-cert-file", default="", help="the webhook's certificate (else one kept in --tls-secret)")
    a("--tls-key-file", default="")
    a("--tls-secret", default="edgeproxy-companion-tls", help="Secret holding the webhook's CA and certificate")
    a("--service", default="edgeproxy-companion", help="the webhook's Service name (the certificate's names)")
    a("--tls-sans", default="", help="more names (DNS or IP) for that certificate, comma-separated: a webhook "
                                     "reached by URL from outside the cluster")
    a("--webhook-config", default="edgeproxy-companion",
      help="MutatingWebhookConfiguration whose caBundle gets the CA; '' leaves it alone")
    a("--leader-elect", default=True, action=argparse.BooleanOptionalAction,
      help="hold a coordination.k8s.io Lease before patching pods (needed with more than one replica)")
    a("--lease-name", default="edgeproxy-companion")
    a("--identity", default="", help="this replica's name in the Lease (default: hostname_pid)")
    a("--lease-duration", type=int, default=15, help="seconds")
    a("--renew-deadline", type=float, default=10.0, help="seconds")
    a("--retry-period", type=float, default=2.0, help="seconds")
    a("--report-max-age", type=float, default=900.0,
      help="seconds a Ready node's cache-health report stays valid (edgeproxy re-reports every 300 s)")
    a("--resync", type=float, default=30.0, help="seconds between full passes over all nodes")
    a("--pools", default="on", choices=("on", "off"),
      help="elect the pool leader of each branch for edgeproxy's pool sharing (serve --pool on): a Lease per pool")
    a("--pool-label", default="topology.kubernetes.io/zone", help="the node label naming a node's pool (branch)")
    a("--pool-namespace", default="edgeproxy", help="namespace of the pools' Leases (edgeproxy's --pool-namespace)")
    a("--pool-lease-duration", type=int, default=15,
      help="seconds a pool Lease lasts without renewal (renewed every third of it)")
    a("--pool-node-grace", type=float, default=0.0,
      help="seconds a node's Lease in kube-node-lease may go unrenewed before the node may no longer lead its pool "
           "(0: that Lease's own duration, 40 s for a default kubelet)")


def _namespace(args: argparse.Namespace) -> str:
    if args.namespace:
        return args.namespace
    try:
        return (kubeapi.SA_DIR / "namespace").read_text().strip()
    except OSError:
        return "default"


async def serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    creds = upstream.load_kubeconfig(args.kubeconfig) if args.kubeconfig else kubeapi.in_cluster()
    kube = kubeapi.Kube(creds)
    namespace = _namespace(args)
    view = nodes.NodeView(kube, max_age=args.report_max_age)
    ctrl = controller.Controller(kube, view, resync=args.resync)
    pool_ctrl = None
    if args.pools == "on":
        pool_ctrl = poolctl.PoolController(kube, namespace=args.pool_namespace, label=args.pool_label,
                                           duration=args.pool_lease_duration, grace=args.pool_node_grace)

    async def lead() -> None:
        """What the replica holding the Lease runs: the pod controller and the pool controller."""
        if pool_ctrl is None:
            await ctrl.run()
            return
        both = [tasks.spawn(ctrl.run(), name="companion-controller"), tasks.spawn(pool_ctrl.run(), name="pools")]
        try:
            await asyncio.gather(*both)
        finally:
            for t in both:
                t.cancel()
            for t in both:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    running = [tasks.spawn(view.informer.run(), name="companion-nodes")]
    runner: web.AppRunner | None = None
    tmp = tempfile.TemporaryDirectory(prefix="edgeproxy-companion-")
    try:
        if args.listen:
            if args.tls_cert_file:
                cert, key = args.tls_cert_file, args.tls_key_file
            else:
                sans = certs.service_names(args.service, namespace)
                sans += [n.strip() for n in args.tls_sans.split(",") if n.strip() and n.strip() not in sans]
                bundle = await certs.ensure_secret(kube, namespace, args.tls_secret, sans)
                cert_path, key_path = bundle.write(Path(tmp.name))
                cert, key = str(cert_path), str(key_path)
                if args.webhook_config:
                    try:
                        await certs.inject_ca(kube, args.webhook_config, bundle.ca_pem)
                    except errors.ApiError as e:
                        log.warning("cannot set the caBundle of %s: %s", args.webhook_config, e)
            runner = web.AppRunner(webhook.app(view), access_log=None)
            await runner.setup()
            host, port = config_mod.split_address(args.listen)
            await web.TCPSite(runner, host, port, ssl_context=webhook.server_context(cert, key)).start()
            log.info("companion webhook on https://%s:%s/mutate", host, runner.addresses[0][1])
        if args.leader_elect:
            identity = args.identity or f"{socket.gethostname()}_{os.getpid()}"
            el = elector.Elector(kube, namespace, args.lease_name, identity, duration=args.lease_duration,
                                 renew_deadline=args.renew_deadline, retry=args.retry_period)
            running.append(tasks.spawn(el.run(lead), name="companion-elector"))
        else:
            running.append(tasks.spawn(lead(), name="companion-controller"))
        await stop.wait()
    finally:
        for t in reversed(running):
            t.cancel()
        for t in running:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if runner is not None:
            await runner.cleanup()
        await kube.close()
        tmp.cleanup()


def run(args: argparse.Namespace) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(args, stop)

    try:
        asyncio.run(main())
    except (errors.CompanionError, upstream.KubeconfigError, config_mod.ConfigError) as e:
        log.error("companion: %s", e)
        return 1
    return 0
