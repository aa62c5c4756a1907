"""The controller benchmark's sufficient statistics equal the brute-force ones, and its screen is exact."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from evals.online.decision import CanaryPolicy
from evals.online.strata import Cell, Cross, pre_period, stratified_difference

_PATH = Path(__file__).resolve().parents[3] / "bench" / "controller_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("controller_bench", _PATH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["controller_bench"] = mod
    spec.loader.exec_module(mod)
    return mod


def brute_force(sim, row, metric):
    """Cells, covariate cells and cross sums from the per-user, per-step sums of one simulated canary."""
    k, st, m = sim.k, sim.users, list(sim.ev).index(metric)
    y, n = st.past_y[:, m, row].T.copy(), st.past_n[:, row].T.copy()
    seen = st.past_seen[:, row].T.astype(bool)
    s_now = sim.step[row]
    y[:, s_now] = st.cur_y[m, row]
    n[:, s_now] = st.cur_n[row]
    seen[:, s_now] = st.cur_seen[row]
    py = st.xy[m, row][:, None] * seen
    pn = st.xn[row][:, None] * seen
    users = np.arange(sim.s.users)
    nodes = {}
    for s in range(k):
        cand = users < st.cut[s]
        for a, mask in (("baseline", ~cand), ("candidate", cand)):
            nodes[(str(s), a)] = (y[:, s] * mask, n[:, s] * mask, mask)
            nodes[(pre_period(str(s)), a)] = (py[:, s] * mask, pn[:, s] * mask, mask)
    cells, covariates, cross = [], [], {}
    for (period, a), (yv, nv, mask) in nodes.items():
        cell = Cell.from_values(period, a, zip(yv[mask], nv[mask], strict=True))
        (covariates if period.startswith("pre|") else cells).append(cell)
    keys = list(nodes)
    for i, j in enumerate(keys):
        for kk in keys[i + 1 :]:
            (yj, nj, mj), (yk, nk, mk) = nodes[j], nodes[kk]
            if (mj & mk).any():
                cross[(j, kk)] = Cross(
                    float((yj * yk).sum()),
                    float((yj * nk).sum()),
                    float((nj * yk).sum()),
                    float((nj * nk).sum()),
                )
    return stratified_difference(cells, cross, rate=True, covariates=covariates)


def test_sticky_sufficient_statistics_match_brute_force(bench):
    scenario = replace(next(s for s in bench.SCENARIOS if s.name == "sticky_moderate"), users=300)
    sim = bench.Canaries(scenario, CanaryPolicy(), 4, np.random.default_rng(3))
    for hour in range(1, 9):
        sim._sticky_hour(float(hour))
        if hour in (3, 6):  # rows 0 and 1 advance twice; rows 2 and 3 stay at the first step
            sim._freeze(np.array([0, 1]))
            sim.step[[0, 1]] += 1
    evidence = sim._sticky_evidence(np.arange(4))
    for metric in bench.METRIC_NAMES:
        for row in range(4):
            want = brute_force(sim, row, metric)
            got = evidence[metric]
            assert float(np.asarray(got.estimate)[row]) == pytest.approx(
                float(want.estimate), rel=1e-9, abs=1e-15
            )
            assert float(np.asarray(got.variance)[row]) == pytest.approx(float(want.variance), rel=1e-9)
            assert float(np.asarray(got.effective_units_candidate)[row]) == pytest.approx(
                float(want.effective_units_candidate), rel=1e-9
            )
    units = sim._effective_units()
    for row in range(4):
        ev = brute_force(sim, row, bench.METRIC_NAMES[0])
        assert units[row] == pytest.approx(
            min(ev.effective_units_baseline, ev.effective_units_candidate), rel=1e-9
        )


def test_the_screen_never_hides_a_decision(bench):
    """With the screen off (every canary goes through `decide`), the results are identical."""
    policy = CanaryPolicy()
    scenario = next(s for s in bench.SCENARIOS if s.name == "worse")
    a = bench.run_scenario(scenario, policy, 40, 5)

    class Unscreened(bench.Canaries):
        def _may_decide(self, evidence):
            return np.ones(len(self.ids), dtype=bool)

    sim = Unscreened(scenario, policy, 40, np.random.default_rng(5))
    sim.run()
    assert (sim.outcome == a.outcome).all() and (sim.first_check == a.first_check).all()
    assert (a.outcome == 1).all()  # the worse candidate is rolled back
