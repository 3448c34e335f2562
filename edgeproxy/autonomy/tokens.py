"""ServiceAccount TokenRequests while offline: the API server's last answer while it is valid, then our own token.

kubelet POSTs `serviceaccounts/<sa>/token` for every pod it starts (projected token volumes); a failed request keeps
the pod from starting. Online, `remember()` keeps each answer per (namespace, service account, audiences, pod
binding) exactly as the server sent it, sealed at rest. Offline, `answer()` serves it again while it is valid, and
past its expiry mints a short-lived ES256 token the proxy signs itself: issuer `edgeproxy://<node>`, the pod binding
kept in the `kubernetes.io` claims as the API server shapes them. Nothing but this proxy can verify a minted token
(the API server does not trust our key); it keeps a pod starting and its volume refreshed until the link returns,
when kubelet's next refresh gets a real token again.

Boundary: no HTTP, no cache store; files under the cache directory only (signing key and sealed book, both 0600).
Neighbours: local (calls answer offline), record (calls remember with upstream answers), identity (asks vouch() whether
a token is one the proxy minted or saw the API server issue), kube.protobuf (wire).
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import datetime
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from edgeproxy.kube import errors, jwt, protobuf

log = logging.getLogger(__name__)

API_VERSION = "authentication.k8s.io/v1"
KIND = "TokenRequest"
JSON = "application/json"
PROTOBUF = "application/vnd.kubernetes.protobuf"
# The API server's default audience when a request names none (--api-audiences defaults to the issuer).
DEFAULT_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
# 600 s is the shortest lifetime the API server accepts (TokenRequest validation, expirationSeconds >= 600);
# kubelet refreshes at 80 % of it, so an offline pod gets a fresh minted token every 8 minutes.
MINTED_LIFETIME = 600
# A cached token with less than this left is not handed out again: kubelet would find it stale at once.
MIN_REMAINING = 60
MAX_ENTRIES = 20_000

SIGNING_KEY_FILE = "token-signing-key.pem"
SEAL_KEY_FILE = "token-seal.key"
BOOK_FILE = "tokens.sealed"


@dataclass(frozen=True, slots=True)
class Binding:
    """The object a token is bound to (spec.boundObjectRef): a Pod, a Secret or, since 1.32, a Node."""

    kind: str
    api_version: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class Ask:
    """What one TokenRequest asks for."""

    namespace: str
    service_account: str
    audiences: tuple[str, ...]
    expiration_seconds: int | None
    binding: Binding | None

    @property
    def key(self) -> str:
        """The cache key: one token per (namespace, service account, audiences, binding)."""
        b = self.binding
        parts = [self.namespace, self.service_account, ",".join(sorted(self.audiences))]
        parts += [b.kind, b.name, b.uid] if b else ["", "", ""]
        return "\x00".join(parts)


@dataclass(frozen=True, slots=True)
class Answer:
    """The HTTP answer to a TokenRequest: 201 with a TokenRequest body; `source` is "cached" or "minted"."""

    status: int
    content_type: str
    body: bytes
    source: str
    expires_at: float


# ---------------------------------------------------------------- reading requests and answers


def read_request(body: bytes, content_type: str, namespace: str, service_account: str) -> Ask:
    """The Ask in a TokenRequest body (JSON or protobuf); raises errors.InvalidRequest when it is not one."""
    try:
        if _is_protobuf(content_type):
            spec = _pb_spec(_pb_raw(body))
        else:
            obj = json.loads(body or b"{}")
            if not isinstance(obj, dict):
                raise errors.InvalidRequest("TokenRequest: body is not an object")
            spec = _json_spec(obj.get("spec") or {})
    except (ValueError, TypeError, AttributeError, RecursionError, errors.DecodeError) as e:
        raise errors.InvalidRequest(f"TokenRequest: {e}") from e
    audiences, expiration, binding = spec
    return Ask(namespace, service_account, tuple(audiences), expiration, binding)


def read_status(body: bytes, content_type: str) -> tuple[str, float] | None:
    """(token, expiry as epoch seconds) from an API server's TokenRequest answer, or None if it has none."""
    try:
        if _is_protobuf(content_type):
            for no, _, value in protobuf.iter_fields(_pb_raw(body)):
                if no == 3:
                    token, expires = "", 0.0
                    for f, _, v in protobuf.iter_fields(value):
                        if f == 1:
                            token = bytes(v).decode()
                        elif f == 2:
                            expires = _pb_time(v)
                    return (token, expires) if token and expires else None
            return None
        status = json.loads(body).get("status") or {}
        token, stamp = status.get("token"), status.get("expirationTimestamp")
        return (token, _parse_time(stamp)) if token and stamp else None
    except (ValueError, TypeError, AttributeError, errors.KubeError):
        return None


