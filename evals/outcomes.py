"""Slow evals: per-variant outcome rates from the call log, with honest statistics.

Two halves, kept apart so the statistics can be tested and simulated without a log:

* pure statistics: `wilson_interval`, `msprt_p_value`, `confidence_sequence`,
  `srm_check`, `compare_arms` over `ArmStats` (sufficient statistics per metric);
* the log query: `query_arm_stats` (served calls of one route over a period, events
  joined by call id or response id) and `outcomes_report`, which the CLI prints.

Metrics (``METRICS``): per served call, ``thumbs_up_rate`` / ``thumbs_down_rate`` (the
latest thumb on the call), ``regeneration_rate``, ``error_rate`` (HTTP status >= 400 or
an error type), ``flag_rate``; means of ``rating`` (over rated calls), ``latency_ms`` and
``cost_usd``; and the mean of each custom metric found in the events. Events are read from
``user_events``: the users' own signals, one per (call, kind, poster), reviewers' kept out.

Sequential test (mSPRT, Johari, Pekelis & Walsh, "Always valid inference", 2017).
With a difference estimate ``x`` = candidate mean - baseline mean, its variance
``V = s_c^2/n_c + s_b^2/n_b`` (normal approximation), the null value ``theta0`` and a
normal mixing distribution ``theta - theta0 ~ N(0, tau^2)`` the mixture likelihood ratio is::

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 (x - theta0)^2 / (2 V (V + tau^2)))

and ``p = min(1, 1 / Lambda)`` is an always-valid p-value: under the null, the chance
that ``Lambda`` ever reaches ``1/alpha`` over any number of looks is at most ``alpha``
(Ville's inequality), so checking every hour does not inflate false alarms. The
one-sided version mixes over ``theta > theta0`` only (a half-normal), which gives::

    Lambda_1 = 2 * Lambda * Phi(y tau / sqrt(V (V + tau^2))),   y = x - theta0

and stays valid for the composite null ``theta <= theta0`` (used for non-inferiority
and for "significantly worse"). Inverting ``Lambda < 1/alpha`` gives the always-valid
confidence sequence ``x ± sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2)/V)))``.
``tau`` sets the effect size the test is most sensitive to; by default
``tau = tau_rel * pooled standard deviation`` (``tau_rel`` 0.25). For rates the variance uses
``p~ = (k + 1) / (n + 2)`` so that an arm with no events still has a variance.
Calls are treated as independent; heavy users make that optimistic.

Sample-ratio mismatch: a chi-square goodness-of-fit test (1 degree of freedom) of the
number of distinct sticky units (user, else session, else client key) per variant
against the expected candidate share.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

_STD_NORMAL = NormalDist()


@dataclass(frozen=True)
class MetricSpec:
    """A metric's shape and direction."""

    name: str
    kind: Literal["rate", "mean"]
    higher_is_better: bool


METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        MetricSpec("thumbs_up_rate", "rate", True),
        MetricSpec("thumbs_down_rate", "rate", False),
        MetricSpec("regeneration_rate", "rate", False),
        MetricSpec("error_rate", "rate", False),
        MetricSpec("flag_rate", "rate", False),
        MetricSpec("rating", "mean", True),
        MetricSpec("latency_ms", "mean", False),
        MetricSpec("cost_usd", "mean", False),
    )
}
"""Built-in metrics; custom metrics are added per report from the events."""


class OutcomesError(Exception):
    """The outcome statistics cannot be computed as asked."""


# -- pure statistics ---------------------------------------------------------------------
@dataclass(frozen=True)
class MetricStats:
    """Sufficient statistics of one metric in one arm: ``n``, ``mean``, per-observation ``var``."""

    n: int
    mean: float
    var: float
    successes: int | None = None
    """For rates: the count behind ``mean``."""

    @classmethod
    def rate(cls, k: int, n: int) -> MetricStats:
        """A proportion ``k / n``; the variance uses ``(k + 1) / (n + 2)`` (never zero)."""
        if n <= 0:
            return cls(0, 0.0, 0.25, 0)
        smoothed = (k + 1) / (n + 2)
        return cls(n, k / n, smoothed * (1 - smoothed), k)

    @classmethod
    def from_values(cls, n: int, mean: float | None, var: float | None) -> MetricStats:
        return cls(n, float(mean or 0.0), float(var or 0.0) if n > 1 else 0.0)


