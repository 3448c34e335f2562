"""Watch: events from a resourceVersion, selector transitions, bookmarks, 410 for a compacted history, watch-list
with the initial-events-end bookmark, timeoutSeconds, compared with the recorded streams where one exists."""

from __future__ import annotations

import base64
import json
import struct

import pytest

from edgeproxy.kube import protobuf
from tests.sim.conftest import FIXTURES
from tests.sim.streams import Stream, rv

PROTOBUF = "application/vnd.kubernetes.protobuf"
EDGE1 = "fieldSelector=spec.nodeName%3Dedge-1"


def _demo_pod(name: str, node: str) -> dict:
    first = json.loads((FIXTURES / "watch.pods-edge1.json.body").read_bytes().splitlines()[0])["object"]
    spec = dict(first["spec"], nodeName=node)
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": "edge", "labels": {"app": "watch-demo"}},
        "spec": spec,
    }


def _recorded_events(name: str) -> list[tuple[str, dict]]:
    return [(d["type"], d["object"]) for d in map(json.loads, (FIXTURES / name).read_bytes().splitlines())]


def _replay_fixture_writes(sim) -> None:
    """The writes the recorded watch saw (INDEX.md: watch.pods-edge1), in the same order."""
    sim.create("pods", _demo_pod("watch-demo-1", "edge-1"))  # 305
    sim.create("pods", _demo_pod("watch-demo-2", "edge-2"))  # 306: other node, never seen
    sim.patch("pods", "watch-demo-1", {"metadata": {"labels": {"stage": "canary"}}}, namespace="edge")  # 307
    sim.patch(
        "pods",
        "watch-demo-1",
        {
            "status": {
                "phase": "Running",
                "hostIP": "192.0.2.11",
                "podIP": "10.244.1.99",
                "podIPs": [{"ip": "10.244.1.99"}],
            }
        },
        namespace="edge",
        subresource="status",
        content_type="application/strategic-merge-patch+json",
    )  # 308
    sim.patch("pods", "db-0", {"metadata": {"labels": {"backup": "nightly"}}}, namespace="edge")  # 309
    assert not sim.delete("pods", "watch-demo-1", "edge")  # 310: deletionTimestamp, grace 30
    assert sim.delete("pods", "watch-demo-1", "edge", grace=0)  # 311 MODIFIED grace 0, 312 DELETED


@pytest.mark.parametrize("accept", ["application/json", PROTOBUF])
async def test_watch_from_rv_matches_the_recorded_stream(sim, admin, accept):
    path = f"/api/v1/pods?watch=true&{EDGE1}&resourceVersion=304&allowWatchBookmarks=true&timeoutSeconds=1"
    async with admin.get(path, headers={"Accept": accept}) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == (protobuf.WATCH_CONTENT_TYPE if accept == PROTOBUF else accept)
        stream = Stream(r)
        _replay_fixture_writes(sim)
        got = await stream.rest()
    want = _recorded_events("watch.pods-edge1.json.body")
    assert [(t, o["metadata"].get("name"), rv(o)) for t, o in got[:-1]] == [
        (t, o["metadata"].get("name"), rv(o)) for t, o in want[:-1]
    ]
    assert [o["metadata"].get("labels") for _, o in got[:-1]] == [o["metadata"].get("labels") for _, o in want[:-1]]
    assert [o["metadata"].get("deletionGracePeriodSeconds") for _, o in got[:-1]] == [
        o["metadata"].get("deletionGracePeriodSeconds") for _, o in want[:-1]
    ]
    (bt, bookmark), (wt, recorded_bookmark) = got[-1], want[-1]
    assert bt == wt == "BOOKMARK"
    assert rv(bookmark) == str(sim.store.rv)
    assert bookmark == dict(recorded_bookmark, metadata={"resourceVersion": rv(bookmark), "creationTimestamp": None})


async def test_bookmark_frames_are_the_recorded_bytes(sim, admin):
    recorded = (FIXTURES / "watch.pods-edge1.pb.body").read_bytes()
    frames, pos = [], 0
    while pos < len(recorded):
        (n,) = struct.unpack(">I", recorded[pos : pos + 4])
        frames.append(recorded[pos : pos + 4 + n])
        pos += 4 + n
    sim.store.rv = 315
    path = f"/api/v1/pods?watch=true&{EDGE1}&resourceVersion=315&allowWatchBookmarks=true&timeoutSeconds=1"
    async with admin.get(path, headers={"Accept": PROTOBUF}) as r:
        body = await r.read()
    assert body == frames[-1]


@pytest.mark.parametrize("accept", ["application/json", PROTOBUF])
async def test_selector_transitions_are_added_and_deleted(sim, admin, accept):
    path = "/api/v1/namespaces/edge/pods?watch=true&labelSelector=stage%3Dcanary&resourceVersion=304&timeoutSeconds=1"
    async with admin.get(path, headers={"Accept": accept}) as r:
        stream = Stream(r)
        sim.patch("pods", "db-0", {"metadata": {"labels": {"stage": "canary"}}}, namespace="edge")  # 305 starts
        sim.patch("pods", "db-0", {"metadata": {"labels": {"other": "x"}}}, namespace="edge")  # 306 still
        sim.patch("pods", "db-0", {"metadata": {"labels": {"stage": None}}}, namespace="edge")  # 307 stops
        got = await stream.rest()
    assert [(t, rv(o)) for t, o in got] == [("ADDED", "305"), ("MODIFIED", "306"), ("DELETED", "307")]
    assert got[2][1]["metadata"]["labels"]["stage"] == "canary"  # the previous object, with the new RV


