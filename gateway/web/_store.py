"""One long-lived `LogStore` per process for the review pages, and a cache for heavy pages.

Opening a store lists the Delta snapshot and reads the WAL tail (1-1.6 s at 3M calls, more
on object storage); the pages used to pay that on every request. `SharedStore` keeps one
open and takes a new snapshot (`LogStore.refresh`) at most every ``max_age`` seconds, or
on the next read after this process wrote an event (`touch`), so a reviewer sees their own
relabel on the next page. DuckDB connections are not safe across threads: reads take turns
(one lock), each in a worker thread (`asyncio.to_thread`).

`Cached` keeps a page's computed result for ``ttl`` seconds and recomputes it in the
background when it gets old (stale-while-revalidate): the dashboard's aggregates over a
week of calls cost seconds at 10M calls, and a dashboard 30 s old is what an on-call reader
expects of a time series; the page says how old its numbers are.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

import duckdb

from gateway.errors import Overloaded
from gateway.store import LogStore

T = TypeVar("T")


class SharedStore:
    """A `LogStore` shared by the review pages of one process."""

    def __init__(self, log_dir: str, wal_dir: str | None = None, *, max_age: float = 2.0) -> None:
        self.log_dir = log_dir
        self.wal_dir = wal_dir
        self.max_age = max_age
        self._store: LogStore | None = None
        self._taken = 0.0
        self._dirty = False
        self._lock = threading.Lock()

    def touch(self) -> None:
        """This process wrote to the log: the next read takes a new snapshot."""
        self._dirty = True

    def _fresh(self) -> LogStore:
        now = time.monotonic()
        if self._store is None:
            store = LogStore.open(self.log_dir, wal_dir=self.wal_dir)
            store.con.execute("SET enable_object_cache = true")  # Parquet footers, across queries
            self._store, self._taken, self._dirty = store, now, False
        elif self._dirty or now - self._taken >= self.max_age:
            self._dirty = False
            self._store.refresh()
            self._taken = now
        return self._store

    def run(self, fn: Callable[[LogStore], T]) -> T:
        """Run ``fn`` on a fresh enough snapshot (blocking: call from a worker thread)."""
        with self._lock:
            for attempt in range(3):  # a compaction may remove a file between listing and reading it
                try:
                    return fn(self._fresh())
                except duckdb.IOException:
                    self._dirty = True
                    if attempt == 2:
                        raise Overloaded("the call log is being rewritten (compaction); try again") from None
            raise AssertionError("unreachable")

    async def read(self, fn: Callable[[LogStore], T]) -> T:
        return await asyncio.to_thread(self.run, fn)

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


class Cached:
    """Results by key, recomputed in the background once older than ``ttl`` seconds."""

    def __init__(self, ttl: float = 60.0, max_entries: int = 64) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._items: dict[Hashable, tuple[float, Any]] = {}
        self._pending: set[Hashable] = set()
        self._lock = threading.Lock()

    async def get(self, key: Hashable, compute: Callable[[], T]) -> tuple[T, float]:
        """``(value, computed_at)``: a cached value (refreshing it behind when stale) or a new one."""
        now = time.time()
        with self._lock:
            hit = self._items.get(key)
            stale = hit is not None and now - hit[0] >= self.ttl and key not in self._pending
            if stale:
                self._pending.add(key)
        if hit is None:
            return self._put(key, await asyncio.to_thread(compute))
        if stale:
            asyncio.get_running_loop().run_in_executor(None, self._refresh, key, compute)
        return hit[1], hit[0]

    def _refresh(self, key: Hashable, compute: Callable[[], Any]) -> None:
        try:
            self._put(key, compute())
        except Exception:  # the stale value stays; the next request tries again
            pass
        finally:
            with self._lock:
                self._pending.discard(key)

    def _put(self, key: Hashable, value: T) -> tuple[T, float]:
        at = time.time()
        with self._lock:
            if len(self._items) >= self.max_entries and key not in self._items:
                self._items.pop(next(iter(self._items)))
            self._items[key] = (at, value)
        return value, at

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
