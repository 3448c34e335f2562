"""delegate.classify: which failures are outages. A wrong answer here either strands pods or serves stale IPs."""

from __future__ import annotations

import json

import pytest

from cni_plugin import config, delegate, errors


def policy(**offline):
    return config.parse({"cniVersion": "1.0.0", "name": "n", "ipam": {
        "type": "edge-ipam-snapshot", "delegate": {"type": "host-local"}, "offline": offline}}).offline


def err(code, msg, details=""):
    return json.dumps({"code": code, "msg": msg, "details": details}).encode()


@pytest.mark.parametrize(("code", "out", "offline"), [
    (1, err(11, "try again later"), True),
    (1, err(999, "dial tcp 10.96.0.1:443: connect: connection refused"), True),
    (1, err(999, "plugin failed", "context deadline exceeded"), True),
    (1, b"panic: Get https://10.96.0.1/: dial tcp: i/o timeout\n", True),  # not even JSON
    (1, err(999, "failed to allocate for range 0: no IP addresses available in range set"), False),
    (1, err(999, "invalid CIDR address: bogus"), False),
    (1, err(7, "invalid configuration"), False),
    (None, b"", True),  # the deadline passed
])
def test_default_policy(code, out, offline):
    reply = delegate.classify(policy(), code, out, b"", 1.0)
    assert not reply.ok and reply.offline is offline


def test_timeouts_can_be_counted_as_errors():
    reply = delegate.classify(policy(timeout=False), None, b"", b"", 1.0)
    assert reply.timed_out and not reply.offline
    assert isinstance(reply.error("x"), errors.DelegateTimeout)


def test_codes_and_regex_are_configurable():
    p = policy(codes=[42], msgRegex="upstream gone")
    assert delegate.classify(p, 1, err(42, "whatever"), b"", 1).offline
    assert delegate.classify(p, 1, err(1, "upstream gone away"), b"", 1).offline
    assert not delegate.classify(p, 1, err(11, "try again later"), b"", 1).offline


def test_probe_decides_when_configured():
    closed = policy(probe={"tcp": "127.0.0.1:9", "timeout": 0.5})
    assert delegate.classify(closed, 1, err(999, "invalid CIDR address"), b"", 1).offline


def test_success_and_garbage():
    ok = delegate.classify(policy(), 0, b'{"cniVersion": "1.0.0", "ips": []}', b"", 1)
    assert ok.ok and ok.result == {"cniVersion": "1.0.0", "ips": []}
    assert delegate.classify(policy(), 0, b"", b"", 1).ok  # DEL prints nothing
    with pytest.raises(errors.DelegateGarbled):
        delegate.classify(policy(), 0, b"not json", b"", 1)


def test_error_passes_the_delegates_code_through():
    reply = delegate.classify(policy(), 1, err(999, "no IP addresses available"), b"", 1)
    e = reply.error("host-local")
    assert (e.code, e.msg) == (999, "delegate host-local: no IP addresses available")


def test_find(tmp_path):
    exe = tmp_path / "ipam"
    exe.write_text("#!/bin/sh\n")
    with pytest.raises(errors.DelegateMissing):
        delegate.find("ipam", (str(tmp_path),))  # not executable
    exe.chmod(0o755)
    assert delegate.find("ipam", ("/nonexistent", str(tmp_path))) == str(exe)
