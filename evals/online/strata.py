"""Unit-level, ramp-aware comparison of two arms: the statistics behind the report and the controller.

Two facts of a canary break the textbook two-sample test, and this module answers both:

* **The split is per unit, not per call.** A user (or session, or client key: the route's
  sticky key) stays in one arm, so their calls are not independent: a few heavy users with
  their own habits dominate an arm. Each arm's rate is a ratio ``R = sum(Y) / sum(N)`` of
  per-unit totals (``Y``: events, or the sum of a value; ``N``: calls, or observations), and
  its variance comes from the delta method over units::

      Var(R) = sum_i (Y_i - R N_i)^2 / (sum_i N_i)^2 * G / (G - 1)

  which is the cluster-robust variance of a mean with the unit as the cluster (what
  experimentation platforms use for ratio metrics). ``G = (sum N)^2 / sum N^2`` is Kish's
  effective number of units (``U`` when every unit has the same volume): with a few heavy
  units the residuals of the heaviest are small by construction, and ``G / (G - 1)``
  corrects that bias to first order. The controller also refuses to decide on an arm
  worth fewer than ``min_units`` effective units, where no variance estimate is reliable.
  A call without a sticky key was placed at random, so it is its own unit.

* **The share moves.** The ramp goes 1 % -> 5 % -> 25 % -> 50 %, so the candidate's calls
  sit in later hours than the baseline's; any shared change over time (a daily cycle, a
  trend) looks like a difference when the arms are pooled. Arms are therefore compared only
  within a *period* of constant share (a route-state version, a ramp step), and the
  periods' differences are combined with inverse-variance weights ``w_s = 1 / V_s``::

      d = sum_s w_s (R_cs - R_bs) / sum_s w_s

  (the fixed-effect meta-analysis of the periods; Mantel-Haenszel weights
  ``n_b n_c / (n_b + n_c)`` where a period has no variance at all). Inverse-variance weights
  keep the combined evidence a sum of independent increments even when the rate, and so the
  variance, differs between periods (a trend, a daily cycle), which the mSPRT's guarantee
  needs. Periods are never pooled. A unit seen in several periods (a sticky user across ramp
  steps, possibly in both arms) makes the periods' differences correlated, so the variance
  of ``d`` is the delta method over units of the whole combination: with cells ``k``
  (a period x an arm), coefficients ``a_k = +-w_s / (W n_k)`` and each unit's influence
  ``psi_i = sum_k a_k (Y_ik - R_k N_ik)``, ``Var(d) = sum_i psi_i^2``. Expanded, it needs per
  cell ``sum Y, N, Y^2, N^2, YN`` and, per pair of cells, the cross sums
  ``sum_i Y_ij Y_ik, Y_ij N_ik, N_ij Y_ik, N_ij N_ik`` over the units in both (`Cell`,
  `Cross`): additive sufficient statistics a SQL ``GROUP BY`` computes.

* **Users keep their habits (CUPED).** Most of a sticky arm's variance is its users' own
  rates, which they had before the canary too. Each cell can carry a *covariate cell*
  (period ``pre|<period>``): the same units' sums over a pre-period in which every call was
  served by the baseline (`evals.outcomes_query`, ``pre_since``). A period's difference is
  adjusted by the same difference of the pre-period ratios (Deng, Xu, Kohavi & Walker 2013, with
  the delta method for ratio metrics)::

      d_s = (R_cs - R_bs) - theta_s (Q_cs - Q_bs),   theta_s = beta_s M_s / N_s

  Pre-period data cannot depend on the arm, so ``E[Q_cs - Q_bs] = 0`` and the adjustment keeps
  the estimate unbiased for any ``theta_s``. ``beta_s = sum e_i f_i / sum f_i^2`` is the per-unit
  regression of canary residuals ``e_i = Y_i - R N_i`` on pre-period residuals ``f_i = X_i - Q M_i``
  over the units of *both* arms (each around its own arm's ratios; ``M_s / N_s`` turns it from
  per-unit sums into ratios), as in Deng et al. The coefficient that minimises the period's own
  variance estimate, ``B / C`` with the quadratic form's ``A``, ``B``, ``C`` (`_Form`), is not used:
  at a 1 % step it is fitted to the few effective units of the small arm, whose residuals it
  then also uses to estimate ``A - B^2 / C``, which understates the variance (it raised
  false rollbacks with 5,000 sticky users from 0.2 % to 3.4 %). With the pooled ``theta_s`` the
  variance is ``A - 2 theta_s B + theta_s^2 C`` (`_pooled_theta`, `_period`). The combination then has coefficients on both
  kinds of cells, and its variance includes every cross sum between them (a unit's pre-period
  appears in every period it was seen in). Units without a pre-period add nothing to ``Q``;
  without covariate cells nothing changes.

For rates the unit-level variance is rescaled (its design effect kept) to a binomial
variance per arm: the larger of the one at the arm's own smoothed rate ``(k + 1) / (n + 2)``
and the one at the period's pooled rate ``(k_b + k_c + 1) / (n_b + n_c + 2)``. An arm with no
events still has a variance, and neither tail of a small arm's skewed count can shrink its
own variance: with the own rate alone (Wald) a 1 % share raises false "better" alarms,
with the pooled rate alone (score) false "worse" ones.

The arithmetic uses only ``+ - * /`` and comparisons, so every function here also runs,
unchanged, on NumPy arrays (one element per simulated canary): `bench/controller_bench.py`
runs the controller's real statistics that way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

_STD_NORMAL = NormalDist()

Num = Any
"""A float, or a NumPy array of floats (the same formula, element by element)."""


def _div(a: Num, b: Num) -> Num:
    """``a / b``, and 0 where ``b == 0``."""
    zero = b == 0
    return a / (b + zero) * (1 - zero)


UNBOUNDED = 1e12
"""`Cell.projected_units` of an arm in which no unit was seen twice."""


@dataclass(frozen=True)
class Cell:
    """Per-unit sums of one metric in one arm of one period."""

    period: str
    arm: str
    """``baseline`` or ``candidate``."""
    units: Num
    """Units with at least one observation."""
    y: Num
    n: Num
    yy: Num
    nn: Num
    yn: Num

    @property
    def key(self) -> tuple[str, str]:
        return (self.period, self.arm)

    @property
    def mean(self) -> Num:
        return _div(self.y, self.n)

    @property
    def effective_units(self) -> Num:
        """Kish's effective number of units, ``(sum N)^2 / sum N^2`` (``n`` for independent calls)."""
        return _div(self.n * self.n, self.nn)

    @property
    def projected_units(self) -> Num:
        """Kish's count as the calls grow: ``(sum N)^2 / (sum N^2 - sum N)`` (`UNBOUNDED` where no
        unit was seen twice: nothing says the arm is carried by heavy units; 0 without calls)."""
        extra = self.nn - self.n
        some = extra > 0
        projected = _div(self.n * self.n, extra * some + (1 - some)) * some + (1 - some) * UNBOUNDED
        return projected * (self.n > 0)

    @property
    def ss(self) -> Num:
        """``sum_i (Y_i - R N_i)^2``."""
        r = self.mean
        return self.yy - 2 * r * self.yn + r * r * self.nn

    @classmethod
    def per_call(cls, period: str, arm: str, k: Num, n: Num) -> Cell:
        """``k`` events in ``n`` independent calls (each call its own unit)."""
        return cls(period, arm, n, k, n, k, n, k)

    @classmethod
    def from_values(cls, period: str, arm: str, values: Iterable[tuple[float, float]]) -> Cell:
        """From ``(Y_i, N_i)`` per unit."""
        rows = [(float(y), float(n)) for y, n in values if n]
        return cls(
            period,
            arm,
            len(rows),
            sum(y for y, _ in rows),
            sum(n for _, n in rows),
            sum(y * y for y, _ in rows),
            sum(n * n for _, n in rows),
            sum(y * n for y, n in rows),
        )