@pytest.mark.parametrize("accept", ["application/json", PROTOBUF])
async def test_too_old_rv_is_200_with_one_error_event(sim, admin, accept):
    for i in range(13):  # 305..317, then the history is compacted as in the recording
        sim.patch("configmaps", "web-config", {"data": {"N": str(i)}}, namespace="edge")
    sim.compact()
    path = f"/api/v1/pods?watch=true&{EDGE1}&resourceVersion=304&allowWatchBookmarks=true&timeoutSeconds=5"
    async with admin.get(path, headers={"Accept": accept}) as r:
        assert r.status == 200
        body = await r.read()
    name = "gone.watch-old-rv.pb.body" if accept == PROTOBUF else "gone.watch-old-rv.json.body"
    assert body == (FIXTURES / name).read_bytes()


@pytest.mark.parametrize("accept", ["application/json", PROTOBUF])
async def test_watch_list_sends_state_then_the_end_bookmark(sim, admin, accept):
    path = (
        f"/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        f"&allowWatchBookmarks=true&{EDGE1}&timeoutSeconds=1"
    )
    _replay_fixture_writes(sim)  # recorded after the watch above: db-0 at 309
    sim.store.rv = 316
    async with admin.get(path, headers={"Accept": accept}) as r:
        stream = Stream(r)
        got = await stream.rest()
    want = _recorded_events("watchlist.pods-edge1.json.body")
    assert [(t, o["metadata"].get("name"), rv(o)) for t, o in got[:16]] == [
        (t, o["metadata"].get("name"), rv(o)) for t, o in want
    ]
    untouched = [i for i, (_, o) in enumerate(want[:15]) if o["metadata"]["name"] != "db-0"]
    assert [got[i][1] for i in untouched] == [want[i][1] for i in untouched]
    end = got[15][1]["metadata"]["annotations"]
    assert end["k8s.io/initial-events-end"] == "true"
    blueprint = base64.b64decode(end["kubernetes.io/initial-events-list-blueprint"])
    if accept == PROTOBUF:
        recorded = protobuf.decode_event(_pb_frames("watchlist.pods-edge1.pb.body")[15])
        assert stream.raw[15] == _pb_frames("watchlist.pods-edge1.pb.body")[15]
        assert recorded.type == "BOOKMARK"
        assert protobuf.unwrap(blueprint).kind == "PodList"
    else:
        assert got[15][1] == want[15][1]
        assert json.loads(blueprint) == {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": None}
    assert [t for t, _ in got[16:]] in ([], ["BOOKMARK"])


def _pb_frames(name: str) -> list[bytes]:
    data, frames, pos = (FIXTURES / name).read_bytes(), [], 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        frames.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return frames


async def test_watch_from_zero_lists_then_follows(sim, admin):
    async with admin.get(f"/api/v1/pods?watch=1&{EDGE1}&resourceVersion=0&timeoutSeconds=1") as r:
        stream = Stream(r)
        sim.create("pods", _demo_pod("late", "edge-1"))
        got = await stream.rest()
    assert [t for t, _ in got] == ["ADDED"] * 16
    assert got[-1][1]["metadata"]["name"] == "late"


async def test_periodic_bookmarks_carry_the_current_rv(tmp_path):
    from edgeproxy import sim as sim_pkg

    s = sim_pkg.Simulator(pki_dir=tmp_path, bookmark_interval=0.1)
    await s.start()
    try:
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=s.client_ssl())) as c:
            url = f"{s.url}/api/v1/nodes?watch=true&resourceVersion=304&allowWatchBookmarks=true&timeoutSeconds=30"
            async with c.get(url) as r:
                stream = Stream(r)
                s.patch("configmaps", "web-config", {"data": {"x": "1"}}, namespace="edge")
                t, obj = await stream.next()
                assert t == "BOOKMARK" and rv(obj) == "305"
                assert obj["status"]["nodeInfo"]["kubeletVersion"] == ""  # a Go-zero Node, as the server sends
    finally:
        await s.stop()


async def test_watch_rv_from_the_future_is_an_error_event(sim, admin):
    async with admin.get("/api/v1/pods?watch=true&resourceVersion=999&timeoutSeconds=5") as r:
        assert r.status == 200
        got = await Stream(r).rest()
    assert len(got) == 1 and got[0][0] == "ERROR" and got[0][1]["code"] == 504


async def test_send_initial_events_requires_bookmarks_and_not_older_than(admin):
    async with admin.get("/api/v1/pods?watch=true&sendInitialEvents=true") as r:
        assert r.status == 422


async def test_a_watch_whose_client_left_is_dropped(sim, admin):
    import asyncio

    async with admin.get("/api/v1/pods?watch=true&resourceVersion=304") as r:
        assert r.status == 200
        async with asyncio.timeout(5):
            while not sim.api.watches:
                await asyncio.sleep(0.01)
        r.close()
    async with asyncio.timeout(5):
        while sim.api.watches or sim.store.watchers["pods"]:
            await asyncio.sleep(0.01)
