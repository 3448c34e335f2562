"""`edgeproxy copy-credentials`: hand kubelet's rotating client certificate and the cluster CA to the edgeproxy user.

kubelet keeps its client certificate and key in one root-only file, `kubelet-client-current.pem`, a symlink it
replaces on every rotation: it writes `kubelet-client-<time>.pem`, points `kubelet-client-updated.pem` at it, removes
`kubelet-client-current.pem` and renames the updated link over it. edgeproxy runs unprivileged, so this command,
run as root by edgeproxy-credentials.service, copies the file into /var/lib/edgeproxy/pki (0600, owned by edgeproxy)
with an atomic rename; the proxy re-reads it without dropping open watches.

How every rotation gets here (issue 17): `--follow` (what the unit runs) stays up and reads both sources every
`--interval` (0.25 s; two small files), copying whatever differs from the copy. There is no event to miss: the
old `.path` unit missed rotations because a trigger landed at the instant the link was absent
(ConditionPathExists=) or while the previous copy was still running (systemd drops a trigger for a unit that is
still active), and a path unit on the directory with a timer backstop still left every change that arrived during a
run to the backstop. A read can only see the old file, no file, or the new file whole (kubelet links a file it has
finished writing); a content is copied once it reads the same `--settle` seconds apart (for writers that write in
place), and it must hold a certificate and a private key. Reading kubelet's file from the proxy itself was the
other choice; it would need CAP_DAC_READ_SEARCH (read any file) in the proxy, or an ACL kubelet's rewrites drop.

Boundary: files only (read, compare, write, chown) and sd_notify; nothing here talks to the proxy. Neighbours:
systemd/edgeproxy-credentials.service runs it; upstream.py and tls.Reloader pick the copy up.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
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
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), mode)  # the mode first: once it is the user's, root lacks CAP_FOWNER to chmod
                if uid is not None and gid is not None:
                    os.fchown(f.fileno(), uid, gid)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise OSError(e.errno, f"cannot write {dest}: {e.strerror}") from e
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
    ensure_dir(dest_dir, uid, gid)
    lines = []
    for source, name, mode, key in sources(client, ca):
        data = read_settled(source, settle=settle, wait=wait)
        if data is None:
            lines.append(f"{name}: {source} is not there (yet): nothing copied")
            continue
        check_pem(data, str(source), key=key)
        changed = install_file(dest_dir / name, data, mode, uid, gid)
        lines.append(f"{name}: {'updated from' if changed else 'unchanged,'} {source} (sha256 {_digest(data)})")
    return lines


def sources(client: Path, ca: Path) -> tuple[tuple[Path, str, int, bool], ...]:
    return ((client, "client.pem", 0o600, True), (ca, "ca.crt", 0o644, False))


def ensure_dir(dest_dir: Path, uid: int | None, gid: int | None) -> None:
    if not dest_dir.is_dir():
        dest_dir.mkdir(mode=0o700, parents=True)
        if uid is not None and gid is not None:
            os.chown(dest_dir, uid, gid)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def follow(client: Path, ca: Path, dest_dir: Path, *, user: str | None, interval: float, settle: float,
           say=print, ready=None, stop=None) -> None:
    """Copy now, then every `interval` seconds copy what changed, until `stop()` is true. A bad source is said once
    per content and skipped (the copy keeps the last good one); `ready()` is called after the first round."""
    uid, gid = owner(user)
    ensure_dir(dest_dir, uid, gid)
    refused: dict[str, bytes] = {}
    first = True
    while stop is None or not stop():
        for source, name, mode, key in sources(client, ca):
            data = _read(source)
            dest = dest_dir / name
            if data is None or data == _read(dest) or data == refused.get(name):
                if data is None and first:
                    say(f"{name}: {source} is not there (yet): waiting for it")
                continue
            time.sleep(settle)
            if _read(source) != data:
                continue  # still being written: the next round sees it settled
            try:
                check_pem(data, str(source), key=key)
            except CredentialsError as e:
                refused[name] = data
                say(f"{name}: not copied: {e}")
                continue
            install_file(dest, data, mode, uid, gid)
            say(f"{name}: updated from {source} (sha256 {_digest(data)})")
        if first and ready is not None:
            ready()
        first = False
        time.sleep(interval)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--client-cert", default=os.environ.get(ENV_CLIENT) or DEFAULT_CLIENT,
                        help=f"kubelet's client certificate and key (env {ENV_CLIENT}, default {DEFAULT_CLIENT})")
    parser.add_argument("--cluster-ca", default=os.environ.get(ENV_CA) or DEFAULT_CA,
                        help=f"the cluster CA (env {ENV_CA}, default {DEFAULT_CA})")
    parser.add_argument("--dest", default=DEST_DIR, help=f"where the proxy reads them (default {DEST_DIR})")
    parser.add_argument("--user", default=USER, help=f"owner of the copies (default {USER}; '' keeps the caller)")
    parser.add_argument("--settle", type=float, default=0.1,
                        help="seconds a source must stay unchanged before it is copied (default 0.1)")
    parser.add_argument("--wait", type=float, default=5.0,
                        help="seconds to wait for a source that is absent, as between kubelet's remove and rename "
                             "(default 5; once only)")
    parser.add_argument("--follow", action="store_true",
                        help="keep running: copy every change (what edgeproxy-credentials.service runs; tells systemd "
                             "READY=1 after the first round)")
    parser.add_argument("--interval", type=float, default=0.25,
                        help="with --follow: seconds between two reads of the sources (default 0.25)")


def run(args: argparse.Namespace) -> int:
    if args.follow:
        return _run_follow(args)
    try:
        lines = copy(Path(args.client_cert), Path(args.cluster_ca), Path(args.dest), user=args.user or None,
                     settle=args.settle, wait=args.wait)
    except (CredentialsError, OSError) as e:
        print(f"edgeproxy copy-credentials: {e}", file=sys.stderr)
        return 1
    for line in lines:
        print(line)
    return 0


def _run_follow(args: argparse.Namespace) -> int:
    from edgeproxy import notify

    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))

    def say(line: str) -> None:
        print(line, flush=True)

    def ready() -> None:
        notify.ready(f"copying {args.client_cert} and {args.cluster_ca} to {args.dest} on every change")

    def stop() -> bool:
        notify.watchdog()  # one pet per round: a wedged loop gets the unit restarted (WatchdogSec=)
        return bool(stopping)

    try:
        follow(Path(args.client_cert), Path(args.cluster_ca), Path(args.dest), user=args.user or None,
               interval=args.interval, settle=args.settle, say=say, ready=ready, stop=stop)
    except (CredentialsError, OSError) as e:
        print(f"edgeproxy copy-credentials: {e}", file=sys.stderr)
        return 1
    notify.stopping()
    return 0
