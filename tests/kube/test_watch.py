"""watch: any chunking of every recorded watch stream splits into the same events; bounds and content types."""

from __future__ import annotations

import hypothesis
import pytest
from hypothesis import strategies as st

from edgeproxy.kube import errors, watch
from tests.kube import recorded

HYPOTHESIS = hypothesis.settings(max_examples=200, deadline=None,
                                 suppress_health_check=[hypothesis.HealthCheck.too_slow])

STREAMS = [(name, enc) for name in recorded.WATCHES for enc in ("protobuf", "json")]


def expected(name: str, encoding: str) -> list[bytes]:
    data = recorded.body(name, encoding)
    return recorded.pb_frames(data) if encoding == "protobuf" else recorded.json_lines(data)


def splitter(encoding: str):
    return watch.ProtobufSplitter() if encoding == "protobuf" else watch.JsonSplitter()


def feed_all(sp, chunks) -> list[bytes]:
    out = []
    for c in chunks:
        out += sp.feed(c)
    return out


@pytest.mark.parametrize(("name", "encoding"), STREAMS)
def test_whole_stream_and_byte_at_a_time(name, encoding):
    data = recorded.body(name, encoding)
    want = expected(name, encoding)
    sp = splitter(encoding)
    assert sp.feed(data) == want
    assert sp.pending == b""
    sp = splitter(encoding)
    assert feed_all(sp, (data[i : i + 1] for i in range(len(data)))) == want
    assert sp.pending == b""


@HYPOTHESIS
@hypothesis.given(st.sampled_from(STREAMS), st.lists(st.integers(0, 100_000), max_size=40))
def test_any_chunking_yields_the_same_events(stream, cuts):
    name, encoding = stream
    data = recorded.body(name, encoding)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    sp = splitter(encoding)
    assert feed_all(sp, chunks) == expected(name, encoding)
    assert sp.pending == b""


def test_partial_frame_stays_pending():
    data = recorded.body("watch.pods-edge1", "protobuf")
    sp = watch.ProtobufSplitter()
    assert sp.feed(data[:-10]) == expected("watch.pods-edge1", "protobuf")[:-1]
    assert sp.pending == data[-(104 + 4) : -10]


def test_oversized_protobuf_frame_is_a_decode_error():
    sp = watch.ProtobufSplitter()
    with pytest.raises(errors.DecodeError, match="exceeds"):
        sp.feed((watch.MAX_FRAME + 1).to_bytes(4, "big"))
    with pytest.raises(errors.DecodeError):  # a failed stream stays failed
        sp.feed(b"\x00\x00\x00\x00")


def test_oversized_json_line_is_a_decode_error():
    sp = watch.JsonSplitter(max_frame=1000)
    line = recorded.json_lines(recorded.body("watch.pods-edge1", "json"))[0]
    with pytest.raises(errors.DecodeError, match="bound"):
        for i in range(0, len(line), 100):
            sp.feed(line[i : i + 100])


def test_json_blank_lines_and_crlf_are_tolerated():
    assert watch.JsonSplitter().feed(b'{"a":1}\r\n\n  \n{"b":2}\n{"c"') == [b'{"a":1}', b'{"b":2}']


@pytest.mark.parametrize(("content_type", "kind"), [
    ("application/vnd.kubernetes.protobuf;stream=watch", watch.ProtobufSplitter),
    ("application/json", watch.JsonSplitter),
    ("application/json;stream=watch", watch.JsonSplitter),
])
def test_splitter_for(content_type, kind):
    assert isinstance(watch.splitter_for(content_type), kind)


def test_splitter_for_unknown_type():
    with pytest.raises(errors.DecodeError):
        watch.splitter_for("application/yaml")


@HYPOTHESIS
@hypothesis.given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_chunks_split_or_raise_decode_error(chunks):
    for sp in (watch.ProtobufSplitter(max_frame=4096), watch.JsonSplitter(max_frame=4096)):
        try:
            feed_all(sp, chunks)
        except errors.DecodeError:
            pass
