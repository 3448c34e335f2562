"""identity.Identities: which token-bearing requests share their ServiceAccount's cache partition."""

import base64
import json
import os

from edgeproxy import identity, tokens
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
