"""The log query behind `evals.outcomes`: per-unit sums per period and arm, from the call log.

The SQL is `gateway.store.outcomes` (shared with the review dashboard, so both show the same
numbers); this module turns its rows into `evals.strata` cells.

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

from evals.strata import Cell, Cross
from gateway.store import outcomes as store_outcomes

UNIT_COLUMNS = store_outcomes.UNIT_COLUMNS
"""Sticky keys the log records, and their column."""
BUILTIN = store_outcomes.BUILTIN
unit_column = store_outcomes.unit_column
_DAY_US = 86_400_000_000


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
    """Per metric."""
    latency: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    """Per variant: p50 and p95 of latency over the compared periods (all, when none is)."""

    @property
    def unkeyed_calls(self) -> int:
        return sum(a.unkeyed for p in self.periods.values() for a in p.arms.values())

    @property
    def calls(self) -> int:
        return sum(a.calls for p in self.periods.values() for a in p.arms.values())


def query_cells(
    store: Any,
    route: str,
    since: dt.datetime | float,
    until: dt.datetime | float | None = None,
    *,
    sticky_key: str | None = "user",
    by_day: bool = False,
) -> tuple[dict[str | None, Cells], dict[str, tuple[bool, float | None]]]:
    """Per-group `Cells` of a route's served calls in ``[since, until)``, and the custom metrics.

    Groups are UTC days with ``by_day``, else one group (``None``). The custom metrics map
    to ``(higher_is_better, declared minimum detectable effect or None)``.
    """
    lo, hi = epoch_us(since), (epoch_us(until) if until is not None else None)
    bucket = _DAY_US if by_day else None

    def sql(template: str) -> list[dict[str, Any]]:
        rows = store_outcomes.run(store, template, route, lo, hi, sticky_key=sticky_key, bucket_us=bucket)
        return [r for r in rows if r.get("metric") != "rated_rate"]  # the dashboard's, not a compared metric

    out: dict[str | None, Cells] = defaultdict(Cells)
    for r in sql(store_outcomes.PERIODS_SQL):
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
    for r in sql(store_outcomes.CELLS_SQL):
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
    for r in sql(store_outcomes.CROSS_SQL):
        x = Cross(float(r["yy"]), float(r["yn"]), float(r["ny"]), float(r["nn"]))
        out[day(r["grp"])].cross.setdefault(r["metric"], {})[((r["pa"], r["va"]), (r["pb"], r["vb"]))] = x
    for r in sql(store_outcomes.QUANTILES_SQL):
        out[day(r["grp"])].latency[r["variant"]] = (r["p50"], r["p95"])
    custom = {r["metric"]: (bool(r["hib"]), r["mde"]) for r in sql(store_outcomes.CUSTOM_SQL)}
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
