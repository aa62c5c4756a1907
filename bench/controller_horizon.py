"""The fixed-horizon comparator of the sticky scenarios, simulated with the controller's estimator.

A fixed-horizon design looks once, after a number of calls fixed in advance. With sticky
users its power cannot come from a formula alone: the candidate's arm is 1 % of the *users*,
and with heavy-tailed volumes the calls (and the effective units) that 1 % brings vary from one
population to the next, so the variance of the difference varies too, and the average power is
below the power at the average variance. `simulated_power_curve` therefore draws ``reps``
populations of the scenario, lets calls accumulate along a grid of hours (the same draws for
every horizon: each horizon's calls extend the previous one's), and at every horizon applies the
one-shot test to every population (`controller_scenarios.fixed_horizon_simulated` states the
design). Only the sticky scenarios need it; the others use the closed form.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
from controller_scenarios import BASE, HORIZON, METRIC_NAMES, TRAFFIC, Scenario

from evals.online.decision import CanaryPolicy
from evals.online.strata import Cell, Cross, Evidence, pre_period, stratified_difference

BATCH = 100
"""Populations simulated at once (arrays of BATCH x users per metric)."""


def grid_hours() -> np.ndarray:
    """Horizons, in hours of traffic: 1 h to twice the benchmark's 14 days, about 18 % apart."""
    return np.unique(np.round(np.geomspace(1.0, 2.0 * HORIZON, 40)))


