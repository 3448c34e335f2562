"""cache/store.py through the writer, with recorded kube-apiserver bytes: lists, watches, reopen, corruption."""

from __future__ import annotations

import os

import lmdb
import pytest

from cache import errors, store, writer
from tests.cache import recorded
from tests.cache.conftest import pods_key

ENC = {"pb": "protobuf", "json": "json"}


def expected_after_watch(ext: str) -> tuple[dict[str, store.Item], str]:
    """What the API server holds for the query after the recorded watch: the list with the events applied."""
    _, _, _, _, items = recorded.list_items(f"pods-edge1.list.{ext}.body")
    want = {i.name: i for i in items}
    rv = ""
    for typ, item, ev_rv, _ in recorded.watch_events(f"watch.pods-edge1.{ext}.body"):
        if typ in ("ADDED", "MODIFIED"):
            want[item.name] = item
        elif typ == "DELETED":
            want.pop(item.name, None)
        rv = ev_rv
    return want, rv


def events_of(name: str) -> list[tuple]:
    return [(t, i, rv) for t, i, rv, _ in recorded.watch_events(name)]


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_list_then_watch_then_reopen_equals_the_servers_state(cache_dir, ext):
    kind, api_version, rv, _, items = recorded.list_items(f"pods-edge1.list.{ext}.body")
    key = pods_key(ENC[ext])
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    w.replace_view(key, store.ViewMeta(kind, api_version, rv, True), items)
    for ev in events_of(f"watch.pods-edge1.{ext}.body"):
        w.apply_events(key, [ev])  # one op per event, as a stream delivers them
    assert w.flush_sync(10)
    w.close()
    st.close()

    st = store.Store.open(cache_dir, map_size=64 << 20)
    want, want_rv = expected_after_watch(ext)
    meta, got = st.read_view(key)
    assert meta.complete and meta.resource_version == want_rv == "315"
    assert meta.kind == kind and meta.api_version == api_version and meta.count == len(want) == 15
    # ordered as etcd orders /registry/pods/<ns>/<name>
    assert [(i.namespace, i.name) for i in got] == sorted((i.namespace, i.name) for i in want.values())
    assert {i.name: (i.resource_version, i.raw, i.labels) for i in got} == {
        n: (i.resource_version, i.raw, i.labels) for n, i in want.items()}
    assert st.raw_items(key) == [i.raw for i in got]
    assert st.item(key, "edge", "db-0").resource_version == "309"
    assert st.item(key, "edge", "watch-demo-1") is None
    assert st.verify().ok
    st.close()


def test_json_and_protobuf_clients_get_separate_views(opened):
    st, w = opened
    for ext in ("pb", "json"):
        kind, av, rv, _, items = recorded.list_items(f"pods-edge1.list.{ext}.body")
        w.replace_view(pods_key(ENC[ext]), store.ViewMeta(kind, av, rv, True), items)
    assert w.flush_sync(10)
    pb_raw, json_raw = st.raw_items(pods_key("protobuf")), st.raw_items(pods_key("json"))
    assert len(pb_raw) == len(json_raw) == 15
    assert all(r.startswith(b"{") for r in json_raw) and not any(r.startswith(b"{") for r in pb_raw)
    assert [k.encoding for k, _ in st.views("kubelet")] == ["json", "protobuf"]


def test_a_new_list_replaces_the_view(opened):
    st, w = opened
    key = pods_key("protobuf")
    kind, av, rv, _, items = recorded.list_items("pods-edge1.list.pb.body")
    w.replace_view(key, store.ViewMeta(kind, av, rv, True), items)
    w.replace_view(key, store.ViewMeta(kind, av, "400", True), items[:3])
    assert w.flush_sync(10)
    meta, got = st.read_view(key)
    assert meta.resource_version == "400" and [i.name for i in got] == [i.name for i in items[:3]]
    assert st.stats()["items"] == 3  # the previous generation is gone
    assert st.verify().ok


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_chunked_list_is_committed_only_with_its_last_chunk(opened, ext):
    st, w = opened
    key = pods_key(ENC[ext])
    kind, av, _rv, cont, page1 = recorded.list_items(f"pods-edge1.limit10.page1.{ext}.body")
    _, _, rv2, cont2, page2 = recorded.list_items(f"pods-edge1.limit10.page2.{ext}.body")
    assert cont and not cont2
    w.replace_view(key, store.ViewMeta(kind, av, "300", True), page1[:2])  # what an earlier list left
    asm = w.begin_list(key, kind, av)
    asm.add(page1)
    assert w.flush_sync(10)
    assert [i.name for i in st.items(key)] == [i.name for i in page1[:2]]  # chunk 1 alone is invisible
    asm.add(page2)
    asm.commit(rv2)
    assert w.flush_sync(10)
    meta, got = st.read_view(key)
    assert meta.complete and meta.resource_version == "304" and meta.count == 15
    _, _, _, _, whole = recorded.list_items(f"pods-edge1.list.{ext}.body")
    assert [i.raw for i in got] == [i.raw for i in whole]
    assert st.verify().ok


