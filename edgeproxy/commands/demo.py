"""`edgeproxy demo`: the simulator, edgeproxy in front of it and a kubelet-style client, narrated online then offline.

Everything runs in this one process on one event loop: the Kubernetes API simulator (edgeproxy.sim, TLS with client
certificates) stands in for a cluster's API server across a WAN; edgeproxy (server.running, with the recorder and the
local side wired as edgeproxy.autonomy.wiring does) sits in front of it with its cache in a temporary directory; a
client that behaves as kubelet does (list its node's pods, watch them from the list's resourceVersion, re-watch when a
stream ends, relist on 410, renew its Lease) talks plain HTTP to edgeproxy. The demo changes things on the simulator,
cuts the WAN (the simulator's `down` fault), and prints what each side sees, with timings. With `--kubeconfig` it runs
edgeproxy in front of a real cluster instead and only lists and watches (read-only).

The boundary: a show, not a test harness; it decides nothing for the proxy and reads the cache only to describe it.
Neighbours: sim (the API server), server (runs the proxy), record/local/cache (the offline side), kube.watch
(splitting the client's watch stream).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from edgeproxy.kube import watch as kube_watch

log = logging.getLogger(__name__)

NODE = "edge-1"  # the simulator's node whose client certificate edgeproxy presents (tls.Pki)
NAMESPACE = "edge"  # the fixture cluster's application namespace
SOURCE_HEADER = "X-Edgeproxy-Source"  # edgeproxy.autonomy.local marks every answer it gives from the cache with it
USER_AGENT = "kubelet/v1.32.0 (linux/amd64) kubernetes/edgeproxy-demo"
READONLY_USER_AGENT = "edgeproxy-demo/0.1"
FROM_API = "from the API server"
FROM_CACHE = "from edgeproxy's cache"


class DemoError(Exception):
    """Something the demo waited for did not happen: it says what, and the demo exits 1."""


@dataclasses.dataclass(frozen=True, slots=True)
class Pace:
    """How fast the show runs: pauses between steps, and the proxy's probe and bookmark intervals."""

    pause: float  # seconds between steps, so a reader can follow
    probe_interval: float
    offline_after: int
    online_after: int
    bookmark_interval: float  # edgeproxy's offline watch bookmarks
    backoff: float  # the client's wait before re-watching after a broken stream (client-go: about 0.8 s)
    watch_seconds: float  # read-only mode: how long to watch

    @classmethod
    def of(cls, fast: bool) -> Pace:
        if fast:
            return cls(pause=0.0, probe_interval=0.1, offline_after=1, online_after=1, bookmark_interval=1.0,
                       backoff=0.2, watch_seconds=2.0)
        return cls(pause=0.8, probe_interval=0.5, offline_after=2, online_after=2, bookmark_interval=2.0,
                   backoff=0.8, watch_seconds=10.0)


# ---------------------------------------------------------------------------------------------------- narration

_COLOURS = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35",
            "cyan": "36"}
_ACTOR_COLOUR = {"client": "cyan", "watch": "cyan", "simulator": "magenta", "edgeproxy": "green", "cache": "blue"}


class Narrator:
    """Prints the story: headings, one line per step with the time since the start, colour only on a terminal."""

    __slots__ = ("colour", "out", "started")

    def __init__(self, out: Any = None, colour: bool | None = None) -> None:
        self.out = out or sys.stdout
        if colour is None:
            colour = self.out.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self.colour = colour
        self.started = time.monotonic()

    def paint(self, text: str, style: str) -> str:
        if not self.colour or not style:
            return text
        codes = ";".join(_COLOURS[s] for s in style.split())
        return f"\033[{codes}m{text}\033[0m"

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)

    def title(self, text: str) -> None:
        self._print(self.paint(text, "bold"))

    def heading(self, text: str) -> None:
        self._print("")
        self._print(self.paint(f"== {text}", "bold"))

    def say(self, actor: str, text: str, style: str = "") -> None:
        elapsed = f"{time.monotonic() - self.started:6.2f}s"
        who = self.paint(f"{actor:<9}", _ACTOR_COLOUR.get(actor, ""))
        self._print(f"{self.paint(elapsed, 'dim')}  {who}  {self.paint(text, style)}")

    def more(self, text: str) -> None:
        """A second line under the last step (an explanation for a newcomer)."""
        self._print(" " * 20 + self.paint(text, "dim"))

    def source(self, source: str) -> str:
        return self.paint(source, "yellow" if source == FROM_CACHE else "green")


