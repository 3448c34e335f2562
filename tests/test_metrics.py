"""metrics.py: one registry, every family named edgeproxy_*, parseable exposition."""

from prometheus_client import parser

from edgeproxy import metrics


def test_render_parses_and_names_are_namespaced():
    metrics.REQUESTS.labels("kubelet", "list", "pods", "200", "upstream").inc()
    families = list(parser.text_string_to_metric_families(metrics.render().decode()))
    names = {f.name for f in families}
    assert {"edgeproxy_requests", "edgeproxy_request_duration_seconds", "edgeproxy_upstream_up",
            "edgeproxy_open_watches", "edgeproxy_upstream_bytes", "edgeproxy_online"} <= names
    assert all(n.startswith("edgeproxy_") for n in names)


def test_resident_memory_is_reported_anonymous_and_file_backed_apart():
    families = {f.name: f for f in parser.text_string_to_metric_families(metrics.render().decode())}
    anon = families["edgeproxy_memory_rss_anon_bytes"].samples[0].value
    filed = families["edgeproxy_memory_rss_file_bytes"].samples[0].value
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    # this very process's figures, as the kernel counts them (each moves a little between two reads)
    assert abs(anon - int(status["RssAnon"].split()[0]) * 1024) < 64 << 20
    assert abs(filed - int(status["RssFile"].split()[0]) * 1024) < 64 << 20
    assert anon > 0 and filed > 0
