"""Go's time.ParseDuration, for the `timeout` query parameter client-go adds to a request ("10s", "5m9s", "1.5s").

The boundary: parses a string into seconds and nothing else; what a timeout means to the proxy is decided by its
user (proxy.py's header deadline). Neighbours: kube.request keeps the raw `timeout` string on RequestInfo.
"""

from __future__ import annotations

import re

# Go's units (time/format.go unitMap), in seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse(text: str) -> float | None:
    """Seconds, or None where time.ParseDuration would return an error ("", "10", "1x", "s").

    As in Go: an optional sign, then one or more number+unit parts summed ("1h2m3.5s"); a bare "0" is zero.
    """
    s = text
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        return None
    total, pos = 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total
