"""The view's state, pure: objects, resourceVersion, the ring and what a watch from a resourceVersion gets."""

from __future__ import annotations

import json

import pytest

from edgeproxy.kube import jsonwire
from edgeproxy.pool import state

Q = state.Query("", "v1", "services", encoding="json")


def obj(name, rv):
    raw = json.dumps({"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv)}},
                     separators=(",", ":")).encode()
    return state.make_obj("services", "json", raw)


def event(typ, name, rv):
    o = obj(name, rv)
    return state.Parsed(typ, o, o.resource_version)


def fresh(max_events=3):
    st = state.ViewState(Q, max_events=max_events)
    st.replace("ServiceList", "v1", "10", [obj("a", 5), obj("b", 9)])
    return st


def test_events_change_the_objects_and_the_version():
    st = fresh()
    assert st.apply(event("ADDED", "c", 11)).type == "ADDED"
    st.apply(event("MODIFIED", "a", 12))
    st.apply(event("DELETED", "b", 13))
    assert sorted(n for _, n in st.objects) == ["a", "c"] and st.rv == "13"
    assert st.objects[("ns", "a")].resource_version == "12"
    body = json.loads(st.list_body())
    assert body["metadata"]["resourceVersion"] == "13" and [i["metadata"]["name"] for i in body["items"]] == ["a", "c"]


def test_an_event_the_view_already_holds_is_not_applied_twice():
    st = fresh()
    assert st.apply(event("MODIFIED", "a", 10)) is None
    assert st.objects[("ns", "a")].resource_version == "5" and not st.ring


def test_a_bookmark_moves_the_version_without_an_event():
    st = fresh()
    assert st.apply(state.Parsed("BOOKMARK", None, "20")) is None
    assert st.rv == "20" and st.since("10") == [] and st.since("20") == []


def test_the_ring_answers_from_its_floor_and_is_too_old_before_it():
    st = fresh(max_events=3)
    for i in range(5):
        st.apply(event("ADDED", f"n{i}", 11 + i))
    assert [e.rv for e in st.since("12")] == [13, 14, 15]
    assert st.floor == 12
    with pytest.raises(state.TooOld) as e:
        st.since("11")
    assert str(e.value) == "too old resource version: 11 (12)"


def test_the_ring_reaches_back_to_an_older_version_with_the_events_since():
    """A client whose version predates the view's list: the API server's events since it (up to a frame at or past
    the floor) make the ring reach back; the events the list already reflects come first, then the ring's own."""
    st = fresh(max_events=5)
    st.apply(event("ADDED", "c", 11))
    assert st.extend_back("7", [event("MODIFIED", "b", 9), event("ADDED", "c", 11)])
    assert st.floor == 7
    assert [(e.type, e.rv) for e in st.since("7")] == [("MODIFIED", 9), ("ADDED", 11)]
    assert [e.rv for e in st.since("9")] == [11]
    # nothing happened between 3 and 7 but what a frame past the floor proves: reaching back needs no event
    assert st.extend_back("3", []) and st.floor == 3 and [e.rv for e in st.since("3")] == [9, 11]


def test_the_ring_does_not_reach_back_past_its_bounds_or_forward():
    st = fresh(max_events=2)
    st.apply(event("ADDED", "c", 11))
    assert not st.extend_back("7", [event("MODIFIED", "a", 8), event("MODIFIED", "b", 9)])
    assert st.floor == 10 and [e.rv for e in st.since("10")] == [11]
    assert not st.extend_back("10", []) and not st.extend_back("12", []) and not st.extend_back("x", [])
    assert st.floor == 10


def test_a_relist_starts_a_new_history():
    st = fresh()
    st.apply(event("ADDED", "c", 11))
    gen = st.generation
    st.replace("ServiceList", "v1", "30", [obj("z", 29)])
    assert st.generation == gen + 1 and not st.ring and st.floor == 30
    with pytest.raises(state.TooOld):
        st.since("11")


def test_frames_are_typed_objects_in_the_api_servers_layout():
    st = fresh()
    frame = st.apply(event("ADDED", "c", 11)).frame
    ev = jsonwire.decode_event(frame)
    assert frame.endswith(b"}\n") and ev.doc["kind"] == "Service" and ev.doc["apiVersion"] == "v1"
    end = jsonwire.decode_event(st.bookmark_frame(initial_end=True)).doc
    assert end["metadata"]["annotations"][state.INITIAL_EVENTS_END] == "true"


def test_a_query_is_canonical_in_its_selectors():
    from edgeproxy.kube import request

    a = request.parse("GET", "/api/v1/services", "labelSelector=b%3D1,a%3D2", {})
    b = request.parse("GET", "/api/v1/services", "labelSelector=a%3D2,b%3D1&watch=true", {})
    assert state.Query.of(a, "json") == state.Query.of(b, "json")
    assert state.Query.of(a, "json") != state.Query.of(a, "protobuf")
    assert state.Query.of(a, "json").path == "/api/v1/services"


def in_ns(ns, name, rv=1):
    raw = json.dumps({"metadata": {"name": name, "namespace": ns, "resourceVersion": str(rv)}},
                     separators=(",", ":")).encode()
    return state.make_obj("services", "json", raw)


def test_lists_come_in_the_api_servers_key_order_and_pages_continue_after_a_key():
    st = state.ViewState(Q)
    st.replace("ServiceList", "v1", "10", [in_ns("a", "x"), in_ns("a.b", "x"), in_ns("a-b", "y"), in_ns("b", "a")])
    order = [st.key(o) for o in st.sorted_objects()]
    assert order == ["a-b/y", "a.b/x", "a/x", "b/a"]  # the etcd key's order ("/" sorts after "-" and ".")
    body, more = st.page(st.sorted_objects(), "10", limit=3)
    doc = json.loads(body)
    assert more and doc["metadata"]["remainingItemCount"] == 1 and len(doc["items"]) == 3
    assert state.decode_continue(doc["metadata"]["continue"]) == (10, "a/x")
    body, more = st.page(st.sorted_objects(), "10", after="a/x", limit=3)
    assert not more and [i["metadata"]["name"] for i in json.loads(body)["items"]] == ["a"]


@pytest.mark.parametrize("token", ["not base64 !", "bnVsbA", state.encode_continue(0, "a/x"),
                                   "eyJ2IjoibWV0YS5rOHMuaW8vdjIiLCJydiI6MSwic3RhcnQiOiJ4In0",  # v2
                                   state.encode_continue(5, "../../secrets/x")])
def test_a_continue_token_that_is_none_is_refused(token):
    with pytest.raises(ValueError, match="continue key is not valid"):
        state.decode_continue(token)
