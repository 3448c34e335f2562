"""Whose cache a token-bearing request reads and fills: the one decision from bearer token to cache partition.

A request with a bearer token is cached under the token's own hash (kube.request's Client), so nobody reads what
another identity cached. ServiceAccount tokens rotate, though (kubelet refreshes projected tokens at 80 % of their
lifetime, offline edgeproxy mints its own): keyed by the token, kube-proxy and CoreDNS would find none of their views
after a rotation or a restart. So a ServiceAccount token the proxy has reason to believe is cached under its subject,
"sa:<namespace>:<name>", shared by every token of that account:

- online, the API server accepted it: a 2xx answer to a request carrying it (`answered()`); remembered by the token's
  sha256 (never the token) until the token expires, in a small 0600 file under the cache directory;
- the token book vouches for it: edgeproxy minted it (its signature verifies) or it relayed the API server's
  TokenRequest answer that issued it (tokens.TokenBook.vouch);
- its signature verifies against the cluster's service-account keys (`/openid/v1/jwks`, fetched upstream with an
  accepted token's own credentials while online, kept on disk) and its issuer and an audience are those of tokens
  the API server accepted: a token kubelet got without the proxy and nobody used online before the link went.

Anything else (an opaque token, an expired one, a JWT nothing vouches for, a forged one naming another account) keeps
its hash partition: it sees nothing another identity cached. A 401 for a remembered token forgets it.

Boundary: no HTTP and no cache store; proxy.py calls `resolve()` on every request and `answered()` on every upstream
status, record.py and local.py just use `info.client.key`. Neighbours: kube.jwt (decoding), kube.request (Client),
tokens (the book that vouches for minted and relayed tokens).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from edgeproxy import tasks
from edgeproxy.kube import jwt
from edgeproxy.kube import request as kube_request

log = logging.getLogger(__name__)

FILE = "identities.json"
MAX_REMEMBERED = 10_000  # accepted tokens kept: a few per ServiceAccount on a node
NO_EXPIRY_KEEP = 7 * 86400  # a token without `exp` (a legacy Secret token) is believed this long after its last 2xx
MAX_MEMO = 4096
MAX_MEMO_TOKEN = 8 << 10  # longer tokens are decided each time, never kept
# The API server's default audience (--api-audiences defaults to its issuer): tokens for it are the API server's.
API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
JWKS_PATH = "/openid/v1/jwks"
# kube-apiserver serves the key set only as application/jwk-set+json: asking for application/json alone gets 406.
JWKS_ACCEPT = "application/jwk-set+json, application/json"
JWKS_REFRESH = 3600.0  # the cluster's keys are fetched again at most this often (key rotation is rare)
MAX_JWKS = 64 << 10
# JWS algorithms kube-apiserver signs service-account tokens with (RS256 or ES256/384/512, by the key's type).
_RSA_HASHES = {"RS256": hashes.SHA256, "RS384": hashes.SHA384, "RS512": hashes.SHA512}
_EC_ALGS = {"ES256": (hashes.SHA256, "secp256r1"), "ES384": (hashes.SHA384, "secp384r1"),
            "ES512": (hashes.SHA512, "secp521r1")}
_CURVES = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1, "P-521": ec.SECP521R1}


class Identities:
    """The believed tokens and the decision. One per process; `resolve`/`answered` run on the event loop."""

    __slots__ = ("_accepted", "_clock", "_dirty", "_issuers", "_jwks", "_jwks_asked", "_keys", "_memo", "_path",
                 "_saving", "upstream", "vouch")

    def __init__(self, directory: Path | str | None, *, vouch: Callable[[str], bool] | None = None,
                 upstream: Any = None, clock: Callable[[], float] = time.time) -> None:
        self._path = Path(directory) / FILE if directory is not None else None
        self.vouch = vouch  # tokens.TokenBook.vouch: minted by us, or issued by the API server through us
        self.upstream = upstream  # upstream.Upstream, to fetch the cluster's keys with an accepted token
        self._clock = clock
        # token sha256 -> (subject, believed until, until is the token's exp): tokens the API server accepted
        self._accepted: dict[str, tuple[str, float, bool]] = {}
        self._issuers: dict[str, set[str]] = {}  # issuer -> audiences of tokens the API server accepted
        self._jwks: dict[str, Any] = {}  # the cluster's JWK set as fetched
        self._keys: dict[str, Any] = {}  # kid -> public key, from _jwks
        self._jwks_asked = float("-inf")
        self._load()
        self._memo: dict[str, tuple[str, float]] = {}  # token -> (identity, decided until)
        self._dirty = False
        self._saving: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._accepted)

    def state(self) -> dict[str, object]:
        """For /debug/state: how many tokens are believed as accepted, the issuers seen, the keys held (no token)."""
        return {"accepted_tokens": len(self._accepted), "issuers": sorted(self._issuers),
                "cluster_keys": len(self._keys)}

    @property
    def cluster_keys(self) -> int:
        """How many of the cluster's service-account keys are held (from /openid/v1/jwks)."""
        return len(self._keys)

    # ---------------------------------------------------------------- the decision

    def identity(self, token: str) -> str:
        """The cache identity of `token`: "sa:<ns>:<name>" when believed, else its hash."""
        now = self._clock()
        hit = self._memo.get(token)
        if hit is not None and now < hit[1]:
            return hit[0]
        ident, until = self._decide(token, now)
        if len(token) > MAX_MEMO_TOKEN:
            return ident  # not kept: 4,096 tokens of 1 MB each were 4 GB (issue 14 D3)
        if len(self._memo) >= MAX_MEMO:
            self._memo.clear()
        self._memo[token] = (ident, until)
        return ident

    def _decide(self, token: str, now: float) -> tuple[str, float]:
        hashed = jwt.hash_identity(token)
        parsed = jwt.decode(token)
        sa = jwt.service_account(parsed) if parsed is not None else None
        if parsed is None or sa is None:
            return hashed, float("inf")
        if not parsed.fresh(now):
            return hashed, now + 60.0  # expired (or not yet valid): nobody's partition but its own
        until = parsed.expires if parsed.expires is not None else now + NO_EXPIRY_KEEP
        entry = self._accepted.get(jwt.token_digest(token))
        if entry is not None and entry[0] == parsed.subject and now < entry[1]:
            return jwt.sa_identity(*sa), min(until, entry[1])
        if self.vouch is not None and self._for_the_api_server(parsed) and self.vouch(token):
            return jwt.sa_identity(*sa), until
        if self._cluster_signed(parsed):
            return jwt.sa_identity(*sa), until
        # Not believed now; a 2xx later (answered) or a new book entry may change that: decide again in a while.
        return hashed, now + 30.0

    def resolve(self, info: kube_request.RequestInfo, headers: Mapping[str, str]) -> kube_request.RequestInfo:
        """`info` with its client's identity decided (unchanged when the request carries no bearer token)."""
        if not info.client.identity:
            return info
        token = kube_request.bearer_token(headers)
        if not token:
            return info
        ident = self.identity(token)
        if ident == info.client.identity:
            return info
        return dataclasses.replace(info, client=kube_request.Client(info.client.component, ident))

    def answered(self, info: kube_request.RequestInfo, headers: Mapping[str, str],
                 status: int) -> kube_request.RequestInfo:
        """What the API server's answer to a request carrying a token says about the token, and `info` with the
        identity its answer is recorded under. A 2xx means the API server authenticated the token (a bad token
        is 401 even where anonymous requests are allowed), so its ServiceAccount subject is true: remembered, and
        this very answer is recorded under the subject. A 401 forgets it."""
        token = kube_request.bearer_token(headers) if info.client.identity else ""
        if not token:
            return info
        if 200 <= status < 300:
            if self.accepted(token) and self.upstream is not None and self.jwks_due():
                tasks.spawn(self.fetch_jwks(self.upstream, f"Bearer {token}"), name="identity-jwks")
        elif status == 401:
            self.forget(token)
        return self.resolve(info, headers)

    def accepted(self, token: str) -> bool:
        """Remember that the API server accepted `token`; True when it is a ServiceAccount token (now believed)."""
        now = self._clock()
        digest = jwt.token_digest(token)
        known = self._accepted.get(digest)
        if known is not None and now < known[1] - (0 if known[2] else 86400):
            return True  # the common case, every answer to a steady client: nothing to decode or write
        parsed = jwt.decode(token)
        if parsed is None or jwt.service_account(parsed) is None or not parsed.fresh(now):
            return False
        exp = parsed.expires
        until = exp if exp is not None else now + NO_EXPIRY_KEEP
        audiences = self._issuers.setdefault(parsed.issuer, set())
        if known is None or known[0] != parsed.subject or until - known[1] > 86400 \
                or not audiences.issuperset(parsed.audiences):
            self._accepted[digest] = (parsed.subject, until, exp is not None)
            if not audiences.issuperset(parsed.audiences):
                audiences.update(parsed.audiences)
                self._memo.clear()  # tokens signed by the cluster's keys for this issuer may be believed now
            self._changed()
        self._memo.pop(token, None)
        return True

    def forget(self, token: str) -> None:
        if self._accepted.pop(jwt.token_digest(token), None) is not None:
            self._changed()
        self._memo.pop(token, None)

    # ---------------------------------------------------------------- the cluster's keys

    def _for_the_api_server(self, parsed: jwt.Jwt) -> bool:
        """An audience the API server accepts: its default one, or one of a token it accepted. A token minted or
        relayed for another audience (a vault sidecar's) is refused by the API server online, so offline it must not
        read the account's cache either (issue 14 S1: a minted token never widens what its bearer could read)."""
        accepted = set(API_AUDIENCES).union(*self._issuers.values())
        return bool(set(parsed.audiences) & accepted)

    def _cluster_signed(self, parsed: jwt.Jwt) -> bool:
        """Signed by one of the cluster's service-account keys, for an issuer and an audience the API server was
        seen to accept (a token for another audience, e.g. a vault one, is not the API server's to accept)."""
        if not self._keys or not set(parsed.audiences) & self._issuers.get(parsed.issuer, set()):
            return False
        keys = [self._keys[parsed.kid]] if parsed.kid in self._keys else ([] if parsed.kid else self._keys.values())
        return any(verify_signature(parsed, key) for key in keys)

    def jwks_due(self) -> bool:
        """Whether to fetch the cluster's keys now (once an hour at most); True claims the fetch."""
        now = self._clock()
        if now - self._jwks_asked < JWKS_REFRESH:
            return False
        self._jwks_asked = now
        return True

    async def fetch_jwks(self, up: Any, authorization: str) -> None:
        """GET /openid/v1/jwks upstream with a caller's accepted credentials (the default RBAC lets every service
        account read it, system:service-account-issuer-discovery; a node may not). Failures are only logged."""
        try:
            _, resp = await up.send("GET", JWKS_PATH, {"Authorization": authorization, "Accept": JWKS_ACCEPT})
            try:
                body = b""
                while len(body) <= MAX_JWKS and (chunk := await resp.read()):
                    body += chunk
                status = resp.status
            finally:
                resp.close()
        except Exception as e:  # the link may be gone: the keys already held stay
            log.info("cluster service-account keys not fetched: %s", e)
            return
        if status != 200 or not self.set_jwks(body):
            log.info("cluster service-account keys not taken: HTTP %s", status)

    def set_jwks(self, body: bytes) -> bool:
        """Take a JWK set (the body of /openid/v1/jwks); False when it holds no usable key."""
        try:
            doc = json.loads(body)
        except ValueError:
            return False
        keys = jwks_keys(doc)
        if not keys:
            return False
        if doc != self._jwks:
            self._jwks, self._keys = doc, keys
            self._memo.clear()  # tokens not believed so far may be now
            self._changed()
        return True

    # ---------------------------------------------------------------- the file

    def _changed(self) -> None:
        self._dirty = True
        if self._path is None or (self._saving is not None and not self._saving.done()):
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        self._saving = tasks.spawn(self._save_later(), name="identities-save")

    async def _save_later(self) -> None:
        while self._dirty:
            self._dirty = False
            doc = self._doc()
            await asyncio.to_thread(self._write, doc)

    def save(self) -> None:
        """Write the remembered tokens now (close() and tests; the event loop saves in a thread)."""
        if self._path is not None:
            self._dirty = False
            self._write(self._doc())

    def close(self) -> None:
        if self._dirty:
            self.save()

    def _doc(self) -> bytes:
        now = self._clock()
        live = sorted(((d, e) for d, e in self._accepted.items() if e[1] > now), key=lambda de: -de[1][1])
        if len(live) < len(self._accepted) or len(live) > MAX_REMEMBERED:
            live = live[:MAX_REMEMBERED]  # the longest-lived kept
            self._accepted = dict(live)
        return json.dumps({"version": 1, "accepted": {d: list(e) for d, e in live},
                           "issuers": {i: sorted(a) for i, a in self._issuers.items()},
                           "jwks": self._jwks}).encode()

    def _write(self, data: bytes) -> None:
        assert self._path is not None
        self._path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = self._path.with_suffix(f".{threading.get_ident()}.tmp")  # close() may write while a save thread does
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)

    def _load(self) -> None:
        if self._path is None:
            return
        try:
            doc: Any = json.loads(self._path.read_bytes())
            now = self._clock()
            self._accepted = {str(d): (str(v[0]), float(v[1]), bool(v[2])) for d, v in doc["accepted"].items()
                              if float(v[1]) > now}
            self._issuers = {str(i): {str(a) for a in auds} for i, auds in (doc.get("issuers") or {}).items()}
            jwks = doc.get("jwks") or {}
            self._jwks, self._keys = jwks, jwks_keys(jwks)
        except FileNotFoundError:
            return
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
            self._accepted, self._issuers, self._jwks, self._keys = {}, {}, {}, {}
            log.warning("%s unreadable (%s): no token is believed until the API server accepts it again",
                        self._path, e)


