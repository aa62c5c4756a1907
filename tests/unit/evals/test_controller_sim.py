"""The canary controller's pure decision, simulated on synthetic outcome streams.

Each simulated check (an hour) brings ``traffic`` served calls, split by the current share;
calls fail with an error rate, get a thumb down, and take a normally distributed latency.
The controller sees each ramp step as its own period and combines the periods' differences
(`evals.online.strata`), as it does in production; statistics are never pooled across shares.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import pytest

from evals.online.controller import CanaryPolicy, Guardrail, Observation, decide, forecast
from evals.online.outcomes import METRICS, ArmStats, MetricStats, srm_check
from evals.online.strata import stratified_difference


@dataclass
class Arm:
    errors: float
    thumbs_down: float
    latency: float
    latency_sd: float = 300.0


@dataclass
class _Acc:
    n: int = 0
    errors: int = 0
    down: int = 0
    lat_mean: float = 0.0
    lat_ss: float = 0.0  # sum of squared deviations

    def add(self, rng, arm: Arm, m: int) -> None:
        if m == 0:
            return
        self.errors += int(rng.binomial(m, arm.errors))
        self.down += int(rng.binomial(m, arm.thumbs_down))
        mean = rng.normal(
            arm.latency, arm.latency_sd / math.sqrt(m)
        )  # exact sufficient statistics of m normals
        ss = arm.latency_sd**2 * rng.chisquare(m - 1) if m > 1 else 0.0
        n = self.n + m
        delta = mean - self.lat_mean
        self.lat_ss += ss + delta * delta * self.n * m / n
        self.lat_mean += delta * m / n
        self.n = n

    def stats(self, variant: str) -> ArmStats:
        var = self.lat_ss / (self.n - 1) if self.n > 1 else 0.0
        return ArmStats(
            variant,
            calls=self.n,
            units=self.n,
            metrics={
                "error_rate": MetricStats.rate(self.errors, self.n),
                "thumbs_down_rate": MetricStats.rate(self.down, self.n),
                "latency_ms": MetricStats(self.n, self.lat_mean, var),
            },
        )


POLICY = CanaryPolicy(
    guardrails=[
        Guardrail(metric="error_rate", margin=0.02),
        Guardrail(metric="thumbs_down_rate", margin=0.03),
        Guardrail(metric="latency_ms", margin=100.0),
    ],
    alpha=0.05,
    min_samples=300,
    min_step_samples=100,
    rollback_min_samples=50,
    steps=[1, 5, 25, 50, 100],
)
BASE = Arm(errors=0.02, thumbs_down=0.10, latency=800.0)


def evidence(steps: dict[float, tuple[_Acc, _Acc]]) -> dict:
    """Per metric, the steps' differences combined (each step a period of constant share)."""
    stats = {s: (b.stats("baseline"), c.stats("candidate")) for s, (b, c) in steps.items()}
    out = {}
    for metric in ("error_rate", "thumbs_down_rate", "latency_ms"):
        cells = []
        for s, (b, c) in stats.items():
            cells += [b.metrics[metric].cell(str(s), "baseline"), c.metrics[metric].cell(str(s), "candidate")]
        out[metric] = stratified_difference(cells, rate=METRICS[metric].kind == "rate")
    return out


def simulate(rng, candidate: Arm, *, policy=POLICY, traffic=4000, max_checks=60):
    """Run one canary; returns (final action, share trajectory, checks used)."""
    share = 1.0
    steps = {share: (_Acc(), _Acc())}
    step_b = step_c = step_checks = 0
    shares = [share]
    for check in range(1, max_checks + 1):
        base, cand = steps[share]
        m_c = int(rng.binomial(traffic, share / 100))
        base.add(rng, BASE, traffic - m_c)
        cand.add(rng, candidate, m_c)
        step_b += traffic - m_c
        step_c += m_c
        step_checks += 1
        srm_p = srm_check(step_b, step_c, share / 100)[1] if share < 100 else None
        obs = Observation(
            "canary",
            share,
            ArmStats("baseline", calls=sum(b.n for b, _ in steps.values())),
            ArmStats("candidate", calls=sum(c.n for _, c in steps.values())),
            (step_b, step_c),
            srm_p,
            evidence=evidence(steps),
            step_age_s=step_checks * 3600.0,
        )
        d = decide(policy, obs)
        if d.action == "rollback":
            return "rollback", shares, check, d
        if d.action == "advance":
            if d.mode_to == "primary":
                return "primary", shares, check, d
            share = d.share_to
            shares.append(share)
            steps[share] = (_Acc(), _Acc())
            step_b = step_c = step_checks = 0
    return "wait", shares, max_checks, d


