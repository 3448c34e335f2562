"""result: one internal form, printed per spec version (0.4.0 `version` per ip, 1.1.0 route attributes)."""

from __future__ import annotations

import pytest

from cni_plugin import errors, result

HOST_LOCAL_1_0 = {"cniVersion": "1.0.0", "ips": [{"address": "10.1.0.2/24", "gateway": "10.1.0.1"},
                                                 {"address": "fd00::2/64"}],
                  "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1", "mtu": 1400}], "dns": {}}


def test_encode_per_version():
    internal = result.normalize(HOST_LOCAL_1_0)
    old = result.encode(internal, "0.4.0")
    assert old["ips"] == [{"version": "4", "address": "10.1.0.2/24", "gateway": "10.1.0.1"},
                          {"version": "6", "address": "fd00::2/64"}]
    assert old["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]
    assert result.encode(internal, "1.0.0")["ips"][0] == {"address": "10.1.0.2/24", "gateway": "10.1.0.1"}
    assert result.encode(internal, "1.1.0")["routes"][0]["mtu"] == 1400
    assert result.normalize(old) == {**internal, "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}]}


def test_normalize_drops_interfaces_from_a_main_plugin_result():
    prev = {"interfaces": [{"name": "eth0"}], "ips": [{"address": "10.1.0.2/24", "interface": 0, "version": "4"}]}
    assert result.normalize(prev)["ips"] == [{"address": "10.1.0.2/24"}]


@pytest.mark.parametrize("bad", [None, [], {"ips": "x"}, {"ips": [{"gateway": "1.2.3.4"}]},
                                 {"ips": [{"address": "10.1.0.2"}]}])
def test_normalize_refuses_garbage(bad):
    with pytest.raises(errors.DecodeFailure):
        result.normalize(bad)


def test_versions():
    assert result.best_common("1.1.0", ["0.3.1", "0.4.0", "1.0.0"]) == "1.0.0"
    assert result.best_common("0.4.0", ["1.0.0"]) is None
    assert result.addresses(result.normalize(HOST_LOCAL_1_0)) == ["10.1.0.2", "fd00::2"]
    with pytest.raises(errors.IncompatibleVersion):
        result.check_supported("0.2.0")
