"""Unit-level, ramp-aware statistics against statsmodels, scipy and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats
from statsmodels.stats.meta_analysis import combine_effects
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.sandwich_covariance import cov_cluster
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from evals.online.outcomes import msprt_log_lr, msprt_p_value
from evals.online.strata import (
    Cell,
    Cross,
    fixed_horizon_information,
    holm,
    information_factor_to_reject,
    pooled_ratio,
    stratified_difference,
)


def unit_table(rng, periods, users=600, share_of=None):
    """Per-call rows (unit, period, arm, y) with sticky users across periods and a ramp.

    User ``i`` is a candidate in period ``p`` when its bucket is below that period's share,
    so users move from baseline to candidate as the share grows; users have their own rate
    and a heavy-tailed (lognormal) call volume.
    """
    bucket = rng.random(users)
    rate = np.clip(rng.gamma(2.0, 0.05 / 2.0, users), 0, 1)
    volume = rng.lognormal(0.0, 1.0, users)
    rows = []
    for p, (share, calls) in enumerate(periods):
        who = rng.choice(users, size=calls, p=volume / volume.sum())
        for i in who:
            arm = "candidate" if bucket[i] < share else "baseline"
            rows.append((int(i), str(p), arm, float(rng.random() < rate[i])))
    return rows


def cells_from_rows(rows):
    per = {}
    for unit, period, arm, y in rows:
        key = (unit, period, arm)
        yy, nn = per.get(key, (0.0, 0.0))
        per[key] = (yy + y, nn + 1.0)
    by_cell = {}
    for (unit, period, arm), (y, n) in per.items():
        by_cell.setdefault((period, arm), []).append((unit, y, n))
    cells = [Cell.from_values(p, a, [(y, n) for _, y, n in v]) for (p, a), v in by_cell.items()]
    cross = {}
    keys = sorted(by_cell)
    for i, j in enumerate(keys):
        for k in keys[i + 1 :]:
            a = {u: (y, n) for u, y, n in by_cell[j]}
            b = {u: (y, n) for u, y, n in by_cell[k]}
            both = set(a) & set(b)
            if both:
                cross[(j, k)] = Cross(
                    sum(a[u][0] * b[u][0] for u in both),
                    sum(a[u][0] * b[u][1] for u in both),
                    sum(a[u][1] * b[u][0] for u in both),
                    sum(a[u][1] * b[u][1] for u in both),
                )
    return cells, cross


class TestDeltaMethod:
    def test_ratio_variance_matches_a_cluster_bootstrap(self):
        rng = np.random.default_rng(5)
        units = 400
        n = rng.pareto(1.5, units).astype(int) + 1  # heavy-tailed calls per user
        p = np.clip(rng.gamma(1.0, 0.08, units), 0, 1)
        y = rng.binomial(n, p).astype(float)
        cell = Cell.from_values("0", "candidate", zip(y, n, strict=True))
        r, var, _ = pooled_ratio([cell], arm="candidate")
        assert r == pytest.approx(y.sum() / n.sum())
        idx = rng.integers(0, units, size=(20_000, units))
        boot = y[idx].sum(axis=1) / n[idx].sum(axis=1)
        assert var == pytest.approx(boot.var(), rel=0.06)
        naive = r * (1 - r) / n.sum()  # calls treated as independent
        assert var > 1.2 * naive  # users with their own rates: the per-call variance is too small

    def test_per_call_difference_matches_statsmodels_welch(self):
        rng = np.random.default_rng(6)
        b, c = rng.normal(800, 300, 700), rng.normal(830, 250, 90)
        cells = [
            Cell.from_values("0", "baseline", ((v, 1) for v in b)),
            Cell.from_values("0", "candidate", ((v, 1) for v in c)),
        ]
        ev = stratified_difference(cells)
        cm = CompareMeans(DescrStatsW(c), DescrStatsW(b))
        assert ev.estimate == pytest.approx(c.mean() - b.mean(), rel=1e-12)
        assert ev.variance == pytest.approx(cm.std_meandiff_separatevar**2, rel=1e-9)

    def test_rates_with_no_events_still_have_a_variance(self):
        ev = stratified_difference(
            [Cell.per_call("0", "baseline", 0, 900), Cell.per_call("0", "candidate", 0, 100)], rate=True
        )
        pooled, own_b, own_c = 1 / 1002, 1 / 902, 1 / 102  # smoothed; each arm takes the larger variance
        expected = (
            max(pooled * (1 - pooled), own_b * (1 - own_b)) / 900
            + max(pooled * (1 - pooled), own_c * (1 - own_c)) / 100
        )
        assert ev.estimate == 0 and ev.variance == pytest.approx(expected)


class TestPeriods:
    def test_combination_is_the_fixed_effect_meta_analysis_with_cluster_robust_variance(self):
        rng = np.random.default_rng(7)
        rows = unit_table(rng, [(0.05, 3000), (0.25, 3000), (0.5, 3000)], users=1500)
        cells, cross = cells_from_rows(rows)
        ev = stratified_difference(cells, cross)
        unit = np.array([r[0] for r in rows])
        y = np.array([r[3] for r in rows])
        keys = sorted({(r[1], r[2]) for r in rows})
        design = np.column_stack([[(r[1], r[2]) == k for r in rows] for k in keys]).astype(float)
        cm = sm.OLS(y, design).fit()  # one mean per period and arm
        cov = cov_cluster(cm, unit, use_correction=False)  # clustered by user
        # each period's difference and its cluster-robust variance, by statsmodels, combined by
        # the fixed-effect (inverse-variance) meta-analysis
        effects, variances = [], []
        for p in sorted({k[0] for k in keys}):
            c = np.array([(k[0] == p) * (1 if k[1] == "candidate" else -1) for k in keys], dtype=float)
            effects.append(cm.params @ c)
            variances.append(c @ cov @ c)
        fe = combine_effects(np.array(effects), np.array(variances))
        assert ev.estimate == pytest.approx(fe.mean_effect_fe, rel=0.01)
        # the variance of the combination, users shared between periods included
        w = ev.period_weights
        total = sum(w.values())
        coef = np.array([(1 if a == "candidate" else -1) * w[p] / total for p, a in keys])
        assert cm.params @ coef == pytest.approx(ev.estimate, rel=1e-9)
        assert ev.variance == pytest.approx(coef @ cov @ coef, rel=0.02)  # up to G / (G - 1) per cell
        # sticky users across periods: dropping the cross terms gets the variance wrong
        alone = stratified_difference(cells, None)
        assert abs(alone.variance - ev.variance) > 0.02 * ev.variance

    def test_periods_are_never_pooled(self):
        # period 0 (1 %): both arms 2 %; period 1 (50 %): both arms 10 %. Pooling puts the
        # candidate's calls in the high period and shows a difference that is not there.
        cells = [
            Cell.per_call("v1", "baseline", 198, 9900),
            Cell.per_call("v1", "candidate", 2, 100),
            Cell.per_call("v2", "baseline", 500, 5000),
            Cell.per_call("v2", "candidate", 500, 5000),
        ]
        ev = stratified_difference(cells, rate=True)
        assert ev.estimate == pytest.approx(0.0, abs=1e-15) and ev.periods == 2
        assert msprt_p_value(ev.estimate, ev.variance, 0.02) == 1.0
        pooled = stratified_difference(
            [
                Cell.per_call("all", "baseline", 698, 14900),
                Cell.per_call("all", "candidate", 502, 5100),
            ],
            rate=True,
        )
        assert pooled.estimate > 0.05
        assert msprt_p_value(pooled.estimate, pooled.variance, 0.02) < 1e-10

    def test_a_period_with_one_arm_is_left_out(self):
        cells = [
            Cell.per_call("before", "baseline", 300, 1000),  # before the canary: baseline only
            Cell.per_call("canary", "baseline", 50, 1000),
            Cell.per_call("canary", "candidate", 5, 100),
        ]
        ev = stratified_difference(cells, rate=True)
        assert ev.estimate == pytest.approx(0.0) and ev.n_baseline == 1000 and ev.periods == 1

    def test_numpy_arrays_give_the_same_numbers_element_by_element(self):
        rng = np.random.default_rng(8)
        k = rng.integers(0, 50, size=(4, 2, 7)).astype(float)
        n = k + rng.integers(1, 900, size=(4, 2, 7))
        n[0, 1, 3] = 0  # an empty cell in one simulated canary
        k[0, 1, 3] = 0
        arms = ("baseline", "candidate")
        vec = stratified_difference(
            [Cell.per_call(str(s), arms[a], k[s, a], n[s, a]) for s in range(4) for a in range(2)], rate=True
        )
        for j in range(7):
            one = stratified_difference(
                [Cell.per_call(str(s), arms[a], k[s, a, j], n[s, a, j]) for s in range(4) for a in range(2)],
                rate=True,
            )
            assert vec.estimate[j] == pytest.approx(one.estimate, rel=1e-12, abs=1e-15)
            assert vec.variance[j] == pytest.approx(one.variance, rel=1e-12)


class TestTests:
    def test_holm_matches_statsmodels(self):
        p = [0.01, 0.04, 0.03, 0.2, 0.005, 0.5, 0.049, 0.0001]
        assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]), rel=1e-12)

    def test_fixed_horizon_information_matches_statsmodels_power(self):
        sigma, effect = 0.22, 0.02
        nobs = NormalIndPower().solve_power(
            effect_size=effect / sigma, alpha=0.05, power=0.8, ratio=1.0, alternative="larger"
        )
        assert fixed_horizon_information(effect, 0.05, 0.8) == pytest.approx(nobs / (2 * sigma**2), rel=1e-6)

    def test_information_factor_reaches_the_boundary(self):
        f = information_factor_to_reject(
            0.0, 4e-4, 0.02, theta0=-0.02, alternative="greater", alpha=0.05, log_lr=msprt_log_lr
        )
        assert f is not None and f > 1
        at = msprt_p_value(0.0, 4e-4 / f, 0.02, theta0=-0.02, alternative="greater")
        before = msprt_p_value(0.0, 4e-4 / (0.98 * f), 0.02, theta0=-0.02, alternative="greater")
        assert at == pytest.approx(0.05, rel=1e-6) and before > 0.05
        # on the null's side no amount of data rejects
        assert (
            information_factor_to_reject(
                -0.03, 4e-4, 0.02, theta0=-0.02, alternative="greater", alpha=0.05, log_lr=msprt_log_lr
            )
            is None
        )

    def test_always_valid_under_a_trend_when_periods_are_kept_apart(self):
        """A/A, rate rising 4 -> 8 % over 48 h while the share moves 1 -> 5 -> 25 -> 50 %."""
        rng = np.random.default_rng(9)
        runs, hours, traffic = 400, 96, 2000
        shares = np.repeat([0.01, 0.05, 0.25, 0.5], hours // 4)
        rate = 0.04 + 0.04 * np.minimum(np.arange(hours), 48) / 48
        k = np.zeros((4, 2, runs))
        n = np.zeros((4, 2, runs))
        pooled_k = np.zeros((2, runs))
        pooled_n = np.zeros((2, runs))
        hit_strat = np.zeros(runs, dtype=bool)
        hit_pooled = np.zeros(runs, dtype=bool)
        arms = ("baseline", "candidate")
        for h in range(hours):
            s = int(np.searchsorted([0.01, 0.05, 0.25, 0.5], shares[h]))
            nc = rng.binomial(traffic, shares[h], runs)
            for a, m in enumerate((traffic - nc, nc)):
                ev = rng.binomial(m, rate[h])
                k[s, a] += ev
                n[s, a] += m
                pooled_k[a] += ev
                pooled_n[a] += m
            strat = stratified_difference(
                [Cell.per_call(str(q), arms[a], k[q, a], n[q, a]) for q in range(4) for a in range(2)],
                rate=True,
            )
            pooled = stratified_difference(
                [Cell.per_call("all", arms[a], pooled_k[a], pooled_n[a]) for a in range(2)], rate=True
            )
            for ev, hit in ((strat, hit_strat), (pooled, hit_pooled)):
                lr = np.array(
                    [
                        msprt_log_lr(float(x), float(v), 0.02)
                        for x, v in zip(ev.estimate, ev.variance, strict=True)
                    ]
                )
                hit |= lr >= math.log(20)
        se = math.sqrt(0.05 * 0.95 / runs)
        print(
            f"\nA/A trend + ramp: periods kept apart {hit_strat.mean():.3f}, pooled {hit_pooled.mean():.3f}"
        )
        assert hit_strat.mean() <= 0.05 + 2 * se
        assert hit_pooled.mean() > 0.3  # the artefact the periods remove
        assert stats.binomtest(int(hit_pooled.sum()), runs, 0.05).pvalue < 1e-6
