"""identity.Identities: which token-bearing requests share their ServiceAccount's cache partition."""

import base64
import dataclasses
import json
import os

from edgeproxy import identity
from edgeproxy.autonomy import tokens
from edgeproxy.kube import jwt
from edgeproxy.kube import request as kube_request

NOW = 1_800_000_000.0
SUB = "system:serviceaccount:kube-system:kube-proxy"
SA_KEY = "kube-proxy@sa:kube-system:kube-proxy"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def sa_token(n: int, *, exp: float | None = NOW + 3600, sub: str = SUB) -> str:
    """A token shaped as the simulator's (and the API server's) TokenRequest tokens; `n` makes each one distinct."""
    claims = {"aud": ["https://kubernetes.default.svc.cluster.local"], "iat": int(NOW), "nbf": int(NOW),
              "iss": "https://kubernetes.default.svc.cluster.local", "sub": sub, "jti": str(n)}
    if exp is not None:
        claims["exp"] = int(exp)
    return ".".join((b64(b'{"alg":"RS256","kid":"k"}'), b64(json.dumps(claims).encode()), b64(os.urandom(256))))


def headers(token: str) -> dict[str, str]:
    return {"User-Agent": "kube-proxy/v1.32.0 (linux/amd64)", "Authorization": f"Bearer {token}"}


def info(token: str) -> kube_request.RequestInfo:
    return kube_request.parse("GET", "/api/v1/services", "", headers(token))


def key(ids: identity.Identities, token: str) -> str:
    return ids.resolve(info(token), headers(token)).client.key


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def test_a_token_the_api_server_accepted_is_cached_under_its_subject(tmp_path):
    ids = identity.Identities(tmp_path, clock=Clock())
    a, b = sa_token(1), sa_token(2)
    assert key(ids, a) == "kube-proxy@" + jwt.hash_identity(a)  # not believed yet: its own partition
    # the answer that proves it is recorded under the subject already
    assert ids.answered(info(a), headers(a), 200).client.key == SA_KEY
    assert key(ids, a) == SA_KEY
    assert key(ids, b) == "kube-proxy@" + jwt.hash_identity(b)
    assert ids.answered(info(b), headers(b), 403).client.key != SA_KEY  # authenticated, yet proves nothing here
    ids.answered(info(b), headers(b), 201)
    assert key(ids, b) == SA_KEY


def test_remembered_across_restarts_by_digest_only_and_expiring_with_the_token(tmp_path):
    clock = Clock()
    ids = identity.Identities(tmp_path, clock=clock)
    a, short = sa_token(1), sa_token(2, exp=NOW + 600)
    ids.answered(info(a), headers(a), 200)
    ids.answered(info(short), headers(short), 200)
    ids.close()
    path = tmp_path / identity.FILE
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    text = path.read_text()
    assert a not in text and jwt.token_digest(a) in text and SUB in text  # the token itself is never written
    clock.now = NOW + 1200  # `short` expired meanwhile
    again = identity.Identities(tmp_path, clock=clock)
    assert len(again) == 1
    assert key(again, a) == SA_KEY
    assert key(again, short) == "kube-proxy@" + jwt.hash_identity(short)
    clock.now = NOW + 3600 + 61
    assert key(again, a) == "kube-proxy@" + jwt.hash_identity(a)  # expired: the memo does not outlive it


def test_a_forged_token_naming_an_accepted_subject_keeps_its_own_partition(tmp_path):
    ids = identity.Identities(tmp_path, clock=Clock())
    a = sa_token(1)
    ids.answered(info(a), headers(a), 200)
    head, payload, _ = a.split(".")
    forged = f"{head}.{payload}.{b64(b'x' * 256)}"  # A's claims, another signature
    assert key(ids, forged) == "kube-proxy@" + jwt.hash_identity(forged)
    other = sa_token(3)  # same subject, never shown to the API server
    assert key(ids, other) == "kube-proxy@" + jwt.hash_identity(other)
    ids.answered(info(forged), headers(forged), 401)
    assert key(ids, a) == SA_KEY  # a rejected forgery does not make the real token forgotten


