"""`serve --pool on` settings: flags and environment like every other setting; a setting that cannot work is refused
at start with a message saying what to give."""

from __future__ import annotations

import argparse

import pytest

from edgeproxy import config


def load(*flags, **env):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args(list(flags)), {f"EDGEPROXY_{k.upper()}": v for k, v in env.items()})


def test_pool_settings_from_flags_and_environment():
    cfg = load("--pool", "on", "--pool-listen", "10.0.0.5:10269", "--pool-cert-file", "/etc/kubelet-server.pem",
               pool_tokens="off", pool_lease_duration="20", pool_name="branch-7")
    assert (cfg.pool, cfg.pool_listen, cfg.pool_tokens, cfg.pool_lease_duration, cfg.pool_name) == (
        True, "10.0.0.5:10269", "off", 20, "branch-7")
    s = config.pool_settings(cfg)
    assert s["listen"] == ("10.0.0.5", 10269)
    assert s["cert"] == s["key"] == "/etc/kubelet-server.pem"  # kubelet's serving file holds both
    assert ("discovery.k8s.io", "endpointslices") in s["resources"]
    assert load().pool is False  # off by default


@pytest.mark.parametrize(("flags", "message"), [
    ((), "--pool on needs --pool-listen"),
    (("--pool-listen", "0.0.0.0:10269"), "give this node's IP"),
    (("--pool-listen", "10.0.0.5:10269"), "--pool on needs --pool-cert-file"),
    (("--pool-listen", "10.0.0.5:10269", "--pool-cert-file", "c", "--pool-resources", "services,secrets"),
     "can never include secrets"),
    (("--pool-listen", "10.0.0.5:10269", "--pool-cert-file", "c", "--pool-resources", "Services"),
     "is not resource[.group]"),
    (("--pool-listen", "10.0.0.5:10269", "--pool-cert-file", "c", "--pool-tokens", "sometimes"),
     "off, vouched or on"),
    (("--pool-listen", "10.0.0.5:10269", "--pool-cert-file", "c", "--pool-lease-duration", "1"), "at least 3"),
])
def test_a_pool_setting_that_cannot_work_is_refused_with_what_to_give(flags, message):
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        load("--pool", "on", *flags)