def test_an_abandoned_chunked_list_leaves_the_view_as_it_was(opened):
    st, w = opened
    key = pods_key("protobuf")
    kind, av, _rv, _, page1 = recorded.list_items("pods-edge1.limit10.page1.pb.body")
    w.replace_view(key, store.ViewMeta(kind, av, "300", True), page1[:2])
    with w.begin_list(key, kind, av) as asm:
        asm.add(page1)  # the client went away before page 2
    assert w.flush_sync(10)
    meta, got = st.read_view(key)
    assert meta.complete and meta.resource_version == "300" and len(got) == 2
    assert st.stats()["items"] == 2
    assert st.verify().ok


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_watch_list_becomes_complete_only_at_initial_events_end(opened, ext):
    st, w = opened
    key = pods_key(ENC[ext])
    events = recorded.watch_events(f"watchlist.pods-edge1.{ext}.body")
    asm = w.begin_list(key, "PodList", "v1")
    for typ, item, rv, end in events:
        if end:
            assert w.flush_sync(10)
            assert st.view(key) is None  # nothing visible before the bookmark
            asm.commit(rv)
        elif typ == "ADDED":
            asm.add([item])
    assert w.flush_sync(10)
    meta, got = st.read_view(key)
    assert meta.complete and meta.resource_version == "316" and len(got) == 15
    _, _, _, _, listed = recorded.list_items(f"pods-edge1.list.{ext}.body")
    assert {i.name for i in got} == {i.name for i in listed}


def test_watch_list_cut_before_its_bookmark_is_never_complete(opened):
    st, w = opened
    key = pods_key("protobuf")
    events = recorded.watch_events("watchlist.pods-edge1.pb.body")
    asm = w.begin_list(key, "PodList", "v1")
    for _typ, item, _rv, _end in events[:7]:
        asm.add([item])
    asm.abort()
    w.mark_incomplete(key)  # what record does on a broken stream
    assert w.flush_sync(10)
    assert st.view(key) is None
    assert st.stats()["items"] == 0


def test_an_event_older_than_the_stored_object_is_ignored(opened):
    st, w = opened
    key = pods_key("protobuf")
    kind, av, rv, _, items = recorded.list_items("pods-edge1.list.pb.body")
    w.replace_view(key, store.ViewMeta(kind, av, rv, True), items)
    ev = events_of("watch.pods-edge1.pb.body")
    db0 = ev[3]  # MODIFIED db-0 at 309
    stale = ("MODIFIED", items[[i.name for i in items].index("db-0")], "305")
    w.apply_events(key, [db0])
    w.apply_events(key, [stale])  # delivered late by a second stream
    # older than the stored object but newer than the view: still ignored (an object never goes back in time)
    w.apply_events(key, [("MODIFIED", store.Item("db-0", "edge", "308", {}, {}, b"old"), "308")])
    w.apply_events(key, [("DELETED", store.Item("db-0", "edge", "306", {}, {}, b""), "306")])
    assert w.flush_sync(10)
    got = st.item(key, "edge", "db-0")
    assert got.resource_version == "309" and got.raw == db0[1].raw
    assert st.view(key).resource_version == "309"
    assert st.events_ignored == 3


def test_error_event_marks_the_view_incomplete(opened):
    st, w = opened
    key = pods_key("protobuf")
    kind, av, rv, _, items = recorded.list_items("pods-edge1.list.pb.body")
    w.replace_view(key, store.ViewMeta(kind, av, rv, True), items)
    w.apply_events(key, [("ERROR", None, "")])
    assert w.flush_sync(10)
    assert st.view(key).complete is False
    w.replace_view(key, store.ViewMeta(kind, av, rv, True), items)  # a relist makes it whole again
    assert w.flush_sync(10)
    assert st.view(key).complete is True


def test_an_object_without_a_name_is_dropped_and_the_view_marked_incomplete(opened):
    """Issue 14 D10: an ADDED event without metadata was stored as a nameless item and served offline."""
    st, w = opened
    key = pods_key("protobuf")
    kind, av, rv, _, items = recorded.list_items("pods-edge1.list.pb.body")
    w.replace_view(key, store.ViewMeta(kind, av, rv, True), items)
    w.apply_events(key, [("ADDED", store.Item("", "", "999", {}, {}, b"{}"), "999")])
    assert w.flush_sync(10)
    meta, held = st.read_view(key)
    assert meta.complete is False and all(i.name for i in held) and len(held) == len(items)