@dataclass
class ArmStats:
    """One variant's outcomes over a period."""

    variant: str
    calls: int = 0
    units: int = 0
    metrics: dict[str, MetricStats] = field(default_factory=dict)
    latency_p50: float | None = None
    latency_p95: float | None = None

    @property
    def cost_per_1k(self) -> float | None:
        cost = self.metrics.get("cost_usd")
        return cost.mean * 1000 if cost and cost.n else None


@dataclass(frozen=True)
class Comparison:
    """Candidate minus baseline for one metric."""

    metric: str
    diff: float
    variance: float
    tau: float
    p_value: float
    """Two-sided always-valid p-value (mSPRT) for "no difference"."""
    ci: tuple[float, float]
    """Always-valid confidence sequence at the report's alpha."""
    higher_is_better: bool
    n_baseline: int
    n_candidate: int
    alpha: float = 0.05

    @property
    def verdict(self) -> str:
        if self.p_value >= self.alpha or self.diff == 0:
            return "no detectable difference"
        return "better" if (self.diff > 0) == self.higher_is_better else "worse"


def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k / n``; ``(0, 1)`` when ``n == 0``."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise OutcomesError(f"a proportion needs 0 <= k <= n (k={k}, n={n})")
    z = _STD_NORMAL.inv_cdf(1 - (1 - confidence) / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the ends, not 1e-17 of float noise
    high = 1.0 if k == n else min(1.0, centre + half)
    return low, high


def msprt_log_lr(
    estimate: float,
    variance: float,
    tau: float,
    *,
    theta0: float = 0.0,
    alternative: Literal["two-sided", "greater", "less"] = "two-sided",
) -> float:
    """Log of the normal-mixture likelihood ratio (see the module docstring)."""
    y = estimate - theta0
    if variance <= 0 or tau <= 0:
        towards = {"two-sided": y != 0, "greater": y > 0, "less": y < 0}[alternative]
        return math.inf if variance <= 0 and towards else 0.0
    t2 = tau * tau
    log_lr = 0.5 * math.log(variance / (variance + t2)) + t2 * y * y / (2 * variance * (variance + t2))
    if alternative == "two-sided":
        return log_lr
    if alternative == "less":
        y = -y
    phi = normal_cdf(y * tau / math.sqrt(variance * (variance + t2)))
    return -math.inf if phi <= 0 else math.log(2.0) + log_lr + math.log(phi)


def msprt_p_value(
    estimate: float,
    variance: float,
    tau: float,
    *,
    theta0: float = 0.0,
    alternative: Literal["two-sided", "greater", "less"] = "two-sided",
) -> float:
    """Always-valid p-value ``min(1, 1 / Lambda)`` of the mSPRT at the current look."""
    log_lr = msprt_log_lr(estimate, variance, tau, theta0=theta0, alternative=alternative)
    return 1.0 if log_lr <= 0 else math.exp(-log_lr)


def confidence_sequence(
    estimate: float, variance: float, tau: float, alpha: float = 0.05
) -> tuple[float, float]:
    """Always-valid ``1 - alpha`` confidence interval for the difference (normal mixture)."""
    if variance <= 0 or tau <= 0:
        return estimate, estimate
    t2 = tau * tau
    half = math.sqrt(
        variance * (variance + t2) / t2 * (2 * math.log(1 / alpha) + math.log((variance + t2) / variance))
    )
    return estimate - half, estimate + half


def srm_check(n_baseline: int, n_candidate: int, expected_share: float) -> tuple[float, float]:
    """Chi-square statistic and p-value of the split against ``expected_share`` (candidate, 0-1)."""
    if not 0 < expected_share < 1:
        raise OutcomesError(
            f"expected candidate share must be strictly between 0 and 1, got {expected_share}"
        )
    total = n_baseline + n_candidate
    if total == 0:
        return 0.0, 1.0
    exp_c = total * expected_share
    exp_b = total - exp_c
    chi2 = (n_candidate - exp_c) ** 2 / exp_c + (n_baseline - exp_b) ** 2 / exp_b
    return chi2, math.erfc(math.sqrt(chi2 / 2))  # survival function of chi-square with 1 df


def diff_and_variance(baseline: MetricStats, candidate: MetricStats) -> tuple[float, float]:
    """Candidate minus baseline and the variance of that difference."""
    diff = candidate.mean - baseline.mean
    variance = candidate.var / max(candidate.n, 1) + baseline.var / max(baseline.n, 1)
    return diff, variance


def default_tau(baseline: MetricStats, candidate: MetricStats, tau_rel: float = 0.25) -> float:
    """``tau_rel`` times the pooled standard deviation (the mixing scale when none is given)."""
    n = baseline.n + candidate.n
    pooled = (baseline.var * baseline.n + candidate.var * candidate.n) / n if n else 0.0
    return tau_rel * math.sqrt(pooled) if pooled > 0 else tau_rel


def compare_metric(
    name: str,
    baseline: MetricStats,
    candidate: MetricStats,
    *,
    higher_is_better: bool,
    alpha: float = 0.05,
    tau: float | None = None,
    tau_rel: float = 0.25,
) -> Comparison:
    diff, variance = diff_and_variance(baseline, candidate)
    tau_ = tau if tau is not None else default_tau(baseline, candidate, tau_rel)
    if baseline.n == 0 or candidate.n == 0:
        return Comparison(
            name,
            diff,
            variance,
            tau_,
            1.0,
            (-math.inf, math.inf),
            higher_is_better,
            baseline.n,
            candidate.n,
            alpha,
        )
    return Comparison(
        metric=name,
        diff=diff,
        variance=variance,
        tau=tau_,
        p_value=msprt_p_value(diff, variance, tau_),
        ci=confidence_sequence(diff, variance, tau_, alpha),
        higher_is_better=higher_is_better,
        n_baseline=baseline.n,
        n_candidate=candidate.n,
        alpha=alpha,
    )


def compare_arms(
    baseline: ArmStats,
    candidate: ArmStats,
    *,
    specs: dict[str, MetricSpec] | None = None,
    alpha: float = 0.05,
    tau_rel: float = 0.25,
) -> list[Comparison]:
    """Candidate-minus-baseline comparisons for every metric both arms have."""
    specs = specs or METRICS
    out = []
    for name, spec in specs.items():
        b, c = baseline.metrics.get(name), candidate.metrics.get(name)
        if b is not None and c is not None and b.n > 0 and c.n > 0:
            out.append(
                compare_metric(
                    name,
                    b,
                    c,
                    higher_is_better=spec.higher_is_better,
                    alpha=alpha,
                    tau_rel=tau_rel,
                )
            )
    return out


# -- the log query -----------------------------------------------------------------------
_DAY_US = 86_400_000_000

_CALLS_CTE = """
c AS (
  SELECT call_id, response_id, variant, epoch_us(ts) // 86400000000 AS dayn,
         coalesce("user", session_id, client_key, call_id) AS unit,
         (coalesce(status, 200) >= 400 OR error_type IS NOT NULL) AS is_error,
         latency_ms, cost_usd
  FROM calls
  WHERE served AND route = $route AND variant IN ('baseline', 'candidate')
    AND epoch_us(ts) >= $lo AND epoch_us(ts) < $hi
),
ev AS (
  SELECT c.call_id, c.variant, c.dayn, e.ts, e.kind, e.value, e.value_num, e.data
  FROM user_events e JOIN c ON e.call_id = c.call_id
  UNION ALL
  SELECT c.call_id, c.variant, c.dayn, e.ts, e.kind, e.value, e.value_num, e.data
  FROM user_events e JOIN c ON e.call_id = c.response_id AND c.response_id <> c.call_id
)
"""

_ARMS_SQL = (
    "WITH"
    + _CALLS_CTE
    + """,
o AS (
  SELECT call_id,
         arg_max(value, ts) FILTER (WHERE kind = 'thumbs') AS thumb,
         avg(value_num) FILTER (WHERE kind = 'rating') AS rating,
         bool_or(kind = 'regeneration') AS regenerated,
         bool_or(kind = 'flag') AS flagged
  FROM ev GROUP BY call_id
)
SELECT {day} AS dayn, c.variant,
       count(*) AS calls, count(DISTINCT unit) AS units,
       count(*) FILTER (WHERE thumb = 'up') AS thumbs_up,
       count(*) FILTER (WHERE thumb = 'down') AS thumbs_down,
       count(*) FILTER (WHERE regenerated) AS regenerated,
       count(*) FILTER (WHERE flagged) AS flagged,
       count(*) FILTER (WHERE is_error) AS errors,
       count(rating) AS n_rating, avg(rating) AS rating_mean, var_samp(rating) AS rating_var,
       count(latency_ms) AS n_latency, avg(latency_ms) AS latency_mean, var_samp(latency_ms) AS latency_var,
       quantile_cont(latency_ms, 0.5) AS latency_p50, quantile_cont(latency_ms, 0.95) AS latency_p95,
       count(cost_usd) AS n_cost, avg(cost_usd) AS cost_mean, var_samp(cost_usd) AS cost_var
FROM c LEFT JOIN o USING (call_id)
GROUP BY ALL ORDER BY ALL
"""
)

_CUSTOM_SQL = (
    "WITH"
    + _CALLS_CTE
    + """,
per_call AS (
  SELECT {day} AS dayn, variant, kind, call_id, avg(value_num) AS v,
         any_value(try_cast(json_extract(data, '$.higher_is_better') AS BOOLEAN)) AS hib
  FROM ev
  WHERE kind NOT IN ('thumbs', 'rating', 'choice', 'flag', 'regeneration', 'relabel', 'exclude')
    AND value_num IS NOT NULL
  GROUP BY ALL
)
SELECT dayn, variant, kind, count(*) AS n, avg(v) AS mean, var_samp(v) AS var,
       bool_and(coalesce(hib, true)) AS hib
FROM per_call GROUP BY ALL ORDER BY ALL
"""
)


def query_arm_stats(
    store: Any,
    route: str,
    since: dt.datetime | float,
    until: dt.datetime | float | None = None,
    *,
    by_day: bool = False,
) -> tuple[dict[str | None, dict[str, ArmStats]], dict[str, MetricSpec]]:
    """Per-variant `ArmStats` of a route's served calls in ``[since, until)``.

    Returns ``({day or None: {variant: ArmStats}}, specs)`` where ``specs`` is `METRICS`
    plus the custom metrics found. ``store`` is a `gateway.store.LogStore`.
    """
    params = {"route": route, "lo": _epoch_us(since), "hi": _epoch_us(until) if until is not None else 2**62}
    day_expr = "dayn" if by_day else "NULL::BIGINT"
    out: dict[str | None, dict[str, ArmStats]] = {}
    for r in store.sql(_ARMS_SQL.replace("{day}", "c." + day_expr if by_day else day_expr), params):
        arm = ArmStats(
            variant=r["variant"],
            calls=r["calls"],
            units=r["units"],
            latency_p50=r["latency_p50"],
            latency_p95=r["latency_p95"],
        )
        n = r["calls"]
        arm.metrics = {
            "thumbs_up_rate": MetricStats.rate(r["thumbs_up"], n),
            "thumbs_down_rate": MetricStats.rate(r["thumbs_down"], n),
            "regeneration_rate": MetricStats.rate(r["regenerated"], n),
            "error_rate": MetricStats.rate(r["errors"], n),
            "flag_rate": MetricStats.rate(r["flagged"], n),
            "rating": MetricStats.from_values(r["n_rating"], r["rating_mean"], r["rating_var"]),
            "latency_ms": MetricStats.from_values(r["n_latency"], r["latency_mean"], r["latency_var"]),
            "cost_usd": MetricStats.from_values(r["n_cost"], r["cost_mean"], r["cost_var"]),
        }
        out.setdefault(_day(r["dayn"]), {})[r["variant"]] = arm
    specs = dict(METRICS)
    for r in store.sql(_CUSTOM_SQL.replace("{day}", day_expr), params):
        if r["kind"] in METRICS:
            continue
        specs.setdefault(r["kind"], MetricSpec(r["kind"], "mean", bool(r["hib"])))
        arms = out.get(_day(r["dayn"]), {})
        if r["variant"] in arms:
            arms[r["variant"]].metrics[r["kind"]] = MetricStats.from_values(r["n"], r["mean"], r["var"])
    return out, specs


def outcomes_report(
    store: Any,
    route: str,
    since: dt.datetime | float,
    until: dt.datetime | float | None = None,
    *,
    by_day: bool = False,
    expected_share: float | None = None,
    alpha: float = 0.05,
    tau_rel: float = 0.25,
) -> dict[str, Any]:
    """The ``shadowtune eval outcomes`` report as JSON-ready data (one period per day with ``by_day``)."""
    groups, specs = query_arm_stats(store, route, since, until, by_day=by_day)
    periods = []
    for day in sorted(groups, key=lambda d: d or ""):
        arms = groups[day]
        period: dict[str, Any] = {
            "day": day,
            "variants": {v: arm_summary(a, specs, alpha) for v, a in arms.items()},
        }
        if "baseline" in arms and "candidate" in arms:
            comps = compare_arms(
                arms["baseline"], arms["candidate"], specs=specs, alpha=alpha, tau_rel=tau_rel
            )
            period["differences"] = [comparison_summary(c) for c in comps]
        if expected_share is not None:
            b = arms.get("baseline", ArmStats("baseline")).units
            c = arms.get("candidate", ArmStats("candidate")).units
            chi2, p = srm_check(b, c, expected_share)
            period["srm"] = {
                "expected_share": expected_share,
                "observed_share": c / (b + c) if b + c else None,
                "units": {"baseline": b, "candidate": c},
                "chi2": chi2,
                "p_value": p,
                "mismatch": p < 0.001,
            }
        periods.append(period)
    return {
        "route": route,
        "since": _iso(since),
        "until": _iso(until) if until is not None else None,
        "alpha": alpha,
        "periods": periods,
    }


def arm_summary(arm: ArmStats, specs: dict[str, MetricSpec], alpha: float = 0.05) -> dict[str, Any]:
    out: dict[str, Any] = {"calls": arm.calls, "units": arm.units}
    for name, m in arm.metrics.items():
        spec = specs.get(name)
        if spec is None:
            continue
        if spec.kind == "rate":
            lo, hi = wilson_interval(m.successes or 0, m.n, 1 - alpha)
            out[name] = {"value": m.mean if m.n else None, "count": m.successes, "n": m.n, "ci": [lo, hi]}
        else:
            half = _STD_NORMAL.inv_cdf(1 - alpha / 2) * math.sqrt(m.var / m.n) if m.n > 1 else None
            ci = [m.mean - half, m.mean + half] if half is not None else None
            out[name] = {"value": m.mean if m.n else None, "n": m.n, "ci": ci}
    out["latency_p50_ms"] = arm.latency_p50
    out["latency_p95_ms"] = arm.latency_p95
    out["cost_per_1k_calls_usd"] = arm.cost_per_1k
    return out


def comparison_summary(c: Comparison) -> dict[str, Any]:
    return {
        "metric": c.metric,
        "diff": c.diff,
        "ci": [x if math.isfinite(x) else None for x in c.ci],
        "p_value": c.p_value,
        "tau": c.tau,
        "higher_is_better": c.higher_is_better,
        "verdict": c.verdict,
    }


def _day(dayn: int | None) -> str | None:
    if dayn is None:
        return None
    return (dt.date(1970, 1, 1) + dt.timedelta(days=int(dayn))).isoformat()


def _epoch_us(value: dt.datetime | float) -> int:
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return int(value.timestamp() * 1_000_000)
    return int(value * 1_000_000)


def _iso(value: dt.datetime | float) -> str:
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromtimestamp(value, tz=dt.UTC)
    return value.isoformat()
