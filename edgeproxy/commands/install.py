"""`edgeproxy install-systemd`: put the units, env file, kubelet drop-in, tmpfiles and sysusers entries in place.

Everything is written under `--root` (default /), so a test, an image build or a package build installs into a
directory. Files that hold an operator's choices (/etc/default/edgeproxy) are kept unless --force. Directories it
creates get explicit modes (0755), whatever the caller's umask. With --now (and root /), it also creates the user
and directories and starts the service, as a package's postinst would; run again (an upgrade), it restarts a running
service so the new version and units take effect, and says so. `edgeproxy uninstall-systemd` (host/uninstall.py)
undoes it.

Boundary: files and, with --now, systemctl/systemd-sysusers/systemd-tmpfiles; it never edits a file it did not write
(the kubelet change is a drop-in). Neighbours: systemd/ (the sources), kubeconfig.py (kubelet's kubeconfig).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from edgeproxy import tls
from edgeproxy.commands import kubeconfig


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    source: str  # file name in systemd/
    dest: str  # absolute path on the host
    mode: int = 0o644
    keep: bool = False  # an operator's file: never overwritten without --force
    kubelet: bool = False  # part of pointing kubelet at the proxy


TARGETS = (
    Target("edgeproxy.service", "/etc/systemd/system/edgeproxy.service"),
    Target("edgeproxy-credentials.service", "/etc/systemd/system/edgeproxy-credentials.service"),
    Target("edgeproxy.tmpfiles.conf", "/etc/tmpfiles.d/edgeproxy.conf"),
    Target("edgeproxy.sysusers.conf", "/etc/sysusers.d/edgeproxy.conf"),
    Target("edgeproxy.env", "/etc/default/edgeproxy", mode=0o640, keep=True),
    Target("kubelet-edgeproxy.conf", "/etc/systemd/system/kubelet.service.d/20-edgeproxy.conf", kubelet=True),
)
KUBELET_KUBECONFIG = "/etc/edgeproxy/kubelet.kubeconfig"
UPSTREAM_KUBECONFIG = "/etc/edgeproxy/upstream.kubeconfig"  # EDGEPROXY_KUBECONFIG in systemd/edgeproxy.env
LISTENER_PKI = "/etc/edgeproxy/pki"  # the HTTPS listener's own CA and certificate; ca.crt is what clients trust
DEFAULT_SANS = ("127.0.0.1", "::1", "localhost")
SERVING_DAYS = 3650  # a loopback listener's certificate from a per-host CA; its expiry is exported and checked


def source_dir() -> Path:
    """Where the unit sources are: the checkout's systemd/, or share/edgeproxy/systemd of an installed wheel."""
    for candidate in (Path(__file__).resolve().parents[2] / "systemd", Path(sys.prefix) / "share/edgeproxy/systemd"):
        if (candidate / "edgeproxy.service").is_file():
            return candidate
    raise FileNotFoundError("edgeproxy's systemd/ files are not installed next to the package")


def docs_url(src: Path) -> str:
    """Documentation= of the units: the operations guide beside the unit sources (the checkout's docs/, or
    share/edgeproxy/docs of an installed wheel)."""
    return (src.parent / "docs" / "operations.md").resolve().as_uri()


