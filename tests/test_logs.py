"""Logs: JSON lines that parse with their extra fields, flags over environment, sampling, state lines."""

import io
import json
import logging
import os

import pytest

from edgeproxy import logs


@pytest.fixture
def stream(monkeypatch):
    monkeypatch.delenv(logs.ENV_LEVEL, raising=False)
    monkeypatch.delenv(logs.ENV_FORMAT, raising=False)
    monkeypatch.delenv(logs.ENV_SAMPLE, raising=False)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    yield out
    # the root logger as it was: a handler left on this test's captured stderr would write to a closed file later
    for h in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(h)
    root.setLevel(level)


def lines(out):
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_lines_parse_with_extra_fields(stream):
    logs.setup(level="info", fmt="json", stream=stream)
    logging.getLogger("edgeproxy.test").info("hello %s", "world", extra={"component": "kubelet", "n": 3})
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("edgeproxy.test").exception("failed")
    first, second = lines(stream)
    assert first["msg"] == "hello world" and first["level"] == "info" and first["logger"] == "edgeproxy.test"
    assert first["component"] == "kubelet" and first["n"] == 3
    assert first["ts"].endswith("+00:00")
    assert "RuntimeError: boom" in second["exc"]


def test_state_change_is_one_line_with_fields(stream):
    logs.setup(fmt="json", stream=stream)
    logs.state_change("upstream_offline", server="https://10.0.0.1:6443", error="connect timeout", name="x")
    (line,) = lines(stream)
    assert line["event"] == "upstream_offline"
    assert line["server"] == "https://10.0.0.1:6443" and line["error"] == "connect timeout"
    assert line["f_name"] == "x"  # a field named like a LogRecord attribute is kept, prefixed
    assert line["logger"] == "edgeproxy.state"
    assert line["msg"].startswith("upstream_offline server=https://10.0.0.1:6443 error=\"connect timeout\"")


def test_flag_wins_over_environment(stream, monkeypatch):
    monkeypatch.setenv(logs.ENV_LEVEL, "error")
    monkeypatch.setenv(logs.ENV_FORMAT, "json")
    logs.setup(stream=stream)
    logging.getLogger("edgeproxy.test").warning("dropped")
    assert stream.getvalue() == ""
    logs.setup(level="debug", fmt="text", stream=stream)
    logging.getLogger("edgeproxy.test").debug("kept", extra={"view": "pods"})
    assert "DEBUG edgeproxy.test: kept view=pods" in stream.getvalue()


def test_bad_level_is_an_error():
    with pytest.raises(ValueError, match="unknown log level"):
        logs.setup(level="chatty")


def test_requests_are_sampled_but_errors_always_logged(stream, monkeypatch):
    monkeypatch.setenv(logs.ENV_SAMPLE, "10")
    logs.setup(level="info", fmt="json", stream=stream)
    logged = [logs.request(component="kubelet", verb="get", path="/api/v1/nodes/n1", code=200, source="upstream",
                           duration=0.002) for _ in range(100)]
    assert sum(logged) == 10
    assert logs.request(component="kubelet", verb="list", path="/api/v1/pods", code=503, source="cache",
                        duration=0.001)
    last = lines(stream)[-1]
    assert last["code"] == 503 and last["source"] == "cache" and last["duration_ms"] == 1.0


def test_debug_logs_every_request(stream):
    logs.setup(level="debug", fmt="json", stream=stream)
    for _ in range(5):
        logs.request(component="coredns", verb="watch", path="/api/v1/services", code=200, source="upstream",
                     duration=0.0)
    assert len([x for x in lines(stream) if x["logger"] == "edgeproxy.request"]) == 5


def test_recent_lines_are_kept_for_collect(stream):
    logs.setup(level="info", fmt="text", stream=stream)
    logs.state_change("view_complete", view="kubelet/v1/pods")
    assert json.loads(logs.recent(1)[0])["event"] == "view_complete"


