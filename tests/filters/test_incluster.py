"""The in-cluster redirect's settings and serving certificate: what pods could not use is refused up front."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from edgeproxy import cli, config, tls
from edgeproxy.filters import incluster


def load(*argv: str) -> config.Config:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args(list(argv)), environ={})


def test_off_by_default_and_one_setting_turns_it_on(tmp_path: Path) -> None:
    assert load().in_cluster_address == ""
    cert, key, _ = tls.own_serving_cert(tmp_path, ["kubernetes.default.svc", "10.96.0.1"])
    cfg = load("--in-cluster-address", "169.254.2.1:10268", "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    assert config.in_cluster_ip(cfg.in_cluster_address) == ("169.254.2.1", 10268)


@pytest.mark.parametrize(("address", "why"), [
    ("127.0.0.1:10268", "loopback"),
    ("0.0.0.0:10268", "unspecified"),
    ("[::1]:10268", "loopback"),
    ("node.example:10268", "want an IP address"),
    ("169.254.2.1", "want HOST:PORT"),
])
def test_addresses_pods_cannot_reach_are_refused(tmp_path: Path, address: str, why: str) -> None:
    cert, key, _ = tls.own_serving_cert(tmp_path, ["kubernetes.default.svc"])
    with pytest.raises(config.ConfigError, match=why):
        load("--in-cluster-address", address, "--tls-cert-file", str(cert), "--tls-key-file", str(key))


def test_the_redirect_needs_a_certificate_of_the_cluster_ca(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="needs --in-cluster-cert-file"):
        load("--in-cluster-address", "169.254.2.1:10268")
    with pytest.raises(config.ConfigError, match="go together"):
        load("--in-cluster-address", "169.254.2.1:10268", "--in-cluster-cert-file", "x.crt")
    cert, key, _ = tls.own_serving_cert(tmp_path, ["kubernetes.default.svc", "10.96.0.1"])
    cfg = load("--in-cluster-address", "169.254.2.1:10268", "--in-cluster-cert-file", str(cert),
               "--in-cluster-key-file", str(key), "--tls-cert-file", "/elsewhere.crt", "--tls-key-file", "/k")
    assert config.in_cluster_cert(cfg) == (str(cert), str(key))


def test_a_certificate_without_kubernetes_default_svc_is_refused(tmp_path: Path) -> None:
    cert, _, _ = tls.own_serving_cert(tmp_path, ["127.0.0.1", "localhost"])
    with pytest.raises(incluster.CertificateError, match=r"not valid for kubernetes\.default\.svc"):
        incluster.check(cert)
    with pytest.raises(incluster.CertificateError, match="cannot read"):
        incluster.check(tmp_path / "missing.crt")
    good, _, _ = tls.own_serving_cert(tmp_path / "good", ["kubernetes.default.svc", "10.96.0.1", "fd00::1"])
    assert incluster.check(good) == {"10.96.0.1", "fd00::1"}


def test_serve_refuses_to_start_with_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key, _ = tls.own_serving_cert(tmp_path, ["127.0.0.1"])
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\ncurrent-context: c\n"
                          "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
                          "users: [{name: u, user: {token: t}}]\n"
                          "contexts: [{name: c, context: {cluster: c, user: u}}]\n")
    rc = cli.main(["serve", "--kubeconfig", str(kubeconfig), "--cache-dir", str(tmp_path / "cache"),
                   "--in-cluster-address", "169.254.2.1:10268", "--tls-cert-file", str(cert),
                   "--tls-key-file", str(key)])
    assert rc == 2
    assert "not valid for kubernetes.default.svc" in capsys.readouterr().err
