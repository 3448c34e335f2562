"""Fixtures for the CNI plugin tests: the built zipapp, a CNI_PATH with the real plugins, an offline switch, netns.

`Node` plays the container runtime: it execs the *built* edge-ipam-snapshot file with the CNI environment and a
network config on stdin, exactly as bridge/ptp exec their IPAM plugin. The delegate is `switched-host-local`, a
two-line wrapper around the real /usr/lib/cni/host-local that, while a switch file exists, fails the way an
API-backed IPAM fails when its server is out of reach (connection refused, code 11, or a hang).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from cni_plugin import build

REAL_CNI = Path("/usr/lib/cni")
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # the runtime's PATH: the host's python3, as on a node

SWITCHED = r"""#!/bin/sh
# host-local behind an offline switch: while ./offline exists, fail as an API-backed IPAM does when offline.
here=$(dirname "$0")
if [ -f "$here/offline" ] && [ "$CNI_COMMAND" != VERSION ]; then
  mode=$(cat "$here/offline")
  cat >/dev/null
  case "$mode" in
    hang) exec sleep 600 ;;
    code11) echo '{"code": 11, "msg": "try again later", "details": "IPAM server unavailable"}'; exit 1 ;;
    *) echo '{"code": 999, "msg": "error allocating IP: Post \"https://10.96.0.1:443/ipam\":'\
            'dial tcp 10.96.0.1:443: connect: connection refused"}'; exit 1 ;;
  esac
fi
exec /usr/lib/cni/host-local
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not (REAL_CNI / "host-local").exists(),
                                reason="needs root and containernetworking-plugins (tests/host-packages.sh)")


def _links() -> list[str]:
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True, timeout=30).stdout
    # eprh*, epbu*: the real tier's veths (tests/real: edge hosts and branch LANs, each removed by its own test),
    # made meanwhile by any test session
    return sorted(line.strip() for line in out.splitlines() if line.strip() and not line.startswith(("eprh", "epbu")))


def _netns() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=30).stdout
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith("eipt-"))


@pytest.fixture(scope="session", autouse=True)
def host_interfaces_unchanged():
    """Every interface the tests make (bridges, veths, netns) is gone again at the end."""
    if os.geteuid() != 0:
        yield
        return
    before = _links()
    yield
    assert _links() == before, "the CNI tests left host interfaces behind (or removed some)"
    assert _netns() == [], "the CNI tests left network namespaces behind"


@pytest.fixture(scope="session")
def plugin_file(tmp_path_factory) -> Path:
    return build.build(tmp_path_factory.mktemp("dist") / "edge-ipam-snapshot")


@dataclass
class Reply:
    rc: int
    out: dict | None
    stderr: str

    @property
    def code(self) -> int:
        return 0 if self.rc == 0 else int((self.out or {}).get("code", -1))

    @property
    def ips(self) -> list[str]:
        assert self.rc == 0, self
        return [ip["address"] for ip in self.out["ips"]]


