"""The mutating admission webhook, over HTTPS: POST /mutate answers pod CREATEs (policy.review_response), GET /healthz.

It always allows; it only adds what a pod created bound to an autonomous node (spec.nodeName set) should carry, so
that pod never waits for the controller. The MutatingWebhookConfiguration fails open (failurePolicy: Ignore,
timeoutSeconds: 5) and sends only pods created with spec.nodeName (matchConditions): when the companion is down or
slow, pod creation goes on without it. Neighbours: policy, nodes (the verdict inputs), main (starts it).
"""

from __future__ import annotations

import json
import logging
import ssl

from aiohttp import web

from edgeproxy.companion import errors, nodes, policy

log = logging.getLogger(__name__)


def app(view: nodes.NodeView) -> web.Application:
    async def mutate(request: web.Request) -> web.Response:
        try:
            review = json.loads(await request.read())
            req = review.get("request") if isinstance(review, dict) else None
            pod = (req or {}).get("object") if isinstance(req, dict) else None
            name = policy.bound_node(pod) if isinstance(pod, dict) else ""
            answer = policy.review_response(review, view.node(name) if name else None,
                                            view.report_age(name) if name else None, view.max_age)
        except (ValueError, errors.BadReview) as e:
            return web.json_response({"error": f"bad AdmissionReview: {e}"}, status=400)
        if "patch" in answer["response"]:
            log.info("admission: pod %s/%s created on %s gets autonomy", (req or {}).get("namespace"),
                     (pod or {}).get("metadata", {}).get("name") or (pod or {}).get("metadata", {}).get("generateName"),
                     name)
        return web.json_response(answer)

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok" if view.informer.synced else "nodes not listed yet",
                            status=200 if view.informer.synced else 503)

    application = web.Application(client_max_size=8 * 1024 * 1024)
    application.router.add_post("/mutate", mutate)
    application.router.add_get("/healthz", healthz)
    return application


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx
