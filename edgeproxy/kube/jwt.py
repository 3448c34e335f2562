"""Bearer tokens as the cache sees them: the JWT's parts and claims, its ServiceAccount subject, its hash identity.

A projected ServiceAccount token is a JWS (RFC 7515 compact form: header.payload.signature, base64url) whose claims
name the service account in `sub` ("system:serviceaccount:<namespace>:<name>", pkg/serviceaccount/claims.go) and in
`kubernetes.io.serviceaccount`. Decoding here is pure and proves nothing: whether a token is believed (the API server
accepted it, edgeproxy signed it, or the cluster's key signs it) is edgeproxy.identity's decision, the one place
that turns a token into a cache partition. Neighbours: request (Client, bearer_token), identity (the decision).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

SA_PREFIX = "system:serviceaccount:"
# The partition name of a believed ServiceAccount token: "sa:<namespace>:<name>". A token hash identity is 16 hex
# digits, so the two can never collide.
SA_IDENTITY_PREFIX = "sa:"
HASH_IDENTITY_LEN = 16
MAX_TOKEN = 16 << 10  # kube-apiserver's tokens are ~1 KB; anything far bigger is not worth decoding
# DNS-1123 subdomain (names) and label (namespaces): what a ServiceAccount subject may contain.
_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", re.ASCII)
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)


@dataclass(frozen=True, slots=True)
class Jwt:
    """A decoded (not verified) JWS compact token: its header and claims, the bytes the signature covers."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes

    @property
    def alg(self) -> str:
        return str(self.header.get("alg", ""))

    @property
    def kid(self) -> str:
        return str(self.header.get("kid", ""))

    @property
    def subject(self) -> str:
        sub = self.claims.get("sub")
        return sub if isinstance(sub, str) else ""

    @property
    def issuer(self) -> str:
        iss = self.claims.get("iss")
        return iss if isinstance(iss, str) else ""

    @property
    def audiences(self) -> tuple[str, ...]:
        """RFC 7519 §4.1.3: `aud` is one string or an array of them."""
        aud = self.claims.get("aud")
        if isinstance(aud, str):
            return (aud,)
        return tuple(a for a in aud if isinstance(a, str)) if isinstance(aud, list) else ()

    @property
    def expires(self) -> float | None:
        return _number(self.claims.get("exp"))

    @property
    def not_before(self) -> float | None:
        return _number(self.claims.get("nbf"))

    def fresh(self, now: float, leeway: float = 60.0) -> bool:
        """Within exp/nbf, with the API server's leeway (pkg/serviceaccount/claims.go allows 60 s of skew)."""
        exp, nbf = self.expires, self.not_before
        if exp is not None and now > exp + leeway:
            return False
        return nbf is None or now >= nbf - leeway


def decode(token: str) -> Jwt | None:
    """The parts of a JWS compact token, or None when `token` is not one (an opaque token, a legacy static one)."""
    if len(token) > MAX_TOKEN or token.count(".") != 2:
        return None
    head, payload, sig = token.split(".")
    try:
        header = json.loads(_b64decode(head))
        claims = json.loads(_b64decode(payload))
        signature = _b64decode(sig)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):  # RecursionError: "[[[[..." payloads
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return None
    return Jwt(header, claims, f"{head}.{payload}".encode(), signature)


def service_account(jwt: Jwt) -> tuple[str, str] | None:
    """(namespace, name) of a ServiceAccount token: `sub` is system:serviceaccount:<ns>:<name> with valid names,
    and the `kubernetes.io` claims (bound tokens) or the legacy `kubernetes.io/serviceaccount/*` claims, where
    present, agree with it. None for any other token."""
    sub = jwt.subject
    if not sub.startswith(SA_PREFIX):
        return None
    namespace, sep, name = sub[len(SA_PREFIX):].partition(":")
    if not sep or not _NAMESPACE.fullmatch(namespace) or not _NAME.fullmatch(name):
        return None
    k8s = jwt.claims.get("kubernetes.io")
    if isinstance(k8s, dict):
        sa = k8s.get("serviceaccount")
        if k8s.get("namespace", namespace) != namespace or (isinstance(sa, dict) and sa.get("name", name) != name):
            return None
    if jwt.claims.get("kubernetes.io/serviceaccount/namespace", namespace) != namespace:
        return None
    if jwt.claims.get("kubernetes.io/serviceaccount/service-account.name", name) != name:
        return None
    return namespace, name


def sa_identity(namespace: str, name: str) -> str:
    """The cache identity of a believed ServiceAccount token, the same for every token of that account."""
    return f"{SA_IDENTITY_PREFIX}{namespace}:{name}"


def hash_identity(token: str) -> str:
    """The cache identity of a token nothing vouches for: a sha256 prefix of the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()[:HASH_IDENTITY_LEN]


def token_digest(token: str) -> str:
    """The full sha256 of a token: how a remembered token is named on disk (the token itself never is)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _b64decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text, re.ASCII):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)
