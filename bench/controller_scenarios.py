"""The controller benchmark's scenarios and the fixed-horizon sample sizes it compares with.

`bench/controller_bench.py` simulates canaries of these scenarios; the fixed horizons are the
calls a one-shot z-test of the same decision needs at 80 % power: per call
(`fixed_horizon_calls`), and with each guardrail's variance times its design effect at that
many calls, without and with the same pre-period covariates as the controller
(`fixed_horizon_clustered`): with sticky users only the latter are valid comparators.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from evals.online.decision import CanaryPolicy

TRAFFIC = 2000
BASE = {"error_rate": 0.01, "thumbs_down_rate": 0.05, "regeneration_rate": 0.03}
METRIC_NAMES = tuple(BASE)
HORIZON = 24 * 14


@dataclass(frozen=True)
class Scenario:
    name: str
    truth: str
    delta: float = 0.0
    """Candidate minus baseline thumbs-down rate."""
    cycle: float = 0.0
    """Amplitude of a daily cycle of the thumbs-down rate."""
    trend: tuple[float, float] | None = None
    """Thumbs-down rate from -> to over the first 48 h."""
    users: int = 0
    """Sticky users (0: independent calls)."""
    volume: str = "lognormal"
    volume_param: float = 1.0
    heterogeneity: float = 2.0
    """Shape of each user's gamma rate multiplier (smaller: more different users)."""
    pre_hours: float = 0.0
    """Hours of pre-canary traffic (every call served by the baseline) whose per-user sums are the
    controller's covariates (CUPED, `CanaryPolicy.pre_period_s`); 0: none."""

    def thumbs_down(self, hour: float) -> float:
        if self.trend is not None:
            lo, hi = self.trend
            return lo + (hi - lo) * min(hour, 48.0) / 48.0
        return BASE["thumbs_down_rate"] + self.cycle * math.sin(2 * math.pi * hour / 24.0)

    def rates(self, hour: float) -> dict[str, tuple[float, float]]:
        """Per metric: (baseline, candidate) rate at ``hour``."""
        td = self.thumbs_down(hour)
        return {
            "error_rate": (BASE["error_rate"],) * 2,
            "thumbs_down_rate": (td, td + self.delta),
            "regeneration_rate": (BASE["regeneration_rate"],) * 2,
        }


SCENARIOS = [
    Scenario("independent", "equal"),
    Scenario("daily_cycle", "equal", cycle=0.02),
    Scenario("trend", "equal", trend=(0.04, 0.08)),
    Scenario(
        "sticky_moderate",
        "equal",
        users=5000,
        volume="lognormal",
        volume_param=1.0,
        heterogeneity=2.0,
        pre_hours=168,
    ),
    Scenario(
        "sticky_heavy",
        "equal",
        users=5000,
        volume="pareto",
        volume_param=1.2,
        heterogeneity=1.0,
        pre_hours=168,
    ),
    Scenario("worse", "worse", delta=0.025),
    Scenario("better", "better", delta=-0.025),
]


def fixed_horizon_calls(s: Scenario, policy: CanaryPolicy, power: float = 0.8) -> float:
    """Calls at the first step's share that the same decision by one-shot z-tests needs (80 % power).

    Worse: the one-sided test at ``alpha / len(guardrails)`` on thumbs-down. Otherwise the
    advance: every guardrail's non-inferiority test at ``alpha`` must reject, so the power is
    the product of the guardrails' powers (independent metrics); solved for the calls.
    """
    pi = policy.steps[0] / 100
    nd = NormalDist()
    tests = []
    for g in policy.guardrails:
        pb = BASE[g.metric]
        pc = pb + (s.delta if g.metric == "thumbs_down_rate" else 0.0)
        var_per_call = pc * (1 - pc) / pi + pb * (1 - pb) / (1 - pi)
        if s.truth == "worse":
            if g.metric == "thumbs_down_rate":
                tests.append((var_per_call, s.delta, policy.alpha / len(policy.guardrails)))
        else:
            tests.append((var_per_call, g.margin + (pb - pc), policy.alpha))

    def joint_power(calls: float) -> float:
        out = 1.0
        for var, effect, alpha in tests:
            out *= nd.cdf(effect / math.sqrt(var / calls) - nd.inv_cdf(1 - alpha))
        return out

    lo, hi = 1.0, 1e9
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if joint_power(mid) < power else (lo, mid)
    return hi


