"""record: recorded API server answers, fed through the recorder seam, become views, objects and blobs."""

import threading
import zlib

import pytest
from multidict import CIMultiDict

from edgeproxy.autonomy import record, tokens, views
from edgeproxy.kube import jsonwire, protobuf, watch
from tests import recording
from tests.recording import KUBECTL_JSON, body, info

PODS = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1"
WATCH = PODS + "&watch=true&resourceVersion=304&allowWatchBookmarks=true&timeoutSeconds=20"
WATCH_LIST = (PODS + "&watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
              "&timeoutSeconds=3")
ENC = {"pb": ("protobuf", recording.KUBELET), "json": ("json", KUBECTL_JSON)}


@pytest.fixture
def c(tmp_path):
    with recording.cache(tmp_path / "cache") as cache:
        yield cache


def pods_key(ext):
    enc, hdrs = ENC[ext]
    return views.view_key(info(PODS, hdrs), shape="", encoding=enc)


def listed_items(ext, name):
    data = body(name)
    if ext == "pb":
        return protobuf.parse_list(protobuf.unwrap(data).raw).items
    return [jsonwire.compact(i) for i in jsonwire.parse_list(data).items]  # recorded indented (curl), kept compact


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_a_list_becomes_its_view(c, ext):
    c.feed(info(PODS, ENC[ext][1]), f"pods-edge1.list.{ext}")
    meta = c.store.view(pods_key(ext))
    assert meta.complete and meta.resource_version == "304"
    assert meta.kind == "PodList" and meta.api_version == "v1"
    assert c.store.raw_items(pods_key(ext)) == sorted(listed_items(ext, f"pods-edge1.list.{ext}"),
                                                      key=lambda raw: _ns_name(ext, raw))


def _ns_name(ext, raw):
    m = protobuf.object_meta(raw) if ext == "pb" else jsonwire.object_meta(raw)
    return f"{m.namespace}/{m.name}"


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_a_chunked_list_is_committed_at_its_last_page(c, ext):
    hdrs = ENC[ext][1]
    c.feed(info(PODS + "&limit=10", hdrs), f"pods-edge1.limit10.page1.{ext}")
    assert c.store.view(pods_key(ext)) is None  # nothing until the last page
    token = (recording.FIXTURES / "pods-edge1.limit10.continue-token.txt").read_text().strip()
    c.feed(info(PODS + f"&limit=10&continue={token}", hdrs), f"pods-edge1.limit10.page2.{ext}")
    meta = c.store.view(pods_key(ext))
    assert meta.complete and meta.resource_version == "304"
    assert len(c.store.raw_items(pods_key(ext))) == 15


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_watch_events_apply_to_the_view(c, ext):
    hdrs = ENC[ext][1]
    c.feed(info(PODS, hdrs), f"pods-edge1.list.{ext}")
    c.feed(info(WATCH, hdrs), f"watch.pods-edge1.{ext}", chunk=100)
    key = pods_key(ext)
    meta = c.store.view(key)
    assert meta.complete and meta.resource_version == "315"  # the closing BOOKMARK
    names = {i.name for i in c.store.items(key)}
    assert len(names) == 15 and "watch-demo-1" not in names  # added, then deleted
    db0 = c.store.item(key, "edge", "db-0")
    assert db0.resource_version == "309"


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_a_watch_list_becomes_the_view_at_its_end_bookmark(c, ext):
    c.feed(info(WATCH_LIST, ENC[ext][1]), f"watchlist.pods-edge1.{ext}", chunk=1000)
    meta = c.store.view(pods_key(ext))
    assert meta.complete and meta.resource_version == "316"
    assert meta.kind == "PodList" and meta.api_version == "v1"
    assert len(c.store.raw_items(pods_key(ext))) == 15


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_a_gzip_watch_list_of_one_member_per_event_becomes_the_view(c, ext):
    """kube-apiserver (Accept-Encoding: gzip) compresses a watch event by event: one gzip member per event."""
    data = body(f"watchlist.pods-edge1.{ext}")
    if ext == "pb":
        frames = [len(f).to_bytes(4, "big") + f for f in watch.ProtobufSplitter().feed(data)]
    else:
        frames = [f + b"\n" for f in watch.JsonSplitter().feed(data)]
    assert len(frames) > 10
    zipped = b"".join(zlib.compress(f, wbits=31) for f in frames)
    headers = CIMultiDict(recording.headers(f"watchlist.pods-edge1.{ext}"), **{"Content-Encoding": "gzip"})
    for chunk in (7, 1000):  # members split across chunks, and several members in one chunk
        sink = c.recorder.begin(info(WATCH_LIST, ENC[ext][1]), 200, headers)
        for i in range(0, len(zipped), chunk):
            sink.feed(zipped[i : i + chunk])
        sink.done(True)
        c.sync()
        meta = c.store.view(pods_key(ext))
        assert meta.complete and meta.resource_version == "316"
        assert len(c.store.raw_items(pods_key(ext))) == 15


