"""The hardened unit, the credentials units and the kubelet drop-in, as installed, pass `systemd-analyze verify`."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeproxy.commands import install

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
pytestmark = pytest.mark.skipif(not Path(SYSTEMD_ANALYZE).exists(), reason="systemd-analyze missing "
                                "(tests/host-packages.sh installs it)")


def analyze(*args, cwd):
    # --man=no: the container has no man pages; verify still parses every directive and checks ExecStart exists.
    return subprocess.run([SYSTEMD_ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def units(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    install.install(root, sys.executable)  # an ExecStart that exists
    units = root / "etc/systemd/system"
    # A stand-in kubelet.service using the variable kubeadm's 10-kubeadm.conf passes, so the drop-in gets verified.
    (units / "kubelet.service").write_text("[Service]\nExecStart=/bin/true $KUBELET_KUBECONFIG_ARGS\n")
    return units


def test_units_verify_without_a_single_warning(units):
    names = ["edgeproxy.service", "edgeproxy-credentials.service", "kubelet.service"]
    result = analyze("verify", "--man=no", *[f"./{n}" for n in names], cwd=units)
    # verify exits 0 on unknown keys or bad values ("..., ignoring"): any output at all is a defect of ours.
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
    assert result.stdout.strip() == "", result.stdout


def test_verify_catches_a_typo(units, tmp_path):
    # The check above only means something if verify reports a bad directive: prove it does here.
    bad = tmp_path / "edgeproxy.service"
    bad.write_text((units / "edgeproxy.service").read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter"))
    result = analyze("verify", "--man=no", "./edgeproxy.service", cwd=tmp_path)
    assert "stricter" in result.stderr


def test_unit_is_hardened(units):
    text = (units / "edgeproxy.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert settings["Type"] == "notify"
    assert settings["Restart"] == "always"
    assert settings["WatchdogSec"]
    assert settings["ProtectSystem"] == "strict"
    assert settings["ReadWritePaths"] == "/var/lib/edgeproxy"
    assert settings["NoNewPrivileges"] == settings["PrivateTmp"] == settings["ProtectHome"] == "yes"
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["RestrictAddressFamilies"].split() == ["AF_UNIX", "AF_INET", "AF_INET6"]
    assert settings["User"] == "edgeproxy"
    assert settings["EnvironmentFile"] == "-/etc/default/edgeproxy"
    assert settings["ExecStart"].startswith(f"{sys.executable} serve ")


@pytest.mark.parametrize("unit", ["edgeproxy.service", "edgeproxy-credentials.service"])
def test_security_exposure_is_low(units, unit):
    result = analyze("security", "--offline=true", f"./{unit}", cwd=units)
    match = re.search(rf"Overall exposure level for {unit}: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    # 0 = fully locked down, 10 = unprotected; a network proxy that must read its config scores about 1.4, the root
    # copy of kubelet's certificate (two capabilities, no network) about 1.2 (it was 6.1 MEDIUM).
    assert float(match.group(1)) <= 2.0, result.stdout


def test_the_credentials_service_follows_every_rotation(units):
    """No .path trigger to miss (the one on kubelet-client-current.pem missed rotations): a long-running copier that
    is ready once the first copy is made, restarted if it dies or wedges, enabled at boot, ordered before the proxy."""
    assert not (units / "edgeproxy-credentials.path").exists()
    service = (units / "edgeproxy-credentials.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", service, re.M))
    assert "Condition" not in service
    assert settings["ExecStart"] == f"{sys.executable} copy-credentials --follow"
    assert settings["Type"] == "notify" and settings["Restart"] == "always" and settings["WatchdogSec"]
    assert settings["WantedBy"] == "multi-user.target" and settings["Before"] == "edgeproxy.service"
    proxy = dict(re.findall(r"^(\w+)=(.*)$", (units / "edgeproxy.service").read_text(), re.M))
    assert "edgeproxy-credentials.service" in proxy["After"] and "edgeproxy-credentials.service" in proxy["Wants"]


def test_documentation_names_edgeproxys_guide(units):
    for unit in ("edgeproxy.service", "edgeproxy-credentials.service"):
        (doc,) = re.findall(r"^Documentation=(.*)$", (units / unit).read_text(), re.M)
        assert doc.startswith("file:///") and doc.endswith("/operations.md"), doc
        assert Path(doc.removeprefix("file://")).is_file()


def test_kubelet_drop_in_points_at_the_proxy_kubeconfig(units):
    dropin = (units / "kubelet.service.d/20-edgeproxy.conf").read_text()
    assert "KUBELET_KUBECONFIG_ARGS=--kubeconfig=/etc/edgeproxy/kubelet.kubeconfig" in dropin
    assert "After=edgeproxy.service" in dropin
    kubelet_kubeconfig = units.parents[2] / "etc/edgeproxy/kubelet.kubeconfig"
    text = kubelet_kubeconfig.read_text()  # HTTPS with kubelet's own client certificate (guard/trust.py)
    assert "https://127.0.0.1:10268" in text and "/var/lib/kubelet/pki/kubelet-client-current.pem" in text


def test_tmpfiles_keeps_the_cache_private(units):
    root = units.parents[2]
    lines = [line.split() for line in (root / "etc/tmpfiles.d/edgeproxy.conf").read_text().splitlines()
             if line and not line.startswith("#")]
    by_path = {fields[1]: fields for fields in lines}
    assert by_path["/var/lib/edgeproxy/cache"][2:5] == ["0700", "edgeproxy", "edgeproxy"]
    assert by_path["/var/lib/edgeproxy"][2] == "0700"