def _population(s: Scenario, reps: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Call rates per user (reps, u), own rate multipliers (M, reps, u), pre-period calls and events."""
    u = s.users
    if s.volume == "pareto":
        vol = rng.pareto(s.volume_param, size=(reps, u)) + 1.0
    else:
        vol = rng.lognormal(0.0, s.volume_param, size=(reps, u))
    lam = TRAFFIC * vol / vol.sum(axis=1, keepdims=True)
    mult = np.stack(
        [
            np.minimum(rng.gamma(s.heterogeneity, 1 / s.heterogeneity, size=(reps, u)), 0.5 / BASE[m])
            for m in METRIC_NAMES
        ]
    )
    xn = rng.poisson(lam * s.pre_hours).astype(float)
    p0 = np.array([BASE[m] for m in METRIC_NAMES])[:, None, None]
    xy = rng.binomial(xn.astype(np.int64), np.minimum(p0 * mult, 1.0)).astype(float)
    return lam, mult, xn, xy


def _cells(y: np.ndarray, n: np.ndarray, xy: np.ndarray, xn: np.ndarray, cut: int) -> Evidence:
    """The one-period evidence (every metric at once) with covariates, as the controller computes it."""
    seen = n > 0
    px, pm = xy * seen, xn * seen
    cells, pre, cross = [], [], {}
    for arm, sl in (("baseline", slice(cut, None)), ("candidate", slice(0, cut))):
        yv, nv, xv, mv = y[..., sl], n[:, sl], px[..., sl], pm[:, sl]
        units = seen[:, sl].sum(axis=1)
        cells.append(
            Cell(
                "0",
                arm,
                units,
                yv.sum(-1),
                nv.sum(-1),
                (yv * yv).sum(-1),
                (nv * nv).sum(-1),
                (yv * nv).sum(-1),
            )
        )
        pre.append(
            Cell(
                pre_period("0"),
                arm,
                units,
                xv.sum(-1),
                mv.sum(-1),
                (xv * xv).sum(-1),
                (mv * mv).sum(-1),
                (xv * mv).sum(-1),
            )
        )
        cross[(("0", arm), (pre_period("0"), arm))] = Cross(
            (yv * xv).sum(-1), (yv * mv).sum(-1), (nv * xv).sum(-1), (nv * mv).sum(-1)
        )
    return stratified_difference(cells, cross, rate=True, covariates=pre)


def _decides(s: Scenario, policy: CanaryPolicy, ev: Evidence, guard: bool) -> np.ndarray:
    """Per population, whether the one-shot z-tests take the right decision (``guard``: and the
    arms are worth ``min_units`` effective units)."""
    nd = NormalDist()
    est = np.asarray(ev.estimate)
    sd = np.sqrt(np.asarray(ev.variance))
    sd = np.where(sd > 0, sd, np.inf)
    units = np.minimum(np.asarray(ev.effective_units_baseline), np.asarray(ev.effective_units_candidate))
    ok = np.broadcast_to((units >= policy.min_units) | (not guard), est.shape).all(axis=0)
    index = {m: i for i, m in enumerate(METRIC_NAMES)}
    if s.truth == "worse":
        i = index["thumbs_down_rate"]
        z = nd.inv_cdf(1 - policy.alpha / len(policy.guardrails))
        return ok & (est[i] / sd[i] > z)
    z = nd.inv_cdf(1 - policy.alpha)
    for g in policy.guardrails:
        i = index[g.metric]
        ok &= (-est[i] + g.margin) / sd[i] > z  # every guardrail here is lower-is-better
    return ok


def _path(
    s: Scenario,
    policy: CanaryPolicy,
    pop: tuple[np.ndarray, ...],
    cut: int,
    hours: np.ndarray,
    rng: np.random.Generator,
    guard: bool,
) -> np.ndarray:
    """Whether each population's test decides correctly after each of ``hours`` at one share
    (calls accumulate along the grid)."""
    lam, mult, xn, xy = pop
    rates = s.rates(0.0)
    cand = np.arange(s.users) < cut
    p = np.stack([np.where(cand, rates[m][1], rates[m][0]) for m in METRIC_NAMES])[:, None, :]
    p = np.ascontiguousarray(np.minimum(p * mult, 1.0))
    y = np.zeros(mult.shape)
    n = np.zeros(lam.shape)
    flat_p = p.reshape(len(METRIC_NAMES), -1)
    out = np.zeros((len(hours), lam.shape[0]), dtype=bool)
    before = 0.0
    for i, h in enumerate(hours):
        if h > before:
            more = rng.poisson(lam * (h - before)).ravel()
            hit = np.flatnonzero(more)
            flat_y = y.reshape(len(METRIC_NAMES), -1)
            flat_y[:, hit] += rng.binomial(
                np.broadcast_to(more[hit], (len(METRIC_NAMES), len(hit))), flat_p[:, hit]
            )
            n.ravel()[hit] += more[hit]
            before = h
        if h > 0:
            out[i] = _decides(s, policy, _cells(y, n, xy, xn, cut), guard)
    return out


def simulated_power_curve(
    s: Scenario, policy: CanaryPolicy, *, reps: int = 400, seed: int = 99, rules: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
    """``(hours, power at each, share of populations widened)`` of the fixed-horizon design at the
    first step's share; with ``rules``, the controller's ``min_units`` guard and widening too."""
    rng = np.random.default_rng(seed)
    shares = [x for x in policy.steps if x < 100]
    hours = grid_hours()
    dwell = policy.min_step_s / policy.check_interval_s  # checks (hours) at the first step before widening
    can_widen = rules and len(shares) > 1 and shares[1] <= policy.max_untested_share
    hits = np.zeros(len(hours))
    widened = 0
    for lo in range(0, reps, BATCH):
        size = min(BATCH, reps - lo)
        pop = _population(s, size, rng)
        lam = pop[0]
        cut0 = round(shares[0] / 100 * s.users)
        first = lam[:, :cut0]
        kish = first.sum(axis=1) ** 2 / (first * first).sum(axis=1)
        widen = (kish < policy.min_units) & can_widen
        widened += int(widen.sum())
        cut1 = round(shares[1] / 100 * s.users) if can_widen else cut0
        result = np.zeros((len(hours), size), dtype=bool)
        # each population on its own path: tested at the first step, or widened after the dwell
        for mask, cut, at in ((~widen, cut0, hours), (widen, cut1, np.maximum(hours - dwell, 0.0))):
            if mask.any():
                sub = tuple(a[:, mask] if a.ndim == 3 else a[mask] for a in pop)
                result[:, mask] = _path(s, policy, sub, cut, at, rng, rules)
        hits += result.sum(axis=1)
    return hours, hits / reps, widened / reps
