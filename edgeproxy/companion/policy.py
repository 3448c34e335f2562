"""The companion's decisions, pure: which nodes get autonomy, and which tolerations their pods then carry.

How the taint-eviction controller of Kubernetes v1.37 reads tolerations decides everything here
(pkg/controller/tainteviction/taint_eviction.go, pkg/apis/core/v1/helper/helpers.go):

- For each NoExecute taint on the node, `GetMatchingTolerations` takes the FIRST toleration in the pod's list that
  tolerates it (`break` after the first match), and `getMinTolerationTime` takes the minimum `tolerationSeconds` over
  those: nil is forever, <= 0 is at once, no match at all is at once. So adding a second, longer toleration behind the
  one DefaultTolerationSeconds appended does nothing; the first match must carry the duration.
- `processPodOnNode`: once a deletion is scheduled for a pod, a later toleration change only matters if it becomes
  forever (cancelled) or no longer tolerates (at once); a longer finite one keeps the old deadline. So the duration
  must be on the pod before its node is tainted: it is granted while the node is Ready, never during an outage.
- Pod updates (pkg/apis/core/validation ValidatePodUpdate → validateOnlyAddedTolerations) may add tolerations and
  change the `tolerationSeconds` of existing ones (to any value, or none), in any order, never remove or otherwise
  modify one. Every change below stays inside that: set the seconds of the first match when its key is the taint's,
  else insert a toleration for exactly that taint in front of it (or append one when none matches).
- DefaultTolerationSeconds (a built-in mutating admission plugin) appends `not-ready`/`unreachable` NoExecute
  tolerations of 300 s at create; mutating webhooks run after all built-in mutating plugins
  (pkg/kubeapiserver/options/plugins.go AllOrderedPlugins), so a webhook sees and can raise them.

The rule the companion applies to a pod on an opted-in, healthy, Ready node: for the `unreachable` and `not-ready`
taints, the pod's effective toleration becomes the LONGER of its own and the node's autonomy duration; it is never
shortened. What the pod had is kept in the annotation `edgeproxy.io/autonomy-original`, and restored when the grant
is withdrawn (opt-in removed, cache unhealthy, report stale). Neighbours: health (the report's format), controller
and webhook (the I/O shells that apply these plans).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from edgeproxy.companion import errors, health
from edgeproxy.kube import duration

DURATION = "edgeproxy.io/autonomy-duration"  # node annotation (or label): a Go duration, seconds, or "unlimited"
ORIGINAL = "edgeproxy.io/autonomy-original"  # pod annotation: effective seconds per taint before the grant
GRANTED = "edgeproxy.io/autonomy-granted"  # pod annotation: the duration granted ("unlimited" or seconds)
OPT_OUT = "edgeproxy.io/autonomy"  # pod annotation "off": this pod keeps stock behaviour
MIRROR = "kubernetes.io/config.mirror"

UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
TAINTS = (UNREACHABLE, NOT_READY)
NO_EXECUTE = "NoExecute"

# Seconds: an int, or None for forever (no tolerationSeconds). A taint no toleration matches evicts at once (0).
Seconds = int | None


def parse_duration(text: str) -> Seconds:
    """The node's autonomy duration: "unlimited" → None, "90m"/"2h30m" (Go durations) or "3600" → whole seconds
    (rounded up), at least 1 s. InvalidAnnotation otherwise."""
    value = text.strip()
    if value.lower() == "unlimited":
        return None
    seconds = float(value) if value.isdigit() else duration.parse(value)
    if seconds is None or not math.isfinite(seconds) or seconds < 1:
        raise errors.InvalidAnnotation(
            f"{DURATION}={text!r}: not a duration of at least 1s (e.g. 30m, 72h, 3600) or 'unlimited'")
    return math.ceil(seconds)


def format_seconds(seconds: Seconds) -> str:
    return "unlimited" if seconds is None else str(seconds)


def longer(a: Seconds, b: Seconds) -> Seconds:
    if a is None or b is None:
        return None
    return max(a, b)


# ---------------------------------------------------------------- nodes


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What the companion does with a node's pods now."""

    act: bool  # False: leave its pods exactly as they are (the node is not Ready: away, or not started)
    grant: bool  # True: its pods get the duration; False: stock tolerations (a grant made earlier is withdrawn)
    seconds: Seconds  # the duration granted (meaningful when grant)
    reason: str


