"""tokens: TokenRequest answers remembered per pod and service account, replayed while valid, then minted."""

import json
import stat

import pytest

from edgeproxy.autonomy import tokens
from edgeproxy.kube import protobuf


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


NOW = 1_795_531_063.0  # the kubelet trace's TokenRequests were made at this time


def pod_ask(pod="web-0", uid="0f6c", sa="default", ns="edge", audiences=(), expiration=3607):
    return tokens.Ask(ns, sa, tuple(audiences), expiration, tokens.Binding("Pod", "v1", pod, uid))


def kubelet_request_pb(ask: tokens.Ask) -> bytes:
    """A TokenRequest body as kubelet sends it: protobuf, empty metadata, spec{expirationSeconds, boundObjectRef}."""
    b = ask.binding
    ref = b"".join(protobuf.field_bytes(n, s.encode()) for n, s in ((1, b.kind), (2, b.api_version),
                                                                      (3, b.name), (4, b.uid)))
    spec = b"".join(protobuf.field_bytes(1, a.encode()) for a in ask.audiences)
    spec += protobuf.field_bytes(3, ref) + protobuf.field_varint(4, ask.expiration_seconds)
    raw = protobuf.field_bytes(1, b"") + protobuf.field_bytes(2, spec) + protobuf.field_bytes(3, b"")
    return protobuf.wrap(tokens.API_VERSION, tokens.KIND, raw)


def server_answer(ask, encoding, *, expires, sa_uid="5e1f", node_uid="n-1"):
    """An API server answer: its token carries the kubernetes.io claims the server writes."""
    claims = {"aud": list(tokens.DEFAULT_AUDIENCES), "exp": int(expires), "iss": "https://kubernetes.default.svc",
              "kubernetes.io": {"namespace": ask.namespace, "node": {"name": "edge-1", "uid": node_uid},
                                "pod": {"name": ask.binding.name, "uid": ask.binding.uid},
                                "serviceaccount": {"name": ask.service_account, "uid": sa_uid}},
              "sub": f"system:serviceaccount:{ask.namespace}:{ask.service_account}"}
    token = "eyJhbGciOiJSUzI1NiJ9." + tokens._b64json(claims) + ".c2ln"
    return tokens.build_answer(ask, token, expires, tokens.DEFAULT_AUDIENCES, ask.expiration_seconds, encoding)


@pytest.fixture
def clock():
    return Clock(NOW)


@pytest.fixture
def book(tmp_path, clock):
    return tokens.TokenBook(tmp_path / "cache", node="edge-1", clock=clock)


def test_request_is_read_from_protobuf_and_json():
    ask = pod_ask(audiences=("vault",))
    assert tokens.read_request(kubelet_request_pb(ask), "application/vnd.kubernetes.protobuf", "edge",
                               "default") == ask
    body = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                       "spec": {"audiences": ["vault"], "expirationSeconds": 3607,
                                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "web-0",
                                                   "uid": "0f6c"}}}).encode()
    assert tokens.read_request(body, "application/json", "edge", "default") == ask


def test_a_cached_answer_is_served_byte_for_byte_while_valid(book, clock):
    ask = pod_ask()
    ct, body = server_answer(ask, "protobuf", expires=NOW + 3607)
    assert book.remember(ask, body, ct)
    clock.now += 1800
    answer = book.answer(ask, "protobuf")
    assert (answer.status, answer.source, answer.body) == (201, "cached", body)


def test_the_book_survives_a_restart_sealed(tmp_path, clock):
    ask = pod_ask()
    ct, body = server_answer(ask, "json", expires=NOW + 3607)
    tokens.TokenBook(tmp_path / "c", node="edge-1", clock=clock).remember(ask, body, ct)
    sealed = (tmp_path / "c" / tokens.BOOK_FILE).read_bytes()
    token = json.loads(body)["status"]["token"]
    assert token.encode() not in sealed and token.split(".")[1].encode() not in sealed
    again = tokens.TokenBook(tmp_path / "c", node="edge-1", clock=clock)
    assert again.answer(ask, "json").body == body


