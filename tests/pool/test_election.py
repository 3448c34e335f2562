"""Pool leader election's decisions: client-go leaderelection semantics on a coordination.k8s.io/v1 Lease."""

from __future__ import annotations

import copy

import pytest

from edgeproxy.pool import election, errors
from edgeproxy.pool.election import Outcome, Role, Step

T0 = 1_000.0  # monotonic
WALL = 1_764_000_000.5


def cfg(identity: str = "edge-1", address: str = "10.0.0.1:10268", **kw) -> election.Config:
    return election.Config(pool="branch-7", identity=identity, address=address, **kw)


def lease(holder: str, renew: str = "2026-12-04T18:00:00.000000Z", duration: int = 15, transitions: int = 0,
          rv: str = "100", address: str | None = "10.0.0.9:10268") -> dict:
    md: dict = {"name": "edgeproxy-pool-branch-7", "namespace": "edgeproxy", "resourceVersion": rv}
    if address is not None:
        md["annotations"] = {election.ADDRESS_ANNOTATION: address}
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": md,
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration, "renewTime": renew,
                     "acquireTime": "2026-12-04T17:00:00.000000Z", "leaseTransitions": transitions}}


def written(body: dict, rv: str) -> dict:
    out = copy.deepcopy(body)
    out["metadata"]["resourceVersion"] = rv
    return out


def test_no_lease_creates_one_holding_it_and_advertising_the_address():
    e = election.Election(cfg())
    a = e.plan(None, T0, WALL)
    assert a.step is Step.CREATE
    assert a.body["metadata"]["name"] == "edgeproxy-pool-branch-7"
    assert a.body["metadata"]["namespace"] == "edgeproxy"
    assert a.body["metadata"]["annotations"][election.ADDRESS_ANNOTATION] == "10.0.0.1:10268"
    assert a.body["metadata"]["labels"][election.POOL_LABEL] == "branch-7"
    spec = a.body["spec"]
    assert spec["holderIdentity"] == "edge-1" and spec["leaseDurationSeconds"] == 15
    assert spec["renewTime"] == spec["acquireTime"] == "2025-11-24T16:00:00.500000Z"
    assert spec["leaseTransitions"] == 0
    assert e.view(T0).role is Role.CANDIDATE  # nothing written yet
    e.outcome(Outcome.OK, written(a.body, "101"), T0)
    assert e.view(T0) == election.View(Role.LEADER, "edge-1")


def test_renewal_keeps_acquire_time_and_transitions_and_sends_the_resource_version_read():
    e = election.Election(cfg())
    current = lease("edge-1", transitions=3, rv="555")
    a = e.plan(current, T0, WALL)
    assert a.step is Step.RENEW
    assert a.body["metadata"]["resourceVersion"] == "555"  # optimistic concurrency
    assert a.body["spec"]["acquireTime"] == "2026-12-04T17:00:00.000000Z"
    assert a.body["spec"]["leaseTransitions"] == 3
    assert a.body["spec"]["renewTime"] == "2025-11-24T16:00:00.500000Z"
    assert current["metadata"]["annotations"][election.ADDRESS_ANNOTATION] == "10.0.0.9:10268"  # input untouched


def test_a_live_lease_of_another_node_is_followed_and_its_address_noted():
    e = election.Election(cfg())
    a = e.plan(lease("edge-2"), T0, WALL)
    assert a == election.Action(Step.WAIT)
    assert e.view(T0) == election.View(Role.FOLLOWER, "edge-2", ("10.0.0.9", 10268))


def test_a_free_lease_is_taken_over_at_once_counting_no_transition():
    e = election.Election(cfg())
    a = e.plan(lease("", transitions=4), T0, WALL)
    assert a.step is Step.ACQUIRE
    assert a.body["spec"]["leaseTransitions"] == 4
    assert a.body["spec"]["acquireTime"] == a.body["spec"]["renewTime"]


def test_an_expired_lease_is_taken_over_after_one_full_duration_on_our_own_clock():
    e = election.Election(cfg())
    old = lease("edge-2", transitions=2)
    assert e.plan(old, T0, WALL).step is Step.WAIT
    assert e.plan(old, T0 + 14.9, WALL).step is Step.WAIT
    assert e.view(T0 + 14.9).role is Role.FOLLOWER
    assert e.view(T0 + 15).role is Role.CANDIDATE  # expired: the follower goes back to the API server
    a = e.plan(old, T0 + 15, WALL)
    assert a.step is Step.ACQUIRE
    assert a.body["spec"]["leaseTransitions"] == 3
    assert a.body["spec"]["holderIdentity"] == "edge-1"
    assert a.body["metadata"]["annotations"][election.ADDRESS_ANNOTATION] == "10.0.0.1:10268"


