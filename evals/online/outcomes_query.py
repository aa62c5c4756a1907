"""The log query behind `evals.outcomes`: per-unit sums per period and arm, from the call log.

A *period* is one route-state version (``route_version`` on every call: the share, the
candidate and the mode are constant within it), optionally split by UTC day. A *unit* is
the value of the route's sticky key on the call (``user``, ``session_id`` or
``client_key``); a call without one (or a route keyed on a header the log does not keep)
is its own unit, and `Cells.unkeyed_calls` says how many were.

For each ``(group, period, variant, metric)`` the query returns the `evals.strata.Cell`
sums over units, and for each pair of cells that share units the `evals.strata.Cross`
sums, so `evals.strata.stratified_difference` can combine periods without pooling them.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from evals.online.strata import Cell, Cross, pre_period
from gateway.store.sources import REVIEWER_SOURCES

UNIT_COLUMNS = {"user": '"user"', "session": "session_id", "client_key": "client_key"}
"""Sticky keys the log records, and their column."""

BUILTIN = ("thumbs_up_rate", "thumbs_down_rate", "regeneration_rate", "error_rate", "flag_rate")
_RESERVED_KINDS = ("thumbs", "rating", "choice", "flag", "regeneration", "relabel", "exclude")

_CTE = """
c_all AS (
  SELECT call_id, response_id, variant, ts, mode, route_version, epoch_us(ts) < $lo AS pre,
         {group} AS grp,
         coalesce(CAST(route_version AS VARCHAR), 'mode:' || coalesce(mode, 'unknown')) AS period,
         {unit} AS key,
         coalesce({unit}, 'call:' || call_id) AS unit,
         (coalesce(status, 200) >= 400 OR error_type IS NOT NULL) AS is_error,
         latency_ms, cost_usd
  FROM calls
  WHERE served AND route = $route AND variant IN ('baseline', 'candidate')
    AND epoch_us(ts) >= $plo AND epoch_us(ts) < $hi
),
c AS (SELECT * EXCLUDE (pre) FROM c_all WHERE NOT pre),
ev AS (
  SELECT c.call_id, e.ts, e.kind, e.value, e.value_num, e.data
  FROM user_events e JOIN c_all c ON e.call_id = c.call_id
  UNION ALL
  SELECT c.call_id, e.ts, e.kind, e.value, e.value_num, e.data
  FROM user_events e JOIN c_all c ON e.call_id = c.response_id AND c.response_id <> c.call_id
),
o AS (
  SELECT call_id,
         arg_max(value, ts) FILTER (WHERE kind = 'thumbs') AS thumb,
         avg(value_num) FILTER (WHERE kind = 'rating') AS rating,
         bool_or(kind = 'regeneration') AS regenerated,
         bool_or(kind = 'flag') AS flagged
  FROM ev GROUP BY call_id
),
cu AS (
  SELECT call_id, kind AS metric, avg(value_num) AS y
  FROM ev
  WHERE kind NOT IN {reserved} AND value_num IS NOT NULL
  GROUP BY ALL
),
long AS (
  SELECT c.call_id, m.metric, m.y, 1.0::DOUBLE AS n
  FROM c_all c LEFT JOIN o USING (call_id),
  LATERAL (VALUES
    ('thumbs_up_rate', CASE WHEN o.thumb = 'up' THEN 1.0 ELSE 0.0 END::DOUBLE),
    ('thumbs_down_rate', CASE WHEN o.thumb = 'down' THEN 1.0 ELSE 0.0 END::DOUBLE),
    ('regeneration_rate', CASE WHEN o.regenerated THEN 1.0 ELSE 0.0 END::DOUBLE),
    ('error_rate', CASE WHEN c.is_error THEN 1.0 ELSE 0.0 END::DOUBLE),
    ('flag_rate', CASE WHEN o.flagged THEN 1.0 ELSE 0.0 END::DOUBLE),
    ('rating', o.rating::DOUBLE),
    ('latency_ms', c.latency_ms::DOUBLE),
    ('cost_usd', c.cost_usd::DOUBLE)
  ) AS m(metric, y)
  WHERE m.y IS NOT NULL
  UNION ALL
  SELECT call_id, metric, y::DOUBLE, 1.0::DOUBLE FROM cu
),
uc AS (
  SELECT c.grp, c.period, c.variant, c.unit, l.metric, sum(l.y) AS y, sum(l.n) AS n
  FROM long l JOIN c USING (call_id)
  GROUP BY ALL
),
pu AS (
  SELECT c.unit, l.metric, sum(l.y) AS y, sum(l.n) AS n
  FROM long l JOIN c_all c USING (call_id)
  WHERE c.pre AND c.key IS NOT NULL AND c.variant = 'baseline'
  GROUP BY ALL
)
"""

_CELLS_SQL = (
    "WITH"
    + _CTE
    + """
