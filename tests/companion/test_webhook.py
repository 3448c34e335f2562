"""`edgeproxy companion` end to end against the simulator: it arranges its certificate in a Secret, serves the
webhook over HTTPS with it, and answers pod CREATEs bound to an autonomous node with a patch."""

import argparse
import asyncio
import base64
import json
import socket
import ssl

import aiohttp
import pytest

from edgeproxy import tasks
from edgeproxy.companion import health, main, policy
from tests.e2e.edge import until

pytestmark = pytest.mark.timeout(60)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def review(node, uid="u-1"):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": uid, "operation": "CREATE", "namespace": "edge", "object": {
                "kind": "Pod", "metadata": {"name": "p", "namespace": "edge"},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x"}],
                         "tolerations": [{"key": policy.UNREACHABLE, "operator": "Exists", "effect": "NoExecute",
                                          "tolerationSeconds": 300}]}}}}


async def test_companion_serves_the_webhook_with_the_certificate_it_arranged(sim, tmp_path):
    port = free_port()
    parser = argparse.ArgumentParser()
    main.configure(parser)
    args = parser.parse_args(["--kubeconfig", str(sim.kubeconfig(tmp_path / "admin.kubeconfig")),
                              "--namespace", "edge", "--listen", f"127.0.0.1:{port}", "--webhook-config", "",
                              "--retry-period", "0.2"])
    stop = asyncio.Event()
    serving = tasks.spawn(main.serve(args, stop), name="t-companion")
    try:
        await until(lambda: sim.get("secrets", "edgeproxy-companion-tls", "edge") is not None, timeout=20)
        secret = sim.get("secrets", "edgeproxy-companion-tls", "edge")
        ctx = ssl.create_default_context(cadata=base64.b64decode(secret["data"]["ca.crt"]).decode())
        ctx.check_hostname = False  # the certificate names the Service's DNS names; here it is reached by IP
        url = f"https://127.0.0.1:{port}"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as c:
            async def ok():
                try:
                    async with c.get(url + "/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            async with asyncio.timeout(20):
                while not await ok():
                    await asyncio.sleep(0.05)

            async def answer(node):
                async with c.post(url + "/mutate", json=review(node)) as r:
                    assert r.status == 200
                    return (await r.json())["response"]

            assert await answer("edge-1") == {"uid": "u-1", "allowed": True}  # not opted in yet
            sim.patch("nodes", "edge-1", {"metadata": {"annotations": {
                policy.DURATION: "1h", health.ANNOTATION: health.encode(health.Report(True, ""))}}})
            async with asyncio.timeout(20):
                while "patch" not in (r := await answer("edge-1")):
                    await asyncio.sleep(0.05)
            ops = json.loads(base64.b64decode(r["patch"]))
            assert ops[0]["value"][0]["tolerationSeconds"] == 3600
            assert await answer("edge-2") == {"uid": "u-1", "allowed": True}
            async with c.post(url + "/mutate", data=b"{not json") as bad:
                assert bad.status == 400
    finally:
        stop.set()
        await asyncio.wait([serving], timeout=10)
    assert serving.done() and serving.exception() is None
