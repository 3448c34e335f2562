"""kubelet's client-certificate rotation as kubelet does it (client-go util/certificate's fileStore.Update): write
`kubelet-client-<time>.pem`, point `kubelet-client-updated.pem` at it, remove `kubelet-client-current.pem`, rename
the updated link over it. Used by the copier's tests and the systemd tier."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CURRENT = "kubelet-client-current.pem"
UPDATED = "kubelet-client-updated.pem"


def rotate(pki: Path, pem: bytes, stamp: str) -> Path:
    """One rotation in kubelet's order; returns the new dated file."""
    pki.mkdir(parents=True, exist_ok=True)
    dated = pki / f"kubelet-client-{stamp}.pem"
    fd = os.open(dated, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    updated = pki / UPDATED
    if updated.is_symlink() or updated.exists():
        updated.unlink()
    updated.symlink_to(dated.name)  # kubelet links the absolute path; relative resolves inside a container too
    current = pki / CURRENT
    if current.is_symlink() or current.exists():
        current.unlink()
    updated.rename(current)
    return dated


def node_pem(ca_cert: x509.Certificate | None = None, ca_key: ec.EllipticCurvePrivateKey | None = None, *,
             node: str = "edge-1", days: int = 30) -> bytes:
    """A node client certificate and its key in one PEM, as kubelet keeps them (self-signed without a CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(ca_cert.subject if ca_cert is not None else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key if ca_key is not None else key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
