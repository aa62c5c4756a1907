"""The calls list's text search: newest first, bounded in time, resumable from where it stopped.

A text search reads the bodies of every call it looks at (``ILIKE`` over ``request`` and
``output_text``), so its cost grows with how far back it looks. `search` walks back from its
upper end in chunks sized by the partitions' row counts (`rows_between`, from the Delta
log's ``numRecords``: no file is opened to plan) and the newest call's time (`newest_us`: the
first chunk starts there, and the newest partition's rows are spread up to it, not to now), the
first small, each next one sized to the time left, and stops at the first of:

* the page is full (``need`` matches: the page and one more, so the pager knows there is more);
* the floor: the start of the period, or of the log;
* the time budget (``budget_s``) is spent.

Every chunk is searched whole, so what it returns is exact for the stretch it covered: every
call of ``[searched_from, upper)`` that matches, and no other. When it stopped on its budget,
the page says how far back it searched and links to a search that starts there
(``before=searched_from``), further back; when the page is full, "older" starts after the
page's last call (``before`` and ``before_id``: keyset paging on ``(ts, call_id)``, so a page
never repeats or skips a call as the log grows). A common log-search design (Loki, Kibana's
"load older").

The matching rows' list columns come with the search itself: the bodies are read to match
anyway, and a second lookup of 50 ids (a literal ``IN`` list is a hash join after the scan,
not a filter in it) would read the page's whole time range again.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from gateway.store import LogStore
from gateway.store import windows as win

BUDGET_S = 0.1
"""How long one page of a search may scan (the rest of the page costs 50-100 ms on 2 busy cores)."""
FIRST_ROWS = 60_000
"""The first chunk's size in rows (estimated): a common word fills a page from it."""
MIN_ROWS = 20_000
"""A chunk smaller than this is not worth its query: the budget is spent."""
HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class Cursor:
    """Where a search page starts: calls older than ``(ts_us, call_id)``; without an id, ``ts < ts_us``."""

    ts_us: int
    call_id: str = ""


@dataclass
class Found:
    """One page of a search: ``rows``, newest first, and how far it looked."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    upper_us: int = 0
    """The newest time searched (exclusive): the cursor's, or now."""
    searched_from_us: int = 0
    """The oldest time searched: every match in ``[searched_from_us, upper_us)`` is in ``rows`` (up to ``need``)."""
    complete: bool = False
    """The search reached its floor (the period's start or the log's): nothing older matches."""
    full: bool = False
    """More than a page matched: ``rows`` holds one more than the page shows."""
    chunks: int = 0


def day_rows(store: LogStore) -> Counter[str]:
    """The snapshot's calls per day partition (the Delta log's row counts)."""
    per_day: Counter[str] = Counter()
    for f in store.data_files.get("calls", ()):
        per_day[f.day] += f.rows
    return per_day


def newest_us(store: LogStore, per_day: Counter[str], now_us: int) -> int:
    """The newest call's time: a scan of the ``ts`` of the newest day partition with calls and of
    the WAL tail (a few milliseconds); ``now_us`` when the log has none."""
    days = [day for day, rows in per_day.items() if rows]
    lo = win.day_start_us(max(days)) if days else now_us - win.DAY_US
    rows = store.sql(
        f"SELECT epoch_us(max(ts)) AS m FROM {win.source(store, 'calls', lo, None)} WHERE ts >= make_timestamptz($lo)",
        {"lo": lo},
    )
    newest = rows[0]["m"] if rows else None
    return int(newest) if newest is not None else now_us