def _ms(seconds: float) -> str:
    if seconds < 0.001:
        return "<1 ms"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"


def _now_micro() -> str:
    """A Lease renewTime as kubelet writes it (RFC 3339 with microseconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------------------------------- the client


@dataclasses.dataclass(frozen=True, slots=True)
class Seen:
    """One thing the client saw: a watch event, a watch opening or ending. `source` says who answered."""

    what: str  # "event", "open", "end"
    type: str = ""  # ADDED, MODIFIED, DELETED, BOOKMARK, ERROR (events)
    name: str = ""  # namespace/name of the event's object
    rv: str = ""
    source: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    status: int
    source: str
    seconds: float
    body: Any  # parsed JSON, or None


class Client:
    """A kubelet-style client on one node: lists and watches its pods, renews its Lease. Talks JSON over plain HTTP.

    The watch runs as client-go's reflector does: watch from the last resourceVersion seen (events and bookmarks),
    re-watch at once when a stream ends cleanly, after a short backoff when it breaks, relist on 410 Gone.
    """

    __slots__ = ("_cond", "_task", "answers", "base", "changes", "field_selector", "namespace", "narrator", "pace",
                 "pods", "rv", "seen", "session", "stopping", "upstream_online")

    def __init__(self, base: str, narrator: Narrator, pace: Pace, *, user_agent: str, field_selector: str = "",
                 namespace: str = "", upstream_online: Callable[[], bool] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.base = base
        self.narrator = narrator
        self.pace = pace
        self.field_selector = field_selector
        self.namespace = namespace
        self.upstream_online = upstream_online
        self.session = aiohttp.ClientSession(headers={"User-Agent": user_agent, "Accept": "application/json"},
                                             timeout=aiohttp.ClientTimeout(total=None, connect=5, sock_read=None),
                                             connector=aiohttp.TCPConnector(ssl=ssl_context)
                                             if ssl_context is not None else None)
        self.pods: dict[str, dict[str, Any]] = {}  # namespace/name -> object: the client's view of its pods
        self.rv = ""
        self.seen: list[Seen] = []
        self.answers: dict[str, int] = {FROM_API: 0, FROM_CACHE: 0}
        self.changes: dict[str, float] = {}  # namespace/name -> when the demo changed it (to time the event)
        self.stopping = False
        self._cond = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    # --- plumbing

    def _pods_path(self) -> str:
        ns = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"/api/v1{ns}/pods"

    def _selector_query(self) -> str:
        return f"fieldSelector={quote(self.field_selector, safe='')}" if self.field_selector else ""

    def _where(self) -> str:
        if self.field_selector.startswith("spec.nodeName="):
            return f"on node {self.field_selector.split('=', 1)[1]}"
        return f"in namespace {self.namespace}" if self.namespace else "in all namespaces"

    async def request(self, method: str, path: str, body: Any = None, timeout: float = 30) -> Answer:
        start = time.monotonic()
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        async with asyncio.timeout(timeout):
            async with self.session.request(method, self.base + path, data=data, headers=headers) as resp:
                raw = await resp.read()
                source = FROM_CACHE if resp.headers.get(SOURCE_HEADER) == "cache" else FROM_API
        seconds = time.monotonic() - start
        self.answers[source] += 1
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        return Answer(resp.status, source, seconds, parsed)

    async def _observe(self, seen: Seen) -> None:
        async with self._cond:
            self.seen.append(seen)
            self._cond.notify_all()

    def mark(self) -> int:
        """A position in what the client saw; `expect(since=mark)` looks only at what comes after it."""
        return len(self.seen)

    async def expect(self, pred: Callable[[Seen], bool], *, since: int, timeout: float, what: str) -> Seen:
        try:
            async with asyncio.timeout(timeout), self._cond:
                while True:
                    for s in self.seen[since:]:
                        if pred(s):
                            return s
                    await self._cond.wait()
        except TimeoutError:
            raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}") from None

    # --- list

    async def list_pods(self, *, compare: bool = False) -> Answer:
        query = self._selector_query()
        ans = await self.request("GET", self._pods_path() + (f"?{query}" if query else ""))
        n = self.narrator
        if ans.status != 200 or not isinstance(ans.body, dict):
            reason = ans.body.get("message", "") if isinstance(ans.body, dict) else ""
            n.say("client", f"LIST pods {self._where()} → {ans.status} {n.source(ans.source)} {reason}", "red")
            return ans
        items = ans.body.get("items") or []
        rv = (ans.body.get("metadata") or {}).get("resourceVersion", "")
        names = {_key(p) for p in items}
        n.say("client", f"LIST pods {self._where()} → {ans.status} {n.source(ans.source)}: {len(items)} pods at "
                        f"resourceVersion {rv} ({_ms(ans.seconds)})")
        if compare:
            n.more("the same pods the client saw online" if names == set(self.pods) else "NOT the pods seen online")
        self.pods = {_key(p): p for p in items}
        self.rv = rv
        return ans

    # --- watch

    def start_watch(self) -> None:
        from edgeproxy import tasks

        self._task = tasks.spawn(self._watch_loop(), name="demo-watch")

    async def _watch_loop(self) -> None:
        n = self.narrator
        while not self.stopping:
            rv = self.rv
            query = "&".join(filter(None, [self._selector_query(), "watch=true", f"resourceVersion={rv}",
                                           "allowWatchBookmarks=true", "timeoutSeconds=600"]))
            broken = False
            source = ""
            try:
                async with self.session.get(f"{self.base}{self._pods_path()}?{query}") as resp:
                    source = FROM_CACHE if resp.headers.get(SOURCE_HEADER) == "cache" else FROM_API
                    self.answers[source] += 1
                    if resp.status != 200:
                        n.say("watch", f"WATCH from {rv} → {resp.status} {n.source(source)}", "red")
                        broken = True
                    else:
                        why = ""
                        if source == FROM_CACHE and self.upstream_online is not None and self.upstream_online():
                            why = " (failover: no answer upstream)"
                        n.say("watch", f"WATCH pods from resourceVersion {rv} → open, {n.source(source)}{why}")
                        await self._observe(Seen("open", rv=rv, source=source))
                        splitter = kube_watch.JsonSplitter()
                        ended = False
                        async for chunk in resp.content.iter_any():
                            for line in splitter.feed(chunk):
                                ended = ended or await self._event(json.loads(line), source)
                            if ended:
                                break
                        broken = bool(splitter.pending)
            except (aiohttp.ClientError, ValueError) as e:
                broken = True
                source = source or "?"
                log.debug("watch broken: %s", e)
            if self.stopping:
                return
            if broken:
                n.say("watch", f"stream broken (the connection went away mid-event); re-watching from {self.rv} "
                               f"in {self.pace.backoff:.1f} s")
            elif source == FROM_CACHE and self.upstream_online is not None and self.upstream_online():
                n.say("watch", f"edgeproxy ended its cached stream (the API server is back); re-watching from "
                               f"{self.rv}")
            else:
                n.say("watch", f"stream ended; re-watching from resourceVersion {self.rv}")
            await self._observe(Seen("end", rv=self.rv, source=source))
            if broken:
                await asyncio.sleep(self.pace.backoff)  # client-go backs off before re-watching after an error

    async def _event(self, ev: dict[str, Any], source: str) -> bool:
        """Apply one watch event to the client's pods; True when the watch must stop (ERROR)."""
        n = self.narrator
        etype = ev.get("type", "")
        obj = ev.get("object") or {}
        md = obj.get("metadata") or {}
        rv = md.get("resourceVersion", "")
        if etype == "ERROR":
            code = obj.get("code")
            n.say("watch", f"ERROR {code} {obj.get('reason', '')}: {obj.get('message', '')}", "red")
            await self._observe(Seen("event", etype, rv=str(code), source=source))
            if code == 410:  # the reflector relists, then watches from the list's resourceVersion
                n.more("the client relists, as client-go does on 410 Gone")
                await self.list_pods()
            return True
        if etype == "BOOKMARK":
            self.rv = rv
            n.say("watch", f"BOOKMARK at resourceVersion {rv} {n.source(source)} (nothing new; the watch is alive)",
                  "dim")
            await self._observe(Seen("event", etype, rv=rv, source=source))
            return False
        key = _key(obj)
        if etype == "DELETED":
            self.pods.pop(key, None)
        else:
            self.pods[key] = obj
        self.rv = rv
        after = ""
        changed = self.changes.pop(key, None)
        if changed is not None:
            after = f" ({_ms(time.monotonic() - changed)} after the change)"
        n.say("watch", f"{etype:<8} {key}  {_pod_summary(obj)}  rv {rv}{after}")
        await self._observe(Seen("event", etype, key, rv, source))
        return False

    # --- the node's Lease (kubelet's heartbeat)

    async def get_lease(self, node: str) -> Answer:
        return await self.request("GET", f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{node}")

    async def renew_lease(self, lease: dict[str, Any]) -> Answer:
        body = json.loads(json.dumps(lease))
        body.setdefault("spec", {})["renewTime"] = _now_micro()
        md = body["metadata"]
        return await self.request("PUT", f"/apis/coordination.k8s.io/v1/namespaces/{md['namespace']}/leases/"
                                          f"{md['name']}", body)

    async def close(self) -> None:
        self.stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.session.close()


def _key(obj: dict[str, Any]) -> str:
    md = obj.get("metadata") or {}
    return f"{md.get('namespace', '')}/{md.get('name', '')}"


def _pod_summary(obj: dict[str, Any]) -> str:
    md = obj.get("metadata") or {}
    labels = ",".join(f"{k}={v}" for k, v in sorted((md.get("labels") or {}).items()) if k != "pod-template-hash")
    phase = (obj.get("status") or {}).get("phase", "")
    parts = [f"labels {labels}" if labels else "", phase, "terminating" if md.get("deletionTimestamp") else ""]
    return ", ".join(p for p in parts if p)


# ---------------------------------------------------------------------------------------------------- the stack


@dataclasses.dataclass(slots=True)
class Stack:
    """What the demo runs: the proxy service and its cache parts (the simulator is separate)."""

    service: Any  # server.Service
    store: Any  # cache.store.Store
    writer: Any  # cache.writer.Writer
    recorder: Any  # record.Recorder
    local: Any  # local.Local
    cache_dir: Path

    async def settle(self) -> None:
        """Wait until everything the proxy has recorded so far is committed to the store."""
        await asyncio.to_thread(self.recorder.flush, 10)
        await self.writer.flush()


@contextlib.asynccontextmanager
async def proxy_stack(kubeconfig: Path, cache_dir: Path, pace: Pace, node: str | None,
                      client_ca: Path | None = None) -> AsyncIterator[Stack]:
    """edgeproxy on 127.0.0.1 (free ports) in front of `kubeconfig`'s server, with its cache in `cache_dir`. With
    `client_ca` (the cluster CA), kubelet-style clients use the HTTPS listener with the node's client certificate, as
    `edgeproxy install-systemd` sets kubelet up; without, the plain listener acts as the node (--plain-as-node on),
    which the read-only demo against a real cluster uses on a throwaway loopback port.

    The parts are wired as edgeproxy.autonomy.wiring.hooks wires them for `edgeproxy serve`, built here so the demo
    can give its own intervals and read the store it narrates.
    """
    from cache import store as cache_store
    from cache import writer as cache_writer
    from edgeproxy.autonomy import local, record, tokens

    try:
        from edgeproxy import config, server
    except ImportError as e:
        raise DemoError(f"edgeproxy serve is not built yet on this branch ({e})") from e

    st = cache_store.Store.open(str(cache_dir), map_size=1 << 30, durable=False)
    w = cache_writer.Writer(st).start()
    book = tokens.TokenBook(cache_dir / "tokens", node=node or "unknown")
    rec = record.Recorder(w, tokens=book)
    loc = local.Local(st, w, tokens=book, node=node, bookmark_interval=pace.bookmark_interval)
    cfg = config.Config(kubeconfig=str(kubeconfig), listen="127.0.0.1:0", ops_listen="", cache_dir=str(cache_dir),
                        probe_interval=pace.probe_interval, probe_timeout=max(0.5, pace.probe_interval),
                        offline_after=pace.offline_after, online_after=pace.online_after, connect_timeout=2.0,
                        shutdown_timeout=0.5, tls_listen="127.0.0.1:0" if client_ca else "",
                        client_ca_file=str(client_ca or ""), plain_as_node=client_ca is None)
    try:
        async with server.running(cfg, recorder=rec, local=loc) as service:
            up = service.upstream
            up.on_change(loc.upstream_changed)
            loc.is_online = lambda: bool(up.online)
            yield Stack(service, st, w, rec, loc, cache_dir)
    finally:
        rec.close()
        w.close()
        st.close()


def node_ssl(sim: Any, stack: Stack) -> ssl.SSLContext:
    """What kubelet's kubeconfig gives it: trust in edgeproxy's own CA, and the node's client certificate."""
    ctx = ssl.create_default_context(cafile=str(stack.cache_dir / "pki" / "ca.crt"))
    ctx.load_cert_chain(str(sim.pki.node_cert), str(sim.pki.node_key))
    return ctx


def describe_cache(narrator: Narrator, stack: Stack, client: str) -> None:
    """What edgeproxy holds for `client`: its views (one per query) and its stored single-object answers."""
    views = stack.store.views(client=client)
    for key, meta in views:
        query = key.resource + (f".{key.group}" if key.group else "")
        query += "".join(f", {s}" for s in (f"namespace {key.namespace}" if key.namespace else "",
                                            key.label_selector, key.field_selector) if s)
        state = "complete" if meta.complete else "incomplete"
        narrator.say("cache", f"{client}: view \"{query}\" → {meta.count} items at resourceVersion "
                              f"{meta.resource_version}, {state} ({key.encoding.upper()})")
        items = stack.store.items(key)
        if items:
            sample = ", ".join(f"{i.namespace}/{i.name}" if i.namespace else i.name for i in items[:2])
            narrator.more(f"items: {sample}{', ...' if len(items) > 2 else ''} (kept as the bytes the server sent)")
    for okey, size in stack.store.objects(client=client):
        where = f"{okey.namespace}/{okey.name}" if okey.namespace else okey.name
        narrator.say("cache", f"{client}: GET {okey.resource} {where} → {size} bytes ({okey.encoding.upper()})")
    blobs = stack.store.blobs(client=client)
    if blobs:
        narrator.say("cache", f"{len(blobs)} discovery answers of {client} (/version, /api, /apis...)")
    if not views:
        narrator.say("cache", f"nothing recorded for {client} yet", "red")
        return
    used = stack.store.stats().get("used_bytes", 0)
    narrator.say("cache", f"{used / 1e6:.1f} MB on disk (LMDB); a LIST replaces its view in one transaction, each "
                          f"watch event updates it")


async def _until(cond: Callable[[], bool], timeout: float, what: str) -> float:
    """Bounded polling of a condition; returns the seconds it took."""
    start = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}") from None
    return time.monotonic() - start