def test_events_for_an_unknown_view_are_ignored(opened):
    st, w = opened
    w.apply_events(pods_key("protobuf"), events_of("watch.pods-edge1.pb.body"))
    assert w.flush_sync(10)
    assert st.view(pods_key("protobuf")) is None and st.stats()["items"] == 0


def _corrupt_one(cache_dir: str, name: str) -> None:
    env = lmdb.open(cache_dir, max_dbs=8)
    items = env.open_db(b"items")
    with env.begin(write=True) as txn:
        for k, v in txn.cursor(db=items):
            if k.endswith(name.encode()):
                bad = bytearray(v)
                bad[-10] ^= 0x40
                txn.put(k, bytes(bad), db=items)
    env.close()


@pytest.mark.parametrize("resource", ["pods", "secrets"])  # plain (crc32) and sealed (GCM tag)
def test_a_corrupt_record_is_skipped_counted_and_never_served(cache_dir, resource):
    kind, av, rv, _, items = recorded.list_items("pods-edge1.list.pb.body")
    key = store.ViewKey("kubelet", "", "v1", resource, "", "", "", "", "protobuf")
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    w.replace_view(key, store.ViewMeta(kind, av, rv, True), items)
    assert w.flush_sync(10)
    w.close()
    st.close()
    _corrupt_one(cache_dir, "db-0")

    st = store.Store.open(cache_dir, map_size=64 << 20)
    got = st.items(key)
    assert len(got) == 14 and "db-0" not in {i.name for i in got}
    assert st.corrupt_records == 1
    assert len(st.raw_items(key)) == 14 and st.corrupt_records == 2
    assert st.item(key, "edge", "db-0") is None and st.corrupt_records == 3
    report = st.verify()
    assert not report.ok and [p.db for p in report.problems] == ["items"]
    assert report.problems[0].key.endswith(b"edge/db-0")
    st.close()


def test_tiny_map_writes_fail_are_counted_and_reads_still_work(tmp_path):
    path = str(tmp_path / "tiny")
    st = store.Store.open(path, map_size=256 << 10)
    w = writer.Writer(st).start()
    key = pods_key("protobuf")
    kind, av, rv, _, items = recorded.list_items("pods-edge1.list.pb.body")
    w.replace_view(key, store.ViewMeta(kind, av, rv, True), items[:2])
    assert w.flush_sync(10)
    big = store.ViewKey("kubectl", "", "v1", "configmaps", "", "", "", "", "json")
    w.replace_view(big, store.ViewMeta("ConfigMapList", "v1", "9", True),
                   [store.Item(f"cm{i}", "edge", "9", {}, {}, os.urandom(4096)) for i in range(200)])
    w.apply_events(key, events_of("watch.pods-edge1.pb.body"))
    assert w.flush_sync(10)
    assert st.map_full >= 1 and st.writes_failed >= 1
    assert st.view(big) is None
    meta, got = st.read_view(key)  # the small view still takes its events (retried alone) and reads fine
    assert meta.complete and meta.resource_version == "315"
    assert [i.name for i in got] == sorted([i.name for i in items[:2]] + ["db-0"])
    assert st.verify().ok
    # an event too big for the map: lost, so its view can no longer claim to be complete
    w.apply_events(key, [("MODIFIED", store.Item("db-0", "edge", "400", {}, {}, os.urandom(512 << 10)), "400")])
    assert w.flush_sync(10)
    meta = st.view(key)
    assert meta.complete is False and meta.resource_version == "315"
    # the writer goes on: a small write after the failure still lands
    w.put_blob("kubelet", "/version", recorded.body("version.json.body"))
    assert w.flush_sync(10)
    assert st.get_blob("kubelet", "/version") == recorded.body("version.json.body")
    w.close()
    st.close()


def test_objects_and_blobs_round_trip(opened):
    st, w = opened
    ok = store.ObjectKey("kubelet", "", "v1", "configmaps", "edge", "web-config", "", "protobuf")
    body = recorded.body("configmap-web-config.get.pb.body")
    w.put_object(ok, body)
    w.put_blob("kubelet", "/api", recorded.body("api.pb.body"))
    w.put_blob("coredns@ab12", "/apis?" + "x" * 600, b"long name")  # longer than an LMDB key
    assert w.flush_sync(10)
    assert st.get_object(ok) == body
    assert st.get_object(store.ObjectKey("coredns@ab12", "", "v1", "configmaps", "edge", "web-config")) is None
    assert st.get_blob("kubelet", "/api") == recorded.body("api.pb.body")
    assert st.get_blob("coredns@ab12", "/apis?" + "x" * 600) == b"long name"
    w.delete_object(ok)
    assert w.flush_sync(10)
    assert st.get_object(ok) is None


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_a_secrets_value_is_not_in_the_lmdb_file(cache_dir, ext):
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    body = recorded.body(f"secret-db-credentials.get.{ext}.body")
    ok = store.ObjectKey("kubelet", "", "v1", "secrets", "edge", "db-credentials", "", ENC[ext])
    w.put_object(ok, body)
    key = store.ViewKey("kubelet", "", "v1", "secrets", "edge", "", "", "", ENC[ext])
    w.replace_view(key, store.ViewMeta("SecretList", "v1", "300", True),
                   [store.Item("db-credentials", "edge", "300", {}, {}, body)])
    assert w.flush_sync(10)
    assert st.get_object(ok) == body and st.raw_items(key) == [body]
    w.close()
    st.close()
    with open(os.path.join(cache_dir, "data.mdb"), "rb") as f:
        data = f.read()
    for secret in _secret_values():
        assert secret not in data
    assert body[-40:] not in data
    key_file = os.path.join(cache_dir, "seal.key")
    assert os.stat(key_file).st_mode & 0o777 == 0o600
    assert os.stat(cache_dir).st_mode & 0o777 == 0o700


