"""Label and field selectors for the simulator's lists and watches (apimachinery labels/fields grammar).

A stand-in with the contract of edgeproxy.kube.selectors (parse_labels, parse_fields, .matches, .empty) until
that module lands; the simulator only needs parse and match. Neighbours: sim.resources (field values), sim.api.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from edgeproxy.kube import errors


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    op: str  # exists, !, =, !=, in, notin, gt, lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        has = self.key in labels
        v = labels.get(self.key)
        if self.op == "exists":
            return has
        if self.op == "!":
            return not has
        if self.op in ("=", "in"):
            return has and v in self.values
        if self.op in ("!=", "notin"):
            return not has or v not in self.values
        if not has:
            return False
        try:
            n = int(v)  # type: ignore[arg-type]
        except ValueError:
            return False
        return n > int(self.values[0]) if self.op == "gt" else n < int(self.values[0])


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[Requirement, ...]

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)


_SET = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_OP = re.compile(r"^\s*([A-Za-z0-9._/-]+)\s*(==|!=|=|>|<)\s*([A-Za-z0-9._-]*)\s*$")
_KEY = re.compile(r"^\s*(!?)\s*([A-Za-z0-9._/-]+)\s*$")


def _split_terms(s: str) -> list[str]:
    terms, depth, cur = [], 0, []
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    terms.append("".join(cur))
    return terms


def parse_labels(s: str | None) -> LabelSelector:
    if not s or not s.strip():
        return LabelSelector(())
    reqs = []
    for term in _split_terms(s):
        if m := _SET.match(term):
            if m.group(1):
                raise errors.InvalidSelector(f"unable to parse requirement: {term!r}")
            values = tuple(v.strip() for v in m.group(4).split(",")) if m.group(4).strip() else ()
            reqs.append(Requirement(m.group(2), m.group(3), values))
        elif m := _OP.match(term):
            op = {"==": "=", ">": "gt", "<": "lt"}.get(m.group(2), m.group(2))
            if op in ("gt", "lt") and not m.group(3).lstrip("-").isdigit():
                raise errors.InvalidSelector(f"unable to parse requirement: {term!r}")
            reqs.append(Requirement(m.group(1), op, (m.group(3),)))
        elif m := _KEY.match(term):
            reqs.append(Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise errors.InvalidSelector(f"unable to parse requirement: {term!r}")
    return LabelSelector(tuple(reqs))


@dataclass(frozen=True, slots=True)
class FieldSelector:
    terms: tuple[tuple[str, str, str], ...]  # (field, op "=" or "!=", value)

    @property
    def empty(self) -> bool:
        return not self.terms

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(t[0] for t in self.terms)

    def matches(self, fields: Mapping[str, str]) -> bool:
        for field, op, value in self.terms:
            got = fields.get(field, "")
            if (got == value) != (op == "="):
                return False
        return True

    def value(self, field: str) -> str | None:
        """The value an equality term requires for `field`, if any."""
        for f, op, v in self.terms:
            if f == field and op == "=":
                return v
        return None


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\":
            if i + 1 >= len(s) or s[i + 1] not in "\\,=":
                raise errors.InvalidSelector(f"invalid field selector escape in {s!r}")
            out.append(s[i + 1])
            i += 2
            continue
        if s[i] in ",=":
            raise errors.InvalidSelector(f"invalid field selector: unescaped {s[i]!r} in value {s!r}")
        out.append(s[i])
        i += 1
    return "".join(out)


def parse_fields(s: str | None, supported: frozenset[str] | None = None) -> FieldSelector:
    if not s:
        return FieldSelector(())
    terms = []
    cur, i = [], 0
    parts = []
    while i < len(s):  # split on unescaped commas
        if s[i] == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if s[i] == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(s[i])
        i += 1
    parts.append("".join(cur))
    for part in parts:
        for op in ("!=", "==", "="):
            idx = part.find(op)
            if idx >= 0:
                break
        else:
            raise errors.InvalidSelector(f"invalid selector: '{s}'; can't understand '{part}'")
        field = part[:idx].strip()
        value = _unescape(part[idx + len(op) :])
        if supported is not None and field not in supported:
            raise errors.UnsupportedField(f"field label not supported: {field}")
        terms.append((field, "!=" if op == "!=" else "=", value))
    return FieldSelector(tuple(terms))
