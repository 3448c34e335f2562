"""pool.follow: a node's role read from the Lease the companion writes (it never writes it)."""

from edgeproxy.pool import election, follow


def lease(holder, renew="r1", address="10.0.0.2:10270", duration=6):
    return {"metadata": {"annotations": {election.ADDRESS_ANNOTATION: address} if address else {}},
            "spec": {"holderIdentity": holder, "renewTime": renew, "leaseDurationSeconds": duration}}


def test_roles_from_the_lease():
    f = follow.Following("n1")
    assert f.view(0.0).role is election.Role.CANDIDATE  # nothing read yet
    f.see(lease("n2"), 1.0)
    v = f.view(2.0)
    assert (v.role, v.holder, v.leader_address) == (election.Role.FOLLOWER, "n2", ("10.0.0.2", 10270))
    f.see(lease("n1", renew="r2"), 3.0)
    assert f.view(3.0).role is election.Role.LEADER and f.transitions_seen == 1
    f.see(None, 4.0)
    assert f.view(4.0).role is election.Role.CANDIDATE  # deleted
    f.see(lease(""), 5.0)
    assert f.view(5.0).role is election.Role.CANDIDATE  # no holder


def test_a_lease_nobody_renews_expires_on_this_nodes_clock_but_not_while_unreachable():
    f = follow.Following("n1")
    f.see(lease("n2"), 0.0)
    f.see(lease("n2"), 5.0)  # the same record: not renewed
    assert f.view(5.9).role is election.Role.FOLLOWER
    assert f.view(6.0).role is election.Role.CANDIDATE  # the companion stopped renewing it: the API server
    f.see(lease("n2", renew="r2"), 7.0)
    assert f.view(7.0).role is election.Role.FOLLOWER
    f.unreachable(20.0)  # the branch offline: its leader stays
    assert f.view(25.0).role is election.Role.FOLLOWER
    assert f.view(26.0).role is election.Role.CANDIDATE


def test_a_leader_with_an_unusable_address_is_not_followed():
    f = follow.Following("n1")
    f.see(lease("n2", address="nowhere"), 0.0)
    v = f.view(0.0)
    assert v.role is election.Role.CANDIDATE and v.holder == "n2" and "no usable address" in v.problem


def test_a_lease_quiet_for_nearly_its_duration_is_worth_one_read_and_then_no_more():
    f = follow.Following("n1")
    assert not f.quiet(0.0, 1.0)  # nothing seen: nothing to confirm (the watch lists it)
    f.see(lease("n2"), 0.0)
    assert not f.quiet(4.9, 1.0)  # renewed recently enough (every duration/3 by the companion)
    assert f.quiet(5.0, 1.0) and f.quiet(6.9, 1.0)  # nearly expired, or just: the watch may be over a dead link
    assert not f.quiet(7.0, 1.0)  # expired and confirmed: a Lease nobody renews costs no more reads
    f.see(lease("n2", renew="r2"), 7.5)
    assert not f.quiet(8.0, 1.0)
    f.see(lease(""), 9.0)
    assert not f.quiet(20.0, 1.0)  # nobody holds it: nothing to confirm


def test_the_lease_is_listed_and_watched_by_its_name():
    assert follow.lease_params("edgeproxy-pool-b") == "fieldSelector=metadata.name%3Dedgeproxy-pool-b"
    assert follow.lease_params("edgeproxy-pool-b", "42", watch=True, timeout=300) == (
        "fieldSelector=metadata.name%3Dedgeproxy-pool-b&watch=true&allowWatchBookmarks=true&resourceVersion=42"
        "&timeoutSeconds=300")
