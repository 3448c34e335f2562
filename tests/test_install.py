"""`edgeproxy install-systemd --root DIR` lays out every file, keeps an operator's env file, substitutes ExecStart."""

import os
import stat
import subprocess
import sys
from pathlib import Path

from edgeproxy import cli

ROOT = Path(__file__).resolve().parents[1]


def test_install_into_a_root(tmp_path, capsys):
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/opt/edgeproxy/bin/edgeproxy"]) == 0
    expected = [
        "etc/systemd/system/edgeproxy.service",
        "etc/systemd/system/edgeproxy-credentials.service",
        "etc/systemd/system/edgeproxy-credentials.path",
        "etc/systemd/system/kubelet.service.d/20-edgeproxy.conf",
        "etc/tmpfiles.d/edgeproxy.conf",
        "etc/sysusers.d/edgeproxy.conf",
        "etc/default/edgeproxy",
        "etc/edgeproxy/kubelet.kubeconfig",
    ]
    for rel in expected:
        assert (tmp_path / rel).is_file(), rel
    unit = (tmp_path / "etc/systemd/system/edgeproxy.service").read_text()
    assert "ExecStart=/opt/edgeproxy/bin/edgeproxy serve " in unit and "@EXEC@" not in unit
    assert stat.S_IMODE((tmp_path / "etc/default/edgeproxy").stat().st_mode) == 0o640
    assert "systemctl enable --now" in capsys.readouterr().out


def test_env_file_is_kept_unless_forced(tmp_path):
    env = tmp_path / "etc/default/edgeproxy"
    env.parent.mkdir(parents=True)
    env.write_text("EDGEPROXY_LISTEN=127.0.0.1:9999\n")
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true"]) == 0
    assert env.read_text() == "EDGEPROXY_LISTEN=127.0.0.1:9999\n"
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true", "--force"]) == 0
    assert "EDGEPROXY_CACHE_DIR=/var/lib/edgeproxy/cache" in env.read_text()


def test_no_kubelet_leaves_kubelet_alone(tmp_path):
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true", "--no-kubelet"]) == 0
    assert not (tmp_path / "etc/systemd/system/kubelet.service.d").exists()
    assert not (tmp_path / "etc/edgeproxy/kubelet.kubeconfig").exists()


def test_prefix_sets_the_executable(tmp_path):
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--prefix", "/usr/local"]) == 0
    assert "ExecStart=/usr/local/bin/edgeproxy serve" in (tmp_path / "etc/systemd/system/edgeproxy.service").read_text()


def test_env_file_parses_as_systemd_reads_it():
    # KEY=value lines only (systemd's EnvironmentFile has no shell expansion); `serve` reads the EDGEPROXY_* names.
    values = {}
    for line in (ROOT / "systemd/edgeproxy.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    unit = (ROOT / "systemd/edgeproxy.service").read_text()
    assert "$EDGEPROXY_EXTRA_ARGS" in unit
    for name in ("EDGEPROXY_KUBECONFIG", "EDGEPROXY_LISTEN", "EDGEPROXY_CACHE_DIR", "EDGEPROXY_EXTRA_ARGS"):
        assert name in values
    assert values["EDGEPROXY_CACHE_DIR"].startswith("/var/lib/edgeproxy/")


def test_install_command_runs_as_a_process(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edgeproxy", "install-systemd", "--root", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert "written" in out.stdout


def test_listener_pki_is_made_once_with_readable_ca_and_private_key(tmp_path):
    from edgeproxy import tls

    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true",
                     "--tls-san", "169.254.2.1"]) == 0
    pki = tmp_path / "etc/edgeproxy/pki"
    assert stat.S_IMODE(pki.stat().st_mode) == 0o755
    assert stat.S_IMODE((pki / "ca.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE((pki / "serving.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((pki / "ca.key").stat().st_mode) == 0o600
    cert = tls.load_certificate(pki / "serving.crt")
    names = {str(n.value) for n in cert.extensions.get_extension_for_class(tls.x509.SubjectAlternativeName).value}
    assert names == {"127.0.0.1", "::1", "localhost", "169.254.2.1"}
    before = (pki / "serving.crt").read_bytes()
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true"]) == 0
    assert (pki / "serving.crt").read_bytes() == before  # kept: clients already trust it
    # the env file names these files, and the kubeconfig of in-cluster clients names the CA
    env = (tmp_path / "etc/default/edgeproxy").read_text()
    assert "EDGEPROXY_TLS_CERT_FILE=/etc/edgeproxy/pki/serving.crt" in env
    from edgeproxy import kubeconfig

    assert kubeconfig.PROXY_CA == "/etc/edgeproxy/pki/ca.crt"


def test_no_tls_makes_no_pki(tmp_path):
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true", "--no-tls"]) == 0
    assert not (tmp_path / "etc/edgeproxy/pki").exists()
