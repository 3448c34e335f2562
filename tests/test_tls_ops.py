"""tls.py, the proxy's side: the HTTPS listener's own CA and certificate, client-certificate verification against the
cluster CA, and the Reloader that swaps credentials when their files change (retrying while they are half written);
then through a running proxy and the simulator: a client certificate rotated on disk mid-watch, the HTTPS listener."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import socket
import ssl
import threading

import aiohttp
import pytest
from prometheus_client import parser

from edgeproxy import config, server, tls
from edgeproxy.sim.simulator import Simulator


def test_own_serving_cert_is_made_once_and_reused(tmp_path):
    cert, key, ca = tls.own_serving_cert(tmp_path / "pki", ["127.0.0.1", "localhost"])
    first = cert.read_bytes()
    ca_first = ca.read_bytes()
    assert (os.stat(key).st_mode & 0o077) == 0
    again = tls.own_serving_cert(tmp_path / "pki", ["localhost", "127.0.0.1"])
    assert again[0].read_bytes() == first  # same names, fresh: kept
    tls.own_serving_cert(tmp_path / "pki", ["127.0.0.1", "localhost", "169.254.2.1"])
    assert cert.read_bytes() != first and ca.read_bytes() == ca_first  # new names: re-issued by the same CA
    names = tls.load_certificate(cert).extensions.get_extension_for_class(tls.x509.SubjectAlternativeName).value
    assert "169.254.2.1" in {str(n.value) for n in names}


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> tuple[dict | None, Exception | None]:
    """One TLS handshake over a socketpair; returns (the server's view of the client cert, the server's error)."""
    a, b = socket.socketpair()
    result: dict = {}

    def serve():
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                result["peer"] = s.getpeercert()
                s.sendall(b"x")
        except Exception as e:
            result["error"] = e

    t = threading.Thread(target=serve)
    t.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname="127.0.0.1") as c:
            c.recv(1)
    except (ssl.SSLError, OSError):
        pass
    t.join(10)
    return result.get("peer"), result.get("error")


@pytest.fixture
def listener(tmp_path):
    cluster = tls.make_ca("cluster-ca")
    cluster.write(tmp_path / "cluster-ca.crt", tmp_path / "cluster-ca.key")
    cert, key, ca = tls.own_serving_cert(tmp_path / "pki", ["127.0.0.1"])
    return tls.server_context(cert, key, tmp_path / "cluster-ca.crt"), ca, cluster


def client_context(ca_path, cert=None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_path))
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def test_client_certificate_from_the_cluster_ca_is_verified(tmp_path, listener):
    server_ctx, ca, cluster = listener
    node = tls.issue(cluster, "system:node:edge-1", ["system:nodes"], client=True)
    node.write(tmp_path / "c.crt", tmp_path / "c.key")
    peer, error = handshake(server_ctx, client_context(ca, (tmp_path / "c.crt", tmp_path / "c.key")))
    assert error is None
    assert dict(x[0] for x in peer["subject"])["commonName"] == "system:node:edge-1"


def test_no_client_certificate_is_fine_for_token_clients(listener):
    server_ctx, ca, _ = listener
    peer, error = handshake(server_ctx, client_context(ca))
    assert error is None and not peer


def test_client_certificate_from_another_ca_is_refused(tmp_path, listener):
    server_ctx, ca, _ = listener
    stranger = tls.make_ca("stranger")
    tls.issue(stranger, "mallory", client=True).write(tmp_path / "m.crt", tmp_path / "m.key")
    _, error = handshake(server_ctx, client_context(ca, (tmp_path / "m.crt", tmp_path / "m.key")))
    assert isinstance(error, ssl.SSLError)


def test_reloader_swaps_on_change_and_retries_half_written_files(tmp_path, caplog):
    ca = tls.make_ca()
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    tls.issue(ca, "system:node:edge-1", client=True).write(cert, key)
    loaded: list[str] = []

    def reload():
        ctx = ssl.create_default_context()
        ctx.load_cert_chain(str(cert), str(key))  # raises while the pair does not match
        loaded.append(tls.subject(tls.load_certificate(cert))[0])

    expiries: dict[str, float] = {}
    r = tls.Reloader(lambda: [str(cert), str(key)], reload, certs=lambda: [str(cert)],
                     on_expiry=lambda path, ts: expiries.__setitem__(path, ts))
    assert r.check() is False and loaded == []  # nothing changed
    # a rotation caught half way: the new certificate is there, its key not yet
    rotated = tls.issue(ca, "system:node:edge-1-rotated", client=True)
    cert.write_bytes(rotated.cert_pem)
    with caplog.at_level(logging.WARNING, logger="edgeproxy.tls"):
        assert r.check() is False
    assert "cannot be loaded yet" in caplog.text
    assert r.check() is False  # still broken: retried every poll, warned once
    assert caplog.text.count("cannot be loaded yet") == 1
    fd = os.open(key, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, rotated.key_pem)
    os.close(fd)
    assert r.check() is True
    assert loaded == ["system:node:edge-1-rotated"]
    assert expiries[str(cert)] == rotated.cert.not_valid_after_utc.timestamp()
    assert r.check() is False


def test_reloader_warns_days_ahead_of_expiry(tmp_path, caplog):
    ca = tls.make_ca()
    soon = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=360)
    tls.issue(ca, "system:node:edge-1", client=True, days=365, not_before=soon).write(tmp_path / "c.crt",
                                                                                     tmp_path / "c.key")
    r = tls.Reloader(lambda: [str(tmp_path / "c.crt")], lambda: None, warn_days=30)
    with caplog.at_level(logging.WARNING, logger="edgeproxy.tls"):
        left = r.report_expiry()
        r.report_expiry()
    assert 4 * 86400 < left[str(tmp_path / "c.crt")] < 6 * 86400
    assert caplog.text.count("expires in") == 1  # once a day, not at every poll
    (record,) = [rec for rec in caplog.records if "expires in" in rec.getMessage()]
    assert record.event == "certificate_expiring" and 4 < record.days_left < 6


# ---- through the running proxy: rotation mid-watch, the HTTPS listener ----

def write_pem(path, cert, key) -> None:
    """Replace `path` atomically with cert+key in one file, as kubelet's kubelet-client-current.pem holds them."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(cert.read_bytes() + key.read_bytes())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def metric_samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in parser.text_string_to_metric_families(text) for s in family.samples}