class Node:
    """One simulated node: a CNI_PATH, data dirs, a network config, and the runtime's way of calling plugins."""

    def __init__(self, root: Path, plugin: Path, *, cni_version: str = "1.0.0", network: str = "edgenet",
                 ranges: list | None = None, ipam: dict | None = None, delegate: dict | None = None):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        self.plugin = self.bin / "edge-ipam-snapshot"
        shutil.copy(plugin, self.plugin)
        (self.bin / "switched-host-local").write_text(SWITCHED)
        (self.bin / "switched-host-local").chmod(0o755)
        self.path = f"{self.bin}:{REAL_CNI}"
        self.data_dir = root / "snapshot"
        self.lease_dir = root / "host-local"
        self.network = network
        self.cni_version = cni_version
        self.delegate = {"type": "switched-host-local", "dataDir": str(self.lease_dir),
                         "ranges": ranges or [[{"subnet": "10.77.0.0/24"}]], **(delegate or {})}
        self.ipam = {"type": "edge-ipam-snapshot", "dataDir": str(self.data_dir), "delegateTimeout": 5,
                     **(ipam or {})}

    def conf(self, **top) -> dict:
        ipam = {**self.ipam, "delegate": self.delegate}
        return {"cniVersion": self.cni_version, "name": self.network, "type": "bridge", "ipam": ipam, **top}

    def run(self, command: str, cid: str = "", pod: str | None = "web", *, ifname: str = "eth0",
            conf: dict | None = None, netns: str = "/var/run/netns/plugin-only", plugin: Path | None = None,
            env: dict | None = None, namespace: str = "default", timeout: float = 60) -> Reply:
        cni_args = "IgnoreUnknown=1"
        if pod is not None:
            cni_args += f";K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod};K8S_POD_INFRA_CONTAINER_ID={cid}"
        full_env = {"PATH": HOST_PATH, "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": netns,
                    "CNI_IFNAME": ifname, "CNI_ARGS": cni_args, "CNI_PATH": self.path, **(env or {})}
        stdin = json.dumps(self.conf() if conf is None else conf).encode()
        proc = subprocess.run([str(plugin or self.plugin)], input=stdin, capture_output=True, env=full_env,
                              timeout=timeout, check=False)
        out = json.loads(proc.stdout) if proc.stdout.strip() else None
        return Reply(proc.returncode, out, proc.stderr.decode(errors="replace"))

    def add(self, cid: str, pod: str | None = "web", **kw) -> Reply:
        return self.run("ADD", cid, pod, **kw)

    def delete(self, cid: str, pod: str | None = "web", **kw) -> Reply:
        return self.run("DEL", cid, pod, **kw)

    def offline(self, mode: str = "refused") -> None:
        (self.bin / "offline").write_text(mode)

    def online(self) -> None:
        (self.bin / "offline").unlink(missing_ok=True)

    def leases(self) -> dict[str, tuple[str, str]]:
        """host-local's lease files: ip -> (container id, ifname)."""
        d = self.lease_dir / self.network
        if not d.is_dir():
            return {}
        out = {}
        for f in d.iterdir():
            if f.name != "lock" and not f.name.startswith("last_reserved_ip"):
                cid, ifname = f.read_bytes().decode().split("\r\n")  # host-local writes id CRLF ifname
                out[f.name] = (cid, ifname)
        return out

    def inspect(self) -> dict:
        proc = subprocess.run([str(self.plugin), "inspect", "--data-dir", str(self.data_dir), "--json"],
                              capture_output=True, text=True, env={"PATH": HOST_PATH}, check=True, timeout=30)
        return json.loads(proc.stdout).get(self.network, {"records": [], "journal": [], "corrupt": []})

    def records(self) -> dict[str, dict]:
        return {r["key"]: r for r in self.inspect()["records"]}

    def journal(self) -> list[dict]:
        return self.inspect()["journal"]


@pytest.fixture
def node(tmp_path, plugin_file) -> Node:
    return Node(tmp_path, plugin_file)


@pytest.fixture
def make_node(tmp_path, plugin_file):
    made = []

    def make(**kw) -> Node:
        root = tmp_path / f"node{len(made)}"
        root.mkdir()
        made.append(Node(root, plugin_file, **kw))
        return made[-1]
    return make


@pytest.fixture
def netns():
    """Factory for network namespaces (unique names), all deleted at teardown even if the test failed."""
    made: list[str] = []

    def make() -> str:
        name = f"eipt-{uuid.uuid4().hex[:10]}"
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
        made.append(name)
        return f"/var/run/netns/{name}"
    yield make
    for name in made:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


@pytest.fixture
def host_links():
    """Names of host links a test creates (bridges): deleted at teardown even if the test failed."""
    names: list[str] = []
    yield names
    for name in names:
        subprocess.run(["ip", "link", "del", name], check=False, capture_output=True, timeout=30)
