"""Certificates: make a CA, issue server and client certificates, write them as PEM files.

Used by the simulator (its serving cert and the admin/node client certs a kubeconfig carries) and by tests; the
proxy's side is the last section: its HTTPS listener's certificate (from its own CA when no files are given) and
context, and the Reloader that swaps the upstream client certificate when kubelet rotates it, reporting expiry.
Makes keys and certificates with `cryptography`; opens no sockets (it builds ssl contexts; servers and clients use
them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import ipaddress
import logging
import os
import pathlib
import ssl
import time
from collections.abc import Callable, Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def write(self, cert_path: str | os.PathLike, key_path: str | os.PathLike) -> None:
        """Write the certificate and (mode 0600) the key."""
        pathlib.Path(cert_path).write_bytes(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem)


def _name(cn: str, orgs: Iterable[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(cn: str = "edgeproxy-ca", days: int = 3650) -> Issued:
    """A self-signed CA (ECDSA P-256)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(cn)
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    cn: str,
    orgs: Iterable[str] = (),
    sans: Iterable[str] = (),
    *,
    client: bool = False,
    days: int = 365,
    not_before: datetime.datetime | None = None,
) -> Issued:
    """A leaf certificate signed by `ca`: a client certificate (CN = user, O = groups, as kube-apiserver reads
    them) or a server certificate for `sans` (IP addresses or DNS names)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - datetime.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, orgs))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def subject(cert: x509.Certificate) -> tuple[str, tuple[str, ...]]:
    """(CN, O...) of a certificate: the user and groups kube-apiserver derives from a client certificate."""
    cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return (str(cn[0].value) if cn else ""), tuple(str(o.value) for o in orgs)


@dataclasses.dataclass(frozen=True, slots=True)
class Pki:
    """The files of a small cluster PKI in one directory: CA, API server cert, admin and node client certs."""

    dir: pathlib.Path
    ca_cert: pathlib.Path
    ca_key: pathlib.Path
    server_cert: pathlib.Path
    server_key: pathlib.Path
    admin_cert: pathlib.Path
    admin_key: pathlib.Path
    node_cert: pathlib.Path
    node_key: pathlib.Path
    node_name: str

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike,
        *,
        node_name: str = "edge-1",
        sans: Iterable[str] = ("127.0.0.1", "::1", "localhost"),
    ) -> Pki:
        """Make (or overwrite) the PKI in `directory`: server cert for `sans`, admin (CN=admin,
        O=system:masters) and node (CN=system:node:<node_name>, O=system:nodes) client certs."""
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        pki = cls(
            d,
            d / "ca.crt",
            d / "ca.key",
            d / "server.crt",
            d / "server.key",
            d / "admin.crt",
            d / "admin.key",
            d / "node.crt",
            d / "node.key",
            node_name,
        )
        ca = make_ca("edgeproxy-sim-ca")
        ca.write(pki.ca_cert, pki.ca_key)
        issue(ca, "kube-apiserver", sans=sans).write(pki.server_cert, pki.server_key)
        issue(ca, "admin", ("system:masters",), client=True).write(pki.admin_cert, pki.admin_key)
        issue(ca, f"system:node:{node_name}", ("system:nodes",), client=True).write(pki.node_cert, pki.node_key)
        return pki

    @classmethod
    def load(cls, directory: str | os.PathLike, *, node_name: str = "edge-1") -> Pki:
        d = pathlib.Path(directory)
        names = ("ca", "server", "admin", "node")
        paths = [p for n in names for p in (d / f"{n}.crt", d / f"{n}.key")]
        return cls(d, *paths, node_name)

    def client(self, user: str) -> tuple[pathlib.Path, pathlib.Path]:
        """(cert, key) of the "admin" or "node" client."""
        if user == "admin":
            return self.admin_cert, self.admin_key
        if user == "node":
            return self.node_cert, self.node_key
        raise ValueError(f"unknown user {user!r} (admin or node)")


# ---- The proxy's side: the HTTPS listener's certificate and context, reload on rotation, expiry (issue 7) ----
#
# Neighbours: server.py builds the HTTPS listener with server_context() and starts a Reloader for the upstream client
# certificate (it swaps upstream.Upstream's SSLContext; connections already open, watches included, keep theirs);
# debug.py reads certificates with load_certificate(); metrics.py has the expiry gauge this section sets.

PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"


def load_certificate(path: str | os.PathLike) -> x509.Certificate:
    """The first certificate in a PEM file (kubelet's client pem holds the certificate and the key in one file)."""
    data = pathlib.Path(path).read_bytes()
    start = data.find(PEM_CERT_BEGIN)
    if start < 0:
        raise ValueError(f"{path}: no PEM certificate in it")
    return x509.load_pem_x509_certificates(data[start:])[0]


def seconds_left(cert: x509.Certificate, now: datetime.datetime | None = None) -> float:
    """Seconds until `cert` expires (negative once it has)."""
    return (cert.not_valid_after_utc - (now or _now())).total_seconds()


def own_serving_cert(directory: str | os.PathLike, sans: Iterable[str], *, days: int = 365
                     ) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """(cert, key, ca_cert) of a serving certificate for `sans` from the proxy's own CA in `directory`.

    The CA (ca.crt, ca.key) is made once and kept, so clients that trust it keep trusting restarts; the serving
    certificate (serving.crt, serving.key) is re-issued when missing, for other names, or past two thirds of its life.
    """
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_cert, ca_key = d / "ca.crt", d / "ca.key"
    cert_path, key_path = d / "serving.crt", d / "serving.key"
    if ca_cert.exists() and ca_key.exists():
        ca_key_obj = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
        if not isinstance(ca_key_obj, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key}: not an EC key")
        ca = Issued(load_certificate(ca_cert), ca_key_obj)
    else:
        ca = make_ca("edgeproxy-serving-ca")
        ca.write(ca_cert, ca_key)
        os.chmod(ca_cert, 0o644)
    wanted = sorted(set(sans))
    fresh = False
    if cert_path.exists() and key_path.exists():
        try:
            current = load_certificate(cert_path)
            names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = sorted([str(n.value) for n in names])
            life = (current.not_valid_after_utc - current.not_valid_before_utc).total_seconds()
            fresh = (have == sorted(str(ipaddress.ip_address(s)) if _is_ip(s) else s for s in wanted)
                     and current.issuer == ca.cert.subject and seconds_left(current) > life / 3)
        except (ValueError, x509.ExtensionNotFound):
            fresh = False
    if not fresh:
        issue(ca, "edgeproxy", sans=wanted, days=days).write(cert_path, key_path)
    return cert_path, key_path, ca_cert


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def server_context(cert_file: str | os.PathLike, key_file: str | os.PathLike,
                   client_ca_file: str | os.PathLike | None = None) -> ssl.SSLContext:
    """The HTTPS listener's context. With a client CA (the cluster CA), a client certificate is asked for and, when
    presented, verified against it (CERT_OPTIONAL: ServiceAccount-token clients present none)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])  # the proxy speaks HTTP/1.1; watches and upgrades rely on it
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if client_ca_file:
        ctx.load_verify_locations(cafile=str(client_ca_file))
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _signature(paths: Iterable[str]) -> tuple[tuple[str, int, int, int, int] | tuple[str], ...]:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime (ns). Missing files count too."""
    out: list[tuple[str, int, int, int, int] | tuple[str]] = []
    for p in paths:
        try:
            st = os.stat(p)  # follows symlinks: kubelet swaps the kubelet-client-current.pem link
        except OSError:
            out.append((p,))
        else:
            out.append((p, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(out)


class Reloader:
    """Watches credential files and calls `reload()` when they change; reports certificate expiry.

    Polling stat() (every `interval` s) rather than inotify: it sees symlink swaps, bind mounts and files written by
    another user alike, and costs nothing at this rate. A reload that fails (a half-written file, a key that does not
    match its certificate yet) keeps the old credentials and is retried at every poll until the files settle.
    """

    __slots__ = ("_expiry_warned", "_good", "_signature", "certs", "interval", "on_expiry", "paths", "reload",
                 "warn_seconds")

    def __init__(self, paths: Callable[[], Iterable[str]], reload: Callable[[], None], *,
                 certs: Callable[[], Iterable[str]] | None = None, interval: float = 10.0, warn_days: float = 30.0,
                 on_expiry: Callable[[str, float], None] | None = None) -> None:
        self.paths = paths
        self.reload = reload
        self.certs = certs or paths
        self.interval = interval
        self.warn_seconds = warn_days * 86400
        self.on_expiry = on_expiry
        self._signature = _signature(sorted(set(paths())))
        self._good = True
        self._expiry_warned: dict[str, float] = {}

    def check(self) -> bool:
        """One poll: reload if the files changed (or the last reload failed). True if it reloaded."""
        signature = _signature(sorted(set(self.paths())))
        if signature == self._signature and self._good:
            return False
        self._signature = signature
        try:
            self.reload()
        except Exception as e:
            if self._good:
                log.warning("credential files changed but cannot be loaded yet (will retry): %s", e)
            self._good = False
            return False
        self._good = True
        log.info("reloaded credentials from %s", ", ".join(sorted(set(self.paths()))),
                 extra={"event": "credentials_reloaded"})
        self.report_expiry()
        return True

    def report_expiry(self) -> dict[str, float]:
        """Seconds left of each certificate; warns (once a day per file) inside the warning window."""
        left: dict[str, float] = {}
        for path in sorted(set(self.certs())):
            try:
                cert = load_certificate(path)
            except (OSError, ValueError):
                continue
            left[path] = seconds_left(cert)
            if self.on_expiry is not None:
                self.on_expiry(path, cert.not_valid_after_utc.timestamp())
            if left[path] < self.warn_seconds:
                last = self._expiry_warned.get(path, 0.0)
                now = time.monotonic()
                if not last or now - last > 86400:
                    self._expiry_warned[path] = now
                    days = left[path] / 86400
                    what = f"expired {-days:.1f} days ago" if days < 0 else f"expires in {days:.1f} days"
                    log.warning("certificate %s %s (%s)", path, what, cert.not_valid_after_utc.isoformat(),
                                extra={"event": "certificate_expiring", "file": path, "days_left": round(days, 2)})
        return left

    async def run(self) -> None:
        self.report_expiry()
        ticks = 0
        while True:
            await asyncio.sleep(self.interval)
            self.check()
            ticks += 1
            if ticks * self.interval >= 3600:  # expiry once an hour is plenty
                ticks = 0
                self.report_expiry()
