"""`edgeproxy copy-credentials`: kubelet's rotated client certificate reaches /var/lib/edgeproxy/pki whatever instant
of kubelet's replace sequence a run starts at; only a change is written; bad sources are refused and named."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from edgeproxy import cli
from edgeproxy.host import credentials
from tests.host import kubelet

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def pki(tmp_path):
    ca = tmp_path / "ca.crt"
    ca.write_bytes(kubelet.node_pem().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n")
    return tmp_path / "kubelet-pki", ca, tmp_path / "dest"


def copy(pki_dir: Path, ca: Path, dest: Path, **kw) -> list[str]:
    return credentials.copy(pki_dir / kubelet.CURRENT, ca, dest, user=None, settle=kw.get("settle", 0.01),
                            wait=kw.get("wait", 5.0))


def test_copies_with_private_modes_and_only_what_changed(pki):
    pki_dir, ca, dest = pki
    first = kubelet.node_pem()
    kubelet.rotate(pki_dir, first, "2026-01-01-00-00-00")
    lines = copy(pki_dir, ca, dest)
    assert (dest / "client.pem").read_bytes() == first and (dest / "ca.crt").read_bytes() == ca.read_bytes()
    assert stat.S_IMODE((dest / "client.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "ca.crt").stat().st_mode) == 0o644
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert lines[0].startswith("client.pem: updated from")
    inode = (dest / "client.pem").stat().st_ino
    assert copy(pki_dir, ca, dest)[0].startswith("client.pem: unchanged")
    assert (dest / "client.pem").stat().st_ino == inode  # not rewritten: the proxy sees no change
    second = kubelet.node_pem()
    kubelet.rotate(pki_dir, second, "2026-01-02-00-00-00")
    copy(pki_dir, ca, dest)
    assert (dest / "client.pem").read_bytes() == second
    assert not list(dest.glob(".*.new"))


def test_a_run_started_while_the_current_link_is_absent_copies_the_new_certificate(pki):
    """The instant the old unit's ConditionPathExists= skipped: kubelet has removed kubelet-client-current.pem and
    not yet renamed the updated link over it. The run waits for the link and copies the new certificate."""
    pki_dir, ca, dest = pki
    kubelet.rotate(pki_dir, kubelet.node_pem(), "2026-01-01-00-00-00")
    copy(pki_dir, ca, dest)
    new = kubelet.node_pem()
    dated = pki_dir / "kubelet-client-2026-01-02-00-00-00.pem"
    dated.write_bytes(new)
    (pki_dir / kubelet.UPDATED).symlink_to(dated)
    (pki_dir / kubelet.CURRENT).unlink()
    result: list[list[str]] = []
    run = threading.Thread(target=lambda: result.append(copy(pki_dir, ca, dest)))
    run.start()
    (pki_dir / kubelet.UPDATED).rename(pki_dir / kubelet.CURRENT)  # kubelet's last step, whenever it comes
    run.join(timeout=30)
    assert result and result[0][0].startswith("client.pem: updated")
    assert (dest / "client.pem").read_bytes() == new


def test_rotations_racing_the_copier_end_with_the_last_certificate(pki):
    """Rotations in kubelet's order while runs of the copier go on: every run ends with a whole certificate, and the
    run after the last rotation copies the last one."""
    pki_dir, ca, dest = pki
    pems = [kubelet.node_pem() for _ in range(20)]
    kubelet.rotate(pki_dir, pems[0], "0")
    stop = threading.Event()
    copied: list[bytes] = []

    def copier() -> None:
        while not stop.is_set():
            copy(pki_dir, ca, dest, settle=0.001)
            copied.append((dest / "client.pem").read_bytes())

    thread = threading.Thread(target=copier)
    thread.start()
    try:
        for i, pem in enumerate(pems[1:], 1):
            kubelet.rotate(pki_dir, pem, str(i))
    finally:
        stop.set()
        thread.join(timeout=30)
    assert set(copied) <= set(pems)  # never a half-written or mixed file
    copy(pki_dir, ca, dest)
    assert (dest / "client.pem").read_bytes() == pems[-1]


def test_no_kubelet_certificate_yet_is_said_and_not_an_error(pki, capsys):
    pki_dir, ca, dest = pki
    code = cli.main(["copy-credentials", "--client-cert", str(pki_dir / kubelet.CURRENT), "--cluster-ca", str(ca),
                     "--dest", str(dest), "--user", "", "--wait", "0"])
    assert code == 0
    assert "is not there (yet): nothing copied" in capsys.readouterr().out
    assert not (dest / "client.pem").exists()


def test_a_source_that_is_not_a_certificate_and_key_is_refused(pki, capsys):
    pki_dir, ca, dest = pki
    kubelet.rotate(pki_dir, kubelet.node_pem().split(b"-----BEGIN PRIVATE KEY-----")[0], "0")  # no key
    code = cli.main(["copy-credentials", "--client-cert", str(pki_dir / kubelet.CURRENT), "--cluster-ca", str(ca),
                     "--dest", str(dest), "--user", "", "--settle", "0.01"])
    assert code == 1
    assert "holds no private key" in capsys.readouterr().err
    assert not (dest / "client.pem").exists()


def test_an_unknown_owner_is_named(pki, capsys):
    pki_dir, ca, dest = pki
    kubelet.rotate(pki_dir, kubelet.node_pem(), "0")
    code = cli.main(["copy-credentials", "--client-cert", str(pki_dir / kubelet.CURRENT), "--cluster-ca", str(ca),
                     "--dest", str(dest), "--user", "no-such-user-here"])
    assert code == 1 and "no user 'no-such-user-here'" in capsys.readouterr().err


def test_the_command_imports_only_what_it_needs():
    """Run on every rotation by a root unit: it must not import the proxy (aiohttp, the cache) to copy two files."""
    check = ("import sys\nfrom edgeproxy import cli\ntry:\n    cli.main(['copy-credentials', '--help'])\n"
             "except SystemExit:\n    pass\nprint(sorted(m for m in ('aiohttp', 'lmdb', 'cache', 'edgeproxy.server') "
             "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", check], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "--settle" in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_follow_copies_every_rotation_and_refuses_a_bad_one(pki):
    """--follow (what the unit runs): ready after the first copy, then each rotation in kubelet's order is copied;
    a source that is no certificate and key is said once and skipped, keeping the last good copy."""
    pki_dir, ca, dest = pki
    kubelet.rotate(pki_dir, kubelet.node_pem(), "0")
    said: list[str] = []
    ready = threading.Event()
    stop = threading.Event()
    thread = threading.Thread(target=credentials.follow, kwargs=dict(
        client=pki_dir / kubelet.CURRENT, ca=ca, dest_dir=dest, user=None, interval=0.01, settle=0.01,
        say=said.append, ready=ready.set, stop=stop.is_set))
    thread.start()
    try:
        assert ready.wait(30)
        assert (dest / "client.pem").read_bytes() == (pki_dir / kubelet.CURRENT).read_bytes()
        for i in range(1, 6):
            pem = kubelet.node_pem()
            kubelet.rotate(pki_dir, pem, str(i))
            assert _until(lambda pem=pem: (dest / "client.pem").read_bytes() == pem), f"rotation {i} not copied"
        good = (dest / "client.pem").read_bytes()
        kubelet.rotate(pki_dir, b"garbage", "bad")
        assert _until(lambda: any("not copied" in line for line in said))
        assert (dest / "client.pem").read_bytes() == good
        last = kubelet.node_pem()
        kubelet.rotate(pki_dir, last, "7")
        assert _until(lambda: (dest / "client.pem").read_bytes() == last)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert sum("not copied" in line for line in said) == 1


def _until(condition, timeout: float = 20.0) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
