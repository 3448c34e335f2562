"""The wheel alone, installed in a clean venv outside the checkout, runs `edgeproxy demo` and `edgeproxy sim`, and
`edgeproxy install-systemd` finds its units (the README's first command must not need a checkout).

The venv gets edgeproxy from the wheel only; its third-party dependencies come from the test venv's site-packages as a
plain path entry (no package index in tests), where the editable install's finder is not processed, so `import
edgeproxy` can only find the wheel's copy.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests import wheel

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("wheel")
    whl = wheel.build(work)
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
                             "--no-index", "--disable-pip-version-check", str(whl)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel.site_packages(python) / "test-deps.pth").write_text(str(wheel.site_packages(Path(sys.executable))) + "\n")
    return env_dir


def _run(env_dir: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEPROXY_", "PYTHON"))}
    env["TMPDIR"] = str(cwd)
    return subprocess.run([str(env_dir / "bin" / "edgeproxy"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_edgeproxy_comes_from_the_wheel(installed, tmp_path):
    out = subprocess.run([str(installed / "bin" / "python"), "-c", "import edgeproxy; print(edgeproxy.__file__)"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(str(installed)), out.stdout


def test_demo_runs_from_the_wheel(installed, tmp_path):
    proc = _run(installed, tmp_path, "demo", "--fast", "--pods", "10")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"LIST pods on node edge-1 → 200 from the API server: \d+ pods", proc.stdout), proc.stdout
    assert re.search(r"LIST pods on node edge-1 → 200 from edgeproxy's cache", proc.stdout), proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("fixture", [True, False], ids=["recorded-cluster", "no-fixture"])
def test_sim_starts_from_the_wheel(installed, tmp_path, fixture):
    args = [str(installed / "bin" / "edgeproxy"), "sim", "--dir", str(tmp_path / "sim")]
    proc = subprocess.Popen([*args, *([] if fixture else ["--no-fixture"])], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={k: v for k, v in os.environ.items()
                                                                      if not k.startswith(("EDGEPROXY_", "PYTHON"))})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the simulator prints where it listens once it does, or dies
        assert "https://127.0.0.1:" in line, line + (proc.stderr.read() if proc.poll() is not None else "")
        assert (tmp_path / "sim" / "admin.kubeconfig").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_install_systemd_finds_the_wheels_units(installed, tmp_path):
    proc = _run(installed, tmp_path, "install-systemd", "--root", str(tmp_path / "root"), "--no-tls",
                "--prefix", str(installed))
    assert proc.returncode == 0, proc.stderr
    unit = (tmp_path / "root/etc/systemd/system/edgeproxy.service").read_text()
    assert f"ExecStart={installed}/bin/edgeproxy serve" in unit
