"""A real systemd as PID 1 for the units: a Debian 12 root (tests/systemd/build-root.sh, cached outside the repo)
booted with `systemd-nspawn -b` on an overlay (the cached root is never changed), with its own network namespace
(--private-network: its loopback is the container's alone), the checkout's wheel installed into /opt/edgeproxy as the
README says, and the Kubernetes API simulator (`edgeproxy sim` from that wheel) running in it as a transient unit.

One boot per module (`machine`); the tests run in file order against it. The container is stopped by the PID of its
systemd-nspawn (machinectl is not available: --register=no), then the overlay is unmounted. Each container runs in a
cgroup of its own (`_own_cgroups`), so test sessions side by side never share their units' cgroups.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests import wheel
from tests.host import kubelet

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SIM = "https://127.0.0.1:6443"
SIM_UNIT = "apiserver-sim.service"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (systemd-nspawn, overlay mounts)"
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} missing (tests/host-packages.sh installs it)"
    return None


def until(condition, what: str, timeout: float = 30.0, interval: float = 0.05):
    """Poll `condition()` until it returns something true; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


class Machine:
    """The booted container: run commands in it, read and write its files from the host."""

    def __init__(self, fs: Path, nspawn: subprocess.Popen[bytes], console: Path) -> None:
        self.fs = fs  # the container's / as the host sees it (the overlay)
        self.nspawn = nspawn
        self.console = console
        self.leader = 0

    def path(self, p: str) -> Path:
        return self.fs / p.lstrip("/")

    def run(self, *cmd: str, check: bool = True, timeout: float = 120, pid: int | None = None,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `cmd` in the container (its mount, pid, net, ... namespaces), with a clean environment."""
        result = subprocess.run(["nsenter", "-t", str(pid or self.leader), "-a", "--", "/usr/bin/env", "-i",
                                 f"PATH={PATH}", "LANG=C.UTF-8", *cmd], capture_output=True, text=True,
                                timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, "-p", ",".join(props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def request(self, url: str, *, cert: str | None = None, cacert: str | None = None) -> dict:
        """One request from inside the container's network namespace (the host's Python, the container's net)."""
        args = [sys.executable, "-m", "tests.systemd.client", url]
        if cert:
            args += ["--cert", str(self.path(cert))]
        if cacert:
            args += ["--cacert", str(self.path(cacert))]
        out = subprocess.run(["nsenter", f"--net=/proc/{self.leader}/ns/net", "--", *args], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def kubelet_get(self, path: str) -> dict:
        """As kubelet: HTTPS listener, kubelet's current client certificate, the proxy's own CA."""
        return self.request(f"https://127.0.0.1:10268{path}", cert="/var/lib/kubelet/pki/kubelet-client-current.pem",
                            cacert="/etc/edgeproxy/pki/ca.crt")

    def readyz(self) -> dict:
        return self.request("http://127.0.0.1:10267/readyz")

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", *args).stdout

    def rotate(self, days: int) -> bytes:
        """One kubelet-style rotation of the node's client certificate, signed by the simulator's CA."""
        ca = x509.load_pem_x509_certificate(self.path("/srv/sim/pki/ca.crt").read_bytes())
        key = serialization.load_pem_private_key(self.path("/srv/sim/pki/ca.key").read_bytes(), None)
        pem = kubelet.node_pem(ca, key, days=days)
        kubelet.rotate(self.path("/var/lib/kubelet/pki"), pem, f"{time.time_ns()}")
        return pem


def _leader(nspawn: subprocess.Popen[bytes]) -> int:
    """The container's PID 1 as the host sees it: the child of systemd-nspawn whose innermost pid is 1."""
    for task in Path(f"/proc/{nspawn.pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                status = Path(f"/proc/{child}/status").read_text()
            except FileNotFoundError:
                continue
            nspid = next((line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), [])
            if nspid and nspid[-1] == "1":
                return int(child)
    return 0


@pytest.fixture(scope="module")
def machine(tmp_path_factory) -> Iterator[Machine]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("systemd")
    whl = wheel.build(work / "wheel")
    built = subprocess.run(["bash", str(HERE / "build-root.sh"), str(whl)], capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, built.stdout + built.stderr
    lower = Path(built.stdout.strip().splitlines()[-1])
    for d in ("upper", "work", "fs"):
        (work / d).mkdir()
    fs = work / "fs"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={work / 'upper'},workdir={work / 'work'}", str(fs)], check=True)
    nspawn = None
    try:
        srv = fs / "srv/edgeproxy-test"
        srv.mkdir(parents=True)
        shutil.copy(whl, srv)
        # Watchdog and its abort timeout shortened for the test, in /run (an operator's drop-in place, not /etc).
        console = work / "console.log"
        cgroups = _own_cgroups(f"edgeproxy-test-{os.getpid()}")
        with open(console, "wb") as out:
            nspawn = subprocess.Popen(["systemd-nspawn", "--quiet", "-D", str(fs), "-b", "--register=no",
                                       "--keep-unit", "--private-network", "--machine", "edgeproxy-test"],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                      preexec_fn=lambda: _join(cgroups))
        m = Machine(fs, nspawn, console)
        m.leader = until(lambda: nspawn.poll() is None and _leader(nspawn), "the container's systemd", 60)
        # "offline" until the container's systemd answers on its socket; then --wait waits for the boot's end.
        state = until(lambda: m.run("systemctl", "is-system-running", "--wait", check=False).stdout.strip()
                      not in ("", "offline") and m.run("systemctl", "is-system-running", check=False).stdout.strip(),
                      "the boot to finish", 120)
        assert state == "running", state + m.run("systemctl", "--failed", check=False).stdout
        # The README's install: the wheel into /opt/edgeproxy (its dependencies are in the cached root already).
        m.run("/opt/edgeproxy/bin/pip", "install", "--quiet", "--no-index", "--no-deps", "--force-reinstall",
              f"/srv/edgeproxy-test/{whl.name}")
        m.run("/opt/edgeproxy/bin/pip", "check")
        # The API server: the simulator from the installed wheel, as a unit the tests stop and start.
        m.path(f"/etc/systemd/system/{SIM_UNIT}").write_text(
            "[Service]\nExecStart=/opt/edgeproxy/bin/edgeproxy sim --dir /srv/sim --listen 127.0.0.1:6443 "
            "--control-port -1 --ready-file /srv/sim/ready.json\n")
        m.run("systemctl", "daemon-reload")
        m.run("systemctl", "start", SIM_UNIT)
        until(lambda: m.path("/srv/sim/ready.json").exists(), "the simulator", 60)
        # What kubeadm and kubelet leave on a node: the cluster CA and kubelet's rotating client certificate.
        m.path("/etc/kubernetes/pki").mkdir(parents=True)
        shutil.copy(m.path("/srv/sim/pki/ca.crt"), m.path("/etc/kubernetes/pki/ca.crt"))
        m.rotate(days=30)
        yield m
    finally:
        if nspawn is not None:
            _stop(nspawn)
            _remove(cgroups)
        subprocess.run(["umount", str(fs)], check=False)
        shutil.rmtree(work, ignore_errors=True)


def _own_cgroups(name: str) -> list[Path]:
    """A cgroup of its own for one container, under this process's, in each hierarchy systemd tracks units by (the
    name=systemd one of cgroup v1, the unified one). With --keep-unit the container's units live under the cgroup
    systemd-nspawn was started in: two containers started from one cgroup (test sessions side by side) shared
    `system.slice/edgeproxy.service`, so one's systemd saw the other's processes in its stopped unit's cgroup and kept
    the unit loaded ("not-found inactive dead" after uninstall-systemd)."""
    mine = dict(line.split(":", 2)[1:] for line in Path("/proc/self/cgroup").read_text().splitlines())
    roots = []
    if Path("/sys/fs/cgroup/systemd/cgroup.procs").exists() and "name=systemd" in mine:
        roots.append(Path("/sys/fs/cgroup/systemd") / mine["name=systemd"].lstrip("/"))
    for unified in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (unified / "cgroup.controllers").exists() and "" in mine:
            roots.append(unified / mine[""].lstrip("/"))
            break
    made = []
    for root in roots:
        (root / name).mkdir(exist_ok=True)
        made.append(root / name)
    return made


def _join(cgroups: list[Path]) -> None:
    """In the child before exec: move this process (systemd-nspawn to be) into its own cgroups."""
    for cg in cgroups:
        (cg / "cgroup.procs").write_text(str(os.getpid()))


def _remove(cgroups: list[Path]) -> None:
    """The container's cgroups, deepest first, once its processes are gone (left alone if some are not)."""
    for cg in cgroups:
        for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                d.rmdir()
        with contextlib.suppress(OSError):
            cg.rmdir()


def _stop(nspawn: subprocess.Popen[bytes]) -> None:
    """systemd-nspawn turns SIGTERM into a clean poweroff of the container; SIGKILL if that takes too long."""
    if nspawn.poll() is None:
        nspawn.send_signal(signal.SIGTERM)
        try:
            nspawn.wait(timeout=30)
        except subprocess.TimeoutExpired:
            nspawn.kill()
            nspawn.wait(timeout=30)
