"""`edgeproxy debug`: check names a wrong CA, an expired certificate and an unreachable upstream in one clear line
each; collect writes a tarball with no secret value in it; the dashboard queries only metrics edgeproxy exports."""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
import json
import socket
import sys
import tarfile
from pathlib import Path

import pytest
from aiohttp import web

from cache import store
from edgeproxy import cli, tls
from edgeproxy.commands import debug

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cr3t-bearer-token-0123456789abcdef"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = tls.make_ca("cluster-ca")
    ca.write(d / "ca.crt", d / "ca.key")
    other = tls.make_ca("some-other-ca")
    other.write(d / "other-ca.crt", d / "other-ca.key")
    tls.issue(ca, "kube-apiserver", sans=["127.0.0.1", "localhost"]).write(d / "server.crt", d / "server.key")
    tls.issue(ca, "system:node:edge-1", ["system:nodes"], client=True).write(d / "node.crt", d / "node.key")
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=400)
    tls.issue(ca, "system:node:edge-1", ["system:nodes"], client=True, days=30,
              not_before=long_ago).write(d / "expired.crt", d / "expired.key")
    return d


@pytest.fixture
async def apiserver(pki):
    """An HTTPS server with the cluster's serving certificate that answers /readyz (what the check probes)."""
    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context(pki / "server.crt",
                                                                               pki / "server.key", pki / "ca.crt"))
    await site.start()
    port = runner.addresses[0][1]
    yield f"https://127.0.0.1:{port}"
    await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_kubeconfig(path: Path, server: str, ca: Path, cert: Path, key: Path, token: str | None = None) -> Path:
    user = {"client-certificate": str(cert), "client-key": str(key)}
    if token:
        user["token"] = token
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    return path


def check_args(tmp_path: Path, kubeconfig: Path, **kw) -> argparse.Namespace:
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700, exist_ok=True)
    env = tmp_path / "edgeproxy.env"
    env.write_text(f"EDGEPROXY_KUBECONFIG={kubeconfig}\nEDGEPROXY_CACHE_DIR={cache_dir}\n"
                   f"EDGEPROXY_OPS_LISTEN=127.0.0.1:{free_port()}\n")
    values = dict(config=str(env), kubeconfig=None, cache_dir=None, ops_listen=None, ops_url=None, timeout=5.0,
                  skip_cache=False)
    values.update(kw)
    return argparse.Namespace(**values)


def lines_with(report: debug.Report, status: str) -> list[str]:
    return [f"{f.area} {f.message}" for f in report.findings if f.status == status]


async def test_healthy_upstream_passes(tmp_path, pki, apiserver):
    kc = write_kubeconfig(tmp_path / "kc", apiserver, pki / "ca.crt", pki / "node.crt", pki / "node.key")
    args = check_args(tmp_path, kc)
    store.Store.open(str(tmp_path / "cache"), map_size=16 << 20).close()  # an empty, valid cache
    report = await asyncio.to_thread(debug.run_check, args)
    assert not report.failed, report.render()
    (up,) = [f for f in report.findings if f.area == "upstream"]
    assert "ready (connect" in up.message and "/readyz" in up.message
    assert any(f.area == "cache" and "every record reads back" in f.message for f in report.findings)


async def test_wrong_ca_is_named(tmp_path, pki, apiserver):
    kc = write_kubeconfig(tmp_path / "kc", apiserver, pki / "other-ca.crt", pki / "node.crt", pki / "node.key")
    report = await asyncio.to_thread(debug.run_check, check_args(tmp_path, kc))
    (line,) = [f for f in report.failed if f.area == "upstream"]
    assert "WRONG CA" in line.message and str(pki / "other-ca.crt") in line.message
    assert "/etc/kubernetes/pki/ca.crt" in line.fix
    assert "1 problem(s) to fix" in report.render()


async def test_expired_client_certificate_is_named(tmp_path, pki, apiserver):
    kc = write_kubeconfig(tmp_path / "kc", apiserver, pki / "ca.crt", pki / "expired.crt", pki / "expired.key")
    report = await asyncio.to_thread(debug.run_check, check_args(tmp_path, kc))
    expired = [f for f in report.failed if f.area == "certificate"]
    assert len(expired) == 1
    assert "client certificate" in expired[0].message and "EXPIRED" in expired[0].message
    assert "kubelet" in expired[0].fix