@dataclass(frozen=True)
class Cross:
    """Cross sums between two cells over the units in both: ``sum Y_j Y_k, Y_j N_k, N_j Y_k, N_j N_k``."""

    yy: Num
    yn: Num
    ny: Num
    nn: Num


@dataclass(frozen=True)
class Evidence:
    """Candidate minus baseline for one metric, combined over periods, with its variance."""

    estimate: Num
    variance: Num
    weight: Num
    """The information ``1 / variance``; the forecast extrapolates it."""
    n_baseline: Num
    n_candidate: Num
    """Observations (calls, for rates) in the compared periods."""
    units_baseline: Num
    units_candidate: Num
    periods: Num
    """Periods that had both arms."""
    baseline_mean: Num = 0.0
    candidate_mean: Num = 0.0
    """Each arm's mean with the same period weights (so their difference is ``estimate``)."""
    effective_units_baseline: Num = 0.0
    effective_units_candidate: Num = 0.0
    """Kish's ``(sum N)^2 / sum N^2`` over the arm's units (per period, summed): how many
    independent units the arm is worth. A few heavy users make it small."""
    period_weights: Mapping[str, Num] | None = None
    """Each compared period's weight (unnormalised)."""
    balance: Num = 0.0
    """``sum_s n_bs n_cs / (n_bs + n_cs)``: the information per unit of per-observation variance
    (so ``weight / balance`` is the information one balanced observation adds)."""
    projected_units_candidate: Num = 0.0
    """The candidate arm's effective units as its period's calls grow (per period, summed):
    ``(sum N)^2 / (sum N^2 - sum N)``, Kish's count with the Poisson part of ``N^2`` taken out, so
    it estimates ``(sum lambda)^2 / sum lambda^2`` of the units' call rates, the value Kish's count
    tends to at that share. Low while the arm is carried by a few heavy
    units: then waiting at that share cannot make the arm testable."""


