"""The simulator as one object: store + HTTPS listener + fault switches + an in-process API for tests.

`Simulator(...)`, `await sim.start()` → base URL, `sim.kubeconfig(path, user=...)`, `sim.seed(...)`, writes
(`create`, `update`, `patch`, `delete`), faults (`down`/`up`, `hang`, `slow`, `cut_watches`, `restart(compact=)`),
and a control endpoint (`/__sim/faults`, also on an optional plain-HTTP loopback port that stays up while the API
is down) so other processes (demo, benchmarks) can flip them. Neighbours: sim.api (HTTP), sim.store, sim.seed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import pathlib
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from edgeproxy import tasks, tls
from edgeproxy.sim import api, resources, seed, store, writes
from edgeproxy.sim.store import Entry

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Faults:
    """Switches the request path consults. down is handled by closing the listener, not here."""

    down: bool = False
    hang: bool = False
    slow: float = 0.0  # seconds before each response and each watch event
    unhung: asyncio.Event = field(default_factory=asyncio.Event)

    def as_dict(self) -> dict[str, Any]:
        return {"down": self.down, "hang": self.hang, "slow": self.slow}


class Simulator:
    """A Kubernetes API server for tests, the demo and the benchmarks."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        fixture: bool = True,
        pki_dir: str | pathlib.Path | None = None,
        tls_enabled: bool = True,
        tokens: dict[str, tuple[str, tuple[str, ...]]] | None = None,
        history_size: int = 10_000,
        bookmark_interval: float = 60.0,
        watch_timeout: float = 1800.0,
        too_large_wait: float = 3.0,
        control_port: int | None = None,
        anonymous: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.store = store.Store(history_size)
        self.faults = Faults()
        self.faults.unhung.set()
        self.tokens: dict[str, tuple[str, tuple[str, ...]]] = dict(tokens or {})
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.too_large_wait = too_large_wait
        self.anonymous = anonymous
        self.tls_enabled = tls_enabled
        self.control_port = control_port
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if pki_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgeproxy-sim-")
            pki_dir = self._tmp.name
        self.pki_dir = pathlib.Path(pki_dir)
        self.pki: tls.Pki | None = None
        self.api = api.Api(self)
        self._runner: web.AppRunner | None = None
        self._ssl_ctx: ssl.SSLContext | None = None
        self._site: web.TCPSite | None = None
        self._control_runner: web.AppRunner | None = None
        self._templates: dict[str, dict[str, Any]] = {}
        self._seeded = 0
        if fixture:
            self._load_fixture()

    # --- lifecycle -------------------------------------------------------------------------------------------

    def _load_fixture(self) -> None:
        objs = seed.fixture_cluster()
        seed.load(self.store, objs)
        self.store.rv = seed.FIXTURE_RV
        self.store.oldest = seed.FIXTURE_RV
        self._templates = {name: objs[name][0] for name in ("nodes", "services", "endpointslices")}
        self._templates["pods"] = next(p for p in objs["pods"] if p["status"].get("phase") == "Running")

    def _templates_or_fixture(self) -> dict[str, dict[str, Any]]:
        if not self._templates:
            objs = seed.fixture_cluster()
            self._templates = {name: objs[name][0] for name in ("nodes", "services", "endpointslices")}
            self._templates["pods"] = next(p for p in objs["pods"] if p["status"].get("phase") == "Running")
            if not self.store.objects["namespaces"]:
                seed.load(self.store, {"namespaces": objs["namespaces"]})
        return self._templates

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.tls_enabled:
            return None
        if self.pki is None:
            if (self.pki_dir / "server.crt").exists():
                self.pki = tls.Pki.load(self.pki_dir)
            else:
                self.pki = tls.Pki.create(self.pki_dir)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        ctx.load_verify_locations(self.pki.ca_cert)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # bearer-token clients connect without a certificate
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    async def start(self) -> str:
        """Listen; returns the base URL (https://127.0.0.1:PORT)."""
        self._ssl_ctx = self._ssl()
        # handler_cancellation: a watch whose client went away ends at once instead of at its timeout
        self._runner = web.AppRunner(self.api.app(), access_log=None, handle_signals=False, handler_cancellation=True)
        await self._runner.setup()
        await self._listen()
        if self.control_port is not None:
            control = web.Application()
            control.router.add_route("*", "/__sim/{tail:.*}", self.control)
            self._control_runner = web.AppRunner(control, access_log=None, handle_signals=False)
            await self._control_runner.setup()
            site = web.TCPSite(self._control_runner, "127.0.0.1", self.control_port)
            await site.start()
            self.control_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.url

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl_ctx, reuse_address=True)
        await self._site.start()
        if self.port == 0:
            self.port = self._site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    @property
    def url(self) -> str:
        scheme = "https" if self.tls_enabled else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def control_url(self) -> str | None:
        return f"http://127.0.0.1:{self.control_port}" if self.control_port is not None else None

    async def stop(self) -> None:
        self.faults.unhung.set()
        for w in list(self.api.watches):
            w.queue.put_nowait(("CUT", None))
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._control_runner is not None:
            await self._control_runner.cleanup()
            self._control_runner = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- clients ---------------------------------------------------------------------------------------------

    def kubeconfig(self, path: str | pathlib.Path, user: str = "admin") -> pathlib.Path:
        """Write a kubeconfig for "admin" (system:masters) or "node" (system:node:edge-1) with file references."""
        name = f"sim-{user}"
        if not self.tls_enabled:  # plain HTTP: anonymous admin, no credentials
            doc: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "sim", "cluster": {"server": self.url}}],
                "users": [{"name": name, "user": {}}],
                "contexts": [{"name": name, "context": {"cluster": "sim", "user": name}}],
                "current-context": name,
            }
            p = pathlib.Path(path)
            p.write_text(json.dumps(doc, indent=2) + "\n")
            return p
        assert self.pki is not None, "start() the simulator first"
        cert, key = self.pki.client(user)
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "sim", "cluster": {"server": self.url, "certificate-authority": str(self.pki.ca_cert)}}
            ],
            "users": [{"name": name, "user": {"client-certificate": str(cert), "client-key": str(key)}}],
            "contexts": [{"name": name, "context": {"cluster": "sim", "user": name}}],
            "current-context": name,
        }
        p = pathlib.Path(path)
        p.write_text(json.dumps(doc, indent=2) + "\n")
        return p

    def client_ssl(self, user: str = "admin") -> ssl.SSLContext:
        """An ssl context trusting the simulator's CA and presenting the user's client certificate."""
        assert self.pki is not None, "start() the simulator first"
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        cert, key = self.pki.client(user)
        ctx.load_cert_chain(cert, key)
        return ctx

    # --- data ------------------------------------------------------------------------------------------------

    def seed(
        self, *, nodes: int = 0, pods: int = 0, services: int = 0, endpointslices: int = 0, namespace: str = "edge"
    ) -> None:
        """Add synthetic objects cloned from the fixture's (pods spread over all nodes), without events."""
        t = self._templates_or_fixture()
        if namespace and ("", namespace) not in self.store.objects["namespaces"]:
            seed.load(
                self.store,
                {
                    "namespaces": [
                        {
                            "metadata": {
                                "name": namespace,
                                "uid": seed._uid("ns", namespace),
                                "resourceVersion": "1",
                                "creationTimestamp": "2026-11-24T14:25:21Z",
                            },
                            "spec": {"finalizers": ["kubernetes"]},
                            "status": {"phase": "Active"},
                        }
                    ]
                },
            )
        prefix = f"load{self._seeded}" if self._seeded else "load"
        self._seeded += 1
        rv = self.store.rv + 1
        batches: dict[str, list[dict[str, Any]]] = {}
        if nodes:
            batches["nodes"] = list(seed.clone_nodes(t["nodes"], nodes, rv, prefix=f"{prefix}-node"))
            rv += nodes
        if pods:
            names = [k[1] for k in self.store.objects["nodes"]] + [
                n["metadata"]["name"] for n in batches.get("nodes", [])
            ]
            batches["pods"] = list(seed.clone_pods(t["pods"], pods, names or ["edge-1"], namespace, rv, prefix))
            rv += pods
        if services:
            batches["services"] = list(seed.clone_services(t["services"], services, namespace, rv, prefix))
            rv += services
        if endpointslices:
            batches["endpointslices"] = list(
                seed.clone_endpointslices(t["endpointslices"], endpointslices, namespace, rv, prefix)
            )
            rv += endpointslices
        seed.load(self.store, batches)
        self.store.rv = rv - 1
        self.store.compact()  # seeding writes no events: a watch from before it must relist

    def get(self, resource: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        res = resources.BY_NAME[resource]
        entry = self.store.get(resource, (namespace if res.namespaced else "", name))
        return entry.typed(res.api_version) if entry else None

    def create(self, resource: str, obj: dict[str, Any], namespace: str = "") -> dict[str, Any]:
        res = resources.BY_NAME[resource]
        ns = namespace or (obj.get("metadata") or {}).get("namespace", "")
        return writes.create(self.store, res, ns, obj).typed(res.api_version)

    def update(self, resource: str, obj: dict[str, Any], subresource: str = "") -> dict[str, Any]:
        res = resources.BY_NAME[resource]
        md = obj.get("metadata") or {}
        return writes.update(self.store, res, md.get("namespace", ""), md["name"], obj, subresource).typed(
            res.api_version
        )

    def patch(
        self,
        resource: str,
        name: str,
        body: Any,
        *,
        namespace: str = "",
        content_type: str = "application/merge-patch+json",
        subresource: str = "",
    ) -> dict[str, Any]:
        res = resources.BY_NAME[resource]
        return writes.patch_object(self.store, res, namespace, name, content_type, body, subresource).typed(
            res.api_version
        )

    def delete(self, resource: str, name: str, namespace: str = "", grace: int | None = None) -> bool:
        """Delete (graceful for pods on a node); True when the object is gone."""
        res = resources.BY_NAME[resource]
        _entry, gone = writes.delete(self.store, res, namespace, name, grace)
        return gone

    def object_bytes(self, resource: str, name: str, namespace: str = "", encoding: str = "protobuf") -> bytes:
        """The body a GET of the object returns (protobuf envelope or compact JSON)."""
        res = resources.BY_NAME[resource]
        entry: Entry | None = self.store.get(resource, (namespace if res.namespaced else "", name))
        if entry is None:
            raise KeyError(name)
        if encoding == "protobuf":
            from edgeproxy.kube import protobuf

            return protobuf.wrap(res.api_version, res.kind, entry.pb)
        return entry.typed_json(res.api_version) + b"\n"

    # --- faults ----------------------------------------------------------------------------------------------

    async def down(self) -> None:
        """Refuse connections: stop listening and drop every open connection."""
        if self.faults.down:
            return
        self.faults.down = True
        for w in list(self.api.watches):
            w.queue.put_nowait(("CUT", None))
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._runner is not None and self._runner.server is not None:
            for proto in list(self._runner.server.connections):
                if proto.transport is not None:
                    proto.transport.abort()

    async def up(self) -> None:
        if not self.faults.down:
            return
        await self._listen()
        self.faults.down = False

    def hang(self, on: bool = True) -> None:
        """Accept requests and never answer them (until hang(False))."""
        self.faults.hang = on
        if on:
            self.faults.unhung.clear()
        else:
            self.faults.unhung.set()

    def slow(self, seconds: float) -> None:
        """Delay every response and every watch event by `seconds` (0 to stop)."""
        self.faults.slow = max(0.0, seconds)

    def cut_watches(self) -> int:
        """Cut every open watch mid-frame (half a frame, then the connection closes). Returns how many."""
        watches = list(self.api.watches)
        for w in watches:
            w.push(None)
        return len(watches)

    def compact(self) -> None:
        """Forget the event history: watches and continue tokens from before now get 410."""
        self.store.compact()

    async def restart(self, *, compact: bool = True, downtime: float = 0.0) -> None:
        """Go down and come back (optionally after `downtime` seconds) with the history compacted."""
        await self.down()
        if downtime:
            await asyncio.sleep(downtime)
        if compact:
            self.compact()
        await self.up()

    async def control(self, request: web.Request) -> web.Response:
        """GET /__sim/faults: the switches and store state; POST a JSON object to flip them:
        {"down": true|false|seconds, "hang": bool, "slow": seconds, "cut": true, "compact": true,
         "restart": {"compact": true, "downtime": seconds}}."""
        if request.method == "POST":
            try:
                doc = await request.json()
            except ValueError:
                return web.json_response({"error": "body must be JSON"}, status=400)
            await self.apply_faults(doc)
        state = self.faults.as_dict() | {
            "resourceVersion": self.store.rv,
            "oldest": self.store.oldest,
            "watches": len(self.api.watches),
            "objects": {k: len(v) for k, v in self.store.objects.items()},
        }
        return web.json_response(state)

    async def apply_faults(self, doc: dict[str, Any]) -> None:
        if "slow" in doc:
            self.slow(float(doc["slow"] or 0))
        if "hang" in doc:
            self.hang(bool(doc["hang"]))
        if doc.get("cut"):
            self.cut_watches()
        if doc.get("compact"):
            self.compact()
        if "restart" in doc:
            opts = doc["restart"] if isinstance(doc["restart"], dict) else {}
            tasks.spawn(
                self.restart(compact=bool(opts.get("compact", True)), downtime=float(opts.get("downtime", 0))),
                name="sim-restart",
            )
        if "down" in doc:
            down = doc["down"]
            if down is True or (isinstance(down, int | float) and not isinstance(down, bool) and down > 0):
                # answer the control request first, then go down (for `seconds`, then back up)
                tasks.spawn(self._down_for(None if down is True else float(down)), name="sim-down")
            elif down is False:
                await self.up()

    async def _down_for(self, seconds: float | None) -> None:
        await asyncio.sleep(0.05)
        await self.down()
        if seconds is not None:
            await asyncio.sleep(seconds)
            await self.up()
