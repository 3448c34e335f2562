"""upstream.py: kubeconfig parsing, TLS contexts, the prober's hysteresis, token files."""

from __future__ import annotations

import base64
import datetime
import ssl

import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgeproxy import upstream
from tests.test_proxy import serve_app

pytestmark = pytest.mark.timeout(60)


def self_signed(cn: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def kubeconfig(tmp_path, user: dict, cluster: dict | None = None, **extra) -> str:
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "edge",
        "clusters": [{"name": "c", "cluster": cluster if cluster is not None else {"server": "https://10.0.0.1:6443/"}},
                     {"name": "other", "cluster": {"server": "https://10.9.9.9:6443"}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "edge", "context": {"cluster": "c", "user": "u"}},
                     {"name": "o", "context": {"cluster": "other", "user": "u"}}],
        **extra,
    }
    p = tmp_path / "kubeconfig"
    p.write_text(yaml.safe_dump(doc))
    return str(p)


def test_kubeconfig_files_relative_to_it(tmp_path):
    cert, key = self_signed("system:node:edge-1")
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki/ca.crt").write_bytes(cert)
    (tmp_path / "pki/node.crt").write_bytes(cert)
    (tmp_path / "pki/node.key").write_bytes(key)
    path = kubeconfig(tmp_path, {"client-certificate": "pki/node.crt", "client-key": "pki/node.key"},
                      {"server": "https://10.0.0.1:6443/", "certificate-authority": "pki/ca.crt"})
    creds = upstream.load_kubeconfig(path, extra_servers=["https://10.0.0.2:6443", "https://10.0.0.1:6443"])
    assert creds.servers == ("https://10.0.0.1:6443", "https://10.0.0.2:6443")
    assert creds.ca_file == str(tmp_path / "pki/ca.crt") and creds.key_file == str(tmp_path / "pki/node.key")
    assert creds.has_client_cert
    ctx = upstream.ssl_context(creds)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert upstream.load_kubeconfig(path, context="o").servers == ("https://10.9.9.9:6443",)


def test_kubeconfig_inline_data_token_insecure(tmp_path):
    cert, key = self_signed("system:node:edge-1")
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    (tmp_path / "token").write_text("file-token\n")
    path = kubeconfig(tmp_path, {"client-certificate-data": b64(cert), "client-key-data": b64(key),
                                 "token": "inline-token", "tokenFile": "token"},
                      {"server": "https://10.0.0.1:6443", "insecure-skip-tls-verify": True})
    creds = upstream.load_kubeconfig(path)
    assert creds.cert_data == cert and creds.key_data == key and creds.token == "inline-token"
    assert creds.insecure
    ctx = upstream.ssl_context(creds)  # loads the inline pair through a private temporary file
    assert ctx.verify_mode == ssl.CERT_NONE
    up = upstream.Upstream(creds)
    from multidict import CIMultiDict

    h = CIMultiDict()
    assert up.authorize(h) is False and h["Authorization"] == "Bearer file-token"  # client-go: tokenFile wins
    h = CIMultiDict(Authorization="Bearer mine")
    assert up.authorize(h) is True and h["Authorization"] == "Bearer mine"


@pytest.mark.parametrize(("user", "cluster", "message"), [
    ({}, {}, "has no server"),
    ({}, {"server": "ftp://x"}, "not an http"),
    ({"client-certificate": "missing.crt", "client-key": "missing.key"}, None, "does not exist"),
    ({"client-certificate-data": "QQ=="}, None, "without a key"),
])
def test_kubeconfig_errors(tmp_path, user, cluster, message):
    with pytest.raises(upstream.KubeconfigError, match=message):
        upstream.load_kubeconfig(kubeconfig(tmp_path, user, cluster))


def test_kubeconfig_unknown_context(tmp_path):
    with pytest.raises(upstream.KubeconfigError, match="no context named"):
        upstream.load_kubeconfig(kubeconfig(tmp_path, {}), context="nope")


class Switchable:
    """A /readyz whose answer the test flips: what a recovering or failing API server's readyz does."""

    def __init__(self) -> None:
        self.code = 200
        self.app = web.Application()
        self.app.router.add_get("/readyz", self.readyz)

    async def readyz(self, request: web.Request) -> web.Response:
        return web.Response(status=self.code, text="ok" if self.code == 200 else "[-]etcd failed")


async def test_hysteresis_and_callbacks():
    api = Switchable()
    async with serve_app(api.app) as url:
        up = upstream.Upstream(upstream.Credentials(servers=(url,)), probe_interval=3600, offline_after=3,
                               online_after=2)
        changes = []
        up.on_change(changes.append)
        await up.start()
        try:
            server = up.servers[0]
            await up.probe(server)
            assert server.up is True and up.online
            api.code = 500
            for _ in range(2):
                assert not await up.probe(server)
            assert server.up is True and up.online  # two failures are not enough
            await up.probe(server)
            assert server.up is False and not up.online and changes == [False]
            assert "500" in server.last_error
            api.code = 200
            await up.probe(server)
            assert not up.online  # one success is not enough
            await up.probe(server)
            assert up.online and changes == [False, True]
        finally:
            await up.close()