@pytest.mark.timeout(60)
async def test_client_cert_rotated_on_disk_mid_watch(tmp_path):
    async with Simulator(pki_dir=tmp_path / "pki") as sim:
        pem = tmp_path / "client.pem"
        write_pem(pem, sim.pki.node_cert, sim.pki.node_key)  # the node identity: may not list every pod
        kubeconfig = tmp_path / "upstream.kubeconfig"
        kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "c", "cluster": {"server": sim.url, "certificate-authority": str(sim.pki.ca_cert)}}],
            "users": [{"name": "u", "user": {"client-certificate": str(pem), "client-key": str(pem)}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        }))
        cfg = config.Config(kubeconfig=str(kubeconfig), listen="127.0.0.1:0", ops_listen="127.0.0.1:0",
                            probe_interval=30, cache_dir=str(tmp_path / "cache"), cert_reload_interval=0.05,
                            plain_as_node=True)
        async with server.running(cfg) as svc, aiohttp.ClientSession() as s:
            all_pods = svc.url + "/api/v1/pods"
            async with s.get(all_pods) as r:
                assert r.status == 403  # system:node:edge-1 may only list its own pods
            # a watch opened with the old certificate
            watch = await s.get(svc.url + "/api/v1/nodes?watch=1&fieldSelector=metadata.name%3Dedge-1"
                                          "&resourceVersion=0")
            assert watch.status == 200
            first = json.loads(await asyncio.wait_for(watch.content.readline(), 10))
            assert first["type"] == "ADDED"
            old_creds = svc.upstream.credentials

            # kubelet rotates: the file is replaced (here by the admin's certificate, so the swap shows)
            write_pem(pem, sim.pki.admin_cert, sim.pki.admin_key)
            async with asyncio.timeout(10):
                while svc.upstream.credentials is old_creds:
                    await asyncio.sleep(0.02)

            async with s.get(all_pods) as r:  # a new connection: the new certificate
                assert r.status == 200, await r.text()
            sim.patch("nodes", "edge-1", {"metadata": {"labels": {"rotated": "yes"}}})
            event = json.loads(await asyncio.wait_for(watch.content.readline(), 10))
            assert event["type"] == "MODIFIED"  # the watch from before the rotation is still flowing
            assert event["object"]["metadata"]["labels"]["rotated"] == "yes"
            watch.close()

            async with s.get(svc.ops_url + "/metrics") as r:
                samples = metric_samples(await r.text())
            assert samples[("edgeproxy_certificate_reloads_total", (("result", "ok"),))] >= 1
            expiry = samples[("edgeproxy_certificate_expiry_timestamp_seconds", (("file", str(pem)),))]
            assert expiry == tls.load_certificate(sim.pki.admin_cert).not_valid_after_utc.timestamp()


@pytest.mark.timeout(60)
async def test_https_listener_passes_the_callers_token(tmp_path):
    tokens = {"coredns-sa-token-0123456789": ("system:serviceaccount:kube-system:coredns",
                                              ("system:serviceaccounts",))}
    async with Simulator(pki_dir=tmp_path / "pki", tokens=tokens) as sim:
        kubeconfig = sim.kubeconfig(tmp_path / "upstream.kubeconfig", user="node")
        cfg = config.Config(kubeconfig=str(kubeconfig), listen="127.0.0.1:0", ops_listen="127.0.0.1:0",
                            tls_listen="127.0.0.1:0", client_ca_file=str(sim.pki.ca_cert), probe_interval=30,
                            cache_dir=str(tmp_path / "cache"))
        async with server.running(cfg) as svc:
            assert svc.tls_url.startswith("https://127.0.0.1:")
            own_ca = tmp_path / "cache" / "pki" / "ca.crt"
            ctx = ssl.create_default_context(cafile=str(own_ca))
            async with aiohttp.ClientSession() as s:
                # the caller's own token goes upstream: the simulator sees the ServiceAccount, not the node
                async with s.get(svc.tls_url + "/api/v1/pods", ssl=ctx,
                                 headers={"Authorization": "Bearer coredns-sa-token-0123456789",
                                          "User-Agent": "coredns/1.11"}) as r:
                    assert r.status == 200  # the node may not list all pods; the token's (unrestricted) user may
                async with s.get(svc.tls_url + "/api/v1/pods", ssl=ctx,
                                 headers={"Authorization": "Bearer not-a-token"}) as r:
                    assert r.status == 401
                # a client certificate from another CA is refused at the handshake
                stranger = tls.make_ca("stranger")
                tls.issue(stranger, "mallory", client=True).write(tmp_path / "m.crt", tmp_path / "m.key")
                bad = ssl.create_default_context(cafile=str(own_ca))
                bad.load_cert_chain(tmp_path / "m.crt", tmp_path / "m.key")
                with pytest.raises(aiohttp.ClientError):
                    async with s.get(svc.tls_url + "/version", ssl=bad) as r:
                        await r.read()
