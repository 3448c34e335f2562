"""`edgeproxy install-systemd --root DIR` lays out every file, keeps an operator's env file, substitutes ExecStart."""

import os
import stat
import subprocess
import sys
from pathlib import Path

from edgeproxy import cli

ROOT = Path(__file__).resolve().parents[2]


def test_install_into_a_root(tmp_path, capsys):
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/opt/edgeproxy/bin/edgeproxy"]) == 0
    expected = [
        "etc/systemd/system/edgeproxy.service",
        "etc/systemd/system/edgeproxy-credentials.service",
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
    ca_before = (pki / "ca.crt").read_bytes()
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true", "--reissue-tls",
                     "--tls-san", "10.1.2.3"]) == 0
    assert (pki / "serving.crt").read_bytes() != before and (pki / "ca.crt").read_bytes() == ca_before
    names = {str(n.value) for n in tls.load_certificate(pki / "serving.crt").extensions.get_extension_for_class(
        tls.x509.SubjectAlternativeName).value}
    assert "10.1.2.3" in names
    # the env file names these files, and the kubeconfig of in-cluster clients names the CA
    env = (tmp_path / "etc/default/edgeproxy").read_text()
    assert "EDGEPROXY_TLS_CERT_FILE=/etc/edgeproxy/pki/serving.crt" in env
    from edgeproxy.commands import kubeconfig

    assert kubeconfig.PROXY_CA == "/etc/edgeproxy/pki/ca.crt"


def test_no_tls_makes_no_pki(tmp_path):
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true", "--no-tls"]) == 0
    assert not (tmp_path / "etc/edgeproxy/pki").exists()


async def test_installed_files_run_the_proxy_end_to_end(tmp_path):
    """The README's install, without systemd: install-systemd into a root, the credentials copy, the upstream
    kubeconfig, then `serve` reads the installed env file (paths moved under the root) and answers kubelet over
    HTTP and a ServiceAccount client (the kubernetes Python client, as kube-proxy) over HTTPS; debug check agrees."""
    import asyncio
    import shutil
    import socket

    from kubernetes import client, config

    from edgeproxy.sim.simulator import Simulator
    from tests.test_proxy import free_port

    root = tmp_path / "root"
    sa_token = "kube-proxy-sa-token-0123456789"
    async with Simulator(pki_dir=tmp_path / "sim-pki",
                         tokens={sa_token: ("system:serviceaccount:kube-system:kube-proxy", ())}) as sim:
        assert cli.main(["install-systemd", "--root", str(root), "--exec", sys.executable]) == 0
        pki = root / "var/lib/edgeproxy/pki"  # what edgeproxy-credentials.service does on a host
        pki.mkdir(parents=True)
        (pki / "client.pem").write_bytes(sim.pki.node_cert.read_bytes() + sim.pki.node_key.read_bytes())
        shutil.copy(sim.pki.ca_cert, pki / "ca.crt")
        assert cli.main(["kubeconfig", "--component", "upstream", "--server", sim.url,
                         "--ca-file", str(pki / "ca.crt"), "--client-certificate", str(pki / "client.pem"),
                         "--out", str(root / "etc/edgeproxy/upstream.kubeconfig")]) == 0
        env_file = root / "etc/default/edgeproxy"
        listen, tls_port, ops = free_port(), free_port(), free_port()
        text = env_file.read_text().replace("=/", f"={root}/")
        for default, port in (("10261", listen), ("10268", tls_port), ("10267", ops)):
            text = text.replace(f"127.0.0.1:{default}", f"127.0.0.1:{port}")
        env_file.write_text(text)

        notify_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify_sock.bind(str(tmp_path / "notify"))
        notify_sock.setblocking(False)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEPROXY_")}
        env["NOTIFY_SOCKET"] = str(tmp_path / "notify")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edgeproxy", "serve", "--config", str(env_file), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            async with asyncio.timeout(30):
                ready = (await asyncio.get_running_loop().sock_recv(notify_sock, 4096)).decode()
            assert "READY=1" in ready, ready

            def as_kube_proxy() -> list[str]:
                token = tmp_path / "token"
                token.write_text(sa_token)
                kc = tmp_path / "kube-proxy.kubeconfig"
                assert cli.main(["kubeconfig", "--component", "kube-proxy", "--token-file", str(token),
                                 "--server", f"https://127.0.0.1:{tls_port}",
                                 "--certificate-authority", str(root / "etc/edgeproxy/pki/ca.crt"),
                                 "--out", str(kc)]) == 0
                api = client.CoreV1Api(config.new_client_from_config(config_file=str(kc)))
                return [s.metadata.name for s in api.list_service_for_all_namespaces().items]

            def as_kubelet() -> str:
                # the installed kubelet kubeconfig, with its paths moved under the root and kubelet's certificate
                kc = tmp_path / "kubelet.kubeconfig"
                text = (root / "etc/edgeproxy/kubelet.kubeconfig").read_text()
                text = text.replace("127.0.0.1:10268", f"127.0.0.1:{tls_port}").replace('"/', f'"{root}/')
                text = text.replace(f"{root}/var/lib/kubelet/pki/kubelet-client-current.pem", str(pki / "client.pem"))
                kc.write_text(text)
                api = client.CoreV1Api(config.new_client_from_config(config_file=str(kc)))
                return api.read_node("edge-1").metadata.name

            def anyone_on_the_host() -> int:
                kc = tmp_path / "anonymous.kubeconfig"
                assert cli.main(["kubeconfig", "--component", "kubelet", "--server", f"http://127.0.0.1:{listen}",
                                 "--out", str(kc)]) == 0
                api = client.CoreV1Api(config.new_client_from_config(config_file=str(kc)))
                try:
                    api.read_node("edge-1")
                except client.ApiException as e:
                    return e.status
                return 200

            assert await asyncio.to_thread(as_kube_proxy)  # the ServiceAccount's token went through HTTPS
            assert await asyncio.to_thread(as_kubelet) == "edge-1"  # its client certificate, over HTTPS
            assert await asyncio.to_thread(anyone_on_the_host) == 401  # the plain listener lends no identity
            check = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "edgeproxy", "debug", "check", "--config", str(env_file), cwd=ROOT, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await asyncio.wait_for(check.communicate(), 60)
            assert check.returncode == 0, out.decode()
            assert "running on" in out.decode() and "online" in out.decode()
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)
            notify_sock.close()


