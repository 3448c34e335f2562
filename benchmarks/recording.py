"""What recording into the cache costs the proxy: CPU per list recorded, and small GETs beside big lists.

    python -m benchmarks recording [--quick]

One simulator (10k pods; 1k with --quick) upstream of `edgeproxy serve`, cache on and `--cache off` (the set-up of
benchmarks.passthrough). Measured, per variant:
- proxy CPU per LIST of every pod, protobuf and JSON: a list of a view never seen before (each has its own label
  selector, which every pod matches: forwarded, parsed, written), and the same list again (its view already holds that
  resourceVersion: forwarded, not parsed). CPU is the process's user+system time from the request until the process
  is idle again (recording ends after the response), so it does not depend on what else the machine does;
- small GET latency at concurrency 1, alone and while JSON lists of new views run back to back beside it: what the
  parsing thread's hold on the GIL costs the event loop;
- what recording costs the listing client itself: a JSON LIST of every pod, each a new view (so it is parsed and
  written), through the recording proxy and through `--cache off`, alternately, each started with both proxies idle;
  p50 of each and the ratio (`--quick`: the 1k-pod figure).
The proxy under test is told apart from the direct path only by these figures; see passthrough for req/s against nginx.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from benchmarks import harness, passthrough

SCENARIO = "recording"
SMALL = "/api/v1/namespaces/default/services/kubernetes"


def _idle_cpu(pid: int, bound: float = 60.0) -> float:
    """The process's CPU seconds once it stopped using CPU (two reads 0.3 s apart, nearly equal), within `bound`."""
    deadline = time.monotonic() + bound
    last = harness.cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = harness.cpu_seconds(pid)
        if now - last < 0.01:
            return now
        last = now
    return last


def run(opts: harness.Options) -> list[dict[str, object]]:
    work = opts.work or Path("/tmp")
    pods = 1000 if opts.quick else 10_000
    rows: list[dict[str, object]] = []
    with harness.simulator(work, pods=pods) as (sim_url, pki_dir):
        pki = passthrough.Pki.at(pki_dir)
        with passthrough.edgeproxy(work, sim_url, pki) as ep, \
                passthrough.edgeproxy(work, sim_url, pki, cache=False) as bare:
            for tag, (name, (url, pid)) in enumerate((("edgeproxy", ep), ("edgeproxy --cache off", bare))):
                rows += _measure(opts, pods, name, url, pid, f"v{tag}")
            rows += _client_cost(opts, pods, ep, bare)
    return rows


def _client_cost(opts: harness.Options, pods: int, ep: tuple[str, int], bare: tuple[str, int]) -> list[dict]:
    """The listing client's latency with recording on and off, interleaved so both see the same machine."""
    rounds = 20 if opts.quick else 8
    took: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(rounds):
        for side, (url, _) in (("on", ep), ("off", bare)):
            _idle_cpu(ep[1])
            _idle_cpu(bare[1])
            res = harness.loadgen(url + f"/api/v1/pods?labelSelector=client{side}{i}%21%3Dx", requests=1,
                                  headers=[passthrough.JSON])
            took[side].append(float(res["p50_ms"]))
    on, off = (sorted(took[s])[len(took[s]) // 2] for s in ("on", "off"))
    name = f"{pods // 1000}k-pod JSON LIST, new view each time"
    return [harness.row(SCENARIO, f"{name}, recording", round(on, 1), "ms", note=f"p50 of {rounds}"),
            harness.row(SCENARIO, f"{name}, --cache off", round(off, 1), "ms", note=f"p50 of {rounds}"),
            harness.row(SCENARIO, "what recording adds to the listing client", round((on / off - 1) * 100, 1), "%",
                        note="aim <= 10 %")]


def _measure(opts: harness.Options, pods: int, variant: str, url: str, pid: int,
             tag: str) -> list[dict[str, object]]:
    # Every query names its variant (`tag`): the simulator remembers answers, and each variant must pay alike.
    rows: list[dict[str, object]] = []
    harness.loadgen(url + SMALL, requests=200, concurrency=4, headers=[passthrough.JSON])  # warm-up
    # ... and the simulator's first big answer in each encoding (several times slower than the next ones)
    for accept in (passthrough.PROTOBUF, passthrough.JSON):
        harness.loadgen(url + f"/api/v1/pods?labelSelector={tag}warm%21%3Dx", requests=1, headers=[accept])
    n = 0
    for enc, accept in (("protobuf", passthrough.PROTOBUF), ("json", passthrough.JSON)):
        for what in ("new view", "same version again"):
            if what == "new view":
                n += 1
            path = f"/api/v1/pods?labelSelector={tag}bench{n}%21%3Dx"  # matches every pod; a view of its own
            before = _idle_cpu(pid)
            res = harness.loadgen(url + path, requests=1, headers=[accept])
            used = _idle_cpu(pid) - before
            note = f"{int(res['bytes']) / 1e6:.1f} MB, answered in {float(res['p50_ms']):.0f} ms"
            rows.append(harness.row(SCENARIO, f"{pods // 1000}k-pod LIST {enc} proxy CPU, {what}", round(used * 1e3),
                                    "ms", variant=variant, note=note))
    requests = 300 if opts.quick else 1500
    alone = harness.loadgen(url + SMALL, concurrency=1, requests=requests, headers=[passthrough.JSON])
    stop = threading.Event()
    lists: list[float] = []

    def lister() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            r = harness.loadgen(url + f"/api/v1/pods?labelSelector={tag}busy{i}%21%3Dx", requests=1,
                                headers=[passthrough.JSON])
            lists.append(float(r["p50_ms"]))

    t = threading.Thread(target=lister, name="lister", daemon=True)
    t.start()
    try:
        time.sleep(1.0)  # the first list is under way
        busy = harness.loadgen(url + SMALL, concurrency=1, duration=opts.duration * 2, headers=[passthrough.JSON])
    finally:
        stop.set()
        t.join(120)
    for label, res in (("alone", alone), ("beside back-to-back JSON lists", busy)):
        for q in ("p50", "p90", "p99"):
            rows.append(harness.row(SCENARIO, f"small GET {q} latency, {label}", res[f"{q}_ms"], "ms", variant=variant,
                                    note="c=1"))
    if lists:
        rows.append(harness.row(SCENARIO, f"{pods // 1000}k-pod JSON LIST beside small GETs",
                                sorted(lists)[len(lists) // 2], "ms", variant=variant,
                                note=f"p50 of {len(lists)} lists, each a new view"))
    _idle_cpu(pid)
    return rows


if __name__ == "__main__":
    sys.exit(harness.main(run))
