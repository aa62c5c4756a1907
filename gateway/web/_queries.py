"""What the review pages read from the call log: plain functions over an open `LogStore`.

Every function here blocks (DuckDB); the router calls them through the process's
`gateway.web._store.SharedStore`. Timestamps come back as epoch microseconds (``ts_us``).

Every query is bounded: it reads only the day partitions of its time window
(`gateway.store.windows`), and the calls list walks back from the newest day in growing
chunks until it has its page, so its cost does not grow with the log; a text search also
stops on a time budget and says how far back it looked (`search_calls`, `gateway.web._search`).
Outcomes (thumbs, relabels, ...) are joined to the 50 calls of a page, never to the whole
log. The charts' aggregates are in `gateway.web._series`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.store import LogStore, layout
from gateway.store import windows as win
from gateway.store.reader import OUTCOMES_SQL
from gateway.web import _search

PERIODS: dict[str, int] = {"24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
"""The period selector: label -> seconds."""

PAGE_SIZE = 50
DAY_US = win.DAY_US
HOUR_US = 3_600_000_000
ERROR_SQL = "(coalesce(status, 0) >= 400 OR error_type IS NOT NULL)"


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class CallFilter:
    """The calls list's filters, as read from the query string."""

    route: str = ""
    variant: str = ""
    status: str = ""  # "", "ok" or "error"
    q: str = ""
    served: bool = False
    period: str = ""  # "" (any time) or a key of PERIODS; a text search defaults to 24h
    page: int = 1
    before: int | None = None  # a text search's page: calls older than this (epoch us) ...
    before_id: str = ""  # ... or, at that time, with a smaller call id (`gateway.web._search`)

    def where(self, *, text: bool = True) -> tuple[str, dict[str, Any]]:
        """The filters as SQL and its parameters (``text=False``: without the text search's)."""
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.route == "(unrouted)":
            clauses.append("route IS NULL")
        elif self.route:
            clauses.append("route = $route")
            params["route"] = self.route
        if self.variant:
            clauses.append("variant = $variant")
            params["variant"] = self.variant
        if self.status == "ok":
            clauses.append(f"NOT {ERROR_SQL}")
        elif self.status == "error":
            clauses.append(ERROR_SQL)
        if self.q and text:
            terms = self.text_terms()
            clauses.append("(" + " OR ".join(sql for sql, _ in terms) + ")")
            for _, term_params in terms:
                params |= term_params
        if self.served:
            clauses.append("served")
        return (" AND ".join(clauses) or "TRUE"), params

    def text_terms(self) -> list[tuple[str, dict[str, Any]]]:
        """The text search's alternatives with their parameters, each on one column (so DuckDB
        filters it in the scan, before it reads the other columns): the call id, the answer, the
        request."""
        like = "%" + "".join("\\" + ch if ch in "%_\\" else ch for ch in self.q) + "%"
        return [  # ILIKE: no lower-cased copy of every body (a third faster)
            ("call_id = $q_raw", {"q_raw": self.q}),
            ("output_text ILIKE $q ESCAPE '\\'", {"q": like}),
            ("request ILIKE $q ESCAPE '\\'", {"q": like}),
        ]

    def window_s(self) -> int | None:
        if self.period in PERIODS:
            return PERIODS[self.period]
        return PERIODS["24h"] if self.q else None