async def test_unreachable_upstream_is_named(tmp_path, pki):
    dead = f"https://127.0.0.1:{free_port()}"
    kc = write_kubeconfig(tmp_path / "kc", dead, pki / "ca.crt", pki / "node.crt", pki / "node.key")
    args = check_args(tmp_path, kc)
    assert cli.main(["debug", "check", "--config", args.config]) == 1
    report = await asyncio.to_thread(debug.run_check, args)
    (line,) = [f for f in report.failed if f.area == "upstream"]
    assert line.message.startswith(f"{dead}: UNREACHABLE")
    assert "serves from its cache" in line.fix


def test_open_cache_and_bad_mode(tmp_path, pki):
    kc = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", pki / "ca.crt", pki / "node.crt", pki / "node.key")
    args = check_args(tmp_path, kc, timeout=0.5)
    (tmp_path / "cache").chmod(0o755)
    report = debug.run_check(args)
    assert any("others can read the cache" in m for m in lines_with(report, "fail"))


def test_report_render_is_one_screen():
    report = debug.Report()
    report.add("ok", "config", "fine")
    report.add("fail", "upstream", "https://x: UNREACHABLE", "check the link")
    text = report.render()
    assert text.splitlines() == ["ok    config       fine", "FAIL  upstream     https://x: UNREACHABLE",
                                 "                   fix: check the link", "verdict: 1 problem(s) to fix"]


# ---- collect ----


def test_redaction_keeps_paths_and_drops_secrets():
    env = "EDGEPROXY_KUBECONFIG=/etc/edgeproxy/upstream.kubeconfig\nEDGEPROXY_BOOTSTRAP_TOKEN=abcdef.0123456789abcdef\n"
    out = debug.redact_env(env)
    assert "/etc/edgeproxy/upstream.kubeconfig" in out and "abcdef.0123456789abcdef" not in out
    kc = ("users:\n- name: u\n  user:\n    token: " + TOKEN + "\n    tokenFile: /var/run/token\n"
          "    client-key-data: " + base64.b64encode(b"KEY").decode() + "\n")
    red = debug.redact_kubeconfig(kc)
    assert TOKEN not in red and "S0VZ" not in red and "/var/run/token" in red


async def test_collect_tarball_has_no_secret(tmp_path, pki, apiserver):
    key_text = (pki / "node.key").read_text()
    kc = write_kubeconfig(tmp_path / "kc", apiserver, pki / "ca.crt", pki / "node.crt", pki / "node.key",
                          token=TOKEN)
    args = check_args(tmp_path, kc)
    Path(args.config).write_text(Path(args.config).read_text() + f"EDGEPROXY_ADMIN_PASSWORD=hunter2-{TOKEN[:10]}\n")
    out = tmp_path / "bundle.tar.gz"
    rc = await asyncio.to_thread(cli.main, ["debug", "collect", "--config", args.config, "--out", str(out)])
    assert rc == 0
    with tarfile.open(out) as tar:
        names = tar.getnames()
        blob = b"".join(tar.extractfile(m).read() for m in tar.getmembers() if m.isfile())
    assert any(n.endswith("/check.txt") for n in names)
    assert any(n.endswith("/config/upstream.kubeconfig") for n in names)
    assert any(n.endswith("/config/edgeproxy.env") for n in names)
    assert TOKEN.encode() not in blob
    assert b"hunter2" not in blob
    assert key_text.encode() not in blob and b"PRIVATE KEY-----\n" not in blob
    assert str(apiserver).encode() in blob  # the useful parts are there
    assert (out.stat().st_mode & 0o077) == 0


def test_scrub_catches_what_redaction_missed():
    text = (b"GET /api Authorization: Bearer abc.def-ghi\n"
            b"jwt eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl\n"
            b"-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE\n-----END EC PRIVATE KEY-----\n"
            b"known hunter2-0123456789\n")
    out = debug.scrub(text, [b"hunter2-0123456789"])
    for secret in (b"abc.def-ghi", b"eyJzdWIiOiJ4In0", b"MHcCAQEE", b"hunter2-0123456789"):
        assert secret not in out


# ---- dashboard ----


def test_dashboard_is_generated_and_queries_only_exported_metrics(tmp_path):
    sys.path.insert(0, str(ROOT / "docs"))
    try:
        import make_dashboard
    finally:
        sys.path.pop(0)
    committed = (ROOT / "docs/grafana-dashboard.json").read_text()
    assert committed == make_dashboard.render(), "run python docs/make_dashboard.py"
    from cache import writer
    from edgeproxy import metrics

    class Up:  # what the collector reads of an Upstream
        online = True

        def on_change(self, callback):
            pass

    st = store.Store.open(str(tmp_path / "cache"), map_size=16 << 20)
    up = Up()
    metrics.CACHE.attach(store=st, writer=writer.Writer(st), upstream=up)
    try:
        families = list(metrics.REGISTRY.collect())
    finally:
        metrics.CACHE.detach(up)
        st.close()
    exported = set()
    for family in families:
        exported.add(family.name)
        if family.type == "counter":
            exported.add(family.name + "_total")
        if family.type == "histogram":
            exported.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    import re

    queried = set()
    for p in json.loads(committed)["panels"]:
        for t in p.get("targets", []):
            queried.update(re.findall(r"\b(edgeproxy_[a-z_]+)", t["expr"]))
    assert queried and queried <= exported, queried - exported


