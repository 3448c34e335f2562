"""Label and field selectors as the API server parses them: parse, canonical form, match, per-resource fields.

Parsing follows apimachinery pkg/labels/selector.go (lexer + recursive descent, validation of keys and values) and
pkg/fields/selector.go (terms split on unescaped ",", operators "!=", "==", "=", escapes \\\\ \\, \\=), with the API
server's error messages, so a 400 from the proxy reads like one from kube-apiserver. The canonical form makes two
spellings of one selector one cache view. Does not extract fields from objects (protobuf/jsonwire do, for the
fields `supported_fields` names). Neighbours: request (raw selector strings), cache (canonical strings as keys).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from edgeproxy.kube import errors, goquote

# --- validation (apimachinery pkg/util/validation, v1.32 messages) --------------------------------------------------

_QNAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QNAME_ERR = ("must consist of alphanumeric characters, '-', '_' or '.', "
              "and must start and end with an alphanumeric character")
_QNAME_RE = re.compile(_QNAME_FMT, re.ASCII)
_VALUE_FMT = "(" + _QNAME_FMT + ")?"
_VALUE_ERR = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
              "and must start and end with an alphanumeric character")
_VALUE_RE = re.compile(_VALUE_FMT, re.ASCII)
_DNS_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_FMT = _DNS_LABEL_FMT + "(\\." + _DNS_LABEL_FMT + ")*"
_SUBDOMAIN_ERR = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                  "and must start and end with an alphanumeric character")
_SUBDOMAIN_RE = re.compile(_SUBDOMAIN_FMT, re.ASCII)
_INT64_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1


def _regex_error(msg: str, fmt: str, *examples: str) -> str:
    if not examples:
        return f"{msg} (regex used for validation is '{fmt}')"
    shown = " or ".join(f"'{e}', " for e in examples)
    return f"{msg} (e.g. {shown}regex used for validation is '{fmt}')"


def _go_len(s: str) -> int:
    """len() of a Go string: bytes, not characters."""
    return len(s.encode("utf-8", "surrogatepass"))


def _dns1123_subdomain(value: str) -> list[str]:
    errs = []
    if _go_len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not _SUBDOMAIN_RE.fullmatch(value):
        errs.append(_regex_error(_SUBDOMAIN_ERR, _SUBDOMAIN_FMT, "example.com"))
    return errs


def _qualified_name(value: str) -> list[str]:
    """validation.IsQualifiedName: [prefix/]name, the form of a label key."""
    errs: list[str] = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + m for m in _dns1123_subdomain(prefix))
    else:
        return ["a qualified name " + _regex_error(_QNAME_ERR, _QNAME_FMT, "MyName", "my.name", "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errs.append("name part must be non-empty")
    elif _go_len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    if not _QNAME_RE.fullmatch(name):
        errs.append("name part " + _regex_error(_QNAME_ERR, _QNAME_FMT, "MyName", "my.name", "123-abc"))
    return errs


def _label_value(value: str) -> list[str]:
    errs = []
    if _go_len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _VALUE_RE.fullmatch(value):
        errs.append(_regex_error(_VALUE_ERR, _VALUE_FMT, "MyValue", "my_value", "12345"))
    return errs


def _invalid(path: str, value: str, detail: str) -> str:
    """field.Invalid(path, value, detail).Error()."""
    return f"{path}: Invalid value: {goquote.quote(value)}: {detail}"


def _aggregate(msgs: list[str]) -> str:
    """utilerrors.NewAggregate(...).Error(): one message as is, several deduplicated inside [..]."""
    seen: list[str] = []
    for m in msgs:
        if m not in seen:
            seen.append(m)
    return seen[0] if len(seen) == 1 else "[" + ", ".join(seen) + "]"


def _parse_int64(s: str) -> int | None:
    """strconv.ParseInt(s, 10, 64), None where Go returns an error."""
    if not _INT64_RE.fullmatch(s):
        return None
    n = int(s)
    return n if _INT64_MIN <= n <= _INT64_MAX else None


# --- label selectors --------------------------------------------------------------------------------------------------

# Operators, named as apimachinery pkg/selection names them. "==" and single-value "in"/"notin" are normalised to
# "="/"!=" when a Requirement is built (they match exactly the same objects), so canonical() is one string per meaning.
EQUALS, NOT_EQUALS, IN, NOT_IN, EXISTS, DOES_NOT_EXIST, GT, LT = "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
_BINARY_OPERATORS = "in, notin, =, ==, !=, gt, lt"  # strings.Join(binaryOperators, ", ") in the Go messages


@dataclass(frozen=True, slots=True, order=True)
class Requirement:
    """One ANDed term of a label selector; `values` sorted and unique."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        op = self.operator
        if op in (EQUALS, IN):
            return self.key in labels and labels[self.key] in self.values
        if op in (NOT_EQUALS, NOT_IN):  # an object without the key matches (labels.Requirement.Matches)
            return self.key not in labels or labels[self.key] not in self.values
        if op == EXISTS:
            return self.key in labels
        if op == DOES_NOT_EXIST:
            return self.key not in labels
        # GT / LT: the object's value must parse as an int64, or the term does not match
        if self.key not in labels:
            return False
        have = _parse_int64(labels[self.key])
        want = _parse_int64(self.values[0])
        if have is None or want is None:
            return False
        return have > want if op == GT else have < want

    def canonical(self) -> str:
        op = self.operator
        if op == EXISTS:
            return self.key
        if op == DOES_NOT_EXIST:
            return "!" + self.key
        if op in (IN, NOT_IN):
            return f"{self.key} {op} ({','.join(self.values)})"
        return f"{self.key}{'>' if op == GT else '<' if op == LT else op}{self.values[0]}"