def test_each_renewal_seen_restarts_the_expiry():
    e = election.Election(cfg())
    e.plan(lease("edge-2", renew="2026-12-04T18:00:00.000000Z"), T0, WALL)
    e.plan(lease("edge-2", renew="2026-12-04T18:00:10.000000Z"), T0 + 10, WALL)
    assert e.plan(lease("edge-2", renew="2026-12-04T18:00:10.000000Z"), T0 + 24, WALL).step is Step.WAIT
    assert e.plan(lease("edge-2", renew="2026-12-04T18:00:10.000000Z"), T0 + 25, WALL).step is Step.ACQUIRE


@pytest.mark.parametrize("renew", ["1999-01-01T00:00:00.000000Z", "2099-01-01T00:00:00.000000Z", "garbage", None])
def test_clock_skew_never_decides_expiry(renew):
    """The holder's renewTime, however far from our wall clock (or unreadable), neither expires a lease that is
    being renewed nor keeps alive one that is not."""
    e = election.Election(cfg())
    first = lease("edge-2", renew=renew)
    assert e.plan(first, T0, WALL).step is Step.WAIT  # first sight of a record: a full duration to wait
    second = lease("edge-2", renew=f"{renew}-renewed")
    assert e.plan(second, T0 + 10, WALL + 10_000_000).step is Step.WAIT  # our wall clock leapt: irrelevant
    assert e.plan(second, T0 + 24.9, WALL).step is Step.WAIT
    assert e.plan(second, T0 + 25, WALL - 10_000_000).step is Step.ACQUIRE


def test_a_starting_node_waits_a_full_duration_even_for_a_stale_looking_lease():
    e = election.Election(cfg())
    assert e.plan(lease("edge-2", renew="2020-01-01T00:00:00.000000Z"), T0, WALL).step is Step.WAIT


def test_of_two_nodes_racing_for_a_free_lease_the_loser_of_the_conflict_follows():
    a, b = election.Election(cfg("edge-1", "10.0.0.1:1")), election.Election(cfg("edge-2", "10.0.0.2:2"))
    free = lease("", rv="7")
    pa, pb = a.plan(free, T0, WALL), b.plan(free, T0, WALL)
    assert pa.step is pb.step is Step.ACQUIRE
    assert pa.body["metadata"]["resourceVersion"] == pb.body["metadata"]["resourceVersion"] == "7"
    a.outcome(Outcome.OK, written(pa.body, "8"), T0)
    b.outcome(Outcome.CONFLICT, None, T0)  # the API server refused b's write carrying the stale "7"
    assert a.view(T0).role is Role.LEADER
    assert b.view(T0).role is Role.CANDIDATE
    assert b.plan(written(pa.body, "8"), T0 + 2, WALL).step is Step.WAIT
    assert b.view(T0 + 2) == election.View(Role.FOLLOWER, "edge-1", ("10.0.0.1", 1))


def test_a_create_race_lost_is_no_leadership():
    e = election.Election(cfg())
    e.plan(None, T0, WALL)
    e.outcome(Outcome.CONFLICT, None, T0)  # 409 AlreadyExists
    assert not e.leading(T0)


def test_a_leader_whose_renewals_fail_stops_leading_at_the_renew_deadline_before_the_lease_expires():
    e = election.Election(cfg(renew_deadline=10.0))
    a = e.plan(lease("edge-1"), T0, WALL)
    e.outcome(Outcome.OK, written(a.body, "101"), T0)
    for t in (2.0, 4.0, 6.0, 8.0):
        e.plan(written(a.body, "101"), T0 + t, WALL)
        e.outcome(Outcome.FAILED, None, T0 + t)
        assert e.view(T0 + t).role is Role.LEADER
    assert e.leading(T0 + 9.99)
    assert not e.leading(T0 + 10)
    assert e.view(T0 + 10).role is Role.CANDIDATE  # no one else can hold it yet (15 s), but we stopped serving


def test_a_successful_renewal_extends_leadership():
    e = election.Election(cfg())
    a = e.plan(None, T0, WALL)
    e.outcome(Outcome.OK, written(a.body, "1"), T0)
    r = e.plan(written(a.body, "1"), T0 + 8, WALL + 8)
    e.outcome(Outcome.OK, written(r.body, "2"), T0 + 8)
    assert e.leading(T0 + 17)


def test_a_leader_that_reads_another_holder_steps_down_at_once():
    e = election.Election(cfg())
    a = e.plan(None, T0, WALL)
    e.outcome(Outcome.OK, written(a.body, "1"), T0)
    assert e.plan(lease("edge-2", rv="2"), T0 + 2, WALL).step is Step.WAIT
    assert e.view(T0 + 2).role is Role.FOLLOWER
    assert e.transitions_seen == 1


def test_release_writes_a_free_lease_of_one_second_without_the_address():
    e = election.Election(cfg())
    assert e.released_body() is None  # nothing held
    a = e.plan(None, T0, WALL)
    e.outcome(Outcome.OK, written(a.body, "9"), T0)
    body = e.released_body()
    assert body["spec"]["holderIdentity"] == "" and body["spec"]["leaseDurationSeconds"] == 1
    assert body["metadata"]["resourceVersion"] == "9"
    assert election.ADDRESS_ANNOTATION not in body["metadata"]["annotations"]
    e.released()
    assert not e.leading(T0)
    # A peer takes a free lease over at once.
    peer = election.Election(cfg("edge-2", "10.0.0.2:2"))
    assert peer.plan(written(body, "10"), T0 + 1, WALL).step is Step.ACQUIRE


