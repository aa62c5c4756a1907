"""`evals.online.outcomes`' view of the log: the outcome query's rows as strata cells.

The query itself is `gateway.store.outcomes` (the one copy, which the review dashboard runs
too). A *period* is one route-state version (``route_version`` on every call: the share, the
candidate and the mode are constant within it), optionally split by UTC day. A *unit* is
the value of the route's sticky key on the call (``user``, ``session_id`` or
``client_key``); a call without one (or a route keyed on a header the log does not keep)
is its own unit, and `Cells.unkeyed_calls` says how many were.

For each ``(group, period, variant, metric)`` `query_cells` returns the `evals.strata.Cell`
sums over units, and for each pair of cells that share units the `evals.strata.Cross`
sums, so `evals.strata.stratified_difference` can combine periods without pooling them.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from evals.online.strata import Cell, Cross, pre_period
from gateway.durations import epoch_us
from gateway.store import outcomes as oq

DAY_US = 86_400_000_000
METRICS = (*oq.BUILTIN, "rating", "latency_ms", "cost_usd")
"""The report's built-in metrics (the dashboard's ``rated_rate`` is not one)."""


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

    ``store`` is a `gateway.store.LogStore`. Groups are UTC days with ``by_day``, else one
    group (``None``). The custom metrics map to ``(higher_is_better, declared minimum
    detectable effect or None)``. With ``pre_since``, each keyed unit's sums over the calls the
    baseline served in ``[pre_since, since)`` are the cells' covariates (`Cells.covariates`:
    CUPED, `evals.strata`). Only the baseline's: a user in the candidate's hash bucket was also
    in an earlier canary's, so outcomes an earlier candidate served would depend on the arm and
    bias the adjustment.
    """
    lo = epoch_us(since)
    plo = min(lo, epoch_us(pre_since)) if pre_since is not None else lo
    hi = epoch_us(until) if until is not None else None
    bucket = DAY_US if by_day else None
    metrics: tuple[str, ...] = METRICS

    def sql(template: str) -> list[dict[str, Any]]:
        # the pre-period's calls only where they count (covariates; metrics only they have)
        pre = plo if template in (oq.PRE_CELLS_SQL, oq.PRE_CROSS_SQL, oq.CUSTOM_SQL) else None
        return oq.run(
            store,
            template,
            route,
            lo,
            hi,
            sticky_key=sticky_key,
            bucket_us=bucket,
            metrics=metrics,
            pre_lo_us=pre,
        )

    custom = {r["metric"]: (bool(r["hib"]), r["mde"]) for r in sql(oq.CUSTOM_SQL)}
    metrics = (*METRICS, *sorted(custom))
    out: dict[str | None, Cells] = defaultdict(Cells)
    for r in sql(oq.PERIODS_SQL):
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
    for r in sql(oq.CELLS_SQL):
        out[day(r["grp"])].cells.setdefault(r["metric"], []).append(_cell(r, r["period"]))
    for r in sql(oq.CROSS_SQL):
        x = Cross(float(r["yy"]), float(r["yn"]), float(r["ny"]), float(r["nn"]))
        out[day(r["grp"])].cross.setdefault(r["metric"], {})[((r["pa"], r["va"]), (r["pb"], r["vb"]))] = x
    if plo < lo:
        for r in sql(oq.PRE_CELLS_SQL):
            out[day(r["grp"])].covariates.setdefault(r["metric"], []).append(
                _cell(r, pre_period(r["period"]))
            )
        for r in sql(oq.PRE_CROSS_SQL):
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
    for r in sql(oq.REVIEWER_SQL):
        counts = out[day(r["grp"])].reviewer.setdefault((r["period"], r["variant"]), {})
        name = "calls" if r["kind"] == "*" else f"{r['kind']}:{r['value']}"
        counts[name] = counts.get(name, 0) + int(r["events"])
    for r in sql(oq.QUANTILES_SQL):
        out[day(r["grp"])].latency[r["variant"]] = (r["p50"], r["p95"])
    return dict(out), custom


def _cell(r: dict[str, Any], period: str) -> Cell:
    """A `CELLS_SQL` / `PRE_CELLS_SQL` row as a cell of ``period``."""
    sums = (float(r[k]) for k in ("y", "n", "yy", "nn", "yn"))
    return Cell(period, r["variant"], int(r["units"]), *sums)


def day(dayn: int | None) -> str | None:
    if dayn is None:
        return None
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(dayn))).isoformat()
