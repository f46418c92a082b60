"""Registry: a name -> entry mapping that users extend (cells, heads, inputs, data sources).

A registry is a read-only Mapping (so `name in CELLS`, `sorted(CELLS)` and `CELLS[name]` work as on a dict);
`register` adds an entry and refuses an existing name unless replace=True, `unregister` removes one (tests
restore what they registered), and `entry` looks a name up with a one-line error that lists the allowed names.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

E = TypeVar("E")


class Registry(Mapping[str, E], Generic[E]):
    """Entries by name; `kind` ("cell", "head", ...) names them in error messages."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, E] = {}

    def register(self, name: str, entry: E, *, replace: bool = False) -> E:
        """Add `entry` under `name` and return it; ValueError for an empty or existing name (unless replace)."""
        if not isinstance(name, str) or not name.strip() or name != name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty string without surrounding spaces, got {name!r}")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass replace=True to replace it")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> E:
        """Remove `name` and return its entry (KeyError when it is not registered)."""
        return self._entries.pop(name)

    def entry(self, name: str) -> E:
        """The entry of `name`; ValueError naming the allowed names when there is none."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; allowed: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
