"""A view about to be marked incomplete (a mark or a dropped write queued, not committed yet) is not trusted as
complete: a relist at the same resourceVersion is recorded, not skipped as unchanged (the race the end-to-end test
test_a_watch_answered_with_a_list_marks_the_view_incomplete_and_a_relist_completes_it found)."""

import zlib

from cache import store, writer
from edgeproxy.autonomy import record
from edgeproxy.kube import protobuf
from tests.recording import body

KEY = store.ViewKey("kubelet", "", "v1", "pods", "", "", "spec.nodeName=edge-1", "", "protobuf")


def _complete_view(path: str) -> bytes:
    data = body("pods-edge1.list.pb")
    parts = protobuf.parse_list(protobuf.unwrap(data).raw)
    st = store.Store.open(path, map_size=64 << 20)
    w = writer.Writer(st).start()
    items = [store.Item(f"p{i}", "edge", "300", {}, {}, bytes(raw)) for i, raw in enumerate(parts.items)]
    w.replace_view(KEY, store.ViewMeta("PodList", "v1", parts.resource_version, True), items)
    assert w.flush_sync(10)
    w.close()
    st.close()
    return data


def test_a_queued_mark_makes_a_relist_at_the_same_version_count(tmp_path):
    path = str(tmp_path / "cache")
    listed = _complete_view(path)
    st = store.Store.open(path, map_size=64 << 20)
    w = writer.Writer(st)  # not started yet: what it is handed stays queued
    rec = record.Recorder(w)
    assert rec._unchanged(KEY, "protobuf", listed)  # complete at this version: a relist would change nothing
    w.mark_incomplete(KEY)
    assert w.unsettled(KEY) and st.view(KEY).complete  # the store does not know yet
    assert not rec._unchanged(KEY, "protobuf", listed)
    w.start()
    assert w.flush_sync(10)
    assert not w.unsettled(KEY) and not st.view(KEY).complete
    rec._list(_Info(), KEY, "protobuf", listed)  # the relist, recorded: whole again
    assert w.flush_sync(10)
    assert st.view(KEY).complete and rec._unchanged(KEY, "protobuf", listed)
    rec.close()
    w.close()
    st.close()


def test_a_dropped_write_makes_a_relist_at_the_same_version_count(tmp_path):
    path = str(tmp_path / "cache")
    listed = _complete_view(path)
    st = store.Store.open(path, map_size=64 << 20)
    w = writer.Writer(st, max_pending_bytes=1)  # not started: the second write finds the queue full
    rec = record.Recorder(w)
    item = store.Item("p0", "edge", "400", {}, {}, b"x" * 64)
    w.apply_events(KEY, [("MODIFIED", item, "400")])
    assert not w.unsettled(KEY)
    w.apply_events(KEY, [("MODIFIED", item, "401")])  # dropped
    assert w.unsettled(KEY) and not rec._unchanged(KEY, "protobuf", listed)
    w.start()
    assert w.flush_sync(10)
    assert not w.unsettled(KEY) and not st.view(KEY).complete
    w.close()
    st.close()


class _Info:
    continue_ = None
    resource = "pods"


def test_a_gzip_watch_that_does_not_inflate_marks_the_view_incomplete(tmp_path):
    """The recorder inflates a gzip watch itself; a stream that does not inflate is a stream it cannot read."""
    from multidict import CIMultiDict

    from tests import recording

    with recording.cache(tmp_path / "cache") as c:
        pods = "/api/v1/pods?fieldSelector=spec.nodeName%3Dedge-1"
        c.feed(recording.info(pods), "pods-edge1.list.pb")
        key = next(k for k, _ in c.store.views())
        assert c.store.view(key).complete
        z = zlib.compressobj(wbits=31)
        stream = z.compress(body("watch.pods-edge1.pb")) + z.flush()
        bad = bytearray(stream)
        bad[len(bad) // 2] ^= 0xFF
        hdrs = CIMultiDict({"Content-Type": protobuf.WATCH_CONTENT_TYPE, "Content-Encoding": "gzip"})
        sink = c.recorder.begin(recording.info(pods + "&watch=true&resourceVersion=304"), 200, hdrs)
        for i in range(0, len(bad), 512):
            sink.feed(bytes(bad[i : i + 512]))
        sink.done(True)
        c.sync()
        assert not c.store.view(key).complete
        assert c.recorder.errors >= 1


def test_a_view_stale_in_memory_is_written_incomplete_by_the_next_commit(tmp_path):
    """A write failed and even its view's flag could not be written (a full disk): the view is reported incomplete
    from memory, and the next commit that succeeds writes the flag, so a restart does not serve it as complete."""
    path = str(tmp_path / "cache")
    _complete_view(path)
    st = store.Store.open(path, map_size=64 << 20)
    w = writer.Writer(st).start()
    st.mark_stale(KEY.view_id())
    assert not st.view(KEY).complete
    w.put_blob("kubelet", "/version", b"{}")  # any commit (space came back)
    assert w.flush_sync(10)
    w.close()
    st.close()
    st = store.Store.open(path, map_size=64 << 20)
    assert not st.view(KEY).complete
    st.close()