def _secret_values() -> list[bytes]:
    import base64
    import json

    doc = json.loads(recorded.body("secret-db-credentials.get.json.body"))
    out = []
    for v in doc["data"].values():
        out += [v.encode(), base64.b64decode(v)]
    return out


def test_a_sealed_record_moved_to_another_key_does_not_open(cache_dir):
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    key = store.ViewKey("kubelet", "", "v1", "secrets", "edge", "", "", "", "json")
    w.replace_view(key, store.ViewMeta("SecretList", "v1", "300", True),
                   [store.Item(n, "edge", "300", {}, {}, n.encode() * 10) for n in ("a", "b")])
    assert w.flush_sync(10)
    w.close()
    st.close()
    env = lmdb.open(cache_dir, max_dbs=8)
    items = env.open_db(b"items")
    with env.begin(write=True) as txn:
        (_ka, va), (kb, _) = list(txn.cursor(db=items))
        txn.put(kb, va, db=items)  # a's sealed record under b's key
    env.close()
    st = store.Store.open(cache_dir, map_size=64 << 20)
    assert [i.name for i in st.items(key)] == ["a"] and st.corrupt_records == 1
    st.close()


def test_rv_comparison_is_uint64_decimal():
    assert store.compare_rv("9", "10") == -1 and store.compare_rv("10", "9") == 1 and store.compare_rv("5", "5") == 0
    assert store.compare_rv("18446744073709551615", "1") == 1
    for bad in ("", "abc", "-1", "1e3", "18446744073709551616", "١٢", " 1"):
        assert store.rv_number(bad) == 0 and store.compare_rv(bad, "1") is None


def test_open_existing_only(tmp_path):
    with pytest.raises(errors.NoCache):
        store.Store.open(str(tmp_path / "nothing"), create=False)


@pytest.mark.parametrize("ext", ["pb", "json"])
def test_selector_transitions(opened, ext):
    """A label-selector watch shows an object that stops matching as DELETED and one that starts as ADDED
    (apiserver cacher: an event is judged against the object before and after). That stream is derived here from
    the recorded field-selector stream, whose object bytes are real."""
    st, w = opened
    kind, av, rv, _, items = recorded.list_items(f"pods-edge1.list.{ext}.body")
    stream = recorded.watch_events(f"watch.pods-edge1.{ext}.body")
    for selector, label, value in (("backup=weekly", "backup", "weekly"), ("stage=canary", "stage", "canary")):
        key = store.ViewKey("kubelet", "", "v1", "pods", "", selector, "spec.nodeName=edge-1", "", ENC[ext])
        listed = [i for i in items if i.labels.get(label) == value]
        w.replace_view(key, store.ViewMeta(kind, av, rv, True), listed)
        matched = {i.name for i in listed}
        seen = []
        for typ, item, ev_rv, _ in stream:
            if typ == "BOOKMARK":
                w.apply_events(key, [(typ, None, ev_rv)])
                continue
            now = typ != "DELETED" and item.labels.get(label) == value
            was = item.name in matched
            if was and not now:
                w.apply_events(key, [("DELETED", item, ev_rv)])
                matched.discard(item.name)
            elif now:
                w.apply_events(key, [("MODIFIED" if was else "ADDED", item, ev_rv)])
                matched.add(item.name)
            assert w.flush_sync(10)
            seen.append(sorted(i.name for i in st.items(key)))
            assert seen[-1] == sorted(matched)
        assert w.flush_sync(10)
        meta = st.view(key)
        assert meta.complete and meta.resource_version == "315"
        if label == "backup":
            assert "db-0" in seen[0] and "db-0" not in seen[-1]  # left the selector at 309
        else:
            assert ["watch-demo-1"] in seen and seen[-1] == []  # entered at 307, deleted at 312
