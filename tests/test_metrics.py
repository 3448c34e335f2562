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