PRE = "pre|"
"""Prefix of a covariate cell's period: ``pre|<period>`` holds the pre-period sums of ``<period>``'s units."""


def pre_period(period: str) -> str:
    """The period name of ``period``'s covariate cells."""
    return PRE + period


CrossMap = Mapping[tuple[tuple[str, str], tuple[str, str]], Cross]


class _Form:
    """The delta-method quadratic form over cells: ``Q(c, c') = sum_i psi_i(c) psi_i(c')``.

    ``psi_i(c) = sum_k c_k (Y_ik - R_k N_ik) / n_k``: a linear combination ``sum_k c_k R_k`` of
    cell ratios has variance ``Q(c, c)``, expanded into each cell's own sums and the cross sums
    of every pair of cells that share units (each with the cells' small-sample factors).
    """

    def __init__(self, by_key: Mapping[tuple[str, str], Cell], cross: CrossMap | None) -> None:
        self.self_: dict[tuple[str, str], Num] = {}
        self.factor: dict[tuple[str, str], Num] = {}
        for key, cell in by_key.items():
            g = cell.effective_units
            f = _div(g, g - 1) + (g <= 1)
            self.factor[key] = f
            self.self_[key] = _div(cell.ss * f, cell.n * cell.n)
        self.pairs: dict[tuple[str, str], dict[tuple[str, str], Num]] = {}
        """``pairs[j][k]``: the scaled cross term of cells ``j`` and ``k`` (both orders)."""
        self.residual: dict[tuple[tuple[str, str], tuple[str, str]], Num] = {}
        """``sum_i (Y_ij - R_j N_ij)(Y_ik - R_k N_ik)`` over the units in both cells, unscaled."""
        for (j, k), x in (cross or {}).items():
            if j not in by_key or k not in by_key or j == k:
                continue
            cj, ck = by_key[j], by_key[k]
            rj, rk = cj.mean, ck.mean
            res = x.yy - rk * x.yn - rj * x.ny + rj * rk * x.nn
            self.residual[(j, k)] = self.residual[(k, j)] = res
            f = (self.factor[j] * self.factor[k]) ** 0.5
            v = _div(f * res, cj.n * ck.n)
            self.pairs.setdefault(j, {})[k] = v
            self.pairs.setdefault(k, {})[j] = v

    def __call__(self, a: Mapping[tuple[str, str], Num], b: Mapping[tuple[str, str], Num]) -> Num:
        out: Num = 0.0
        for key, ca in a.items():
            cb = b.get(key)
            if cb is not None and key in self.self_:
                out = out + ca * cb * self.self_[key]
            # each ordered pair (j in a, k in b) once: the form is symmetric in its cells
            for other, v in self.pairs.get(key, {}).items():
                cb = b.get(other)
                if cb is not None:
                    out = out + ca * cb * v
        return out


