"""jsonio: the plugin's JSON reads and writes give exactly what json.loads/json.dumps give, errors included."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cni_plugin import jsonio

_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


@given(_values)
def test_dumps_is_jsons_byte_for_byte(value):
    for indent in (None, 1):
        for sort_keys in (False, True):
            assert jsonio.dumps(value, indent=indent, sort_keys=sort_keys) == json.dumps(
                value, indent=indent, sort_keys=sort_keys)


@given(_values)
def test_loads_reads_what_json_writes(value):
    text = json.dumps(value, indent=1)
    assert jsonio.loads(text.encode()) == json.loads(text)


def test_unusual_values_are_handed_to_json():
    assert jsonio.dumps({1: [float("nan"), float("inf")], "t": (1, 2)}) == '{"1": [NaN, Infinity], "t": [1, 2]}'
    assert jsonio.loads('{"a": 1}'.encode("utf-16")) == {"a": 1}
    assert jsonio.loads(b'\xef\xbb\xbf {"a": [1]} ') == {"a": [1]}
    with pytest.raises(TypeError):
        jsonio.dumps({"a": object()})


@pytest.mark.parametrize("bad", [b"", b"  ", b"{", b"{} x", b"[1,]", b"nul", b'"abc', b'{"a" 1}', b"\xff\xfe\x00"])
def test_bad_json_is_a_value_error_as_with_json(bad):
    with pytest.raises(ValueError):
        json.loads(bad)
    with pytest.raises(ValueError):
        jsonio.loads(bad)
