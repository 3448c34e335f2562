"""A real API server, seeded with pods for `python -m benchmarks real`. Not a scenario: a helper.

`Api` is a small admin client (aiohttp, TLS client certificate). `seed()` creates N pods bound to one node name,
about 1.5 KB each as kube-apiserver stores them (protobuf, with the managedFields and the service-account volume it
adds), by concurrent POSTs over a pool of keep-alive connections: 10,000 take about 20-40 s on 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp

NAMESPACE = "bench"


class ApiError(RuntimeError):
    """The API server refused a request the seeding needs."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Api:
    def __init__(self, server: str, ca: Path, cert: Path, key: Path, *, connections: int = 32) -> None:
        self.server = server.rstrip("/")
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.load_cert_chain(str(cert), str(key))
        self._ssl = ctx
        self._connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=self._connections),
            timeout=aiohttp.ClientTimeout(total=120))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = (200, 201),
                      accept: str = "application/json") -> tuple[int, bytes]:
        assert self._session is not None, "use `async with Api(...)`"
        async with self._session.request(method, self.server + path, json=body,
                                         headers={"Accept": accept}) as r:
            data = await r.read()
            if r.status not in ok:
                raise ApiError(f"{method} {path}: {r.status} {data[:300]!r}", r.status)
            return r.status, data

    async def ensure(self, path: str, body: dict[str, Any]) -> None:
        """Create, or leave as is if it exists."""
        await self.request("POST", path, body, ok=(200, 201, 409))


def pod(i: int, node: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    """A plain application pod bound to `node`: one container with an image, a port, an env var, requests and
    limits; labels of an app. With what the API server adds (defaults, managedFields, the
    kube-api-access projected volume) it stores about 1.5 KB of protobuf."""
    app = f"app-{i % 50}"
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"pod-{i:05d}", "namespace": namespace,
                     "labels": {"app": app, "tier": "web", "bench": "real"}},
        "spec": {
            "nodeName": node,
            "containers": [{
                "name": "web", "image": "registry.k8s.io/pause:3.10",
                "ports": [{"containerPort": 8080, "name": "http"}],
                "env": [{"name": "APP", "value": app}],
                "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "32Mi"}},
            }],
        },
    }


async def prepare(api: Api, node: str, namespace: str = NAMESPACE) -> None:
    """The namespace, its default ServiceAccount (no controller-manager may run to make it) and the Node object."""
    await api.ensure("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    await api.ensure(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                     {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}})
    await api.ensure("/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": node, "labels": {"kubernetes.io/hostname": node, "type": "bench"}}})


async def seed(api: Api, count: int, node: str, namespace: str = NAMESPACE, *, workers: int = 32,
               start: int = 0) -> float:
    """Create pods start..start+count-1 bound to `node` (existing ones are left); returns the seconds taken."""
    await prepare(api, node, namespace)
    path = f"/api/v1/namespaces/{namespace}/pods"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(start, start + count):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            for attempt in range(5):
                try:
                    await api.request("POST", path, pod(i, node, namespace), ok=(201, 409))
                    break
                except (TimeoutError, aiohttp.ClientError, ApiError) as e:
                    if attempt == 4 or (isinstance(e, ApiError) and e.status != 429 and e.status < 500):
                        raise
                    await asyncio.sleep(0.2 * (attempt + 1))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return time.perf_counter() - t0


async def stored_sizes(api: Api, node: str, namespace: str = NAMESPACE) -> dict[str, float]:
    """Bytes per pod of this node's pod list, protobuf and JSON, as the API server sends it."""
    out: dict[str, float] = {}
    q = f"/api/v1/namespaces/{namespace}/pods?fieldSelector=spec.nodeName%3D{node}"
    for enc, accept in (("protobuf", "application/vnd.kubernetes.protobuf"), ("json", "application/json")):
        _, data = await api.request("GET", q, accept=accept)
        out[enc] = len(data)
    total = len(json.loads(data)["items"])
    return {"pods": total, **{f"{k}_bytes_per_pod": v / total for k, v in out.items()},
            **{f"{k}_bytes": v for k, v in out.items()}}
