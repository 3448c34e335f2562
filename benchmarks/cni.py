"""Benchmark: edge-ipam-snapshot ADD latency via the delegate and from the snapshot, and 50 parallel ADDs.

Runs the built zipapp exactly as bridge would (env + stdin), with the host's python3 and the real Debian host-local
as the delegate (behind the same offline switch the tests use). Baseline: host-local called directly, i.e. what a
node pays without the snapshot; for start-up, the host's bare `python3 -c pass`. Rows: p50/p95 latency per path,
wall time of 50 parallel ADDs (and of 50 parallel host-local ADDs), plugin start-up (VERSION), CPU time per ADD
(user+sys of the plugin and its delegate: steadier than wall time on a shared machine) and file size.
Run alone: `python -m benchmarks.cni [--quick] [--json]`. Reports figures; asserts nothing about speed. Needs root
only if /usr/lib/cni is not readable; creates no interfaces (no netns is needed to time IPAM).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from cni_plugin import build

SCENARIO = "cni"
REAL_CNI = Path("/usr/lib/cni")
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SWITCHED = """#!/bin/sh
here=$(dirname "$0")
if [ -f "$here/offline" ] && [ "$CNI_COMMAND" != VERSION ]; then
  cat >/dev/null
  echo '{"code": 999, "msg": "dial tcp 10.96.0.1:443: connect: connection refused"}'; exit 1
fi
exec /usr/lib/cni/host-local
"""


def _opt(opts, name: str, default=None):
    if isinstance(opts, dict):
        return opts.get(name, default)
    return getattr(opts, name, default)


class _Node:
    def __init__(self, root: Path):
        self.bin = root / "bin"
        self.bin.mkdir(parents=True)
        self.plugin = build.build(self.bin / "edge-ipam-snapshot")
        (self.bin / "switched-host-local").write_text(SWITCHED)
        (self.bin / "switched-host-local").chmod(0o755)
        self.path = f"{self.bin}:{REAL_CNI}"
        ranges = [[{"subnet": "10.200.0.0/16"}]]
        self.delegate = {"type": "switched-host-local", "dataDir": str(root / "leases"), "ranges": ranges}
        self.snap = {"cniVersion": "1.0.0", "name": "bench", "type": "bridge",
                     "ipam": {"type": "edge-ipam-snapshot", "dataDir": str(root / "snapshot"),
                              "delegate": self.delegate}}
        self.plain = {"cniVersion": "1.0.0", "name": "plain", "type": "bridge",
                      "ipam": {**self.delegate, "type": "host-local"}}

    def cpu(self, exe: Path, conf: dict, command: str, cid: str, pod: str) -> float:
        """CPU seconds (user + sys) the call cost, the plugin and the delegate it ran included."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.call(exe, conf, command, cid, pod)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def call(self, exe: Path, conf: dict, command: str, cid: str, pod: str) -> float:
        env = {"PATH": HOST_PATH, "CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/x",
               "CNI_IFNAME": "eth0", "CNI_PATH": self.path,
               "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={pod}"}
        started = time.perf_counter()
        proc = subprocess.run([str(exe)], input=json.dumps(conf).encode(), capture_output=True, env=env, timeout=60)
        elapsed = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"{command} {pod}: {proc.stdout.decode()} {proc.stderr.decode()}")
        return elapsed

    def snapshot(self, command: str, cid: str, pod: str) -> float:
        return self.call(self.plugin, self.snap, command, cid, pod)

    def host_local(self, command: str, cid: str, pod: str) -> float:
        return self.call(REAL_CNI / "host-local", self.plain, command, cid, pod)

    def offline(self, on: bool) -> None:
        switch = self.bin / "offline"
        switch.write_text("refused") if on else switch.unlink(missing_ok=True)


def _rows(metric: str, samples: list[float], baseline: list[float] | None = None) -> list[dict]:
    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(q * len(xs)))]
    out = []
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        row = {"scenario": SCENARIO, "metric": f"{metric} {name}", "value": round(pct(samples, q) * 1000, 1),
               "unit": "ms", "n": len(samples)}
        if baseline:
            row["baseline"] = round(pct(baseline, q) * 1000, 1)
        out.append(row)
    return out


