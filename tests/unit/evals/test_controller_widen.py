"""A ramp step too small to test is widened, untested: the projected effective units and the rule."""

from __future__ import annotations

import numpy as np
import pytest

from evals.online.decision import CanaryPolicy, Observation, decide
from evals.online.strata import UNBOUNDED, Cell, stratified_difference

POLICY = CanaryPolicy()


def _arm(rng, lam, hours, rate=0.05):
    """Per-unit (Y, N) after ``hours`` of Poisson calls at rates ``lam`` per hour."""
    n = rng.poisson(lam * hours)
    return list(zip(rng.binomial(n, rate), n, strict=True))


def test_projected_units_estimate_where_kish_count_tends():
    rng = np.random.default_rng(5)
    lam = rng.pareto(1.2, 50) + 1.0
    lam = 20 * lam / lam.sum()  # 1 % of 2,000 calls per hour
    plateau = lam.sum() ** 2 / (lam * lam).sum()
    early, projected = [], []
    for _ in range(400):
        cell = Cell.from_values("0", "candidate", _arm(rng, lam, 6.0))
        early.append(float(cell.effective_units))
        projected.append(float(cell.projected_units))
    # Kish's count after six hours is pulled down by the Poisson noise of light users' counts
    assert np.median(early) < 0.9 * plateau
    # the projection removes that part: its median is near the plateau
    assert np.median(projected) == pytest.approx(plateau, rel=0.25)


def test_independent_calls_are_never_projected_small():
    cell = Cell.per_call("0", "candidate", 3, 40)
    assert float(cell.projected_units) == UNBOUNDED and float(cell.effective_units) == 40
    once = Cell.from_values("0", "candidate", [(0, 1)] * 7)  # every unit seen once: no evidence of heavy ones
    assert float(once.projected_units) == UNBOUNDED
    assert float(Cell.per_call("0", "candidate", 0, 0).projected_units) == 0


def _obs(share, age_s, candidate, *, baseline_units=2000):
    rng = np.random.default_rng(9)
    b = Cell.from_values("0", "baseline", _arm(rng, np.full(baseline_units, 1.0), 1.0))
    c = Cell.from_values("0", "candidate", candidate)
    ev = {
        g.metric: stratified_difference([b, c], rate=True) for g in POLICY.guardrails
    }  # the same cells for each guardrail: enough for the rule
    return Observation("canary", share, step_calls=(int(b.n), int(c.n)), evidence=ev, step_age_s=age_s)


def test_a_step_carried_by_a_few_heavy_users_is_widened_untested():
    heavy = [(1, 30), (0, 12), (1, 9), (0, 3), (0, 1), (0, 1)]  # projected about 3 units
    d = decide(POLICY, _obs(1.0, 3600.0, heavy))
    assert d.action == "advance" and d.widened and (d.share_from, d.share_to) == (1.0, 5.0)
    assert d.mode_to == "canary" and "untested" in d.reason
    assert all(c.status == "insufficient" for c in d.checks)  # no test decided anything
    assert d.to_dict()["widened"] is True
    # not before the dwell time, not beyond max_untested_share, not when turned off
    assert decide(POLICY, _obs(1.0, 1800.0, heavy)).action == "wait"
    assert decide(POLICY, _obs(5.0, 3600.0, heavy)).action == "wait"  # 5 -> 25 % would exceed 5 %
    off = POLICY.model_copy(update={"max_untested_share": 0.0})
    assert decide(off, _obs(1.0, 3600.0, heavy)).action == "wait"


def test_a_step_that_is_small_only_because_it_is_young_is_not_widened():
    # eight units, each seen once: few effective units now, but nothing says they are heavy
    young = [(0, 1)] * 8
    d = decide(POLICY, _obs(1.0, 3600.0, young))
    assert d.action == "wait" and not d.widened
