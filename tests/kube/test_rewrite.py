"""rewrite: an object rewrite over lists, objects and watch streams; everything it does not touch keeps its bytes."""

from __future__ import annotations

import pytest

from edgeproxy.kube import errors, jsonwire, protobuf, rewrite
from tests.kube import recorded


def _touch_one(name: str, encoding: str):
    """A rewrite that changes only the object named `name` (its bytes get a marker appended)."""

    def fn(obj: bytes) -> bytes | None:
        meta = protobuf.object_meta(obj) if encoding == "protobuf" else jsonwire.object_meta(obj)
        if meta.name != name:
            return None
        return obj + protobuf.field_bytes(99, b"x") if encoding == "protobuf" else obj[:-1] + b',"x":1}'

    return fn


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_a_list_nobody_touches_is_the_same_bytes_object(encoding: str) -> None:
    body = recorded.body("pods-edge1.list", encoding)
    out, changed = rewrite.list_body(encoding, body, lambda obj: None)
    assert out is body and changed == 0


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_a_list_keeps_every_untouched_item_byte_for_byte(encoding: str) -> None:
    body = recorded.body("pods-edge1.list", encoding)
    if encoding == "protobuf":
        before = protobuf.parse_list(protobuf.unwrap(body).raw)
        name = protobuf.object_meta(before.items[3]).name
    else:
        before = jsonwire.parse_list(body)
        name = jsonwire.object_meta(before.items[3]).name
    out, changed = rewrite.list_body(encoding, body, _touch_one(name, encoding))
    assert changed == 1
    if encoding == "protobuf":
        after = protobuf.parse_list(protobuf.unwrap(out).raw)
        assert after.resource_version == before.resource_version
    else:
        after = jsonwire.parse_list(out)
        assert after.resource_version == before.resource_version
    for i, (a, b) in enumerate(zip(before.items, after.items, strict=True)):
        if i == 3:
            assert a != b
        else:  # (an indented body, as curl gets, is rebuilt compact, as client-go gets it)
            assert (jsonwire.compact(bytes(a)) if encoding == "json" else bytes(a)) == bytes(b)
    # with nothing touched the rebuilt list would be the recorded body itself
    rebuilt = (protobuf.build_list("v1", "PodList", before.resource_version, before.items, before.continue_,
                                   before.remaining_item_count)
               if encoding == "protobuf" else None)
    if rebuilt is not None:
        assert rebuilt == body


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_an_object(encoding: str) -> None:
    body = recorded.body("configmap-web-config.get", encoding)
    assert rewrite.object_body(encoding, body, lambda obj: None) == (body, 0)
    out, changed = rewrite.object_body(encoding, body, _touch_one("web-config", encoding))
    assert changed == 1 and out != body
    if encoding == "protobuf":
        assert protobuf.unwrap(out).kind == "ConfigMap"
    else:
        assert out.endswith(b',"x":1}\n')


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_a_watch_stream_in_any_chunking(encoding: str, chunk: int) -> None:
    body = recorded.body("watch.pods-edge1", encoding)
    w = rewrite.WatchRewriter(encoding, lambda obj: None)
    out = b"".join(w.feed(body[i : i + chunk]) for i in range(0, len(body), chunk))
    assert out == body and w.changed == 0
    frames = recorded.pb_frames(body) if encoding == "protobuf" else recorded.json_lines(body)
    first = (protobuf.decode_event(frames[0]) if encoding == "protobuf" else jsonwire.decode_event(frames[0]))
    raw = first.raw if encoding == "protobuf" else first.obj
    name = (protobuf.object_meta(raw) if encoding == "protobuf" else jsonwire.object_meta(raw)).name
    w = rewrite.WatchRewriter(encoding, _touch_one(name, encoding))
    out = b"".join(w.feed(body[i : i + chunk]) for i in range(0, len(body), chunk))
    assert w.changed >= 1 and out != body
    again = recorded.pb_frames(out) if encoding == "protobuf" else recorded.json_lines(out)
    assert len(again) == len(frames)
    for a, b in zip(frames, again, strict=True):
        ea = protobuf.decode_event(a) if encoding == "protobuf" else jsonwire.decode_event(a)
        eb = protobuf.decode_event(b) if encoding == "protobuf" else jsonwire.decode_event(b)
        assert ea.type == eb.type
        ra = ea.raw if encoding == "protobuf" else ea.obj
        touched = (protobuf.object_meta(ra) if encoding == "protobuf" else jsonwire.object_meta(ra)).name == name
        assert (a == b) != (touched and ea.type not in ("BOOKMARK", "ERROR"))


def test_a_frame_that_does_not_decode_passes_as_it_came() -> None:
    w = rewrite.WatchRewriter("json", lambda obj: b"{}")
    bad = b'{"type":"ADDED","object":nope}\n'
    assert w.feed(bad) == bad and w.errors == 1 and w.changed == 0


@pytest.mark.parametrize("encoding", ["json", "protobuf"])
def test_malformed_lists_are_decode_errors(encoding: str) -> None:
    with pytest.raises(errors.DecodeError):
        rewrite.list_body(encoding, b"garbage", lambda obj: None)
