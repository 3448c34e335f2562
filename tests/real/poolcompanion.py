"""`edgeproxy companion` electing the branches' pool leaders, as an operator deploys it for pool sharing: the
ServiceAccount and RBAC of deploy/companion/companion.yaml and deploy/pool/rbac.yaml, applied as shipped, the
companion run as its own process in the cloud (the host namespace: it reaches the API server directly, not through
any branch's WAN) with that ServiceAccount's token. No webhook (the autonomy side is test_autonomy's).

    c = PoolCompanion(cluster, workdir, "--pool-lease-duration", "6").start()
    c.stop()
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from .cluster import Cluster
from .procs import Proc, wait_for

HERE = Path(__file__).parent
COMPANION = HERE.parents[1] / "deploy" / "companion" / "companion.yaml"
POOL_RBAC = HERE.parents[1] / "deploy" / "pool" / "rbac.yaml"
NS = "edgeproxy-system"
# seconds a kubelet's node Lease may go unrenewed before its node may no longer lead (the hollow kubelet renews every
# 10 s; the default, the Lease's own 40 s, would leave a dead leader's pool without one for up to 40 s)
NODE_GRACE = 20
ACCESS_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def _create(cluster: Cluster, docs: list[dict]) -> None:
    from kubernetes import utils
    for doc in docs:
        try:
            utils.create_from_dict(cluster.api, doc)
        except utils.FailToCreateError as e:
            if any(getattr(x, "status", None) != 409 for x in e.api_exceptions):
                raise


class PoolCompanion:
    def __init__(self, cluster: Cluster, workdir: Path, *flags: str) -> None:
        self.cluster, self.dir, self.flags = cluster, workdir, flags
        self.proc: Proc | None = None

    def start(self) -> PoolCompanion:
        if self.proc is not None:
            return self
        c = self.cluster
        _create(c, [d for d in yaml.safe_load_all(COMPANION.read_text()) if d and d["kind"] in ACCESS_KINDS])
        _create(c, [d for d in yaml.safe_load_all(POOL_RBAC.read_text()) if d])
        self.dir.mkdir(parents=True, exist_ok=True)
        kubeconfig = c.kubeconfig(self.dir / "companion.kubeconfig", token=c.sa_token(NS, "edgeproxy-companion"))
        argv = [sys.executable, "-m", "edgeproxy", "companion", "--kubeconfig", kubeconfig, "--namespace", NS,
                "--listen", "", "--webhook-config", "", "--identity", "pool-companion", "--retry-period", "1",
                "--lease-duration", "5", "--renew-deadline", "4", "--pool-node-grace", str(NODE_GRACE),
                *self.flags]
        self.proc = Proc("companion", argv, self.dir / "companion.log", env={"PYTHONPATH": os.pathsep.join(sys.path)})
        wait_for(lambda: "companion pool controller" in self.log(), 60, "the companion's pool controller synced",
                 procs=[self.proc])
        return self

    def log(self) -> str:
        try:
            return (self.dir / "companion.log").read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
