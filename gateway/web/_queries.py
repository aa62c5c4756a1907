"""What the review pages read from the call log: plain functions over an open `LogStore`.

Every function here blocks (DuckDB); the router calls them through `asyncio.to_thread`
with a store opened for that one request. Timestamps come back as epoch microseconds
(``ts_us``) so that formatting stays out of SQL and free of time-zone surprises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from gateway.store import LogStore

PERIODS: dict[str, int] = {"24h": 86_400, "7d": 7 * 86_400, "30d": 30 * 86_400}
"""The dashboard's period selector: label -> seconds."""

PAGE_SIZE = 50

_ERROR = "(coalesce(status, 0) >= 400 OR error_type IS NOT NULL)"


def dashboard(store: LogStore, period: str, *, now: float | None = None) -> list[dict[str, Any]]:
    """One row per (route, variant) over the last ``period``: volume, errors, latency, thumbs, cost."""
    since = (time.time() if now is None else now) - PERIODS[period]
    return store.sql(
        f"""
        SELECT coalesce(route, '') AS route, coalesce(variant, '') AS variant,
               count(*) AS calls,
               count(*) FILTER (WHERE served) AS served,
               avg(CASE WHEN {_ERROR} THEN 1.0 ELSE 0.0 END) AS error_rate,
               quantile_cont(latency_ms, 0.5) AS p50_ms,
               quantile_cont(latency_ms, 0.95) AS p95_ms,
               sum(coalesce(thumbs_up, 0)) AS thumbs_up,
               sum(coalesce(thumbs_down, 0)) AS thumbs_down,
               sum(cost_usd) AS cost_usd
        FROM calls_with_outcomes
        WHERE epoch_us(ts) >= $since
        GROUP BY ALL
        ORDER BY route, variant
        """,
        {"since": int(since * 1_000_000)},
    )


@dataclass(frozen=True)
class CallFilter:
    """The calls list's filters, as read from the query string."""

    route: str = ""
    variant: str = ""
    status: str = ""  # "", "ok" or "error"
    q: str = ""
    served: bool = False
    page: int = 1

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.route:
            clauses.append("route = $route")
            params["route"] = self.route
        if self.variant:
            clauses.append("variant = $variant")
            params["variant"] = self.variant
        if self.status == "ok":
            clauses.append(f"NOT {_ERROR}")
        elif self.status == "error":
            clauses.append(_ERROR)
        if self.q:
            clauses.append(
                "(call_id = $q_raw OR contains(lower(coalesce(output_text, '')), $q)"
                " OR contains(lower(coalesce(request, '')), $q))"
            )
            params["q"] = self.q.lower()
            params["q_raw"] = self.q
        if self.served:
            clauses.append("served")
        return (" AND ".join(clauses) or "TRUE"), params


def list_calls(store: LogStore, flt: CallFilter) -> tuple[list[dict[str, Any]], bool]:
    """One page of calls, newest first; ``(rows, has_next_page)``."""
    where, params = flt.where()
    params["limit"] = PAGE_SIZE + 1
    params["offset"] = (max(flt.page, 1) - 1) * PAGE_SIZE
    rows = store.sql(
        f"""
        SELECT call_id, parent_call_id, epoch_us(ts) AS ts_us, route, variant, served, mode,
               upstream_model, status, error_type, latency_ms, cost_usd, request, output_text,
               coalesce(thumbs_up, 0) AS thumbs_up, coalesce(thumbs_down, 0) AS thumbs_down,
               relabel IS NOT NULL AS relabelled, coalesce(excluded, false) AS excluded
        FROM calls_with_outcomes
        WHERE {where}
        ORDER BY ts DESC, call_id DESC
        LIMIT $limit OFFSET $offset
        """,
        params,
    )
    return rows[:PAGE_SIZE], len(rows) > PAGE_SIZE


def facets(store: LogStore) -> dict[str, list[str]]:
    """The routes and variants present in the log, for the filter drop-downs."""
    rows = store.sql("SELECT DISTINCT route, variant FROM calls")
    return {
        "routes": sorted({r["route"] for r in rows if r["route"]}),
        "variants": sorted({r["variant"] for r in rows if r["variant"]}),
    }


_CALL_COLUMNS = """
    c.call_id, c.parent_call_id, epoch_us(c.ts) AS ts_us, c.endpoint, c.route, c.variant, c.served,
    c.mode, c.route_version, c.upstream, c.upstream_model, c.user, c.session_id, c.stream,
    c.request, c.response, c.output_text, c.finish_reason, c.status, c.error_type, c.error_message,
    c.latency_ms, c.ttft_ms, c.input_tokens, c.output_tokens, c.cost_usd,
    coalesce(c.thumbs_up, 0) AS thumbs_up, coalesce(c.thumbs_down, 0) AS thumbs_down,
    coalesce(c.reviewer_thumbs_up, 0) AS reviewer_thumbs_up,
    coalesce(c.reviewer_thumbs_down, 0) AS reviewer_thumbs_down,
    c.relabel, coalesce(c.excluded, false) AS excluded
"""


def call_detail(store: LogStore, call_id: str) -> dict[str, Any] | None:
    """The call, its family (the served call and its shadow/fallback siblings) and its events."""
    rows = store.sql(
        f"SELECT {_CALL_COLUMNS} FROM calls_with_outcomes c WHERE c.call_id = $id", {"id": call_id}
    )
    if not rows:
        return None
    call = rows[0]
    root = call["parent_call_id"] or call["call_id"]
    family = store.sql(
        f"""
        SELECT {_CALL_COLUMNS} FROM calls_with_outcomes c
        WHERE c.call_id = $root OR c.parent_call_id = $root
        ORDER BY c.served DESC, c.variant, c.ts
        """,
        {"root": root},
    )
    events = store.sql(
        """
        SELECT event_id, epoch_us(ts) AS ts_us, kind, value, value_num, comment, user, source
        FROM events_resolved WHERE call_id = $id ORDER BY ts, event_id
        """,
        {"id": call_id},
    )
    return {"call": call, "family": family, "events": events}


def call_exists(store: LogStore, call_id: str) -> bool:
    return bool(store.sql("SELECT 1 AS x FROM calls WHERE call_id = $id LIMIT 1", {"id": call_id}))
