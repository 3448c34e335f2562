"""CNI spec versions and IPAM result shapes: parse any supported version's result, print it in the one asked for.

Pure data in, data out: no files, no processes. An IPAM result has no `interfaces` and its `ips` carry no `interface`
index (SPEC.md "IP Allocation"); 0.3.x/0.4.0 add `"version": "4"|"6"` to each ip, 1.0.0 dropped it, 1.1.0 added
optional route attributes (mtu, advmss, priority, table, scope). The internal form is the 1.1.0 shape.
Neighbours: commands.py (results in and out), delegate.py (replies), records.py (stores the internal form).
"""

from __future__ import annotations

from cni_plugin import errors

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED[-1]
_ROUTE_1_1 = ("mtu", "advmss", "priority", "table", "scope")


def parse_version(v: str) -> tuple[int, int, int]:
    try:
        major, minor, patch = (int(p) for p in v.split("."))
    except (ValueError, AttributeError) as e:
        raise errors.IncompatibleVersion(f"invalid cniVersion {v!r}") from e
    return major, minor, patch


def check_supported(v: str) -> str:
    if v not in SUPPORTED:
        raise errors.IncompatibleVersion(
            "incompatible CNI versions", f"config is {v!r}, plugin supports {list(SUPPORTED)}")
    return v


def best_common(wanted: str, theirs: list[str]) -> str | None:
    """The highest version both sides speak that is not above `wanted` (for a delegate older than the runtime)."""
    top = parse_version(wanted)
    ok = [v for v in theirs if v in SUPPORTED and parse_version(v) <= top]
    return max(ok, key=parse_version) if ok else None


def _is_octet(p: str) -> bool:
    return p.isascii() and p.isdigit() and len(p) <= 3 and int(p) <= 255 and (p == "0" or p[0] != "0")


def interface(address: str) -> tuple[int, str]:
    """(IP version, the address without its prefix) of a CIDR address as ipaddress.ip_interface reads it; ValueError
    if it is not one. Plain IPv4 is checked here; anything else goes to ipaddress (imported only then)."""
    addr, sep, plen = address.partition("/")
    if not sep:
        raise ValueError("no prefix length")
    parts = addr.split(".")
    if (len(parts) == 4 and all(_is_octet(p) for p in parts) and plen.isascii() and plen.isdigit()
            and int(plen) <= 32):
        return 4, addr
    import ipaddress

    iface = ipaddress.ip_interface(address)
    return iface.version, str(iface.ip)


def normalize(result: object) -> dict:
    """Any supported version's IPAM result → {"ips": [{"address", "gateway"?}], "routes": [...], "dns": {...}}."""
    if not isinstance(result, dict) or not isinstance(result.get("ips", []), list):
        raise errors.DecodeFailure("IPAM result is not an object with an ips list")
    ips = []
    for ip in result.get("ips") or []:
        if not isinstance(ip, dict) or not isinstance(ip.get("address"), str):
            raise errors.DecodeFailure(f"IPAM result ip entry without an address: {ip!r}")
        try:
            interface(ip["address"])
        except ValueError as e:
            raise errors.DecodeFailure(f"IPAM result address {ip['address']!r} is not CIDR") from e
        entry = {"address": ip["address"]}
        if ip.get("gateway"):
            entry["gateway"] = ip["gateway"]
        ips.append(entry)
    routes = [dict(r) for r in result.get("routes") or [] if isinstance(r, dict) and "dst" in r]
    dns = result.get("dns") if isinstance(result.get("dns"), dict) else {}
    return {"ips": ips, "routes": routes, "dns": dict(dns)}


def encode(internal: dict, version: str) -> dict:
    """The internal result as the spec version `version` prints it."""
    old = parse_version(version) < (1, 0, 0)
    ips = []
    for ip in internal["ips"]:
        entry = dict(ip)
        if old:
            entry = {"version": str(interface(ip["address"])[0]), **entry}
        ips.append(entry)
    out: dict = {"cniVersion": version, "ips": ips}
    if internal.get("routes"):
        keep = ("dst", "gw", *(_ROUTE_1_1 if parse_version(version) >= (1, 1, 0) else ()))
        out["routes"] = [{k: r[k] for k in keep if k in r} for r in internal["routes"]]
    out["dns"] = internal.get("dns") or {}
    return out


def addresses(internal: dict) -> list[str]:
    """The bare IPs (no prefix) of a result, in order: what a delegate is asked for on a restart."""
    return [interface(ip["address"])[1] for ip in internal.get("ips", [])]
