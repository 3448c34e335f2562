"""`edge-ipam-snapshot inspect`: what an operator sees, from the built file, without changing anything."""

from __future__ import annotations

import subprocess

from tests.cni_plugin.conftest import HOST_PATH, needs_root

pytestmark = needs_root


def inspect(node, *args: str) -> str:
    return subprocess.run([str(node.plugin), "inspect", "--data-dir", str(node.data_dir), *args], capture_output=True,
                          text=True, env={"PATH": HOST_PATH}, timeout=30, check=True).stdout


def test_lists_records_states_and_pending_releases(node):
    node.add("c1")
    node.add("c9", pod="other")
    node.offline()
    node.delete("c1")
    out = inspect(node, "--network", "edgenet")
    assert "network edgenet: 2 records, 1 pending releases" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("  default/")}
    assert lines["default/web/eth0"][1:3] == ["HELD", "10.77.0.2/24"]
    assert lines["default/other/eth0"][1] == "ACTIVE"
    assert "pending release: owner c1 eth0 (default/web/eth0), 1 attempts" in out
    assert "connection refused" in out


def test_reads_without_writing(node):
    node.add("c1")
    path = node.data_dir / "edgenet" / "records" / "default%2Fweb%2Feth0.json"
    path.write_bytes(b"{garbage")
    assert node.inspect()["records"] == []
    assert path.exists()  # inspect does not move it aside; the plugin does, under its lock
    assert inspect(node, "--network", "nope").startswith("network nope: 0 records")


def test_empty(tmp_path, plugin_file):
    out = subprocess.run([str(plugin_file), "inspect", "--data-dir", str(tmp_path / "none")], capture_output=True,
                         text=True, env={"PATH": HOST_PATH}, timeout=30, check=True).stdout
    assert out.startswith("no snapshot under")
