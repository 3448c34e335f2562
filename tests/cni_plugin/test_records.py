"""records and durable: whole files or none, corrupt records moved aside, locks, the servable rule."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from cni_plugin import durable, errors, records

RESULT = {"ips": [{"address": "10.1.0.2/24"}], "routes": [], "dns": {}}


def rec(key="ns/pod/eth0", state=records.ACTIVE, **kw):
    now = time.time()
    return records.Record(key, state, kw.get("container", "c1"), kw.get("owner", "c1"), "eth0", RESULT, now, now,
                          kw.get("since", now))


def test_round_trip_and_listing(tmp_path):
    store = records.Store.open(tmp_path, "net")
    with store.lock():
        store.put(rec())
        store.put(rec("ns/other/eth0", records.RELEASED))
    got = store.get("ns/pod/eth0")
    assert (got.state, got.container, got.owner, got.result) == (records.ACTIVE, "c1", "c1", RESULT)
    assert [r.key for r in store.all()] == ["ns/other/eth0", "ns/pod/eth0"]
    assert (tmp_path / "net" / "records" / "ns%2Fpod%2Feth0.json").exists()
    store.delete("ns/other/eth0")
    assert store.get("ns/other/eth0") is None


@pytest.mark.parametrize("garbage", [b"", b"{", b"[]", b'{"key": "x"}',
                                     json.dumps({**json.loads(rec().to_json()), "state": "LIMBO"}).encode()])
def test_corrupt_record_is_moved_aside(tmp_path, garbage):
    store = records.Store.open(tmp_path, "net")
    path = tmp_path / "net" / "records" / records.filename("ns/pod/eth0")
    path.write_bytes(garbage)
    assert store.get("ns/pod/eth0") is None
    assert not path.exists() and store.corrupt() == [path.name + ".corrupt"]


def test_servable():
    now = time.time()
    assert rec().servable(now, None)
    assert rec(state=records.HELD, since=now - 100).servable(now, None)
    assert not rec(state=records.HELD, since=now - 100).servable(now, 50)
    held = rec(state=records.HELD, since=now - 100)
    assert held.replace(container="c2").since == held.since  # a rewrite is not a new state
    assert held.replace(state=records.ACTIVE).since >= now
    assert not rec(state=records.RELEASED).servable(now, None)


def test_write_replaces_whole_and_sweeps_temp_files(tmp_path):
    target = tmp_path / "f.json"
    durable.write(target, b"old")
    code = ("import os, sys; from pathlib import Path; from cni_plugin import durable; "
            "durable.write(Path(sys.argv[1]), b'new')")
    env = {**os.environ, durable.TEST_HOOK: "kill-before-rename", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run([sys.executable, "-c", code, str(target)], env=env, timeout=60, check=False)
    assert proc.returncode == -9
    assert target.read_bytes() == b"old"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(durable.TMP_PREFIX)]
    assert len(leftovers) == 1 and leftovers[0].read_bytes() == b"new"  # durable, but never renamed into place
    assert durable.sweep_tmp(tmp_path) == [str(p) for p in leftovers]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_key_lock_is_exclusive(tmp_path):
    store = records.Store.open(tmp_path, "net")
    with store.key_lock("ns/pod/eth0") as got:
        assert got
        with store.key_lock("ns/pod/eth0", blocking=False) as again:
            assert not again
        with store.key_lock("ns/other/eth0", blocking=False) as other:
            assert other


def test_unwritable_store_is_a_store_failure(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(errors.StoreFailure):
        records.Store.open(blocker, "net")  # a data dir under a regular file