def design_effect(s: Scenario, metric: str, hours: float, *, covariates: bool, reps: int = 4) -> float:
    """The design effect of an arm's rate after ``hours`` at the scenario's traffic: the delta-method
    variance over users (CUPED-adjusted with ``covariates``) over the per-call binomial one.

    By Monte Carlo over populations of the scenario's users (seeded: the same populations for
    every ``hours``); an arm is a random subset of them, so its design effect is the population's.
    """
    if not s.users:
        return 1.0
    rng = np.random.default_rng(99)
    num = den = 0.0
    for _ in range(reps):
        u = s.users
        vol = (
            rng.pareto(s.volume_param, u) + 1.0
            if s.volume == "pareto"
            else rng.lognormal(0, s.volume_param, u)
        )
        lam = TRAFFIC * vol / vol.sum()
        p = np.minimum(
            BASE[metric] * np.minimum(rng.gamma(s.heterogeneity, 1 / s.heterogeneity, u), 0.5 / BASE[metric]),
            1.0,
        )
        n = rng.poisson(lam * hours)
        y = rng.binomial(n, p)
        r = y.sum() / n.sum()
        e = y - r * n
        if covariates and s.pre_hours > 0:
            xn = rng.poisson(lam * s.pre_hours)
            xy = rng.binomial(xn, p)
            x = xy - xy.sum() / xn.sum() * xn
            e = e - (e * x).sum() / (x * x).sum() * x
        num += float((e * e).sum())
        den += float(r * (1 - r) * n.sum())
    return num / den if den else 1.0


def fixed_horizon_clustered(
    s: Scenario, policy: CanaryPolicy, *, covariates: bool, power: float = 0.8
) -> tuple[float | None, float]:
    """`fixed_horizon_calls` with each guardrail's variance times its design effect at that many
    calls (which grows with the calls per user): ``(calls, power)``, or ``(None, the power at
    two years)`` when no sample size reaches ``power`` (users' own rates put a floor under the
    variance that more calls per user do not lower)."""
    if not s.users:
        return fixed_horizon_calls(s, policy, power), power
    pi = policy.steps[0] / 100
    nd = NormalDist()

    def joint(hours: float) -> float:
        out = 1.0
        calls = hours * TRAFFIC
        for g in policy.guardrails:
            pb = BASE[g.metric]
            pc = pb + (s.delta if g.metric == "thumbs_down_rate" else 0.0)
            var = (pc * (1 - pc) / pi + pb * (1 - pb) / (1 - pi)) / calls
            var *= design_effect(s, g.metric, hours, covariates=covariates)
            if s.truth == "worse" and g.metric != "thumbs_down_rate":
                continue
            effect, alpha = (
                (s.delta, policy.alpha / len(policy.guardrails))
                if s.truth == "worse"
                else (
                    g.margin + (pb - pc),
                    policy.alpha,
                )
            )
            out *= nd.cdf(effect / math.sqrt(var) - nd.inv_cdf(1 - alpha))
        return out

    hours = [2.0**i for i in range(15)]  # 1 h .. 2 years
    reach = [h for h in hours if joint(h) >= power]
    if not reach:
        return None, joint(hours[-1])
    hi = reach[0]
    lo = hi / 2
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if joint(mid) >= power else (mid, hi)
    return hi * TRAFFIC, power


def fixed_horizon_simulated(
    s: Scenario,
    policy: CanaryPolicy,
    *,
    power: float = 0.8,
    reps: int = 400,
    seed: int = 99,
    rules: bool = False,
) -> tuple[float | None, float, float]:
    """The clustered fixed-horizon sample size, by simulation with the controller's own estimator.

    Each of ``reps`` populations of the scenario's users (volumes, own rates, a pre-period on
    the baseline) gets the canary's first step: 1 % of the users (their bucket), whose share of
    the calls and effective units vary from one population to the next (with Pareto volumes a
    median 0.73 % of the calls). At ``n`` calls the design tests once:
    `evals.online.strata.stratified_difference` (per-user sums, delta method, CUPED with the
    same covariates), then one-sided z-tests of the same decision at the same level (every
    guardrail's non-inferiority at ``alpha``, or thumbs-down worse at ``alpha / len(guardrails)``).
    Its power is the share of populations in which it decides correctly. With ``rules`` the
    design also keeps the controller's rules: no test while an arm is worth fewer than
    ``min_units`` effective units (by its users' call rates), and such a first step widened after
    the dwell time (whose calls count). Returns ``(calls for 80 %, power reached, share of
    populations widened)``; ``None`` calls when 80 % is not reached within twice the horizon.
    """
    from controller_horizon import simulated_power_curve

    hours, curve, widened = simulated_power_curve(s, policy, reps=reps, seed=seed, rules=rules)
    reach = np.flatnonzero(curve >= power)
    if not len(reach):
        return None, float(curve.max()), widened
    i = int(reach[0])
    if i == 0:
        return float(hours[0] * TRAFFIC), power, widened
    # linear interpolation between the grid points around the crossing
    h0, h1, p0, p1 = hours[i - 1], hours[i], curve[i - 1], curve[i]
    h = h0 + (power - p0) / (p1 - p0) * (h1 - h0) if p1 > p0 else h1
    return float(h * TRAFFIC), power, widened
