"""Leader election's loop: poll the Lease every `retry` seconds, act on lease.decide, run `lead()` while leading.

Leading starts after a successful create/acquire and ends when a renewal has not succeeded for `renew_deadline`
seconds (the task running `lead()` is cancelled: no pod is patched by a replica that may no longer lead); on stop the
lease is released so another replica takes over at once. Neighbours: lease (the decisions), kubeapi.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from edgeproxy import tasks
from edgeproxy.companion import errors, kubeapi, lease

log = logging.getLogger(__name__)


class Elector:
    __slots__ = ("_kube", "_observed", "_path", "duration", "identity", "leading", "name", "namespace",
                 "renew_deadline", "retry")

    def __init__(self, kube: kubeapi.Kube, namespace: str, name: str, identity: str, *, duration: int = 15,
                 renew_deadline: float = 10.0, retry: float = 2.0) -> None:
        self._kube = kube
        self.namespace, self.name, self.identity = namespace, name, identity
        self.duration, self.renew_deadline, self.retry = duration, renew_deadline, retry
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"
        self._observed = lease.Observed()
        self.leading = False

    async def _try(self) -> bool:
        """One round: True when this replica holds the lease after it."""
        try:
            current = await self._kube.get(self._path)
        except errors.ApiError as e:
            if e.status != 404:
                raise
            current = None
        step = lease.decide(current, self.identity, self._observed.see(current, time.monotonic()))
        if step is lease.Step.WAIT:
            return False
        spec = lease.spec_for(current, self.identity, self.duration, time.time())
        if step is lease.Step.CREATE:
            await self._kube.create(
                f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases",
                {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                 "metadata": {"name": self.name, "namespace": self.namespace}, "spec": spec})
        else:
            assert current is not None
            body = dict(current)
            body["spec"] = spec
            await self._kube.update(self._path, body)  # carries resourceVersion: 409 if someone else wrote first
        if step is not lease.Step.RENEW:
            log.info("%s now leads (lease %s/%s)", self.identity, self.namespace, self.name)
        return True

    async def run(self, lead: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Until cancelled; then release the lease if held."""
        leader: asyncio.Task[Any] | None = None
        last_renew = 0.0
        try:
            while True:
                try:
                    held = await self._try()
                except errors.ApiError as e:
                    held = False
                    if e.status != 409:
                        log.info("lease %s/%s: %s", self.namespace, self.name, e)
                now = time.monotonic()
                if held:
                    last_renew = now
                    if leader is None:
                        self.leading = True
                        leader = tasks.spawn(lead(), name="companion-leader")
                elif leader is not None and now - last_renew > self.renew_deadline:
                    log.warning("%s lost the lease %s/%s: stops leading", self.identity, self.namespace, self.name)
                    leader.cancel()
                    leader, self.leading = None, False
                await asyncio.sleep(self.retry)  # the polling period of leader election, as client-go's retryPeriod
        finally:
            if leader is not None:
                leader.cancel()
                self.leading = False
                with contextlib.suppress(Exception):
                    await self._release()

    async def _release(self) -> None:
        current = await self._kube.get(self._path)
        if lease.holder(current) != self.identity:
            return
        body = dict(current)
        body["spec"] = lease.released(current)
        await asyncio.wait_for(self._kube.update(self._path, body), 3.0)
        log.info("%s released the lease %s/%s", self.identity, self.namespace, self.name)