def _day_start(us: int) -> int:
    return (us // DAY_US) * DAY_US


def oldest_us(store: LogStore) -> int:
    """The start of the log's oldest day partition (today's start when it has none)."""
    days = win.days(store, "calls")
    if not days:
        return _day_start(now_us())
    return win.day_start_us(days[0])


def newest_first(
    store: LogStore, where: str, params: dict[str, Any], need: int, *, since_us: int | None = None
) -> list[dict[str, Any]]:
    """Up to ``need`` ``(call_id, ts_us)`` of calls matching ``where``, newest first.

    Walks back from now in growing chunks (1 hour, 2, 4, ... and so on), stopping when it has
    ``need`` rows, reaches ``since_us`` or passes the oldest partition: a first page sorts
    the last hour's calls, not the whole log's.
    """
    oldest = oldest_us(store)
    hi = now_us() + HOUR_US  # (rows a skewed clock put a little ahead)
    floor = max(oldest, _day_start(since_us)) if since_us is not None else oldest
    out: list[dict[str, Any]] = []
    span = 2
    while len(out) < need and hi > floor:
        lo = max(floor, hi - span * HOUR_US)
        rows = store.sql(
            f"""
            SELECT call_id, epoch_us(ts) AS ts_us FROM {win.source(store, "calls", lo, hi)}
            WHERE ts >= make_timestamptz($lo_) AND ts < make_timestamptz($hi_) AND {where}
            ORDER BY ts DESC, call_id DESC LIMIT $limit_
            """,
            {**params, "lo_": max(lo, since_us or lo), "hi_": hi, "limit_": need - len(out)},
        )
        out.extend(rows)
        hi, span = lo, span * 2
    return out


LIST_COLUMNS = """
    call_id, parent_call_id, epoch_us(ts) AS ts_us, route, variant, served, mode, upstream_model,
    status, error_type, latency_ms, cost_usd, request, output_text, response_id, "user"
"""


def rows_by_id(
    store: LogStore, ids: list[str], lo_us: int, hi_us: int, columns: str = LIST_COLUMNS
) -> list[dict[str, Any]]:
    """The calls ``ids`` (all within ``[lo_us, hi_us]``), in the order of ``ids``, with their outcomes.

    The ids are a literal ``IN`` list, which DuckDB checks on ``call_id`` before it reads any
    body; ids made by `new_id` narrow the time range to theirs.
    """
    if not ids:
        return []
    spans = [w for w in (win.id_window(i, margin_us=HOUR_US) for i in ids) if w is not None]
    ranges = [(lo_us, hi_us)]
    if len(spans) == len(ids):  # first where the ids say, then (rows whose ts is not their id's) all of it
        ranges.insert(0, (max(lo_us, min(w[0] for w in spans)), min(hi_us, max(w[1] for w in spans))))
    rows: list[dict[str, Any]] = []
    for lo, hi in ranges:
        want = [i for i in ids if i not in {r["call_id"] for r in rows}]
        if not want or lo > hi:
            continue
        marks = ", ".join(f"$id{n}" for n in range(len(want)))
        rows += store.sql(
            f"SELECT {columns} FROM {win.source(store, 'calls', lo, hi + 1)} "
            f"WHERE ts BETWEEN make_timestamptz($lo) AND make_timestamptz($hi) AND call_id IN ({marks})",
            {"lo": lo, "hi": hi, **{f"id{n}": v for n, v in enumerate(want)}},
        )
    by_id = {r["call_id"]: r for r in rows}
    ordered = [by_id[i] for i in ids if i in by_id]
    attach_outcomes(store, ordered, lo_us)
    return ordered


def attach_outcomes(store: LogStore, rows: list[dict[str, Any]], lo_us: int) -> None:
    """Add each call's outcomes (`gateway.store.reader.OUTCOMES_SQL`, over its own events only)."""
    if not rows:
        return
    ids = [r["call_id"] for r in rows]
    rids = [r["response_id"] for r in rows if r.get("response_id")]
    rcids = [r["call_id"] for r in rows if r.get("response_id")]
    resolved = f"""
        SELECT e.* REPLACE (coalesce(m.call_id, e.call_id) AS call_id)
        FROM {win.source(store, "events", lo_us, None)} e
        LEFT JOIN (SELECT unnest($rids) AS response_id, unnest($rcids) AS call_id) m
          ON e.call_id = m.response_id
        WHERE e.call_id IN (SELECT unnest($ids || $rids))
    """
    sql = OUTCOMES_SQL.replace("FROM events_resolved", f"FROM ({resolved})")
    found = {o["call_id"]: o for o in store.sql(sql, {"ids": ids, "rids": rids, "rcids": rcids})}
    for r in rows:
        o = found.get(r["call_id"]) or {}
        r["thumbs_up"] = o.get("thumbs_up") or 0
        r["thumbs_down"] = o.get("thumbs_down") or 0
        r["reviewer_thumbs_up"] = o.get("reviewer_thumbs_up") or 0
        r["reviewer_thumbs_down"] = o.get("reviewer_thumbs_down") or 0
        r["regenerated"] = bool(o.get("regenerated"))
        r["choice"] = o.get("choice")
        r["relabel"] = o.get("relabel")
        r["relabelled"] = o.get("relabel") is not None
        r["excluded"] = bool(o.get("excluded"))


def list_calls(store: LogStore, flt: CallFilter) -> tuple[list[dict[str, Any]], bool]:
    """One page of calls, newest first; ``(rows, has_next_page)``."""
    where, params = flt.where()
    offset = (max(flt.page, 1) - 1) * PAGE_SIZE
    window = flt.window_s()
    since = now_us() - window * 1_000_000 if window else None
    keys = newest_first(store, where, params, offset + PAGE_SIZE + 1, since_us=since)
    page = keys[offset : offset + PAGE_SIZE]
    if not page:
        return [], False
    lo, hi = min(k["ts_us"] for k in page), max(k["ts_us"] for k in page)
    return rows_by_id(store, [k["call_id"] for k in page], lo, hi), len(keys) > offset + PAGE_SIZE


def search_calls(
    store: LogStore,
    flt: CallFilter,
    *,
    budget_s: float = _search.BUDGET_S,
    first_rows: float = _search.FIRST_ROWS,
) -> _search.Found:
    """One page of a text search (``flt.q``), newest first, bounded (`gateway.web._search`):
    ``rows`` holds the page (with outcomes) and, when ``full``, one more."""
    where, params = flt.where(text=False)
    now = now_us()
    oldest = oldest_us(store)
    window = flt.window_s()
    floor = max(oldest, now - window * 1_000_000) if window else oldest
    before = _search.Cursor(flt.before, flt.before_id) if flt.before is not None else None
    terms = flt.text_terms()
    if layout.is_remote(store.log_dir):  # one query: each term's would read the text over the network again
        terms = [(" OR ".join(f"({t})" for t, _ in terms), {k: v for _, p in terms for k, v in p.items()})]
    found = _search.search(
        store,
        where,
        params,
        LIST_COLUMNS,
        terms=terms,
        need=PAGE_SIZE + 1,
        floor_us=floor,
        before=before,
        now_us=now,
        budget_s=budget_s,
        first_rows=first_rows,
    )
    if found.rows:
        attach_outcomes(store, found.rows[:PAGE_SIZE], min(r["ts_us"] for r in found.rows[:PAGE_SIZE]))
    return found


_FACETS: dict[tuple[str, str, tuple[str, ...]], list[tuple[Any, Any]]] = {}
"""Each day partition's distinct (route, variant), by its file set (`facets`)."""


def facets(store: LogStore) -> dict[str, list[str]]:
    """The routes and variants of the day partitions of the last 30 days, for the filter drop-downs.

    Files are immutable (a compaction writes new ones), so a day's pairs are read once per
    file set and kept: what is read again is a day whose files changed (today's) and the WAL
    tail. Reading all 30 days every minute cost 3-4 s on object storage at 10M calls, beside
    the pages it slowed down.
    """
    lo_day = win.day_of(now_us() - PERIODS["30d"] * 1_000_000)
    by_day: dict[str, list[str]] = {}
    for f in store.data_files.get("calls", ()):
        if f.day >= lo_day:
            by_day.setdefault(f.day, []).append(f.uri)
    if len(_FACETS) > 4096:
        _FACETS.clear()
    pairs = {(r["route"], r["variant"]) for r in store.sql("SELECT DISTINCT route, variant FROM _calls_tail")}
    for day, uris in sorted(by_day.items()):
        key = (store.log_dir, day, tuple(sorted(uris)))
        if key not in _FACETS:
            start = win.day_start_us(day)
            rel = win.source(store, "calls", start, start + DAY_US, tail=False)
            _FACETS[key] = [
                (r["route"], r["variant"]) for r in store.sql(f"SELECT DISTINCT route, variant FROM {rel}")
            ]
        pairs.update(_FACETS[key])
    return {
        "routes": sorted({r for r, _ in pairs if r}),
        "variants": sorted({v for _, v in pairs if v}),
    }


CALL_COLUMNS = """
    call_id, parent_call_id, epoch_us(ts) AS ts_us, endpoint, route, variant, served,
    mode, route_version, upstream, upstream_model, "user", session_id, stream,
    request, response, response_id, output_text, finish_reason, status, error_type, error_message,
    latency_ms, ttft_ms, input_tokens, output_tokens, cost_usd
"""


def _find(
    store: LogStore, where: str, params: dict[str, Any], lo: int | None, hi: int | None
) -> list[dict[str, Any]]:
    """Rows matching ``where`` in ``[lo, hi)`` (the partitions, and ``ts`` itself: DuckDB skips the
    other rows' vectors before it reads their bodies)."""
    if lo is None or hi is None:
        return store.sql(f"SELECT {CALL_COLUMNS} FROM calls WHERE {where}", params)
    return store.sql(
        f"SELECT {CALL_COLUMNS} FROM {win.source(store, 'calls', lo, hi)} "
        f"WHERE ts >= make_timestamptz($lo_) AND ts < make_timestamptz($hi_) AND ({where})",
        {**params, "lo_": lo, "hi_": hi},
    )


def call_detail(store: LogStore, call_id: str) -> dict[str, Any] | None:
    """The call, its family (the served call and its shadow/fallback siblings) and its events.

    A call id made by `new_id` says when the call was made: the family's ids come from the id
    columns of the hour around it (shadow and fallback calls follow their root at once), then
    their rows in one read of the row group they share. For an id of another shape (or a row
    not where its id says), the call is looked up wider (`_by_id`) and its family around it.
    """
    family = _family_rows(store, call_id, win.id_window(call_id, margin_us=HOUR_US))
    if not family:
        call = _by_id(store, call_id)
        if call is None:
            return None
        family = _family_rows(store, call_id, (call["ts_us"] - HOUR_US, call["ts_us"] + HOUR_US)) or [call]
    family.sort(key=lambda r: (not r["served"], r["variant"] or "", r["ts_us"]))
    call = next(r for r in family if r["call_id"] == call_id)
    since = min(r["ts_us"] for r in family)
    attach_outcomes(store, family, since)
    names = [call_id] + ([call["response_id"]] if call.get("response_id") else [])
    events = store.sql(
        f"""
        SELECT event_id, epoch_us(ts) AS ts_us, kind, value, value_num, comment, "user", source, reviewer
        FROM {win.source(store, "events", since, None)}
        WHERE call_id IN ({_literals(names)}) ORDER BY ts, event_id
        """
    )
    return {"call": call, "family": family, "events": events}


def _family_rows(store: LogStore, call_id: str, around: tuple[int, int] | None) -> list[dict[str, Any]]:
    """The rows of ``call_id``'s family in ``around`` (empty when the call is not there)."""
    if around is None:
        return []
    lo, hi = around
    ids = store.sql(
        f"""
        WITH src AS (
          SELECT call_id, parent_call_id, ts FROM {win.source(store, "calls", lo, hi)}
          WHERE ts >= make_timestamptz($lo) AND ts < make_timestamptz($hi)
        ),
        me AS (SELECT coalesce(parent_call_id, call_id) AS root FROM src WHERE call_id = $id LIMIT 1)
        SELECT call_id, epoch_us(ts) AS ts_us FROM src, me
        WHERE src.call_id = me.root OR src.parent_call_id = me.root OR src.call_id = $id
        """,
        {"id": call_id, "lo": lo, "hi": hi},
    )
    if not any(r["call_id"] == call_id for r in ids):
        return []
    ts = [r["ts_us"] for r in ids]
    names = _literals([r["call_id"] for r in ids])
    return _find(store, f"call_id IN ({names})", {}, min(ts), max(ts) + 1)


def _by_id(store: LogStore, call_id: str) -> dict[str, Any] | None:
    """One call's row: around the time its id says, else (ids of another shape) the whole log."""
    for margin in (60_000_000, HOUR_US, DAY_US):  # an id is made when its call starts
        around = win.id_window(call_id, margin_us=margin)
        if around is None:
            break
        rows = _find(store, "call_id = $id", {"id": call_id}, *around)
        if rows:
            return rows[0]
    rows = _find(store, "call_id = $id", {"id": call_id}, None, None)
    return rows[0] if rows else None


def _literals(values: list[str]) -> str:
    """SQL string literals: a literal ``IN`` list is checked against row-group statistics."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def call_exists(store: LogStore, call_id: str) -> bool:
    around = win.id_window(call_id)
    if around:
        sql = f"SELECT 1 AS x FROM {win.source(store, 'calls', *around)} WHERE call_id = $id LIMIT 1"
        if store.sql(sql, {"id": call_id}):
            return True
    return bool(store.sql("SELECT 1 AS x FROM calls WHERE call_id = $id LIMIT 1", {"id": call_id}))


def judge_verdicts(store: LogStore, call_ids: list[str]) -> list[dict[str, Any]]:
    """The pairwise judge's verdicts on these calls (as baseline or candidate), newest run last."""
    if not _has_view(store, "judge_verdicts"):
        return []
    return store.sql(
        """
        SELECT run_id, item_id, outcome, call_id, candidate_call_id, votes, reasons, position_consistent
        FROM judge_verdicts
        WHERE list_contains($ids, call_id) OR list_contains($ids, candidate_call_id)
        ORDER BY filename, item_id
        """,
        {"ids": call_ids},
    )


def _has_view(store: LogStore, name: str) -> bool:
    return bool(
        store.sql("SELECT 1 AS x FROM duckdb_views() WHERE view_name = $n AND NOT internal", {"n": name})
    )


def existing(store: LogStore, ids: list[str]) -> set[str]:
    """Which of ``ids`` are calls in the log (one query over the days their ids name)."""
    spans = [w for w in (win.id_window(i) for i in ids) if w is not None]
    lo = min((w[0] for w in spans), default=None) if len(spans) == len(ids) else None
    hi = max((w[1] for w in spans), default=None) if len(spans) == len(ids) else None
    rows = store.sql(
        f"SELECT DISTINCT call_id FROM {win.source(store, 'calls', lo, hi)} WHERE list_contains($ids, call_id)",
        {"ids": ids},
    )
    return {r["call_id"] for r in rows}
