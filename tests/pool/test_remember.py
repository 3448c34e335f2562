"""pool.remember: the pool's name and the leader followed, kept in the cache directory across restarts; a file that is
not ours is ignored (and replaced at the next change), a directory that cannot be written costs only the memory."""

import logging
import os

from edgeproxy.pool import election, remember


def lease(holder, address="10.0.0.1:10270", renew="2026-01-01T00:00:00.000000Z"):
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "edgeproxy-pool-b", "namespace": "edgeproxy", "resourceVersion": "7",
                         "managedFields": [{"manager": "companion"}],
                         "annotations": {election.ADDRESS_ANNOTATION: address}},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renew}}


def test_the_pool_and_its_leader_survive_a_restart(tmp_path):
    m = remember.Memory(tmp_path)
    assert m.pool == "" and m.lease("b") is None  # a first start
    m.remember_pool("b")
    m.remember_lease("b", lease("edge-1"))
    again = remember.Memory(tmp_path)
    assert again.pool == "b" and again.lease("other") is None
    kept = again.lease("b")
    assert election.holder(kept) == "edge-1" and "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"][election.ADDRESS_ANNOTATION] == "10.0.0.1:10270"
    assert sorted(p.name for p in tmp_path.iterdir()) == [remember.FILE]  # no temporary file left


def test_renewals_are_not_written_a_new_leader_or_address_is(tmp_path):
    m = remember.Memory(tmp_path)
    m.remember_pool("b")
    m.remember_lease("other", lease("edge-9"))  # the elector of a pool being left: nothing
    m.remember_lease("b", lease("edge-1"))
    inode = os.stat(tmp_path / remember.FILE).st_ino
    m.remember_lease("b", lease("edge-1", renew="2026-01-01T00:00:05.000000Z"))
    assert os.stat(tmp_path / remember.FILE).st_ino == inode  # a renewal: nothing written
    m.remember_lease("b", lease("edge-1", address="10.0.0.9:10270"))
    assert remember.Memory(tmp_path).lease("b")["metadata"]["annotations"][election.ADDRESS_ANNOTATION] == (
        "10.0.0.9:10270")
    m.remember_lease("b", None)  # no leader any more
    assert remember.Memory(tmp_path).lease("b") is None and remember.Memory(tmp_path).pool == "b"


def test_a_file_that_is_not_ours_is_ignored_and_replaced(tmp_path, caplog):
    for content in (b"{torn", b"[]", b'{"pool": 3}', b'{"pool": "Not A Name!"}', b'{"pool": "b", "lease": {}}'):
        (tmp_path / remember.FILE).write_bytes(content)
        with caplog.at_level(logging.WARNING, logger="edgeproxy.pool.remember"):
            caplog.clear()
            m = remember.Memory(tmp_path)
        assert m.pool == "" and m.lease("b") is None, content
        assert "is ignored" in caplog.text and "learnt again" in caplog.text
    m.remember_pool("b")
    assert remember.Memory(tmp_path).pool == "b"


def test_a_directory_that_cannot_be_written_costs_only_the_memory(tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file where the directory should be
    m = remember.Memory(blocked / "cache")
    with caplog.at_level(logging.WARNING, logger="edgeproxy.pool.remember"):
        m.remember_pool("b")
    assert m.pool == "b" and "cannot remember the pool" in caplog.text