def _requirement(key: str, op: str, values: Iterable[str]) -> Requirement:
    vals = tuple(sorted(set(values)))
    if op == "==":
        op = EQUALS
    elif op in (IN, NOT_IN) and len(vals) == 1:
        op = EQUALS if op == IN else NOT_EQUALS
    elif op in (GT, LT):
        vals = (str(int(vals[0])),)  # "07" and "7" select the same objects
    return Requirement(key, op, vals)


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """ANDed requirements, sorted and deduplicated; empty selects everything."""

    requirements: tuple[Requirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def canonical(self) -> str:
        return ",".join(r.canonical() for r in self.requirements)

    def __str__(self) -> str:
        return self.canonical()


# The lexer and parser are a port of apimachinery's (labels/selector.go), error for error: same tokens, same
# lookahead, same messages. The lexer reads bytes there; characters here give the same tokens because every special
# symbol is ASCII. A NUL reads as end-of-input in Go's lexer (read() returns 0); this port keeps that quirk.
_ERROR, _EOS, _CLOSE, _COMMA, _NOT, _DOUBLE_EQ, _EQ, _GT, _IDENT, _IN, _LT, _NEQ, _NOTIN, _OPEN = range(14)
_STRING_TO_TOKEN = {")": _CLOSE, ",": _COMMA, "!": _NOT, "==": _DOUBLE_EQ, "=": _EQ, ">": _GT, "in": _IN, "<": _LT,
                    "!=": _NEQ, "notin": _NOTIN, "(": _OPEN}
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")


def _lex(s: str) -> list[tuple[int, str]]:
    items: list[tuple[int, str]] = []
    pos = 0
    n = len(s)

    def read() -> str:
        nonlocal pos
        if pos < n:
            pos += 1
            return s[pos - 1]
        return "\0"

    while True:
        ch = read()
        while ch in _WHITESPACE:
            ch = read()
        if ch == "\0":
            items.append((_EOS, ""))
            return items
        if ch in _SPECIAL:
            pos -= 1
            buf = ""
            last: tuple[int, str] | None = None
            while True:
                ch = read()
                if ch == "\0":
                    break
                if ch in _SPECIAL:
                    buf += ch
                    if buf in _STRING_TO_TOKEN:
                        last = (_STRING_TO_TOKEN[buf], buf)
                    elif last is not None:
                        pos -= 1
                        break
                else:
                    pos -= 1
                    break
            items.append(last if last is not None else (_ERROR, f"error expected: keyword found '{buf}'"))
        else:
            pos -= 1
            start = pos
            while True:
                ch = read()
                if ch == "\0":
                    break
                if ch in _SPECIAL or ch in _WHITESPACE:
                    pos -= 1
                    break
            word = s[start:pos].replace("\0", "")
            tok = _STRING_TO_TOKEN.get(word)
            items.append((tok, word) if tok is not None else (_IDENT, word))


class _LabelParser:
    __slots__ = ("items", "position")

    def __init__(self, s: str) -> None:
        self.items = _lex(s)
        self.position = 0

    def lookahead(self, values: bool) -> tuple[int, str]:
        tok, lit = self.items[self.position]
        if values and tok in (_IN, _NOTIN):
            tok = _IDENT
        return tok, lit

    def consume(self, values: bool) -> tuple[int, str]:
        tok, lit = self.lookahead(values)
        self.position += 1
        return tok, lit

    def parse(self) -> list[Requirement]:
        reqs: list[Requirement] = []
        while True:
            tok, lit = self.lookahead(True)
            if tok in (_IDENT, _NOT):
                try:
                    reqs.append(self.requirement())
                except _RequirementError as e:
                    raise errors.InvalidSelector(f"unable to parse requirement: {e}") from None
                t, lit2 = self.consume(True)
                if t == _EOS:
                    return reqs
                if t == _COMMA:
                    t2, l2 = self.lookahead(True)
                    if t2 not in (_IDENT, _NOT):
                        raise errors.InvalidSelector(f"found '{l2}', expected: identifier after ','")
                else:
                    raise errors.InvalidSelector(f"found '{lit2}', expected: ',' or 'end of string'")
            elif tok == _EOS:
                return reqs
            else:
                raise errors.InvalidSelector(f"found '{lit}', expected: !, identifier, or 'end of string'")

    def requirement(self) -> Requirement:
        operator = ""
        tok, lit = self.consume(True)
        if tok == _NOT:
            operator = DOES_NOT_EXIST
            tok, lit = self.consume(True)
        if tok != _IDENT:
            raise _RequirementError(f"found '{lit}', expected: identifier")
        key = lit
        if errs := _qualified_name(key):
            raise _RequirementError(_invalid("<nil>", key, "; ".join(errs)))  # validateLabelKey(key, nil path)
        if operator == DOES_NOT_EXIST or self.lookahead(True)[0] in (_EOS, _COMMA):
            # "!key" ends the requirement whatever follows ("!a=b" then fails on "=" in parse())
            return _new_requirement(key, operator or EXISTS, [])
        tok, lit = self.consume(False)
        op = {_IN: IN, _EQ: EQUALS, _DOUBLE_EQ: "==", _GT: GT, _LT: LT, _NOTIN: NOT_IN, _NEQ: NOT_EQUALS}.get(tok)
        if op is None:
            raise _RequirementError(f"found '{lit}', expected: {_BINARY_OPERATORS}")
        values = self.set_values() if op in (IN, NOT_IN) else self.exact_value()
        return _new_requirement(key, op, sorted(values))

    def set_values(self) -> set[str]:
        tok, lit = self.consume(True)
        if tok != _OPEN:
            raise _RequirementError(f"found '{lit}' expected: '('")
        tok, lit = self.lookahead(True)
        if tok in (_IDENT, _COMMA):
            s = self.identifiers()
            if self.consume(True)[0] != _CLOSE:
                raise _RequirementError(f"found '{lit}', expected: ')'")
            return s
        if tok == _CLOSE:  # "()" is the empty string
            self.consume(True)
            return {""}
        raise _RequirementError(f"found '{lit}', expected: ',', ')' or identifier")

    def identifiers(self) -> set[str]:
        s: set[str] = set()
        while True:
            tok, lit = self.consume(True)
            if tok == _IDENT:
                s.add(lit)
                tok2, lit2 = self.lookahead(True)
                if tok2 == _COMMA:
                    continue
                if tok2 == _CLOSE:
                    return s
                raise _RequirementError(f"found '{lit2}', expected: ',' or ')'")
            if tok == _COMMA:  # "(," ",," and ",)" each stand for the empty string
                if not s:
                    s.add("")
                tok2 = self.lookahead(True)[0]
                if tok2 == _CLOSE:
                    s.add("")
                    return s
                if tok2 == _COMMA:
                    self.consume(True)
                    s.add("")
            else:
                raise _RequirementError(f"found '{lit}', expected: ',', or identifier")

    def exact_value(self) -> set[str]:
        if self.lookahead(True)[0] in (_EOS, _COMMA):
            return {""}
        tok, lit = self.consume(True)
        if tok == _IDENT:
            return {lit}
        raise _RequirementError(f"found '{lit}', expected: identifier")


class _RequirementError(Exception):
    """A requirement-level failure; the parser prefixes "unable to parse requirement: " as Go does."""


def _new_requirement(key: str, op: str, values: list[str]) -> Requirement:
    """labels.NewRequirement: validate key, operator arity, integers for gt/lt, and every value."""
    errs = []
    if kerrs := _qualified_name(key):
        errs.append(_invalid("key", key, "; ".join(kerrs)))
    if op in (GT, LT):
        errs.extend(_invalid(f"values[{i}]", v, "for 'Gt', 'Lt' operators, the value must be an integer")
                    for i, v in enumerate(values) if _parse_int64(v) is None)
    for i, v in enumerate(values):
        if verrs := _label_value(v):
            errs.append(_invalid(f"values[{i}][{key}]", v, "; ".join(verrs)))
    if errs:
        raise _RequirementError(_aggregate(errs))
    return _requirement(key, op, values)


def parse_labels(s: str) -> LabelSelector:
    """Parse a labelSelector as labels.Parse does; InvalidSelector (400) with the server's message otherwise."""
    if not s:
        return LabelSelector()
    return LabelSelector(tuple(sorted(set(_LabelParser(s).parse()))))


# --- field selectors --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class FieldRequirement:
    """field = value or field != value; a field an object lacks compares as ""."""

    field: str
    operator: str  # "=" or "!="
    value: str

    def matches(self, fields: Mapping[str, str]) -> bool:
        return (fields.get(self.field, "") == self.value) == (self.operator == EQUALS)

    def canonical(self) -> str:
        return f"{self.field}{self.operator}{escape_value(self.value)}"


@dataclass(frozen=True, slots=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, fields: Mapping[str, str]) -> bool:
        return all(r.matches(fields) for r in self.requirements)

    def canonical(self) -> str:
        return ",".join(r.canonical() for r in self.requirements)

    def exact(self, field: str) -> str | None:
        """fields.Selector.RequiresExactMatch: the value `field` must equal, if one term says so."""
        for r in self.requirements:
            if r.field == field and r.operator == EQUALS:
                return r.value
        return None

    def __str__(self) -> str:
        return self.canonical()


def escape_value(s: str) -> str:
    """fields.EscapeValue: \\ , and = in a value are written with a backslash."""
    return s.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=")


def _unescape_value(s: str) -> str:
    if "\\" not in s and "," not in s and "=" not in s:
        return s
    out = []
    in_slash = False
    for c in s:
        if in_slash:
            if c not in "\\,=":
                raise errors.InvalidSelector(f"invalid field selector: invalid escape sequence: \\{c}")
            out.append(c)
            in_slash = False
        elif c == "\\":
            in_slash = True
        elif c in ",=":  # Go prints the rune with %v: its code point
            raise errors.InvalidSelector(f"invalid field selector: unescapedRune character in value: {ord(c)}")
        else:
            out.append(c)
    if in_slash:
        raise errors.InvalidSelector("invalid field selector: invalid escape sequence: \\")
    return "".join(out)


def _split_terms(s: str) -> list[str]:
    terms = []
    start = 0
    in_slash = False
    for i, c in enumerate(s):
        if in_slash:
            in_slash = False
        elif c == "\\":
            in_slash = True
        elif c == ",":
            terms.append(s[start:i])
            start = i + 1
    terms.append(s[start:])
    return terms


def _split_term(term: str) -> tuple[str, str, str] | None:
    """The first "!=", "==" or "=" from the left splits the term; the field part has no escapes."""
    for i in range(len(term)):
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op):]
    return None