def test_a_clearly_worse_candidate_is_rolled_back_early():
    rng = np.random.default_rng(11)
    worse = Arm(errors=0.08, thumbs_down=0.10, latency=800.0)  # four times the errors
    outcomes = [simulate(rng, worse) for _ in range(50)]
    assert all(o[0] == "rollback" for o in outcomes)
    assert max(max(o[1]) for o in outcomes) <= 5  # never reaches 25%
    last = outcomes[0][3]
    assert last.mode_to == "shadow" and last.share_to == 0.0
    assert "error_rate" in last.reason and "p_worse" in last.reason


def test_slower_candidate_is_rolled_back_on_latency():
    rng = np.random.default_rng(12)
    result = simulate(rng, Arm(errors=0.02, thumbs_down=0.10, latency=1100.0))
    assert result[0] == "rollback" and "latency_ms" in result[3].reason


def test_an_equal_candidate_advances_through_every_step_to_primary():
    rng = np.random.default_rng(13)
    outcomes = [simulate(rng, BASE) for _ in range(30)]
    promoted = [o for o in outcomes if o[0] == "primary"]
    assert len(promoted) >= 28
    assert all(o[1] == [1, 5, 25, 50] for o in promoted)


def test_a_candidate_worse_than_the_margin_never_advances_past_the_first_steps():
    rng = np.random.default_rng(14)
    # 3 points more thumbs down is exactly at the margin: non-inferiority must not be shown
    outcomes = [
        simulate(rng, Arm(errors=0.02, thumbs_down=0.13, latency=800.0), max_checks=30) for _ in range(30)
    ]
    assert sum(o[0] == "primary" for o in outcomes) <= 2


def test_a_a_false_rollback_rate_stays_within_alpha():
    rng = np.random.default_rng(2024)
    runs = 2000
    start = time.perf_counter()
    results = [simulate(rng, BASE) for _ in range(runs)]
    rollbacks = sum(r[0] == "rollback" for r in results)
    rate = rollbacks / runs
    # binomial standard error of the estimate; the test must fail on a rate clearly above alpha
    se = math.sqrt(POLICY.alpha * (1 - POLICY.alpha) / runs)
    print(
        f"\nA/A: {rollbacks}/{runs} false rollbacks = {rate:.4f} (alpha {POLICY.alpha}); "
        f"promoted {sum(r[0] == 'primary' for r in results)}; {time.perf_counter() - start:.2f}s"
    )
    assert rate <= POLICY.alpha + 2 * se


def test_a_a_false_rollback_rate_with_a_lax_policy_and_long_monitoring():
    """Stress: no minimum before rollback, many looks at a small share, alpha 0.1."""
    policy = POLICY.model_copy(update={"rollback_min_samples": 1, "min_samples": 10**9, "alpha": 0.1})
    rng = np.random.default_rng(7)
    runs = 400
    results = [simulate(rng, BASE, policy=policy, traffic=1000, max_checks=60) for _ in range(runs)]
    rate = sum(r[0] == "rollback" for r in results) / runs
    print(f"\nA/A stress (alpha 0.1, 60 looks at 1%, no minimum): false rollbacks {rate:.4f}")
    assert rate <= 0.1 + 2 * math.sqrt(0.1 * 0.9 / runs)


