"""`Value`: an immutable record type on __slots__, for the plugin's Request, Config, Record, Release and Reply.

What `@dataclass(frozen=True, slots=True)` gave them, without importing dataclasses (which pulls in inspect, ast and
dis: about a fifth of a CNI call's start-up) and without generating code per class at import. A subclass lists its
fields in order in `_fields` (and `__slots__ = _fields`) and optional `_defaults`; instances take them positionally
or by keyword, compare by type and fields, print as `Name(field=value, ...)`, and `evolve(**changes)` copies with
changes. Pure; no neighbours.
"""

from __future__ import annotations


class Value:
    __slots__ = ()
    _fields: tuple[str, ...] = ()
    _defaults: dict = {}

    def __init__(self, *args, **kwargs):
        names = self._fields
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes {len(names)} fields, got {len(args)}")
        for name, v in zip(names, args, strict=False):
            if name in kwargs:
                raise TypeError(f"{type(self).__name__} got two values for {name}")
            object.__setattr__(self, name, v)
        for name in names[len(args):]:
            if name in kwargs:
                v = kwargs.pop(name)
            elif name in self._defaults:
                v = self._defaults[name]
            else:
                raise TypeError(f"{type(self).__name__} is missing {name}")
            object.__setattr__(self, name, v)
        if kwargs:
            raise TypeError(f"{type(self).__name__} has no field {sorted(kwargs)[0]}")

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def fields(self) -> tuple:
        return tuple(getattr(self, n) for n in self._fields)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self.fields() == other.fields()

    def __hash__(self):
        return hash(self.fields())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in self._fields)})"

    def as_dict(self) -> dict:
        return {n: getattr(self, n) for n in self._fields}

    def evolve(self, **changes):
        return type(self)(**{**self.as_dict(), **changes})
