"""Usage, cost and the monthly projection of a route's variants: the figures of "is it worth it?".

One computation for ``shadowtune report worth-it`` (`evals.worth_it`, which adds the quality
side) and the review dashboard's "Worth it?" panel (`gateway.web._worth`), so both show the
same numbers. The definitions, per ``baseline`` / ``candidate`` variant of a route in ``[lo, hi)``:

* **usage** counts every call, served or shadow (a shadow candidate's cost and latency are as
  real as a served one's): calls, served, shadow, answered (status < 400 and no error type),
  the error rate among all calls, input and output tokens per answered call, latency p50/p95
  of answered calls and time to first token p50/p95 of answered streamed calls.
* **cost per 1,000 answered calls** comes from the log's ``cost_usd`` (the upstream's prices
  when the call was made); rows logged without a price are priced from ``prices`` (the
  upstream settings now, USD per million tokens) when given. A variant with calls that have
  neither is *missing*, with the upstream to configure, never zero.
* **current share**: the candidate's share of served calls under the latest route-state
  version that served calls in the window.
* **projection**: served calls per day over the observed part of the window (first to last
  call, at least an hour), times `DAYS_PER_MONTH`, at the current share and at 100 %: monthly
  cost, what it saves against all-baseline, and the latency saved per candidate call (and on
  average over all calls).

Every figure that cannot be computed is ``None`` with a sentence in ``missing``. Only the day
partitions of the window are read (`gateway.store.windows`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.store import windows

if TYPE_CHECKING:
    from gateway.store.reader import LogStore

DAYS_PER_MONTH = 30
VARIANTS = ("baseline", "candidate")
LATENCIES = ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms")
"""The latencies whose saving the projection gives."""

Prices = Mapping[str, tuple[float | None, float | None]]
"""Upstream name → (USD per million input tokens, USD per million output tokens)."""

_OK = "coalesce(status, 200) < 400 AND error_type IS NULL"
_WINDOW = (  # written so that DuckDB pushes the time filter into the scan (docs/benchmarks.md)
    "route = $route AND ts >= make_timestamptz($lo) AND ts < make_timestamptz($hi)"
    " AND variant IN ('baseline', 'candidate')"
)

_USAGE_SQL = f"""
SELECT variant,
       count(*) AS calls,
       count(*) FILTER (WHERE served) AS served,
       count(*) FILTER (WHERE NOT ({_OK})) AS errors,
       count(*) FILTER (WHERE {_OK}) AS answered,
       avg(input_tokens) FILTER (WHERE {_OK}) AS tokens_in,
       avg(output_tokens) FILTER (WHERE {_OK}) AS tokens_out,
       quantile_cont(latency_ms, 0.5) FILTER (WHERE {_OK}) AS p50,
       quantile_cont(latency_ms, 0.95) FILTER (WHERE {_OK}) AS p95,
       quantile_cont(ttft_ms, 0.5) FILTER (WHERE {_OK} AND stream) AS ttft_p50,
       quantile_cont(ttft_ms, 0.95) FILTER (WHERE {_OK} AND stream) AS ttft_p95,
       mode() WITHIN GROUP (ORDER BY upstream_model) AS model,
       min(epoch_us(ts)) AS first_us,
       max(epoch_us(ts)) AS last_us
FROM {{calls}} WHERE {_WINDOW}
GROUP BY variant
"""

_COST_SQL = f"""
SELECT variant, coalesce(upstream, '') AS upstream, any_value(upstream_model) AS model,
       count(*) AS answered,
       count(cost_usd) AS priced,
       coalesce(sum(CAST(cost_usd AS DECIMAL(38, 12))), 0) AS cost,  -- exact: the same total every run
       coalesce(sum(input_tokens) FILTER (WHERE cost_usd IS NULL), 0) AS unpriced_in,
       coalesce(sum(output_tokens) FILTER (WHERE cost_usd IS NULL), 0) AS unpriced_out
FROM {{calls}} WHERE {_WINDOW} AND {_OK}
GROUP BY variant, coalesce(upstream, '')
"""

_SHARE_SQL = f"""
WITH v AS (
  SELECT route_version FROM {{calls}} WHERE {_WINDOW} AND served AND route_version IS NOT NULL
  ORDER BY epoch_us(ts) DESC LIMIT 1
)
SELECT any_value(c.route_version) AS version, any_value(c.mode) AS mode,
       count(*) FILTER (WHERE c.variant = 'candidate') AS candidate,
       count(*) AS served
FROM {{calls}} c JOIN v ON c.route_version = v.route_version
WHERE c.route = $route AND c.ts >= make_timestamptz($lo) AND c.ts < make_timestamptz($hi) AND c.served
  AND c.variant IN ('baseline', 'candidate')