def node_ready(node: Mapping[str, Any]) -> bool:
    for cond in (node.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def opt_in(node: Mapping[str, Any]) -> str | None:
    """The node's autonomy-duration text: the annotation, else the label; None when it did not opt in."""
    md = node.get("metadata") or {}
    for where in ("annotations", "labels"):
        value = (md.get(where) or {}).get(DURATION)
        if value is not None:
            return str(value)
    return None


def judge_node(node: Mapping[str, Any], report_age: float | None, max_age: float) -> Verdict:
    """Grant autonomy to a Ready node that opted in with a valid duration and whose edgeproxy reported a healthy
    cache no longer than `max_age` seconds ago. `report_age`: seconds since the companion saw the health annotation
    change (None: no annotation). Nothing changes while the node is not Ready: a grant is never withdrawn (nor made)
    during an outage, when it would evict at once or come too late (see the module's docstring)."""
    if not node_ready(node):
        return Verdict(False, False, 0, "not Ready: its pods are left as they are")
    text = opt_in(node)
    if text is None:
        return Verdict(True, False, 0, "not opted in")
    try:
        seconds = parse_duration(text)
    except errors.InvalidAnnotation as e:
        return Verdict(True, False, 0, str(e))
    annotation = ((node.get("metadata") or {}).get("annotations") or {}).get(health.ANNOTATION)
    if annotation is None or report_age is None:
        return Verdict(True, False, 0, "edgeproxy has not reported the cache's health")
    try:
        report = health.decode(annotation)
    except errors.InvalidAnnotation as e:
        return Verdict(True, False, 0, str(e))
    if not report.healthy:
        return Verdict(True, False, 0, f"edge cache unhealthy: {report.reason}")
    if report_age > max_age:
        return Verdict(True, False, 0, f"edge cache report is {report_age:.0f}s old (limit {max_age:.0f}s)")
    return Verdict(True, True, seconds, f"autonomy {format_seconds(seconds)}")


# ---------------------------------------------------------------- pods


def tolerates(tol: Mapping[str, Any], taint_key: str) -> bool:
    """Toleration.ToleratesTaint (k8s.io/api core/v1/toleration.go) for a NoExecute taint with no value."""
    effect = tol.get("effect") or ""
    if effect and effect != NO_EXECUTE:
        return False
    key = tol.get("key") or ""
    if key and key != taint_key:
        return False
    op = tol.get("operator") or "Equal"
    if op == "Exists":
        return True
    if op == "Equal":
        return (tol.get("value") or "") == ""
    return False  # Lt/Gt compare numbers; these taints carry no value


def effective(tolerations: list[Mapping[str, Any]], taint_key: str) -> tuple[int, Seconds]:
    """(index of the first toleration matching the taint or -1, the seconds the pod stays): as the controller reads
    it, no match and <= 0 are 0 (at once), no tolerationSeconds is None (forever)."""
    for i, tol in enumerate(tolerations):
        if tolerates(tol, taint_key):
            s = tol.get("tolerationSeconds")
            if s is None:
                return i, None
            return i, max(int(s), 0)
    return -1, 0


def _set(tolerations: list[dict[str, Any]], taint_key: str, seconds: Seconds) -> None:
    """Make the taint's effective seconds `seconds`, by a change pod validation allows."""
    i, _ = effective(tolerations, taint_key)
    if i >= 0 and tolerations[i].get("key") == taint_key and tolerations[i].get("effect") == NO_EXECUTE:
        tol = dict(tolerations[i])
        if seconds is None:
            tol.pop("tolerationSeconds", None)
        else:
            tol["tolerationSeconds"] = seconds
        tolerations[i] = tol
        return
    new: dict[str, Any] = {"key": taint_key, "operator": "Exists", "effect": NO_EXECUTE}
    if seconds is not None:
        new["tolerationSeconds"] = seconds
    if i >= 0:  # a wildcard toleration matched first: ours goes in front of it
        tolerations.insert(i, new)
    else:
        tolerations.append(new)


@dataclasses.dataclass(frozen=True, slots=True)
class PodPlan:
    """The pod's new tolerations and the annotation changes (None deletes) that go with them."""

    tolerations: list[dict[str, Any]]
    annotations: dict[str, str | None]
    grant: bool


def eligible(pod: Mapping[str, Any]) -> bool:
    """A running or pending pod of the API's own (not a mirror of a static pod, not being deleted, not finished)."""
    md = pod.get("metadata") or {}
    if md.get("deletionTimestamp") or MIRROR in (md.get("annotations") or {}):
        return False
    return (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed")


def _original(annotations: Mapping[str, str]) -> dict[str, Seconds] | None:
    text = annotations.get(ORIGINAL)
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    out: dict[str, Seconds] = {}
    for key in TAINTS:
        v = doc.get(key, 0)
        out[key] = None if v is None else max(int(v), 0) if isinstance(v, int) else 0
    return out


def plan_pod(pod: Mapping[str, Any], verdict: Verdict, *, fresh: bool = False) -> PodPlan | None:
    """What to change on a pod bound to a node judged `verdict`; None when nothing. `fresh` (admission at create):
    an ORIGINAL annotation the pod arrives with (copied from another pod) is ignored."""
    if not verdict.act or not eligible(pod):
        return None
    md = pod.get("metadata") or {}
    annotations = md.get("annotations") or {}
    tolerations = [dict(t) for t in (pod.get("spec") or {}).get("tolerations") or ()]
    original = None if fresh else _original(annotations)
    grant = verdict.grant and annotations.get(OPT_OUT, "").lower() != "off"
    if grant:
        base = original or {key: effective(tolerations, key)[1] for key in TAINTS}
        changes: dict[str, str | None] = {}
        for key in TAINTS:
            want = longer(base[key], verdict.seconds)
            if effective(tolerations, key)[1] != want:
                _set(tolerations, key, want)
        if original is None:
            changes[ORIGINAL] = json.dumps(base, separators=(",", ":"), sort_keys=True)
        if annotations.get(GRANTED) != format_seconds(verdict.seconds):
            changes[GRANTED] = format_seconds(verdict.seconds)
        before = [dict(t) for t in (pod.get("spec") or {}).get("tolerations") or ()]
        if tolerations == before and (original is None or not changes):
            return None  # nothing to raise (a DaemonSet's pods tolerate forever): no write, no annotation
        return PodPlan(tolerations, changes, True)
    if original is None:
        return None  # never granted: stock, untouched
    for key in TAINTS:
        if effective(tolerations, key)[1] != original[key]:
            _set(tolerations, key, original[key])
    return PodPlan(tolerations, {ORIGINAL: None, GRANTED: None}, False)


def merge_patch(pod: Mapping[str, Any], plan: PodPlan) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386: lists replaced whole, null deletes) that applies `plan` only if the pod is
    still at the resourceVersion the plan was made from (the API server answers 409 Conflict otherwise)."""
    md = pod.get("metadata") or {}
    return {
        "metadata": {"resourceVersion": md.get("resourceVersion"), "annotations": plan.annotations},
        "spec": {"tolerations": plan.tolerations},
    }


# ---------------------------------------------------------------- admission


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def json_patch(pod: Mapping[str, Any], plan: PodPlan) -> list[dict[str, Any]]:
    """RFC 6902 operations from `pod` (as admission received it) to the plan, for the webhook's answer."""
    ops: list[dict[str, Any]] = []
    spec = pod.get("spec") or {}
    ops.append({"op": "replace" if "tolerations" in spec else "add", "path": "/spec/tolerations",
                "value": plan.tolerations})
    annotations = (pod.get("metadata") or {}).get("annotations")
    set_ = {k: v for k, v in plan.annotations.items() if v is not None}
    if annotations is None:
        if set_:
            ops.append({"op": "add", "path": "/metadata/annotations", "value": set_})
    else:
        for k, v in plan.annotations.items():
            if v is not None:
                ops.append({"op": "add", "path": "/metadata/annotations/" + _pointer(k), "value": v})
            elif k in annotations:
                ops.append({"op": "remove", "path": "/metadata/annotations/" + _pointer(k)})
    return ops


def bound_node(pod: Mapping[str, Any]) -> str:
    """The node a pod is created bound to (spec.nodeName), else "". Pods the scheduler places are bound later
    through pods/binding, which carries no pod to mutate: those are the controller's (see the README)."""
    return str((pod.get("spec") or {}).get("nodeName") or "")


def review_response(review: Mapping[str, Any], node: Mapping[str, Any] | None, report_age: float | None,
                    max_age: float) -> dict[str, Any]:
    """The AdmissionReview answer to a pod CREATE: always allowed; a JSONPatch when the pod is created bound to a
    node that has autonomy now. BadReview when `review` is not an admission.k8s.io/v1 AdmissionReview request."""
    if not isinstance(review, Mapping) or review.get("kind") != "AdmissionReview":
        raise errors.BadReview("not an AdmissionReview")
    req = review.get("request")
    if not isinstance(req, Mapping) or not req.get("uid"):
        raise errors.BadReview("AdmissionReview without request.uid")
    response: dict[str, Any] = {"uid": req["uid"], "allowed": True}
    pod = req.get("object")
    if (req.get("operation") == "CREATE" and isinstance(pod, Mapping) and pod.get("kind", "Pod") == "Pod"
            and node is not None):
        plan = plan_pod(pod, judge_node(node, report_age, max_age), fresh=True)
        if plan is not None and plan.grant:
            patch = json.dumps(json_patch(pod, plan), separators=(",", ":")).encode()
            response["patchType"] = "JSONPatch"
            response["patch"] = base64.b64encode(patch).decode()
    return {"apiVersion": review.get("apiVersion") or "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": response}
