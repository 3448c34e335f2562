"""server.py: the ops listener (health, readiness, metrics, debug state) and `edgeproxy serve` as a process."""

from __future__ import annotations

import asyncio
import re
import signal
import sys

import aiohttp
import pytest
import yaml
from prometheus_client import parser

from edgeproxy import server, upstream
from tests import recorded
from tests.test_proxy import free_port, proxy_config, serve_app

pytestmark = pytest.mark.timeout(60)


async def test_ops_listener_endpoints():
    api = recorded.RecordedAPIServer()
    async with serve_app(api.app) as url, \
            server.running(proxy_config(), creds=upstream.Credentials(servers=(url,))) as svc, \
            aiohttp.ClientSession() as s:
        assert svc.ops_url != svc.url
        async with s.get(svc.url + "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1",
                         headers={"User-Agent": "kubelet/v1.32.0 (linux/amd64) kubernetes/abc"}) as r:
            assert r.status == 200
            await r.read()
        async with s.get(svc.url + "/readyz") as r:  # on the proxy listener it is the API server's path
            assert r.status == 200
            assert api.seen[-1][1] == "/readyz"
        async with s.get(svc.ops_url + "/healthz") as r:
            assert r.status == 200 and await r.text() == "ok\n"
        async with s.get(svc.ops_url + "/readyz") as r:
            assert r.status == 200 and "[+]upstream online" in await r.text()
        async with s.get(svc.ops_url + "/debug/state") as r:
            state = await r.json()
        assert state["upstream"]["online"] is True and state["upstream"]["servers"][0]["url"] == url
        async with s.get(svc.ops_url + "/metrics") as r:
            text = await r.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in parser.text_string_to_metric_families(text) for s in family.samples}
    key = ("edgeproxy_requests_total", (("answered_by", "upstream"), ("code", "200"), ("component", "kubelet"),
                                        ("resource", "pods"), ("verb", "list")))
    assert samples[key] >= 1
    assert samples[("edgeproxy_upstream_up", (("server", url),))] == 1
    assert samples[("edgeproxy_online", ())] == 1
    assert samples[("edgeproxy_upstream_bytes_total", (("direction", "received"),))] > 0


async def test_ops_readyz_says_offline():
    creds = upstream.Credentials(servers=(f"http://127.0.0.1:{free_port()}",))
    async with server.running(proxy_config(), creds=creds) as svc, aiohttp.ClientSession() as s:
        async with asyncio.timeout(10):
            while svc.upstream.online:  # offline_after probes in a row fail
                await svc.upstream.probe_all()
        async with s.get(svc.ops_url + "/readyz") as r:
            assert r.status == 200  # still able to answer: from the cache
            assert "[-]upstream offline" in await r.text()
            assert r.headers["X-Edgeproxy-Online"] == "false"


async def test_serve_command_runs_and_stops_on_sigterm(tmp_path):
    api = recorded.RecordedAPIServer()
    async with serve_app(api.app) as url:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": url}}], "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        }))
        # ports 0: the listeners bind whatever is free and the log line says which (a port found free beforehand
        # can be taken by another process before the proxy binds it)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgeproxy", "serve", "--kubeconfig", str(kubeconfig),
            "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
            "--cache-dir", str(tmp_path / "cache"), "--plain-as-node", "on",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(30), aiohttp.ClientSession() as s:
                assert proc.stdout is not None
                url, out = None, b""
                while url is None:  # bounded by the timeout: the listeners are bound once this line is logged
                    line = await proc.stdout.readline()
                    assert line, f"edgeproxy serve exited: {out.decode()}"
                    out += line
                    found = re.search(rb"serving on (http://\S+) ", line)
                    url = found.group(1).decode() if found else None
                async with s.get(f"{url}/version") as r:
                    assert r.status == 200
                    assert await r.read() == recorded.load("version.json").body
                proc.send_signal(signal.SIGTERM)
                await proc.communicate()
                assert proc.returncode == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_serve_without_kubeconfig_is_a_usage_error(tmp_path):
    import subprocess

    out = subprocess.run([sys.executable, "-m", "edgeproxy", "serve", "--kubeconfig", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin"})
    assert out.returncode == 2 and "cannot read kubeconfig" in out.stderr


async def test_ops_readyz_says_connecting_until_the_api_server_answers():
    """Started with the API server unreachable: not "online" (the status line neither) before any answer came."""
    creds = upstream.Credentials(servers=(f"http://127.0.0.1:{free_port()}",))
    async with server.running(proxy_config(), creds=creds) as svc, aiohttp.ClientSession() as s:
        async with s.get(svc.ops_url + "/readyz") as r:
            assert r.status == 200
            text = await r.text()
            assert "[-]upstream connecting" in text and "[+]upstream online" not in text, text
            assert r.headers["X-Edgeproxy-Online"] == "false"
        assert server._status_line(svc).startswith("connecting")
    api = recorded.RecordedAPIServer()
    async with serve_app(api.app) as url, \
            server.running(proxy_config(), creds=upstream.Credentials(servers=(url,))) as svc, \
            aiohttp.ClientSession() as s:
        async with asyncio.timeout(10):
            while svc.upstream.connecting:  # the first probe runs at the start
                await svc.upstream.probe_all()
        async with s.get(svc.ops_url + "/readyz") as r:
            assert "[+]upstream online" in await r.text() and r.headers["X-Edgeproxy-Online"] == "true"
        assert server._status_line(svc).startswith("online")