SELECT grp, period, variant, metric, count(*) AS units,
       sum(y) AS y, sum(n) AS n, sum(y * y) AS yy, sum(n * n) AS nn, sum(y * n) AS yn
FROM uc GROUP BY ALL ORDER BY ALL
"""
)

_CROSS_SQL = (
    "WITH"
    + _CTE
    + """
SELECT a.grp, a.metric, a.period AS pa, a.variant AS va, b.period AS pb, b.variant AS vb,
       sum(a.y * b.y) AS yy, sum(a.y * b.n) AS yn, sum(a.n * b.y) AS ny, sum(a.n * b.n) AS nn
FROM uc a JOIN uc b
  ON a.unit = b.unit AND a.metric = b.metric AND a.grp IS NOT DISTINCT FROM b.grp
 AND (a.period < b.period OR (a.period = b.period AND a.variant < b.variant))
WHERE a.unit NOT LIKE 'call:%'
GROUP BY ALL
"""
)

_PRE_CELLS_SQL = (
    "WITH"
    + _CTE
    + """
SELECT u.grp, u.period, u.variant, u.metric, count(*) AS units,
       sum(p.y) AS y, sum(p.n) AS n, sum(p.y * p.y) AS yy, sum(p.n * p.n) AS nn, sum(p.y * p.n) AS yn
FROM uc u JOIN pu p USING (unit, metric)
GROUP BY ALL
"""
)

_PRE_CROSS_SQL = (
    "WITH"
    + _CTE
    + """
SELECT a.grp, a.metric, a.period AS pa, a.variant AS va, b.period AS pb, b.variant AS vb,
       sum(a.y * p.y) AS yy, sum(a.y * p.n) AS yn, sum(a.n * p.y) AS ny, sum(a.n * p.n) AS nn,
       sum(p.y * p.y) AS pyy, sum(p.y * p.n) AS pyn, sum(p.n * p.n) AS pnn
FROM uc a JOIN uc b
  ON a.unit = b.unit AND a.metric = b.metric AND a.grp IS NOT DISTINCT FROM b.grp
JOIN pu p ON p.unit = a.unit AND p.metric = a.metric
GROUP BY ALL
"""
)

_REVIEWER_SQL = (
    "WITH"
    + _CTE
    + """,
rv AS (
  SELECT c.grp, c.period, c.variant, c.call_id, e.kind, e.reviewer,
         CASE WHEN e.kind = 'thumbs' OR e.value IN ('a', 'b') THEN e.value
              WHEN e.value = c.call_id THEN 'this_call' ELSE 'other_call' END AS value
  FROM events_resolved e JOIN c ON e.call_id = c.call_id
  WHERE coalesce(e.source, '') IN {reviewer_sources} AND e.kind IN ('thumbs', 'choice')
  QUALIFY row_number() OVER (
    PARTITION BY e.call_id, e.kind, coalesce(e.reviewer, '') ORDER BY e.ts DESC, e.event_id DESC) = 1
)
SELECT grp, period, variant, kind, value, count(*) AS events
FROM rv GROUP BY ALL
UNION ALL
SELECT grp, period, variant, '*' AS kind, NULL AS value, count(DISTINCT call_id) AS events FROM rv GROUP BY ALL
"""
)

_PERIODS_SQL = (
    "WITH"
    + _CTE
    + """
SELECT grp, period, variant, any_value(mode) AS mode, min(route_version) AS route_version,
       count(*) AS calls, count(DISTINCT unit) AS units, count(*) FILTER (WHERE key IS NULL) AS unkeyed,
       epoch_us(min(ts)) AS first_us, epoch_us(max(ts)) AS last_us,
       quantile_cont(latency_ms, 0.5) AS latency_p50, quantile_cont(latency_ms, 0.95) AS latency_p95