def test_a_watch_list_cut_before_its_end_is_dropped(c):
    data = body("watchlist.pods-edge1.pb")
    frames = watch.ProtobufSplitter().feed(data)
    cut = len(data) - len(frames[-1]) - 4 - len(frames[-2]) - 4  # the end bookmark and one pod never arrive
    c.feed(info(WATCH_LIST), "watchlist.pods-edge1.pb", data=data[:cut], ok=False)
    assert c.store.view(pods_key("pb")) is None


def test_a_broken_watch_leaves_its_view_complete(c):
    c.feed(info(PODS), "pods-edge1.list.pb")
    data = body("watch.pods-edge1.pb")
    c.feed(info(WATCH), "watch.pods-edge1.pb", data=data[: len(data) // 2], ok=False)
    meta = c.store.view(pods_key("pb"))
    assert meta.complete and int(meta.resource_version) > 304


def test_an_undecodable_watch_marks_the_view_incomplete(c):
    c.feed(info(PODS), "pods-edge1.list.pb")
    garbage = b"\x00\x00\x00\x05" + b"\xff" * 5
    c.feed(info(WATCH), "watch.pods-edge1.pb", data=garbage)
    assert not c.store.view(pods_key("pb")).complete


def test_a_watch_error_leaves_the_view_as_it_was(c):
    c.feed(info(PODS), "pods-edge1.list.pb")
    c.feed(info(WATCH), "gone.watch-old-rv.pb")
    meta = c.store.view(pods_key("pb"))
    assert meta.complete and meta.resource_version == "304"


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_a_get_is_stored_as_sent(c, ext):
    url = "/api/v1/namespaces/edge/configmaps/web-config"
    req = info(url, ENC[ext][1])
    c.feed(req, f"configmap-web-config.get.{ext}")
    okey = views.object_key(req, shape="", encoding=ENC[ext][0])
    assert c.store.get_object(okey) == body(f"configmap-web-config.get.{ext}")


def test_a_get_goes_to_the_writer_without_the_parsing_thread_and_a_repeat_is_not_written(c):
    req = info("/api/v1/namespaces/edge/configmaps/web-config", KUBECTL_JSON)
    okey = views.object_key(req, shape="", encoding="json")
    held, gate = threading.Event(), threading.Event()
    c.recorder._submit(0, lambda: (held.set(), gate.wait(10)))  # the parsing thread is busy
    assert held.wait(10)
    try:
        sink = c.recorder.begin(req, 200, recording.headers("configmap-web-config.get.json"))
        sink.feed(body("configmap-web-config.get.json"))
        sink.done(True)
        assert c.writer.flush_sync(10)
        assert c.store.get_object(okey) == body("configmap-web-config.get.json")  # the parsing thread still waits
    finally:
        gate.set()
    c.feed(req, "configmap-web-config.get.json")
    assert c.writer.objects_unchanged == 1


def test_a_repeated_get_is_recorded_whatever_it_answers(c):
    """Recorder.begin works out a GET's object key once per request info; the answers are still each recorded."""
    req = info("/api/v1/namespaces/edge/configmaps/web-config", KUBECTL_JSON)
    okey = views.object_key(req, shape="", encoding="json")
    first = body("configmap-web-config.get.json")
    for answer in (first, first + b" ", first):
        c.feed(req, "configmap-web-config.get.json", data=answer)
        assert c.store.get_object(okey) == answer
    c.feed(req, "configmap-web-config.get.json")
    assert c.writer.objects_unchanged == 1
    assert c.recorder.begin(req, 200, {"Content-Type": "application/json;as=Table;v=v1;g=meta.k8s.io"}) is None


def test_a_gzip_get_is_not_overtaken_by_a_later_plain_one(c):
    req = info("/api/v1/namespaces/edge/configmaps/web-config", KUBECTL_JSON)
    okey = views.object_key(req, shape="", encoding="json")
    first = body("configmap-web-config.get.json")
    later = first + b" "  # other bytes
    held, gate = threading.Event(), threading.Event()
    c.recorder._submit(0, lambda: (held.set(), gate.wait(10)))
    assert held.wait(10)
    hdrs = recording.headers("configmap-web-config.get.json")
    zipped = CIMultiDict(hdrs, **{"Content-Encoding": "gzip"})
    sink = c.recorder.begin(req, 200, zipped)
    z = zlib.compressobj(wbits=31)
    sink.feed(z.compress(first) + z.flush())
    sink.done(True)  # queued behind the busy parsing thread
    sink = c.recorder.begin(req, 200, hdrs)
    sink.feed(later)
    sink.done(True)  # must queue behind the gzip one, not go first
    gate.set()
    c.sync()
    assert c.store.get_object(okey) == later


def test_a_404_forgets_a_stored_get(c):
    req = info("/api/v1/namespaces/edge/configmaps/web-config", KUBECTL_JSON)
    c.feed(req, "configmap-web-config.get.json")
    assert c.recorder.begin(req, 404, recording.headers("configmap-missing.get.json")) is None
    c.sync()
    assert c.store.get_object(views.object_key(req, shape="", encoding="json")) is None


def test_discovery_is_stored_per_client_and_representation(c):
    c.feed(info("/api", KUBECTL_JSON), "api.json")
    c.feed(info("/apis", {**KUBECTL_JSON, "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;"
                                                    "as=APIGroupDiscoveryList,application/json"}),
           "apis.aggregated-discovery-v2.json")
    client = info("/api", KUBECTL_JSON).client.key
    assert c.store.get_blob(client, views.blob_name("/api", "application/json")) == body("api.json")
    aggregated = views.blob_name("/apis", "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList")
    assert c.store.get_blob(client, aggregated) == body("apis.aggregated-discovery-v2.json")
    assert c.store.get_blob("kubelet", views.blob_name("/api", "application/json")) is None


def test_tables_and_errors_are_not_recorded(c):
    table = info(PODS, {**KUBECTL_JSON, "Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"})
    assert c.recorder.begin(table, 200, recording.headers("pods-edge1.table.json")) is None
    assert c.recorder.begin(info(PODS + "&limit=10&continue=x"), 410,
                            recording.headers("gone.pods-list-continue.pb")) is None


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_a_list_repeating_its_views_version_is_not_parsed_again(c, ext):
    hdrs = ENC[ext][1]
    c.feed(info(PODS, hdrs), f"pods-edge1.list.{ext}")
    c.feed(info(PODS + "&resourceVersion=0", hdrs), f"pods-edge1.list.{ext}")
    assert c.recorder.unchanged == 1
    assert c.store.view(pods_key(ext)).complete


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_a_relist_at_the_same_version_before_the_first_is_committed_is_not_parsed_again(c, ext):
    """Two lists at one version back to back: the second waits for the first's commit instead of being parsed."""
    hdrs = ENC[ext][1]
    held, gate = threading.Event(), threading.Event()
    c.writer._put(("flush", lambda: (held.set(), gate.wait(10))), 0)  # holds the writer thread: the first list
    assert held.wait(10)  # stays uncommitted
    for _ in range(2):
        sink = c.recorder.begin(info(PODS, hdrs), 200, recording.headers(f"pods-edge1.list.{ext}"))
        sink.feed(body(f"pods-edge1.list.{ext}"))
        sink.done(True)
    gate.set()
    c.sync()
    assert c.recorder.unchanged == 1
    meta = c.store.view(pods_key(ext))
    assert meta.complete and meta.resource_version == "304"
    assert len(c.store.raw_items(pods_key(ext))) == len(listed_items(ext, f"pods-edge1.list.{ext}"))


@pytest.mark.parametrize("name", ["pods-edge1.list.pb", "pods-edge1.limit10.page1.pb"])
def test_a_protobuf_lists_metadata_is_read_from_its_first_bytes(name):
    data = body(name)
    whole = record._pb_list_meta(data)
    assert whole is not None and whole[0] == "304"
    assert record._pb_list_meta(data[: record.HEAD]) == whole
    for n in range(len(data[: record.HEAD])):
        assert record._pb_list_meta(data[:n]) in (None, whole)  # a prefix tells the truth or nothing


def test_a_token_request_answer_is_remembered(tmp_path):
    book = tokens.TokenBook(tmp_path / "tokens", node="edge-1")
    with recording.cache(tmp_path / "cache", tokens=book) as c:
        ask = tokens.Ask("edge", "default", tokens.DEFAULT_AUDIENCES, 3607,
                         tokens.Binding("Pod", "v1", "web-0", "u-1"))
        ct, answer = tokens.build_answer(ask, "header.e30.sig", 4102444800.0, ask.audiences, 3607, "protobuf")
        req = info("/api/v1/namespaces/edge/serviceaccounts/default/token", method="POST")
        sink = c.recorder.begin(req, 201, CIMultiDict({"Content-Type": ct}))
        sink.feed(answer)
        sink.done(True)
        c.sync()
    sent = tokens.Ask("edge", "default", (), 3607, tokens.Binding("Pod", "v1", "web-0", "u-1"))
    served = book.answer(sent, "protobuf")
    assert (served.source, served.body) == ("cached", answer)


def test_a_big_list_goes_to_the_writer_in_pieces(c, monkeypatch):
    monkeypatch.setattr(record, "BIG_LIST", 4)
    c.feed(info(PODS), "pods-edge1.list.pb")
    meta = c.store.view(pods_key("pb"))
    assert meta.complete and meta.resource_version == "304" and meta.kind == "PodList"
    assert c.store.raw_items(pods_key("pb")) == sorted(listed_items("pb", "pods-edge1.list.pb"),
                                                       key=lambda raw: _ns_name("pb", raw))
