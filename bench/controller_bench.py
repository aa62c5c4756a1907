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
the horizon; ``median_checks``: checks to the first decision (the first tested advance or a
rollback; widening a step too small to test is not a decision, ``widened`` counts the runs
widened); ``median_calls`` the calls (both arms) until then, next to the calls a one-shot
z-test of the same decision at the same alpha with 80 % power needs (one-sided ``alpha / 3`` to
detect the worse candidate, every guardrail's non-inferiority test otherwise,
`bench/controller_scenarios.py`): ``fixed_horizon_calls`` per call at the first step's share
(the valid comparator without sticky users); ``fixed_horizon_calls_clustered`` and
``..._clustered_cuped``, the same with each variance times the population's design effect
(without and with the covariates; ``None`` when no sample size reaches 80 %); and, the valid
comparator with sticky users besides the latter, ``fixed_horizon_calls_simulated``: the one-shot
design with the controller's estimator, its power averaged over simulated populations
(`controller_horizon`). ``calls_ratio``, ``calls_ratio_clustered`` and ``calls_ratio_valid``
divide ``median_calls`` by the per-call, the CUPED-clustered and the valid fixed horizon (with
sticky users the smaller, so the more demanding, of the two CUPED ones); ``decided_right_by_valid_horizon``
is the share of canaries whose first decision was the right one by then (80 % for the fixed
design). Sticky scenarios run in chunks of 250 canaries (their own seeds) spread over
``--jobs`` processes, with their simulated fixed horizons as jobs of their own.

    python bench/controller_bench.py [--runs 500] [--json] [--only NAME] [--seed 1] [--jobs 2]
"""

from __future__ import annotations

import argparse
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
    HORIZON,
    METRIC_NAMES,
    SCENARIOS,
    TRAFFIC,
    Scenario,
    fixed_horizon_calls,
    fixed_horizon_clustered,
    fixed_horizon_simulated,
)
from controller_sticky import FIELDS, StickyUsers

from evals.online.decision import CanaryPolicy, Observation, decide
from evals.online.outcomes import METRICS, srm_check
from evals.online.strata import Cell, Evidence, stratified_difference


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
        self.first_action = np.zeros(runs, dtype=int)
        """The first decision: 1 rollback, 2 advance (0: none)."""
        self.widened = np.full(runs, np.nan)
        """The share each run was widened from (`CanaryPolicy.max_untested_share`), or NaN."""
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
        self.users = StickyUsers(scenario, self.shares, runs, rng) if scenario.users else None
        self.screened = 0

    def _compact(self, keep: np.ndarray) -> None:
        for name in ("ids", "step", "step_checks", "step_calls", "step_units", "calls", "n", "finished"):
            setattr(self, name, getattr(self, name)[keep])
        self.ev = {m: table[keep] for m, table in self.ev.items()}
        if self.users is not None:
            self.users.compact(keep)

    # -- sticky users (`controller_sticky`) ------------------------------------------------
    def _sticky_hour(self, hour: float) -> None:
        assert self.users is not None
        arm_calls, units, calls = self.users.hour(hour, self.step)
        self.step_calls += arm_calls
        self.step_units += units
        self.calls += calls

    def _freeze(self, rows: np.ndarray) -> None:
        """Rows that advance: their current step's sums become a finished step."""
        assert self.users is not None
        self.users.freeze(rows, self.step[rows])

    def _effective_units(self) -> np.ndarray:
        assert self.users is not None
        return self.users.effective_units(self.step)

    def _sticky_evidence(self, sub: np.ndarray) -> dict[str, Evidence]:
        """Cells, covariate cells and cross sums per metric, as the log query returns them, for ``sub``."""
        assert self.users is not None
        return self.users.evidence(sub, self.step[sub])

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
                evidence = self._sticky_evidence(np.arange(len(self.ids)))
            else:
                self._independent_hour(float(check))
                evidence = self._independent_evidence()
            self.step_checks += 1
            possible = np.flatnonzero(self._may_decide(evidence)) if evidence else np.zeros(0, dtype=int)
            self.screened += len(self.ids) - len(possible)
            cols = {m: {f: np.asarray(getattr(ev, f)).tolist() for f in FIELDS} for m, ev in evidence.items()}
            done, advanced = [], []
            for j in possible:
                if self.finished[j]:
                    continue
                ev = {m: Evidence(**{f: c[f][j] for f in FIELDS}) for m, c in cols.items()}
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
        return rollback | advance | self._may_widen(evidence)

    def _may_widen(self, evidence: dict[str, Evidence]) -> np.ndarray:
        """Rows whose step may be too small to test (`evals.online.decision.too_small_to_test`)."""
        pol = self.policy
        nxt = np.array([*self.shares[1:], 100.0])[self.step]
        out = (nxt <= pol.max_untested_share) & (self.step_checks * pol.check_interval_s >= pol.min_step_s)
        for g in pol.guardrails:
            ev = evidence[g.metric]
            units = np.maximum(
                np.asarray(ev.effective_units_candidate), np.asarray(ev.projected_units_candidate)
            )
            out &= units < pol.min_units
        return out

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
        if d.widened:  # an untested advance: not a decision
            self.widened[r] = share
            return "advance"
        if self.first_check[r] == HORIZON:
            self.first_check[r] = check
            self.first_calls[r] = self.calls[j]
            self.first_action[r] = 1 if d.action == "rollback" else 2
        if d.action == "rollback":
            self.outcome[r], self.rollback_share[r] = 1, share
            return "end"
        if d.mode_to == "primary":
            self.outcome[r] = 2
            return "end"
        return "advance"