def claims_of(token: str) -> dict[str, Any] | None:
    """The claims of a JWT, not verified (we read the API server's own tokens for the SA uid and node)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(_b64decode(payload))
    except (IndexError, ValueError, RecursionError):
        return None
    return claims if isinstance(claims, dict) else None


# ---------------------------------------------------------------- building answers


def build_answer(
    ask: Ask, token: str, expires_at: float, audiences: tuple[str, ...], expiration_seconds: int, encoding: str,
    request_body: bytes | None = None, request_content_type: str = "",
) -> tuple[str, bytes]:
    """(content type, body) of a TokenRequest answer as the API server shapes it: the request with status set.

    The protobuf answer echoes the request's own message (metadata as sent) with spec and status filled in, as the
    server's handler does (it returns the decoded request with Status set); JSON is written from the fields.
    """
    if encoding == "protobuf":
        meta = b""
        if request_body is not None and _is_protobuf(request_content_type):
            for no, _, value in protobuf.iter_fields(_pb_raw(request_body)):
                if no == 1:
                    meta = bytes(value)
        if not meta:
            meta = protobuf.field_bytes(1, ask.service_account.encode())
            meta += protobuf.field_bytes(3, ask.namespace.encode())
        spec = b"".join(protobuf.field_bytes(1, a.encode()) for a in audiences)
        if ask.binding:
            b = ask.binding
            ref = b"".join(
                protobuf.field_bytes(no, s.encode())
                for no, s in ((1, b.kind), (2, b.api_version), (3, b.name), (4, b.uid))
                if s
            )
            spec += protobuf.field_bytes(3, ref)
        spec += protobuf.field_varint(4, expiration_seconds)
        secs = int(expires_at)
        stamp = protobuf.field_varint(1, secs)
        status = protobuf.field_bytes(1, token.encode()) + protobuf.field_bytes(2, stamp)
        raw = protobuf.field_bytes(1, meta) + protobuf.field_bytes(2, spec) + protobuf.field_bytes(3, status)
        return PROTOBUF, protobuf.wrap(API_VERSION, KIND, raw)
    spec: dict[str, Any] = {"audiences": list(audiences), "expirationSeconds": expiration_seconds}
    if ask.binding:
        b = ask.binding
        spec["boundObjectRef"] = {k: v for k, v in (("kind", b.kind), ("apiVersion", b.api_version),
                                                    ("name", b.name), ("uid", b.uid)) if v}
    obj = {
        "kind": KIND,
        "apiVersion": API_VERSION,
        "metadata": {"name": ask.service_account, "namespace": ask.namespace, "creationTimestamp": None},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": _format_time(expires_at)},
    }
    return JSON, json.dumps(obj, separators=(",", ":")).encode()


# ---------------------------------------------------------------- the signer


class Signer:
    """An ES256 (P-256) JWT signer whose key lives in a 0600 PEM file, created on first use."""

    __slots__ = ("_key", "issuer", "kid")

    def __init__(self, key: ec.EllipticCurvePrivateKey, issuer: str) -> None:
        self._key = key
        self.issuer = issuer
        der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = _b64encode(hashlib.sha256(der).digest())

    @classmethod
    def load_or_create(cls, path: Path, issuer: str) -> Signer:
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            key = ec.generate_private_key(ec.SECP256R1())
            pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
            try:
                _write_new(path, pem)
            except FileExistsError:  # another process made it first: use theirs
                pem = path.read_bytes()
        else:
            _tighten(path)
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{path}: not an EC private key")
        return cls(key, issuer)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": "ES256", "kid": self.kid, "typ": "JWT"}
        signing_input = _b64json(header) + "." + _b64json(claims)
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def verify(token: str, public_key: ec.EllipticCurvePublicKey) -> dict[str, Any] | None:
    """The claims of a token this proxy signed, or None when the signature does not hold."""
    try:
        head, payload, sig = token.split(".")
        raw = _b64decode(sig)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        public_key.verify(der, f"{head}.{payload}".encode(), ec.ECDSA(hashes.SHA256()))
        return json.loads(_b64decode(payload))
    except (ValueError, InvalidSignature, RecursionError):
        return None


def mint_claims(
    ask: Ask, *, issuer: str, node: str, now: float, lifetime: int, audiences: tuple[str, ...],
    known: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The claims of a minted token, shaped as the API server's (pkg/serviceaccount/claims.go).

    `known` is the `kubernetes.io` claim of an API server token for the same service account, when one was seen:
    it gives the service account's uid and the node's uid, which the proxy cannot know otherwise.
    """
    known = known or {}
    sa: dict[str, str] = {"name": ask.service_account}
    known_sa = known.get("serviceaccount") or {}
    if known_sa.get("name") == ask.service_account and known_sa.get("uid"):
        sa["uid"] = known_sa["uid"]
    k8s: dict[str, Any] = {"namespace": ask.namespace}
    b = ask.binding
    known_node = known.get("node") or {}
    if b and b.kind == "Node":
        k8s["node"] = {"name": b.name, "uid": b.uid}
    elif b:
        k8s[b.kind.lower()] = {"name": b.name, "uid": b.uid}
        if b.kind == "Pod" and node:  # since 1.30 a pod-bound token names the pod's node too
            k8s["node"] = {"name": node, "uid": known_node.get("uid", "")} if known_node.get("name") == node \
                else {"name": node}
    k8s["serviceaccount"] = sa
    iat = int(now)
    return {
        "aud": list(audiences),
        "exp": iat + lifetime,
        "iat": iat,
        "iss": issuer,
        "jti": str(uuid.uuid4()),
        "kubernetes.io": k8s,
        "nbf": iat,
        "sub": f"system:serviceaccount:{ask.namespace}:{ask.service_account}",
    }