# Field label conversions per (group, resource): the accepted labels and their aliases, from kubernetes
# pkg/apis/core/v1/conversion.go (and apps, batch, certificates). Every other resource gets
# runtime.DefaultMetaV1FieldSelectorConversion: metadata.name and metadata.namespace, with its own message.
_POD_FIELDS = frozenset({
    "metadata.name", "metadata.namespace", "spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
    "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP", "status.podIPs",
    "status.nominatedNodeName"})
_FIELDS: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): _POD_FIELDS,
    ("", "nodes"): frozenset({"metadata.name", "spec.unschedulable"}),
    ("", "services"): frozenset({"metadata.name", "metadata.namespace", "spec.clusterIP", "spec.type"}),
    ("", "secrets"): frozenset({"metadata.name", "metadata.namespace", "type"}),
    ("", "namespaces"): frozenset({"metadata.name", "status.phase"}),
    ("", "events"): frozenset({
        "metadata.name", "metadata.namespace", "involvedObject.kind", "involvedObject.namespace",
        "involvedObject.name", "involvedObject.uid", "involvedObject.apiVersion", "involvedObject.resourceVersion",
        "involvedObject.fieldPath", "reason", "reportingComponent", "source", "type"}),
    ("", "replicationcontrollers"): frozenset({"metadata.name", "metadata.namespace", "status.replicas"}),
    ("apps", "replicasets"): frozenset({"metadata.name", "metadata.namespace", "status.replicas"}),
    ("batch", "jobs"): frozenset({"metadata.name", "metadata.namespace", "status.successful"}),
    ("certificates.k8s.io", "certificatesigningrequests"): frozenset({"metadata.name", "spec.signerName"}),
}
_ALIASES: dict[tuple[str, str], dict[str, str]] = {
    ("", "pods"): {"spec.host": "spec.nodeName"},  # old v1 clients send spec.host
}
_DEFAULT_FIELDS = frozenset({"metadata.name", "metadata.namespace"})


