"""health: the edge cache's report, judged by the proxy and read by the companion."""

import pytest

from edgeproxy.companion import errors, health


def facts(**kw):
    base = {"cache_open": True, "counters": {"writes_failed": 2}, "previous": {"writes_failed": 2},
            "kubelet_pods_complete": True, "node": "edge-1"}
    return health.Facts(**{**base, **kw})


@pytest.mark.parametrize(("f", "healthy", "reason"), [
    (facts(), True, ""),
    (facts(previous={}), True, ""),  # the first report: counters since the cache was made are history
    (facts(counters={"writes_failed": 3}), False, "writes_failed"),
    (facts(counters={"corrupt_records": 1}, previous={"corrupt_records": 0}), False, "corrupt_records"),
    (facts(cache_open=False), False, "no cache"),
    (facts(kubelet_pods_complete=False), False, "not cached complete"),
    (facts(node=""), False, "node's name"),
])
def test_judge(f, healthy, reason):
    r = health.judge(f)
    assert r.healthy is healthy and reason in r.reason


def test_round_trip():
    text = health.encode(health.Report(False, "disk full"), now=0)
    assert text == '{"healthy":false,"at":"1970-01-01T00:00:00Z","reason":"disk full"}'
    assert health.decode(text) == health.Report(False, "disk full", "1970-01-01T00:00:00Z")


@pytest.mark.parametrize("bad", ["", "yes", "[]", '{"healthy":"true"}'])
def test_bad_reports(bad):
    with pytest.raises(errors.InvalidAnnotation):
        health.decode(bad)