FROM c GROUP BY ALL ORDER BY ALL
"""
)

_QUANTILES_SQL = (
    "WITH"
    + _CTE
    + """,
cmp AS (SELECT grp, period FROM c GROUP BY ALL HAVING count(DISTINCT variant) = 2)
SELECT grp, variant, quantile_cont(latency_ms, 0.5) AS p50, quantile_cont(latency_ms, 0.95) AS p95
FROM c WHERE NOT EXISTS (SELECT 1 FROM cmp)
   OR (grp, period) IN (SELECT (grp, period) FROM cmp)
GROUP BY ALL
"""
)

_HIB_SQL = (
    "WITH"
    + _CTE
    + """
SELECT kind AS metric,
       bool_and(coalesce(try_cast(json_extract(data, '$.higher_is_better') AS BOOLEAN), true)) AS hib,
       max(try_cast(json_extract(data, '$.mde') AS DOUBLE)) AS mde
FROM ev WHERE kind NOT IN {reserved} AND value_num IS NOT NULL GROUP BY ALL
"""
)


@dataclass
class ArmPeriod:
    """One variant in one period: counts for display and the split check."""

    calls: int = 0
    units: int = 0
    unkeyed: int = 0
    latency_p50: float | None = None
    latency_p95: float | None = None


@dataclass
class PeriodInfo:
    """One period of constant route state."""

    period: str
    route_version: int | None
    mode: str | None
    first_ts: float
    last_ts: float
    arms: dict[str, ArmPeriod] = field(default_factory=dict)

    @property
    def compared(self) -> bool:
        return "baseline" in self.arms and "candidate" in self.arms


@dataclass
class Cells:
    """Everything one group (the whole window, or one day) needs for the comparison."""

    periods: dict[str, PeriodInfo] = field(default_factory=dict)
    cells: dict[str, list[Cell]] = field(default_factory=dict)
    """Per metric."""
    cross: dict[str, dict[tuple[tuple[str, str], tuple[str, str]], Cross]] = field(default_factory=dict)
    """Per metric (covariate cells' cross sums included)."""
    covariates: dict[str, list[Cell]] = field(default_factory=dict)
    """Per metric: each cell's pre-period sums over its units (period `evals.strata.pre_period`),
    when a pre-period window was asked for."""
    reviewer: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    """Per (period, variant): the reviewers' latest thumbs and choices (``thumbs:up``,
    ``choice:a``, ...) and the ``calls`` reviewed: kept out of every rate, shown apart."""
    latency: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    """Per variant: p50 and p95 of latency over the compared periods (all, when none is)."""

    @property
    def unkeyed_calls(self) -> int:
        return sum(a.unkeyed for p in self.periods.values() for a in p.arms.values())

    @property
    def calls(self) -> int:
        return sum(a.calls for p in self.periods.values() for a in p.arms.values())


def unit_column(sticky_key: str | None) -> str:
    """The column of ``sticky_key``; ``NULL`` (each call its own unit) for keys the log lacks."""
    return UNIT_COLUMNS.get(sticky_key or "user", "NULL::VARCHAR")


def query_cells(
    store: Any,
    route: str,
    since: dt.datetime | float,
    until: dt.datetime | float | None = None,
    *,
    sticky_key: str | None = "user",
    by_day: bool = False,
    pre_since: dt.datetime | float | None = None,
) -> tuple[dict[str | None, Cells], dict[str, tuple[bool, float | None]]]:
    """Per-group `Cells` of a route's served calls in ``[since, until)``, and the custom metrics.

    Groups are UTC days with ``by_day``, else one group (``None``). The custom metrics map
    to ``(higher_is_better, declared minimum detectable effect or None)``. With ``pre_since``,
    each keyed unit's sums over the calls the baseline served in ``[pre_since, since)`` are the
    cells' covariates (`Cells.covariates`: CUPED, `evals.strata`). Only the baseline's: a user
    in the candidate's hash bucket was also in an earlier canary's, so outcomes an earlier
    candidate served would depend on the arm and bias the adjustment.
    """
    lo = epoch_us(since)
    plo = min(lo, epoch_us(pre_since)) if pre_since is not None else lo
    params = {"route": route, "lo": lo, "plo": plo, "hi": epoch_us(until) if until is not None else 2**62}
    reserved = "(" + ", ".join(f"'{k}'" for k in _RESERVED_KINDS) + ")"
    group = "epoch_us(ts) // 86400000000" if by_day else "NULL::BIGINT"
    reviewers = "(" + ", ".join(f"'{k}'" for k in REVIEWER_SOURCES) + ")"
    cte = {
        "{group}": group,
        "{unit}": unit_column(sticky_key),
        "{reserved}": reserved,
        "{reviewer_sources}": reviewers,
    }

    def sql(template: str) -> list[dict[str, Any]]:
        for k, v in cte.items():
            template = template.replace(k, v)
        rows: list[dict[str, Any]] = store.sql(template, params)
        return rows

    out: dict[str | None, Cells] = defaultdict(Cells)
    for r in sql(_PERIODS_SQL):
        g = out[day(r["grp"])]
        info = g.periods.get(r["period"])
        if info is None:
            info = g.periods[r["period"]] = PeriodInfo(
                r["period"], r["route_version"], r["mode"], r["first_us"] / 1e6, r["last_us"] / 1e6
            )
        info.first_ts = min(info.first_ts, r["first_us"] / 1e6)
        info.last_ts = max(info.last_ts, r["last_us"] / 1e6)
        info.arms[r["variant"]] = ArmPeriod(
            r["calls"], r["units"], r["unkeyed"], r["latency_p50"], r["latency_p95"]
        )
    for r in sql(_CELLS_SQL):
        cell = Cell(
            r["period"],
            r["variant"],
            int(r["units"]),
            float(r["y"]),
            float(r["n"]),
            float(r["yy"]),
            float(r["nn"]),
            float(r["yn"]),
        )
        out[day(r["grp"])].cells.setdefault(r["metric"], []).append(cell)
    for r in sql(_CROSS_SQL):
        x = Cross(float(r["yy"]), float(r["yn"]), float(r["ny"]), float(r["nn"]))
        out[day(r["grp"])].cross.setdefault(r["metric"], {})[((r["pa"], r["va"]), (r["pb"], r["vb"]))] = x
    if plo < lo:
        for r in sql(_PRE_CELLS_SQL):
            cell = Cell(
                pre_period(r["period"]),
                r["variant"],
                int(r["units"]),
                float(r["y"]),
                float(r["n"]),
                float(r["yy"]),
                float(r["nn"]),
                float(r["yn"]),
            )
            out[day(r["grp"])].covariates.setdefault(r["metric"], []).append(cell)
        for r in sql(_PRE_CROSS_SQL):
            into = out[day(r["grp"])].cross.setdefault(r["metric"], {})
            a, b = (r["pa"], r["va"]), (r["pb"], r["vb"])
            into[(a, (pre_period(b[0]), b[1]))] = Cross(
                float(r["yy"]), float(r["yn"]), float(r["ny"]), float(r["nn"])
            )
            if a < b:
                pyn = float(r["pyn"])
                into[((pre_period(a[0]), a[1]), (pre_period(b[0]), b[1]))] = Cross(
                    float(r["pyy"]), pyn, pyn, float(r["pnn"])
                )
    for r in sql(_REVIEWER_SQL):
        counts = out[day(r["grp"])].reviewer.setdefault((r["period"], r["variant"]), {})
        name = "calls" if r["kind"] == "*" else f"{r['kind']}:{r['value']}"
        counts[name] = counts.get(name, 0) + int(r["events"])
    for r in sql(_QUANTILES_SQL):
        out[day(r["grp"])].latency[r["variant"]] = (r["p50"], r["p95"])
    custom = {r["metric"]: (bool(r["hib"]), r["mde"]) for r in sql(_HIB_SQL)}
    return dict(out), custom


def day(dayn: int | None) -> str | None:
    if dayn is None:
        return None
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(dayn))).isoformat()


def epoch_us(value: dt.datetime | float) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1_000_000)
    return int(value * 1_000_000)
