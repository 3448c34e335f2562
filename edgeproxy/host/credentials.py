"""`edgeproxy copy-credentials`: hand kubelet's rotating client certificate and the cluster CA to the edgeproxy user.

kubelet keeps its client certificate and key in one root-only file, `kubelet-client-current.pem`, a symlink it
replaces on every rotation: it writes `kubelet-client-<time>.pem`, points `kubelet-client-updated.pem` at it, removes
`kubelet-client-current.pem` and renames the updated link over it. edgeproxy runs unprivileged, so this command,
run as root by edgeproxy-credentials.service, copies the file into /var/lib/edgeproxy/pki (0600, owned by edgeproxy)
with an atomic rename; the proxy re-reads it without dropping open watches.

Why every rotation gets here (what a watch on the file alone missed, issue 17): edgeproxy-credentials.path watches
the whole directory, so any step of the sequence triggers a run, including the instant the current link is absent;
a run waits for the link to be back (`--wait`) and for the content to hold still for `--settle` seconds before it
copies, so it copies the end of the sequence, not its middle; and edgeproxy-credentials.timer runs it every few
minutes as a backstop for a change inotify did not report. A run copies only what differs, so the extra runs are
free. Reading kubelet's file directly from the proxy was the other choice; it would need the proxy to hold
CAP_DAC_READ_SEARCH (read any file) or an ACL kubelet's rewrites drop, so the root copy with two capabilities stays.

Boundary: files only (read, compare, write, chown); nothing here talks to the proxy or to systemd. Neighbours:
systemd/edgeproxy-credentials.{service,path,timer} run it; upstream.py and tls.Reloader pick the copy up.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from pathlib import Path

DEST_DIR = "/var/lib/edgeproxy/pki"
USER = "edgeproxy"
ENV_CLIENT = "EDGEPROXY_KUBELET_CLIENT_CERT"
ENV_CA = "EDGEPROXY_CLUSTER_CA"
DEFAULT_CLIENT = "/var/lib/kubelet/pki/kubelet-client-current.pem"
DEFAULT_CA = "/etc/kubernetes/pki/ca.crt"


class CredentialsError(Exception):
    """A source that is there but is not what it should be (not a certificate, no key)."""


def read_settled(path: Path, *, settle: float, wait: float) -> bytes | None:
    """The content of `path` once it exists and has not changed for `settle` seconds; None if it is still absent
    after `wait` seconds (kubelet has not written one yet). Gives up on settling after `wait` and returns the latest
    content: a file changing that often is copied as it is, and the next trigger copies its next state."""
    deadline = time.monotonic() + wait
    last: bytes | None = None
    while True:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None  # between kubelet's remove and rename, or no certificate yet
        if data is not None and data == last:
            return data
        if time.monotonic() >= deadline:
            return data
        last = data
        time.sleep(settle if data is not None else min(settle, 0.05))


def check_pem(data: bytes, what: str, *, key: bool) -> None:
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CredentialsError(f"{what} holds no PEM certificate")
    if key and b"PRIVATE KEY-----" not in data:
        raise CredentialsError(f"{what} holds no private key (kubelet's client file has both)")


def install_file(dest: Path, data: bytes, mode: int, uid: int | None, gid: int | None) -> bool:
    """Write `data` to `dest` atomically (temp file, fsync, chown, rename, fsync of the directory) unless `dest`
    already holds exactly that. True if it wrote."""
    try:
        if dest.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    tmp = dest.with_name(f".{dest.name}.new")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            if uid is not None and gid is not None:
                os.fchown(f.fileno(), uid, gid)
            os.fchmod(f.fileno(), mode)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def owner(user: str | None) -> tuple[int | None, int | None]:
    if not user:
        return None, None
    import pwd

    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise CredentialsError(f"no user {user!r} (systemd-sysusers /etc/sysusers.d/edgeproxy.conf makes it)") from None
    return entry.pw_uid, entry.pw_gid


def copy(client: Path, ca: Path, dest_dir: Path, *, user: str | None, settle: float, wait: float) -> list[str]:
    """Copy kubelet's client file to dest_dir/client.pem (0600) and the cluster CA to dest_dir/ca.crt (0644), each
    only when it differs; returns one line per file saying what happened."""
    uid, gid = owner(user)
    if not dest_dir.is_dir():
        dest_dir.mkdir(mode=0o700, parents=True)
        if uid is not None and gid is not None:
            os.chown(dest_dir, uid, gid)
    lines = []
    for source, name, mode, key in ((client, "client.pem", 0o600, True), (ca, "ca.crt", 0o644, False)):
        data = read_settled(source, settle=settle, wait=wait)
        if data is None:
            lines.append(f"{name}: {source} is not there (yet): nothing copied")
            continue
        check_pem(data, str(source), key=key)
        digest = hashlib.sha256(data).hexdigest()[:16]
        changed = install_file(dest_dir / name, data, mode, uid, gid)
        lines.append(f"{name}: {'updated from' if changed else 'unchanged,'} {source} (sha256 {digest})")
    return lines


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client-cert", default=os.environ.get(ENV_CLIENT) or DEFAULT_CLIENT,
                        help=f"kubelet's client certificate and key (env {ENV_CLIENT}, default {DEFAULT_CLIENT})")
    parser.add_argument("--cluster-ca", default=os.environ.get(ENV_CA) or DEFAULT_CA,
                        help=f"the cluster CA (env {ENV_CA}, default {DEFAULT_CA})")
    parser.add_argument("--dest", default=DEST_DIR, help=f"where the proxy reads them (default {DEST_DIR})")
    parser.add_argument("--user", default=USER, help=f"owner of the copies (default {USER}; '' keeps the caller)")
    parser.add_argument("--settle", type=float, default=0.2,
                        help="seconds a source must stay unchanged before it is copied (default 0.2)")
    parser.add_argument("--wait", type=float, default=5.0,
                        help="seconds to wait for a source that is absent, as between kubelet's remove and rename "
                             "(default 5)")


def run(args: argparse.Namespace) -> int:
    try:
        lines = copy(Path(args.client_cert), Path(args.cluster_ca), Path(args.dest), user=args.user or None,
                     settle=args.settle, wait=args.wait)
    except (CredentialsError, OSError) as e:
        print(f"edgeproxy copy-credentials: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0
