"""Slow evals: per-variant outcome rates from the call log, with honest statistics.

Three parts, kept apart so the statistics can be tested and simulated without a log:

* pure statistics: `wilson_interval`, `msprt_p_value`, `confidence_sequence`, `srm_check`;
  the unit-level, ramp-aware combination lives in `evals.strata`;
* the log query: `evals.outcomes_query` (per-unit sums per route-state version and arm);
* `outcomes_report`, which the CLI prints.

Metrics (``METRICS``): per served call, ``thumbs_up_rate`` / ``thumbs_down_rate`` (the
latest thumb on the call), ``regeneration_rate``, ``error_rate`` (HTTP status >= 400 or
an error type), ``flag_rate``; means of ``rating`` (over rated calls), ``latency_ms`` and
``cost_usd``; and the mean of each custom metric found in the events. Events are read from
``user_events``: the users' own signals, one per (call, kind, poster), reviewers' kept out.

**Units and periods.** The unit of analysis is the route's sticky key (the split is per
user, not per call): rates and their variances come from per-unit sums (delta method).
Arms are compared only within one route-state version (constant share, candidate and
mode), and versions are combined with inverse-variance weights; calls served while only
one arm was (before the canary, in ``off``, ``shadow`` or ``primary`` mode) are listed
as excluded, never compared. See `evals.strata`.

**Sequential test** (mSPRT, Johari, Pekelis & Walsh, "Always valid inference", 2017).
With a difference estimate ``x`` = candidate - baseline, its variance ``V``, the null
value ``theta0`` and a normal mixing distribution ``theta - theta0 ~ N(0, tau^2)`` the
mixture likelihood ratio is::

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 (x - theta0)^2 / (2 V (V + tau^2)))

and ``p = min(1, 1 / Lambda)`` is an always-valid p-value: under the null, the chance
that ``Lambda`` ever reaches ``1/alpha`` over any number of looks is at most ``alpha``
(Ville's inequality), so checking every hour does not inflate false alarms. The
one-sided version mixes over ``theta > theta0`` only (a half-normal), which gives::

    Lambda_1 = 2 * Lambda * Phi(y tau / sqrt(V (V + tau^2))),   y = x - theta0

and stays valid for the composite null ``theta <= theta0`` (used for non-inferiority
and for "significantly worse"). Inverting ``Lambda < 1/alpha`` gives the always-valid
confidence sequence ``x ± sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2)/V)))``.

``tau`` is the effect the test is tuned to, and it is **fixed**: the metric's declared
minimum detectable effect (`DEFAULT_MDE`, ``--mde metric=value``, or ``"mde"`` in a custom
metric's event data), never re-estimated from the data at each look. A custom metric
without a declared effect gets an estimate and no test. The report's p-values are
**Holm-adjusted across its metrics** (per version, and for the combination), so the
chance that any of the ~8 metrics shows a false difference stays below ``alpha``.

Sample-ratio mismatch: a chi-square goodness-of-fit test (1 degree of freedom) of the
number of distinct units per variant against the expected candidate share, on every
compared version (each against its own share, from the route's audit history).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from evals.online.outcomes_query import Cells, PeriodInfo, query_cells
from evals.online.split_checks import route_history, srm_by_version, version_shares
from evals.online.strata import Cell, Evidence, holm, normal_cdf, pooled_ratio, stratified_difference
from gateway.durations import epoch_us

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

DEFAULT_MDE: dict[str, float] = {
    "thumbs_up_rate": 0.02,
    "thumbs_down_rate": 0.02,
    "regeneration_rate": 0.02,
    "error_rate": 0.01,
    "flag_rate": 0.01,
    "rating": 0.2,
    "latency_ms": 100.0,
    "cost_usd": 0.0005,
}
"""Declared minimum detectable effects (the mSPRT's fixed mixing scale), in each metric's units."""


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

    def cell(self, period: str, arm: str) -> Cell:
        """These statistics as one period's `evals.strata.Cell`, each observation its own unit."""
        if self.successes is not None:
            return Cell.per_call(period, arm, self.successes, self.n)
        y = self.n * self.mean
        yy = (self.n - 1) * self.var + self.n * self.mean * self.mean if self.n > 1 else y * self.mean
        return Cell(period, arm, self.n, y, self.n, yy, self.n, y)


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
    """Candidate minus baseline for one metric (combined over the compared periods)."""

    metric: str
    diff: float
    variance: float
    tau: float | None
    """The mixing scale: the metric's declared minimum detectable effect; None: no test."""
    p_value: float
    """Two-sided always-valid p-value (mSPRT) for "no difference"; 1 without a test."""
    ci: tuple[float, float]
    """Always-valid confidence sequence at the report's alpha."""
    higher_is_better: bool
    n_baseline: float
    n_candidate: float
    alpha: float = 0.05
    p_adjusted: float | None = None
    """Holm-adjusted across the report's metrics; the verdict uses it."""
    units_baseline: float = 0
    units_candidate: float = 0

    @property
    def verdict(self) -> str:
        if self.tau is None:
            return "no test (no minimum detectable effect declared)"
        p = self.p_value if self.p_adjusted is None else self.p_adjusted
        if p >= self.alpha or self.diff == 0:
            return "no detectable difference"
        return "better" if (self.diff > 0) == self.higher_is_better else "worse"


def wilson_interval(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``k / n``; ``(0, 1)`` when ``n == 0``.

    ``k`` and ``n`` may be effective (non-integer) counts: a unit-level interval is the
    Wilson interval at ``n / design effect``.
    """
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


# -- comparisons -------------------------------------------------------------------------
def compare_evidence(
    name: str,
    ev: Evidence,
    *,
    higher_is_better: bool,
    tau: float | None,
    alpha: float = 0.05,
) -> Comparison:
    """The mSPRT comparison of one metric's combined evidence, with a fixed mixing scale ``tau``."""
    diff, variance = float(ev.estimate), float(ev.variance)
    nb, nc = float(ev.n_baseline), float(ev.n_candidate)
    tested = tau is not None and nb > 0 and nc > 0
    return Comparison(
        metric=name,
        diff=diff,
        variance=variance,
        tau=tau,
        p_value=msprt_p_value(diff, variance, tau) if tested and tau else 1.0,
        ci=confidence_sequence(diff, variance, tau, alpha) if tested and tau else (-math.inf, math.inf),
        higher_is_better=higher_is_better,
        n_baseline=nb,
        n_candidate=nc,
        alpha=alpha,
        units_baseline=float(ev.units_baseline),
        units_candidate=float(ev.units_candidate),
    )


def compare_cells(
    cells: Cells,
    specs: dict[str, MetricSpec],
    mde: dict[str, float | None],
    *,
    alpha: float = 0.05,
    periods: set[str] | None = None,
) -> list[Comparison]:
    """Every metric's combined comparison over ``periods`` (default: all), Holm-adjusted together."""
    out = []
    for name, spec in specs.items():
        metric_cells = [c for c in cells.cells.get(name, []) if periods is None or c.period in periods]
        ev = stratified_difference(metric_cells, cells.cross.get(name), rate=spec.kind == "rate")
        if float(ev.n_baseline) > 0 and float(ev.n_candidate) > 0:
            out.append(
                compare_evidence(
                    name, ev, higher_is_better=spec.higher_is_better, tau=mde.get(name), alpha=alpha
                )
            )
    tested = [i for i, c in enumerate(out) if c.tau is not None]
    adjusted = holm([out[i].p_value for i in tested])
    for i, p in zip(tested, adjusted, strict=True):
        out[i] = _replace_p(out[i], p)
    return out


def _replace_p(c: Comparison, p: float) -> Comparison:
    from dataclasses import replace

    return replace(c, p_adjusted=p)


# -- the report --------------------------------------------------------------------------
def outcomes_report(
    store: Any,
    route: str,
    since: dt.datetime | float,
    until: dt.datetime | float | None = None,
    *,
    by_day: bool = False,
    expected_share: float | None = None,
    alpha: float = 0.05,
    sticky_key: str | None = "user",
    mde: dict[str, float] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``shadowtune eval outcomes`` report as JSON-ready data (one period per day with ``by_day``).

    Each period (the window, or a day) combines its route-state versions; ``versions`` has
    each one apart, and ``excluded`` the versions where only one arm was served.
    The split (sample-ratio) check runs on every compared version, each against the share the
    route's audit ``history`` gives it; ``expected_share`` (0-1) stands in for the latest
    compared version's share when the history does not say.
    """
    groups, custom = query_cells(store, route, since, until, sticky_key=sticky_key, by_day=by_day)
    specs = dict(METRICS)
    mdes: dict[str, float | None] = dict(DEFAULT_MDE)
    for name, (hib, declared) in custom.items():
        if name not in METRICS:
            specs[name] = MetricSpec(name, "mean", hib)
            mdes[name] = declared if declared and declared > 0 else None
    for name, value in (mde or {}).items():
        if value <= 0:
            raise OutcomesError(f"the minimum detectable effect of {name} must be > 0, got {value}")
        mdes[name] = value
    periods = []
    unkeyed = 0
    shares = version_shares(history or [], route)
    for key in sorted(groups, key=lambda d: d or ""):
        cells = groups[key]
        unkeyed += cells.unkeyed_calls
        periods.append(_period_report(key, cells, specs, mdes, alpha, expected_share, shares))
    notes = []
    column = sticky_key or "user"
    if column not in ("user", "session", "client_key"):
        notes.append(f"sticky key {column!r} is not in the log: every call is its own unit")
    elif unkeyed:
        notes.append(f"{unkeyed} calls without a {column}: each is its own unit (they were split at random)")
    if any(p.startswith("mode:") for g in groups.values() for p in g.periods):
        notes.append("calls without a route_version: their periods may mix shares")
    return {
        "route": route,
        "since": _iso(since),
        "until": _iso(until) if until is not None else None,
        "alpha": alpha,
        "unit": column,
        "unkeyed_calls": unkeyed,
        "mde": mdes,
        "notes": notes,
        "periods": periods,
    }


def _period_report(
    day: str | None,
    cells: Cells,
    specs: dict[str, MetricSpec],
    mdes: dict[str, float | None],
    alpha: float,
    expected_share: float | None,
    shares: dict[int, float] | None = None,
) -> dict[str, Any]:
    infos = sorted(cells.periods.values(), key=lambda p: p.first_ts)
    compared = {p.period for p in infos if p.compared}
    period: dict[str, Any] = {"day": day, "compared_versions": len(compared)}
    period["variants"] = {
        arm: arm_summary(cells, specs, arm, alpha, compared or {p.period for p in infos})
        for arm in ("baseline", "candidate")
        if any(arm in p.arms for p in infos)
    }
    if compared:
        period["differences"] = [
            comparison_summary(c) for c in compare_cells(cells, specs, mdes, alpha=alpha)
        ]
    period["versions"] = [_version_report(p, cells, specs, mdes, alpha) for p in infos if p.compared]
    period["reviewer"] = reviewer_summary(cells, compared or {p.period for p in infos})
    period["excluded"] = [
        {
            "version": p.route_version,
            "mode": p.mode,
            "calls": {v: a.calls for v, a in p.arms.items()},
            "from": _iso(p.first_ts),
            "to": _iso(p.last_ts),
            "reason": f"only {', '.join(p.arms)} served (mode {p.mode})",
        }
        for p in infos
        if not p.compared
    ]
    srm = srm_by_version(infos, expected_share, shares or {})
    if srm:
        worst = min(srm, key=lambda x: x["p_value"])
        period["srm"] = {**worst, "mismatch": any(x["mismatch"] for x in srm), "versions": srm}
    return period


def _version_report(
    info: PeriodInfo, cells: Cells, specs: dict[str, MetricSpec], mdes: dict[str, float | None], alpha: float
) -> dict[str, Any]:
    only = {info.period}
    comps = compare_cells(cells, specs, mdes, alpha=alpha, periods=only)
    return {
        "version": info.route_version,
        "mode": info.mode,
        "from": _iso(info.first_ts),
        "to": _iso(info.last_ts),
        "calls": {v: a.calls for v, a in info.arms.items()},
        "units": {v: a.units for v, a in info.arms.items()},
        "observed_share": info.arms["candidate"].units
        / max(1, info.arms["candidate"].units + info.arms["baseline"].units),
        "variants": {v: arm_summary(cells, specs, v, alpha, only) for v in info.arms},
        "differences": [comparison_summary(c) for c in comps],
    }


def reviewer_summary(cells: Cells, periods: set[str]) -> dict[str, dict[str, Any]]:
    """Per variant, the reviewers' thumbs and choices on its calls in ``periods`` (never in the rates)."""
    out: dict[str, dict[str, Any]] = {}
    for (period, variant), counts in sorted(cells.reviewer.items()):
        if period not in periods:
            continue
        v = out.setdefault(variant, {"calls": 0, "thumbs_up": 0, "thumbs_down": 0, "choices": {}})
        v["calls"] += counts.get("calls", 0)
        v["thumbs_up"] += counts.get("thumbs:up", 0)
        v["thumbs_down"] += counts.get("thumbs:down", 0)
        for name, n in counts.items():
            if name.startswith("choice:"):
                key = name.removeprefix("choice:")
                v["choices"][key] = v["choices"].get(key, 0) + n
    return out


def arm_summary(
    cells: Cells, specs: dict[str, MetricSpec], arm: str, alpha: float, periods: set[str]
) -> dict[str, Any]:
    """One variant's rates and means over ``periods``, with unit-level intervals."""
    arms = [p.arms[arm] for p in cells.periods.values() if p.period in periods and arm in p.arms]
    out: dict[str, Any] = {
        "calls": sum(a.calls for a in arms),
        "units": sum(a.units for a in arms),
        "unkeyed_calls": sum(a.unkeyed for a in arms),
    }
    z = _STD_NORMAL.inv_cdf(1 - alpha / 2)
    for name, spec in specs.items():
        mine = [c for c in cells.cells.get(name, []) if c.arm == arm and c.period in periods]
        if not mine:
            continue
        mean, var, _ = pooled_ratio(mine, cells.cross.get(name), arm=arm)
        n = sum(c.n for c in mine)
        if spec.kind == "rate":
            k = sum(c.y for c in mine)
            binomial = mean * (1 - mean) / n if n else 0.0
            n_eff = n * binomial / var if var > 0 and binomial > 0 else n
            lo, hi = wilson_interval(mean * n_eff, n_eff, 1 - alpha)
            deff = var / binomial if binomial > 0 else 1.0
            out[name] = {
                "value": mean if n else None,
                "count": round(k),
                "n": int(n),
                "ci": [lo, hi],
                "design_effect": deff,
            }
        else:
            half = z * math.sqrt(var) if n > 1 else None
            ci = [mean - half, mean + half] if half is not None else None
            out[name] = {"value": mean if n else None, "n": int(n), "ci": ci}
    if len(arms) == 1:
        out["latency_p50_ms"], out["latency_p95_ms"] = arms[0].latency_p50, arms[0].latency_p95
    else:
        out["latency_p50_ms"], out["latency_p95_ms"] = cells.latency.get(arm, (None, None))
    cost = out.get("cost_usd")
    out["cost_per_1k_calls_usd"] = cost["value"] * 1000 if cost and cost["value"] is not None else None
    return out


def comparison_summary(c: Comparison) -> dict[str, Any]:
    return {
        "metric": c.metric,
        "diff": c.diff,
        "ci": [x if math.isfinite(x) else None for x in c.ci],
        "p_value": c.p_value,
        "p_holm": c.p_adjusted,
        "tau": c.tau,
        "higher_is_better": c.higher_is_better,
        "n": {"baseline": c.n_baseline, "candidate": c.n_candidate},
        "units": {"baseline": c.units_baseline, "candidate": c.units_candidate},
        "verdict": c.verdict,
    }


def _iso(value: dt.datetime | float) -> str:
    if not isinstance(value, dt.datetime):
        value = dt.datetime.fromtimestamp(value, tz=dt.UTC)
    return value.isoformat()


__all__ = [
    "DEFAULT_MDE",
    "METRICS",
    "ArmStats",
    "Cell",
    "Comparison",
    "MetricSpec",
    "MetricStats",
    "OutcomesError",
    "compare_cells",
    "compare_evidence",
    "confidence_sequence",
    "epoch_us",
    "msprt_log_lr",
    "msprt_p_value",
    "normal_cdf",
    "outcomes_report",
    "route_history",
    "srm_check",
    "version_shares",
    "wilson_interval",
]
