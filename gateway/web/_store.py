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
expects of a time series; the page says how old its numbers are. With `Snapshots`, each
computed value is also kept next to the log and read back by a process that has none yet,
so a restart shows the last numbers (with their age) while new ones are computed.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from gateway.errors import Overloaded
from gateway.store import LogStore
from gateway.store.reader import QueryMemoryError

if TYPE_CHECKING:
    from gateway.web._snapshot import Snapshots

T = TypeVar("T")


class SharedStore:
    """A `LogStore` shared by the review pages of one process."""

    def __init__(
        self,
        log_dir: str,
        wal_dir: str | None = None,
        *,
        max_age: float = 2.0,
        max_tail_bytes: int | None = None,
    ) -> None:
        self.log_dir = log_dir
        self.wal_dir = wal_dir
        self.max_tail_bytes = max_tail_bytes  # of unconverted WAL parsed per snapshot (`LogStore`)
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
            store = LogStore.open(self.log_dir, wal_dir=self.wal_dir, max_tail_bytes=self.max_tail_bytes)
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
                except QueryMemoryError as exc:  # the agent's bound held (store.query_memory_mb): say so
                    raise Overloaded(
                        f"{exc}; raise store.query_memory_mb or look at a shorter period", code="query_memory"
                    ) from exc
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
    """Results by key, computed in the background; recomputed once older than ``ttl`` seconds.

    `get` waits at most ``wait`` seconds for a value nobody has computed yet and returns
    ``None`` past that (the page then says the numbers are being computed and reloads), so a
    cold 7-day dashboard over 10M calls never holds a request for a minute.
    """

    def __init__(
        self, ttl: float = 60.0, max_entries: int = 64, *, snapshots: Snapshots | None = None
    ) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self.snapshots = snapshots
        """Where computed values are kept across restarts (None: in memory only)."""
        self._loaded: set[Hashable] = set()
        self._items: dict[Hashable, tuple[float, Any]] = {}
        self._failed: dict[Hashable, tuple[float, Overloaded]] = {}
        """Computations that ran out of their memory bound, kept ``ttl`` seconds: not tried again
        on every request (each try is the whole computation)."""
        self._pending: dict[Hashable, asyncio.Future[Any]] = {}
        self._lock = threading.Lock()

    async def get(
        self, key: Hashable, compute: Callable[[], T], *, wait: float = 5.0, keep: bool = False
    ) -> tuple[T, float] | None:
        """``(value, computed_at)``, or None while a first value is still being computed.

        ``keep``: the value is kept across restarts too (`snapshots`)."""
        snapshots = self.snapshots if keep else None
        now = time.time()
        with self._lock:
            hit = self._items.get(key)
        if hit is None and snapshots is not None and key not in self._loaded:
            self._loaded.add(key)  # once per process: after that, memory has the newer value
            kept = await asyncio.to_thread(snapshots.load, key)
            if kept is not None:
                hit = (kept[1], kept[0])
                with self._lock:
                    self._items.setdefault(key, hit)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1], hit[0]
        failed = self._failed.get(key)
        if hit is None and failed is not None and now - failed[0] < self.ttl:
            raise failed[1]
        future = self._pending.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._pending[key] = loop.run_in_executor(None, _computed, key, compute, snapshots)
            future.add_done_callback(functools.partial(self._done, key))
        if hit is not None:
            return hit[1], hit[0]  # stale while revalidating
        try:
            value = await asyncio.wait_for(asyncio.shield(future), timeout=wait)
        except TimeoutError:
            return None
        return value, time.time()

    def _done(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        self._pending.pop(key, None)
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, Overloaded) and exc.code == "query_memory":
            with self._lock:
                self._failed[key] = (time.time(), exc)
        if exc is not None:
            return  # the stale value (if any) stays; the next request tries again
        with self._lock:
            if len(self._items) >= self.max_entries and key not in self._items:
                self._items.pop(next(iter(self._items)))
            self._items[key] = (time.time(), future.result())
            self._failed.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def _computed(key: Hashable, compute: Callable[[], T], snapshots: Snapshots | None) -> T:
    """``compute()`` (in a worker thread), kept in ``snapshots`` when given."""
    value = compute()
    if snapshots is not None:
        snapshots.save(key, value, time.time())
    return value
