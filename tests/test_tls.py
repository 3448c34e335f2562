"""tls: a CA, server and client certificates that Python's ssl accepts, with the identities kube-apiserver reads."""

from __future__ import annotations

import ssl

from cryptography import x509

from edgeproxy import tls


def test_pki_files_load_and_chain(tmp_path):
    pki = tls.Pki.create(tmp_path, node_name="edge-7")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.server_cert, pki.server_key)
    client = ssl.create_default_context(cafile=str(pki.ca_cert))
    client.load_cert_chain(*pki.client("node"))
    assert (pki.admin_key.stat().st_mode & 0o777) == 0o600
    node = x509.load_pem_x509_certificate(pki.node_cert.read_bytes())
    assert tls.subject(node) == ("system:node:edge-7", ("system:nodes",))
    admin = x509.load_pem_x509_certificate(pki.admin_cert.read_bytes())
    assert tls.subject(admin) == ("admin", ("system:masters",))
    loaded = tls.Pki.load(tmp_path, node_name="edge-7")
    assert loaded.server_cert == pki.server_cert


def test_server_certificate_names(tmp_path):
    ca = tls.make_ca("test-ca")
    leaf = tls.issue(ca, "kube-apiserver", sans=("127.0.0.1", "::1", "localhost"), days=2)
    san = leaf.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert leaf.cert.issuer == ca.cert.subject
    leaf.write(tmp_path / "s.crt", tmp_path / "s.key")
    assert (tmp_path / "s.crt").read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
