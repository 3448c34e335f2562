"""The invocation: the CNI_* environment and the stdin config, checked and turned into one `Request` value.

No decisions about IPs here, and no files: commands.py acts on the Request, config.py reads the `ipam` section.
SPEC.md "Parameters": CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS ("K=V;K=V"), CNI_PATH.
"""

from __future__ import annotations

from cni_plugin import errors, jsonio
from cni_plugin.value import Value

TYPE_CHECKING = False  # typing costs start-up; annotations are strings (PEP 563), so this is enough for checkers
if TYPE_CHECKING:
    from collections.abc import Mapping

COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")


def is_name(s: object) -> bool:
    """s matches ^[A-Za-z0-9][A-Za-z0-9_.-]*$ (container ids, network and plugin names), without importing re."""
    return isinstance(s, str) and s[:1] in _ALNUM and all(c in _NAME_CHARS for c in s)


class Request(Value):
    """command, container_id, netns, ifname, cni_args (raw, passed to the delegate unchanged), args (parsed),
    path (CNI_PATH)."""

    _fields = ("command", "container_id", "netns", "ifname", "cni_args", "args", "path")
    __slots__ = _fields

    @property
    def pod(self) -> tuple[str, str] | None:
        ns, name = self.args.get("K8S_POD_NAMESPACE", ""), self.args.get("K8S_POD_NAME", "")
        return (ns, name) if ns and name else None


def parse_cni_args(raw: str) -> dict[str, str]:
    out = {}
    for part in raw.split(";"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise errors.InvalidEnvironment(f"CNI_ARGS entry {part!r} is not KEY=VALUE")
        out[k] = v
    return out


def from_env(env: Mapping[str, str]) -> Request:
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise errors.InvalidEnvironment(f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}")
    cid, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")
    if command in ("ADD", "DEL", "CHECK"):
        if not is_name(cid):
            raise errors.InvalidEnvironment(f"CNI_CONTAINERID {cid!r} is missing or malformed")
        if not ifname or ifname in (".", "..") or len(ifname) > 15 or any(c in "/:" or c.isspace() for c in ifname):
            raise errors.InvalidEnvironment(f"CNI_IFNAME {ifname!r} is missing or not an interface name")
    path = tuple(p for p in env.get("CNI_PATH", "").split(":") if p)
    if command != "VERSION" and not path:
        raise errors.InvalidEnvironment("CNI_PATH is empty: the delegate cannot be found")
    raw_args = env.get("CNI_ARGS", "")
    return Request(command, cid, env.get("CNI_NETNS", ""), ifname, raw_args, parse_cni_args(raw_args), path)


def decode_config(data: bytes) -> dict:
    try:
        conf = jsonio.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise errors.DecodeFailure("network configuration on stdin is not JSON", str(e)) from e
    if not isinstance(conf, dict):
        raise errors.DecodeFailure("network configuration on stdin is not a JSON object")
    return conf