def test_activity_per_component_keeps_last_requests_and_errors(stream):
    logs.setup(level="warning", fmt="json", stream=stream)
    for i in range(60):
        logs.request(component="diag-kubelet", verb="get", path=f"/api/v1/nodes/n{i}", code=200, source="upstream",
                     duration=0.001, resource="nodes")
    logs.request(component="diag-kubelet", verb="list", path="/api/v1/pods", code=503, source="cache",
                 duration=0.0, resource="pods", note="view incomplete")
    snap = logs.activity("diag-kubelet")["diag-kubelet"]
    assert snap["total"] == 61
    assert len(snap["last"]) == 50 and snap["last"][-1]["path"] == "/api/v1/pods"
    assert snap["errors"] == [snap["last"][-1]] and snap["errors"][0]["note"] == "view incomplete"
    assert {"verb": "get", "resource": "nodes", "code": 200, "source": "upstream", "n": 60} in snap["counts"]


def test_cache_and_upstream_state_changes_are_json_lines_with_an_event(stream, tmp_path):
    # The cache and the upstream pool log their state changes with stdlib logging and `extra=`: the JSON format
    # turns them into one object per line an operator can filter on `event`.
    from cache import store, writer

    logs.setup(level="info", fmt="json", stream=stream)
    st = store.Store.open(str(tmp_path / "cache"), map_size=16 << 20)
    w = writer.Writer(st).start()
    try:
        key = store.ViewKey("kubelet", "", "v1", "pods", "", "", "spec.nodeName=edge-1", "", "json")
        item = store.Item("p1", "default", "5", {}, {}, b'{"metadata":{"name":"p1"}}')
        w.replace_view(key, store.ViewMeta("PodList", "v1", "5", True), [item])
        assert w.flush_sync(10)
        w.replace_view(key, store.ViewMeta("PodList", "v1", "6", True), [item])  # already complete: no line
        assert w.flush_sync(10)
    finally:
        w.close()
        st.close()
    events = [x for x in lines(stream) if x.get("event") == "view_complete"]
    assert len(events) == 1 and events[0]["items"] == 1 and events[0]["resource_version"] == "5"
    assert "pods" in events[0]["view"]


def _journal_file(tmp_path, monkeypatch):
    """A file standing in for the journal's stream: $JOURNAL_STREAM names its device:inode, as systemd does."""
    path = tmp_path / "journal-stream"
    f = open(path, "w")  # noqa: SIM115 (closed by the caller)
    st = os.fstat(f.fileno())
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    return path, f


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_journal_stream_lines_carry_their_syslog_priority(stream, tmp_path, monkeypatch, fmt):
    path, f = _journal_file(tmp_path, monkeypatch)
    with f:
        logs.setup(level="debug", fmt=fmt, stream=f)
        log = logging.getLogger("edgeproxy.test")
        log.debug("d")
        log.info("i")
        log.warning("upstream %s is down", "https://10.0.0.1:6443", extra={"event": "server_down"})
        log.error("e")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("the cache cannot be opened")
    out = path.read_text().splitlines()
    assert [line[:3] for line in out[:4]] == ["<7>", "<6>", "<4>", "<3>"], out
    assert all(line.startswith("<3>") for line in out[4:]), out  # the traceback's lines too
    if fmt == "json":
        assert json.loads(out[2][3:])["event"] == "server_down"  # after the prefix, the JSON object as before


def test_no_priority_prefix_when_stderr_is_not_the_journal(stream, tmp_path, monkeypatch):
    _path, f = _journal_file(tmp_path, monkeypatch)
    f.close()
    logs.setup(level="info", fmt="json", stream=stream)  # another stream than the one $JOURNAL_STREAM names
    logging.getLogger("edgeproxy.test").warning("w")
    assert json.loads(stream.getvalue())["level"] == "warning"


def test_without_a_stream_lines_go_to_stderr_as_it_is_now(stream, monkeypatch):
    logs.setup(level="info", fmt="text")
    later = io.StringIO()
    monkeypatch.setattr("sys.stderr", later)  # swapped after setup (as pytest does per test, then closes the file)
    logging.getLogger("edgeproxy.test").warning("after the swap")
    assert "after the swap" in later.getvalue()
