"""`edgeproxy uninstall-systemd --root DIR`: every unit and enablement link goes (an older version's too), the
operator's settings and the state stay and are listed with how to remove them; --purge removes them too. On a real
systemd (stop, disable, nothing enabled after) it is tests/systemd's job."""

from __future__ import annotations

from pathlib import Path

from edgeproxy import cli


def installed(root: Path) -> Path:
    assert cli.main(["install-systemd", "--root", str(root), "--exec", "/opt/edgeproxy/bin/edgeproxy",
                     "--server", "https://10.0.0.1:6443"]) == 0
    units = root / "etc/systemd/system"
    # enablement links as `systemctl enable` makes them, and the one an older version left behind
    for target, unit in (("multi-user.target.wants", "edgeproxy.service"), ("paths.target.wants",
                         "edgeproxy-credentials.path"), ("timers.target.wants", "edgeproxy-credentials.timer"),
                         ("multi-user.target.wants", "edgeproxy-credentials.service")):
        (units / target).mkdir(exist_ok=True)
        (units / target / unit).symlink_to(f"/etc/systemd/system/{unit}")
    state = root / "var/lib/edgeproxy"
    (state / "cache").mkdir(parents=True)
    (state / "pki").mkdir()
    (state / "pki/client.pem").write_text("kubelet's key")
    return root


def edgeproxy_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "edgeproxy" in p.name and
                  (p.is_symlink() or p.is_file()))


def test_uninstall_removes_every_unit_and_link_and_lists_what_remains(tmp_path, capsys):
    root = installed(tmp_path / "root")
    capsys.readouterr()
    assert cli.main(["uninstall-systemd", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert not list((root / "etc/systemd/system").rglob("edgeproxy*")), out
    assert not (root / "etc/systemd/system/kubelet.service.d").exists()
    assert not (root / "etc/tmpfiles.d/edgeproxy.conf").exists()
    assert not (root / "etc/sysusers.d/edgeproxy.conf").exists()
    assert not (root / "etc/edgeproxy/kubelet.kubeconfig").exists()
    # what remains is said, with the command that removes it
    assert (root / "etc/default/edgeproxy").exists() and (root / "var/lib/edgeproxy/pki/client.pem").exists()
    assert f"rm -r {root}/var/lib/edgeproxy" in out and "client certificate and key" in out
    assert f"rm {root}/etc/default/edgeproxy" in out and f"rm -r {root}/etc/edgeproxy" in out
    assert edgeproxy_files(root) == ["etc/default/edgeproxy"]


def test_purge_leaves_nothing(tmp_path, capsys):
    root = installed(tmp_path / "root")
    assert cli.main(["uninstall-systemd", "--root", str(root), "--purge"]) == 0
    out = capsys.readouterr().out
    assert edgeproxy_files(root) == [] and not (root / "var/lib/edgeproxy").exists()
    assert not (root / "etc/edgeproxy").exists()
    assert "Nothing of edgeproxy is left" in out


def test_uninstall_of_nothing_says_so(tmp_path, capsys):
    assert cli.main(["uninstall-systemd", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "nothing of edgeproxy's systemd installation was found" in out and "Nothing of edgeproxy is left" in out