def test_a_401_forgets_a_token(tmp_path):
    ids = identity.Identities(tmp_path, clock=Clock())
    a = sa_token(1)
    ids.answered(info(a), headers(a), 200)
    assert ids.answered(info(a), headers(a), 401).client.key == "kube-proxy@" + jwt.hash_identity(a)
    assert key(ids, a) == "kube-proxy@" + jwt.hash_identity(a) and len(ids) == 0


def test_what_never_becomes_a_subject_partition(tmp_path):
    ids = identity.Identities(tmp_path, clock=Clock())
    for t in ("pod-sa-token", sa_token(1, sub="system:node:edge-1"), sa_token(2, sub="alice"),
              sa_token(3, exp=NOW - 3600)):
        assert ids.answered(info(t), headers(t), 200).client.key == "kube-proxy@" + jwt.hash_identity(t)
    assert len(ids) == 0
    plain = kube_request.parse("GET", "/api/v1/services", "", {"User-Agent": "kubelet/1.32"})
    assert ids.resolve(plain, {}) is plain and ids.answered(plain, {}, 200) is plain  # the node: no token


def test_the_token_book_vouches_for_minted_and_relayed_tokens(tmp_path):
    book = tokens.TokenBook(tmp_path / "tokens", node="edge-1", clock=Clock())
    ids = identity.Identities(tmp_path, vouch=book.vouch, clock=Clock())
    ask = tokens.Ask("kube-system", "kube-proxy", (), 3600, tokens.Binding("Pod", "v1", "kube-proxy-1", "u1"))
    minted = json.loads(book.answer(ask, "json").body)["status"]["token"]
    assert key(ids, minted) == SA_KEY
    # an API server's TokenRequest answer the proxy relayed (record.py hands it to the book)
    relayed = sa_token(4)
    body = json.dumps({"kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1", "spec": {},
                       "status": {"token": relayed, "expirationTimestamp": "2027-01-15T08:00:00Z"}}).encode()
    ask2 = tokens.Ask("kube-system", "kube-proxy", (), 3600, tokens.Binding("Pod", "v1", "kube-proxy-2", "u2"))
    assert key(ids, relayed) != SA_KEY
    assert book.remember(ask2, body, "application/json")
    reopened = tokens.TokenBook(tmp_path / "tokens", node="edge-1", clock=Clock())
    ids2 = identity.Identities(tmp_path, vouch=reopened.vouch, clock=Clock())
    assert key(ids2, relayed) == SA_KEY  # the book on disk still vouches after a restart
    # signed by another key: nothing vouches
    stranger = tokens.Signer.load_or_create(tmp_path / "other.pem", "edgeproxy://elsewhere")
    payload = minted.split(".")[1]
    impostor = stranger.sign(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
    assert key(ids, impostor) == "kube-proxy@" + jwt.hash_identity(impostor)


def test_a_vouched_token_for_another_audience_reads_nothing_the_account_cached(tmp_path):
    """Issue 14 S1: a token the proxy minted (or relayed) for a vault sidecar is refused by the API server online;
    offline it must not read the service account's cache either."""
    book = tokens.TokenBook(tmp_path / "tokens", node="edge-1", clock=Clock())
    ids = identity.Identities(tmp_path, vouch=book.vouch, clock=Clock())
    ask = tokens.Ask("kube-system", "kube-proxy", ("vault",), 3600, tokens.Binding("Pod", "v1", "kube-proxy-1", "u1"))
    vault = json.loads(book.answer(ask, "json").body)["status"]["token"]
    assert key(ids, vault) == "kube-proxy@" + jwt.hash_identity(vault)
    both = dataclasses.replace(ask, audiences=("vault", "https://kubernetes.default.svc.cluster.local"))
    assert key(ids, json.loads(book.answer(both, "json").body)["status"]["token"]) == SA_KEY


def test_an_unreadable_file_believes_nothing(tmp_path):
    (tmp_path / identity.FILE).write_text("{not json")
    ids = identity.Identities(tmp_path)
    assert len(ids) == 0


def test_a_token_without_expiry_is_believed_a_week_past_its_last_acceptance(tmp_path):
    clock = Clock()
    ids = identity.Identities(tmp_path, clock=clock)
    legacy = sa_token(1, exp=None)  # a Secret-based token: no exp
    ids.answered(info(legacy), headers(legacy), 200)
    clock.now += identity.NO_EXPIRY_KEEP - 3600
    ids.answered(info(legacy), headers(legacy), 200)  # accepted again: believed a week from now
    clock.now += 7200
    assert key(ids, legacy) == SA_KEY
    clock.now += identity.NO_EXPIRY_KEEP
    assert key(ids, legacy) == "kube-proxy@" + jwt.hash_identity(legacy)


def _rsa_jwks(key, kid: str = "k") -> dict:
    n = key.public_key().public_numbers()
    as_b64 = lambda i: b64(i.to_bytes((i.bit_length() + 7) // 8, "big"))  # noqa: E731
    return {"keys": [{"use": "sig", "kty": "RSA", "kid": kid, "alg": "RS256", "n": as_b64(n.n), "e": as_b64(n.e)}]}


def _rs256(key, claims: dict, header: dict | None = None) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = b64(json.dumps(header or {"alg": "RS256", "kid": "k"}).encode()) + "." + b64(
        json.dumps(claims).encode())
    return signing_input + "." + b64(key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()))


def test_a_token_signed_by_the_cluster_key_for_an_accepted_issuer_and_audience(tmp_path):
    from cryptography.hazmat.primitives.asymmetric import rsa

    cluster, other = (rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))
    clock = Clock()
    ids = identity.Identities(tmp_path, clock=clock)
    claims = json.loads(base64.urlsafe_b64decode(sa_token(9).split(".")[1] + "=="))
    fresh = _rs256(cluster, {**claims, "jti": "fresh"})
    assert not ids.set_jwks(b'{"keys": []}') and not ids.set_jwks(b"nope")
    assert ids.set_jwks(json.dumps(_rsa_jwks(cluster)).encode()) and ids.cluster_keys == 1
    assert key(ids, fresh) != SA_KEY  # no token of that issuer was ever accepted: the keys alone prove nothing
    accepted = sa_token(1)
    ids.answered(info(accepted), headers(accepted), 200)
    assert key(ids, fresh) == SA_KEY
    for t in (
        _rs256(other, {**claims, "jti": "x"}),  # another key
        _rs256(cluster, {**claims, "aud": ["vault"]}),  # another audience
        _rs256(cluster, {**claims, "iss": "https://elsewhere"}),  # another issuer
        _rs256(cluster, {**claims, "exp": NOW - 3600}),  # expired
        _rs256(cluster, {**claims, "jti": "y"}, {"alg": "RS256", "kid": "unknown"}),  # a kid not in the set
        _rs256(cluster, {**claims, "jti": "z"}, {"alg": "ES256", "kid": "k"}),  # alg not fitting the key
        _rs256(cluster, {**claims, "jti": "w"}, {"alg": "none", "kid": "k"}),
    ):
        assert key(ids, t) == "kube-proxy@" + jwt.hash_identity(t)
    ids.close()
    again = identity.Identities(tmp_path, clock=clock)  # keys and issuers kept on disk
    assert again.cluster_keys == 1 and key(again, fresh) == SA_KEY


def test_ec_keys_from_a_jwks(tmp_path):
    signer = tokens.Signer.load_or_create(tmp_path / "k.pem", "https://kubernetes.default.svc.cluster.local")
    pub = signer.public_key().public_numbers()
    as_b64 = lambda i: b64(i.to_bytes(32, "big"))  # noqa: E731
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "kid": signer.kid, "x": as_b64(pub.x), "y": as_b64(pub.y)},
                     {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "RSA"}, "junk"]}
    keys = identity.jwks_keys(jwks)
    assert list(keys) == [signer.kid]
    claims = {"sub": SUB, "exp": NOW + 60}
    parsed = jwt.decode(signer.sign(claims))
    assert parsed is not None and identity.verify_signature(parsed, keys[signer.kid])
    tampered = jwt.decode(signer.sign(claims).rsplit(".", 1)[0] + "." + b64(b"\x00" * 64))
    assert tampered is not None and not identity.verify_signature(tampered, keys[signer.kid])
