"""The in-cluster serving certificate: is it one that pods using in-cluster config will accept?

A pod verifies the API server against the cluster CA mounted in its ServiceAccount volume, for the host it dialled:
`KUBERNETES_SERVICE_HOST`, the `kubernetes` Service's ClusterIP (or `kubernetes.default.svc` by name). So the
certificate edgeproxy serves on the in-cluster address must name `kubernetes.default.svc` and that ClusterIP, and be
signed by the cluster CA (the operator signs it; edgeproxy cannot check a CA it does not hold, and should not hold
its key). `check()` refuses a certificate without the name at start; the ClusterIP is checked against the API
server's answer by the stage (`cert_ips`), which withholds the redirect until it is covered.
Neighbours: server (calls check at start), stage (cert_ips), tls (loads the certificate).
"""

from __future__ import annotations

import ipaddress
import os

from cryptography import x509

from edgeproxy import tls

REQUIRED_NAME = "kubernetes.default.svc"


class CertificateError(ValueError):
    """The in-cluster serving certificate cannot serve pods: unreadable, or without the names they verify."""


def names(path: str | os.PathLike[str]) -> tuple[frozenset[str], frozenset[str]]:
    """(DNS names, IP addresses) of a certificate's subjectAltName."""
    try:
        cert = tls.load_certificate(path)
    except (OSError, ValueError) as e:
        raise CertificateError(f"cannot read the in-cluster serving certificate {path}: {e}") from e
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset(), frozenset()
    ips = frozenset(str(ipaddress.ip_address(ip)) for ip in san.get_values_for_type(x509.IPAddress))
    return frozenset(n.lower() for n in san.get_values_for_type(x509.DNSName)), ips


def check(path: str | os.PathLike[str]) -> frozenset[str]:
    """The certificate's IP addresses, once it is known to name kubernetes.default.svc; CertificateError if not."""
    dns, ips = names(path)
    if REQUIRED_NAME not in dns:
        raise CertificateError(f"the in-cluster serving certificate {path} is not valid for {REQUIRED_NAME} "
                               f"(it names {', '.join(sorted(dns | ips)) or 'nothing'}): pods using in-cluster "
                               "config would refuse it. Sign one for kubernetes, kubernetes.default, "
                               "kubernetes.default.svc, kubernetes.default.svc.cluster.local and the kubernetes "
                               "Service's ClusterIP with the cluster CA")
    return ips
