"""The leader's loop: watch bound pods, and patch the tolerations of those whose node's verdict asks for a change.

Pods are watched cluster-wide with `fieldSelector=spec.nodeName!=` and kept slim. A pod's or node's change marks it
dirty; the loop plans (policy.plan_pod) and applies each plan as a JSON merge patch carrying the resourceVersion it
was planned from, so a concurrent writer wins and the pod is planned again from its new version (409 Conflict).
Every `resync` seconds all nodes are judged again (a health report goes stale with time alone). Neighbours: nodes
(the verdicts), informer, kubeapi, policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from edgeproxy import tasks
from edgeproxy.companion import errors, informer, kubeapi, nodes, policy

log = logging.getLogger(__name__)


def slim(pod: dict[str, Any]) -> dict[str, Any]:
    md = pod.get("metadata") or {}
    keep = (policy.ORIGINAL, policy.GRANTED, policy.OPT_OUT, policy.MIRROR)
    ann = {k: v for k, v in (md.get("annotations") or {}).items() if k in keep}
    out_md = {k: md[k] for k in ("name", "namespace", "uid", "resourceVersion", "deletionTimestamp") if k in md}
    out_md["annotations"] = ann
    spec = pod.get("spec") or {}
    return {"metadata": out_md,
            "spec": {"nodeName": spec.get("nodeName"), "tolerations": spec.get("tolerations") or []},
            "status": {"phase": (pod.get("status") or {}).get("phase")}}


class Controller:
    __slots__ = ("_dirty_nodes", "_dirty_pods", "_kube", "_wake", "by_node", "counts", "nodes", "pods", "resync")

    def __init__(self, kube: kubeapi.Kube, view: nodes.NodeView, *, resync: float = 30.0) -> None:
        self._kube = kube
        self.nodes = view
        self.resync = resync
        self.pods = informer.Informer(kube, "/api/v1/pods", params={"fieldSelector": "spec.nodeName!="},
                                      on_change=self._pod_changed, slim=slim)
        self.by_node: dict[str, set[informer.Key]] = {}
        self.counts = {"granted": 0, "withdrawn": 0, "conflicts": 0, "failed": 0}
        self._dirty_nodes: set[str] = set()
        self._dirty_pods: set[informer.Key] = set()
        self._wake = asyncio.Event()
        view.on_change(self._node_changed)

    def _node_changed(self, name: str) -> None:
        self._dirty_nodes.add(name)
        self._wake.set()

    def _pod_changed(self, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        obj = new or old or {}
        k = informer.key_of(obj)
        node = str((obj.get("spec") or {}).get("nodeName") or "")
        if new is None:
            self.by_node.get(node, set()).discard(k)
            return
        self.by_node.setdefault(node, set()).add(k)
        self._dirty_pods.add(k)
        self._wake.set()

    async def run(self) -> None:
        """Until cancelled: the pod informer, and the loop applying plans."""
        watching = tasks.spawn(self.pods.run(), name="companion-pods")
        try:
            await self.nodes.informer.wait_synced()
            await self.pods.wait_synced()
            log.info("companion controller: %d nodes, %d bound pods", len(self.nodes.informer.items),
                     len(self.pods.items))
            self._dirty_nodes.update(self.by_node)
            while True:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that arrives as the
                # event is set, and the loop would go on after its task was cancelled
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.resync):
                        await self._wake.wait()
                self._wake.clear()
                if not self._dirty_nodes and not self._dirty_pods:
                    self._dirty_nodes.update(self.by_node)  # resync: staleness comes with time alone
                await self.sweep()
        finally:
            watching.cancel()

    async def sweep(self) -> None:
        """Plan and apply for the dirty nodes and pods."""
        keys: set[informer.Key] = set(self._dirty_pods)
        for name in self._dirty_nodes:
            keys.update(self.by_node.get(name, ()))
        self._dirty_pods.clear()
        self._dirty_nodes.clear()
        for k in sorted(keys):
            pod = self.pods.items.get(k)
            if pod is None:
                continue
            verdict = self.nodes.verdict(str(pod["spec"].get("nodeName") or ""))
            if verdict is None:
                continue
            plan = policy.plan_pod(pod, verdict)
            if plan is not None:
                await self._apply(pod, plan, verdict)

    async def _apply(self, pod: dict[str, Any], plan: policy.PodPlan, verdict: policy.Verdict) -> None:
        ns, name = informer.key_of(pod)
        try:
            await self._kube.patch(f"/api/v1/namespaces/{ns}/pods/{name}", policy.merge_patch(pod, plan))
        except errors.ApiError as e:
            if e.status == 409:
                self.counts["conflicts"] += 1  # the watch brings the newer version, which is planned again
            elif e.status != 404:
                self.counts["failed"] += 1
                log.warning("pod %s/%s on %s: cannot apply (%s): %s", ns, name, pod["spec"].get("nodeName"),
                            verdict.reason, e)
            return
        self.counts["granted" if plan.grant else "withdrawn"] += 1
        log.info("pod %s/%s on %s: %s", ns, name, pod["spec"].get("nodeName"),
                 verdict.reason if plan.grant else f"stock tolerations restored ({verdict.reason})")
