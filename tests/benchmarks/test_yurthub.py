"""benchmarks/yurthub.py: what YurtHub is given so it starts standalone, with no CSR to approve and no OpenYurt
controller; and benchmarks/real.py's helpers that need no cluster. The run itself is `python -m benchmarks real`."""

import json
import os
import ssl

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from benchmarks import real
from benchmarks import yurthub as yh
from edgeproxy import tls


def hub(tmp_path):
    ca = tls.make_ca("cluster-ca")
    ca.write(tmp_path / "ca.crt", tmp_path / "ca.key")
    h = yh.YurtHub(tmp_path / "work", server="https://kubernetes:6443", node_name="edge-9",
                   ca_cert=tmp_path / "ca.crt", ca_key=tmp_path / "ca.key", node_ip="10.251.0.2",
                   ops_host="10.251.0.2")
    h.prepare()
    return h, ca


def load(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def names(cert):
    orgs = {a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)}
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    return cn, orgs


def test_client_certificate_is_the_one_yurthub_would_request(tmp_path):
    """CN and O as YurtHub's CSR asks (client-go's certificate manager keeps a certificate covering its template,
    so no CSR is sent), signed by the cluster CA, key in the same PEM as Go's LoadX509KeyPair reads it."""
    h, ca = hub(tmp_path)
    pem = h.root / "pki" / "yurthub-current.pem"
    cert = load(pem)
    assert names(cert) == ("system:node:edge-9", {"openyurt:yurthub", "system:nodes"})
    assert cert.issuer == ca.cert.subject
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in usage
    ssl.create_default_context().load_cert_chain(pem)  # certificate and key in one file
    assert oct(os.stat(pem).st_mode & 0o777) == "0o600"


def test_serving_certificate_covers_every_address_yurthub_asks_for(tmp_path):
    h, _ = hub(tmp_path)
    cert = load(h.root / "pki" / "yurthub-server-current.pem")
    assert names(cert) == ("system:node:edge-9", {"system:nodes"})
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert {"10.96.0.1", "169.254.2.1", "127.0.0.1", "10.251.0.2"} <= ips
    assert set(yh.KUBE_DNS_NAMES) <= set(san.get_values_for_type(x509.DNSName))


def test_bootstrap_kubeconfig_carries_the_ca_inline(tmp_path):
    """YurtHub copies the cluster's certificate-authority-data into pki/ca.crt; a file reference would leave it
    empty and its readiness would never pass."""
    import base64

    h, _ = hub(tmp_path)
    doc = json.loads(h.bootstrap.read_text())
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == "https://kubernetes:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == (tmp_path / "ca.crt").read_bytes()


def test_ports_differ_from_edgeproxys_and_standalone_flags_are_set(tmp_path):
    h, _ = hub(tmp_path)
    argv = h.argv()
    ports = {h.proxy_port, h.serve_port, h.secure_port, h.mux_port}
    assert len(ports) == 4 and not ports & {10261, 10267, 10268, 10269}
    for flag in ("--working-mode=edge", "--enable-node-pool=false", "--enable-dummy-if=false",
                 f"--bootstrap-file={h.bootstrap}", "--node-name=edge-9"):
        assert flag in argv
    assert h.url == f"http://127.0.0.1:{h.proxy_port}"


def test_start_without_the_binary_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setattr(yh, "BIN_DIR", tmp_path / "nowhere")
    h, _ = hub(tmp_path)
    try:
        h.start()
    except yh.YurtHubError as e:
        assert "build.sh yurthub" in str(e)
    else:
        raise AssertionError("started without a binary")


def test_rss_reads_anon_and_file_backed_memory():
    m = real.tree_rss(os.getpid())
    assert m["anon"] > 1 and m["file"] > 1
    assert abs(m["total"] - (m["anon"] + m["file"] + m["shmem"])) < 1


def test_hosts_file_names_the_relay_kubernetes_and_goes_away():
    ns = f"ep-bench-test-{os.getpid()}"
    with real.hosts_file(ns, "10.251.9.1"):
        text = (real.Path("/etc/netns") / ns / "hosts").read_text()
        assert "10.251.9.1 kubernetes" in text and "127.0.0.1 localhost" in text
    assert not (real.Path("/etc/netns") / ns).exists()
