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


def tcp_hello(server_ns: str, client_ns: str, address: str) -> str:
    """Listen in one namespace, connect from another; returns what the client read."""
    serve = ("import socket; s = socket.socket(); s.bind(('0.0.0.0', 7777)); s.listen(); print('ready', flush=True);"
             " c, _ = s.accept(); c.sendall(b'hello'); c.close()")
    fetch = f"import socket; print(socket.create_connection(('{address}', 7777), timeout=10).recv(5).decode())"
    server = subprocess.Popen(["ip", "netns", "exec", server_ns.rsplit("/", 1)[1], "python3", "-c", serve],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.run(["ip", "netns", "exec", client_ns.rsplit("/", 1)[1], "python3", "-c", fetch],
                                capture_output=True, text=True, timeout=30, check=False)
        server.wait(timeout=30)
        return client.stdout.strip() or client.stderr
    finally:
        server.kill()
        server.wait()


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
    # The served address works: a new pod on the bridge reaches the restarted one over TCP.
    ns3 = netns()
    peer = node.add("p1", pod="peer", conf=conf, netns=ns3, plugin=REAL_CNI / "bridge")
    assert peer.code == 0, peer
    assert tcp_hello(ns2, ns3, ip[0].split("/")[0]) == "hello"
    for cid, pod, ns, res in (("c2", "web", ns2, second), ("p1", "peer", ns3, peer)):
        reply = node.delete(cid, pod=pod, conf={**conf, "prevResult": res.out}, netns=ns, plugin=REAL_CNI / "bridge")
        assert reply.code == 0
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
