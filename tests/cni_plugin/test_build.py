"""build: one executable file (a sh preamble running `python3 -I -S`), reproducible; the DaemonSet's install step."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import yaml

from cni_plugin import build
from tests.cni_plugin.conftest import HOST_PATH

MANIFEST = Path(build.PACKAGE) / "deploy" / "daemonset.yaml"


def test_build_is_one_reproducible_executable(tmp_path):
    a = build.build(tmp_path / "a" / "edge-ipam-snapshot")
    b = build.build(tmp_path / "b" / "edge-ipam-snapshot")
    data = a.read_bytes()
    assert data.startswith(b"#!/bin/sh\nexec python3 -I -S -c ") and data == b.read_bytes()
    assert os.access(a, os.X_OK)
    names = zipfile.ZipFile(a).namelist()
    assert "__main__.py" in names and "cni_plugin/main.py" in names and "cni_plugin/main.pyc" in names
    assert not any("build" in n or "deploy" in n for n in names)


def test_the_file_runs_with_only_the_hosts_python(plugin_file, tmp_path):
    # No venv, no PYTHONPATH, an empty working directory: only what the file carries.
    env = {"PATH": HOST_PATH, "CNI_COMMAND": "VERSION"}
    out = subprocess.run([str(plugin_file)], input=b"", capture_output=True, env=env, cwd=tmp_path, timeout=30)
    assert out.returncode == 0 and b'"supportedVersions"' in out.stdout
    version = subprocess.run([str(plugin_file), "version"], capture_output=True, text=True, env={"PATH": HOST_PATH},
                             cwd=tmp_path, timeout=30)
    assert version.stdout.split() == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_the_environment_and_working_directory_cannot_change_the_plugin(plugin_file, tmp_path):
    # Isolated mode: PYTHONPATH, PYTHONSTARTUP and a module planted in the working directory are all ignored.
    (tmp_path / "json.py").write_text("raise SystemExit('planted json imported')\n")
    (tmp_path / "cni_plugin").mkdir()
    (tmp_path / "cni_plugin" / "__init__.py").write_text("raise SystemExit('planted package imported')\n")
    env = {"PATH": HOST_PATH, "CNI_COMMAND": "VERSION", "PYTHONPATH": str(tmp_path),
           "PYTHONSTARTUP": str(tmp_path / "json.py"), "PYTHONINSPECT": "1"}
    out = subprocess.run([str(plugin_file)], input=b'{"cniVersion": "0.4.0"}', capture_output=True, env=env,
                         cwd=tmp_path, timeout=30)
    assert out.returncode == 0, out.stderr
    assert b'"cniVersion": "0.4.0"' in out.stdout and b"planted" not in out.stdout + out.stderr
    # Run as `python3 FILE` (the zipapp's own __main__) it answers the same.
    direct = subprocess.run(["python3", "-I", str(plugin_file)], input=b'{"cniVersion": "0.4.0"}',
                            capture_output=True, env={"PATH": HOST_PATH, "CNI_COMMAND": "VERSION"}, timeout=30)
    assert direct.returncode == 0 and direct.stdout == out.stdout


def test_make_target_command(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cni_plugin.build", str(tmp_path / "dist" / "edge-ipam-snapshot")],
                         capture_output=True, text=True, timeout=60, cwd=Path(build.PACKAGE).parent, check=True)
    assert "edge-ipam-snapshot" in out.stdout and (tmp_path / "dist" / "edge-ipam-snapshot").exists()


def test_daemonset_installs_the_file_into_opt_cni_bin(plugin_file, tmp_path):
    ds = yaml.safe_load(MANIFEST.read_text())
    assert ds["kind"] == "DaemonSet"
    spec = ds["spec"]["template"]["spec"]
    assert {"operator": "Exists"} in spec["tolerations"]
    mounts = {v["name"]: v for v in spec["volumes"]}
    assert mounts["cni-bin"]["hostPath"]["path"] == "/opt/cni/bin"
    assert mounts["plugin"]["configMap"]["name"] == "edge-ipam-snapshot"
    (install,) = spec["initContainers"]
    script = install["command"][-1]
    # Run the init container's script with its mounts mapped into a temp dir.
    (tmp_path / "plugin").mkdir()
    (tmp_path / "plugin" / "edge-ipam-snapshot").write_bytes(plugin_file.read_bytes())
    (tmp_path / "host" / "opt" / "cni" / "bin").mkdir(parents=True)
    script = script.replace("/plugin/", f"{tmp_path}/plugin/").replace("/host/", f"{tmp_path}/host/")
    subprocess.run(["sh", "-c", script], check=True, timeout=30, capture_output=True)
    installed = tmp_path / "host" / "opt" / "cni" / "bin" / "edge-ipam-snapshot"
    assert installed.read_bytes() == plugin_file.read_bytes() and os.access(installed, os.X_OK)
    assert (tmp_path / "host" / "var" / "lib" / "cni" / "edge-ipam-snapshot").is_dir()
    assert [p.name for p in installed.parent.iterdir()] == ["edge-ipam-snapshot"]  # no temp file left
