"""The dashboard's numbers: per route and variant, over the period and per time bucket.

* traffic (calls, errors, latency p50/p95, cost) from the period's day partitions, with
  requests that matched no route (the edge's 401s, unknown models) grouped apart;
* the canary's share of served calls per bucket;
* outcome rates from `gateway.store.outcomes` -- the definitions of ``eval outcomes`` (a
  test checks that the page and the CLI agree) -- for the period and per bucket (charts), with
  their unit-level 95 % intervals;
* the pairwise judge's verdicts per day (`judge_verdicts`, written by ``eval judge``).

Buckets: an hour over 24h, 6 hours over 7d, a day over 30d.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gateway.store import LogStore
from gateway.store import outcomes as oq
from gateway.store import windows as win
from gateway.web._queries import ERROR_SQL, PERIODS, _has_view

HOUR_US = 3_600_000_000
BUCKETS = {"24h": HOUR_US, "7d": 6 * HOUR_US, "30d": 24 * HOUR_US}
RATE_METRICS = ("thumbs_up_rate", "thumbs_down_rate", "rated_rate", "regeneration_rate", "error_rate")
DEFINITIONS = {
    "thumbs_up_rate": "thumbs-up rate: served calls whose latest user thumb is up, among all served calls",
    "thumbs_down_rate": "thumbs-down rate: served calls whose latest user thumb is down, among all served calls",
    "rated_rate": "rated: served calls with any user thumb, among all served calls",
    "up_among_rated": "thumbs-up rate among rated calls: ups / (ups + downs)",
    "regeneration_rate": "regeneration rate: served calls the user regenerated, among all served calls",
    "error_rate": "error rate: calls with HTTP status >= 400 or an error type",
}


def window(period: str, now_us: int) -> tuple[int, int, int]:
    """``(lo, hi, bucket)`` in epoch µs: the period ending now, on bucket boundaries."""
    bucket = BUCKETS[period]
    hi = (now_us // bucket + 1) * bucket
    return hi - PERIODS[period] * 1_000_000, hi, bucket


def traffic(store: LogStore, lo: int, hi: int, bucket: int) -> list[dict[str, Any]]:
    """Per route, variant, served and bucket: calls, errors, latency quantiles, cost."""
    return store.sql(
        f"""
        SELECT route, variant, served, epoch_us(ts) // {bucket} * {bucket} AS t,
               count(*) AS calls, count(*) FILTER (WHERE {ERROR_SQL}) AS errors,
               approx_quantile(latency_ms, 0.5) AS p50_ms, approx_quantile(latency_ms, 0.95) AS p95_ms,
               sum(cost_usd) AS cost_usd
        FROM {win.source(store, "calls", lo, hi)}
        WHERE ts >= make_timestamptz($lo) AND ts < make_timestamptz($hi) AND route IS NOT NULL
        GROUP BY ALL ORDER BY ALL
        """,
        {"lo": lo, "hi": hi},
    )


def totals(store: LogStore, lo: int, hi: int) -> list[dict[str, Any]]:
    """Per route and variant over the whole window (exact quantiles)."""
    return store.sql(
        f"""
        SELECT route, coalesce(variant, '') AS variant, count(*) AS calls,
               count(*) FILTER (WHERE served) AS served,
               avg(CASE WHEN {ERROR_SQL} THEN 1.0 ELSE 0.0 END) AS error_rate,
               quantile_cont(latency_ms, 0.5) AS p50_ms, quantile_cont(latency_ms, 0.95) AS p95_ms,
               sum(cost_usd) AS cost_usd
        FROM {win.source(store, "calls", lo, hi)}
        WHERE ts >= make_timestamptz($lo) AND ts < make_timestamptz($hi) AND route IS NOT NULL
        GROUP BY ALL ORDER BY ALL
        """,
        {"lo": lo, "hi": hi},
    )


def unrouted(store: LogStore, lo: int, hi: int) -> list[dict[str, Any]]:
    """Requests that matched no route (refused at the edge, unknown model), by status and error."""
    return store.sql(
        f"""
        SELECT status, coalesce(error_type, '') AS error_type, count(*) AS calls,
               epoch_us(max(ts)) AS last_us
        FROM {win.source(store, "calls", lo, hi)}
        WHERE ts >= make_timestamptz($lo) AND ts < make_timestamptz($hi) AND route IS NULL
        GROUP BY ALL ORDER BY calls DESC
        """,
        {"lo": lo, "hi": hi},
    )


def outcome_rates(
    store: LogStore,
    routes: list[str],
    lo: int,
    hi: int,
    bucket: int | None,
    sticky_key: str | None,
    *,
    whole: bool = False,
) -> dict[str, dict[tuple[int | None, str, str], oq.ArmRate]]:
    """Per route ``{(bucket start or None, variant, metric): ArmRate}`` of its served calls (one scan).

    ``whole``: with the buckets, the whole window's rates too (bucket start None), in the same pass."""
    if not routes:
        return {}
    rows = oq.run(
        store,
        oq.CELLS_SQL,
        routes,
        lo,
        hi,
        sticky_key=sticky_key,
        bucket_us=bucket,
        metrics=RATE_METRICS,
        whole=whole,
    )
    cells: dict[tuple[str, int | None, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        route, _, b = str(r["grp"]).rpartition("|")
        start = int(b) * bucket if bucket and b else None
        cells[(route, start, r["variant"], r["metric"])].append(r)
    out: dict[str, dict[tuple[int | None, str, str], oq.ArmRate]] = defaultdict(dict)
    for (route, start, variant, metric), v in cells.items():
        out[route][(start, variant, metric)] = oq.arm_rate(v)
    return out


def judge_days(store: LogStore, lo: int, hi: int) -> list[dict[str, Any]]:
    """Per route and day: the candidate's wins, losses and ties in the judge's verdicts, at the
    day's start, or at ``lo`` for the day the window starts in (a point before ``lo`` is off the
    chart: a 24-hour window would otherwise lose the verdicts of its calls from before midnight)."""
    if not _has_view(store, "judge_verdicts"):
        return []
    return store.sql(
        f"""
        SELECT v.route, greatest(epoch_us(c.ts) // {win.DAY_US} * {win.DAY_US}, $lo) AS t,
               count(*) FILTER (WHERE v.outcome = 'candidate') AS wins,
               count(*) FILTER (WHERE v.outcome = 'baseline') AS losses,
               count(*) FILTER (WHERE v.outcome NOT IN ('candidate', 'baseline')) AS ties
        FROM judge_verdicts v JOIN {win.source(store, "calls", lo, hi)} c ON c.call_id = v.call_id
        WHERE c.ts >= make_timestamptz($lo) AND c.ts < make_timestamptz($hi)
        GROUP BY ALL ORDER BY ALL
        """,
        {"lo": lo, "hi": hi},
    )


def dashboard(
    store: LogStore, period: str, now_us: int, sticky_keys: dict[str, str | None]
) -> dict[str, Any]:
    """Everything the dashboard shows, in plain data (the charts are drawn by the router)."""
    lo, hi, bucket = window(period, now_us)
    rows = traffic(store, lo, hi, bucket)
    table = totals(store, lo, hi)
    routes = sorted({r["route"] for r in table} | set(sticky_keys))
    out: dict[str, Any] = {"lo": lo, "hi": hi, "bucket": bucket, "routes": {}, "table": table}
    for route in routes:
        mine = [r for r in rows if r["route"] == route]
        served: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in mine:
            if r["served"]:
                served[r["t"]][r["variant"] or ""] += r["calls"]
        share = [
            (t, 100.0 * v.get("candidate", 0) / total, v.get("candidate", 0), total)
            for t, v in sorted(served.items())
            if (total := sum(v.values()))
        ]
        out["routes"][route] = {"traffic": mine, "canary_share": share, "rates": {}, "rate_series": {}}
    keys = {sticky_keys.get(r, "user") for r in routes}
    groups = [[r for r in routes if sticky_keys.get(r, "user") == k] for k in sorted(keys, key=str)]
    for group in groups:  # one scan per sticky key (usually one for all routes)
        key = sticky_keys.get(group[0], "user")
        rates = outcome_rates(store, group, lo, hi, bucket, key, whole=True)
        for route in group:
            arms = rates.get(route, {})
            out["routes"][route]["rates"] = {k: v for k, v in arms.items() if k[0] is None}
            out["routes"][route]["rate_series"] = {k: v for k, v in arms.items() if k[0] is not None}
    out["unrouted"] = unrouted(store, lo, hi)
    out["judge"] = judge_days(store, lo, hi)
    return out