def make_dirs(path: Path, mode: int = 0o755) -> None:
    """Create `path` and its missing parents, each with `mode` whatever the caller's umask (a umask of 077 left
    /etc/sysusers.d 0700)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=mode)
        os.chmod(directory, mode)


def default_exec(prefix: str | None) -> str:
    if prefix:
        return str(Path(prefix) / "bin" / "edgeproxy")
    found = shutil.which("edgeproxy")
    if found:
        return str(Path(found).resolve())
    return f"{shlex.quote(sys.executable)} -m edgeproxy"


def install(root: Path, exec_cmd: str, *, kubelet: bool = True, force: bool = False,
            tls_sans: tuple[str, ...] | None = DEFAULT_SANS, reissue_tls: bool = False,
            server: str | None = None) -> list[tuple[Path, str]]:
    """Install every file under `root`; returns (path, what happened) for each. tls_sans=None: no listener PKI;
    server: also write the upstream kubeconfig for that API server (kept if there, unless force)."""
    src = source_dir()
    docs = docs_url(src)
    done: list[tuple[Path, str]] = []
    for target in TARGETS:
        if target.kubelet and not kubelet:
            continue
        dest = root / target.dest.lstrip("/")
        if target.keep and dest.exists() and not force:
            done.append((dest, "kept (yours; --force replaces it)"))
            continue
        text = (src / target.source).read_text().replace("@EXEC@", exec_cmd).replace("@DOCS@", docs)
        make_dirs(dest.parent)
        kubeconfig.write(dest, text, mode=target.mode)
        done.append((dest, "written"))
    if kubelet:
        dest = root / KUBELET_KUBECONFIG.lstrip("/")
        make_dirs(dest.parent)
        kubeconfig.write(dest, kubeconfig.render("kubelet"), mode=0o644)
        done.append((dest, "written"))
    if server:
        dest = root / UPSTREAM_KUBECONFIG.lstrip("/")
        make_dirs(dest.parent)
        if dest.exists() and not force:
            done.append((dest, "kept (yours; --force replaces it)"))
        else:
            kubeconfig.write(dest, kubeconfig.render("upstream", server=server), mode=0o644)
            done.append((dest, "written"))
    if tls_sans is not None:
        done.extend(listener_pki(root, tls_sans, force=reissue_tls))
    unit_dir = root / "etc/systemd/system"
    for unit in OBSOLETE:
        for path in [unit_dir / unit, *(d / unit for d in unit_dir.glob("*.wants"))]:
            if path.exists() or path.is_symlink():
                path.unlink()
                done.append((path, "removed (replaced by edgeproxy-credentials.service)"))
    return done


def listener_pki(root: Path, sans: tuple[str, ...], *, force: bool = False) -> list[tuple[Path, str]]:
    """The HTTPS listener's CA and serving certificate in /etc/edgeproxy/pki, made once (kept unless --force).

    Made here, as root, because the service cannot write /etc (ProtectSystem=strict) and in-cluster clients need
    the CA at a stable, readable path (kube-proxy and CoreDNS mount it with a hostPath; see `edgeproxy kubeconfig`).
    The key becomes the edgeproxy user's through tmpfiles.d (`z` line), once systemd-sysusers has created the user.
    """
    d = root / LISTENER_PKI.lstrip("/")
    cert = d / "serving.crt"
    if cert.exists() and not force:
        return [(cert, "kept (clients trust it; --reissue-tls makes a new one)")]
    if force:
        for name in ("serving.crt", "serving.key"):
            (d / name).unlink(missing_ok=True)
    make_dirs(d)
    cert, key, ca = tls.own_serving_cert(d, sans, days=SERVING_DAYS)
    os.chmod(d, 0o755)
    for path, mode in ((ca, 0o644), (cert, 0o644), (key, 0o600), (d / "ca.key", 0o600)):
        os.chmod(path, mode)
    try:
        import pwd

        user = pwd.getpwnam("edgeproxy")
    except KeyError:
        pass
    else:
        if os.geteuid() == 0:
            os.chown(key, user.pw_uid, user.pw_gid)
    return [(ca, "written"), (cert, "written"), (key, "written")]


UNITS = ("edgeproxy-credentials.service", "edgeproxy.service")  # what is enabled
# Units an older version installed that this one replaces: removed (disabled first with --now) on install.
OBSOLETE = ("edgeproxy-credentials.path",)
NEXT_STEPS = f"""\
systemd-sysusers /etc/sysusers.d/edgeproxy.conf
systemd-tmpfiles --create /etc/tmpfiles.d/edgeproxy.conf
systemctl daemon-reload
systemctl enable --now {' '.join(UNITS)}"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="/", help="install under this directory instead of / (images, tests)")
    parser.add_argument("--prefix", help="installation prefix of edgeproxy: ExecStart runs PREFIX/bin/edgeproxy "
                                         "(default: the edgeproxy on PATH, else this Python with -m edgeproxy)")
    parser.add_argument("--exec", dest="exec_cmd", help="the exact command ExecStart runs before `serve ...`")
    parser.add_argument("--server", help="the API server URL: also writes the upstream kubeconfig "
                                         f"{UPSTREAM_KUBECONFIG} (the one in /etc/kubernetes/kubelet.conf)")
    parser.add_argument("--no-kubelet", action="store_true", help="leave kubelet alone (no drop-in, no kubeconfig)")
    parser.add_argument("--force", action="store_true", help="also replace /etc/default/edgeproxy")
    parser.add_argument("--reissue-tls", action="store_true", help="make the HTTPS listener's certificate again (for "
                                                                    "new --tls-san names; the CA is kept)")
    parser.add_argument("--tls-san", action="append", default=None, metavar="NAME",
                        help="extra name (IP or DNS) for the HTTPS listener's certificate, e.g. 169.254.2.1 for pods "
                             "that reach the proxy on a link-local address (repeatable; 127.0.0.1, ::1, localhost "
                             "are always in)")
    parser.add_argument("--no-tls", action="store_true", help="make no CA or certificate for the HTTPS listener")
    parser.add_argument("--now", action="store_true", help="then create the user and directories, reload systemd and "
                                                            "start the service (root / only)")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    exec_cmd = args.exec_cmd or default_exec(args.prefix)
    try:
        sans = None if args.no_tls else tuple(dict.fromkeys((*DEFAULT_SANS, *(args.tls_san or ()))))
        done = install(root, exec_cmd, kubelet=not args.no_kubelet, force=args.force, tls_sans=sans,
                       reissue_tls=args.reissue_tls, server=args.server)
    except (OSError, ValueError) as e:
        print(f"edgeproxy install-systemd: {e}", file=sys.stderr)
        return 1
    for path, what in done:
        print(f"{what:>8}  {path}")
    if args.now:
        if root.resolve() != Path("/"):
            print("--now works only with --root /", file=sys.stderr)
            return 2
        if not (root / UPSTREAM_KUBECONFIG.lstrip("/")).exists():
            print(f"--now needs {UPSTREAM_KUBECONFIG}: pass --server https://API-SERVER:6443", file=sys.stderr)
            return 2
        # An upgrade: `enable --now` leaves running services on their old code and units; restart them after.
        running = [u for u in UNITS if subprocess.run(["systemctl", "is-active", "--quiet", u],
                                                       check=False).returncode == 0]
        steps = NEXT_STEPS.splitlines() + ([f"systemctl restart {' '.join(running)}"] if running else [])
        for line in steps:
            print(f"+ {line}")
            result = subprocess.run(shlex.split(line), check=False)
            if result.returncode != 0:
                print(f"edgeproxy install-systemd: `{line}` failed ({result.returncode})", file=sys.stderr)
                return 1
        for unit in OBSOLETE:  # gone from disk; stop what may still run of it
            subprocess.run(["systemctl", "stop", unit], check=False, capture_output=True)
        if running:
            print(f"{' and '.join(running)} {'was' if len(running) == 1 else 'were'} running: restarted, so the "
                  "installed version and units are in effect")
        if not args.no_kubelet:
            print("kubelet uses the proxy after: systemctl restart kubelet")
        return 0
    where = "" if root.resolve() == Path("/") else f" on the host that boots {root}"
    print(f"\nNext, as root{where} (or run again with --now):")
    print(NEXT_STEPS)
    if not args.no_kubelet:
        print("systemctl restart kubelet")
    if os.geteuid() != 0 and root.resolve() == Path("/"):
        print("note: not running as root", file=sys.stderr)
    return 0
