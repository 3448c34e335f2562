"""lease: leader election decisions, as client-go's leaderelection takes them."""

from edgeproxy.companion import lease


def held(by, duration=15, transitions=3):
    return {"metadata": {"resourceVersion": "5"},
            "spec": {"holderIdentity": by, "leaseDurationSeconds": duration, "acquireTime": "A",
                     "renewTime": "R", "leaseTransitions": transitions}}


def test_decisions():
    assert lease.decide(None, "me", 0) is lease.Step.CREATE
    assert lease.decide(held("me"), "me", 100) is lease.Step.RENEW
    assert lease.decide(held("other"), "me", 14.9) is lease.Step.WAIT
    assert lease.decide(held("other"), "me", 15.1) is lease.Step.ACQUIRE
    assert lease.decide(held(""), "me", 0) is lease.Step.ACQUIRE  # released


def test_specs():
    renew = lease.spec_for(held("me"), "me", 15, 0)
    assert (renew["acquireTime"], renew["leaseTransitions"]) == ("A", 3)
    assert renew["renewTime"] == "1970-01-01T00:00:00.000000Z"
    take = lease.spec_for(held("other"), "me", 15, 1.5)
    assert take["holderIdentity"] == "me" and take["leaseTransitions"] == 4 and take["acquireTime"] != "A"
    assert lease.spec_for(None, "me", 15, 0)["leaseTransitions"] == 0
    gone = lease.released(held("me"))
    assert gone["holderIdentity"] == "" and gone["leaseDurationSeconds"] == 1


def test_expiry_is_timed_by_the_local_clock():
    seen = lease.Observed()
    assert seen.see(held("other"), 100.0) == 0.0
    assert seen.see(held("other"), 110.0) == 10.0  # unchanged record: time runs
    renewed = held("other")
    renewed["spec"]["renewTime"] = "R2"
    assert seen.see(renewed, 120.0) == 0.0  # any change restarts it, whatever the holder's clock says
