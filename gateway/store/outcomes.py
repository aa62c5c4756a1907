"""The outcome-rate query: per-unit sums per period and arm, from the call log.

The one copy of it: the review dashboard (`arm_rate` over `CELLS_SQL`), ``shadowtune eval
outcomes`` and the canary controller (`evals.online.outcomes_query`, which shapes these rows
into its cells) all run `run` with one of the ``*_SQL`` templates below, so the page's rates
and intervals are the report's. Besides the cells, the templates give the cross sums of
cells that share units, the pre-period covariates for CUPED (`PRE_CELLS_SQL`,
`PRE_CROSS_SQL`: each keyed unit's outcomes on the baseline before the window), the
reviewers' votes kept apart (`REVIEWER_SQL`), the periods, latency quantiles and custom
metrics. The definitions, per *served* call of a route's ``baseline`` / ``candidate``:

``thumbs_up_rate``
    share of served calls whose latest user thumb is up (**among all served calls**: an
    unrated call counts as not up). ``rated_rate`` is the share with any thumb, and
    ``up_among_rated`` = thumbs_up_rate / rated_rate is "thumbs-up rate among rated calls".
``thumbs_down_rate``, ``regeneration_rate``, ``flag_rate``, ``error_rate``
    the same over all served calls; an error is HTTP status >= 400 or an error type.
``rating``, ``latency_ms``, ``cost_usd``, custom metrics
    means over the calls that have a value.

Events are the users' own (`gateway.store.reader.USER_EVENTS_SQL`: reviewers' events kept
out, one per call, kind and poster). A *period* is one route-state version (``route_version``:
share, candidate and mode constant within it), optionally split into time buckets
(``bucket_us``: a UTC day for ``eval outcomes --by day``, an hour on the dashboard). A *unit*
is the value of the route's sticky key (``user``, ``session_id`` or ``client_key``); a call
without one is its own unit.

Only the day partitions of ``[plo, hi)`` are read for calls (``plo`` is ``lo`` unless a
pre-period is asked for), and those from ``plo`` on for events (`gateway.store.windows`): an
event always comes after its call.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from gateway.store import windows
from gateway.store.reader import POSTER_SQL
from gateway.store.reader import REVIEWER_SQL as IS_REVIEWER_SQL

if TYPE_CHECKING:
    from gateway.store.reader import LogStore

UNIT_COLUMNS = {"user": '"user"', "session": "session_id", "client_key": "client_key"}
"""Sticky keys the log records, and their column."""

BUILTIN = ("thumbs_up_rate", "thumbs_down_rate", "regeneration_rate", "error_rate", "flag_rate")
RESERVED_KINDS = ("thumbs", "rating", "choice", "flag", "regeneration", "relabel", "exclude")

_CTE = """
cs AS (
  SELECT call_id, response_id, route, variant, served, ts, mode, route_version, status, error_type,
         latency_ms, cost_usd, "user", session_id, client_key
  FROM {calls} WHERE ts >= make_timestamptz($plo) AND ts < make_timestamptz($hi)
),
c_all AS (
  SELECT call_id, response_id, variant, ts, mode, route_version, ts < make_timestamptz($lo) AS pre,
         {group} AS grp,
         coalesce(CAST(route_version AS VARCHAR), 'mode:' || coalesce(mode, 'unknown')) AS period,
         {unit} AS key,
         coalesce({unit}, 'call:' || call_id) AS unit,
         (coalesce(status, 200) >= 400 OR error_type IS NOT NULL) AS is_error,
         latency_ms, cost_usd
  FROM cs
  WHERE served AND list_contains($routes, route) AND variant IN ('baseline', 'candidate')
),
c AS (SELECT * EXCLUDE (pre) FROM c_all WHERE NOT pre),
ew AS (
  SELECT event_id, call_id, ts, kind, value, value_num, data, source, key_id, reviewer, "user"
  FROM {events} WHERE ts >= make_timestamptz($plo)
),
er AS (
  SELECT e.* REPLACE (coalesce(m.call_id, e.call_id) AS call_id)
  FROM ew e
  LEFT JOIN (SELECT any_value(call_id) AS call_id, response_id FROM cs
             WHERE served AND response_id IN (SELECT call_id FROM ew WHERE NOT starts_with(call_id, 'call_'))
             GROUP BY response_id) m
    ON e.call_id = m.response_id
),
user_events AS (
  SELECT * EXCLUDE (_rn) FROM (
    SELECT *, row_number() OVER (
      PARTITION BY call_id, kind, {poster} ORDER BY ts DESC, event_id DESC) AS _rn
    FROM er WHERE NOT {reviewer}
  ) WHERE _rn = 1
),
ev AS (
  SELECT c.call_id, e.ts, e.kind, e.value, e.value_num, e.data
  FROM user_events e JOIN c_all c ON e.call_id = c.call_id
  UNION ALL
  SELECT c.call_id, e.ts, e.kind, e.value, e.value_num, e.data
  FROM (SELECT * FROM user_events WHERE NOT starts_with(call_id, 'call_')) e
  JOIN c_all c ON e.call_id = c.response_id AND c.response_id <> c.call_id
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
w AS (
  SELECT c.grp, c.period, c.variant, c.unit, {sums}
  FROM c LEFT JOIN o USING (call_id)
  GROUP BY ALL
),
ux AS (
  SELECT c.grp, c.period, c.variant, c.unit, cu.metric, sum(cu.y)::DOUBLE AS y, count(*)::DOUBLE AS n
  FROM cu JOIN c USING (call_id)
  WHERE {custom}
  GROUP BY ALL
),
wa AS (SELECT * FROM w{whole:w}),
uxa AS (SELECT * FROM ux{whole:ux}),
pw AS (
  SELECT c.unit, {sums}
  FROM c_all c LEFT JOIN o USING (call_id)
  WHERE c.pre AND c.key IS NOT NULL AND c.variant = 'baseline'
  GROUP BY ALL
),
px AS (
  SELECT c.unit, cu.metric, sum(cu.y)::DOUBLE AS y, count(*)::DOUBLE AS n
  FROM cu JOIN c_all c USING (call_id)
  WHERE c.pre AND c.key IS NOT NULL AND c.variant = 'baseline' AND {custom}
  GROUP BY ALL
)
"""

# one unit's sums over its calls, and the same as (metric, y, n) rows
_SUMS = """count(*)::DOUBLE AS n_all,
         sum(CASE WHEN o.thumb = 'up' THEN 1.0 ELSE 0.0 END) AS thumbs_up_rate,
         sum(CASE WHEN o.thumb = 'down' THEN 1.0 ELSE 0.0 END) AS thumbs_down_rate,
         sum(CASE WHEN o.thumb IS NOT NULL THEN 1.0 ELSE 0.0 END) AS rated_rate,
         sum(CASE WHEN o.regenerated THEN 1.0 ELSE 0.0 END) AS regeneration_rate,
         sum(CASE WHEN c.is_error THEN 1.0 ELSE 0.0 END) AS error_rate,
         sum(CASE WHEN o.flagged THEN 1.0 ELSE 0.0 END) AS flag_rate,
         sum(o.rating::DOUBLE) AS rating, count(o.rating)::DOUBLE AS n_rating,
         sum(c.latency_ms::DOUBLE) AS latency_ms, count(c.latency_ms)::DOUBLE AS n_latency,
         sum(c.cost_usd::DOUBLE) AS cost_usd, count(c.cost_usd)::DOUBLE AS n_cost"""
WIDE = (
    ("thumbs_up_rate", "n_all"),
    ("thumbs_down_rate", "n_all"),
    ("rated_rate", "n_all"),
    ("regeneration_rate", "n_all"),
    ("error_rate", "n_all"),
    ("flag_rate", "n_all"),
    ("rating", "n_rating"),
    ("latency_ms", "n_latency"),
    ("cost_usd", "n_cost"),
)
"""The built-in metrics, each a column of a unit's sums (``w``, ``pw``) and the column of its ``n``."""
_CTE = _CTE.replace("{sums}", _SUMS)
_W_SUMS = ", ".join(f"sum({c}) AS {c}" for c in re.findall(r" AS (\w+)", _SUMS))
_WHOLE = {  # ``run(..., whole=True)``: the buckets' units summed again over the whole window
    "{whole:w}": f" UNION ALL SELECT {{top}} AS grp, period, variant, unit, {_W_SUMS} FROM w GROUP BY ALL",
    "{whole:ux}": " UNION ALL SELECT {top} AS grp, period, variant, unit, metric, sum(y) AS y, sum(n) AS n"
    " FROM ux GROUP BY ALL",
}

# The built-in metrics are summed wide (a unit's row in ``w`` has them all) and unpivoted only
# once aggregated: a long table of units x metrics was 3/4 of the query's time. Custom metrics
# (rare) keep the long form (``ux``, ``px``). Each ``{wide:...}`` marker is filled by `run`.
_WIDE_KINDS: dict[str, tuple[str, str, str, tuple[str, ...], tuple[tuple[str, str], ...]]] = {
    # kind: (FROM clause, its grouping, the columns it gives, the aliases that must have
    #        the metric, the sums over units)
    "cells": (
        "wa u",
        "u.grp, u.period, u.variant",
        "grp, period, variant, m.metric, m.k AS units",
        ("u",),
        (
            ("y", "u.{y}"),
            ("n", "u.{n}"),
            ("yy", "u.{y} * u.{y}"),
            ("nn", "u.{n} * u.{n}"),
            ("yn", "u.{y} * u.{n}"),
        ),
    ),
    "cross": (
        "wa a JOIN wa b ON a.unit = b.unit AND a.grp IS NOT DISTINCT FROM b.grp"
        " AND (a.period < b.period OR (a.period = b.period AND a.variant < b.variant))"
        " WHERE a.unit NOT LIKE 'call:%'",
        "a.grp, a.period, a.variant, b.period, b.variant",
        "grp, m.metric, pa, va, pb, vb",
        ("a", "b"),
        (("yy", "a.{y} * b.{y}"), ("yn", "a.{y} * b.{n}"), ("ny", "a.{n} * b.{y}"), ("nn", "a.{n} * b.{n}")),
    ),
    "pre_cells": (
        "wa u JOIN pw p USING (unit)",
        "u.grp, u.period, u.variant",
        "grp, period, variant, m.metric, m.k AS units",
        ("u", "p"),
        (
            ("y", "p.{y}"),
            ("n", "p.{n}"),
            ("yy", "p.{y} * p.{y}"),
            ("nn", "p.{n} * p.{n}"),
            ("yn", "p.{y} * p.{n}"),
        ),
    ),
    "pre_cross": (
        "wa a JOIN wa b ON a.unit = b.unit AND a.grp IS NOT DISTINCT FROM b.grp JOIN pw p ON p.unit = a.unit",
        "a.grp, a.period, a.variant, b.period, b.variant",
        "grp, m.metric, pa, va, pb, vb",
        ("a", "b", "p"),
        (
            ("yy", "a.{y} * p.{y}"),
            ("yn", "a.{y} * p.{n}"),
            ("ny", "a.{n} * p.{y}"),
            ("nn", "a.{n} * p.{n}"),
            ("pyy", "p.{y} * p.{y}"),
            ("pyn", "p.{y} * p.{n}"),
            ("pnn", "p.{n} * p.{n}"),
        ),
    ),
}
_GROUP_NAMES = {
    "u.grp, u.period, u.variant": "grp, period, variant",
    "a.grp, a.period, a.variant, b.period, b.variant": "grp, pa, va, pb, vb",
}


def _wide(kind: str, metrics: Iterable[tuple[str, str]]) -> str:
    """The ``{wide:kind}`` select: per group, each built-in metric's sums, unpivoted to rows."""
    source, group, columns, aliases, sums = _WIDE_KINDS[kind]
    named = _GROUP_NAMES[group]
    aggs, values = [], []
    for i, (y, n) in enumerate(metrics):
        cond = " AND ".join(f"{a}.{n} > 0" for a in aliases)
        aggs.append(f"count(*) FILTER (WHERE {cond}) AS k{i}")
        aggs += [f"sum({e.format(y=y, n=n)}) FILTER (WHERE {cond}) AS {name}{i}" for name, e in sums]
        values.append(f"('{y}', k{i}, " + ", ".join(f"{name}{i}" for name, _ in sums) + ")")
    if not aggs:
        return ""
    stats = ", ".join(name for name, _ in sums)
    return (
        f"SELECT {columns}, {', '.join('m.' + n for n, _ in sums)} FROM "
        f"(SELECT {', '.join(f'{g} AS {a}' for g, a in zip(group.split(', '), named.split(', '), strict=True))}, "
        f"{', '.join(aggs)} FROM {source} GROUP BY {group}) t, "
        f"LATERAL (VALUES {', '.join(values)}) AS m(metric, k, {stats}) WHERE m.k > 0"
    )


CELLS_SQL = (
    "WITH"
    + _CTE
    + """
{wide:cells}
{custom:UNION ALL
SELECT grp, period, variant, metric, count(*) AS units,
       sum(y) AS y, sum(n) AS n, sum(y * y) AS yy, sum(n * n) AS nn, sum(y * n) AS yn
FROM uxa GROUP BY ALL}
ORDER BY ALL
"""
)
"""Per ``(grp, period, variant, metric)``: the unit count and the sums over units of ``y``, ``n``,
``y²``, ``n²``, ``y·n`` (`evals.online.strata.Cell`)."""

CROSS_SQL = (
    "WITH"
    + _CTE
    + """
{wide:cross}
{custom:UNION ALL
SELECT a.grp, a.metric, a.period AS pa, a.variant AS va, b.period AS pb, b.variant AS vb,
       sum(a.y * b.y) AS yy, sum(a.y * b.n) AS yn, sum(a.n * b.y) AS ny, sum(a.n * b.n) AS nn
FROM uxa a JOIN uxa b
  ON a.unit = b.unit AND a.metric = b.metric AND a.grp IS NOT DISTINCT FROM b.grp
 AND (a.period < b.period OR (a.period = b.period AND a.variant < b.variant))
WHERE a.unit NOT LIKE 'call:%'
GROUP BY ALL}
"""
)
"""Per pair of cells sharing units: the cross sums over those units (`evals.online.strata.Cross`)."""

PRE_CELLS_SQL = (
    "WITH"
    + _CTE
    + """
{wide:pre_cells}
{custom:UNION ALL
SELECT u.grp, u.period, u.variant, u.metric, count(*) AS units,
       sum(p.y) AS y, sum(p.n) AS n, sum(p.y * p.y) AS yy, sum(p.n * p.n) AS nn, sum(p.y * p.n) AS yn
FROM uxa u JOIN px p USING (unit, metric)
GROUP BY ALL}
"""
)
"""Per cell: its keyed units' sums over the calls the baseline served to them in ``[plo, lo)``
(the CUPED covariate; ``run(..., pre_lo_us=)``)."""

PRE_CROSS_SQL = (
    "WITH"
    + _CTE
    + """
{wide:pre_cross}
{custom:UNION ALL
SELECT a.grp, a.metric, a.period AS pa, a.variant AS va, b.period AS pb, b.variant AS vb,
       sum(a.y * p.y) AS yy, sum(a.y * p.n) AS yn, sum(a.n * p.y) AS ny, sum(a.n * p.n) AS nn,
       sum(p.y * p.y) AS pyy, sum(p.y * p.n) AS pyn, sum(p.n * p.n) AS pnn
FROM uxa a JOIN uxa b
  ON a.unit = b.unit AND a.metric = b.metric AND a.grp IS NOT DISTINCT FROM b.grp
JOIN px p ON p.unit = a.unit AND p.metric = a.metric
GROUP BY ALL}
"""
)
"""Per pair of cells: the cross sums of one cell's outcomes with the other's covariates
(``yy``...``nn``), and of the two covariates (``pyy``, ``pyn``, ``pnn``)."""

REVIEWER_SQL = (
    "WITH"
    + _CTE
    + """,
rv AS (
  SELECT c.grp, c.period, c.variant, c.call_id, e.kind, e.reviewer,
         CASE WHEN e.kind = 'thumbs' OR e.value IN ('a', 'b') THEN e.value
              WHEN e.value = c.call_id THEN 'this_call' ELSE 'other_call' END AS value
  FROM er e JOIN c ON e.call_id = c.call_id
  WHERE {reviewer} AND e.kind IN ('thumbs', 'choice')
  QUALIFY row_number() OVER (
    PARTITION BY e.call_id, e.kind, coalesce(e.reviewer, '') ORDER BY e.ts DESC, e.event_id DESC) = 1
)
SELECT grp, period, variant, kind, value, count(*) AS events
FROM rv GROUP BY ALL
UNION ALL
SELECT grp, period, variant, '*' AS kind, NULL AS value, count(DISTINCT call_id) AS events FROM rv GROUP BY ALL
"""
)
"""Per cell: the reviewers' latest thumbs and choices (kept out of every rate), and ``*``: the
calls reviewed."""

PERIODS_SQL = (
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
"""Per ``(grp, period, variant)``: calls, units, calls without a key, first and last call, latency."""

QUANTILES_SQL = (
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
"""Per group and variant: latency p50/p95 over the periods both arms served (all, if none)."""

CUSTOM_SQL = (
    "WITH"
    + _CTE
    + """
SELECT kind AS metric,
       bool_and(coalesce(try_cast(json_extract(data, '$.higher_is_better') AS BOOLEAN), true)) AS hib,
       max(try_cast(json_extract(data, '$.mde') AS DOUBLE)) AS mde
FROM ev WHERE kind NOT IN {reserved} AND value_num IS NOT NULL GROUP BY ALL
"""
)
"""The custom metrics in the events: direction and declared minimum detectable effect."""

ALL_METRICS = None
"""``metrics=ALL_METRICS``: every metric, custom ones included."""


def unit_column(sticky_key: str | None) -> str:
    """The column of ``sticky_key``; ``NULL`` (each call its own unit) for keys the log lacks."""
    return UNIT_COLUMNS.get(sticky_key or "user", "NULL::VARCHAR")


def run(
    store: LogStore,
    template: str,
    route: str | list[str],
    lo_us: int,
    hi_us: int | None = None,
    *,
    sticky_key: str | None = "user",
    bucket_us: int | None = None,
    metrics: Iterable[str] | None = ALL_METRICS,
    pre_lo_us: int | None = None,
    whole: bool = False,
) -> list[dict[str, Any]]:
    """Run one of the ``*_SQL`` queries over a route's served calls in ``[lo_us, hi_us)``.

    ``grp`` in the rows is ``epoch_us(ts) // bucket_us`` (None without buckets). With a list of
    routes (one scan for all, as the dashboard asks), ``grp`` is ``"<route>|<bucket or empty>"``.
    ``whole`` (with ``bucket_us``): the whole window's rows too, with the ``grp`` of no bucket
    (one pass over the calls and events for a chart and its total). ``pre_lo_us`` opens the pre-period ``[pre_lo_us, lo_us)`` that `PRE_CELLS_SQL` and
    `PRE_CROSS_SQL` read (the other queries count only ``[lo_us, hi_us)`` either way).
    """
    hi = hi_us if hi_us is not None else 2**62
    plo = min(lo_us, pre_lo_us) if pre_lo_us is not None else lo_us
    listed = set(metrics) if metrics is not None else None
    wide = [m for m in WIDE if listed is None or m[0] in listed]
    custom = None if listed is None else sorted(listed - {m[0] for m in WIDE})
    group = f"epoch_us(ts) // {int(bucket_us)}" if bucket_us else "NULL::BIGINT"
    if isinstance(route, list):
        group = f"route || '|' || coalesce(CAST({group} AS VARCHAR), '')"
    top = (
        ("regexp_replace(grp, '[^|]*$', '')" if isinstance(route, list) else "NULL::BIGINT")
        if whole and bucket_us
        else ""
    )
    filled = {
        **{k: v.replace("{top}", top) if top else "" for k, v in _WHOLE.items()},
        "{calls}": windows.source(store, "calls", plo, hi_us),
        "{events}": windows.source(store, "events", plo, None),
        "{group}": group,
        "{unit}": unit_column(sticky_key),
        "{poster}": POSTER_SQL,
        "{reviewer}": IS_REVIEWER_SQL,
        "{reserved}": _sql_list(RESERVED_KINDS),
        "{custom}": "TRUE" if custom is None else f"cu.metric IN {_sql_list(custom)}" if custom else "FALSE",
    }
    sql = template
    for k, v in filled.items():
        sql = sql.replace(k, v)
    if "{wide:" in sql:
        kind = sql.split("{wide:", 1)[1].split("}", 1)[0]
        select = _wide(kind, wide)
        sql = sql.replace("{wide:" + kind + "}", select)
        part = re.search(r"\{custom:(.*?)\}", sql, re.S)
        if part is not None:
            keep = part.group(1) if custom is None or custom else ""
            if not select:
                keep = keep.removeprefix("UNION ALL")
            if not select and not keep:
                return []
            sql = sql[: part.start()] + keep + sql[part.end() :]
    routes = route if isinstance(route, list) else [route]
    rows: list[dict[str, Any]] = store.sql(
        sql, {"routes": routes, "lo": int(lo_us), "plo": int(plo), "hi": int(hi)}
    )
    return rows


def _sql_list(values: Iterable[str]) -> str:
    return "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"


# -- the dashboard's view: one arm's rate per bucket, with its interval -------------------
@dataclass(frozen=True)
class ArmRate:
    """One variant's rate (or mean) in one bucket, pooled over its periods, with its interval."""

    value: float | None
    count: float
    """For rates: the calls with the outcome (sum of ``y``)."""
    n: float
    units: int
    lo: float | None
    hi: float | None


def arm_rate(cells: list[dict[str, Any]], *, rate: bool = True, alpha: float = 0.05) -> ArmRate:
    """Pool one arm's cells (rows of `CELLS_SQL` for one variant and metric) like ``eval outcomes``.

    The ratio of sums, its unit-level (delta method) variance, and for a rate the Wilson
    interval at the effective sample size (`evals.outcomes.arm_summary`); periods' shared
    units are ignored here (the dashboard's buckets split by time, where they rarely share).
    """
    y = sum(float(c["y"]) for c in cells)
    n = sum(float(c["n"]) for c in cells)
    units = sum(int(c["units"]) for c in cells)
    if n <= 0:
        return ArmRate(None, y, n, units, None, None)
    r = y / n
    ss = sum(float(c["yy"]) - 2 * r * float(c["yn"]) + r * r * float(c["nn"]) for c in cells)
    f = units / (units - 1) if units > 1 else 1.0
    var = max(ss, 0.0) * f / (n * n)
    z = NormalDist().inv_cdf(1 - alpha / 2)
    if not rate:
        half = z * math.sqrt(var)
        return ArmRate(r, y, n, units, r - half, r + half)
    binomial = r * (1 - r) / n
    n_eff = n * binomial / var if var > 0 and binomial > 0 else n
    lo, hi = wilson_interval(r * n_eff, n_eff, z)
    return ArmRate(r, y, n, units, lo, hi)


def wilson_interval(k: float, n: float, z: float) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` at normal quantile ``z``."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