@dataclass(frozen=True, slots=True)
class PodFacts:
    """What the node's cache says of the pod a TokenRequest is bound to."""

    node_name: str
    service_account: str
    uid: str


def node_refusal(ask: Ask, node: str | None, pod: PodFacts | None) -> tuple[int, str] | None:
    """Why the API server would not issue `ask` to this node, as (status code, message), or None when it would.
    Pure.

    NodeRestriction (plugin/pkg/admission/noderestriction) lets a node create TokenRequests only bound to a Pod, with
    the pod's uid, for a pod bound to that node; the TokenRequest storage adds that the service account must be the
    pod's. Offline, `pod` is what the node's own cache holds of that pod (None: not cached): unknown means 503 (the
    cache cannot tell), a known refusal is the API server's 403/400.
    """
    if not node:
        return 503, "the node's name is not known (no system:node:<name> client certificate, no --node-name)"
    b = ask.binding
    if b is None:
        return 403, "node requested token not bound to a pod"
    if b.kind != "Pod":
        return 403, f"node requested token bound to a {b.kind}"
    if not b.uid:
        return 403, "node requested token with a pod binding without a uid"
    if pod is None:
        return 503, f"pod {ask.namespace}/{b.name} is not in the node's cache"
    if pod.uid != b.uid:
        return 403, (f"the UID in the bound object reference ({b.uid}) does not match the UID in record. "
                     "The object might have been deleted and then recreated")
    if pod.node_name != node:
        return 403, "node requested token bound to a pod scheduled on a different node"
    if pod.service_account != ask.service_account:
        return 400, (f"cannot bind token for serviceaccount {ask.service_account!r} to pod {b.name!r}: "
                     f"the pod uses serviceaccount {pod.service_account!r}")
    return None


# ---------------------------------------------------------------- the book of answers


