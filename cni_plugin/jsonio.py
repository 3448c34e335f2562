"""JSON in and out with the output of `json.loads`/`json.dumps`, without importing the `json` package.

`json`'s Python layer imports `re` and compiles its patterns at import: a third of a CNI call's start-up. The plugin
reads and writes small documents, so it uses CPython's own C accelerator `_json` (the scanner json.loads runs on, and
its string escaper) and this module's few lines of container walking. Where `_json` is missing (not CPython) or a
document is unusual (UTF-16/32 input, a non-str key, a type JSON has no form for), it hands over to `json` itself, so
the results are always json's. Pure; no neighbours.
"""

from __future__ import annotations

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None

_WS = " \t\n\r"
_CONSTANTS = {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}


class _Context:
    """The attributes _json.make_scanner reads from a json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__
    memo: dict = {}


_scan = _json.make_scanner(_Context()) if _json is not None else None


def loads(data: bytes | str):
    """json.loads(data); raises ValueError (json.JSONDecodeError is one) on anything that is not one JSON value."""
    if _scan is None or (isinstance(data, bytes) and (data[:1] in (b"\x00", b"\xef", b"\xfe", b"\xff")
                                                     or data[1:2] == b"\x00")):
        import json
        return json.loads(data)
    try:
        s = data.decode("utf-8", "surrogatepass") if isinstance(data, bytes) else data
        start = len(s) - len(s.lstrip(_WS))
        value, end = _scan(s, start)
        if not s[end:].strip(_WS):
            return value
    except (StopIteration, ValueError, SystemError):
        # Not JSON. _json builds its error from json.decoder, and only if that is already imported (else it says
        # SystemError): json itself gives the error, with its message.
        pass
    import json
    return json.loads(data)


def _float(f: float) -> str:
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "Infinity" if f > 0 else "-Infinity"
    return float.__repr__(f)


def _encode(o, out: list, indent: str | None, level: int, sort_keys: bool) -> None:
    t = type(o)
    if t is str:
        out.append(_json.encode_basestring_ascii(o))
    elif o is None:
        out.append("null")
    elif o is True:
        out.append("true")
    elif o is False:
        out.append("false")
    elif t is int:
        out.append(int.__repr__(o))
    elif t is float:
        out.append(_float(o))
    elif t is dict:
        if not o:
            out.append("{}")
            return
        if any(type(k) is not str for k in o):
            raise TypeError("non-str key")
        items = sorted(o.items()) if sort_keys else o.items()
        sep, nl = _seps(indent, level + 1)
        out.append("{" + nl)
        first = True
        for k, v in items:
            if not first:
                out.append(sep)
            first = False
            out.append(_json.encode_basestring_ascii(k) + ": ")
            _encode(v, out, indent, level + 1, sort_keys)
        out.append(_seps(indent, level)[1] + "}")
    elif t is list or t is tuple:
        if not o:
            out.append("[]")
            return
        sep, nl = _seps(indent, level + 1)
        out.append("[" + nl)
        for i, v in enumerate(o):
            if i:
                out.append(sep)
            _encode(v, out, indent, level + 1, sort_keys)
        out.append(_seps(indent, level)[1] + "]")
    else:
        raise TypeError(t.__name__)


def _seps(indent: str | None, level: int) -> tuple[str, str]:
    if indent is None:
        return ", ", ""
    nl = "\n" + indent * level
    return "," + nl, nl


def dumps(obj, *, indent: int | None = None, sort_keys: bool = False) -> str:
    """json.dumps(obj, indent=indent, sort_keys=sort_keys), byte for byte."""
    if _json is not None:
        out: list[str] = []
        try:
            _encode(obj, out, None if indent is None else " " * indent, 0, sort_keys)
            return "".join(out)
        except (TypeError, RecursionError):
            pass
    import json
    return json.dumps(obj, indent=indent, sort_keys=sort_keys)
