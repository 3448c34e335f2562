"""policy: which nodes get autonomy, and the tolerations their pods carry (as the taint-eviction controller reads
them: first matching toleration per taint, minimum over taints)."""

import base64
import json

import pytest

from edgeproxy.companion import errors, health, policy

U, NR = policy.UNREACHABLE, policy.NOT_READY
DEFAULTS = [  # what DefaultTolerationSeconds appends at create
    {"key": NR, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"key": U, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
]
HEALTHY = health.encode(health.Report(True, ""))


def node(ready="True", duration="2h", report=HEALTHY, label=False):
    md = {"name": "edge-1", "annotations": {}, "labels": {}}
    if duration is not None:
        md["labels" if label else "annotations"][policy.DURATION] = duration
    if report is not None:
        md["annotations"][health.ANNOTATION] = report
    return {"metadata": md, "status": {"conditions": [{"type": "Ready", "status": ready}]}}


def pod(tolerations=DEFAULTS, annotations=None, phase="Running", **md):
    return {"metadata": {"name": "p", "namespace": "edge", "resourceVersion": "7", "annotations": annotations or {},
                         **md},
            "spec": {"nodeName": "edge-1", "tolerations": [dict(t) for t in tolerations]},
            "status": {"phase": phase}}


GRANT = policy.Verdict(True, True, 7200, "autonomy 7200")
FOREVER = policy.Verdict(True, True, None, "autonomy unlimited")
STOCK = policy.Verdict(True, False, 0, "not opted in")
AWAY = policy.Verdict(False, False, 0, "not Ready")


@pytest.mark.parametrize(("text", "seconds"), [
    ("unlimited", None), ("Unlimited", None), ("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("3600", 3600),
    ("1.5s", 2), ("45s", 45),
])
def test_durations(text, seconds):
    assert policy.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0s", "-5m", "500ms", "forever", "1d", "h"])
def test_bad_durations_are_refused(text):
    with pytest.raises(errors.InvalidAnnotation):
        policy.parse_duration(text)


@pytest.mark.parametrize(("n", "age", "act", "grant", "reason"), [
    (node(), 5.0, True, True, "autonomy 7200"),
    (node(label=True), 5.0, True, True, "autonomy 7200"),
    (node(duration="unlimited"), 5.0, True, True, "autonomy unlimited"),
    (node(ready="Unknown"), 5.0, False, False, "not Ready"),
    (node(ready="False"), 5.0, False, False, "not Ready"),
    (node(duration=None), 5.0, True, False, "not opted in"),
    (node(duration="soon"), 5.0, True, False, "not a duration"),
    (node(report=None), None, True, False, "has not reported"),
    (node(report="{bad"), 5.0, True, False, "not JSON"),
    (node(report=health.encode(health.Report(False, "disk full"))), 5.0, True, False, "unhealthy: disk full"),
    (node(), 901.0, True, False, "901s old"),
])
def test_node_verdicts(n, age, act, grant, reason):
    v = policy.judge_node(n, age, 900.0)
    assert (v.act, v.grant) == (act, grant)
    assert reason in v.reason


def eff(p, key):
    return policy.effective(p["spec"]["tolerations"] if "spec" in p else p, key)[1]


def applied(p, plan):
    out = json.loads(json.dumps(p))
    out["spec"]["tolerations"] = plan.tolerations
    ann = out["metadata"]["annotations"]
    for k, v in plan.annotations.items():
        if v is None:
            ann.pop(k, None)
        else:
            ann[k] = v
    return out


def test_grant_raises_the_default_tolerations_in_place_and_remembers_them():
    p = pod()
    plan = policy.plan_pod(p, GRANT)
    assert plan.grant
    assert [t.get("tolerationSeconds") for t in plan.tolerations] == [7200, 7200]  # same tolerations, same order
    assert json.loads(plan.annotations[policy.ORIGINAL]) == {U: 300, NR: 300}
    assert plan.annotations[policy.GRANTED] == "7200"
    granted = applied(p, plan)
    assert policy.plan_pod(granted, GRANT) is None  # converged


def test_unlimited_drops_toleration_seconds():
    plan = policy.plan_pod(pod(), FOREVER)
    assert all("tolerationSeconds" not in t for t in plan.tolerations)
    assert eff(plan.tolerations, U) is None


def test_withdrawal_restores_what_the_pod_had():
    granted = applied(pod(), policy.plan_pod(pod(), GRANT))
    plan = policy.plan_pod(granted, STOCK)
    assert not plan.grant
    assert plan.tolerations == DEFAULTS
    assert plan.annotations == {policy.ORIGINAL: None, policy.GRANTED: None}
    assert policy.plan_pod(applied(granted, plan), STOCK) is None


def test_duration_change_is_applied_but_never_below_the_pods_own():
    granted = applied(pod(), policy.plan_pod(pod(), GRANT))
    shorter = policy.plan_pod(granted, policy.Verdict(True, True, 60, "autonomy 60"))
    assert eff(shorter.tolerations, U) == 300  # the pod's own 300 s stays: a grant never shortens
    assert shorter.annotations == {policy.GRANTED: "60"}


def test_a_longer_own_toleration_is_kept():
    own = [{"key": U, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 86400}, DEFAULTS[0]]
    plan = policy.plan_pod(pod(own), GRANT)
    assert eff(plan.tolerations, U) == 86400 and eff(plan.tolerations, NR) == 7200


def test_forever_tolerations_are_left_alone():
    daemonset = [{"key": U, "operator": "Exists", "effect": "NoExecute"},
                 {"key": NR, "operator": "Exists", "effect": "NoExecute"}]
    assert policy.plan_pod(pod(daemonset), GRANT) is None  # nothing to raise: not even an annotation is written
    assert policy.plan_pod(pod([{"operator": "Exists"}]), GRANT) is None


def test_a_wildcard_first_match_gets_a_specific_toleration_in_front():
    wildcard = [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]
    plan = policy.plan_pod(pod(wildcard), GRANT)
    assert plan.tolerations[-1] == wildcard[0]  # kept (pod updates may not remove one)
    assert eff(plan.tolerations, U) == 7200 and eff(plan.tolerations, NR) == 7200
    back = policy.plan_pod(applied(pod(wildcard), plan), STOCK)
    assert eff(back.tolerations, U) == 30 and eff(back.tolerations, NR) == 30


def test_no_matching_toleration_gets_one_and_withdrawal_means_at_once_again():
    plan = policy.plan_pod(pod([]), GRANT)
    assert eff(plan.tolerations, U) == 7200
    assert json.loads(plan.annotations[policy.ORIGINAL]) == {U: 0, NR: 0}
    back = policy.plan_pod(applied(pod([]), plan), STOCK)
    assert eff(back.tolerations, U) == 0  # evicted at once, as with no toleration


def test_pod_update_validation_holds():
    """validateOnlyAddedTolerations: every old toleration is still there, with only tolerationSeconds changed."""
    for before in (DEFAULTS, [], [{"operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}],
                   [{"key": "x", "operator": "Equal", "value": "y", "effect": "NoSchedule"}, *DEFAULTS]):
        for verdict in (GRANT, FOREVER):
            plan = policy.plan_pod(pod(before), verdict)
            for old in before:
                assert any({**old, "tolerationSeconds": None} == {**new, "tolerationSeconds": None}
                           for new in plan.tolerations), (before, plan.tolerations)


@pytest.mark.parametrize("p", [
    pod(phase="Succeeded"), pod(phase="Failed"), pod(deletionTimestamp="2026-01-01T00:00:00Z"),
    pod(annotations={policy.MIRROR: "abc"}),
])
def test_pods_left_alone(p):
    assert policy.plan_pod(p, GRANT) is None


def test_nothing_changes_while_the_node_is_away():
    granted = applied(pod(), policy.plan_pod(pod(), GRANT))
    assert policy.plan_pod(pod(), AWAY) is None
    assert policy.plan_pod(granted, AWAY) is None


def test_stock_pods_are_untouched_and_opt_out_withdraws():
    assert policy.plan_pod(pod(), STOCK) is None
    granted = applied(pod(), policy.plan_pod(pod(), GRANT))
    granted["metadata"]["annotations"][policy.OPT_OUT] = "off"
    assert policy.plan_pod(granted, GRANT).tolerations == DEFAULTS


def test_merge_patch_carries_the_resource_version():
    plan = policy.plan_pod(pod(), GRANT)
    patch = policy.merge_patch(pod(), plan)
    assert patch["metadata"]["resourceVersion"] == "7"
    assert patch["spec"]["tolerations"] == plan.tolerations


def review(p, operation="CREATE"):
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "operation": operation, "object": p}}


def test_admission_patches_a_pod_created_bound_to_an_autonomous_node():
    p = pod()
    del p["metadata"]["annotations"]
    answer = policy.review_response(review(p), node(), 1.0, 900)
    r = answer["response"]
    assert r["uid"] == "u-1" and r["allowed"] and r["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(r["patch"]))
    assert ops[0] == {"op": "replace", "path": "/spec/tolerations",
                      "value": [{**t, "tolerationSeconds": 7200} for t in DEFAULTS]}
    assert ops[1]["path"] == "/metadata/annotations" and ops[1]["value"][policy.GRANTED] == "7200"


def test_admission_escapes_annotation_keys():
    ops = json.loads(base64.b64decode(policy.review_response(review(pod()), node(), 1.0, 900)["response"]["patch"]))
    assert {"op": "add", "path": "/metadata/annotations/edgeproxy.io~1autonomy-granted", "value": "7200"} in ops


@pytest.mark.parametrize(("n", "operation"), [(None, "CREATE"), (node(duration=None), "CREATE"),
                                              (node(report=None), "CREATE"), (node(), "UPDATE")])
def test_admission_allows_without_patch(n, operation):
    r = policy.review_response(review(pod(), operation), n, 1.0, 900)["response"]
    assert r == {"uid": "u-1", "allowed": True}


@pytest.mark.parametrize("bad", [{}, {"kind": "Pod"}, {"kind": "AdmissionReview"},
                                 {"kind": "AdmissionReview", "request": {"operation": "CREATE"}}])
def test_bad_reviews_are_refused(bad):
    with pytest.raises(errors.BadReview):
        policy.review_response(bad, node(), 1.0, 900)