def _parallel(fn, n: int) -> tuple[float, list[float]]:
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        each = list(pool.map(fn, range(n)))
    return time.perf_counter() - started, each


def run(opts=None) -> list[dict]:
    n = 10 if _opt(opts, "quick") else 40
    root = Path(tempfile.mkdtemp(prefix="edgeproxy-bench-cni-"))
    try:
        node = _Node(root)
        rows = []
        start = [node.call(node.plugin, {"cniVersion": "1.0.0"}, "VERSION", "", "") for _ in range(n)]
        bare = []
        for _ in range(n):
            t = time.perf_counter()
            subprocess.run(["python3", "-c", "pass"], env={"PATH": HOST_PATH}, check=True, timeout=60)
            bare.append(time.perf_counter() - t)
        rows += _rows("plugin start-up (VERSION)", start, bare)
        base = []
        for i in range(n):
            base.append(node.host_local("ADD", f"h{i}", f"h{i}"))
            node.host_local("DEL", f"h{i}", f"h{i}")
        new, dels, restart, offline = [], [], [], []
        for i in range(n):
            new.append(node.snapshot("ADD", f"a{i}", f"pod{i}"))
            dels.append(node.snapshot("DEL", f"a{i}", f"pod{i}"))
            restart.append(node.snapshot("ADD", f"b{i}", f"pod{i}"))
        node.offline(True)
        for i in range(n):
            offline.append(node.snapshot("ADD", f"c{i}", f"pod{i}"))
        node.offline(False)
        for i in range(n):
            node.snapshot("DEL", f"c{i}", f"pod{i}")
        rows += _rows("ADD new pod via delegate", new, base)
        rows += _rows("ADD restarted pod via delegate (same IP asked)", restart, base)
        rows += _rows("ADD restarted pod offline (from snapshot)", offline, base)
        rows += _rows("DEL via delegate", dels)
        # CPU time does not depend on what else the machine runs: the steadier figure on a shared box.
        cpu_base = []
        for i in range(n):
            cpu_base.append(node.cpu(REAL_CNI / "host-local", node.plain, "ADD", f"u{i}", f"u{i}"))
            node.host_local("DEL", f"u{i}", f"u{i}")
        cpu_new = [node.cpu(node.plugin, node.snap, "ADD", f"u{i}", f"cpu{i}") for i in range(n)]
        node.offline(True)
        cpu_off = [node.cpu(node.plugin, node.snap, "ADD", f"v{i}", f"cpu{i}") for i in range(n)]
        node.offline(False)
        rows += _rows("CPU per ADD via delegate", cpu_new, cpu_base)
        rows += _rows("CPU per ADD offline (from snapshot)", cpu_off, cpu_base)
        wall_base, _ = _parallel(lambda i: node.host_local("ADD", f"ph{i}", f"ph{i}"), 50)
        wall, each = _parallel(lambda i: node.snapshot("ADD", f"p{i}", f"par{i}"), 50)
        rows.append({"scenario": SCENARIO, "metric": "50 parallel ADDs wall time", "value": round(wall, 2),
                     "unit": "s", "baseline": round(wall_base, 2)})
        rows += _rows("ADD latency within 50 parallel", each)
        wall_del, _ = _parallel(lambda i: node.snapshot("DEL", f"p{i}", f"par{i}"), 50)
        rows.append({"scenario": SCENARIO, "metric": "50 parallel DELs wall time", "value": round(wall_del, 2),
                     "unit": "s"})
        rows.append({"scenario": SCENARIO, "metric": "zipapp size", "value": node.plugin.stat().st_size,
                     "unit": "bytes"})
        rows.append({"scenario": SCENARIO, "metric": "cores", "value": os.cpu_count(), "unit": "cpus"})
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 samples per path instead of 40")
    parser.add_argument("--json", action="store_true")
    opts = parser.parse_args(argv)
    rows = run(opts)
    if opts.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        what = "python3 -c pass" if r["metric"].startswith("plugin start-up") else "host-local alone"
        base = f"  ({what}: {r['baseline']} {r['unit']})" if "baseline" in r else ""
        print(f"{r['metric']:52} {r['value']:>10} {r['unit']}{base}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