def supported_fields(resource: str, group: str = "") -> frozenset[str]:
    """The field labels a field selector on `resource` may use (after aliases), i.e. what objects must provide."""
    return _FIELDS.get((group, resource), _DEFAULT_FIELDS)


def _convert_field(resource: str, group: str, label: str) -> str:
    key = (group, resource)
    if key not in _FIELDS:
        if label in _DEFAULT_FIELDS:
            return label
        raise errors.UnsupportedField(
            f'{goquote.quote(label)} is not a known field selector: only "metadata.name", "metadata.namespace"')
    label = _ALIASES.get(key, {}).get(label, label)
    if label not in _FIELDS[key]:
        raise errors.UnsupportedField(f"field label not supported: {label}")
    return label


def parse_fields(s: str, resource: str | None = None, group: str = "") -> FieldSelector:
    """Parse a fieldSelector as fields.ParseSelector does; with `resource`, also convert field labels as the
    API server does for that resource (aliases; UnsupportedField 400 for anything it does not support)."""
    if not s:
        return FieldSelector()
    reqs = set()
    for part in sorted(_split_terms(s)):  # Go sorts the raw terms first: that decides which error is reported
        if not part:
            continue
        split = _split_term(part)
        if split is None:
            raise errors.InvalidSelector(f"invalid selector: '{s}'; can't understand '{part}'")
        lhs, op, rhs = split
        reqs.add((lhs, NOT_EQUALS if op == "!=" else EQUALS, _unescape_value(rhs)))
    out = set()
    for lhs, op, value in sorted(reqs):
        if not lhs and not value:  # Transform drops a term whose field and value are both empty
            continue
        if resource is not None:
            lhs = _convert_field(resource, group, lhs)
        out.add(FieldRequirement(lhs, op, value))
    return FieldSelector(tuple(sorted(out)))


# --- views ------------------------------------------------------------------------------------------------------------


def covers(wide: LabelSelector | FieldSelector, narrow: LabelSelector | FieldSelector) -> bool:
    """True when every object `narrow` selects is also selected by `wide`, judged syntactically: `wide` is empty
    (a complete unfiltered view answers any selector by filtering) or its terms are a subset of `narrow`'s."""
    if type(wide) is not type(narrow):
        raise TypeError("covers() compares two label selectors or two field selectors")
    return wide.empty or set(wide.requirements) <= set(narrow.requirements)