def test_key_files_are_0600(tmp_path, book):
    for name in (tokens.SIGNING_KEY_FILE, tokens.SEAL_KEY_FILE):
        assert stat.S_IMODE((tmp_path / "cache" / name).stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700


def test_past_expiry_a_minted_token_keeps_the_pod_binding(book, clock):
    ask = pod_ask()
    ct, body = server_answer(ask, "protobuf", expires=NOW + 3607)
    book.remember(ask, body, ct)
    clock.now = NOW + 3607 - 30  # less than a minute left: not handed out again
    answer = book.answer(ask, "protobuf", kubelet_request_pb(ask), "application/vnd.kubernetes.protobuf")
    assert answer.source == "minted"
    token, expires = tokens.read_status(answer.body, answer.content_type)
    assert expires == int(clock.now) + tokens.MINTED_LIFETIME
    claims = tokens.verify(token, book.signer.public_key())
    assert claims["iss"] == "edgeproxy://edge-1"
    assert claims["sub"] == "system:serviceaccount:edge:default"
    assert claims["aud"] == list(tokens.DEFAULT_AUDIENCES)
    assert claims["exp"] - claims["iat"] == tokens.MINTED_LIFETIME
    assert claims["kubernetes.io"] == {"namespace": "edge", "pod": {"name": "web-0", "uid": "0f6c"},
                                       "node": {"name": "edge-1", "uid": "n-1"},
                                       "serviceaccount": {"name": "default", "uid": "5e1f"}}
    # the answer says the lifetime it has, so kubelet refreshes at 80 % of it rather than at once
    assert tokens.read_request(answer.body, answer.content_type, "edge", "default").expiration_seconds == 600


def test_a_never_seen_pod_gets_a_minted_token_with_what_is_known_of_its_service_account(book):
    seen = pod_ask(pod="web-0", uid="a")
    book.remember(seen, *reversed(server_answer(seen, "json", expires=NOW + 3607)))
    new = pod_ask(pod="web-1", uid="b", audiences=("vault",))
    answer = book.answer(new, "json")
    obj = json.loads(answer.body)
    assert (answer.status, answer.source, answer.content_type) == (201, "minted", "application/json")
    assert obj["kind"] == "TokenRequest" and obj["apiVersion"] == "authentication.k8s.io/v1"
    assert obj["spec"]["boundObjectRef"] == {"kind": "Pod", "apiVersion": "v1", "name": "web-1", "uid": "b"}
    claims = tokens.verify(obj["status"]["token"], book.signer.public_key())
    assert claims["aud"] == ["vault"]
    assert claims["kubernetes.io"]["serviceaccount"] == {"name": "default", "uid": "5e1f"}
    assert claims["kubernetes.io"]["pod"] == {"name": "web-1", "uid": "b"}


def test_tokens_are_kept_per_binding_and_audience(book):
    a, b, c = pod_ask(pod="p", uid="1"), pod_ask(pod="q", uid="2"), pod_ask(pod="p", uid="1", audiences=("x",))
    assert len({a.key, b.key, c.key}) == 3
    book.remember(a, *reversed(server_answer(a, "json", expires=NOW + 3607)))
    assert book.answer(a, "json").source == "cached"
    assert book.answer(b, "json").source == "minted"
    assert book.answer(c, "json").source == "minted"


def test_a_cached_answer_is_re_encoded_for_the_encoding_asked(book):
    ask = pod_ask()
    ct, body = server_answer(ask, "json", expires=NOW + 3607)
    book.remember(ask, body, ct)
    answer = book.answer(ask, "protobuf")
    assert answer.source == "cached" and answer.content_type == "application/vnd.kubernetes.protobuf"
    assert tokens.read_status(answer.body, answer.content_type) == tokens.read_status(body, ct)


def test_a_tampered_token_does_not_verify(book):
    answer = book.answer(pod_ask(), "json")
    token = json.loads(answer.body)["status"]["token"]
    head, _, sig = token.split(".")
    forged = tokens._b64json({**tokens.claims_of(token), "sub": "system:serviceaccount:kube-system:admin"})
    assert tokens.verify(f"{head}.{forged}.{sig}", book.signer.public_key()) is None
    assert tokens.verify(token, book.signer.public_key()) is not None


def test_an_unreadable_book_starts_empty(tmp_path, clock):
    (tmp_path / "c").mkdir(mode=0o700)
    (tmp_path / "c" / tokens.BOOK_FILE).write_bytes(b"garbage" * 10)
    assert len(tokens.TokenBook(tmp_path / "c", node="edge-1", clock=clock)) == 0


def test_answer_without_a_token_is_not_remembered(book):
    assert not book.remember(pod_ask(), b'{"kind":"Status","status":"Failure"}', "application/json")


def test_an_answer_recorded_from_the_response_serves_a_request_naming_no_audience(book):
    # online the recorder sees only the response, whose spec lists the audiences the server defaulted
    sent = pod_ask(audiences=())
    answered = pod_ask(audiences=tokens.DEFAULT_AUDIENCES)
    ct, body = server_answer(answered, "protobuf", expires=NOW + 3607)
    assert book.remember(tokens.read_request(body, ct, "edge", "default"), body, ct)
    assert book.answer(sent, "protobuf").source == "cached"
    assert book.answer(pod_ask(pod="other", audiences=()), "protobuf").source == "minted"
