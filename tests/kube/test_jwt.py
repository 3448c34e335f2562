"""kube.jwt: decoding bearer tokens, their ServiceAccount subject, the two identities. Tables, no event loop."""

import base64
import json

import pytest

from edgeproxy.kube import jwt


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def token(claims: dict, header: dict | None = None, sig: bytes = b"\x01" * 64) -> str:
    head = header if header is not None else {"alg": "RS256", "kid": "k1"}
    return ".".join((b64(json.dumps(head).encode()), b64(json.dumps(claims).encode()), b64(sig)))


BOUND = {  # the shape of a kubelet-requested projected token (pkg/serviceaccount/claims.go)
    "aud": ["https://kubernetes.default.svc.cluster.local"], "exp": 2000, "iat": 1000, "nbf": 1000,
    "iss": "https://kubernetes.default.svc.cluster.local", "sub": "system:serviceaccount:kube-system:kube-proxy",
    "kubernetes.io": {"namespace": "kube-system", "serviceaccount": {"name": "kube-proxy", "uid": "u"},
                      "pod": {"name": "kube-proxy-x", "uid": "p"}},
}
LEGACY = {"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:edge:default",
          "kubernetes.io/serviceaccount/namespace": "edge",
          "kubernetes.io/serviceaccount/service-account.name": "default"}


def test_decode_a_bound_token():
    t = token(BOUND)
    got = jwt.decode(t)
    assert got is not None
    assert (got.alg, got.kid, got.subject, got.issuer) == ("RS256", "k1", BOUND["sub"], BOUND["iss"])
    assert got.audiences == ("https://kubernetes.default.svc.cluster.local",)
    assert got.signing_input == t.rsplit(".", 1)[0].encode() and got.signature == b"\x01" * 64
    assert (got.expires, got.not_before) == (2000.0, 1000.0)


@pytest.mark.parametrize("t", [
    "", "not-a-jwt", "a.b", "a.b.c.d", "pod-sa-token", "!!.@@.##",
    b64(b"[1]") + "." + b64(b"{}") + ".x",  # header not an object
    b64(b"{}") + "." + b64(b'"s"') + ".x",  # claims not an object
    b64(b"{}") + "." + b64(b"\xff\xfe") + ".x",  # not UTF-8
    "x" * (jwt.MAX_TOKEN + 1),
])
def test_not_a_jwt(t):
    assert jwt.decode(t) is None


@pytest.mark.parametrize(("claims", "want"), [
    (BOUND, ("kube-system", "kube-proxy")),
    (LEGACY, ("edge", "default")),
    ({"sub": "system:serviceaccount:kube-system:coredns"}, ("kube-system", "coredns")),
    ({"sub": "system:node:edge-1"}, None),
    ({"sub": "alice"}, None),
    ({"sub": 7}, None),
    ({}, None),
    ({"sub": "system:serviceaccount:kube-system"}, None),  # no name
    ({"sub": "system:serviceaccount:Kube:x"}, None),  # not a DNS label
    ({"sub": "system:serviceaccount:ns:a:b"}, None),  # ":" is not in a name
    ({"sub": "system:serviceaccount:ns:"}, None),
    # the kubernetes.io claims disagree with sub: not a token the API server would issue
    ({**BOUND, "kubernetes.io": {"namespace": "edge", "serviceaccount": {"name": "kube-proxy"}}}, None),
    ({**BOUND, "kubernetes.io": {"namespace": "kube-system", "serviceaccount": {"name": "coredns"}}}, None),
    ({**LEGACY, "kubernetes.io/serviceaccount/service-account.name": "admin"}, None),
])
def test_service_account(claims, want):
    parsed = jwt.decode(token(claims))
    assert parsed is not None
    assert jwt.service_account(parsed) == want


@pytest.mark.parametrize(("claims", "now", "fresh"), [
    ({"exp": 2000, "nbf": 1000}, 1500, True),
    ({"exp": 2000, "nbf": 1000}, 2050, True),  # within the 60 s leeway
    ({"exp": 2000, "nbf": 1000}, 2061, False),
    ({"exp": 2000, "nbf": 1000}, 939, False),
    ({}, 1e12, True),  # a legacy token never expires
    ({"exp": "2000"}, 1e12, True),  # not a NumericDate: ignored, as if absent
    ({"exp": True}, 1e12, True),
])
def test_fresh(claims, now, fresh):
    parsed = jwt.decode(token(claims))
    assert parsed is not None and parsed.fresh(now) is fresh


def test_identities_never_collide():
    assert jwt.sa_identity("kube-system", "kube-proxy") == "sa:kube-system:kube-proxy"
    h = jwt.hash_identity("pod-sa-token")
    assert len(h) == jwt.HASH_IDENTITY_LEN and all(c in "0123456789abcdef" for c in h)
    assert jwt.token_digest("pod-sa-token").startswith(h) and len(jwt.token_digest("x")) == 64