# ---------------------------------------------------------------------------------------------------- the show


def _demo_pod(name: str, tier: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "demo", "tier": tier}},
        "spec": {"nodeName": NODE, "containers": [{"name": "web", "image": "nginx:1.27"}]},
    }


async def simulated(args: argparse.Namespace, narrator: Narrator, tmp: Path) -> int:
    """The full show against the embedded simulator: online, the WAN down, the WAN back."""
    from edgeproxy.sim import Simulator

    pace = Pace.of(args.fast)
    n = narrator
    n.title("edgeproxy demo: a Kubernetes API simulator plays the cluster's API server across a WAN; edgeproxy sits")
    n.title(f"on edge node {NODE} in front of it; a kubelet-style client lists and watches its pods through edgeproxy.")
    wait = 10.0  # seconds any one expected thing may take

    n.heading("Start")
    sim = Simulator(pki_dir=tmp / "pki", control_port=0 if args.keep_running else None)
    await sim.start()
    try:
        if args.pods:
            sim.seed(pods=args.pods, namespace=NAMESPACE)
        objects = sim.store.objects
        n.say("simulator", f"{sim.url}: a Kubernetes API server in this process, TLS with client certificates")
        n.more(f"{len(objects['nodes'])} nodes, {len(objects['pods'])} pods, "
               f"{sum(len(v) for v in objects.values())} objects in all")
        node_kubeconfig = sim.kubeconfig(tmp / "node.kubeconfig", user="node")
        async with proxy_stack(node_kubeconfig, tmp / "cache", pace, NODE, client_ca=sim.pki.ca_cert) as stack:
            up = stack.service.upstream
            assert stack.service.tls_url is not None
            n.say("edgeproxy", f"{stack.service.tls_url} → the simulator, as the node (system:node:{NODE})")
            n.more(f"cache in {stack.cache_dir}; probes the API server's /readyz every {pace.probe_interval} s")
            faults: dict[str, float] = {}

            def state_changed(online: bool) -> None:
                if online:
                    after = f" {_ms(time.monotonic() - faults['up'])} after the WAN came back" if "up" in faults else ""
                    n.say("edgeproxy", f"ONLINE{after}: the API server answers again; forwarding", "green bold")
                else:
                    after = f" {_ms(time.monotonic() - faults['down'])} after the WAN went down" if "down" in faults \
                        else ""
                    n.say("edgeproxy", f"OFFLINE{after}: answering from its cache", "yellow bold")

            up.on_change(state_changed)
            client = Client(stack.service.tls_url, n, pace, user_agent=USER_AGENT,
                            field_selector=f"spec.nodeName={NODE}", upstream_online=lambda: bool(up.online),
                            ssl_context=node_ssl(sim, stack))
            n.say("client", f"a kubelet on {NODE}: HTTPS to edgeproxy with the node's client certificate")
            n.more("edgeproxy checks it against the cluster CA, then goes upstream as the node, as for a real kubelet")
            try:
                code = await _show(n, sim, stack, client, pace, wait, faults)
                if args.keep_running:
                    await _keep_running(n, sim, stack, tmp)
                else:
                    n.more("`edgeproxy demo --keep-running` leaves it all up for kubectl")
            finally:
                await client.close()
    finally:
        await sim.stop()
    return code


