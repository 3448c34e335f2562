"""Benchmark: the cache's write and read paths (cache.Store + cache.Writer), durable commits, on local disk.

Rows: watch events persisted/s (protobuf pods ~1.5 KB, one apply_events call per event as a stream delivers them,
durable group commits), the same enqueued from an asyncio loop with the loop's wake-up lag (the writer thread must
not starve the proxy's loop), time to record a 10k-pod list, RSS of a process holding 10k and 50k cached pods (measured
in a fresh subprocess each), and the offline LIST read path: 10k items of a view as raw bytes and as Items.
Run alone: `python -m benchmarks.cache_write [--quick]`. Reports figures; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks import harness
from cache import store, writer

SCENARIO = "cache_write"
POD_BYTES = 1500


def _pods(n: int, rv0: int = 1000, size: int = POD_BYTES, ns_count: int = 20, start: int = 0) -> list[store.Item]:
    # Realistic shape for the store: labels and selector fields as record.py extracts them, raw bytes of pod size.
    filler = bytes(range(256)) * (size // 256 + 1)
    out = []
    for i in range(start, start + n):
        ns = f"ns-{i % ns_count:02}" if ns_count else f"ns-{i // 1000:03}"
        name = f"web-{i:06}-7f9c6d5b4-x{i % 97:02}"
        raw = (b"\n\xaa\x04\n" + name.encode() + filler)[:size]
        out.append(store.Item(name, ns, str(rv0 + i), {"app": "web", "tier": "frontend", "pod-template-hash":
                              "7f9c6d5b4", "release": f"r{i % 5}"},
                              {"spec.nodeName": "edge-1", "status.phase": "Running", "metadata.name": name,
                               "metadata.namespace": ns}, raw))
    return out


def _key(client: str = "kubelet", resource: str = "pods") -> store.ViewKey:
    return store.ViewKey(client, "", "v1", resource, "", "", "spec.nodeName=edge-1", "", "protobuf")


def _row(metric: str, value: float, unit: str, **extra) -> dict:
    return {"scenario": SCENARIO, "metric": metric, "value": round(value, 3), "unit": unit, **extra}


def bench_events(path: str, n_pods: int, n_events: int) -> list[dict]:
    st = store.Store.open(path, map_size=8 << 30)
    w = writer.Writer(st).start()
    key = _key()
    pods = _pods(n_pods)
    w.replace_view(key, store.ViewMeta("PodList", "v1", str(1000 + n_pods), True), pods)
    w.flush_sync(120)
    # MODIFIED events round-robin over the pods, strictly increasing RVs, one apply_events call per event.
    rv = 1000 + n_pods
    events = []
    for i in range(n_events):
        p = pods[i % n_pods]
        rv += 1
        item = store.Item(p.name, p.namespace, str(rv), p.labels, p.fields, p.raw)
        events.append(("MODIFIED", item, str(rv)))
    gc.collect()
    gc.freeze()  # keep the pre-built events out of full GC passes (see bench_loop)
    commits0 = st.commits
    half = w.max_pending_bytes // 2
    enqueue = 0.0
    t0 = time.perf_counter()
    for ev in events:
        if w.pending_bytes > half:  # benchmark-only pacing: measure what is persisted, not what is dropped
            while w.pending_bytes > half // 2:
                time.sleep(0.0005)
        t = time.perf_counter()
        w.apply_events(key, [ev])
        enqueue += time.perf_counter() - t
    w.flush_sync(300)
    elapsed = time.perf_counter() - t0
    gc.unfreeze()
    commits = st.commits - commits0
    dropped = st.writes_dropped
    assert st.view(key).resource_version == str(rv) or dropped  # a sanity check of the run, not of speed
    w.close()
    st.close()
    return [
        _row("watch events persisted/s (protobuf pod 1.5 KB, durable group commit)", n_events / elapsed,
             "events/s", baseline="aim 20000"),
        _row("events per commit", n_events / max(1, commits), "events"),
        _row("caller cost per event (apply_events enqueue)", enqueue / n_events * 1e6, "us"),
        _row("events dropped", dropped, "events"),
    ]


def bench_loop(path: str, n_pods: int, n_events: int) -> list[dict]:
    """Events enqueued from an asyncio loop (as record does) while a ticker measures how late the loop wakes."""
    import asyncio

    st = store.Store.open(path, map_size=8 << 30)
    w = writer.Writer(st).start()
    key = _key("coredns@0123456789ab")
    pods = _pods(n_pods)
    w.replace_view(key, store.ViewMeta("PodList", "v1", str(1000 + n_pods), True), pods)
    w.flush_sync(120)
    rv0 = 1000 + n_pods
    events = [("MODIFIED", store.Item(p.name, p.namespace, str(rv0 + i + 1), p.labels, p.fields, p.raw),
               str(rv0 + i + 1)) for i, p in enumerate(pods[i % n_pods] for i in range(n_events))]
    lags: list[float] = []
    # The 100k pre-built events would make every full GC pass (which holds the GIL) walk them: a benchmark
    # artefact, since a proxy's events live for microseconds. Freeze them out of the collector's sight.
    gc.collect()
    gc.freeze()

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)

    async def produce() -> float:
        stop = asyncio.Event()
        tick = asyncio.ensure_future(ticker(stop))
        t0 = time.perf_counter()
        for i, ev in enumerate(events):
            w.apply_events(key, [ev])
            if i % 50 == 49:  # a watch stream delivers a read's worth of frames, then awaits the socket
                await asyncio.sleep(0)
            while w.pending_bytes > w.max_pending_bytes // 2:
                await asyncio.sleep(0.001)
        await w.flush()
        elapsed = time.perf_counter() - t0
        stop.set()
        await tick
        return elapsed

    elapsed = asyncio.run(produce())
    gc.unfreeze()
    w.close()
    st.close()
    lags.sort()
    return [
        _row("watch events persisted/s, enqueued from an asyncio loop", n_events / elapsed, "events/s"),
        _row("event-loop lag while persisting (p99)", lags[int(len(lags) * 0.99)] * 1e3, "ms"),
        _row("event-loop lag while persisting (max)", lags[-1] * 1e3, "ms"),
    ]


def bench_list(path: str, n: int) -> list[dict]:
    st = store.Store.open(path, map_size=8 << 30)
    w = writer.Writer(st).start()
    key = _key("kube-proxy")
    pods = _pods(n)
    t0 = time.perf_counter()
    w.replace_view(key, store.ViewMeta("PodList", "v1", str(1000 + n), True), pods)
    t_enq = time.perf_counter() - t0
    w.flush_sync(300)
    t_list = time.perf_counter() - t0
    # the same list sealed (as for Secrets)
    skey = store.ViewKey("kubelet", "", "v1", "secrets", "", "", "", "", "protobuf")
    t0 = time.perf_counter()
    w.replace_view(skey, store.ViewMeta("SecretList", "v1", str(1000 + n), True), pods)
    w.flush_sync(300)
    t_sealed = time.perf_counter() - t0
    # read side: the offline LIST path
    reads = {}
    for name, fn in (("raw", st.read_raw), ("items", st.read_view)):
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            _meta, got = fn(key)
            best = min(best, time.perf_counter() - t)
        assert len(got) == n
        reads[name] = best
    t = time.perf_counter()
    body = b"".join(st.raw_items(key))
    t_join = time.perf_counter() - t
    best_sealed = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        st.read_raw(skey)
        best_sealed = min(best_sealed, time.perf_counter() - t)
    used = st.used_bytes()
    w.close()
    st.close()
    return [
        _row(f"record a {n}-pod list (enqueue + durable commit)", t_list * 1e3, "ms"),
        _row(f"record a {n}-pod list: caller's enqueue", t_enq * 1e3, "ms"),
        _row(f"record a {n}-pod list, sealed (AES-GCM)", t_sealed * 1e3, "ms"),
        _row(f"read {n} items as raw bytes (store.read_raw)", reads["raw"] * 1e3, "ms"),
        _row(f"read {n} items as Items (store.read_view)", reads["items"] * 1e3, "ms"),
        _row(f"read {n} items raw + join ({len(body) >> 20} MiB)", t_join * 1e3, "ms"),
        _row(f"read {n} sealed items as raw bytes", best_sealed * 1e3, "ms"),
        _row(f"LMDB pages in use for 2 x {n} pods", used / (1 << 20), "MiB"),
    ]


_RSS_CHILD = r"""
import json, sys, time
def rss():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out
from cache import store, writer
from benchmarks import cache_write as b
path, n, phase = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = rss()
st = store.Store.open(path, map_size=8 << 30)
key = b._key()
if phase == "write":  # streamed as record does with a big list: chunks into a ListAssembly
    w = writer.Writer(st).start()
    asm = w.begin_list(key, "PodList", "v1")
    for i in range(0, n, 1000):
        asm.add(b._pods(1000, rv0=i, start=i, ns_count=0))  # in key order, as the API server pages a list
        w.flush_sync(60)
    asm.commit("5")
    w.flush_sync(300)
    w.close()
    assert st.view(key).count == n
