"""config.parse: strict validation with the spec's codes, defaults, flannel inheritance, the delegate's stdin."""

from __future__ import annotations

import copy

import pytest

from cni_plugin import config, errors

BASE = {"cniVersion": "1.0.0", "name": "edgenet", "type": "bridge", "bridge": "cni0",
        "ipam": {"type": "edge-ipam-snapshot",
                 "delegate": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]}}}


def conf(**ipam) -> dict:
    c = copy.deepcopy(BASE)
    c["ipam"].update(ipam)
    return c


def test_defaults():
    cfg = config.parse(conf())
    assert (cfg.network, cfg.delegate_type, str(cfg.data_dir)) == ("edgenet", "host-local", config.DEFAULT_DATA_DIR)
    assert (cfg.key, cfg.request_ip, cfg.delegate_timeout, cfg.held_max_age) == ("pod", "args", 10.0, None)
    assert cfg.offline.codes == {11} and cfg.offline.on_timeout and cfg.offline.probe is None


@pytest.mark.parametrize("msg", [
    'Post "https://10.96.0.1:443/api": dial tcp 10.96.0.1:443: connect: connection refused',
    "context deadline exceeded", "dial tcp: i/o timeout", "connect: no route to host",
    "the server is currently unable to handle the request",
])
def test_default_offline_messages(msg):
    assert config.parse(conf()).offline.msg_regex.search(msg)


@pytest.mark.parametrize("msg", [
    "failed to allocate for range 0: no IP addresses available in range set: 10.9.0.1-10.9.0.2",
    "invalid CIDR address: bogus",
    "requested IP address 10.9.0.2 is not available in range set 10.9.0.1-10.9.0.2",
])
def test_delegate_refusals_are_not_offline_messages(msg):
    assert not config.parse(conf()).offline.msg_regex.search(msg)


@pytest.mark.parametrize(("change", "error"), [
    ({"bogus": 1}, errors.UnsupportedField),
    ({"offline": {"bogus": 1}}, errors.UnsupportedField),
    ({"delegate": None}, errors.InvalidConfig),
    ({"delegate": {"type": "../bin/sh"}}, errors.InvalidConfig),
    ({"delegate": {"type": "edge-ipam-snapshot"}}, errors.InvalidConfig),
    ({"dataDir": "relative/dir"}, errors.InvalidConfig),
    ({"key": "uid"}, errors.InvalidConfig),
    ({"requestIP": "maybe"}, errors.InvalidConfig),
    ({"delegateTimeout": 0}, errors.InvalidConfig),
    ({"delegateTimeout": True}, errors.InvalidConfig),
    ({"offline": {"codes": ["11"]}}, errors.InvalidConfig),
    ({"offline": {"msgRegex": "("}}, errors.InvalidConfig),
    ({"offline": {"probe": {"tcp": "nohost"}}}, errors.InvalidConfig),
    ({"delegateCNIVersion": "0.2.0"}, errors.IncompatibleVersion),
    ({"inherit": ["dataDir"]}, errors.InvalidConfig),
])
def test_refusals(change, error):
    with pytest.raises(error) as e:
        config.parse(conf(**change))
    if error is errors.UnsupportedField:
        assert "bogus" in e.value.msg  # the spec wants the key (and value) in the message


@pytest.mark.parametrize(("top", "error"), [
    ({"cniVersion": "0.2.0"}, errors.IncompatibleVersion),
    ({"cniVersion": None}, errors.IncompatibleVersion),
    ({"name": "bad/name"}, errors.InvalidConfig),
    ({"ipam": None}, errors.InvalidConfig),
])
def test_top_level_refusals(top, error):
    with pytest.raises(error):
        config.parse({**copy.deepcopy(BASE), **top})


def test_flannel_writes_ranges_and_routes_into_the_outer_ipam():
    c = conf(ranges=[[{"subnet": "10.244.3.0/24"}]], routes=[{"dst": "10.244.0.0/16"}])
    del c["ipam"]["delegate"]["ranges"]
    cfg = config.parse(c)
    assert cfg.delegate["ranges"] == [[{"subnet": "10.244.3.0/24"}]]
    assert cfg.delegate["routes"] == [{"dst": "10.244.0.0/16"}]
    with pytest.raises(errors.InvalidConfig, match="differ"):
        config.parse(conf(ranges=[[{"subnet": "10.244.9.0/24"}]]))
    assert config.parse(conf(ranges=BASE["ipam"]["delegate"]["ranges"]))  # equal is fine


def test_delegate_conf_swaps_the_ipam_section_and_asks_for_ips():
    c = conf()
    c["prevResult"] = {"ips": []}
    cfg = config.parse(c)
    out = config.delegate_conf(cfg, "1.0.0", ["10.1.0.7"])
    assert out["ipam"] == BASE["ipam"]["delegate"] and out["bridge"] == "cni0" and "prevResult" not in out
    assert out["args"] == {"cni": {"ips": ["10.1.0.7"]}}
    rc = config.delegate_conf(config.parse(conf(requestIP="runtimeConfig")), "1.0.0", ["10.1.0.7"])
    assert rc["runtimeConfig"] == {"ips": ["10.1.0.7"]} and "args" not in rc
    assert "args" not in config.delegate_conf(cfg, "1.0.0")
    assert cfg.net["ipam"]["delegate"] == BASE["ipam"]["delegate"]  # never mutated


def test_runtime_requested():
    cfg = config.parse({**copy.deepcopy(BASE), "args": {"cni": {"ips": ["10.1.0.9"]}}})
    assert config.runtime_requested(cfg, {})
    assert config.runtime_requested(config.parse(conf()), {"IP": "10.1.0.9"})
    assert not config.runtime_requested(config.parse(conf()), {"K8S_POD_NAME": "x"})