async def _show(n: Narrator, sim: Any, stack: Stack, client: Client, pace: Pace, wait: float,
                faults: dict[str, float]) -> int:
    up = stack.service.upstream

    n.heading("1. Online: edgeproxy forwards every request and records the answers")
    await client.list_pods()
    if not client.rv:
        raise DemoError("the first LIST failed")
    mark = client.mark()
    client.start_watch()
    await client.expect(lambda s: s.what == "open", since=mark, timeout=wait, what="the watch to open")
    lease_ans = await client.get_lease(NODE)
    if lease_ans.status != 200:
        raise DemoError(f"GET of the node's Lease: {lease_ans.status}")
    renewed = await client.renew_lease(lease_ans.body)
    n.say("client", f"PUT its Lease (kubelet's heartbeat, every 10 s) → {renewed.status} "
                    f"{n.source(renewed.source)} ({_ms(renewed.seconds)})")
    lease = renewed.body if renewed.status == 200 else lease_ans.body
    await asyncio.sleep(pace.pause)

    name = f"{NAMESPACE}/demo-web"
    mark = client.mark()
    client.changes[name] = time.monotonic()
    sim.create("pods", _demo_pod("demo-web", "frontend"))
    n.say("simulator", f"a pod {name} is scheduled to {NODE} (someone ran kubectl apply in the cluster)")
    await client.expect(lambda s: s.type == "ADDED" and s.name == name, since=mark, timeout=wait,
                        what="the watch to show the new pod")
    await asyncio.sleep(pace.pause)

    mark = client.mark()
    client.changes[name] = time.monotonic()
    sim.patch("pods", "demo-web", {"metadata": {"labels": {"tier": "canary"}}}, namespace=NAMESPACE)
    n.say("simulator", f"{name} relabelled tier=frontend → tier=canary")
    await client.expect(lambda s: s.type == "MODIFIED" and s.name == name, since=mark, timeout=wait,
                        what="the watch to show the relabelled pod")
    await asyncio.sleep(pace.pause)

    mark = client.mark()
    client.changes[name] = time.monotonic()
    sim.delete("pods", "demo-web", NAMESPACE, grace=0)
    n.say("simulator", f"{name} deleted")
    await client.expect(lambda s: s.type == "DELETED" and s.name == name, since=mark, timeout=wait,
                        what="the watch to show the deleted pod")
    await asyncio.sleep(pace.pause)

    n.heading("2. What edgeproxy recorded, per client and per query")
    await stack.settle()
    describe_cache(n, stack, "kubelet")
    await asyncio.sleep(pace.pause)

    n.heading("3. The WAN goes down")
    mark = client.mark()
    faults["down"] = time.monotonic()
    await sim.down()
    n.say("simulator", "down: it refuses every connection, as if the WAN link were cut", "red")
    await client.expect(lambda s: s.what == "open" and s.source == FROM_CACHE, since=mark, timeout=wait + 10,
                        what="the watch to be answered from the cache")
    await _until(lambda: not up.online, wait, "edgeproxy to turn offline")
    offline_list = await client.list_pods(compare=True)
    if offline_list.status != 200 or offline_list.source != FROM_CACHE:
        raise DemoError("the LIST offline was not answered from the cache")
    await client.expect(lambda s: s.type == "BOOKMARK" and s.source == FROM_CACHE, since=mark, timeout=wait,
                        what="a bookmark on the watch served from the cache")
    renewed = await client.renew_lease(lease)
    n.say("client", f"PUT its Lease → {renewed.status} {n.source(renewed.source)} ({_ms(renewed.seconds)}): "
                    f"kubelet keeps its node alive", "" if renewed.status == 200 else "red")
    if renewed.status == 200:
        lease = renewed.body
    refused = await client.request("POST", f"/api/v1/namespaces/{NAMESPACE}/pods", _demo_pod("demo-new", "x"))
    reason = refused.body.get("reason", "") if isinstance(refused.body, dict) else ""
    n.say("client", f"POST a new pod → {refused.status} {reason} from edgeproxy")
    n.more("other writes wait for the API server; the client retries them later")
    await asyncio.sleep(pace.pause)
    late = f"{NAMESPACE}/demo-late"
    sim.create("pods", _demo_pod("demo-late", "frontend"))
    n.say("simulator", f"meanwhile, in the cluster: pod {late} is scheduled to {NODE} (the edge cannot see it)")
    await asyncio.sleep(pace.pause)

    n.heading("4. The WAN returns")
    mark = client.mark()
    faults["up"] = time.monotonic()
    await sim.up()
    n.say("simulator", "up: it accepts connections again", "green")
    await _until(lambda: up.online, wait, "edgeproxy to turn online")
    # A watch answered by per-request failover is held up to local.FAILOVER_HOLD (5 s) before it ends.
    await client.expect(lambda s: s.type == "ADDED" and s.name == late and s.source == FROM_API, since=mark,
                        timeout=wait, what="the re-watch upstream to bring the pod created while offline")
    n.more("the client re-watched from its last resourceVersion: only what changed came back, no relist")
    back = await client.list_pods()
    if back.status != 200 or back.source != FROM_API:
        raise DemoError("the LIST after the WAN returned was not answered by the API server")

    total = time.monotonic() - n.started
    n.heading(f"Done in {total:.1f} s: {client.answers[FROM_API]} answers came from the API server, "
              f"{client.answers[FROM_CACHE]} from edgeproxy itself while the WAN was down")
    return 0


