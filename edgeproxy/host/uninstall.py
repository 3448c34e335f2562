"""`edgeproxy uninstall-systemd`: undo `edgeproxy install-systemd`, and say what is left.

On the host (--root /): stops and disables every unit install-systemd put in place, removes the enablement links an
older version left (edgeproxy-credentials.service used to be WantedBy=multi-user.target: after the documented undo
steps it still copied kubelet's private key at every boot), removes the files install-systemd wrote (units, the
kubelet drop-in and kubeconfig, the tmpfiles and sysusers entries), reloads systemd, and restarts a running kubelet
so it talks to the API server directly again. Then it lists what remains, with the command that removes each: the
settings (/etc/default/edgeproxy), /etc/edgeproxy (the upstream kubeconfig, the HTTPS listener's CA and key),
/var/lib/edgeproxy (the cache, the copy of kubelet's client certificate and key, sealed tokens and their key) and the
edgeproxy user. `--purge` removes those too. With --root DIR, only files under DIR change.

Boundary: files under the root and, on the host, systemctl and userdel. Neighbours: install.py (what was installed).
"""

from __future__ import annotations

import argparse
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from edgeproxy.commands import install

# Every unit name any version installed: these are stopped, disabled and unlinked from every *.wants/*.requires.
UNITS = ("edgeproxy.service", "edgeproxy-credentials.path", "edgeproxy-credentials.timer",
         "edgeproxy-credentials.service")
UNIT_DIR = "/etc/systemd/system"
KUBELET_DROPIN = "/etc/systemd/system/kubelet.service.d/20-edgeproxy.conf"
USER = "edgeproxy"
# (path, what it holds): left in place unless --purge, because they are the operator's or hold state worth keeping.
STATE = (
    ("/etc/default/edgeproxy", "the settings"),
    ("/etc/edgeproxy", "the upstream kubeconfig, the HTTPS listener's CA and key"),
    ("/var/lib/edgeproxy", "the cache, the copy of kubelet's client certificate and key, sealed tokens and seal.key"),
)


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)


def stop_and_disable(out: list[str]) -> None:
    """Stop every unit, then disable those whose files are still there (disable reads their [Install])."""
    present = [u for u in UNITS if (Path(UNIT_DIR) / u).exists()]
    result = _systemctl("stop", *UNITS)
    out.append(f"stopped   {' '.join(UNITS)}" if result.returncode == 0
               else f"stop: {result.stderr.strip() or result.returncode}")
    if present:
        result = _systemctl("disable", *present)
        out.append(f"disabled  {' '.join(present)}" if result.returncode == 0
                   else f"disable: {result.stderr.strip() or result.returncode}")


def remove_links(root: Path, out: list[str]) -> None:
    """Remove enablement links to our units from every *.wants and *.requires directory (also those an older version
    left, which `systemctl disable` of the current unit files does not know about)."""
    unit_dir = root / UNIT_DIR.lstrip("/")
    for pattern in ("*.wants", "*.requires"):
        for directory in sorted(unit_dir.glob(pattern)):
            for unit in UNITS:
                link = directory / unit
                if link.is_symlink() or link.exists():
                    link.unlink()
                    out.append(f"removed   {link}")


def remove_files(root: Path, out: list[str]) -> bool:
    """Remove what install-systemd wrote (not the operator's files); True if the kubelet drop-in was there."""
    had_dropin = (root / KUBELET_DROPIN.lstrip("/")).exists()
    paths = [t.dest for t in install.TARGETS if not t.keep] + [install.KUBELET_KUBECONFIG]
    paths += [f"{UNIT_DIR}/{u}" for u in UNITS]
    for path in dict.fromkeys(paths):
        target = root / path.lstrip("/")
        if target.exists() or target.is_symlink():
            target.unlink()
            out.append(f"removed   {target}")
    dropin_dir = (root / KUBELET_DROPIN.lstrip("/")).parent
    if dropin_dir.is_dir() and not any(dropin_dir.iterdir()):
        dropin_dir.rmdir()
    return had_dropin


def remaining(root: Path, host: bool) -> list[tuple[str, str, str]]:
    """(what, holds, how to remove it) for each piece of state still there."""
    left = []
    for path, holds in STATE:
        target = root / path.lstrip("/")
        if target.exists():
            left.append((str(target), holds, f"rm -r {target}" if target.is_dir() else f"rm {target}"))
    if host:
        try:
            pwd.getpwnam(USER)
        except KeyError:
            pass
        else:
            left.append((f"user {USER}", "the system user the proxy ran as", f"userdel {USER}"))
    return left


def purge(root: Path, host: bool, out: list[str]) -> int:
    failed = 0
    for path, _ in STATE:
        target = root / path.lstrip("/")
        if target.is_dir():
            shutil.rmtree(target)
            out.append(f"removed   {target}")
        elif target.exists():
            target.unlink()
            out.append(f"removed   {target}")
    if host and remaining(root, host):
        result = subprocess.run(["userdel", USER], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            out.append(f"removed   user {USER}")
        else:
            out.append(f"userdel {USER}: {result.stderr.strip() or result.returncode}")
            failed = 1
    return failed


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", default="/", help="uninstall from this directory instead of / (files only)")
    parser.add_argument("--purge", action="store_true",
                        help="also remove the settings, /etc/edgeproxy, /var/lib/edgeproxy (cache, keys) and the "
                             "edgeproxy user")


def run(args: argparse.Namespace) -> int:
    root = Path(args.root)
    host = root.resolve() == Path("/")
    out: list[str] = []
    try:
        if host:
            stop_and_disable(out)
        remove_links(root, out)
        had_dropin = remove_files(root, out)
        if host:
            _systemctl("daemon-reload")
            _systemctl("reset-failed", *UNITS)
            if had_dropin and _systemctl("is-active", "--quiet", "kubelet.service").returncode == 0:
                result = _systemctl("restart", "kubelet.service")
                out.append("restarted kubelet.service: it talks to the API server directly again"
                           if result.returncode == 0 else f"restart kubelet: {result.stderr.strip()}")
        failed = purge(root, host, out) if args.purge else 0
    except OSError as e:
        print("\n".join(out), file=sys.stdout)
        print(f"edgeproxy uninstall-systemd: {e}", file=sys.stderr)
        return 1
    print("\n".join(out) if out else "nothing of edgeproxy's systemd installation was found")
    left = remaining(root, host)
    if left:
        print("\nLeft in place (remove with the command beside each, or run again with --purge):")
        for what, holds, how in left:
            print(f"  {what}: {holds}\n      {how}")
    else:
        print("\nNothing of edgeproxy is left on this host." if host else f"\nNothing of edgeproxy is left in {root}.")
    return failed
