"""The random-sample review queue: a uniform sample of a period's served calls, drawn from a pool.

Why a pool. At 10M calls, a uniform sample of 200 calls of a day is spread over every row
group of the day's files, and Parquet decompresses a whole page to read one row of it: the
bodies of 200 such calls cost what reading the day's bodies costs (measured, 2 cores:
400-600 ms, whether the rows are chosen by a hash in the same query, fetched afterwards by
id -- a literal ``IN`` list becomes a join after the scan -- or by a filter on the hash pushed
into the scan; reading them by row position from the files' row counts was slower still). So
the page reads the window at most once a minute (the review cache's ttl), in the background,
and draws each queue from what it read:

* the **pool** of a window ``[lo, until)``: its `POOL` served, routed calls smallest by
  ``hash(call_id || until)`` -- a uniform sample of the window without replacement (DuckDB's
  hash as the random order) -- with the list's columns, the request already cut to its
  one-line summary (so a pool stays small, whatever the bodies);
* the **queue** for a seed: the pool's `MAX_ITEMS` calls smallest by
  ``blake2b(call_id, seed)`` -- a uniform sample of the pool, hence of the window.

A queue's URL pins ``until`` and the seed, so the same window gives the same pool and the
same queue after an eviction or a restart (the pool is recomputed from the log; the newest
one is also kept next to the log, like the dashboard's numbers, so a restart starts warm). Samples
of two seeds share more calls than independent samples would (both are drawn from the same
pool of 800): a reload gives another view of the same pool until the next one.
"""

from __future__ import annotations

import hashlib
import threading
from typing import Any

from gateway.store import LogStore
from gateway.store import windows as win
from gateway.web import _conversation as conv
from gateway.web import _queries as q

MAX_ITEMS = 200
POOL = 800
"""Calls per pool (4x a queue)."""
ANSWER_CHARS = 300
KEEP_POOLS = 8


def pool(store: LogStore, lo: int, until: int) -> list[dict[str, Any]]:
    """The pool of ``[lo, until)`` (see the module docstring), in its hash order."""
    rows = store.sql(
        f"""
        SELECT {q.LIST_COLUMNS} FROM {win.source(store, "calls", lo, until)}
        WHERE ts >= make_timestamptz($lo) AND ts < make_timestamptz($hi) AND served AND route IS NOT NULL
        ORDER BY hash(call_id || $salt), call_id LIMIT {POOL}
        """,
        {"lo": lo, "hi": until, "salt": str(until)},
    )
    for row in rows:
        row["summary"] = conv.last_user_text(row.pop("request"))
        text = row.get("output_text") or ""
        row["output_text"] = text if len(text) <= ANSWER_CHARS else text[: ANSWER_CHARS - 1] + "…"
    return rows


def _rank(call_id: str, seed: str) -> bytes:
    return hashlib.blake2b(call_id.encode(), key=seed.encode()[:64], digest_size=16).digest()


def pick(rows: list[dict[str, Any]], seed: str, k: int = MAX_ITEMS) -> list[dict[str, Any]]:
    """The queue for ``seed``: ``k`` of the pool's calls in a seeded random order (copies)."""
    ranked = sorted(rows, key=lambda r: (_rank(r["call_id"], seed), r["call_id"]))
    return [dict(r) for r in ranked[:k]]


class Pools:
    """The pools this process computed, by window (the newest `KEEP_POOLS`)."""

    def __init__(self) -> None:
        self._items: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def put(self, lo: int, until: int, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            self._items.pop((lo, until), None)
            self._items[(lo, until)] = rows
            while len(self._items) > KEEP_POOLS:
                self._items.pop(next(iter(self._items)))

    def get(self, store: LogStore, lo: int, until: int) -> list[dict[str, Any]]:
        """The pool of ``[lo, until)``: kept, or computed (and kept)."""
        with self._lock:
            found = self._items.get((lo, until))
        if found is None:
            found = pool(store, lo, until)
            self.put(lo, until, found)
        return found
