"""kube/duration.py: Go's time.ParseDuration, as a table."""

from __future__ import annotations

import pytest

from edgeproxy.kube import duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("10s", 10.0),
    ("5m9s", 309.0),
    ("1.5s", 1.5),
    ("300ms", 0.3),
    ("1h2m3s", 3723.0),
    ("0", 0.0),
    ("0s", 0.0),
    ("+2s", 2.0),
    ("-2s", -2.0),
    (".5s", 0.5),
    ("1500us", 0.0015),
    ("1µs", 1e-6),
    ("", None),
    ("10", None),  # Go wants a unit on anything but 0
    ("s", None),
    ("1x", None),
    ("1s ", None),
    ("1.s", 1.0),
])
def test_parse(text, seconds):
    got = duration.parse(text)
    if seconds is None:
        assert got is None
    else:
        assert got == pytest.approx(seconds)
