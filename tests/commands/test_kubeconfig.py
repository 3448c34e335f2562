"""`edgeproxy kubeconfig`: each file loads with the kubernetes client's own loader and says the right thing."""

import base64

import pytest
from kubernetes import client, config

from edgeproxy import cli
from edgeproxy.commands import kubeconfig


def load(path):
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    return configuration


def test_kubelet_goes_over_https_with_its_own_client_certificate(tmp_path):
    out = tmp_path / "kubelet.kubeconfig"
    assert cli.main(["kubeconfig", "--component", "kubelet", "--out", str(out)]) == 0
    doc = kubeconfig.build("kubelet")
    assert doc["clusters"][0]["cluster"] == {"server": "https://127.0.0.1:10268",
                                             "certificate-authority": "/etc/edgeproxy/pki/ca.crt"}
    assert doc["users"][0]["user"] == {"client-certificate": "/var/lib/kubelet/pki/kubelet-client-current.pem",
                                       "client-key": "/var/lib/kubelet/pki/kubelet-client-current.pem"}
    assert "https://127.0.0.1:10268" in out.read_text()


def test_kubelet_on_the_plain_listener_is_an_explicit_choice(tmp_path):
    out = tmp_path / "kubelet.kubeconfig"
    assert cli.main(["kubeconfig", "--component", "kubelet", "--server", "http://127.0.0.1:10261",
                     "--out", str(out)]) == 0
    c = load(out)
    assert c.host == "http://127.0.0.1:10261"
    assert not c.api_key and not c.cert_file and not c.ssl_ca_cert


@pytest.mark.parametrize("component", ["kube-proxy", "coredns", "my-operator"])
def test_in_cluster_components_use_https_with_their_token(tmp_path, component):
    token = tmp_path / "token"
    token.write_text("eyJhbGciOi.token-of-" + component)
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    out = tmp_path / f"{component}.kubeconfig"
    assert cli.main(["kubeconfig", "--component", component, "--token-file", str(token),
                     "--certificate-authority", str(ca), "--out", str(out)]) == 0
    c = load(out)
    assert c.host == "https://127.0.0.1:10268"
    assert c.api_key["BearerToken"] == "Bearer eyJhbGciOi.token-of-" + component
    assert c.ssl_ca_cert == str(ca)


def test_default_paths_are_the_service_account_and_the_proxy_ca():
    doc = kubeconfig.build("kube-proxy")
    assert doc["users"][0]["user"] == {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}
    assert doc["clusters"][0]["cluster"]["certificate-authority"] == "/etc/edgeproxy/pki/ca.crt"


def test_embedded_ca_and_custom_server(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    doc = kubeconfig.build("coredns", server="https://169.254.2.1:10268", certificate_authority=str(ca),
                           embed_ca=True)
    cluster = doc["clusters"][0]["cluster"]
    assert cluster["server"] == "https://169.254.2.1:10268"
    assert base64.b64decode(cluster["certificate-authority-data"]) == ca.read_bytes()


def test_upstream_has_the_node_identity(tmp_path):
    out = tmp_path / "upstream.kubeconfig"
    pem = tmp_path / "client.pem"
    pem.write_text("x")
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    assert cli.main(["kubeconfig", "--component", "upstream", "--server", "https://10.0.0.1:6443",
                     "--ca-file", str(ca), "--client-certificate", str(pem), "--out", str(out)]) == 0
    c = load(out)
    assert c.host == "https://10.0.0.1:6443"
    assert c.cert_file == c.key_file == str(pem)


def test_upstream_needs_a_server(capsys):
    assert cli.main(["kubeconfig", "--component", "upstream"]) == 2
    assert "--server" in capsys.readouterr().err


def test_credentials_over_http_are_refused():
    with pytest.raises(ValueError, match="https"):
        kubeconfig.build("kube-proxy", server="http://127.0.0.1:10261")