def jwks_keys(doc: Any) -> dict[str, Any]:
    """kid -> public key for the RSA and EC signing keys of a JWK set (RFC 7517/7518); others are skipped."""
    out: dict[str, Any] = {}
    for k in (doc.get("keys") if isinstance(doc, dict) else None) or []:
        if not isinstance(k, dict) or k.get("use", "sig") != "sig":
            continue
        try:
            if k.get("kty") == "RSA":
                n, e = (int.from_bytes(_b64(k[f]), "big") for f in ("n", "e"))
                key: Any = rsa.RSAPublicNumbers(e, n).public_key()
            elif k.get("kty") == "EC" and k.get("crv") in _CURVES:
                x, y = (int.from_bytes(_b64(k[f]), "big") for f in ("x", "y"))
                key = ec.EllipticCurvePublicNumbers(x, y, _CURVES[k["crv"]]()).public_key()
            else:
                continue
        except (KeyError, TypeError, ValueError, UnsupportedAlgorithm):
            continue
        out[str(k.get("kid", ""))] = key
    return out


def verify_signature(parsed: jwt.Jwt, key: Any) -> bool:
    """RFC 7518 §3: RS* is RSASSA-PKCS1-v1_5, ES* is ECDSA with r||s; the algorithm must fit the key's type
    (and curve), so a token cannot choose how it is checked."""
    try:
        if parsed.alg in _RSA_HASHES and isinstance(key, rsa.RSAPublicKey):
            key.verify(parsed.signature, parsed.signing_input, padding.PKCS1v15(), _RSA_HASHES[parsed.alg]())
            return True
        if parsed.alg in _EC_ALGS and isinstance(key, ec.EllipticCurvePublicKey):
            digest, curve = _EC_ALGS[parsed.alg]
            size = (key.curve.key_size + 7) // 8
            if key.curve.name != curve or len(parsed.signature) != 2 * size:
                return False
            r = int.from_bytes(parsed.signature[:size], "big")
            s = int.from_bytes(parsed.signature[size:], "big")
            key.verify(encode_dss_signature(r, s), parsed.signing_input, ec.ECDSA(digest()))
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
