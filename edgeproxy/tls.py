"""Certificates: make a CA, issue server and client certificates, write them as PEM files.

Used by the simulator (its serving cert and the admin/node client certs a kubeconfig carries) and by tests; the
proxy's reload and expiry reporting live here too as they grow. Makes keys and certificates with `cryptography`;
does not open sockets (the ssl contexts are built by the servers and clients that use the files).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import pathlib
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


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