async def _keep_running(n: Narrator, sim: Any, stack: Stack, tmp: Path) -> None:
    """Leave the simulator and edgeproxy up for kubectl until Ctrl-C."""
    kubeconfig = tmp / "edgeproxy.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "edgeproxy",
        "clusters": [{"name": "edgeproxy", "cluster": {
            "server": stack.service.tls_url, "certificate-authority": str(stack.cache_dir / "pki" / "ca.crt")}}],
        "users": [{"name": "node", "user": {"client-certificate": str(sim.pki.node_cert),
                                            "client-key": str(sim.pki.node_key)}}],
        "contexts": [{"name": "edgeproxy", "context": {"cluster": "edgeproxy", "user": "node"}}],
    }, indent=2) + "\n")
    admin = sim.kubeconfig(tmp / "simulator-admin.kubeconfig", user="admin")
    n.heading("Still running: Ctrl-C to stop and clean up")
    n.say("edgeproxy", f"kubectl --kubeconfig {kubeconfig} get pods -A --field-selector spec.nodeName={NODE}")
    n.more(f"through edgeproxy, as the node {NODE} (a node may list only its own pods); run it once online, cut "
           "the WAN, run it again: the answer then comes from the cache")
    n.say("simulator", f"kubectl --kubeconfig {admin} -n {NAMESPACE} label pod demo-late tier=canary --overwrite")
    n.more("straight to the simulator as an admin, to change things; the client above keeps watching and shows them")
    fault = f"curl -s -X POST {sim.control_url}/__sim/faults -d"
    n.say("simulator", f"{fault} '{{\"down\": true}}'   (and '{{\"down\": false}}' to bring the WAN back)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    n.say("edgeproxy", "stopping")


async def real_cluster(args: argparse.Namespace, narrator: Narrator, tmp: Path) -> int:
    """Read-only: edgeproxy in front of the cluster of `--kubeconfig`; list and watch pods, show the cache."""
    pace = Pace.of(args.fast)
    n = narrator
    n.title("edgeproxy demo against your cluster (read-only: it lists and watches pods, and changes nothing)")
    n.heading("Start")
    async with proxy_stack(Path(args.kubeconfig), tmp / "cache", pace, None) as stack:
        servers = ", ".join(s.url for s in stack.service.upstream.servers)
        n.say("edgeproxy", f"{stack.service.url} → {servers}, with the identity of {args.kubeconfig}")
        n.more(f"cache in {stack.cache_dir}")
        client = Client(stack.service.url, n, pace, user_agent=READONLY_USER_AGENT, namespace=args.namespace)
        try:
            n.heading("Online: list and watch pods through edgeproxy")
            ans = await client.list_pods()
            if ans.status == 403 and not args.namespace:
                n.more("not allowed in all namespaces; trying namespace default")
                client.namespace = "default"
                ans = await client.list_pods()
            if ans.status != 200:
                raise DemoError(f"cannot list pods ({ans.status})")
            client.start_watch()
            n.say("client", f"watching for {pace.watch_seconds:.0f} s; changes in the cluster show up here")
            await asyncio.sleep(pace.watch_seconds)
            n.heading("What edgeproxy recorded")
            await stack.settle()
            describe_cache(n, stack, READONLY_USER_AGENT.split("/")[0])
        finally:
            await client.close()
    n.heading(f"Done: {client.answers[FROM_API]} answers came from the API server through edgeproxy")
    return 0


# ---------------------------------------------------------------------------------------------------- the command


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=None,
                        help="run against this cluster instead of the simulator (read-only: list and watch pods)")
    parser.add_argument("--namespace", default="", help="with --kubeconfig: watch pods of this namespace only")
    parser.add_argument("--pods", type=int, default=100, help="pods to seed the simulator with (default 100)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the simulator and edgeproxy running afterwards and print a kubeconfig for kubectl")
    parser.add_argument("--fast", action="store_true", help="no pauses, short probe intervals (for tests)")


def run(args: argparse.Namespace) -> int:
    if getattr(args, "log_level", None) is None:
        # The narration tells the story; the service's own logs would repeat it on stderr, and a watch the
        # simulator cuts can end with a traceback from aiohttp's server that says nothing to a newcomer.
        logging.getLogger().setLevel(logging.ERROR)
        logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    narrator = Narrator()
    import uvloop

    with tempfile.TemporaryDirectory(prefix="edgeproxy-demo-") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o700)
        show = real_cluster if args.kubeconfig else simulated
        try:
            return uvloop.run(show(args, narrator, tmp_path))
        except DemoError as e:
            print(narrator.paint(f"demo failed: {e}", "red bold"), file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
