"""A bounded map of the most recently put keys, for the log agent's per-call indexes.

The agent's tail puts every call's ids into two such maps (the telemetry's call map and the
feedback index's owners: tens of thousands of puts a second, hundreds of thousands of entries).
An ``OrderedDict`` trimmed from the front keeps exactly the newest ``max_entries``, but each entry
costs a linked-list node on top of the dict's (17.4 against 7.3 MiB for 200,000 entries, measured),
and the node is a small object that keeps the interpreter's arenas from being given back.

`RecentMap` keeps two generations of plain dicts instead: puts go into the new one; when it holds
half of ``max_entries`` it becomes the old one and the older is dropped whole. So it holds at most
``max_entries`` entries, and always the keys of at least the last ``max_entries // 2`` puts, each
with the value put last. A get looks in the new generation, then the old. Import-light: stdlib only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_MISSING: object = object()


class RecentMap(Generic[K, V]):
    """Keys of the recent puts and their latest values, at most ``max_entries`` of them (see the module)."""

    __slots__ = ("_new", "_old", "half")

    def __init__(self, max_entries: int) -> None:
        self.half = max(1, max_entries // 2)
        self._new: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def __setitem__(self, key: K, value: V) -> None:
        new = self._new
        new[key] = value
        if len(new) >= self.half:
            self._old, self._new = new, {}

    def get(self, key: K) -> V | None:
        value = self._new.get(key, _MISSING)
        if value is _MISSING:
            return self._old.get(key)
        return value  # type: ignore[return-value]  # not the sentinel: a value put

    def __contains__(self, key: object) -> bool:
        return key in self._new or key in self._old

    def __len__(self) -> int:
        """Entries held (a key put in both generations counts twice: this is what memory holds)."""
        return len(self._new) + len(self._old)

    def items(self) -> Iterator[tuple[K, V]]:
        """The keys held with their latest values, oldest put first."""
        new = self._new
        for key, value in self._old.items():
            if key not in new:
                yield key, value
        yield from new.items()