class TokenBook:
    """Every TokenRequest answer seen, sealed on disk; the offline answer to a TokenRequest."""

    __slots__ = ("_aead", "_clock", "_entries", "_issued", "_path", "audiences", "lifetime", "node", "signer")

    def __init__(
        self, directory: Path | str, *, node: str, lifetime: int = MINTED_LIFETIME,
        audiences: tuple[str, ...] = DEFAULT_AUDIENCES, clock: Callable[[], float] = time.time,
    ) -> None:
        directory = Path(directory)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.node = node
        self.lifetime = lifetime
        self.audiences = audiences
        self._clock = clock
        self.signer = Signer.load_or_create(directory / SIGNING_KEY_FILE, f"edgeproxy://{node}")
        self._aead = AESGCM(_seal_key(directory / SEAL_KEY_FILE))
        self._path = directory / BOOK_FILE
        self._entries: dict[str, dict[str, Any]] = self._load()
        # sha256 of each API server token in the book -> its expiry: vouch() reads it from the event loop while
        # remember() (the recorder's thread) replaces it whole, never mutates it in place
        self._issued: dict[str, float] = self._index()

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, ask: Ask, body: bytes, content_type: str) -> bool:
        """Keep an API server's answer (201 body) to `ask`; False when the body holds no token."""
        status = read_status(body, content_type)
        if status is None:
            return False
        token, expires = status
        claims = claims_of(token) or {}
        self._entries[ask.key] = {
            "body": body,
            "ct": content_type.split(";")[0].strip(),
            "exp": expires,
            "aud": list(_audiences_of(body, content_type) or ask.audiences),
            "k8s": claims.get("kubernetes.io") if isinstance(claims.get("kubernetes.io"), dict) else {},
            "ns": ask.namespace,
            "sa": ask.service_account,
            "bind": _binding_key(ask),
            "seen": self._clock(),
        }
        self._save()
        now = self._clock()
        issued = {d: exp for d, exp in self._issued.items() if exp > now}
        issued[jwt.token_digest(token)] = expires
        self._issued = issued
        return True

    def vouch(self, token: str) -> bool:
        """True when `token`'s claims are known to be true: this proxy signed it (a minted token), or the API server
        issued it in a TokenRequest answer the proxy relayed (and remembered). edgeproxy.identity asks this offline,
        where no API server can be asked; expiry is the caller's to check."""
        if jwt.token_digest(token) in self._issued:
            return True
        return verify(token, self.signer.public_key()) is not None

    def _index(self) -> dict[str, float]:
        out = {}
        for entry in self._entries.values():
            status = read_status(entry["body"], entry["ct"])
            if status is not None:
                out[jwt.token_digest(status[0])] = status[1]
        return out

    def answer(self, ask: Ask, encoding: str, request_body: bytes | None = None,
               request_content_type: str = "") -> Answer:
        """The offline answer: the cached token while it has MIN_REMAINING seconds left, else a minted one."""
        now = self._clock()
        entry = self._find(ask)
        if entry and entry["exp"] - now >= MIN_REMAINING:
            if (entry["ct"] == PROTOBUF) == (encoding == "protobuf"):
                return Answer(201, entry["ct"], entry["body"], "cached", entry["exp"])
            token, _ = read_status(entry["body"], entry["ct"]) or ("", 0.0)
            expiration = ask.expiration_seconds or int(entry["exp"] - now)
            ct, body = build_answer(ask, token, entry["exp"], tuple(entry["aud"]), expiration, encoding,
                                    request_body, request_content_type)
            return Answer(201, ct, body, "cached", entry["exp"])
        known = (entry or {}).get("k8s") or self._known_claims(ask)
        audiences = ask.audiences or (tuple(entry["aud"]) if entry else self.audiences)
        lifetime = min(self.lifetime, ask.expiration_seconds or self.lifetime)
        claims = mint_claims(ask, issuer=self.signer.issuer, node=self.node, now=now, lifetime=lifetime,
                             audiences=audiences, known=known)
        token = self.signer.sign(claims)
        ct, body = build_answer(ask, token, claims["exp"], audiences, lifetime, encoding,
                                request_body, request_content_type)
        return Answer(201, ct, body, "minted", float(claims["exp"]))

    def _find(self, ask: Ask) -> dict[str, Any] | None:
        """The remembered answer to `ask`. A request naming no audience got the API server's default ones, which
        the remembered answer (recorded from the response alone) lists: match it on the binding, preferring the
        configured default audiences, then the latest."""
        entry = self._entries.get(ask.key)
        if entry is not None or ask.audiences:
            return entry
        bind = _binding_key(ask)
        same = [e for e in self._entries.values()
                if e["ns"] == ask.namespace and e["sa"] == ask.service_account and e.get("bind") == bind]
        if not same:
            return None
        preferred = [e for e in same if tuple(e["aud"]) == tuple(self.audiences)]
        return max(preferred or same, key=lambda e: e["seen"])

    def _known_claims(self, ask: Ask) -> dict[str, Any]:
        """The kubernetes.io claim of any API server token seen for this service account (for its uid, node uid)."""
        for entry in self._entries.values():
            if entry["ns"] == ask.namespace and entry["sa"] == ask.service_account and entry["k8s"]:
                return entry["k8s"]
        return {}

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            sealed = self._path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            plain = self._aead.decrypt(sealed[:12], sealed[12:], BOOK_FILE.encode())
            entries = msgpack.unpackb(plain, raw=False)
        except (InvalidTag, ValueError, msgpack.UnpackException) as e:
            log.warning("token book %s unreadable (%s); starting empty", self._path, e)
            return {}
        return entries if isinstance(entries, dict) else {}

    def _save(self) -> None:
        """Rewrite the sealed book atomically (temp file, fsync, rename); drop long-expired and oldest entries."""
        now = self._clock()
        stale = [k for k, e in self._entries.items() if e["exp"] < now - 86400]
        for k in stale:
            del self._entries[k]
        if len(self._entries) > MAX_ENTRIES:
            for k, _ in sorted(self._entries.items(), key=lambda kv: kv[1]["seen"])[: len(self._entries) - MAX_ENTRIES]:
                del self._entries[k]
        nonce = os.urandom(12)
        sealed = nonce + self._aead.encrypt(nonce, msgpack.packb(self._entries, use_bin_type=True), BOOK_FILE.encode())
        tmp = self._path.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        _write_new(tmp, sealed)
        os.replace(tmp, self._path)
        _fsync_dir(self._path.parent)