async def test_probe_checks_the_certificate_against_tls_server_name(tmp_path):
    """A server reached by an address its certificate does not name (a relay, a NAT) is up when the kubeconfig's
    tls-server-name is a name the certificate does carry, for the prober as for forwarded requests."""
    from edgeproxy import tls

    ca = tls.make_ca()
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    tls.issue(ca, "kube-apiserver", sans=["kubernetes"]).write(tmp_path / "s.crt", tmp_path / "s.key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp_path / "s.crt", tmp_path / "s.key")
    app = web.Application()
    async def readyz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        for name, up_after in (("kubernetes", True), (None, False)):
            up = upstream.Upstream(upstream.Credentials(servers=(url,), ca_file=str(tmp_path / "ca.crt"),
                                                        tls_server_name=name), probe_interval=3600)
            await up.start()
            try:
                assert await up.probe(up.servers[0]) is up_after
                if not up_after:
                    assert "not valid for '127.0.0.1'" in up.servers[0].last_error
            finally:
                await up.close()
    finally:
        await runner.cleanup()


async def test_token_file_is_reread_when_it_changes(tmp_path):
    token = tmp_path / "token"
    token.write_text("one")
    up = upstream.Upstream(upstream.Credentials(servers=("http://127.0.0.1:1",), token_file=str(token)))
    from multidict import CIMultiDict

    h = CIMultiDict()
    up.authorize(h)
    assert h["Authorization"] == "Bearer one"
    token.write_text("two")
    import os

    os.utime(token, (1, 1))  # a different mtime, as a rotation gives
    up._refresh_token()  # what the prober does each round
    h = CIMultiDict()
    up.authorize(h)
    assert h["Authorization"] == "Bearer two"


async def test_send_raises_unavailable_when_nothing_listens():
    from tests.test_proxy import free_port

    up = upstream.Upstream(upstream.Credentials(servers=(f"http://127.0.0.1:{free_port()}",)), probe_interval=3600)
    await up.start()
    try:
        from multidict import CIMultiDict

        with pytest.raises(upstream.Unavailable, match=r"127\.0\.0\.1"):
            await up.send("GET", "/api", CIMultiDict())
        assert up.servers[0].fails >= 1
    finally:
        await up.close()


async def test_header_timeout_drops_the_connection_and_counts_toward_offline():
    import asyncio

    from multidict import CIMultiDict

    from tests import recorded

    api = recorded.RecordedAPIServer()
    peers: list[object] = []  # the client side of the connection each request came on
    dropped = asyncio.Event()

    @web.middleware
    async def note(request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.path == "/readyz":
            return await handler(request)
        peers.append(request.transport.get_extra_info("peername"))
        try:
            return await handler(request)
        except asyncio.CancelledError:  # the proxy closed the connection under the hung request
            dropped.set()
            raise

    api.app.middlewares.append(note)
    version = recorded.load("version.json").body

    async def get(timeout: float) -> bytes:
        _, resp = await up.send("GET", "/version", CIMultiDict(), header_timeout=timeout)
        body = b"".join([chunk async for chunk in resp.iter_chunks()])
        resp.release()
        return body

    async with serve_app(api.app) as url:
        # Not started: no prober, so only the requests move the hysteresis.
        up = upstream.Upstream(upstream.Credentials(servers=(url,)), offline_after=2, online_after=1)
        changes: list[bool] = []
        up.on_change(changes.append)
        try:
            async with asyncio.timeout(20):
                # two at once: two connections, both back to the pool
                assert await asyncio.gather(get(5), get(5)) == [version, version]
                api.hang.set()  # a kept-alive connection that goes silent: a black-holed link
                with pytest.raises(upstream.Unavailable, match=r"no response head within 0\.2s"):
                    await get(0.2)
                assert up.online and up.servers[0].fails == 1
                await dropped.wait()  # its connection was closed, not left to a late answer
                with pytest.raises(upstream.Unavailable, match="no response head"):
                    await get(0.2)
                assert not up.online and changes == [False]  # offline_after header timeouts in a row
                api.hang.clear()
                assert await get(5) == version
                assert up.online and changes == [False, True]
        finally:
            await up.close()
    assert len(set(peers[:2])) == 2 and peers[2] in peers[:2]  # the hung request went on a pooled connection...
    # ...which was dropped, and its idle sibling with it: every later request came on a new connection
    assert len(peers) == len(set(peers)) + 1


async def test_server_down_names_the_server_not_the_tls_context(caplog):
    """A refused https connection: the error and the server_down line say which host:port and why, not aiohttp's
    `ssl:<ssl.SSLContext object at 0x...>`."""
    from tests.test_proxy import free_port

    port = free_port()
    url = f"https://127.0.0.1:{port}"
    up = upstream.Upstream(upstream.Credentials(servers=(url,)), probe_interval=3600, offline_after=1)
    await up.start()
    try:
        caplog.set_level("WARNING", logger="edgeproxy.upstream")
        assert not await up.probe(up.servers[0])
        error = up.servers[0].last_error
        assert f"127.0.0.1:{port}" in error and "SSLContext" not in error, error
        (down,) = [r for r in caplog.records if getattr(r, "event", None) == "server_down"]
        assert url in down.getMessage() and "SSLContext" not in down.getMessage()
        assert "SSLContext" not in down.error
    finally:
        await up.close()


async def test_not_reached_until_an_api_server_answers():
    """Until a probe or a request gets an answer, `online` is only presumed: `connecting` says so; the first answer
    ends it and tells the listeners once."""
    api = Switchable()
    async with serve_app(api.app) as url:
        up = upstream.Upstream(upstream.Credentials(servers=(url,)), probe_interval=3600)
        reached = []
        up.on_reached(lambda: reached.append(True))
        assert up.online and up.connecting and not up.reached
        api.code = 500
        await up.start()
        try:
            await up.probe(up.servers[0])
            assert up.connecting and reached == []
            api.code = 200
            await up.probe(up.servers[0])
            assert not up.connecting and reached == [True]
            await up.probe(up.servers[0])
            assert reached == [True]
        finally:
            await up.close()