def run_scenario(s: Scenario, policy: CanaryPolicy, runs: int, seed: int) -> Result:
    t0 = time.perf_counter()
    sim = Canaries(s, policy, runs, np.random.default_rng(seed))
    sim.run()
    return Result(
        s,
        runs,
        sim.outcome,
        sim.first_check,
        sim.first_calls,
        sim.rollback_share,
        time.perf_counter() - t0,
        {"widened": sim.widened, "first_action": sim.first_action},
    )


def summary(
    res: Result, policy: CanaryPolicy, simulated: tuple[float | None, float, float] | None
) -> dict[str, Any]:
    """The scenario's row; ``simulated``: `fixed_horizon_simulated` (sticky scenarios only)."""
    fh = fixed_horizon_calls(res.scenario, policy)
    fh_plain, power_plain = fixed_horizon_clustered(res.scenario, policy, covariates=False)
    fh_cuped, power_cuped = fixed_horizon_clustered(res.scenario, policy, covariates=True)
    fh_sim, power_sim, widened_sim = simulated if simulated is not None else (None, None, None)
    # with sticky users, the more demanding (smaller) of the two clustered, CUPED-adjusted horizons
    valid = min(x for x in (fh_cuped, fh_sim, math.inf) if x) if res.scenario.users else fh
    valid = None if valid == math.inf else valid
    med_calls = float(np.median(res.first_calls))
    rolled = res.outcome == 1
    right = res.extra["first_action"] == (1 if res.scenario.truth == "worse" else 2)
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
        "fixed_horizon_calls_simulated": fh_sim,
        "fixed_horizon_power_simulated": power_sim,
        "fixed_horizon_widened_simulated": widened_sim,
        "fixed_horizon_calls_valid": valid,
        "calls_ratio_valid": med_calls / valid if valid else None,
        "decided_right_by_valid_horizon": float((right & (res.first_calls <= valid)).mean())
        if valid
        else None,
        "rollback_before_50": float((rolled & (res.rollback_share < 50)).mean()),
        "undecided_at_horizon": float((res.outcome == 0).mean()),
        "widened": float(np.isfinite(res.extra["widened"]).mean()),
        "seconds": res.seconds,
    }


CHUNK = 250
"""Sticky canaries per job: the per-user arrays of 250 canaries x 5,000 users stay small (about
350 MB), and the chunks spread over the ``--jobs`` processes."""


FIXED_HORIZON_REPS = 200
"""Populations in `fixed_horizon_simulated` per sticky scenario."""


def _one(job: tuple[int, int, int, int]) -> Any:
    """A chunk of canaries; chunk -1: the scenario's simulated fixed horizon."""
    i, runs, seed, chunk = job
    if chunk < 0:
        return fixed_horizon_simulated(SCENARIOS[i], CanaryPolicy(), reps=FIXED_HORIZON_REPS)
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
        {k: cat([p.extra[k] for p in parts]) for k in ("widened", "first_action")},
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
        if SCENARIOS[i].users:
            jobs.append((i, 0, args.seed, -1))
    jobs.sort(key=lambda j: -SCENARIOS[j[0]].users)
    t0 = time.perf_counter()
    if args.jobs > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(args.jobs, len(jobs))) as pool:
            parts = pool.map(_one, jobs, chunksize=1)
    else:
        parts = [_one(j) for j in jobs]
    policy = CanaryPolicy()
    rows = []
    for i in picked:
        mine = [(p, j) for p, j in zip(parts, jobs, strict=True) if j[0] == i]
        sim = next((p for p, j in mine if j[3] < 0), None)
        rows.append(summary(_merge([p for p, j in mine if j[3] >= 0]), policy, sim))
    order = {s.name: i for i, s in enumerate(SCENARIOS)}
    rows.sort(key=lambda r: order[r["scenario"]])
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        print(
            f"{r['scenario']:16} {r['truth']:6} runs {r['runs']}  rollback {r['rollback_rate']:.3f}  "
            f"advance {r['advance_rate']:.3f}  median checks {r['median_checks']:.0f}  calls "
            f"{r['median_calls']:.0f} vs fixed-horizon {r['fixed_horizon_calls_valid'] or float('nan'):.0f} "
            f"({r['calls_ratio_valid'] or float('nan'):.2f}x; per call {r['calls_ratio']:.2f}x)  rollback<50% "
            f"{r['rollback_before_50']:.3f}  undecided {r['undecided_at_horizon']:.3f}  widened {r['widened']:.3f}  "
            f"[{r['seconds']:.0f}s]"
        )
    print(f"total {time.perf_counter() - t0:.0f}s with {args.jobs} job(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
