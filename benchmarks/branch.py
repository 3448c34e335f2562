"""A branch of nodes behind one WAN link, pool sharing off and on in one run (issue 16), on real Kubernetes.

    python -m benchmarks branch [--quick]        (or python -m benchmarks.branch; root: network namespaces)

EDGEPROXY_REAL_BIN=DIR uses the binaries in DIR as they are (default: run tests/real/build.sh, a no-op when built).

Set-up (tests/real: etcd + kube-apiserver v1.37 and kube-controller-manager's EndpointSlice controller, built from Go
modules): one branch (tests/real/branch.py) of 5 edge hosts — edgeproxy, hollow kubelet, hollow kube-proxy (kubemark:
the real kubelet and kube-proxy code) — and 10 simulated nodes — each its own edgeproxy and a reflector client that
lists and watches Services and EndpointSlices exactly as kube-proxy does (tests/real/reflector.py) — on one LAN
behind ONE WAN relay, every node labelled with the branch's pool (--quick: 2 + 2). A rollout replaces the pods of 5
Services x 10 pods, 3 generations (--quick: 3 x 4, 1), on a node outside the branch, so that only the EndpointSlice
controller's rewrites reach the branch (tests/real/rollout.py). Then, per mode (sharing off: each edgeproxy on its
own, today; on: `--pool on`, a leader per branch elected on a Lease serving the others over the LAN):

1. the rollout: WAN bytes down and up (the branch's relay), also at rest for 10 s before (the kubelets' own traffic,
   which sharing does not touch), upstream watches of Services and EndpointSlices open at the API server
   (apiserver_longrunning_requests), LISTs and watch-lists of them (apiserver_request_total, cluster scope), and the
   time until every node's reflector has the API server's view;
2. the branch's WAN cut while one more generation rolls out, then back: LISTs and watch-lists of Services and
   EndpointSlices reaching the API server within 60 s (20 s with --quick), and the time until every node has the
   API server's view;
3. sharing on only: the leader's edgeproxy killed (SIGKILL) mid-rollout: the time until another node holds the pool's
   Lease, until every remaining node has the API server's view, and the LISTs meanwhile.
With sharing on, every edgeproxy is restarted with `--pool on` while no leader can be elected yet, so every client's
watch goes back to the API server (as in a branch whose clients ran before its first election; nobody restarts them);
then `edgeproxy companion` (deploy manifests as shipped, its defaults) is started and names the leader, and the run
waits until every node follows it and the branch is down to one upstream watch per query (each edgeproxy moves its
clients' watches from the API server to the pool by itself) before the rollout: that time is reported too.
Reports figures; asserts nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import harness

SCENARIO = "branch"
POOL = ("services", "endpointslices")
IDLE_SECONDS = 10.0
PR = "edgeproxy_pool_upstream_requests_total"  # the leader's views' LISTs, WATCHes and reach-backs, by verb
REQ_LIST, REQ_REACH_BACK = 'verb="list"', 'verb="reach_back"'
ROOT = harness.ROOT


def _row(metric: str, value: float | None, unit: str, **extra: Any) -> dict[str, object]:
    if isinstance(value, float):
        value = round(value, 2)
    return harness.row(SCENARIO, metric, value, unit, **extra)


def build() -> Path:
    r = subprocess.run(["bash", str(ROOT / "tests" / "real" / "build.sh")], capture_output=True, text=True,
                       timeout=7200)
    if r.returncode != 0:
        raise RuntimeError(f"tests/real/build.sh failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return Path(r.stdout.strip().splitlines()[-1])


def wait(cond: Callable[[], object], timeout: float, every: float = 0.2) -> float | None:
    """Poll until cond() is true: the seconds it took, or None if not within `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with contextlib.suppress(Exception):
            if cond():
                return time.monotonic() - t0
        time.sleep(every)
    return None


class Bench:
    def __init__(self, cluster: Any, branch: Any, rollout: Any, watches_before: dict[str, int], quick: bool) -> None:
        self.c, self.b, self.r = cluster, branch, rollout
        self.watches_before = watches_before
        self.quick = quick

    def pool_counts(self) -> dict[str, int]:
        """LISTs + watch-lists of Services and EndpointSlices, cluster-wide (the nodes'), so far."""
        counts = self.c.request_counts(scope="cluster")
        return {r: counts.get(("LIST", r), 0) + counts.get(("WATCHLIST", r), 0) for r in POOL}

    def watches(self) -> int:
        now = self.c.open_watches()
        return sum(now.get(r, 0) - self.watches_before.get(r, 0) for r in POOL)

    def slice_writes(self) -> int:
        counts = self.c.request_counts()
        return sum(counts.get((v, "endpointslices"), 0) for v in ("POST", "PUT", "PATCH", "DELETE"))

    def reflectors_converged(self, skip: str = "") -> bool:
        from tests.real.branch import api_view
        want = api_view(self.c)
        return all({r: s.view().get(r) for r in POOL} == want for s in self.b.sims if s.node != skip)

    def pool_counter(self, name: str, labels: str = "") -> int:
        """A counter of edgeproxy's /metrics summed over the branch's nodes."""
        pat = re.compile(rf"^{re.escape(name)}(?:\{{{re.escape(labels)}\}})? ([0-9.e+]+)$", re.M)
        total = 0.0
        for h in self.b.nodes:
            with contextlib.suppress(Exception):
                total += sum(float(m.group(1)) for m in pat.finditer(h.proxy_metrics()))
        return int(total)

    def settle(self, on: bool, timeout: float = 120) -> float | None:
        """After the edgeproxies restarted: every reflector synced with the API server's view, and (sharing on) a
        leader holding the Lease."""
        def ready() -> bool:
            return self.reflectors_converged() and (not on or (self.b.settled() and self.watches() <= 3))
        return wait(ready, timeout)

    # ---- 1: the rollout

    def rollout(self, variant: str, generations: int) -> list[dict[str, object]]:
        wan = self.b.wan
        n = len(self.b.nodes)
        s0 = wan.stats()
        time.sleep(IDLE_SECONDS)  # a measurement window, not synchronisation: the WAN at rest
        s1 = wan.stats()
        idle = (s1["bytes_down"] - s0["bytes_down"]) / IDLE_SECONDS
        lists0, writes0, t0 = self.pool_counts(), self.slice_writes(), time.monotonic()
        self.r.run(generations, timeout=300)
        took = wait(self.reflectors_converged, 120)
        seconds = time.monotonic() - t0
        s2 = wan.stats()
        lists1, writes1 = self.pool_counts(), self.slice_writes()
        down = s2["bytes_down"] - s1["bytes_down"]
        net = max(0.0, down - idle * seconds)
        return [
            _row("rollout: EndpointSlice writes at the API server", writes1 - writes0, "writes", variant=variant,
                 note=f"{generations} generations of {len(self.r.services)} Services x {self.r.pods} pods"),
            _row("rollout: WAN bytes down", down / 1024, "KiB", variant=variant,
                 note=f"{n} nodes, {seconds:.0f} s"),
            _row("rollout: WAN bytes down, rest subtracted", net / 1024, "KiB", variant=variant,
                 note=f"at rest {idle / 1024:.1f} KiB/s (kubelets' own traffic) x {seconds:.0f} s subtracted"),
            _row("rollout: WAN bytes down per EndpointSlice write per node",
                 net / 1024 / max(1, writes1 - writes0) / n, "KiB", variant=variant,
                 note="rest subtracted, divided by the writes and by the nodes"),
            _row("rollout: WAN bytes up", (s2["bytes_up"] - s1["bytes_up"]) / 1024, "KiB", variant=variant),
            _row("upstream watches of Services + EndpointSlices", self.watches(), "watches", variant=variant,
                 note="open at the API server after the rollout"),
            _row("rollout: LISTs + watch-lists of Services/EndpointSlices",
                 sum(lists1[r] - lists0[r] for r in POOL), "requests", variant=variant),
            _row("rollout: from its start to every reflector at the API server's view",
                 seconds if took is not None else None,
                 "s", variant=variant, note="" if took is not None else "not within 120 s"),
        ]

    def routing(self, variant: str) -> list[dict[str, object]]:
        """Where the nodes sent their shareable requests (edgeproxy_pool_requests_total, summed over the nodes)."""
        via: dict[str, float] = {}
        for h in self.b.nodes:
            for m in re.finditer(r'^edgeproxy_pool_requests_total\{via="(\w+)"\} ([0-9.e+]+)$', h.proxy_metrics(),
                                 re.M):
                via[m.group(1)] = via.get(m.group(1), 0.0) + float(m.group(2))
        return [*(_row(f"shareable requests sent {where}", int(via.get(key, 0)), "requests", variant=variant,
                       note="summed over the nodes, since sharing was switched on")
                  for key, where in (("leader", "to the leader"), ("view", "to the leader's own views"),
                                     ("upstream", "to the API server"))),
                _row("client watches moved from the API server to the pool",
                     self.pool_counter("edgeproxy_pool_watches_moved_total"), "watches", variant=variant,
                     note="summed over the nodes (edgeproxy_pool_watches_moved_total)"),
                _row("leader's upstream LISTs", self.pool_counter(PR, REQ_LIST), "LISTs", variant=variant,
                     note=f"and {self.pool_counter(PR, REQ_REACH_BACK)} short watches reaching back to a moved "
                          "client's older version, summed over the nodes")]

    def election_problem(self) -> str:
        """Why no leader: the last 'lease round failed' line of any node's edgeproxy log."""
        for h in self.b.nodes:
            p = h.procs.get("edgeproxy")
            lines = [ln for ln in (p.log() if p else "").splitlines() if "lease round failed" in ln]
            if lines:
                return lines[-1].split("lease round failed: ", 1)[-1][:200]
        return "no node logged why"

    # ---- 2: the WAN cut and back

    def outage(self, variant: str) -> list[dict[str, object]]:
        window = 20.0 if self.quick else 60.0
        wan = self.b.wan
        wan.cut()
        try:
            self.r.run(1, timeout=300)  # the branch cannot see this generation
        finally:
            wan.restore()
        t0 = time.monotonic()
        lists0 = self.pool_counts()
        took = wait(self.reflectors_converged, window)
        rest = window - (time.monotonic() - t0)
        if rest > 0:
            time.sleep(rest)  # the rest of the counting window
        lists1 = self.pool_counts()
        return [
            _row(f"WAN back: LISTs + watch-lists within {window:.0f} s", sum(lists1[r] - lists0[r] for r in POOL),
                 "requests", variant=variant, note="Services and EndpointSlices, at the API server"),
            _row("WAN back: until every reflector has the API server's view", took, "s", variant=variant,
                 note="" if took is not None else f"not within {window:.0f} s"),
        ]

    # ---- 3: the leader killed

    def failover(self, variant: str) -> list[dict[str, object]]:
        leader = self.b.leader()
        if not leader:
            return [_row("leader killed: failover", None, "", variant=variant, note="no leader held the Lease")]
        node = self.b.node(leader)
        lists0 = self.pool_counts()
        killed: list[float] = []

        def kill() -> None:
            node.stop_component("edgeproxy", kill=True)
            killed.append(time.monotonic())

        self.r.step(midway=kill)  # the rest of the generation is created and deleted while the branch has no leader
        at = first_true({"elected": lambda: self.b.leader() not in ("", leader),
                         "converged": lambda: self.r.converged() and self.reflectors_converged(skip=leader)}, 120)
        lists1 = self.pool_counts()
        new = self.b.leader()
        node.start_component("edgeproxy")

        def since(name: str) -> float | None:
            return None if at[name] is None else at[name] - killed[0]

        return [
            _row("leader killed: until another node holds the Lease", since("elected"), "s", variant=variant,
                 note=f"{leader} -> {new or 'none'}"),
            _row("leader killed: until every other reflector has the API server's view", since("converged"), "s",
                 variant=variant, note="the rollout's generation meanwhile"),
            _row("leader killed: LISTs + watch-lists meanwhile", sum(lists1[r] - lists0[r] for r in POOL),
                 "requests", variant=variant, note=f"{len(self.b.nodes) - 1} nodes without their leader"),
        ]


def first_true(checks: dict[str, Callable[[], object]], timeout: float) -> dict[str, float | None]:
    """Poll every check until each is true: the monotonic time each first was (None: not within `timeout`)."""
    t0 = time.monotonic()
    at: dict[str, float | None] = {}
    while len(at) < len(checks) and time.monotonic() - t0 < timeout:
        for name, cond in checks.items():
            if name not in at:
                with contextlib.suppress(Exception):
                    if cond():
                        at[name] = time.monotonic()
        time.sleep(0.2)
    return {name: at.get(name) for name in checks}


@contextlib.contextmanager
def branch_site(work: Path, bin_dir: Path, quick: bool) -> Iterator[Bench]:
    from tests.real.branch import Branch
    from tests.real.cluster import Cluster
    from tests.real.edge import EdgeHost
    from tests.real.rollout import Rollout

    hosts, sims = (2, 2) if quick else (5, 10)
    services, pods = (3, 4) if quick else (5, 10)
    with Cluster(work / "cluster", bin_dir) as c:
        c.start_controller_manager("--controllers=endpointslice,serviceaccount")
        with EdgeHost(c, work / "dc", "bench-dc", components=("edgeproxy", "kubelet")) as dc:
            before = c.open_watches()
            with Branch(c, work / "branch", "bench-branch", hosts=hosts, sims=sims) as b:
                r = Rollout(c, "bench-rollout", services=services, pods=pods, nodes=[dc.node])
                r.setup(timeout=180)
                yield Bench(c, b, r, before, quick)


def run(opts: harness.Options) -> list[dict[str, object]]:
    work = opts.work or Path("/tmp/edgeproxy-bench-branch")
    bin_dir = Path(os.environ["EDGEPROXY_REAL_BIN"]) if os.environ.get("EDGEPROXY_REAL_BIN") else build()
    generations = 1 if opts.quick else 3
    rows: list[dict[str, object]] = []
    with branch_site(work, bin_dir, opts.quick) as bench:
        rows.append(_row("nodes in the branch", len(bench.b.nodes), "nodes",
                         note=f"{len(bench.b.hosts)} hollow (kubelet + kube-proxy), {len(bench.b.sims)} simulated "
                              "(reflector clients)"))
        for on in (False, True):
            variant = "edgeproxy, sharing on" if on else "edgeproxy, sharing off"
            try:
                if on:
                    # no leader yet: every client's watch back on the API server through its restarted edgeproxy
                    alone = bench.watches()
                    bench.b.sharing(True, elect=False)
                    back = wait(lambda n=alone: bench.watches() >= n, 60)
                    before = bench.watches()
                    # the companion's defaults: pool Lease 15 s, a leader replaced when its node Lease (40 s) lapses
                    bench.b.start_companion(pool_lease=15, node_grace=0)
                took = bench.settle(on)
                if took is None:
                    rows.append(_row("settle", None, "", variant=variant,
                                     note="not settled within 120 s" + (f": no leader ({bench.election_problem()})"
                                                                       if on and not bench.b.leader() else "")))
                elif on:
                    rows.append(_row("from the election's start to one upstream watch per query", took, "s",
                                     variant=variant,
                                     note=f"{before} watches on the API server before (clients not restarted"
                                          f"{'' if back is not None else f', {alone} before the restart'}), "
                                          f"{bench.watches()} after"))
                rows += bench.rollout(variant, generations)
                if on:
                    rows += bench.routing(variant)
                rows += bench.outage(variant)
                if on:
                    rows += bench.failover(variant)
            except Exception as e:  # report what failed, keep the other mode's figures
                rows.append(_row("run failed", None, "", variant=variant, note=f"{type(e).__name__}: {str(e)[:300]}"))
    return rows


if __name__ == "__main__":
    sys.exit(harness.main(run))