@pytest.mark.parametrize("bad", ["", "10.0.0.9", "10.0.0.9:", "10.0.0.9:0", "10.0.0.9:70000", "fe80::1:443",
                                 "host:https", " :443", "a b:1"])
def test_a_leader_advertising_a_bad_address_is_not_followed_and_the_reason_is_said(bad):
    e = election.Election(cfg())
    e.plan(lease("edge-2", address=bad), T0, WALL)
    v = e.view(T0)
    assert v.role is Role.CANDIDATE and v.holder == "edge-2" and v.leader_address is None
    assert "edge-2 advertises no usable address" in v.problem


def test_a_leader_without_an_address_annotation_is_not_followed():
    e = election.Election(cfg())
    e.plan(lease("edge-2", address=None), T0, WALL)
    assert e.view(T0).role is Role.CANDIDATE


@pytest.mark.parametrize(("value", "parsed"), [("10.0.0.9:10268", ("10.0.0.9", 10268)),
                                               ("[fd00::9]:443", ("fd00::9", 443)),
                                               ("leader.branch.local:1", ("leader.branch.local", 1))])
def test_addresses_parse(value, parsed):
    assert election.parse_address(value) == parsed


@pytest.mark.parametrize("spec", [None, "oops", {"holderIdentity": "edge-2", "leaseDurationSeconds": "x"}])
def test_a_malformed_lease_is_no_crash_and_counts_as_free_or_expired(spec):
    e = election.Election(cfg())
    broken = {"metadata": {"name": "edgeproxy-pool-branch-7", "resourceVersion": "3"}, "spec": spec}
    a = e.plan(broken, T0, WALL)
    assert a.step is Step.ACQUIRE
    assert a.body["spec"]["holderIdentity"] == "edge-1"
    assert a.body["apiVersion"] == "coordination.k8s.io/v1" and a.body["kind"] == "Lease"


@pytest.mark.parametrize("pool", ["", "Branch", "-x", "x-", "a_b", "x" * 240])
def test_a_pool_name_that_makes_no_lease_name_is_refused(pool):
    with pytest.raises(errors.ConfigError, match="pool name"):
        election.Config(pool=pool, identity="edge-1", address="10.0.0.1:1")


def test_timings_that_would_allow_two_leaders_are_refused():
    with pytest.raises(errors.ConfigError, match="renew deadline"):
        cfg(duration=10, renew_deadline=10.0)
    with pytest.raises(errors.ConfigError, match="renew deadline"):
        cfg(retry=10.0, renew_deadline=10.0)


def test_an_empty_identity_or_bad_own_address_is_refused():
    with pytest.raises(errors.ConfigError, match="identity"):
        cfg(identity="")
    with pytest.raises(errors.ConfigError, match="host:port"):
        cfg(address="nowhere")


@pytest.mark.parametrize("namespace", ["", "Bad_NS", "a/b", "x" * 64])
def test_a_namespace_that_is_no_namespace_name_is_refused(namespace):
    with pytest.raises(errors.ConfigError, match="namespace"):
        cfg(namespace=namespace)


def test_an_unreachable_api_server_keeps_the_leader_leading_and_its_followers_following():
    leader = election.Election(cfg(renew_deadline=10.0))
    a = leader.plan(lease("edge-1"), T0, WALL)
    leader.outcome(Outcome.OK, written(a.body, "101"), T0)
    follower = election.Election(cfg("edge-2", "10.0.0.2:10268"))
    follower.plan(written(a.body, "101"), T0, WALL)
    for t in range(2, 60, 2):  # the WAN down for a minute: nobody can write (or read) the Lease
        leader.unreachable(T0 + t)
        follower.unreachable(T0 + t)
    assert leader.view(T0 + 59).role is Role.LEADER
    assert follower.view(T0 + 59) == election.View(Role.FOLLOWER, "edge-1", ("10.0.0.1", 10268))
    # back: the Lease read decides; another node took it meanwhile (its link was up): step down at once
    assert leader.plan(lease("edge-3", rv="200", address="10.0.0.3:10268"), T0 + 61, WALL).step is Step.WAIT
    assert leader.view(T0 + 61).role is Role.FOLLOWER


def test_an_unreachable_api_server_revives_no_leadership_already_lost():
    e = election.Election(cfg(renew_deadline=10.0))
    a = e.plan(lease("edge-1"), T0, WALL)
    e.outcome(Outcome.OK, written(a.body, "101"), T0)
    e.plan(written(a.body, "101"), T0 + 5, WALL)
    e.outcome(Outcome.FAILED, None, T0 + 5)  # the API server answered, refusing (403, 500...)
    e.unreachable(T0 + 11)  # past the renew deadline: it had stopped leading
    assert e.view(T0 + 11).role is Role.CANDIDATE