@dataclass
class _Period:
    """One compared period's pieces: its difference's coefficients, CUPED coefficient and weights."""

    main: dict[tuple[str, str], Num]
    covar: dict[tuple[str, str], Num]
    theta: Num
    mh: Num
    """Mantel-Haenszel weight ``n_b n_c / (n_b + n_c)``."""
    inverse: Num
    """``1 / V_s``, 0 where ``V_s`` is 0."""
    degenerate: Num
    """1 where the period has observations but no variance."""


def _pooled_theta(
    form: _Form, p: str, by_key: Mapping[tuple[str, str], Cell], pre: Mapping[tuple[str, str], Cell]
) -> Num:
    """Period ``p``'s CUPED coefficient, from the units of both arms pooled.

    The per-unit regression of canary residuals ``e_i = Y_i - R N_i`` on pre-period residuals
    ``f_i = X_i - Q M_i`` (each arm around its own ratios), ``beta = sum e f / sum f^2`` over every
    unit of the period, scaled by ``M / N`` (pre-period over canary observations of the period's
    units) to act on ratios. Not the coefficient that minimises the period's own variance
    estimate: that one is dominated by the small arm (a 1 % step's few effective units) and
    understates the variance it minimises, since it was fitted on the same residuals.
    """
    num: Num = 0.0
    den: Num = 0.0
    n: Num = 0.0
    m: Num = 0.0
    for arm in ("baseline", "candidate"):
        key, pk = (p, arm), (pre_period(p), arm)
        if pk not in pre:
            continue
        num = num + form.residual.get((key, pk), 0.0)
        den = den + pre[pk].ss
        n, m = n + by_key[key].n, m + pre[pk].n
    return _div(num, den) * _div(m, n)


def _period(
    p: str,
    by_key: Mapping[tuple[str, str], Cell],
    pre: Mapping[tuple[str, str], Cell],
    form: _Form,
    rate: bool,
) -> _Period:
    b, c = by_key[(p, "baseline")], by_key[(p, "candidate")]
    main = {c.key: 1.0, b.key: -1.0}
    covar = {
        (pre_period(p), arm): sign
        for arm, sign in (("candidate", 1.0), ("baseline", -1.0))
        if (pre_period(p), arm) in pre
    }
    v = form(main, main)
    theta: Num = 0.0
    if covar:
        theta = _pooled_theta(form, p, by_key, pre)
        v = v - 2 * theta * form(main, covar) + theta * theta * form(covar, covar)
    v = (v + abs(v)) / 2
    if rate:
        raw_p = _raw(b) + _raw(c)
        smooth_p = _binomial_variance(b, b, c) + _binomial_variance(c, b, c)
        v = _div(v * smooth_p, raw_p) + (raw_p == 0) * smooth_p
    mh = _div(b.n * c.n, b.n + c.n)
    return _Period(main, covar, theta, mh, _div(1.0, v), (v <= 0) * (mh > 0))


def _coefficients(periods: Mapping[str, _Period]) -> tuple[dict[str, Num], dict[tuple[str, str], Num]]:
    """The periods' weights and every cell's coefficient in the combination.

    Inverse-variance weights keep the combined evidence a sum of independent increments (what
    the mSPRT needs when the rate, hence the variance, differs between periods); Mantel-Haenszel
    weights where some period has no variance at all (constant values).
    """
    degenerate: Num = 0
    for q in periods.values():
        degenerate = degenerate + q.degenerate
    use_mh = degenerate > 0
    weights = {p: use_mh * q.mh + (1 - use_mh) * q.inverse for p, q in periods.items()}
    total: Num = 0.0
    for w in weights.values():
        total = total + w
    coef: dict[tuple[str, str], Num] = {}
    for p, w in weights.items():
        share = _div(w, total)
        for key, sign in periods[p].main.items():
            coef[key] = sign * share
        for key, sign in periods[p].covar.items():
            coef[key] = -sign * share * periods[p].theta
    return weights, coef


@dataclass
class _Arms:
    """Sums over one combination's cells, per arm (``b``: baseline, ``c``: candidate)."""

    mean_b: Num = 0.0
    mean_c: Num = 0.0
    nb: Num = 0.0
    nc: Num = 0.0
    ub: Num = 0.0
    uc: Num = 0.0
    gb: Num = 0.0
    gc: Num = 0.0
    pc: Num = 0.0
    periods: Num = 0


