"""journal: deferred releases, one private file each; notes of containers that hold no lease."""

from __future__ import annotations

import os
import time

from cni_plugin import journal, records


def test_journal_entries_are_private(tmp_path):
    store = records.Store.open(tmp_path, "net")
    jr = journal.Journal(store)
    jr.add(journal.Release("c1", "eth0", "ns/pod/eth0", "", {"ipam": {"type": "x", "token": "s3cret"}}, time.time()))
    (entry,) = (tmp_path / "net" / "journal").glob("*.json")
    assert entry.stat().st_mode & 0o777 == 0o600
    assert jr.get("c1", "eth0").conf["ipam"]["token"] == "s3cret"
    assert jr.drop("c1", "eth0") and jr.pending() == []


def test_no_lease_notes_expire(tmp_path):
    jr = journal.Journal(records.Store.open(tmp_path, "net"))
    jr.note_no_lease("c9", "eth0")
    assert jr.holds_no_lease("c9", "eth0") and not jr.holds_no_lease("c8", "eth0")
    jr.prune_no_lease(time.time())
    assert jr.holds_no_lease("c9", "eth0")
    old = time.time() - journal.NO_LEASE_MAX_AGE - 10
    os.utime(os.path.join(jr.no_lease, journal.entry_name("c9", "eth0")), (old, old))
    jr.prune_no_lease(time.time())
    assert not jr.holds_no_lease("c9", "eth0")