def test_decision_waits_while_the_split_fails_the_srm_check():
    rng = np.random.default_rng(3)
    acc_b, acc_c = _Acc(), _Acc()
    acc_b.add(rng, BASE, 50_000)
    acc_c.add(rng, BASE, 50_000)
    obs = Observation(
        "canary", 25.0, acc_b.stats("baseline"), acc_c.stats("candidate"), (50_000, 50_000), 1e-9
    )
    d = decide(POLICY, obs)
    assert d.action == "wait" and "sample ratio mismatch" in d.reason
    ok = decide(POLICY, Observation("canary", 25.0, obs.baseline, obs.candidate, (50_000, 50_000), 0.5))
    assert (ok.action, ok.share_to, ok.mode_to) == ("advance", 50.0, "canary")


@pytest.mark.parametrize("mode", ["shadow", "primary", "off"])
def test_nothing_to_do_outside_canary_mode(mode):
    d = decide(POLICY, Observation(mode, 0.0, ArmStats("baseline"), ArmStats("candidate")))
    assert d.action == "idle" and d.share_to == 0.0


def test_ramp_steps():
    assert [POLICY.next_share(s) for s in (1, 5, 10, 25, 50, 100)] == [5, 25, 25, 50, None, None]


def _equal_obs(step_age_s, *, n=50_000, units=None):
    rng = np.random.default_rng(4)
    acc_b, acc_c = _Acc(), _Acc()
    acc_b.add(rng, BASE, n)
    acc_c.add(rng, BASE, n)
    ev = evidence({25.0: (acc_b, acc_c)})
    if units is not None:
        ev = {m: dataclasses.replace(e, effective_units_candidate=units) for m, e in ev.items()}
    return Observation(
        "canary",
        25.0,
        ArmStats("baseline", calls=n),
        ArmStats("candidate", calls=n),
        (n, n),
        0.5,
        evidence=ev,
        step_age_s=step_age_s,
        traffic_per_s=2 * n / 7200,
    )


def test_each_step_is_held_for_its_minimum_dwell_time():
    policy = POLICY.model_copy(update={"min_step_s": 6 * 3600.0})
    early = decide(policy, _equal_obs(3600.0))
    assert early.action == "wait" and "at this step for 3600s, need 21600s" in early.reason
    assert decide(policy, _equal_obs(6 * 3600.0)).action == "advance"
    assert decide(policy, _equal_obs(None)).action == "advance"  # unknown age: the rule is not applied


def test_an_arm_worth_too_few_units_decides_nothing():
    obs = _equal_obs(3600.0, units=3.0)  # e.g. three heavy users carry the candidate arm
    d = decide(POLICY, obs)
    assert d.action == "wait" and all(c.status == "insufficient" for c in d.checks)
    assert "(3 effective)" in d.reason


def test_forecast_says_how_many_calls_and_how_long_a_decision_takes():
    rng = np.random.default_rng(21)
    N0 = 350
    acc_b, acc_c = _Acc(), _Acc()
    acc_b.add(rng, BASE, N0)
    acc_c.add(rng, BASE, N0)
    obs = Observation(
        "canary",
        50.0,
        ArmStats("baseline", calls=N0),
        ArmStats("candidate", calls=N0),
        (N0, N0),
        None,
        evidence=evidence({50.0: (acc_b, acc_c)}),
        step_age_s=7200.0,
        traffic_per_s=2 * N0 / 7200,
    )
    assert decide(POLICY, obs).action == "wait"
    fc = forecast(POLICY, obs)
    print(f"\nforecast at {N0} calls per arm: {fc}")
    assert fc["likely"] in ("advance", "rollback") and fc["expected_calls"] > 0
    assert fc["expected_seconds"] == pytest.approx(fc["expected_calls"] / (2 * N0 / 7200))
    # check the forecast by simulation: the same traffic, that many more calls, then decide
    more = int(fc["expected_calls"] * 1.3) // 2 + 1
    acc_b.add(rng, BASE, more)
    acc_c.add(rng, BASE, more)
    later = Observation(
        "canary",
        50.0,
        ArmStats("baseline", calls=N0 + more),
        ArmStats("candidate", calls=N0 + more),
        (N0 + more, N0 + more),
        None,
        evidence=evidence({50.0: (acc_b, acc_c)}),
        step_age_s=7200.0 + 2 * more / (2 * N0 / 7200),
    )
    assert decide(POLICY, later).action != "wait"