def test_server_writes_the_upstream_kubeconfig_once(tmp_path):
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true", "--no-tls",
                     "--server", "https://10.0.0.1:6443"]) == 0
    kc = tmp_path / "etc/edgeproxy/upstream.kubeconfig"
    text = kc.read_text()
    assert '"https://10.0.0.1:6443"' in text and "/var/lib/edgeproxy/pki/client.pem" in text
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true", "--no-tls",
                     "--server", "https://10.9.9.9:6443"]) == 0
    assert kc.read_text() == text  # kept


def test_directories_get_their_modes_whatever_the_umask(tmp_path):
    """A umask of 077 (a hardened root shell) used to leave /etc/sysusers.d and the others 0700."""
    old = os.umask(0o077)
    try:
        assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true",
                         "--server", "https://10.0.0.1:6443"]) == 0
    finally:
        os.umask(old)
    for rel in ("etc", "etc/sysusers.d", "etc/tmpfiles.d", "etc/systemd/system", "etc/systemd/system/kubelet.service.d",
                "etc/default", "etc/edgeproxy", "etc/edgeproxy/pki"):
        assert stat.S_IMODE((tmp_path / rel).stat().st_mode) == 0o755, rel
    assert stat.S_IMODE((tmp_path / "etc/sysusers.d/edgeproxy.conf").stat().st_mode) == 0o644


def test_reinstall_removes_the_old_path_unit(tmp_path, capsys):
    """An install of an older version had edgeproxy-credentials.path (it missed rotations): it goes, links too."""
    units = tmp_path / "etc/systemd/system"
    (units / "paths.target.wants").mkdir(parents=True)
    (units / "edgeproxy-credentials.path").write_text("[Path]\nPathChanged=/var/lib/kubelet/pki/x.pem\n")
    (units / "paths.target.wants/edgeproxy-credentials.path").symlink_to("/etc/systemd/system/x")
    assert cli.main(["install-systemd", "--root", str(tmp_path), "--exec", "/bin/true", "--no-tls"]) == 0
    assert not (units / "edgeproxy-credentials.path").exists()
    assert not (units / "paths.target.wants/edgeproxy-credentials.path").is_symlink()
    assert "removed (replaced by edgeproxy-credentials.service)" in capsys.readouterr().out
