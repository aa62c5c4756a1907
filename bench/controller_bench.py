"""Canary controller benchmark: false rollbacks, power and time to a decision, by simulation.

Each scenario simulates ``--runs`` canaries of one route with the default `CanaryPolicy`:
2,000 served calls per hourly check, split by the current ramp share, baseline rates
thumbs-down 5 %, errors 1 %, regenerations 3 %. Every check goes through the controller's
real code: the per-period, per-unit sums a log query would return are built from the
simulated calls, `evals.strata.stratified_difference` turns them into evidence (on NumPy
arrays, one element per canary), and `evals.decision.decide` decides for each canary.

Scenarios (truth: the candidate's thumbs-down rate is equal, worse or better):

* ``independent``: every call independent, constant rates;
* ``daily_cycle``: thumbs-down 3-7 % over each day, in both arms;
* ``trend``: thumbs-down rising 4 -> 8 % over the first 48 h, in both arms;
* ``sticky_moderate`` / ``sticky_heavy``: 5,000 sticky users (the split is by user) with
  lognormal (sigma 1) / Pareto (alpha 1.2) call volumes and their own rates (gamma
  multipliers with shape 2 / 1), and a week of pre-canary traffic (all on the baseline)
  whose per-user sums are the controller's covariates (CUPED, `CanaryPolicy.pre_period_s`);
* ``worse`` / ``better``: the candidate's thumbs-down rate is 2.5 points higher / lower.

``rollback_rate``/``advance_rate``: share of runs rolled back / promoted to primary within
the horizon; ``median_checks``: checks to the first decision (the first advance or a
rollback); ``median_calls`` the calls (both arms) until then, next to the calls a one-shot
z-test of the same decision at the same alpha with 80 % power needs at the first step's share
(one-sided ``alpha / 3`` to detect the worse candidate, every guardrail's non-inferiority test
otherwise): ``fixed_horizon_calls`` per call (no clustering), and, the valid comparators with
sticky users, ``fixed_horizon_calls_clustered`` (variances times their design effect at that many
calls; ``None`` when no sample size reaches 80 %, with the power reached in two years) and
``fixed_horizon_calls_clustered_cuped`` (the design effect left after the same covariates);
``calls_ratio`` and ``calls_ratio_clustered`` divide ``median_calls`` by the per-call and the
CUPED-adjusted fixed horizon (`bench/controller_scenarios.py`). Sticky scenarios run in chunks
of 100 canaries (their own seeds) spread over ``--jobs`` processes.

    python bench/controller_bench.py [--runs 500] [--json] [--only NAME] [--seed 1] [--jobs 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from controller_scenarios import (
    BASE,
    HORIZON,
    METRIC_NAMES,
    SCENARIOS,
    TRAFFIC,
    Scenario,
    fixed_horizon_calls,
    fixed_horizon_clustered,
)

from evals.online.decision import CanaryPolicy, Observation, decide
from evals.online.outcomes import METRICS, srm_check
from evals.online.strata import Cell, Cross, Evidence, pre_period, stratified_difference


@dataclass
class Result:
    scenario: Scenario
    runs: int
    outcome: np.ndarray  # 0 wait, 1 rollback, 2 primary
    first_check: np.ndarray
    first_calls: np.ndarray
    rollback_share: np.ndarray
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


class Canaries:
    """``runs`` canaries advancing in lockstep, one hourly check at a time.

    Per-run arrays hold only the canaries still running (they are compacted as runs end);
    ``self.ids`` maps a row to its run.
    """

    def __init__(self, scenario: Scenario, policy: CanaryPolicy, runs: int, rng: np.random.Generator) -> None:
        self.s, self.policy, self.runs, self.rng = scenario, policy, runs, rng
        self.shares = [x for x in policy.steps if x < 100]
        self.k = len(self.shares)
        self.outcome = np.zeros(runs, dtype=int)
        self.first_check = np.full(runs, HORIZON)
        self.first_calls = np.full(runs, float(HORIZON * TRAFFIC))
        self.rollback_share = np.full(runs, np.nan)
        self.ids = np.arange(runs)
        self.finished = np.zeros(runs, dtype=bool)
        """Rows whose canary ended (left out of decisions until the next compaction)."""
        self.step = np.zeros(runs, dtype=int)
        self.step_checks = np.zeros(runs, dtype=int)
        self.step_calls = np.zeros((runs, 2), dtype=np.int64)
        self.step_units = np.zeros((runs, 2), dtype=np.int64)
        self.calls = np.zeros(runs)
        self.n = np.zeros((runs, self.k, 2))  # independent calls: calls per step and arm
        self.ev = {m: np.zeros((runs, self.k, 2)) for m in METRIC_NAMES}  # and events
        if scenario.users:
            self._init_users()
        self.screened = 0

    def _rows(self) -> list[str]:
        names = ["ids", "step", "step_checks", "step_calls", "step_units", "calls", "n", "finished"]
        if self.s.users:
            names += ["lam", "cur_n", "cur_seen", "xn"]
        return names

    def _compact(self, keep: np.ndarray) -> None:
        for name in self._rows():
            setattr(self, name, getattr(self, name)[keep])
        tables = ("ev", "mult", "cur_y", "moments", "z_past", "class_sums", "xy")
        for d in tables if self.s.users else ("ev",):
            table = getattr(self, d)
            for m in list(table):
                table[m] = table[m][keep]

    # -- sticky users ---------------------------------------------------------------------
    def _init_users(self) -> None:
        s, rng, u, r, k = self.s, self.rng, self.s.users, self.runs, self.k
        if s.volume == "pareto":
            vol = rng.pareto(s.volume_param, size=(r, u)) + 1.0
        else:
            vol = rng.lognormal(0.0, s.volume_param, size=(r, u))
        self.lam = TRAFFIC * vol / vol.sum(axis=1, keepdims=True)
        self.mult = {
            m: np.minimum(rng.gamma(s.heterogeneity, 1 / s.heterogeneity, size=(r, u)), 0.5 / BASE[m])
            for m in METRIC_NAMES
        }
        # the pre-period: every call served by the baseline, at the scenario's starting rates
        self.xn = rng.poisson(self.lam * s.pre_hours).astype(float)
        start = s.rates(0.0)
        self.xy = {
            m: rng.binomial(self.xn.astype(np.int64), np.minimum(start[m][0] * self.mult[m], 1.0)).astype(
                float
            )
            for m in METRIC_NAMES
        }
        # users are exchangeable, so user i's bucket is i / u: at share x the candidate arm is i < x% of u
        self.cut = [round(x / 100 * u) for x in self.shares]
        self.bounds = [0, *self.cut, u]  # user class c: in the candidate arm from step c on
        self.cur_y = {m: np.zeros((r, u)) for m in METRIC_NAMES}  # the current step's per-user sums
        self.cur_n = np.zeros((r, u))
        self.cur_seen = np.zeros((r, u), dtype=bool)
        # per user class, the frozen moments sum_u z z^T of the finished steps, z = (Y_0.., N_0..,
        # PY_0.., PN_0..) with PY_s, PN_s the user's pre-period sums where seen at step s (the
        # covariate cells' values), and the frozen per-class sums of Y, N and units seen
        self.moments = {m: np.zeros((r, k + 1, 4 * k, 4 * k)) for m in METRIC_NAMES}
        self.z_past = {m: np.zeros((r, u, 4 * k)) for m in METRIC_NAMES}
        self.class_sums = {m: np.zeros((r, 5, k + 1, k)) for m in METRIC_NAMES}  # units, y, n, PY, PN

    def _sticky_hour(self, hour: float) -> None:
        """One hour of calls: Poisson per user (2,000 per hour in all, by volume); only the users
        called are touched afterwards."""
        rng, u = self.rng, self.s.users
        r = len(self.ids)
        counts = rng.poisson(self.lam).ravel()
        hit = np.flatnonzero(counts)
        calls = counts[hit]
        row, user = np.divmod(hit, u)
        hit_cand = user < np.array(self.cut)[self.step][row]
        for m, (pb, pc) in self.s.rates(hour).items():
            p = np.minimum(np.where(hit_cand, pc, pb) * self.mult[m][row, user], 1.0)
            self.cur_y[m][row, user] += rng.binomial(calls, p)
        self.cur_n[row, user] += calls
        new = ~self.cur_seen[row, user]
        self.cur_seen[row, user] = True
        n_c = np.bincount(row, weights=calls * hit_cand, minlength=r)
        n_all = np.bincount(row, weights=calls, minlength=r)
        self.step_calls[:, 1] += n_c.astype(np.int64)
        self.step_calls[:, 0] += (n_all - n_c).astype(np.int64)
        self.step_units[:, 1] += np.bincount(row, weights=new & hit_cand, minlength=r).astype(np.int64)
        self.step_units[:, 0] += np.bincount(row, weights=new & ~hit_cand, minlength=r).astype(np.int64)
        self.calls += n_all

    def _freeze(self, rows: np.ndarray) -> None:
        """Rows that advance: their current step's sums become a finished step, and its moments frozen."""
        k = self.k
        for r in rows:
            s = self.step[r]
            for m in METRIC_NAMES:
                z = self.z_past[m][r]
                z[:, s] = self.cur_y[m][r]
                z[:, k + s] = self.cur_n[r]
                z[:, 2 * k + s] = self.xy[m][r] * self.cur_seen[r]
                z[:, 3 * k + s] = self.xn[r] * self.cur_seen[r]
                for c in range(k + 1):
                    lo, hi = self.bounds[c], self.bounds[c + 1]
                    zc = z[lo:hi]
                    self.moments[m][r, c] = zc.T @ zc
                    self.class_sums[m][r, 0, c, s] = self.cur_seen[r, lo:hi].sum()
                    self.class_sums[m][r, 1, c, s] = self.cur_y[m][r, lo:hi].sum()
                    self.class_sums[m][r, 2, c, s] = self.cur_n[r, lo:hi].sum()
                    self.class_sums[m][r, 3, c, s] = z[lo:hi, 2 * k + s].sum()
                    self.class_sums[m][r, 4, c, s] = z[lo:hi, 3 * k + s].sum()
                self.cur_y[m][r] = 0
            self.cur_n[r] = 0
            self.cur_seen[r] = False

    def _effective_units(self) -> np.ndarray:
        """Per run, the smaller arm's effective units (`Cell.effective_units` summed over compared steps)."""
        k, t1 = self.k, self.k
        m0 = METRIC_NAMES[0]
        rows = np.arange(len(self.ids))
        n = self.class_sums[m0][:, 2].copy()  # (r, classes, steps)
        nn = np.stack([self.moments[m0][:, c, t1 + np.arange(k), t1 + np.arange(k)] for c in range(k + 1)], 1)
        for c in range(k + 1):
            lo, hi = self.bounds[c], self.bounds[c + 1]
            n[rows, c, self.step] += self.cur_n[:, lo:hi].sum(axis=1)
            nn[rows, c, self.step] = (self.cur_n[:, lo:hi] ** 2).sum(axis=1)
        eff = np.zeros((len(rows), 2))
        for st in range(k):
            cells = []
            for cand in (False, True):
                cls = [c for c in range(k + 1) if (c <= st) == cand]
                cells.append((n[:, cls, st].sum(axis=1), nn[:, cls, st].sum(axis=1)))
            both = (cells[0][0] > 0) & (cells[1][0] > 0)
            for a, (nx, nnx) in enumerate(cells):
                eff[:, a] += np.where(both, nx * nx / np.where(nnx > 0, nnx, 1.0), 0.0)
        out: np.ndarray = eff.min(axis=1)
        return out

    def _sticky_evidence(self, sub: np.ndarray) -> dict[str, Evidence]:
        """Cells, covariate cells and cross sums per metric, as the log query returns them, for ``sub``.

        Column ``j`` of a user's ``z`` (``4k`` columns) is one node's value: ``Y_s`` (``j = s``),
        ``N_s`` (``k + s``), and the covariate cell's ``PY_s``, ``PN_s`` (``2k + s``, ``3k + s``).
        """
        k = self.k
        if (
            len(self.ids) // 2 < len(sub) < len(self.ids)
        ):  # cheaper to compute every row than to copy most of them
            return _take(self._sticky_evidence(np.arange(len(self.ids))), sub)
        rows = np.arange(len(sub))
        every = len(sub) == len(self.ids)  # no copies when every row is asked for

        def pick(a: np.ndarray) -> np.ndarray:
            return a if every else a[sub]

        step = pick(self.step)
        cur_n, cur_seen = pick(self.cur_n), pick(self.cur_seen)
        xn = pick(self.xn)
        with_pre = self.s.pre_hours > 0
        cols = (step, k + step, 2 * k + step, 3 * k + step)
        # columns of finished steps (the only nonzero ones of z_past)
        done = int(step.max()) if len(step) else 0
        past = np.array([i * k + t for i in range(4) for t in range(done)], dtype=int)
        out = {}
        for m in METRIC_NAMES:
            # moments: frozen ones plus those involving the current step's columns
            z_past = pick(self.z_past[m])  # (r, u, 4k)
            seen = cur_seen.astype(float)
            cur = np.stack([pick(self.cur_y[m]), cur_n, pick(self.xy[m]) * seen, xn * seen], axis=2)
            frozen = pick(self.moments[m])
            mom = []
            for c in range(k + 1):
                lo, hi = self.bounds[c], self.bounds[c + 1]
                cp = np.zeros((len(rows), 4, 4 * k))
                if len(past):
                    cp[:, :, past] = np.matmul(cur[:, lo:hi].transpose(0, 2, 1), z_past[:, lo:hi][:, :, past])
                cc = np.matmul(cur[:, lo:hi].transpose(0, 2, 1), cur[:, lo:hi])  # (r, 4, 4)
                mm = frozen[:, c].copy()
                for i, col in enumerate(cols):
                    mm[rows, col, :] = cp[:, i, :]
                    mm[rows, :, col] = cp[:, i, :]
                for i, ci in enumerate(cols):
                    for j, cj in enumerate(cols):
                        mm[rows, ci, cj] = cc[:, i, j]
                mom.append(mm)
            # per class: units, Y, N, PY, PN summed per step, (r, k) each
            sums = pick(self.class_sums[m])
            now = (cur_seen, cur[:, :, 0], cur_n, cur[:, :, 2], cur[:, :, 3])
            totals: list[list[np.ndarray]] = []
            for c in range(k + 1):
                lo, hi = self.bounds[c], self.bounds[c + 1]
                totals.append([])
                for i, values in enumerate(now):
                    total = sums[:, i, c, :].copy()
                    total[rows, step] += values[:, lo:hi].sum(axis=1)
                    totals[c].append(total)

            def classes(*pairs: tuple[int, str]) -> list[int]:
                return _classes(k, pairs)

            summed: dict[tuple[int, ...], np.ndarray] = {}

            def moments(
                cls: list[int],
                summed: dict[tuple[int, ...], np.ndarray] = summed,
                mom: list[np.ndarray] = mom,
            ) -> np.ndarray:
                """The moments summed over the classes ``cls`` (computed once per set)."""
                key = tuple(cls)
                if key not in summed:
                    summed[key] = sum((mom[c] for c in cls[1:]), mom[cls[0]].copy())
                return summed[key]

            # nodes: (period name, column of Y, column of N) per step and kind
            kinds = [("main", 0)] + ([("pre", 2 * k)] if with_pre else [])

            def node(s: int, kind: str, kinds: list[tuple[str, int]] = kinds) -> tuple[str, int, int]:
                off = dict(kinds)[kind]
                return (pre_period(str(s)) if kind == "pre" else str(s), off + s, off + k + s)

            cells, covariates, cross = [], [], {}
            for s in range(k):
                for a in ("baseline", "candidate"):
                    cls = classes((s, a))
                    mm = moments(cls)
                    for kind, _ in kinds:
                        name, iy, i_n = node(s, kind)
                        j = 1 if kind == "main" else 3  # where this kind's Y and N sums are
                        cell = Cell(
                            name,
                            a,
                            sum(totals[c][0][:, s] for c in cls),
                            sum(totals[c][j][:, s] for c in cls),
                            sum(totals[c][j + 1][:, s] for c in cls),
                            mm[:, iy, iy],
                            mm[:, i_n, i_n],
                            mm[:, iy, i_n],
                        )
                        (cells if kind == "main" else covariates).append(cell)
            nodes = [(s, a, kind) for s in range(k) for a in ("baseline", "candidate") for kind, _ in kinds]
            for i, (s, a, ka) in enumerate(nodes):
                for t, b, kb in nodes[i + 1 :]:
                    cls = classes((s, a), (t, b))
                    if not cls:
                        continue
                    mm = moments(cls)
                    ns, ys_, ns_ = node(s, ka)
                    nt, yt, nt_ = node(t, kb)
                    cross[((ns, a), (nt, b))] = Cross(
                        mm[:, ys_, yt], mm[:, ys_, nt_], mm[:, ns_, yt], mm[:, ns_, nt_]
                    )
            out[m] = stratified_difference(cells, cross, rate=True, covariates=covariates)
        return out

    # -- independent calls ----------------------------------------------------------------
    def _independent_hour(self, hour: float) -> None:
        rng = self.rng
        rows = np.arange(len(self.ids))
        n_c = rng.binomial(TRAFFIC, np.array(self.shares)[self.step] / 100)
        n_b = TRAFFIC - n_c
        self.n[rows, self.step, 0] += n_b
        self.n[rows, self.step, 1] += n_c
        for m, (pb, pc) in self.s.rates(hour).items():
            self.ev[m][rows, self.step, 0] += rng.binomial(n_b, pb)
            self.ev[m][rows, self.step, 1] += rng.binomial(n_c, pc)
        self.step_calls[:, 0] += n_b
        self.step_calls[:, 1] += n_c
        self.step_units[:] = self.step_calls
        self.calls += TRAFFIC

    def _independent_evidence(self) -> dict[str, Evidence]:
        out = {}
        for m in METRIC_NAMES:
            cells = []
            for s in range(self.k):
                for a, arm in enumerate(("baseline", "candidate")):
                    cells.append(Cell.per_call(str(s), arm, self.ev[m][:, s, a], self.n[:, s, a]))
            out[m] = stratified_difference(cells, rate=True)
        return out

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> None:
        for check in range(1, HORIZON + 1):
            if not len(self.ids):
                return
            if self.s.users:
                self._sticky_hour(float(check))
                # an arm worth fewer than min_units effective units decides nothing (every
                # guardrail is "insufficient"), so only the others need the full evidence
                sub = np.flatnonzero(self._effective_units() >= self.policy.min_units)
                evidence = _spread(self._sticky_evidence(sub), sub, len(self.ids)) if len(sub) else {}
            else:
                self._independent_hour(float(check))
                evidence = self._independent_evidence()
            self.step_checks += 1
            possible = np.flatnonzero(self._may_decide(evidence)) if evidence else np.zeros(0, dtype=int)
            self.screened += len(self.ids) - len(possible)
            cols = {
                m: {f: np.asarray(getattr(ev, f)).tolist() for f in _FIELDS} for m, ev in evidence.items()
            }
            done, advanced = [], []
            for j in possible:
                if self.finished[j]:
                    continue
                ev = {m: Evidence(**{f: c[f][j] for f in _FIELDS}) for m, c in cols.items()}
                action = self._decide(check, int(j), ev)
                if action == "end":
                    done.append(j)
                elif action == "advance":
                    advanced.append(j)
            if advanced and self.s.users:
                self._freeze(np.array(advanced))
            for j in advanced:
                self.step[j] += 1
                self.step_checks[j] = 0
                self.step_calls[j] = 0
                self.step_units[j] = 0
            self.finished[done] = True
            # copying every per-user array is costly: compact once a tenth of the rows has ended
            if self.finished.sum() > max(len(self.ids) // 10, 0) or check == HORIZON:
                self._compact(~self.finished)

    def _may_decide(self, evidence: dict[str, Evidence]) -> np.ndarray:
        """A necessary condition for a decision, so `decide` runs only where one is possible.

        The mixture likelihood ratio is at most the likelihood ratio at the best effect,
        ``exp(z+^2 / 2)`` (``z+`` the one-sided z statistic), so where that stays under
        ``1 / level`` no mSPRT can reject. A rigorous screen: it changes no decision.
        """
        pol = self.policy
        rollback = np.zeros(len(self.ids), dtype=bool)
        advance = np.ones(len(self.ids), dtype=bool)
        for g in pol.guardrails:
            ev = evidence[g.metric]
            good = -np.asarray(ev.estimate, dtype=float)  # every guardrail here is lower-is-better
            sd = np.sqrt(np.asarray(ev.variance, dtype=float))
            with np.errstate(divide="ignore", invalid="ignore"):
                z_worse = np.where(sd > 0, -good / sd, np.where(good < 0, np.inf, 0.0))
                z_ni = np.where(sd > 0, (good + g.margin) / sd, np.where(good + g.margin > 0, np.inf, 0.0))
            zw = np.maximum(z_worse, 0.0)
            zn = np.maximum(z_ni, 0.0)
            seen = (np.asarray(ev.n_baseline) > 0) & (np.asarray(ev.n_candidate) > 0)
            rollback |= seen & (zw * zw / 2 > math.log(len(pol.guardrails) / pol.alpha))
            advance &= seen & (zn * zn / 2 > math.log(1 / pol.alpha))
        return rollback | advance

    def _decide(self, check: int, j: int, evidence: dict[str, Evidence]) -> str:
        share = self.shares[self.step[j]]
        sb, sc = (int(x) for x in self.step_calls[j])
        ub, uc = (int(x) for x in self.step_units[j])
        srm_p = srm_check(ub, uc, share / 100)[1] if ub + uc >= 100 else None
        obs = Observation(
            "canary",
            share,
            step_calls=(sb, sc),
            srm_p=srm_p,
            specs=METRICS,
            evidence=evidence,
            step_age_s=float(self.step_checks[j]) * self.policy.check_interval_s,
        )
        d = decide(self.policy, obs)
        if d.action == "wait":
            return "wait"
        r = self.ids[j]
        if self.first_check[r] == HORIZON:
            self.first_check[r] = check
            self.first_calls[r] = self.calls[j]
        if d.action == "rollback":
            self.outcome[r], self.rollback_share[r] = 1, share
            return "end"
        if d.mode_to == "primary":
            self.outcome[r] = 2
            return "end"
        return "advance"


_FIELDS = tuple(f for f in Evidence.__dataclass_fields__ if f != "period_weights")


@functools.cache
def _classes(k: int, pairs: tuple[tuple[int, str], ...]) -> list[int]:
    """User classes (class ``c``: in the candidate arm from step ``c`` on) in arm ``a`` at each step ``s``."""
    return [c for c in range(k + 1) if all((c <= s) == (a == "candidate") for s, a in pairs)]


def _take(evidence: dict[str, Evidence], rows: np.ndarray) -> dict[str, Evidence]:
    """The rows ``rows`` of array evidence."""
    return {
        m: Evidence(**{f: np.asarray(getattr(ev, f))[rows] for f in _FIELDS}) for m, ev in evidence.items()
    }


def _spread(evidence: dict[str, Evidence], sub: np.ndarray, size: int) -> dict[str, Evidence]:
    """Evidence for the rows ``sub`` as full-size arrays; other rows have no observations (no decision)."""
    out = {}
    for m, ev in evidence.items():
        vals: dict[str, Any] = {}
        for f in _FIELDS:
            full = np.zeros(size)
            full[sub] = np.asarray(getattr(ev, f), dtype=float)
            vals[f] = full
        out[m] = Evidence(**vals)
    return out


def run_scenario(s: Scenario, policy: CanaryPolicy, runs: int, seed: int) -> Result:
    t0 = time.perf_counter()
    sim = Canaries(s, policy, runs, np.random.default_rng(seed))
    sim.run()
    return Result(
        s, runs, sim.outcome, sim.first_check, sim.first_calls, sim.rollback_share, time.perf_counter() - t0
    )


def summary(res: Result, policy: CanaryPolicy) -> dict[str, Any]:
    fh = fixed_horizon_calls(res.scenario, policy)
    fh_plain, power_plain = fixed_horizon_clustered(res.scenario, policy, covariates=False)
    fh_cuped, power_cuped = fixed_horizon_clustered(res.scenario, policy, covariates=True)
    med_calls = float(np.median(res.first_calls))
    rolled = res.outcome == 1
    return {
        "scenario": res.scenario.name,
        "truth": res.scenario.truth,
        "runs": res.runs,
        "rollback_rate": float(rolled.mean()),
        "advance_rate": float((res.outcome == 2).mean()),
        "median_checks": float(np.median(res.first_check)),
        "median_calls": med_calls,
        "fixed_horizon_calls": fh,
        "calls_ratio": med_calls / fh,
        "fixed_horizon_calls_clustered": fh_plain,
        "fixed_horizon_power_clustered": power_plain,
        "fixed_horizon_calls_clustered_cuped": fh_cuped,
        "fixed_horizon_power_clustered_cuped": power_cuped,
        "calls_ratio_clustered": med_calls / fh_cuped if fh_cuped else None,
        "rollback_before_50": float((rolled & (res.rollback_share < 50)).mean()),
        "undecided_at_horizon": float((res.outcome == 0).mean()),
        "seconds": res.seconds,
    }


CHUNK = 100
"""Sticky canaries per job: the per-user arrays of 100 canaries x 5,000 users stay small, and
the chunks spread over the ``--jobs`` processes."""


def _one(job: tuple[int, int, int, int]) -> Result:
    i, runs, seed, chunk = job
    return run_scenario(SCENARIOS[i], CanaryPolicy(), runs, seed + i + 1000 * chunk)


def _merge(parts: list[Result]) -> Result:
    cat = np.concatenate
    return Result(
        parts[0].scenario,
        sum(p.runs for p in parts),
        cat([p.outcome for p in parts]),
        cat([p.first_check for p in parts]),
        cat([p.first_calls for p in parts]),
        cat([p.rollback_share for p in parts]),
        sum(p.seconds for p in parts),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", action="append", help="Run only this scenario (repeatable).")
    ap.add_argument("--jobs", type=int, default=2, help="Scenarios run in parallel processes (default 2).")
    ap.add_argument("--json", action="store_true", help="Print the results as a JSON list.")
    args = ap.parse_args(argv)
    picked = [i for i, s in enumerate(SCENARIOS) if not args.only or s.name in args.only]
    # sticky scenarios in chunks of CHUNK canaries (each with its own seed), the slow ones first,
    # so the workers finish together
    jobs = []
    for i in picked:
        size = CHUNK if SCENARIOS[i].users else args.runs
        jobs += [
            (i, min(size, args.runs - lo), args.seed, c) for c, lo in enumerate(range(0, args.runs, size))
        ]
    jobs.sort(key=lambda j: -SCENARIOS[j[0]].users)
    t0 = time.perf_counter()
    if args.jobs > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            parts = pool.map(_one, jobs, chunksize=1)
    else:
        parts = [_one(j) for j in jobs]
    policy = CanaryPolicy()
    rows = [
        summary(_merge([p for p, j in zip(parts, jobs, strict=True) if j[0] == i]), policy) for i in picked
    ]
    order = {s.name: i for i, s in enumerate(SCENARIOS)}
    rows.sort(key=lambda r: order[r["scenario"]])
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(
            f"{r['scenario']:16} {r['truth']:6} runs {r['runs']}  rollback {r['rollback_rate']:.3f}  "
            f"advance {r['advance_rate']:.3f}  median checks {r['median_checks']:.0f}  calls "
            f"{r['median_calls']:.0f} vs fixed-horizon {r['fixed_horizon_calls']:.0f} "
            f"({r['calls_ratio']:.2f}x)  rollback<50% {r['rollback_before_50']:.3f}  "
            f"undecided {r['undecided_at_horizon']:.3f}  [{r['seconds']:.0f}s]"
        )
    print(f"total {time.perf_counter() - t0:.0f}s with {args.jobs} job(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
