"""Go's `%q` (strconv.Quote), so the API server's error messages come out byte for byte.

The API server builds many messages with `fmt.Sprintf("%q", s)` (NotFound, field errors of selectors). Python's
repr() and json.dumps() escape differently (quotes, non-ASCII, control characters); this module does what Go does.
Pure. Neighbours: selectors and status, which build the messages.
"""

from __future__ import annotations

_SHORT = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
          '"': '\\"', "\\": "\\\\"}


def quote(s: str) -> str:
    """strconv.Quote: double quotes, printable runes kept, the rest escaped as Go escapes them."""
    if s.isascii() and s.isprintable() and '"' not in s and "\\" not in s:
        return f'"{s}"'  # the common case: nothing to escape
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _SHORT:
            out.append(_SHORT[ch])
        elif 0xDC80 <= o <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape): Go prints it as \xHH
            out.append(f"\\x{o - 0xDC00:02x}")
        elif ch.isprintable():  # unicode.IsPrint: letters, marks, numbers, punctuation, symbols, ASCII space
            out.append(ch)
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)
