"""Write docs/grafana-dashboard.json: the edgeproxy Grafana dashboard, from the metric names in edgeproxy/metrics.py.

Run `python docs/make_dashboard.py` after changing a panel; tests/commands/test_debug.py checks the JSON is what this
script writes and that every metric a panel queries is one edgeproxy exports. One dashboard serves one host or a fleet
(federated Prometheus, as the edge field report runs it): the `instance` variable selects hosts, `All` aggregates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).with_name("grafana-dashboard.json")
SEL = 'instance=~"$instance"'

# (title, [(expr, legend)], unit, kind, width)
ROWS: list[tuple[str, list[tuple[str, list[tuple[str, str]], str, str, int]]]] = [
    ("Overview", [
        ("Hosts online", [(f"sum(edgeproxy_online{{{SEL}}})", "online"),
                          (f"count(edgeproxy_online{{{SEL}}} == 0)", "offline")], "short", "stat", 6),
        ("Requests/s by who answered", [
            (f"sum by (answered_by) (rate(edgeproxy_requests_total{{{SEL}}}[$__rate_interval]))", "{{answered_by}}")],
         "reqps", "timeseries", 9),
        ("Open watches", [(f"sum by (component, answered_by) (edgeproxy_open_watches{{{SEL}}})",
                           "{{component}} ({{answered_by}})")], "short", "timeseries", 9),
    ]),
    ("Requests", [
        ("Requests/s by component", [
            (f"sum by (component) (rate(edgeproxy_requests_total{{{SEL}}}[$__rate_interval]))", "{{component}}")],
         "reqps", "timeseries", 8),
        ("Errors/s by code", [
            (f'sum by (code, answered_by) (rate(edgeproxy_requests_total{{{SEL},code=~"4..|5.."}}'
             "[$__rate_interval]))", "{{code}} {{answered_by}}")], "reqps", "timeseries", 8),
        ("Latency p50 / p99 (to response headers)", [
            ("histogram_quantile(0.5, sum by (le, answered_by) (rate(edgeproxy_request_duration_seconds_bucket"
             f"{{{SEL}}}[$__rate_interval])))", "p50 {{answered_by}}"),
            ("histogram_quantile(0.99, sum by (le, answered_by) (rate(edgeproxy_request_duration_seconds_bucket"
             f"{{{SEL}}}[$__rate_interval])))", "p99 {{answered_by}}")], "s", "timeseries", 8),
    ]),
    ("Upstream and WAN", [
        ("API servers up", [(f"edgeproxy_upstream_up{{{SEL}}}", "{{instance}} {{server}}")], "short", "timeseries", 6),
        ("WAN bytes/s", [(f"sum by (direction) (rate(edgeproxy_upstream_bytes_total{{{SEL}}}[$__rate_interval]))",
                          "{{direction}}")], "Bps", "timeseries", 6),
        ("Probe latency p99", [
            ("histogram_quantile(0.99, sum by (le, server) (rate(edgeproxy_upstream_probe_duration_seconds_bucket"
             f"{{{SEL}}}[$__rate_interval])))", "{{server}}")], "s", "timeseries", 6),
        ("Connect failures and state changes", [
            (f"sum by (server) (increase(edgeproxy_upstream_connect_failures_total{{{SEL}}}[$__rate_interval]))",
             "connect failures {{server}}"),
            (f"sum by (state) (increase(edgeproxy_state_changes_total{{{SEL}}}[$__rate_interval]))",
             "went {{state}}")], "short", "timeseries", 6),
    ]),
    ("Cache and offline", [
        ("Answered from the cache: hit ratio", [
            (f'sum(rate(edgeproxy_requests_total{{{SEL},answered_by="cache",code=~"2.."}}[$__rate_interval])) / '
             f'sum(rate(edgeproxy_requests_total{{{SEL},answered_by="cache"}}[$__rate_interval]))', "hits"),
        ], "percentunit", "timeseries", 6),
        ("Time offline", [(f"edgeproxy_offline_current_seconds{{{SEL}}}", "offline now {{instance}}"),
                          (f"increase(edgeproxy_offline_seconds_total{{{SEL}}}[$__range])", "in range {{instance}}")],
         "s", "timeseries", 6),
        ("Views and objects held", [(f"sum(edgeproxy_cache_views{{{SEL}}})", "views"),
                                    (f"sum(edgeproxy_cache_items{{{SEL}}})", "items in views"),
                                    (f"sum(edgeproxy_cache_objects{{{SEL}}})", "objects")], "short", "timeseries", 6),
        ("Cache bytes used / bound", [(f"edgeproxy_cache_used_bytes{{{SEL}}}", "used {{instance}}"),
                                      (f"edgeproxy_cache_max_bytes{{{SEL}}}", "bound {{instance}}")],
         "bytes", "timeseries", 6),
        ("Commit latency p50 / p99", [
            ("histogram_quantile(0.5, sum by (le) (rate(edgeproxy_cache_commit_duration_seconds_bucket"
             f"{{{SEL}}}[$__rate_interval])))", "p50"),
            ("histogram_quantile(0.99, sum by (le) (rate(edgeproxy_cache_commit_duration_seconds_bucket"
             f"{{{SEL}}}[$__rate_interval])))", "p99")], "s", "timeseries", 6),
        ("Pending writes", [(f"sum(edgeproxy_cache_pending_writes{{{SEL}}})", "operations"),
                            (f"sum(edgeproxy_cache_pending_bytes{{{SEL}}})", "bytes")], "short", "timeseries", 6),
        ("Events applied / lists replaced per s", [
            (f"sum(rate(edgeproxy_cache_events_applied_total{{{SEL}}}[$__rate_interval]))", "events"),
            (f"sum(rate(edgeproxy_cache_lists_replaced_total{{{SEL}}}[$__rate_interval]))", "lists")],
         "ops", "timeseries", 6),
        ("Evictions, dropped and failed writes", [
            (f"sum(increase(edgeproxy_cache_evictions_total{{{SEL}}}[$__rate_interval]))", "evictions"),
            (f"sum(increase(edgeproxy_cache_writes_dropped_total{{{SEL}}}[$__rate_interval]))", "dropped"),
            (f"sum(increase(edgeproxy_cache_writes_failed_total{{{SEL}}}[$__rate_interval]))", "failed"),
            (f"sum(increase(edgeproxy_cache_corrupt_records_total{{{SEL}}}[$__rate_interval]))", "corrupt")],
         "short", "timeseries", 6),
    ]),
    ("TLS", [
        ("Days until certificates expire", [
            (f"min by (instance, file) ((edgeproxy_certificate_expiry_timestamp_seconds{{{SEL}}} - time()) / 86400)",
             "{{instance}} {{file}}")], "d", "timeseries", 12),
        ("Credential reloads", [
            (f"sum by (result) (increase(edgeproxy_certificate_reloads_total{{{SEL}}}[$__rate_interval]))",
             "{{result}}")], "short", "timeseries", 12),
    ]),
]


def panel(pid: int, title: str, targets: list[tuple[str, str]], unit: str, kind: str, x: int, y: int,
          w: int) -> dict:
    out: dict = {
        "id": pid,
        "title": title,
        "type": kind,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for i, (expr, legend) in enumerate(targets)],
    }
    if kind == "stat":
        out["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "value"}
    return out


def build(rows: list = ROWS) -> dict:
    panels: list[dict] = []
    pid, y = 1, 0
    for title, row_panels in rows:
        panels.append({"id": pid, "type": "row", "title": title, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid, y, x = pid + 1, y + 1, 0
        for p_title, targets, unit, kind, width in row_panels:
            if x + width > 24:
                x, y = 0, y + 8
            panels.append(panel(pid, p_title, targets, unit, kind, x, y, width))
            pid, x = pid + 1, x + width
        y += 8
    return {
        "title": "edgeproxy",
        "uid": "edgeproxy",
        "description": "edgeproxy, the caching Kubernetes API proxy of edge hosts: requests, online/offline, WAN, "
                       "cache, certificates. Generated by docs/make_dashboard.py.",
        "tags": ["edgeproxy", "kubernetes", "edge"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "instance", "type": "query", "label": "host",
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": "label_values(edgeproxy_online, instance)", "refId": "instance"},
             "definition": "label_values(edgeproxy_online, instance)",
             "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1},
        ]},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    OUT.write_text(render())
    sys.stdout.write(f"wrote {OUT}\n")