def rows_between(per_day: Counter[str], lo_us: int, hi_us: int, now_us: int) -> float:
    """Estimated calls with ``lo_us <= ts < hi_us``: each day partition's row count (`day_rows`)
    spread evenly over its day (today's over the part of it that has passed)."""
    total = 0.0
    day = (lo_us // win.DAY_US) * win.DAY_US
    while day < hi_us:
        rows = per_day.get(win.day_of(day), 0)
        if rows:
            span_end = min(day + win.DAY_US, max(now_us, day + HOUR_US))
            overlap = min(hi_us, span_end) - max(lo_us, day)
            if overlap > 0:
                total += rows * overlap / (span_end - day)
        day += win.DAY_US
    return total


def _span_for(per_day: Counter[str], hi_us: int, floor_us: int, rows: float, now_us: int) -> int:
    """How far back from ``hi_us`` a chunk of about ``rows`` calls reaches (at least a minute)."""
    span = HOUR_US
    for _ in range(40):  # doubling, then halving: a few estimates, no file opened
        got = rows_between(per_day, max(floor_us, hi_us - span), hi_us, now_us)
        if got >= rows or hi_us - span <= floor_us:
            break
        span *= 2
    while span > 60_000_000 and rows_between(per_day, hi_us - span // 2, hi_us, now_us) >= rows:
        span //= 2
    return span


def search(
    store: LogStore,
    where: str,
    params: dict[str, Any],
    columns: str,
    *,
    terms: list[tuple[str, dict[str, Any]]],
    need: int,
    floor_us: int,
    before: Cursor | None = None,
    now_us: int,
    budget_s: float = BUDGET_S,
    first_rows: float = FIRST_ROWS,
) -> Found:
    """Up to ``need`` calls matching ``where`` and one of ``terms`` (with ``columns``, which
    must hold ``call_id`` and ``ts_us``), newest first, older than ``before`` (or now) and not
    older than ``floor_us``; see the module docstring.

    Each term is searched by its own query and the matches merged: a term on one column is
    filtered inside the Parquet scan, so the other columns are read for its matches only,
    where an ``OR`` over columns (or a ``UNION`` of the scans, measured) is filtered after
    every column of every row was read.
    """
    started = time.monotonic()
    per_day = day_rows(store)
    # the chunks are planned from the newest call, not from now: a log whose calls stop some hours
    # before now (a quiet night, a bench log) would otherwise count the empty hours as calls, take
    # the first chunk's speed for a rate, and size the next chunk four times too large; and the
    # first chunk starts at that call (nothing in this snapshot is newer)
    last_call_us = newest_us(store, per_day, now_us)
    plan_us = min(now_us, last_call_us)
    hi = before.ts_us + 1 if before is not None else now_us + HOUR_US  # (a skewed clock's rows)
    hi = min(hi, last_call_us + 1)
    found = Found(upper_us=now_us if before is None else before.ts_us, searched_from_us=hi)
    keyset = ""
    args = dict(params)
    if before is not None:
        keyset = "AND (ts < make_timestamptz($b_ts) OR (ts = make_timestamptz($b_ts) AND call_id < $b_id))"
        args |= {"b_ts": before.ts_us, "b_id": before.call_id}
    target, scanned = first_rows, 0.0
    while True:
        if hi <= floor_us:
            found.complete = True
            break
        lo = max(floor_us, hi - _span_for(per_day, hi, floor_us, target, plan_us))
        src = win.source(store, "calls", lo, hi)
        merged: dict[str, dict[str, Any]] = {}
        for term, term_params in terms:
            for row in store.sql(
                f"""
                SELECT {columns} FROM {src}
                WHERE ts >= make_timestamptz($lo_) AND ts < make_timestamptz($hi_) {keyset} AND ({where}) AND ({term})
                ORDER BY ts DESC, call_id DESC LIMIT $limit_
                """,
                {**args, **term_params, "lo_": lo, "hi_": hi, "limit_": need - len(found.rows)},
            ):
                merged.setdefault(row["call_id"], row)
        newest = sorted(merged.values(), key=lambda r: (r["ts_us"], r["call_id"]), reverse=True)
        rows = newest[: need - len(found.rows)]
        found.rows += rows
        found.chunks += 1
        scanned += rows_between(per_day, lo, hi, plan_us)
        hi = found.searched_from_us = lo
        if len(found.rows) >= need:
            found.full = True  # what is older than the page's last call is the next page's
            found.searched_from_us = found.rows[-1]["ts_us"]
            break
        elapsed = time.monotonic() - started
        left = budget_s - elapsed
        target = min(target * 4, scanned / max(elapsed, 1e-3) * left)
        rest = rows_between(per_day, floor_us, hi, plan_us)
        if rest > 0 and (left <= 0 or (target < MIN_ROWS and rest > target)):
            break  # the budget is spent: the page links to the rest
    return found
