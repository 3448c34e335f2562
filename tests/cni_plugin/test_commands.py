"""The snapshot model end to end: the built plugin, the real host-local behind an offline switch, no mocks.

Each test plays the container runtime against one simulated node (conftest.Node). Here the plugin is called the way
bridge/ptp call their IPAM (same stdin, same environment); test_main.py runs the real bridge and ptp in netns.
The matrix is research/cni-ipam-snapshot.md's: restarts and reboots online and offline, new pods offline, the
journal, refusals, misclassification, hangs, parallelism, crashes, corrupt and read-only stores, dual stack.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.cni_plugin.conftest import HOST_PATH, needs_root

pytestmark = needs_root


def _cmdlines():
    for p in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            yield p.read_bytes()
        except OSError:
            continue


def active_ips(node) -> list[str]:
    """IPs claimed by ACTIVE/HELD records: must never repeat (two pods, one IP)."""
    ips = [ip["address"] for r in node.records().values() if r["state"] != "RELEASED" for ip in r["result"]["ips"]]
    assert len(ips) == len(set(ips)), ips
    return ips


# ---- restart and reboot ----

def test_restart_with_new_container_online_keeps_the_ip_and_moves_the_lease(node):
    first = node.add("c1")
    assert first.code == 0 and first.ips == ["10.77.0.2/24"]
    assert node.delete("c1").code == 0
    assert node.leases() == {}
    second = node.add("c2")
    assert second.ips == first.ips
    assert node.leases() == {"10.77.0.2": ("c2", "eth0")}
    rec = node.records()["default/web/eth0"]
    assert (rec["state"], rec["container"], rec["owner"]) == ("ACTIVE", "c2", "c2")
    assert node.delete("c2").code == 0
    assert node.leases() == {}


def test_restart_with_new_container_offline_is_served_from_the_snapshot(node):
    ip = node.add("c1").ips
    node.offline()
    assert node.delete("c1").code == 0  # the release cannot happen: journaled, record HELD
    assert node.records()["default/web/eth0"]["state"] == "HELD"
    assert [e["owner"] for e in node.journal()] == ["c1"]
    again = node.add("c2")
    assert again.code == 0 and again.ips == ip
    rec = node.records()["default/web/eth0"]
    assert (rec["state"], rec["container"], rec["owner"]) == ("ACTIVE", "c2", "c1")
    assert node.journal() == []  # the lease is in use again: never release it
    node.online()
    assert node.leases() == {"10.77.0.2": ("c1", "eth0")}
    assert node.delete("c2").code == 0  # released under the owner's id: no leak
    assert node.leases() == {}


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_reboot_old_del_after_new_add(node, offline):
    ip = node.add("c1").ips
    other = node.add("o1", pod="other").ips
    if offline:
        node.offline()
    assert node.add("c2").ips == ip  # after a reboot the new sandbox comes first
    assert node.delete("c1").code == 0  # then the runtime cleans the old one up
    rec = node.records()["default/web/eth0"]
    assert (rec["state"], rec["container"]) == ("ACTIVE", "c2")
    assert ip[0].split("/")[0] in node.leases()  # the old DEL did not free the IP the pod uses
    node.online()
    assert node.add("n1", pod="newcomer").ips not in (ip, other)
    assert node.delete("c2").code == 0
    assert ip[0].split("/")[0] not in node.leases()
    active_ips(node)


@pytest.mark.parametrize("offline", [False, True], ids=["online", "offline"])
def test_reboot_old_del_before_new_add(node, offline):
    ip = node.add("c1").ips
    if offline:
        node.offline()
    assert node.delete("c1").code == 0
    assert node.add("c2").ips == ip
    node.online()
    assert node.delete("c2").code == 0
    assert node.add("x", pod="someone-else").code == 0
    assert node.journal() == []
    assert set(node.leases()) == {node.records()["default/someone-else/eth0"]["result"]["ips"][0]["address"][:-3]}


# ---- offline: new pods, and back online ----

@pytest.mark.parametrize("mode", ["refused", "code11"])
def test_new_pod_offline_gets_try_again_later(node, mode):
    node.add("c1")
    node.offline(mode)
    reply = node.add("n1", pod="brand-new")
    assert reply.code == 11
    assert "offline" in reply.out["msg"]
    assert "default/brand-new/eth0" not in node.records()
    # The runtime DELs the failed sandbox (and retries with new ones): the delegate holds nothing for them, so
    # there is nothing to journal and replay later.
    for attempt in ("n1", "n1", "n2"):
        if attempt == "n2":
            assert node.add("n2", pod="brand-new").code == 11
        assert node.delete(attempt, pod="brand-new").code == 0
    assert node.journal() == []


def test_back_online_journal_replayed_and_no_lease_leaked(node):
    b = node.add("b1", pod="b").ips
    node.add("a1", pod="a")
    node.offline()
    assert node.delete("a1", pod="a").code == 0
    assert node.delete("x9", pod="never-seen").code == 0  # unknown container: journaled too
    assert {e["owner"] for e in node.journal()} == {"a1", "x9"}
    node.online()
    c = node.add("c1", pod="c").ips
    assert node.journal() == []
    assert node.records()["default/a/eth0"]["state"] == "RELEASED"
    assert sorted(node.leases()) == sorted(ip.split("/")[0] for ip in b + c)
    node.offline()
    assert node.add("a2", pod="a").code == 11  # released while away: may be someone else's now


def test_journal_replayed_by_a_del_too(node):
    node.add("a1", pod="a")
    node.add("b1", pod="b")
    node.offline()
    node.delete("a1", pod="a")
    node.online()
    assert node.delete("b1", pod="b").code == 0
    assert node.journal() == [] and node.leases() == {}


# ---- refusals and failures that are not outages ----

def test_refused_requested_ip_falls_back_to_any_address(node):
    ip = node.add("a1", pod="a").ips
    node.delete("a1", pod="a")
    # Someone else asks for (and gets) that very address while pod a is away.
    taken = node.conf(args={"cni": {"ips": [ip[0].split("/")[0]]}})
    assert node.add("t1", pod="thief", conf=taken).ips == ip
    back = node.add("a2", pod="a")
    assert back.code == 0 and back.ips != ip
    assert "refused" in back.stderr
    recs = node.records()
    assert recs["default/a/eth0"]["state"] == "ACTIVE" and recs["default/thief/eth0"]["state"] == "ACTIVE"
    active_ips(node)


def test_missing_delegate_is_an_error_not_an_outage(node):
    node.add("c1")
    conf = node.conf()
    conf["ipam"]["delegate"]["type"] = "no-such-ipam"
    reply = node.add("c2", conf=conf)
    assert reply.code == 101 and "not found" in reply.out["msg"]
    assert node.records()["default/web/eth0"]["container"] == "c1"


def test_misconfigured_delegate_is_an_error_not_an_outage(node):
    node.add("c1")
    conf = node.conf()
    conf["ipam"]["delegate"]["ranges"] = [[{"subnet": "bogus"}]]
    reply = node.add("c2", conf=conf)
    assert reply.rc != 0 and reply.code not in (0, 11)
    assert "invalid CIDR" in reply.out["msg"]


def test_exhausted_delegate_is_an_error_not_an_outage(make_node):
    node = make_node(ranges=[[{"subnet": "10.78.0.0/30"}]])  # one address
    ip = node.add("a1", pod="a").ips
    node.delete("a1", pod="a")
    assert node.add("b1", pod="b").ips == ip
    reply = node.add("a2", pod="a")  # refused, then the pool is empty: the delegate's own error, not the snapshot
    assert reply.code == 999 and "no IP addresses available" in reply.out["msg"]
    reply = node.add("c1", pod="c")
    assert reply.code == 999
    active_ips(node)


def test_hanging_delegate_is_timed_out_and_counted_as_offline(make_node):
    node = make_node(ipam={"delegateTimeout": 0.5})
    ip = node.add("c1").ips
    node.offline("hang")
    started = time.monotonic()
    assert node.add("c2").ips == ip  # the restart is served from the snapshot
    assert node.add("n1", pod="new").code == 11
    assert time.monotonic() - started < 30  # bounded by the timeout, not by the hang
    assert node.delete("n1", pod="new").code == 0
    assert [e["owner"] for e in node.journal()] == ["n1"]  # a timed-out ADD may have allocated: release later
    assert not any(b"sleep\x00600" in cmdline for cmdline in _cmdlines())  # the hung delegate was killed


def test_hanging_delegate_with_timeouts_not_counted_as_offline(make_node):
    node = make_node(ipam={"delegateTimeout": 0.3, "offline": {"timeout": False}})
    node.add("c1")
    node.offline("hang")
    reply = node.add("c2")
    assert reply.code == 102


def test_probe_decides_when_configured(make_node):
    # Nothing listens on port 9 of 127.0.0.1: the probe says offline even for an unrecognised error message.
    node = make_node(ipam={"offline": {"msgRegex": "", "codes": [], "probe": {"tcp": "127.0.0.1:9", "timeout": 1}}})
    ip = node.add("c1").ips
    node.offline()
    assert node.add("c2").ips == ip


# ---- concurrency, crashes, storage ----

def test_fifty_parallel_adds_and_dels(node):
    pods = [f"p{i:02d}" for i in range(50)]
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        adds = list(pool.map(lambda p: node.add(f"c-{p}", pod=p), pods))
    assert all(r.code == 0 for r in adds), [r for r in adds if r.code]
    ips = [r.ips[0] for r in adds]
    assert len(set(ips)) == 50
    assert len(node.leases()) == 50
    assert sorted(active_ips(node)) == sorted(ips)
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        dels = list(pool.map(lambda p: node.delete(f"c-{p}", pod=p), pods))
    assert all(r.code == 0 for r in dels)
    assert node.leases() == {}
    assert {r["state"] for r in node.records().values()} == {"RELEASED"}


def test_old_del_racing_new_add_of_the_same_pod(node):
    """After a reboot the runtime may run the old sandbox's DEL and the new one's ADD at once: same IP, one lease."""
    pods = [f"r{i}" for i in range(8)]
    ips = {p: node.add(f"old-{p}", pod=p).ips for p in pods}

    def race(pod):
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            dele = pool.submit(node.delete, f"old-{pod}", pod=pod)
            add = pool.submit(node.add, f"new-{pod}", pod=pod)
            return dele.result(), add.result()
    with concurrent.futures.ThreadPoolExecutor(len(pods)) as pool:
        outcomes = dict(zip(pods, pool.map(race, pods), strict=True))
    for pod, (dele, add) in outcomes.items():
        assert dele.code == 0 and add.ips == ips[pod], (pod, dele, add)
    assert node.leases() == {ips[p][0].split("/")[0]: (f"new-{p}", "eth0") for p in pods}
    assert node.journal() == []
    active_ips(node)


def test_sigkill_between_temp_write_and_rename(node):
    ip = node.add("a1", pod="a").ips
    before = (node.data_dir / "edgenet" / "records").iterdir()
    before = {p.name: p.read_bytes() for p in before}
    killed = node.add("b1", pod="b", env={"EDGE_IPAM_SNAPSHOT_TEST_HOOK": "kill-before-rename"})
    assert killed.rc == -9
    records_dir = node.data_dir / "edgenet" / "records"
    assert any(p.name.startswith(".tmp.") for p in records_dir.iterdir())  # the durable temp file, never renamed
    assert {p.name: p.read_bytes() for p in records_dir.iterdir() if not p.name.startswith(".")} == before
    # The runtime cleans the failed ADD up with a DEL: the lease the killed ADD took is freed.
    assert node.delete("b1", pod="b").code == 0
    assert list(node.leases()) == [ip[0].split("/")[0]]
    assert not any(p.name.startswith(".tmp.") for p in records_dir.iterdir())
    assert node.add("b2", pod="b").code == 0
    # A kill while a restart (no DEL first, as after a reboot) journals the old lease's release: nothing was
    # renamed, so the record still says ACTIVE under a1, whose lease is indeed still held.
    killed = node.add("a2", pod="a", env={"EDGE_IPAM_SNAPSHOT_TEST_HOOK": "kill-before-rename"})
    assert killed.rc == -9
    assert any(p.name.startswith(".tmp.") for p in (node.data_dir / "edgenet" / "journal").iterdir())
    rec = node.records()["default/a/eth0"]
    assert (rec["state"], rec["owner"]) == ("ACTIVE", "a1") and node.leases()[ip[0].split("/")[0]] == ("a1", "eth0")
    assert node.delete("a2", pod="a").code == 0
    node.offline()
    assert node.add("a3", pod="a").ips == ip  # still safe to serve
    node.online()
    assert node.delete("a3", pod="a").code == 0
    assert node.add("a4", pod="a").ips == ip
    active_ips(node)


def test_corrupt_record_is_moved_aside(node):
    node.add("c1")
    path = node.data_dir / "edgenet" / "records" / "default%2Fweb%2Feth0.json"
    path.write_bytes(b'{"key": "default/web/eth0", "state": "ACT')
    node.offline()
    assert node.add("c2").code == 11  # nothing trustworthy to serve
    view = node.inspect()
    assert view["corrupt"] == ["default%2Fweb%2Feth0.json.corrupt"] and view["records"] == []
    node.online()
    assert node.delete("c2").code == 0
    assert node.add("c3").code == 0
    assert node.delete("c1").code == 0  # the runtime's DEL of the old container frees its orphaned lease
    assert list(node.leases().values()) == [("c3", "eth0")]


def _read_only(node):
    """Run the plugin in a private mount namespace where the data dir is a read-only bind mount."""
    d = str(node.data_dir)
    wrapper = node.root / "ro-plugin"
    wrapper.write_text(f"#!/bin/sh\nexec unshare -m sh -c 'mount --bind {d} {d} && mount -o remount,bind,ro {d} {d}"
                       f" && exec {node.plugin}'\n")
    wrapper.chmod(0o755)
    return wrapper


def test_read_only_data_dir(node):
    ip = node.add("a1", pod="a").ips
    ro = _read_only(node)
    reply = node.add("b1", pod="b", plugin=ro)
    assert reply.code == 5 and "Read-only" in reply.out["msg"]
    assert list(node.leases().values()) == [("a1", "eth0")]  # b's lease was given back
    reply = node.delete("a1", pod="a", plugin=ro)
    assert reply.code == 5  # cannot mark the record: must not release what the record says is held
    assert list(node.leases().values()) == [("a1", "eth0")]
    assert node.delete("z1", pod="unknown", plugin=ro).code == 0  # nothing recorded: releases anyway
    assert node.delete("a1", pod="a").code == 0  # writable again: the retried DEL goes through
    assert node.add("a2", pod="a").ips == ip


def test_dual_stack(make_node):
    node = make_node(ranges=[[{"subnet": "10.79.0.0/24"}], [{"subnet": "fd00:79::/64"}]])
    ips = node.add("c1").ips
    assert [ip.split("/")[0] for ip in ips] == ["10.79.0.2", "fd00:79::2"]
    node.delete("c1")
    assert node.add("c2").ips == ips
    node.offline()
    assert node.add("c3").ips == ips
    node.online()
    node.delete("c3")
    assert node.leases() == {}


def test_two_pods_never_get_one_ip(make_node):
    node = make_node(ranges=[[{"subnet": "10.80.0.0/30"}]])  # one address
    ip = node.add("a1", pod="a").ips
    node.offline()
    node.delete("a1", pod="a")
    assert node.add("a2", pod="a").ips == ip  # offline restart: a keeps it
    node.online()
    assert node.add("b1", pod="b").code == 999  # the lease still backs a: b cannot have it
    node.delete("a2", pod="a")
    assert node.add("b2", pod="b").ips == ip
    node.offline()
    assert node.add("a3", pod="a").code == 11  # a's record is RELEASED: never served again offline
    node.online()
    # The delegate loses its state (a wiped dataDir): whatever it hands out next wins, the stale record is retired.
    for f in (node.lease_dir / "edgenet").iterdir():
        f.unlink()
    assert node.add("c1", pod="c").ips == ip
    assert node.records()["default/b/eth0"]["state"] == "RELEASED"
    node.offline()
    assert node.add("b3", pod="b").code == 11
    active_ips(node)


def test_repeated_del_is_idempotent(node):
    node.add("c1")
    for _ in range(3):
        assert node.delete("c1").code == 0
    assert node.delete("never-added", pod="ghost").code == 0
    node.offline()
    assert node.delete("c1").code == 0
    assert node.journal() == []


def test_missing_k8s_args_key_by_container(node):
    ip = node.add("c1", pod=None).ips
    assert list(node.records()) == ["c1/eth0"]
    node.offline()
    assert node.add("c2", pod=None).code == 11  # no pod identity: a new container is a new pod
    node.online()
    assert node.add("c1", pod=None).ips == ip  # a retried ADD of the same container
    assert node.delete("c1", pod=None).code == 0 and node.leases() == {}


def test_flannel_inheritance(node):
    conf = node.conf()
    delegate = conf["ipam"]["delegate"]
    conf["ipam"]["ranges"] = delegate.pop("ranges")
    conf["ipam"]["routes"] = [{"dst": "10.244.0.0/16"}]
    reply = node.add("c1", conf=conf)
    assert reply.ips == ["10.77.0.2/24"] and reply.out["routes"] == [{"dst": "10.244.0.0/16"}]
    conf["ipam"]["delegate"]["ranges"] = [[{"subnet": "10.99.0.0/24"}]]
    assert node.add("c2", pod="other", conf=conf).code == 7


# ---- versions and commands ----

@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_spec_versions(make_node, version):
    node = make_node(cni_version=version)
    reply = node.add("c1")
    assert reply.out["cniVersion"] == version
    ip = reply.out["ips"][0]
    assert ("version" in ip) == (version == "0.4.0")
    prev = node.conf(prevResult=reply.out)
    assert node.run("CHECK", "c1", conf=prev).code == 0
    assert node.delete("c1", conf=prev).code == 0
    version_reply = node.run("VERSION", conf={"cniVersion": version})
    assert version_reply.out == {"cniVersion": version, "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0",
                                                                              "1.1.0"]}


def test_check(node):
    reply = node.add("c1")
    prev = node.conf(prevResult=reply.out)
    assert node.run("CHECK", "c1", conf=prev).code == 0
    node.offline()
    assert node.run("CHECK", "c1", conf=prev).code == 0  # offline: the record is the truth
    node.online()
    wrong = node.conf(prevResult={**reply.out, "ips": [{"address": "10.77.0.99/24"}]})
    assert node.run("CHECK", "c1", conf=wrong).code == 104
    assert node.run("CHECK", "zz", pod="nobody", conf=prev).code == 3
    # After an offline restart the lease is under the old id: CHECK asks the delegate about the owner.
    node.offline()
    node.add("c2")
    node.online()
    assert node.run("CHECK", "c2", conf=prev).code == 0


def test_gc_and_status(make_node):
    node = make_node(cni_version="1.1.0")
    keep = node.add("k1", pod="keep").ips
    node.add("g1", pod="gone")
    gc = node.conf(**{"cni.dev/valid-attachments": [{"containerID": "k1", "ifname": "eth0"}]})
    assert node.run("GC", conf=gc).code == 0
    recs = node.records()
    assert recs["default/gone/eth0"]["state"] == "RELEASED" and recs["default/keep/eth0"]["state"] == "ACTIVE"
    assert list(node.leases()) == [keep[0].split("/")[0]]
    assert node.run("STATUS").code == 0
    node.offline()
    assert node.run("STATUS").code == 0  # offline is ready: a failing STATUS would block every sandbox
    node.online()
    missing = node.conf()
    missing["ipam"]["delegate"]["type"] = "no-such-ipam"
    assert node.run("STATUS", conf=missing).code == 50
    old = make_node(cni_version="1.0.0")
    assert old.run("GC", conf=old.conf(**{"cni.dev/valid-attachments": []})).code == 1


@pytest.mark.parametrize(("change", "code"), [
    (lambda c: c["ipam"].update(bogus=1), 2),
    (lambda c: c.update(cniVersion="0.2.0"), 1),
    (lambda c: c["ipam"].pop("delegate"), 7),
    (lambda c: c["ipam"].update(delegateTimeout="soon"), 7),
    (lambda c: c["ipam"]["delegate"].update(type="edge-ipam-snapshot"), 7),
])
def test_config_errors_have_spec_codes(node, change, code):
    conf = node.conf()
    change(conf)
    reply = node.add("c1", conf=conf)
    assert reply.code == code and reply.out["cniVersion"]


def test_environment_and_decode_errors(node):
    proc = subprocess.run([str(node.plugin)], input=b"{not json", capture_output=True, timeout=30,
                          env={"PATH": HOST_PATH, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1",
                               "CNI_IFNAME": "eth0", "CNI_PATH": node.path})
    assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 6
    assert node.add("c1", ifname="").code == 4
    assert node.run("FROB", "c1").code == 4


def test_released_records_are_forgotten_after_retain_after_release(make_node):
    node = make_node(ipam={"retainAfterRelease": 0})
    node.add("c1")
    node.add("k1", pod="kept")
    assert node.delete("c1").code == 0  # the first sweep runs with this DEL's replay
    assert list(node.records()) == ["default/kept/eth0"]


NEWER_IPAM = r'''#!/usr/bin/env python3
# A CNI 1.1.0 IPAM (GC, STATUS) in front of Debian's host-local 1.1.1, which stops at 1.0.0.
import json, os, pathlib, subprocess, sys
here = pathlib.Path(sys.argv[0]).parent
cmd, conf = os.environ["CNI_COMMAND"], json.load(sys.stdin) if os.environ["CNI_COMMAND"] != "VERSION" else {}
if cmd == "VERSION":
    print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}))
elif (here / "offline").exists():
    print(json.dumps({"code": 11, "msg": "dial tcp 10.96.0.1:443: connect: connection refused"}))
    sys.exit(1)
elif cmd in ("GC", "STATUS"):
    (here / f"{cmd.lower()}.json").write_text(json.dumps(conf))
else:
    conf["cniVersion"] = "1.0.0"
    p = subprocess.run(["/usr/lib/cni/host-local"], input=json.dumps(conf).encode(), capture_output=True)
    out = p.stdout.replace(b'"1.0.0"', b'"1.1.0"')
    sys.stdout.buffer.write(out)
    sys.exit(p.returncode)
'''


def test_gc_and_status_passed_to_a_delegate_that_speaks_1_1_0(make_node):
    node = make_node(cni_version="1.1.0", delegate={"type": "newer-ipam"})
    (node.bin / "newer-ipam").write_text(NEWER_IPAM)
    (node.bin / "newer-ipam").chmod(0o755)
    ip = node.add("c1").ips
    node.offline()
    assert node.add("c2").ips == ip  # served offline: the lease stays under c1
    node.online()
    gc = node.conf(**{"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]})
    assert node.run("GC", conf=gc).code == 0
    sent = json.loads((node.bin / "gc.json").read_text())
    # c1 is not a live container, but its lease backs c2's IP: the delegate must not collect it.
    assert sent["cni.dev/valid-attachments"] == [{"containerID": "c1", "ifname": "eth0"},
                                                 {"containerID": "c2", "ifname": "eth0"}]
    assert sent["ipam"]["type"] == "newer-ipam" and sent["cniVersion"] == "1.1.0"
    assert node.run("STATUS").code == 0 and (node.bin / "status.json").exists()
    node.offline()
    assert node.run("STATUS").code == 0  # the delegate's outage is not the plugin's unavailability


def test_held_records_expire_for_offline_serving_after_held_max_age(make_node):
    node = make_node(ipam={"heldMaxAge": 0})
    node.add("c1")
    node.add("k1", pod="kept")
    node.offline()
    node.delete("c1")
    assert node.add("c2").code == 11  # deleted while offline, too long ago by this config
    assert node.add("k2", pod="kept").code == 0  # ACTIVE records are not subject to it