def _adjustment(key: tuple[str, str], theta: Num, pre: Mapping[tuple[str, str], Cell]) -> Num:
    """How far ``key``'s arm mean moves with CUPED: towards the period's pooled pre-period ratio."""
    pk = (pre_period(key[0]), key[1])
    if pk not in pre:
        return 0.0
    pb, pc = pre.get((pk[0], "baseline")), pre.get((pk[0], "candidate"))
    yp = (pb.y if pb else 0.0) + (pc.y if pc else 0.0)
    np_ = (pb.n if pb else 0.0) + (pc.n if pc else 0.0)
    return theta * (pre[pk].mean - _div(yp, np_)) * (pre[pk].n > 0)


def _arm_sums(
    coef: Mapping[tuple[str, str], Num],
    by_key: Mapping[tuple[str, str], Cell],
    pre: Mapping[tuple[str, str], Cell],
    periods: Mapping[str, _Period],
) -> _Arms:
    """Each arm's mean with the combination's weights (their difference is the estimate) and counts."""
    out = _Arms()
    for key, ck in coef.items():
        if key in pre:
            continue
        cell = by_key[key]
        adjusted = cell.mean - _adjustment(key, periods[key[0]].theta, pre)
        g = cell.effective_units
        if key[1] == "baseline":
            out.mean_b = out.mean_b - ck * adjusted
            out.nb, out.ub, out.gb = out.nb + cell.n, out.ub + cell.units, out.gb + g
        else:
            out.mean_c = out.mean_c + ck * adjusted
            out.nc, out.uc, out.gc = out.nc + cell.n, out.uc + cell.units, out.gc + g
            out.pc = out.pc + cell.projected_units
            out.periods = out.periods + (cell.n > 0) * (by_key[(key[0], "baseline")].n > 0)
    return out


def _rate_scale(
    coef: Mapping[tuple[str, str], Num], by_key: Mapping[tuple[str, str], Cell]
) -> tuple[Num, Num]:
    """``(raw, smooth)``: the combination's binomial variance at each cell's own rate, and at the
    larger of its smoothed own and pooled rates (module docstring)."""
    raw: Num = 0.0
    smooth: Num = 0.0
    for key, ck in coef.items():
        cell = by_key.get(key)
        if cell is None:
            continue
        raw = raw + ck * ck * _raw(cell)
        pb, pc = by_key[(key[0], "baseline")], by_key[(key[0], "candidate")]
        smooth = smooth + ck * ck * _binomial_variance(cell, pb, pc)
    return raw, smooth


def stratified_difference(
    cells: Sequence[Cell],
    cross: CrossMap | None = None,
    *,
    rate: bool = False,
    covariates: Sequence[Cell] = (),
) -> Evidence:
    """Combine per-period candidate-minus-baseline differences (see the module docstring).

    ``covariates``: per cell, the pre-period sums of its units (period `pre_period(p)`, same
    arm), and ``cross`` may hold their cross sums with any cell. Each period's difference is
    then adjusted by its covariates (CUPED, the module docstring), with its own coefficient.
    """
    by_key = {c.key: c for c in cells}
    pre = {c.key: c for c in covariates}
    form = _Form({**by_key, **pre}, cross)
    periods = {
        p: _period(p, by_key, pre, form, rate)
        for p in sorted({c.period for c in cells})
        if (p, "baseline") in by_key and (p, "candidate") in by_key
    }
    weights, coef = _coefficients(periods)
    est: Num = 0.0
    for key, ck in coef.items():
        est = est + ck * (pre[key].mean if key in pre else by_key[key].mean)
    arms = _arm_sums(coef, by_key, pre, periods)
    variance = form(coef, coef)
    if rate:
        raw, smooth = _rate_scale(coef, by_key)
        variance = _div(variance * smooth, raw) + (raw == 0) * smooth
    variance = (variance + abs(variance)) / 2  # rounding can leave -1e-20 where the truth is 0
    balance: Num = 0.0
    for q in periods.values():
        balance = balance + q.mh
    return Evidence(
        est,
        variance,
        _div(1.0, variance),
        arms.nb,
        arms.nc,
        arms.ub,
        arms.uc,
        arms.periods,
        arms.mean_b,
        arms.mean_c,
        arms.gb,
        arms.gc,
        weights,
        balance,
        arms.pc,
    )


