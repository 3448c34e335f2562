"""Test support for the offline end-to-end tests: the simulator, edgeproxy in front of it with the cache, and a way
to restart the proxy on the same cache (a reboot) while the simulator is down.

The proxy goes upstream with the admin certificate (so every test client's query is allowed); the node's name is
given (edge-1), as `edgeproxy serve` takes it from the node's client certificate. Probing is fast (0.2 s, one
failures → offline, one success → online) and offline bookmarks come every second, so the tests run in seconds.
The cache-health report on the Node is off unless a test asks for it (`health_report_interval`): it is a write to the
cluster at a time of its own (at start, then on every change), which moves every list's resourceVersion, so a test
comparing a list through the proxy with the API server's, or resuming at a version, would race it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from cache import store, writer
from edgeproxy import config, server
from edgeproxy.autonomy import local, record, tokens
from edgeproxy.sim import Simulator

KUBECTL = Path(sys.executable).with_name("kubectl")
NODE = "edge-1"


class CountingRecorder:
    """The recorder, counting the LIST answers that came from upstream (what a relist storm would be made of)."""

    def __init__(self, inner: record.Recorder) -> None:
        self.inner = inner
        self.lists: list[tuple[float, str, str]] = []  # (time, client, path?query)

    def begin(self, info: Any, status: int, headers: Any) -> Any:
        if info.verb == "list":
            self.lists.append((time.monotonic(), info.client.key, info.path))
        return self.inner.begin(info, status, headers)


class Edge:
    """The simulator and a restartable edgeproxy on one cache directory."""

    def __init__(self, tmp: Path, sim: Simulator, **settings: Any) -> None:
        self.tmp = tmp
        self.sim = sim
        self.settings = settings  # Config fields overriding the fast ones below
        self.upstream_kubeconfig = sim.kubeconfig(tmp / "upstream.kubeconfig", user="admin")
        self.cache_dir = tmp / "cache"
        self.recorder: CountingRecorder | None = None
        self.local: local.Local | None = None
        self.service: server.Service | None = None
        self.proxy_kubeconfig = tmp / "proxy.kubeconfig"
        self._stack: contextlib.AsyncExitStack | None = None
        self._parts: tuple[store.Store, writer.Writer, record.Recorder] | None = None

    @property
    def url(self) -> str:
        assert self.service is not None
        return self.service.url

    async def start_proxy(self, port: int = 0) -> None:
        st = store.Store.open(str(self.cache_dir), map_size=256 << 20, durable=False)
        w = writer.Writer(st).start()
        book = tokens.TokenBook(self.cache_dir / "tokens", node=NODE)
        rec = record.Recorder(w, tokens=book)
        self.recorder = CountingRecorder(rec)
        self.local = local.Local(st, w, tokens=book, node=NODE, bookmark_interval=1.0)
        cfg = config.Config(kubeconfig=str(self.upstream_kubeconfig), listen=f"127.0.0.1:{port}", ops_listen="",
                            cache_dir=str(self.cache_dir), probe_interval=0.2, probe_timeout=2.0, offline_after=2,
                            online_after=1, connect_timeout=1.0, shutdown_timeout=0.5, plain_as_node=True,
                            health_report_interval=0.0)
        cfg = dataclasses.replace(cfg, **self.settings)
        self._stack = contextlib.AsyncExitStack()
        self.service = await self._stack.enter_async_context(
            server.running(cfg, recorder=self.recorder, local=self.local))
        self.service.upstream.on_change(self.local.upstream_changed)
        up = self.service.upstream
        self.local.is_online = lambda: bool(up.online)
        self._parts = (st, w, rec)
        self.proxy_kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: edge\n"
            f"clusters: [{{name: c, cluster: {{server: \"{self.service.url}\"}}}}]\n"
            "users: [{name: u, user: {}}]\ncontexts: [{name: edge, context: {cluster: c, user: u}}]\n")

    async def stop_proxy(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        if self._parts is not None:
            st, w, rec = self._parts
            rec.close()
            w.close()
            st.close()
            self._parts = None

    async def settle(self) -> None:
        """Wait until everything recorded so far is in the store."""
        assert self._parts is not None
        _, w, rec = self._parts
        await asyncio.to_thread(rec.flush, 10)
        await w.flush()

    async def wait_state(self, online: bool, timeout: float = 10) -> None:
        assert self.service is not None
        await until(lambda: self.service.upstream.online is online, timeout)

    async def kubectl(self, *args: str, check: bool = True, timeout: float = 60) -> tuple[int, str, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.tmp / "home"),
               "KUBECACHEDIR": str(self.tmp / "kubecache-none")}
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL), "--kubeconfig", str(self.proxy_kubeconfig), "--cache-dir", str(self.tmp / "kc"),
            "--request-timeout", "20s", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
        # a fresh discovery cache for every call: kubectl must get discovery from the proxy each time
        for p in sorted((self.tmp / "kc").rglob("*"), reverse=True):
            p.unlink() if p.is_file() else p.rmdir()
        if check:
            assert proc.returncode == 0, f"kubectl {' '.join(args)}: {err.decode()}"
        return proc.returncode or 0, out.decode(), err.decode()


async def until(cond: Callable[[], bool], timeout: float = 10, every: float = 0.02) -> None:
    """Bounded polling of a condition (no sleeps as synchronisation)."""
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(every)


@contextlib.asynccontextmanager
async def edge(tmp: Path, *, settings: dict[str, Any] | None = None, **sim_kw: Any) -> AsyncIterator[Edge]:
    async with Simulator(pki_dir=tmp / "pki", **sim_kw) as sim:
        e = Edge(tmp, sim, **(settings or {}))
        await e.start_proxy()
        try:
            yield e
        finally:
            await e.stop_proxy()