"""


def route_worth(
    store: LogStore, route: str, lo_us: int, hi_us: int, prices: Prices | None = None
) -> dict[str, Any]:
    """``{"variants", "current_share", "projection", "missing"}`` for ``route`` in ``[lo_us, hi_us)``.

    ``variants`` maps each variant with calls to its usage (see the module docstring);
    ``projection`` is None without calls, else ``monthly_calls``, ``observed_days`` and ``at``
    (``current`` and ``full``: the share, ``monthly_cost_usd``, ``monthly_saved_usd`` and the
    latency saved, or None where the figure is unknown).
    """
    calls = windows.source(store, "calls", lo_us, hi_us)
    params = {"route": route, "lo": lo_us, "hi": hi_us}
    missing: list[str] = []
    variants: dict[str, dict[str, Any]] = {}
    for r in store.sql(_USAGE_SQL.replace("{calls}", calls), params):
        variants[r["variant"]] = _usage(r)
    for name in VARIANTS:
        if name not in variants:
            missing.append(f"no {name} calls on route {route!r} in the window")
    costs = _costs(store.sql(_COST_SQL.replace("{calls}", calls), params), prices or {})
    for name, v in variants.items():
        v["cost_per_1k_usd"], why = costs.get(name, (None, "no answered calls"))
        if why:
            missing.append(f"{name} cost: {why}")
    share = _current_share(store.sql(_SHARE_SQL.replace("{calls}", calls), params))
    days = _observed_days(variants, lo_us, hi_us)
    return {
        "variants": variants,
        "current_share": share,
        "projection": _projection(variants, share, days, missing),
        "missing": missing,
    }


def _usage(r: Mapping[str, Any]) -> dict[str, Any]:
    calls = int(r["calls"])
    return {
        "model": r["model"],
        "calls": calls,
        "served": int(r["served"]),
        "shadow": calls - int(r["served"]),
        "answered": int(r["answered"]),
        "error_rate": int(r["errors"]) / calls if calls else None,
        "tokens_in_per_call": _num(r["tokens_in"]),
        "tokens_out_per_call": _num(r["tokens_out"]),
        "latency_p50_ms": _num(r["p50"]),
        "latency_p95_ms": _num(r["p95"]),
        "ttft_p50_ms": _num(r["ttft_p50"]),
        "ttft_p95_ms": _num(r["ttft_p95"]),
        "first_us": r["first_us"],
        "last_us": r["last_us"],
    }


def _costs(rows: list[dict[str, Any]], prices: Prices) -> dict[str, tuple[float | None, str | None]]:
    """Per variant: (USD per 1,000 answered calls, why it is missing or None)."""
    total: dict[str, float] = {}
    answered: dict[str, int] = {}
    unknown: dict[str, list[str]] = {}
    for r in rows:
        name, upstream = r["variant"], r["upstream"]
        answered[name] = answered.get(name, 0) + int(r["answered"])
        cost = float(r["cost"])
        unpriced = int(r["answered"]) - int(r["priced"])
        if unpriced:
            p_in, p_out = prices.get(upstream, (None, None))
            if p_in is None and p_out is None:
                label = upstream or "(unnamed)"
                unknown.setdefault(name, []).append(
                    f"{unpriced} of {r['answered']} calls to upstream {label!r} have no price"
                    f" (set upstreams.{label}.price_in / price_out)"
                )
            else:
                cost += (
                    int(r["unpriced_in"]) * (p_in or 0.0) + int(r["unpriced_out"]) * (p_out or 0.0)
                ) / 1e6
        total[name] = total.get(name, 0.0) + cost
    out: dict[str, tuple[float | None, str | None]] = {}
    for name, n in answered.items():
        if name in unknown:
            out[name] = (None, "; ".join(unknown[name]))
        else:
            out[name] = (1000 * total[name] / n if n else None, None if n else "no answered calls")
    return out


def _observed_days(variants: Mapping[str, Mapping[str, Any]], lo: int, hi: int) -> float | None:
    """Days between the window's first and last call (at least an hour), or None without calls."""
    firsts = [int(v["first_us"]) for v in variants.values() if v["first_us"] is not None]
    lasts = [int(v["last_us"]) for v in variants.values() if v["last_us"] is not None]
    if not firsts:
        return None
    span_us = min(hi, max(lasts)) - max(lo, min(firsts))
    return float(max(span_us, 3600 * 1e6) / 86400e6)


def _current_share(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not rows or not rows[0]["served"]:
        return None
    r = rows[0]
    return {
        "version": r["version"],
        "mode": r["mode"],
        "share": int(r["candidate"]) / int(r["served"]),
        "served_calls": int(r["served"]),
    }


def _projection(
    variants: Mapping[str, Mapping[str, Any]],
    share: Mapping[str, Any] | None,
    days: float | None,
    missing: list[str],
) -> dict[str, Any] | None:
    if days is None:
        return None
    served = sum(v["served"] for v in variants.values())
    monthly_calls = served / days * DAYS_PER_MONTH
    b, c = variants.get("baseline"), variants.get("candidate")
    cost_b = b["cost_per_1k_usd"] if b else None
    cost_c = c["cost_per_1k_usd"] if c else None
    out: dict[str, Any] = {"monthly_calls": monthly_calls, "observed_days": days, "at": {}}
    shares = {"current": share["share"] if share else None, "full": 1.0}
    if share is None:
        missing.append("projection at the current share: no served calls with a route version in the window")
    for label, s in shares.items():
        if s is None:
            out["at"][label] = None
            continue
        at: dict[str, Any] = {"share": s}
        if cost_b is not None and cost_c is not None:
            all_baseline = monthly_calls * cost_b / 1000
            at["monthly_cost_usd"] = monthly_calls * ((1 - s) * cost_b + s * cost_c) / 1000
            at["monthly_saved_usd"] = all_baseline - at["monthly_cost_usd"]
        else:
            at["monthly_cost_usd"] = at["monthly_saved_usd"] = None
        for q in LATENCIES:
            if b and c and b.get(q) is not None and c.get(q) is not None:
                at[f"{q}_saved_per_call"] = b[q] - c[q]
                at[f"{q}_saved_mean"] = s * (b[q] - c[q])
        out["at"][label] = at
    if cost_b is None or cost_c is None:
        missing.append("monthly cost: needs both variants' cost per call")
    return out


def _num(x: Any) -> float | None:
    return None if x is None else float(x)