# ---- against a running proxy and the simulator ----


@pytest.fixture
async def running_proxy(tmp_path):
    from edgeproxy import config, server
    from edgeproxy.sim.simulator import Simulator

    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        kubeconfig = sim.kubeconfig(tmp_path / "upstream.kubeconfig", user="node")
        cfg = config.Config(kubeconfig=str(kubeconfig), listen="127.0.0.1:0", ops_listen="127.0.0.1:0",
                            probe_interval=30, cache_dir=str(tmp_path / "cache"), plain_as_node=True)
        async with server.running(cfg) as svc:
            yield sim, svc, kubeconfig


async def test_diagnose_shows_what_a_component_asked_and_got(tmp_path, running_proxy, capsys):
    import aiohttp

    from edgeproxy import logs

    _, svc, kubeconfig = running_proxy
    logs.reset_activity()  # the record is per process; other tests' requests are not this one's
    ua = {"User-Agent": "kube-proxy/v1.32.0 (linux/amd64) kubernetes/abc"}
    args = ["debug", "diagnose", "kube-proxy", "--ops-url", svc.ops_url, "--skip-cache",
            "--config", str(tmp_path / "none.env")]  # the cache is open in this process: LMDB allows one handle
    (tmp_path / "none.env").write_text(f"EDGEPROXY_KUBECONFIG={kubeconfig}\n")
    async with aiohttp.ClientSession() as s:
        for path in ("/api/v1/services", "/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices",
                     "/api/v1/pods"):  # the last one the node identity may not do: 403
            async with s.get(svc.url + path, headers=ua) as r:
                await r.read()
        async with s.get(svc.url + "/api/v1/services?watch=1&resourceVersion=0", headers=ua) as watch:
            await asyncio.wait_for(watch.content.readline(), 10)  # open and flowing
            assert await asyncio.to_thread(cli.main, args) == 0
    out = capsys.readouterr().out
    assert out.startswith("kube-proxy: 4 requests since ")  # the watch is counted when it ends
    assert re_line(out, r"list\s+services\s+200 upstream\s+2")
    assert re_line(out, r"list\s+endpointslices\s+200 upstream\s+1")
    assert "last errors (1):" in out and re_line(out, r"list\s+403 upstream .* /api/v1/pods")
    assert "watches open now: 1 from upstream" in out
    # kube-proxy's EndpointSlices pass the response filters (none opted in here: nothing changed)
    assert re_line(out, r"kube-proxy discovery.k8s.io/v1 endpointslices.*: 1 answers, nothing changed")
    assert await asyncio.to_thread(cli.main, [*args[:2], "coredns", *args[3:]]) == 1
    assert "Components seen: kube-proxy" in capsys.readouterr().out


def re_line(text: str, pattern: str) -> bool:
    import re

    return any(re.search(pattern, line) for line in text.splitlines())


