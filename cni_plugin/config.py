"""Strict parsing of the network config's `ipam` section into a `Config`, and the config the delegate is given.

Validation only: no files are touched and nothing is executed. Unknown keys in our `ipam` object are refused with
code 2 (SPEC.md: "the error message must contain the key and value of the unsupported field"), wrong types and values
with code 7. Flannel writes `ranges`/`routes` (older versions `subnet`) into the *outer* ipam object it is given
(flannel-cni getDelegateIPAM), so those keys are inherited by the delegate unless it sets them itself.
Neighbours: commands.py (uses Config), delegate.py (runs what `delegate_conf` builds), result.py (versions).
"""

from __future__ import annotations

from cni_plugin import errors, request, result
from cni_plugin.value import Value

PLUGIN_TYPE = "edge-ipam-snapshot"
DEFAULT_DATA_DIR = "/var/lib/cni/edge-ipam-snapshot"
DEFAULT_INHERIT = ("ranges", "routes", "subnet")
# What API-backed IPAMs print when their server is out of reach (Go net/http and gRPC wording), any case.
DEFAULT_PHRASES = (
    "connection refused", "no route to host", "network is unreachable", "i/o timeout", "timed out",
    "deadline exceeded", "connection reset", "tls handshake timeout", "temporary failure in name resolution",
    "service unavailable", "server is currently unable to handle", "try again later",
)
DEFAULT_MSG_REGEX = "(?i)" + "|".join(DEFAULT_PHRASES)  # the same, as the msgRegex an operator would write
REQUEST_VIA = ("args", "runtimeConfig", "env", "none")
KEYS = ("pod", "container")
_OWN_KEYS = frozenset({"type", "delegate", "dataDir", "key", "requestIP", "delegateTimeout", "offline",
                       "retainAfterRelease", "heldMaxAge", "inherit", "delegateCNIVersion"})
_INF = float("inf")
_OFFLINE_KEYS = frozenset({"codes", "msgRegex", "timeout", "probe"})


class Probe(Value):
    _fields = ("host", "port", "timeout")
    __slots__ = _fields


class Phrases:
    """The default msgRegex as plain substring tests: importing `re` and compiling it cost more than a CNI call."""

    __slots__ = ()

    def search(self, text: str) -> bool:
        low = text.lower()
        return any(p in low for p in DEFAULT_PHRASES)


class Offline(Value):
    """codes (frozenset of CNI codes), msg_regex (anything with .search(text): a compiled msgRegex or Phrases),
    on_timeout, probe (Probe or None)."""

    _fields = ("codes", "msg_regex", "on_timeout", "probe")
    __slots__ = _fields


class Config(Value):
    """The ipam section, checked. net is the whole stdin config as given; delegate the delegate's ipam section with
    inheritance applied; data_dir an absolute path (str)."""

    _fields = ("cni_version", "network", "net", "delegate", "data_dir", "key", "request_ip", "delegate_timeout",
                 "delegate_cni_version", "offline", "retain_after_release", "held_max_age")
    __slots__ = _fields

    @property
    def delegate_type(self) -> str:
        return self.delegate["type"]


def _copy(v):
    """copy.deepcopy for JSON values (without importing copy, which imports weakref)."""
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def _number(ipam: dict, name: str, default: float | None, *, lo: float, hi: float) -> float | None:
    v = ipam.get(name, default)
    if v is None and default is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or v != v or v in (_INF, -_INF) or not lo <= v <= hi:
        raise errors.InvalidConfig(f"ipam.{name} must be a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _offline(raw: object) -> Offline:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise errors.InvalidConfig(f"ipam.offline must be an object, got {raw!r}")
    for k in raw:
        if k not in _OFFLINE_KEYS:
            raise errors.UnsupportedField(f"unsupported field ipam.offline.{k}={raw[k]!r}")
    codes = raw.get("codes", [11])
    if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise errors.InvalidConfig(f"ipam.offline.codes must be a list of integers, got {codes!r}")
    pattern = raw.get("msgRegex", DEFAULT_MSG_REGEX)
    if not isinstance(pattern, str):
        raise errors.InvalidConfig(f"ipam.offline.msgRegex must be a string, got {pattern!r}")
    if pattern == DEFAULT_MSG_REGEX:
        regex = Phrases()
    else:
        import re

        try:
            regex = re.compile(pattern) if pattern else re.compile(r"(?!)")
        except re.error as e:
            raise errors.InvalidConfig(f"ipam.offline.msgRegex does not compile: {e}") from e
    on_timeout = raw.get("timeout", True)
    if not isinstance(on_timeout, bool):
        raise errors.InvalidConfig(f"ipam.offline.timeout must be true or false, got {on_timeout!r}")
    return Offline(frozenset(codes), regex, on_timeout, _probe(raw.get("probe")))


def _probe(raw: object) -> Probe | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"tcp", "timeout"} or not isinstance(raw.get("tcp"), str):
        raise errors.InvalidConfig(f'ipam.offline.probe must be {{"tcp": "host:port", "timeout": s}}, got {raw!r}')
    host, sep, port = raw["tcp"].rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise errors.InvalidConfig(f"ipam.offline.probe.tcp must be host:port, got {raw['tcp']!r}")
    timeout = _number(raw, "timeout", 1.0, lo=0.01, hi=60)
    return Probe(host.strip("[]"), int(port), timeout)


