"""A LIST racing a WATCH on the same view (issue 14 D1): the view is always a state the cluster had, and never goes
back in time, whatever the order in which lists (at any resourceVersion) and the watch's events reach the store.

The cluster is a history of single-object changes at resourceVersions 101, 102, ...; the recorder delivers one
watch's events in order, interleaved with lists taken at any point of the history (a LIST answered from the API
server's watch cache may be older than the watch; a fresh one may be ahead of it), as a kubelet-style reflector and a
loop of plain LISTs of the same query produce them.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache import store

NAMES = ("a", "b", "c", "d")
BASE = 100
_views = itertools.count()


def history(changes: list[tuple[str, str]]) -> tuple[list[dict[str, int]], list[tuple[str, str, int]]]:
    """The cluster's states (index i: the state at resourceVersion BASE+i) and its events (type, name, rv)."""
    state: dict[str, int] = {}
    states = [dict(state)]
    events = []
    for i, (what, name) in enumerate(changes, start=1):
        rv = BASE + i
        if what == "delete" and name in state:
            del state[name]
            events.append(("DELETED", name, rv))
        else:
            typ = "MODIFIED" if name in state else "ADDED"
            state[name] = rv
            events.append((typ, name, rv))
        states.append(dict(state))
    return states, events


def item(name: str, rv: int) -> store.Item:
    return store.Item(name, "edge", str(rv), {}, {}, f"{name}@{rv}".encode())


def held(st: store.Store, key: store.ViewKey) -> tuple[int, dict[str, int]]:
    meta, items = st.read_view(key)
    assert all(i.raw == f"{i.name}@{i.resource_version}".encode() for i in items)
    return int(meta.resource_version), {i.name: int(i.resource_version) for i in items}


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    st = store.Store.open(str(tmp_path_factory.mktemp("races")), map_size=256 << 20, durable=False)
    yield st
    st.close()


changes_st = st.lists(st.tuples(st.sampled_from(("put", "put", "delete")), st.sampled_from(NAMES)), min_size=1,
                      max_size=25)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=changes_st, data=st.data())
def test_lists_and_watch_events_in_any_order_leave_only_states_the_cluster_had(shared_store, changes, data):
    st_ = shared_store
    states, events = history(changes)
    key = store.ViewKey(f"kubelet-{next(_views)}", "", "v1", "pods", "", "", "spec.nodeName=edge-1", "", "json")
    start = data.draw(st.integers(0, len(events)), label="the reflector's list")
    delivered = start  # events[start:] come on its watch, in order
    plan = [("list", start)]
    while delivered < len(events):
        if data.draw(st.booleans(), label="another list now?"):
            plan.append(("list", data.draw(st.integers(0, len(events)), label="its resourceVersion")))
        n = data.draw(st.integers(1, 3), label="events in this batch")
        plan.append(("events", delivered, min(len(events), delivered + n)))
        delivered = min(len(events), delivered + n)
    last_rv = 0
    for step in plan:
        with st_.env.begin(write=True) as txn:
            if step[0] == "list":
                at = step[1]
                st_.apply_replace(txn, key, store.ViewMeta("PodList", "v1", str(BASE + at), True),
                                  [item(n, rv) for n, rv in states[at].items()])
            else:
                batch = [(typ, item(name, rv), str(rv)) for typ, name, rv in events[step[1]:step[2]]]
                st_.apply_events(txn, key, batch)
        rv, items = held(st_, key)
        assert rv >= last_rv, f"the view went back from {last_rv} to {rv} after {step}"
        assert items == states[rv - BASE], f"after {step}: a state the cluster never had at {rv}"
        last_rv = rv
    assert held(st_, key) == (BASE + len(events), states[-1])  # the watch brought it to the end of the history
