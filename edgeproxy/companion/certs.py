"""The webhook's serving certificate, arranged in the cluster: a CA and a certificate for the Service's DNS names
kept in one Secret (shared by every replica), and the CA put into the MutatingWebhookConfiguration's caBundle.

The first replica to start makes them (the Secret's create is the lock: a replica that gets 409 AlreadyExists reads
the winner's); a certificate past two thirds of its life, or for other names, is replaced. Needs get/update on that
Secret and get/patch on that MutatingWebhookConfiguration, both by name (deploy/companion.yaml). With
`--tls-cert-file` none of this runs (cert-manager or an operator's own PKI). Neighbours: tls (makes the keys),
kubeapi, webhook.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgeproxy import tls
from edgeproxy.companion import errors, kubeapi

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, slots=True)
class Bundle:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert, key = d / "tls.crt", d / "tls.key"
        cert.write_bytes(self.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(self.key_pem)
        return cert, key


def service_names(service: str, namespace: str) -> list[str]:
    return [service, f"{service}.{namespace}", f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"]


def make(sans: Iterable[str], days: int = 365) -> Bundle:
    ca = tls.make_ca("edgeproxy-companion-ca", days=days * 10)
    leaf = tls.issue(ca, "edgeproxy-companion", sans=list(sans), days=days)
    return Bundle(ca.cert_pem, leaf.cert_pem, leaf.key_pem)


def usable(secret: Mapping[str, Any] | None, sans: Iterable[str]) -> Bundle | None:
    """The Secret's bundle if it is complete, for exactly `sans`, and has more than a third of its life left."""
    data = (secret or {}).get("data") or {}
    try:
        bundle = Bundle(*(base64.b64decode(data[k]) for k in ("ca.crt", "tls.crt", "tls.key")))
        cert = x509.load_pem_x509_certificate(bundle.cert_pem)
        serialization.load_pem_private_key(bundle.key_pem, password=None)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (KeyError, ValueError, TypeError, x509.ExtensionNotFound):
        return None
    life = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds()
    if sorted(str(n.value) for n in names) != sorted(sans) or tls.seconds_left(cert) < life / 3:
        return None
    return bundle


def _secret(namespace: str, name: str, bundle: Bundle, rv: str | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name, "namespace": namespace}
    if rv:
        md["resourceVersion"] = rv
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": md,
            "data": {k: base64.b64encode(v).decode() for k, v in
                     (("ca.crt", bundle.ca_pem), ("tls.crt", bundle.cert_pem), ("tls.key", bundle.key_pem))}}


async def ensure_secret(kube: kubeapi.Kube, namespace: str, name: str, sans: list[str]) -> Bundle:
    path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
    for _ in range(5):
        try:
            current = await kube.get(path)
        except errors.ApiError as e:
            if e.status != 404:
                raise
            current = None
        bundle = usable(current, sans)
        if bundle is not None:
            return bundle
        fresh = make(sans)
        try:
            if current is None:
                await kube.create(f"/api/v1/namespaces/{namespace}/secrets", _secret(namespace, name, fresh))
            else:
                rv = (current.get("metadata") or {}).get("resourceVersion")
                await kube.update(path, _secret(namespace, name, fresh, rv))
        except errors.ApiError as e:
            if e.status == 409:
                continue  # another replica wrote first: use theirs
            raise
        log.info("webhook certificate for %s written to Secret %s/%s", ", ".join(sans), namespace, name)
        return fresh
    raise errors.CompanionError(f"Secret {namespace}/{name}: kept changing under us")


async def inject_ca(kube: kubeapi.Kube, config_name: str, ca_pem: bytes) -> int:
    """Put the CA into every webhook of the MutatingWebhookConfiguration; return how many changed."""
    path = f"/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{config_name}"
    current = await kube.get(path)
    want = base64.b64encode(ca_pem).decode()
    ops = [{"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": want}
           for i, hook in enumerate(current.get("webhooks") or ())
           if (hook.get("clientConfig") or {}).get("caBundle") != want]
    if ops:
        rv = (current.get("metadata") or {}).get("resourceVersion")
        ops.insert(0, {"op": "test", "path": "/metadata/resourceVersion", "value": rv})
        await kube.patch(path, ops, kubeapi.JSON_PATCH)
        log.info("caBundle of MutatingWebhookConfiguration %s set (%d webhooks)", config_name, len(ops) - 1)
    return max(len(ops) - 1, 0)