else:
    meta, raw = st.read_raw(key)
    assert len(raw) == n
    del raw
print(json.dumps({"base": base, "after": rss()}))
"""


def bench_rss(root: str, n: int) -> list[dict]:
    path = os.path.join(root, f"rss{n}")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH")) if p)}
    rows = []
    for phase in ("write", "read"):
        out = subprocess.run([sys.executable, "-c", _RSS_CHILD, path, str(n), phase], capture_output=True, text=True,
                             env=env, timeout=600, check=True)
        m = json.loads(out.stdout)
        label = "recorded (streamed list)" if phase == "write" else "after one offline LIST of them (fresh process)"
        rows.append(_row(f"RSS with {n} cached pods, {label}", m["after"]["VmRSS"] / (1 << 20), "MiB",
                         anon_mib=round(m["after"]["RssAnon"] / (1 << 20), 1),
                         file_mib=round(m["after"]["RssFile"] / (1 << 20), 1),
                         interpreter_mib=round(m["base"]["VmRSS"] / (1 << 20), 1)))
    return rows


def run(opts=None) -> list[dict]:
    quick = bool(getattr(opts, "quick", False))
    root = getattr(opts, "workdir", None) or tempfile.mkdtemp(prefix="edgeproxy-bench-cache-")
    rows: list[dict] = []
    rows += bench_events(os.path.join(root, "events"), 2_000 if quick else 10_000, 20_000 if quick else 200_000)
    rows += bench_loop(os.path.join(root, "loop"), 2_000 if quick else 10_000, 20_000 if quick else 100_000)
    rows += bench_list(os.path.join(root, "list"), 10_000)
    for n in (10_000,) if quick else (10_000, 50_000):
        rows += bench_rss(root, n)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_write", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs")
    parser.add_argument("--workdir", default=None, help="directory for the LMDB files (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    opts = parser.parse_args(argv)
    rows = run(opts)
    if opts.json:
        print(json.dumps(rows, indent=1))
    else:
        print(harness.table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
