"""config.py: flags over environment over file over defaults."""

import argparse

import pytest

from edgeproxy import config


def parse(argv):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return parser.parse_args(argv)


def test_defaults():
    c = config.load(parse([]), environ={})
    assert c.listen == "127.0.0.1:10261" and c.ops_listen == "127.0.0.1:10267"
    assert c.listen_host_port == ("127.0.0.1", 10261)
    assert ("hollow-kubelet", "kubelet") in c.component_aliases
    assert c.cache is True
    assert config.load(parse(["--cache", "off"]), environ={}).cache is False
    assert config.load(parse([]), environ={"EDGEPROXY_CACHE": "0"}).cache is False


def test_precedence_flag_env_file(tmp_path):
    f = tmp_path / "edgeproxy.env"
    f.write_text('# comment\nEDGEPROXY_LISTEN=127.0.0.1:1\nEDGEPROXY_CACHE_DIR="/var/cache/x y"\n'
                 "EDGEPROXY_PROBE_INTERVAL=7\nEDGEPROXY_SERVERS=https://a:6443/, https://b:6443\n")
    env = {"EDGEPROXY_LISTEN": "127.0.0.1:2", "EDGEPROXY_OFFLINE_AFTER": "5", "HOME": "/root"}
    c = config.load(parse(["--config", str(f), "--listen", "127.0.0.1:3"]), environ=env)
    assert c.listen == "127.0.0.1:3"
    assert c.offline_after == 5
    assert c.cache_dir == "/var/cache/x y"
    assert c.probe_interval == 7.0
    assert c.servers == ("https://a:6443", "https://b:6443")
    c = config.load(parse([]), environ={**env, "EDGEPROXY_CONFIG": str(f)})
    assert c.listen == "127.0.0.1:2"


def test_aliases_and_ipv6():
    c = config.load(parse(["--component-aliases", "my-kubelet=kubelet, Vendor-Proxy=kube-proxy",
                           "--ops-listen", "[::1]:9"]), environ={})
    assert c.component_aliases == (("my-kubelet", "kubelet"), ("vendor-proxy", "kube-proxy"))
    assert c.ops_host_port == ("::1", 9)
    assert config.load(parse(["--ops-listen", ""]), environ={}).ops_host_port is None


@pytest.mark.parametrize("argv", [["--listen", "nope"], ["--probe-timeout", "x"], ["--config", "/nonexistent/f"],
                                  ["--component-aliases", "nosep"], ["--cache", "maybe"],
                                  ["--offline-body-cache", "-1"], ["--record-queue", "10"],
                                  ["--cache-write-queue", "16MiB"]])
def test_bad_settings_are_config_errors(argv):
    with pytest.raises(config.ConfigError):
        config.load(parse(argv), environ={})


def test_upstream_header_timeout():
    assert config.load(parse([]), environ={}).upstream_header_timeout == 10.0
    assert config.load(parse(["--upstream-header-timeout", "0"]), environ={}).upstream_header_timeout == 0.0
    env = {"EDGEPROXY_UPSTREAM_HEADER_TIMEOUT": "2.5"}
    assert config.load(parse([]), environ=env).upstream_header_timeout == 2.5
    with pytest.raises(config.ConfigError):
        config.load(parse(["--upstream-header-timeout", "10s"]), environ={})


def test_memory_bounds_are_settings_with_small_host_defaults(tmp_path):
    c = config.load(parse([]), environ={})
    assert (c.offline_body_cache, c.record_queue, c.cache_write_queue) == (16 << 20, 128 << 20, 32 << 20)
    c = config.load(parse(["--offline-body-cache", "0"]),
                    environ={"EDGEPROXY_RECORD_QUEUE": str(200 << 20), "EDGEPROXY_CACHE_WRITE_QUEUE": str(8 << 20)})
    assert (c.offline_body_cache, c.record_queue, c.cache_write_queue) == (0, 200 << 20, 8 << 20)