def _raw(cell: Cell) -> Num:
    r = cell.mean
    return _div(r * (1 - r), cell.n)


def period_variance(baseline: Cell, candidate: Cell, *, rate: bool = False) -> Num:
    """Variance of one period's difference: the delta method over units (module docstring).

    For rates its design effect is applied to the binomial variance at the period's pooled,
    smoothed rate (the null's), so an arm's own few events do not shrink its own variance.
    """
    form = _Form({baseline.key: baseline, candidate.key: candidate}, None)
    c = {candidate.key: 1.0, baseline.key: -1.0}
    v = form(c, c)
    if not rate:
        return v
    raw = _raw(baseline) + _raw(candidate)
    smooth = _binomial_variance(baseline, baseline, candidate) + _binomial_variance(
        candidate, baseline, candidate
    )
    return _div(v * smooth, raw) + (raw == 0) * smooth


def _binomial_variance(cell: Cell, baseline: Cell, candidate: Cell) -> Num:
    """The larger of the binomial variances of ``cell``'s mean at its own and at the period's pooled rate."""
    own = (cell.y + 1) / (cell.n + 2)
    pooled = (baseline.y + candidate.y + 1) / (baseline.n + candidate.n + 2)
    a, b = own * (1 - own), pooled * (1 - pooled)
    return _div((a + b + abs(a - b)) / 2, cell.n)


def pooled_ratio(
    cells: Sequence[Cell],
    cross: Mapping[tuple[tuple[str, str], tuple[str, str]], Cross] | None = None,
    *,
    arm: str,
) -> tuple[Num, Num, Num]:
    """One arm's ratio pooled over its cells, its unit-level variance and its units (a description only)."""
    mine = {c.key: c for c in cells if c.arm == arm}
    y = sum(c.y for c in mine.values())
    n = sum(c.n for c in mine.values())
    units = sum(c.units for c in mine.values())
    r = _div(y, n)
    ss = sum(c.yy - 2 * r * c.yn + r * r * c.nn for c in mine.values())
    for (j, k), x in (cross or {}).items():
        if j in mine and k in mine and j != k:
            ss = ss + 2 * (x.yy - r * x.yn - r * x.ny + r * r * x.nn)
    f = _div(units, units - 1) + (units <= 1)
    ss = (ss + abs(ss)) / 2
    return r, _div(ss * f, n * n), units


# -- tests on evidence -------------------------------------------------------------------
def normal_cdf(z: float) -> float:
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (family-wise error over the list, any dependence)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def fixed_horizon_information(effect: float, alpha: float, power: float = 0.8) -> float:
    """``1 / Var`` a one-sided fixed-horizon z-test at ``alpha`` needs to detect ``effect`` with ``power``."""
    z = _STD_NORMAL.inv_cdf(1 - alpha) + _STD_NORMAL.inv_cdf(power)
    return (z / abs(effect)) ** 2


def information_factor_to_reject(
    estimate: float,
    variance: float,
    tau: float,
    *,
    theta0: float,
    alternative: str,
    alpha: float,
    log_lr: Any,
) -> float | None:
    """How many times the current information the mSPRT needs to reject, if the estimate holds.

    ``None`` when no amount of data would (the estimate is on the null's side). ``log_lr`` is
    `evals.outcomes.msprt_log_lr`, passed in to keep this module free of the report's imports.
    """
    if variance <= 0:
        return None
    y = estimate - theta0
    if (alternative == "greater" and y <= 0) or (alternative == "less" and y >= 0) or y == 0:
        return None
    target = math.log(1 / alpha)

    def reached(f: float) -> bool:
        value: float = log_lr(estimate, variance / f, tau, theta0=theta0, alternative=alternative)
        return value >= target

    if reached(1.0):
        return 1.0
    lo, hi = 0.0, 1.0
    while not reached(math.exp(hi)):
        lo, hi = hi, hi * 2
        if hi > 60:
            return None
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if reached(math.exp(mid)) else (mid, hi)
    return math.exp(hi)