# ---------------------------------------------------------------- wire details


def _binding_key(ask: Ask) -> list[str]:
    b = ask.binding
    return [b.kind, b.name, b.uid] if b else ["", "", ""]


def _is_protobuf(content_type: str) -> bool:
    return content_type.split(";")[0].strip().lower() == PROTOBUF


def _pb_raw(body: bytes) -> memoryview:
    """The object bytes inside a "k8s\\0" + runtime.Unknown body (Unknown.raw = field 2)."""
    return memoryview(protobuf.unwrap(body).raw)


def _pb_spec(raw: memoryview) -> tuple[list[str], int | None, Binding | None]:
    audiences: list[str] = []
    expiration: int | None = None
    binding: Binding | None = None
    for no, _, value in protobuf.iter_fields(raw):
        if no != 2:
            continue
        for f, _, v in protobuf.iter_fields(value):
            if f == 1:
                audiences.append(bytes(v).decode())
            elif f == 4:
                expiration = int(v)  # type: ignore[arg-type]
            elif f == 3:
                ref = {g: bytes(x).decode() for g, _, x in protobuf.iter_fields(v)}
                binding = Binding(ref.get(1, ""), ref.get(2, ""), ref.get(3, ""), ref.get(4, ""))
    return audiences, expiration, binding


def _json_spec(spec: dict[str, Any]) -> tuple[list[str], int | None, Binding | None]:
    audiences = [str(a) for a in spec.get("audiences") or []]
    expiration = spec.get("expirationSeconds")
    ref = spec.get("boundObjectRef")
    binding = None
    if isinstance(ref, dict):
        binding = Binding(ref.get("kind", ""), ref.get("apiVersion", ""), ref.get("name", ""), ref.get("uid", ""))
    return audiences, int(expiration) if expiration is not None else None, binding


def _audiences_of(body: bytes, content_type: str) -> list[str]:
    with contextlib.suppress(ValueError, TypeError, AttributeError, errors.KubeError):
        if _is_protobuf(content_type):
            return _pb_spec(_pb_raw(body))[0]
        return _json_spec(json.loads(body).get("spec") or {})[0]
    return []


def _pb_time(buf: bytes | memoryview) -> float:
    seconds = nanos = 0
    for f, _, v in protobuf.iter_fields(buf):
        if f == 1:
            seconds = int(v)  # type: ignore[arg-type]
        elif f == 2:
            nanos = int(v)  # type: ignore[arg-type]
    return seconds + nanos / 1e9


def _parse_time(stamp: str) -> float:
    stamp = stamp.rstrip("Z").split(".")[0]
    return float(calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")))


def _format_time(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(int(epoch), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64json(obj: dict[str, Any]) -> str:
    return _b64encode(json.dumps(obj, separators=(",", ":")).encode())


def _seal_key(path: Path) -> bytes:
    try:
        key = path.read_bytes()
    except FileNotFoundError:
        key = AESGCM.generate_key(bit_length=256)
        try:
            _write_new(path, key)
        except FileExistsError:
            key = path.read_bytes()
    else:
        _tighten(path)
    if len(key) != 32:
        raise ValueError(f"{path}: not a 256-bit key")
    return key


def _write_new(path: Path, data: bytes) -> None:
    """Create `path` 0600 (failing if it exists), write `data`, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _tighten(path: Path) -> None:
    if path.stat().st_mode & 0o077:
        log.warning("%s was readable by others; setting it to 0600", path)
        os.chmod(path, 0o600)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