async def test_collect_from_a_running_proxy(tmp_path, running_proxy):
    import aiohttp
    from prometheus_client import parser

    _, svc, kubeconfig = running_proxy
    headers = {"User-Agent": "kubelet/v1.32.0", "Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as s, s.get(svc.url + "/api/v1/nodes", headers=headers) as r:
        await r.read()
    env = tmp_path / "edgeproxy.env"
    env.write_text(f"EDGEPROXY_KUBECONFIG={kubeconfig}\nEDGEPROXY_CACHE_DIR={tmp_path / 'cache'}\n")
    out = tmp_path / "b.tar.gz"
    assert await asyncio.to_thread(cli.main, ["debug", "collect", "--config", str(env), "--ops-url", svc.ops_url,
                                              "--out", str(out)]) == 0
    with tarfile.open(out) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert {"check.txt", "state.json", "metrics.txt", "components.json", "logs/recent.jsonl", "host.txt"} <= set(files)
    families = {f.name for f in parser.text_string_to_metric_families(files["metrics.txt"].decode())}
    assert {"edgeproxy_requests", "edgeproxy_online"} <= families
    assert json.loads(files["state.json"])["upstream"]["online"] is True
    key = (Path(json.loads(files["state.json"])["config"]["kubeconfig"]))
    assert key == kubeconfig
    blob = b"".join(files.values())
    assert TOKEN.encode() not in blob
    node_key = Path(str(kubeconfig)).parent / "pki" / "node.key"
    assert node_key.read_bytes() not in blob


# ---- /metrics of a running proxy with its cache: the families the dashboard and `debug collect` rely on ----


async def test_metrics_scraped_from_a_running_proxy_parse(tmp_path, running_proxy):
    import aiohttp
    from prometheus_client import parser

    _, svc, _ = running_proxy
    ua = {"User-Agent": "kubelet/v1.32.0 (linux/amd64) kubernetes/abc"}
    async with aiohttp.ClientSession() as s:
        async with s.get(svc.url + "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1", headers=ua) as r:
            assert r.status == 200
            await r.read()
        await asyncio.to_thread(svc.proxy.recorder.flush, 10)  # the recorder hands the list to the writer...
        await svc.proxy.local.writer.flush()  # ...which commits it
        async with s.get(svc.ops_url + "/metrics") as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    for name in ("edgeproxy_requests", "edgeproxy_request_duration_seconds", "edgeproxy_online",
                 "edgeproxy_upstream_up", "edgeproxy_open_watches", "edgeproxy_upstream_bytes",
                 "edgeproxy_cache_views", "edgeproxy_cache_used_bytes", "edgeproxy_cache_evictions",
                 "edgeproxy_cache_pending_writes", "edgeproxy_cache_commit_duration_seconds",
                 "edgeproxy_offline_seconds", "edgeproxy_offline_current_seconds",
                 "edgeproxy_certificate_expiry_timestamp_seconds"):
        assert name in families, name
    value = {s.name: s.value for f in families.values() for s in f.samples if not s.labels or s.name.endswith("_count")}
    assert value["edgeproxy_cache_views"] >= 1  # the kubelet's pod list became a view
    assert value["edgeproxy_cache_commit_duration_seconds_count"] >= 1
    assert value["edgeproxy_offline_current_seconds"] == 0
    expiry = [s for s in families["edgeproxy_certificate_expiry_timestamp_seconds"].samples]
    assert any(s.labels["file"].endswith("node.crt") for s in expiry)


def test_kubelet_wiring_is_checked(tmp_path):
    from edgeproxy import config
    from edgeproxy.commands import install

    install.install(tmp_path, "/bin/true", tls_sans=None)
    dropin = tmp_path / "etc/systemd/system/kubelet.service.d/20-edgeproxy.conf"
    kc = tmp_path / "etc/edgeproxy/kubelet.kubeconfig"
    dropin.write_text(dropin.read_text().replace("/etc/edgeproxy/kubelet.kubeconfig", str(kc)))
    report = debug.Report()
    debug.check_kubelet(config.Config(tls_listen="127.0.0.1:10268"), report, str(dropin))
    assert report.findings[-1].status == "ok" and "https://127.0.0.1:10268" in report.findings[-1].message
    report = debug.Report()
    debug.check_kubelet(config.Config(tls_listen="127.0.0.1:9999"), report, str(dropin))
    (line,) = report.failed
    assert "points at https://127.0.0.1:10268, the proxy listens on https 127.0.0.1:9999" in line.message
    # the old, credential-less set-up on the plain listener: only with --plain-as-node on
    kc.write_text(kc.read_text().replace("https://127.0.0.1:10268", "http://127.0.0.1:10261"))
    report = debug.Report()
    debug.check_kubelet(config.Config(tls_listen="127.0.0.1:10268"), report, str(dropin))
    (line,) = report.failed
    assert "plain HTTP acts as the node only with --plain-as-node on" in line.message
    report = debug.Report()
    debug.check_kubelet(config.Config(plain_as_node=True), report, str(dropin))
    assert report.findings[-1].status == "ok"


def test_diagnose_lists_the_components_cached_views(tmp_path):
    import io

    from cache import writer
    from edgeproxy import config

    st = store.Store.open(str(tmp_path / "cache"), map_size=16 << 20)
    w = writer.Writer(st).start()
    complete = store.ViewKey("kube-proxy", "", "v1", "services", "", "", "", "", "protobuf")
    partial = store.ViewKey("kube-proxy", "discovery.k8s.io", "v1", "endpointslices", "", "", "", "", "protobuf")
    other = store.ViewKey("kubelet", "", "v1", "pods", "", "", "spec.nodeName=edge-1", "", "protobuf")
    for key in (complete, partial, other):
        w.replace_view(key, store.ViewMeta("List", "v1", "42", True), [])
    w.mark_incomplete(partial)
    assert w.flush_sync(10)
    w.close()
    st.close()
    out = io.StringIO()
    debug._print_views(config.Config(cache_dir=str(tmp_path / "cache")), "kube-proxy", out)
    text = out.getvalue()
    assert "(2 views)" in text and "pods" not in text
    assert re_line(text, r"services .*rv=42\s+complete$")
    assert re_line(text, r"endpointslices .*INCOMPLETE")


# ---- issue 17: what booting the units under a real systemd found ----


def test_collect_to_an_unwritable_place_is_an_error_not_a_traceback(tmp_path, pki, capsys, monkeypatch):
    kc = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", pki / "ca.crt", pki / "node.crt", pki / "node.key")
    args = check_args(tmp_path, kc, timeout=0.2)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc = cli.main(["debug", "collect", "--config", args.config, "--timeout", "0.2", "--skip-cache",
                   "--out", str(blocker / "bundle.tar.gz")])
    err = capsys.readouterr().err
    assert rc == 1 and f"cannot write {blocker}/bundle.tar.gz" in err and "--out" in err
    monkeypatch.chdir("/proc")  # read-only even for root: the default ./edgeproxy-debug-*.tar.gz cannot be written
    rc = cli.main(["debug", "collect", "--config", args.config, "--timeout", "0.2", "--skip-cache"])
    err = capsys.readouterr().err
    assert rc == 1 and "the current directory is not writable here" in err and "Traceback" not in err


def test_cache_outside_the_units_writable_paths_fails_the_check(tmp_path, pki, monkeypatch):
    """EDGEPROXY_CACHE_DIR=/var/cache/edgeproxy under the shipped unit (ProtectSystem=strict,
    ReadWritePaths=/var/lib/edgeproxy): the service would run without a cache; the check names the sandbox and does
    not suggest systemd-tmpfiles."""
    root = tmp_path / "root"
    assert cli.main(["install-systemd", "--root", str(root), "--exec", "/bin/true", "--no-tls"]) == 0
    monkeypatch.setattr(debug, "UNIT_FILE", str(root / "etc/systemd/system/edgeproxy.service"))
    monkeypatch.setattr(debug, "UNIT_DROPIN_DIRS", (str(root / "etc/systemd/system/edgeproxy.service.d"),))
    assert debug.unit_writable_paths() == ["/var/lib/edgeproxy"]
    kc = write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:1", pki / "ca.crt", pki / "node.crt", pki / "node.key")
    args = check_args(tmp_path, kc, timeout=0.2, cache_dir="/var/cache/edgeproxy", skip_cache=True)
    report = debug.run_check(args)
    (finding,) = [f for f in report.failed if "ReadWritePaths" in f.message]
    assert "/var/cache/edgeproxy is outside the unit's ReadWritePaths= (/var/lib/edgeproxy)" in finding.message
    assert "nothing is answered offline" in finding.message
    assert "EDGEPROXY_CACHE_DIR" in finding.fix and "tmpfiles" not in finding.fix
    # a drop-in that lets the unit write it makes it fine
    dropin = root / "etc/systemd/system/edgeproxy.service.d"
    dropin.mkdir()
    (dropin / "cache.conf").write_text("[Service]\nReadWritePaths=/var/cache/edgeproxy\n")
    report = debug.run_check(args)
    assert not [f for f in report.failed if "ReadWritePaths" in f.message]


async def test_check_fails_when_the_running_proxy_has_no_cache(tmp_path, pki):
    """The proxy started but could not open its cache: /readyz says so and the check fails on it."""
    import dataclasses

    from edgeproxy import server, upstream
    from tests.test_proxy import proxy_config

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cfg = dataclasses.replace(proxy_config(), cache=True, cache_dir=str(blocker / "cache"))
    async with server.running(cfg, creds=upstream.Credentials(servers=(f"http://127.0.0.1:{free_port()}",))) as svc:
        status, body = await asyncio.to_thread(debug.fetch, svc.ops_url, "/readyz", 5)
        assert status == 200 and f"[-]cache off: {blocker}/cache cannot be opened" in body.decode()
        assert "NO CACHE" in server._status_line(svc)
        report = debug.Report()
        await asyncio.to_thread(debug.check_proxy, svc.ops_url, report, 5)
        (finding,) = report.failed
        assert "NO CACHE" in finding.message and "nothing is answered offline" in finding.message
