"""The built plugin as the real bridge, ptp and macvlan plugins run it, in network namespaces made for each test.

This is the node's real call chain: runtime → /usr/lib/cni/bridge (or ptp, macvlan) → edge-ipam-snapshot (the
zipapp, found on CNI_PATH) → host-local behind the offline switch. Addresses are checked inside the namespace.
"""

from __future__ import annotations

import subprocess
import uuid

import pytest

from tests.cni_plugin.conftest import REAL_CNI, needs_root

pytestmark = [needs_root, pytest.mark.netns]


def addresses_in(netns: str, ifname: str = "eth0") -> list[str]:
    name = netns.rsplit("/", 1)[1]
    out = subprocess.run(["ip", "-n", name, "-br", "addr", "show", "dev", ifname], capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    return [a for a in out[2:] if not a.startswith("fe80:")]


def test_bridge_restart_offline_in_a_new_netns_keeps_the_ip(node, netns, host_links):
    bridge = f"eip{uuid.uuid4().hex[:8]}"
    host_links.append(bridge)
    conf = node.conf(bridge=bridge, isGateway=True, ipMasq=False)
    ns1 = netns()
    first = node.add("c1", conf=conf, netns=ns1, plugin=REAL_CNI / "bridge")
    assert first.code == 0, first
    ip = [i["address"] for i in first.out["ips"]]
    assert addresses_in(ns1) == ip
    assert node.run("CHECK", "c1", conf={**conf, "prevResult": first.out}, netns=ns1,
                    plugin=REAL_CNI / "bridge").code == 0
    node.offline()
    # The node loses its API server; the pod's sandbox dies and is recreated.
    assert node.delete("c1", conf={**conf, "prevResult": first.out}, netns=ns1, plugin=REAL_CNI / "bridge").code == 0
    ns2 = netns()
    second = node.add("c2", conf=conf, netns=ns2, plugin=REAL_CNI / "bridge")
    assert second.code == 0, second
    assert addresses_in(ns2) == ip
    assert node.add("n1", pod="newcomer", conf=conf, netns=netns(), plugin=REAL_CNI / "bridge").code == 11
    node.online()
    assert node.delete("c2", conf={**conf, "prevResult": second.out}, netns=ns2, plugin=REAL_CNI / "bridge").code == 0
    assert node.leases() == {}


def test_ptp_restart_online_keeps_the_ip(node, netns):
    conf = node.conf(type="ptp", ipMasq=False)
    ns1 = netns()
    first = node.add("c1", conf=conf, netns=ns1, plugin=REAL_CNI / "ptp")
    assert first.code == 0, first
    ip = addresses_in(ns1)
    assert ip == [i["address"] for i in first.out["ips"]]
    assert node.delete("c1", conf=conf, netns=ns1, plugin=REAL_CNI / "ptp").code == 0
    ns2 = netns()
    assert node.add("c2", conf=conf, netns=ns2, plugin=REAL_CNI / "ptp").code == 0
    assert addresses_in(ns2) == ip
    assert node.leases() == {ip[0].split("/")[0]: ("c2", "eth0")}
    assert node.delete("c2", conf=conf, netns=ns2, plugin=REAL_CNI / "ptp").code == 0
    assert node.leases() == {}


def test_macvlan_on_a_veth_master(node, netns, host_links):
    master = f"eipm{uuid.uuid4().hex[:8]}"
    host_links.append(master)  # deleting one end of a veth pair deletes both
    subprocess.run(["ip", "link", "add", master, "type", "veth", "peer", "name", f"{master}p"], check=True,
                   timeout=30)
    conf = node.conf(type="macvlan", master=master, mode="bridge")
    ns1 = netns()
    first = node.add("c1", conf=conf, netns=ns1, plugin=REAL_CNI / "macvlan")
    assert first.code == 0, first
    ip = addresses_in(ns1)
    node.offline()
    assert node.delete("c1", conf=conf, netns=ns1, plugin=REAL_CNI / "macvlan").code == 0
    ns2 = netns()
    assert node.add("c2", conf=conf, netns=ns2, plugin=REAL_CNI / "macvlan").code == 0
    assert addresses_in(ns2) == ip
    node.online()
    assert node.delete("c2", conf=conf, netns=ns2, plugin=REAL_CNI / "macvlan").code == 0
    assert node.leases() == {}