def parse(net: dict) -> Config:
    """The stdin config → Config; raises IpamError with the spec's code on anything wrong."""
    version = net.get("cniVersion")
    if not isinstance(version, str):
        raise errors.IncompatibleVersion("network configuration has no cniVersion")
    result.check_supported(version)
    name = net.get("name")
    if not isinstance(name, str) or not request.is_name(name) or name in (".", ".."):
        raise errors.InvalidConfig(f"network name {name!r} is missing or malformed")
    ipam = net.get("ipam")
    if not isinstance(ipam, dict):
        raise errors.InvalidConfig("network configuration has no ipam object")
    inherit = ipam.get("inherit", list(DEFAULT_INHERIT))
    if not isinstance(inherit, list) or not all(isinstance(k, str) and k not in _OWN_KEYS for k in inherit):
        raise errors.InvalidConfig(f"ipam.inherit must be a list of delegate keys, got {inherit!r}")
    for k in ipam:
        if k not in _OWN_KEYS and k not in inherit:
            raise errors.UnsupportedField(f"unsupported field ipam.{k}={ipam[k]!r}",
                                          f"{PLUGIN_TYPE} accepts {sorted(_OWN_KEYS)} and inherits {inherit}")
    delegate = ipam.get("delegate")
    if not isinstance(delegate, dict) or not isinstance(delegate.get("type"), str):
        raise errors.InvalidConfig('ipam.delegate must be an object with a "type" (the real IPAM plugin)')
    dtype = delegate["type"]
    if not request.is_name(dtype) or dtype == PLUGIN_TYPE:
        raise errors.InvalidConfig(f"ipam.delegate.type {dtype!r} is not a plugin file name other than ours")
    delegate = _copy(delegate)
    for k in inherit:
        if k in ipam:
            if k in delegate and delegate[k] != ipam[k]:
                raise errors.InvalidConfig(f"ipam.{k} and ipam.delegate.{k} are both set and differ")
            delegate[k] = _copy(ipam[k])
    data_dir = ipam.get("dataDir", DEFAULT_DATA_DIR)
    if not isinstance(data_dir, str) or not data_dir.startswith("/"):
        raise errors.InvalidConfig(f"ipam.dataDir must be an absolute path, got {data_dir!r}")
    key = ipam.get("key", "pod")
    if key not in KEYS:
        raise errors.InvalidConfig(f"ipam.key must be one of {KEYS}, got {key!r}")
    request_ip = ipam.get("requestIP", "args")
    if request_ip not in REQUEST_VIA:
        raise errors.InvalidConfig(f"ipam.requestIP must be one of {REQUEST_VIA}, got {request_ip!r}")
    dver = ipam.get("delegateCNIVersion")
    if dver is not None:
        if not isinstance(dver, str):
            raise errors.InvalidConfig(f"ipam.delegateCNIVersion must be a string, got {dver!r}")
        result.check_supported(dver)
    return Config(
        cni_version=version, network=name, net=net, delegate=delegate, data_dir=data_dir, key=key,
        request_ip=request_ip,
        delegate_timeout=_number(ipam, "delegateTimeout", 10.0, lo=0.05, hi=600),
        delegate_cni_version=dver, offline=_offline(ipam.get("offline")),
        retain_after_release=_number(ipam, "retainAfterRelease", 86400.0, lo=0, hi=10 * 365 * 86400),
        held_max_age=_number(ipam, "heldMaxAge", None, lo=0, hi=10 * 365 * 86400),
    )


def delegate_conf(cfg: Config, cni_version: str, requested: list[str] = ()) -> dict:
    """The stdin for the delegate: our network config with `ipam` swapped for the delegate's section.

    `requested` IPs are asked for the way `requestIP` says (host-local honours all three: CNI_ARGS IP=,
    args.cni.ips, runtimeConfig.ips); the env way is applied by the caller, who owns the environment.
    """
    conf = {k: _copy(v) for k, v in cfg.net.items() if k not in ("ipam", "prevResult")}
    conf["cniVersion"] = cni_version
    conf["ipam"] = _copy(cfg.delegate)
    if requested and cfg.request_ip == "args":
        args = conf.setdefault("args", {})
        if isinstance(args, dict):
            args.setdefault("cni", {})["ips"] = list(requested)
    elif requested and cfg.request_ip == "runtimeConfig":
        rc = conf.setdefault("runtimeConfig", {})
        if isinstance(rc, dict):
            rc["ips"] = list(requested)
    return conf


def runtime_requested(cfg: Config, cni_args: dict) -> bool:
    """True when the runtime (or the user) already asks the delegate for specific IPs: then we ask for nothing."""
    net = cfg.net
    args = net.get("args") if isinstance(net.get("args"), dict) else {}
    cni = args.get("cni") if isinstance(args.get("cni"), dict) else {}
    rc = net.get("runtimeConfig") if isinstance(net.get("runtimeConfig"), dict) else {}
    return bool(cni.get("ips") or rc.get("ips") or cni_args.get("IP"))
