"""cache/writer.py: group commit, the pending bound, flush, eviction, and kill -9 at random points."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cache import errors, store, writer
from tests.cache import recorded
from tests.cache.conftest import pods_key


def _list(w: writer.Writer, key: store.ViewKey, rv: str = "304") -> list[store.Item]:
    kind, av, _, _, items = recorded.list_items("pods-edge1.list.pb.body")
    w.replace_view(key, store.ViewMeta(kind, av, rv, True), items)
    return items


async def test_flush_awaits_the_commit_without_blocking_the_loop(opened):
    st, w = opened
    key = pods_key("protobuf")
    _list(w, key)
    async with asyncio.timeout(10):
        await w.flush()
    assert st.view(key).count == 15
    assert st.commits >= 1


def test_past_the_pending_bound_writes_are_dropped_and_the_view_marked_incomplete(cache_dir):
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st, max_pending_bytes=200_000)
    key = pods_key("protobuf")
    other = pods_key("json")
    _list(w, key)  # ~61 KB queued
    _list(w, other)
    events = [(t, i, rv) for t, i, rv, _ in recorded.watch_events("watch.pods-edge1.pb.body")]
    for _ in range(100):  # the writer is not started: nothing drains, the bound is reached, nothing blocks
        w.apply_events(key, events)
    assert st.writes_dropped > 0
    assert w.pending_bytes <= 200_000
    w.start()
    assert w.flush_sync(10)
    assert st.view(key).complete is False  # it lost events
    assert st.view(other).complete is True  # it lost nothing
    _list(w, key, rv="400")  # a relist after the drop makes it whole again
    assert w.flush_sync(10)
    assert st.view(key).complete is True
    w.close()
    st.close()


def test_a_chunk_dropped_from_a_list_assembly_aborts_it(cache_dir):
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st, max_pending_bytes=100_000)
    key = pods_key("protobuf")
    kind, av, rv, _, items = recorded.list_items("pods-edge1.list.pb.body")
    w.replace_view(key, store.ViewMeta(kind, av, "300", True), items[:1])
    asm = w.begin_list(key, kind, av)
    for _ in range(40):
        asm.add(items)  # 600 items: shipped in chunks, some past the bound
    asm.commit(rv)
    w.start()
    assert w.flush_sync(10)
    meta = st.view(key)
    assert meta.resource_version == "300" and meta.count == 1 and meta.complete is False
    assert st.stats()["items"] == 1
    w.close()
    st.close()


def test_one_writer_per_cache(cache_dir, opened):
    st, _ = opened
    with pytest.raises(errors.WriterBusy):
        writer.Writer(st).start()


def test_a_killed_writers_half_assembled_list_is_swept(cache_dir):
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    key = pods_key("protobuf")
    kind, av, _, _, items = recorded.list_items("pods-edge1.list.pb.body")
    asm = w.begin_list(key, kind, av)
    asm.add(items * 40)  # shipped: staged in LMDB
    assert w.flush_sync(10)
    assert st.stats()["items"] == 15 and st.verify().ok
    w.close()  # as if killed: the assembly never ends
    w = writer.Writer(st).start()
    assert w.flush_sync(10)
    assert st.stats()["items"] == 0 and st.view(key) is None
    w.close()
    st.close()


def _view(client: str, n: int) -> store.ViewKey:
    return store.ViewKey(client, "", "v1", "configmaps", f"ns{n}", "", "", "", "json")


def _fill(w: writer.Writer, key: store.ViewKey) -> None:
    items = [store.Item(f"cm{i:03}", key.namespace, "5", {}, {}, b"v" * 1500) for i in range(40)]
    w.replace_view(key, store.ViewMeta("ConfigMapList", "v1", "5", True), items)
    assert w.flush_sync(10)


def test_eviction_drops_least_recently_used_views_node_agents_last(cache_dir):
    st = store.Store.open(cache_dir, map_size=64 << 20, max_bytes=None)
    st.max_bytes = 0  # no bound while measuring
    w = writer.Writer(st).start()
    a, b = _view("kubectl", 1), _view("kubectl@x1", 2)
    kubelet, coredns = _view("kubelet", 3), _view("coredns@ab12", 4)
    base = st.used_bytes()
    for key in (a, b, kubelet, coredns):
        _fill(w, key)
    one = (st.used_bytes() - base) // 4
    st.max_bytes = st.used_bytes() + one // 2  # room for four views, not five
    st.low_water = 1.0
    st.items(a)  # a is read: now b is the least recently used

    present = lambda: {k.namespace for k, _ in st.views()}  # noqa: E731
    order = []
    for n in range(5, 9):
        before = present()
        _fill(w, _view("kubectl", n))
        order += sorted(before - present())
    assert order == ["ns2", "ns1", "ns5", "ns6"]  # b, then a, then the newer kubectl views; agents kept
    assert {"ns3", "ns4"} <= present()
    assert st.evictions == 4

    big = _view("kubelet", 9)
    items = [store.Item(f"cm{i:03}", "ns9", "5", {}, {}, b"v" * 1500) for i in range(120)]
    w.replace_view(big, store.ViewMeta("ConfigMapList", "v1", "5", True), items)
    assert w.flush_sync(10)
    # a big kubelet view: the other clients' views go first, then the agents' least recently used one
    assert present() == {"ns4", "ns9"}
    assert st.verify().ok
    w.close()
    st.close()


# ------------------------------------------------------------------ kill -9 at random points

N_VIEWS = 3


def _names(k: int) -> int:
    return 3 + (k * 7) % 11


def _state_items(v: int, k: int) -> list[store.Item]:
    return [store.Item(f"p{j:02}", "ns", str(k * 1000 + j), {"k": str(k)}, {}, b"%d:%d:%d|" % (v, k, j) * 60)
            for j in range(_names(k))]


def _child(path: str, wfd: int, seed: int) -> None:
    rnd = random.Random(seed)
    st = store.Store.open(path, map_size=64 << 20)
    w = writer.Writer(st, interval=0.001).start()
    keys = [store.ViewKey("c", "", "v1", "pods", f"v{v}", "", "", "", "json") for v in range(N_VIEWS)]
    k = 1
    while True:
        for v, key in enumerate(keys):
            items = _state_items(v, k)
            meta = store.ViewMeta("PodList", "v1", str(k * 1000 + 999), True)
            how = rnd.randrange(3) if k > 1 else 0
            if how == 0:
                w.replace_view(key, meta, items)
            elif how == 1:
                asm = w.begin_list(key, "PodList", "v1")
                for i in range(0, len(items), 4):
                    asm.add(items[i : i + 4])
                    asm._ship()  # a chunk per add, as limit/continue pages come
                    if rnd.random() < 0.5:
                        w.flush_sync(10)  # pages committed on their own: a kill can find them staged
                asm.commit(meta.resource_version)
            else:
                events = [("MODIFIED", it, it.resource_version) for it in items]
                events += [("DELETED", store.Item(f"p{j:02}", "ns", "", {}, {}, b""), str(k * 1000 + 500 + j))
                           for j in range(_names(k), _names(k - 1))]
                events.append(("BOOKMARK", None, meta.resource_version))
                w.apply_events(key, events)
        assert w.flush_sync(10)
        os.write(wfd, b"%d\n" % k)  # state k of every view is committed
        k += 1


def _check(path: str, acked: int) -> None:
    st = store.Store.open(path, map_size=64 << 20, create=False)
    try:
        report = st.verify()
        assert report.ok, report.problems
        for v in range(N_VIEWS):
            key = store.ViewKey("c", "", "v1", "pods", f"v{v}", "", "", "", "json")
            got = st.read_view(key)
            if got is None:
                assert acked == 0
                continue
            meta, items = got
            k = int(meta.resource_version) // 1000
            assert k >= acked and meta.complete  # nothing acknowledged is lost
            assert [(i.name, i.resource_version, i.raw) for i in items] == [
                (i.name, i.resource_version, i.raw) for i in _state_items(v, k)]
    finally:
        st.close()


def test_kill_9_at_random_points_leaves_a_consistent_store(tmp_path):
    path = str(tmp_path / "crash")
    rnd = random.Random(4242)
    acked_total = 0
    for run in range(50):
        r, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child writes until killed; never returns into pytest
            try:
                os.close(r)
                _child(path, wfd, run)
            finally:
                os._exit(1)
        os.close(wfd)
        with os.fdopen(r, "rb", buffering=0) as pipe:
            first = pipe.readline()  # the child is up and has committed once
            assert first, "child died before its first commit"
            _kill_point(rnd.random() * 0.025)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            acked = int(first)
            for line in pipe.read().splitlines():
                acked = int(line)
        acked_total += acked
        _check(path, acked)
    assert acked_total > 50  # the kills did land at different points of a running writer


def _kill_point(seconds: float) -> None:
    time.sleep(seconds)  # the random moment of the kill itself, not a synchronisation


def test_a_malformed_item_fails_in_the_writer_not_in_the_caller(opened):
    st, w = opened
    key = pods_key("json")
    good = _list(w, key)
    w.apply_events(key, [("MODIFIED", store.Item("x", "edge", "900", {}, {}, None), "900")])  # raw None
    w.replace_view(pods_key("json", client="kubectl"), store.ViewMeta("PodList", "v1", "1", True), [object()])
    w.apply_events(key, [("MODIFIED", good[0], "905")])
    assert w.flush_sync(10)
    assert st.writes_failed == 2
    assert st.view(key).complete is False  # it lost an event
    assert st.item(key, good[0].namespace, good[0].name) is not None
    assert st.view(pods_key("json", client="kubectl")) is None
    assert w.stats()["pending_bytes"] == 0
    assert st.verify().ok


# ------------------------------------------------------------------ against a model


class _Model:
    """What the store must hold: views as dicts, with the event rules of Store.apply_events."""

    def __init__(self):
        self.views: dict[int, list] = {}  # v -> [rv, complete, {name: (rv, raw)}]

    def replace(self, v, rv, items):
        self.views[v] = [rv, True, {i.name: (int(i.resource_version), i.raw) for i in items}]

    def events(self, v, events):
        view = self.views.get(v)
        if view is None:
            return
        for typ, item, rv in events:
            rvn = int(rv)
            if typ == "BOOKMARK":
                view[0] = max(view[0], rvn)
                continue
            if rvn <= view[0]:
                continue
            old = view[2].get(item.name)
            if old is not None and old[0] > rvn:
                continue
            if typ == "DELETED":
                view[2].pop(item.name, None)
            else:
                view[2][item.name] = (rvn, item.raw)
            view[0] = max(view[0], rvn)

    def incomplete(self, v):
        if v in self.views:
            self.views[v][1] = False


def test_random_operations_match_a_model_across_reopens(cache_dir):
    rnd = random.Random(7)
    keys = [store.ViewKey(f"client{v % 2}", "", "v1", "configmaps", "", "", "", "", "json") for v in range(2)]
    keys += [store.ViewKey("kubelet", "", "v1", "secrets", f"ns{v}", "", "", "", "protobuf") for v in range(2)]
    model = _Model()
    rv = 100
    names = [f"n{i:02}" for i in range(12)]

    def item(name, rvn):
        return store.Item(name, "ns", str(rvn), {"r": str(rvn)}, {}, b"%s@%d;" % (name.encode(), rvn) * 20)

    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    assemblies: dict[int, tuple] = {}
    for step in range(400):
        v = rnd.randrange(len(keys))
        op = rnd.random()
        rv += rnd.randrange(1, 4)
        if op < 0.15:
            items = [item(n, rv - rnd.randrange(0, 50)) for n in rnd.sample(names, rnd.randrange(0, 8))]
            w.replace_view(keys[v], store.ViewMeta("L", "v1", str(rv), True), items)
            model.replace(v, rv, items)
        elif op < 0.25 and v not in assemblies:
            assemblies[v] = (w.begin_list(keys[v], "L", "v1"), [])
        elif op < 0.35 and v in assemblies:
            asm, got = assemblies[v]
            items = [item(n, rv - rnd.randrange(0, 50)) for n in rnd.sample(names, 3)]
            asm.add(items)
            asm._ship()
            got.extend(items)
        elif op < 0.42 and v in assemblies:
            asm, got = assemblies.pop(v)
            if rnd.random() < 0.7:
                asm.commit(str(rv))
                model.replace(v, rv, list({i.name: i for i in got}.values()))
            else:
                asm.abort()
        elif op < 0.45:
            w.mark_incomplete(keys[v])
            model.incomplete(v)
        else:
            events = []
            for _ in range(rnd.randrange(1, 6)):
                rv += 1
                ev_rv = rv if rnd.random() < 0.85 else rv - rnd.randrange(1, 30)  # some stale deliveries
                typ = rnd.choice(["ADDED", "MODIFIED", "MODIFIED", "DELETED", "BOOKMARK"])
                events.append((typ, None if typ == "BOOKMARK" else item(rnd.choice(names), ev_rv), str(ev_rv)))
            w.apply_events(keys[v], events)
            model.events(v, events)
        if step % 40 == 39:
            assert w.flush_sync(10)
            if step % 120 == 119:  # reopen: what is on disk is what the model says
                w.close()
                st.close()
                assemblies.clear()  # a new writer sweeps half-assembled lists
                st = store.Store.open(cache_dir, map_size=64 << 20)
                w = writer.Writer(st).start()
                assert w.flush_sync(10)
            for i, key in enumerate(keys):
                got = st.read_view(key)
                want = model.views.get(i)
                if want is None:
                    assert got is None
                    continue
                meta, items = got
                assert (int(meta.resource_version), meta.complete) == (want[0], want[1])
                assert {x.name: (int(x.resource_version), x.raw) for x in items} == want[2]
                assert [x.name for x in items] == sorted(want[2])
            assert st.verify().ok
    assert st.events_ignored > 0 and st.events_applied > 0 and st.lists_replaced > 0  # every rule was exercised
    w.close()
    st.close()


def test_a_get_answer_already_stored_is_not_written_again(cache_dir):
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    okey = store.ObjectKey("kubelet", "", "v1", "configmaps", "edge", "web-config")
    secret = store.ObjectKey("kubelet", "", "v1", "secrets", "edge", "tls")  # sealed: compared after opening
    for k in (okey, secret):
        w.put_object(k, b"one")
    assert w.flush_sync(10)
    commits = st.commits
    for k in (okey, secret):
        w.put_object(k, b"one")  # the same bytes: nothing queued
    assert w.objects_unchanged == 2 and w.pending_ops == 0
    w.put_object(okey, b"two")
    assert w.flush_sync(10) and st.get_object(okey) == b"two" and st.commits > commits
    st.purge()  # the operator's purge (any process): the next answer is stored again
    w.put_object(okey, b"two")
    assert w.flush_sync(10) and st.get_object(okey) == b"two"
    assert w.objects_unchanged == 2
    w.put_object(okey, b"two")  # unchanged: the verdict is remembered until anything is committed
    assert w.objects_unchanged == 3
    subprocess.run([sys.executable, "-c", "import sys; from cache import store; "
                    "store.Store.open(sys.argv[1], map_size=64 << 20).purge()", str(cache_dir)],
                   check=True, cwd=Path(__file__).parents[2], timeout=60)  # a purge by another process
    w.put_object(okey, b"two")
    assert w.flush_sync(10) and st.get_object(okey) == b"two"
    assert w.objects_unchanged == 3
    w.close()
    st.close()


def test_a_get_answer_is_compared_with_the_store_only_when_no_write_to_it_is_queued(cache_dir):
    st = store.Store.open(cache_dir, map_size=64 << 20)
    w = writer.Writer(st).start()
    okey = store.ObjectKey("kubelet", "coordination.k8s.io", "v1", "leases", "kube-node-lease", "edge-1")
    w.put_object(okey, b"one")
    assert w.flush_sync(10)
    w.close()
    w = writer.Writer(st)  # not started: what it is handed stays queued
    w.put_object(okey, b"two")
    w.put_object(okey, b"one")  # the store holds "one", but "two" is queued before it: written
    w.delete_object(okey)
    w.put_object(okey, b"one")
    assert w.objects_unchanged == 0 and w.pending_ops == 4
    w.start()
    assert w.flush_sync(10) and st.get_object(okey) == b"one"
    w.put_object(okey, b"one")
    assert w.objects_unchanged == 1
    w.close()
    st.close()
