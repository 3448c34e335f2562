"""What the operations side costs the proxy: the request log (and per-component record) per request, a /metrics scrape
with a populated cache, and a credential reload after kubelet rotates its certificate.

`python -m benchmarks.ops` (or `python -m benchmarks ops`). Figures only; nothing is asserted.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from benchmarks import harness
from cache import store, writer
from edgeproxy import logs, metrics, tls, upstream

SCENARIO = "ops"


def bench_request_log(n: int) -> list[dict[str, object]]:
    logs.setup(level="info", fmt="json", stream=io.StringIO())  # 1 in 100 lines formatted, as installed
    logs.reset_activity()
    started = time.perf_counter()
    for i in range(n):
        logs.request(component="kubelet", verb="get", path=f"/api/v1/namespaces/default/pods/p{i % 50}", code=200,
                     source="upstream", duration=0.001, resource="pods")
    per = (time.perf_counter() - started) / n
    logs.setup(level="warning", fmt="text")
    return [harness.row(SCENARIO, "request log + activity record", per * 1e6, "us/request",
                        note="1 in 100 lines written as JSON")]


def bench_scrape(work: Path, views: int, items_per_view: int) -> list[dict[str, object]]:
    st = store.Store.open(str(work / "cache"), map_size=1 << 30, durable=False)
    w = writer.Writer(st).start()
    raw = json.dumps({"metadata": {"name": "x" * 20, "namespace": "default"}, "spec": {"pad": "y" * 400}}).encode()
    for v in range(views):
        key = store.ViewKey(f"client{v % 20}", "", "v1", "pods", f"ns{v}", "", "", "", "json")
        items = [store.Item(f"p{i}", f"ns{v}", str(i + 1), {}, {}, raw) for i in range(items_per_view)]
        w.replace_view(key, store.ViewMeta("PodList", "v1", str(items_per_view), True), items)
    w.flush_sync(120)

    class Up:
        online = True

        def on_change(self, callback: object) -> None:
            pass

    up = Up()
    metrics.CACHE.attach(store=st, writer=w, upstream=up)
    try:
        metrics.render()
        rounds = 50
        started = time.perf_counter()
        for _ in range(rounds):
            body = metrics.render()
        per = (time.perf_counter() - started) / rounds
    finally:
        metrics.CACHE.detach(up)
        w.close()
        st.close()
    return [harness.row(SCENARIO, f"/metrics render, cache of {views} views x {items_per_view} items", per * 1000,
                        "ms/scrape", note=f"{len(body)} bytes")]


def bench_reload(work: Path, rounds: int) -> list[dict[str, object]]:
    ca = tls.make_ca()
    ca.write(work / "ca.crt", work / "ca.key")
    tls.issue(ca, "system:node:edge-1", ["system:nodes"], client=True).write(work / "c.crt", work / "c.key")
    kc = work / "kubeconfig"
    kc.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:6443",
                                               "certificate-authority": str(work / "ca.crt")}}],
        "users": [{"name": "u", "user": {"client-certificate": str(work / "c.crt"),
                                         "client-key": str(work / "c.key")}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    paths = [str(kc), str(work / "c.crt"), str(work / "c.key"), str(work / "ca.crt")]
    reloader = tls.Reloader(lambda: paths, lambda: upstream.ssl_context(upstream.load_kubeconfig(kc)))
    started = time.perf_counter()
    for _ in range(rounds):
        upstream.ssl_context(upstream.load_kubeconfig(kc))
    per_reload = (time.perf_counter() - started) / rounds
    started = time.perf_counter()
    for _ in range(rounds * 10):
        reloader.check()  # nothing changed: the cost of one poll
    per_poll = (time.perf_counter() - started) / (rounds * 10)
    return [harness.row(SCENARIO, "credential reload (kubeconfig + TLS context)", per_reload * 1000, "ms"),
            harness.row(SCENARIO, "credential poll, unchanged (4 stat calls)", per_poll * 1e6, "us")]


def run(opts: harness.Options) -> list[dict[str, object]]:
    work = opts.work or Path(".")
    quick = opts.quick
    rows = bench_request_log(20_000 if quick else 200_000)
    rows += bench_scrape(work, 50 if quick else 500, 20)
    rows += bench_reload(work, 20 if quick else 100)
    return rows


if __name__ == "__main__":
    raise SystemExit(harness.main(run))
