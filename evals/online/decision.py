"""The canary controller's decision: a pure function of the policy and what was observed.

`decide(policy, observation) -> Decision` rolls back, advances one ramp step, or waits;
`forecast(policy, observation)` says how many more calls (and how long, at the current
traffic) a decision should take. Neither reads a log, a clock or any state: the controller
(`evals.controller`) gathers the `Observation`, and `bench/controller_bench.py` simulates
thousands of canaries through the same code.

Evidence per guardrail is `evals.strata.Evidence`: the candidate-minus-baseline difference
combined over periods of constant share (never pooled across shares), with a unit-level
variance. Rules, per check, while the route is in ``canary`` mode:

1. **Roll back at once** (mode ``shadow``, share 0) when any guardrail is significantly
   worse: the one-sided mSPRT of "candidate no worse than baseline" (``theta0 = 0``)
   rejects at ``alpha / len(guardrails)`` (Bonferroni), with at least
   ``rollback_min_samples`` calls and ``min_units`` effective units per arm. The evidence accumulates over the whole canary,
   so each guardrail is one always-valid test and the false-rollback rate of an equal
   candidate stays below ``alpha`` however often the controller looks.
2. **Advance one step** (the next ramp step; ``primary`` after the last) when every
   guardrail is shown not worse than its margin: the one-sided mSPRT of "candidate worse
   by at least the margin" (``theta0 = -margin`` in the metric's good direction) rejects
   at ``alpha`` on every guardrail (an intersection-union test needs no correction),
   each arm has ``min_samples`` calls, and the current step has lasted ``min_step_s``
   seconds with ``min_step_samples`` candidate calls, so each step is actually observed.
3. **Widen, untested** (the next step, at most ``max_untested_share``, default 5 %) when the
   step is too small to test: after the dwell time, the candidate's arm is worth fewer than
   ``min_units`` effective units, now and as projected for the step (a few heavy users carry
   it, `evals.strata.Cell.projected_units`), so no test, sequential or fixed, can ever decide
   at that share. The decision says so (``widened``); rollbacks stay possible at the wider step.
4. Otherwise **wait**; also wait (never advance or widen) while the split fails the
   sample-ratio-mismatch check at ``srm_alpha``.

The mSPRT's mixing scale ``tau`` is the guardrail's margin (or its declared ``tau``): fixed
by the policy, never re-estimated at a look. Each unit's calls in the ``pre_period_s`` before
the canary adjust the comparison (CUPED, `evals.strata`), so users' own habits, which make a
sticky arm noisy, mostly cancel.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evals.online.outcomes import METRICS, ArmStats, MetricSpec, msprt_log_lr, msprt_p_value
from evals.online.strata import Evidence, information_factor_to_reject, stratified_difference

Action = Literal["rollback", "advance", "wait", "paused", "idle"]


class ControllerError(Exception):
    """The controller cannot read its policy or state, or reach the gateway's admin API."""


class Guardrail(BaseModel):
    """A metric the candidate must not be worse on, and by how much it may be."""

    model_config = ConfigDict(extra="forbid")

    metric: str
    """A metric of `evals.outcomes.METRICS`, or a custom metric name."""
    margin: float = Field(gt=0)
    """Worst acceptable difference, in the metric's units, in its bad direction
    (``error_rate`` 0.01: at most one percentage point more errors)."""
    tau: float | None = Field(default=None, gt=0)
    """mSPRT mixing scale; defaults to ``margin``."""


def _default_guardrails() -> list[Guardrail]:
    return [
        Guardrail(metric="error_rate", margin=0.01),
        Guardrail(metric="thumbs_down_rate", margin=0.02),
        Guardrail(metric="regeneration_rate", margin=0.02),
    ]


class CanaryPolicy(BaseModel):
    """How one route's canary is judged and ramped."""

    model_config = ConfigDict(extra="forbid")

    route: str | None = None
    """The route it applies to (the CLI's ``--route`` wins)."""
    guardrails: list[Guardrail] = Field(default_factory=_default_guardrails, min_length=1)
    """Metrics the candidate must not be worse on."""
    alpha: float = Field(default=0.05, gt=0, lt=1)
    """Error rate of each decision: false rollback, false advance."""
    min_samples: int = Field(default=500, ge=1)
    """Calls per arm (since the canary began, in periods where both arms were served) before advancing."""
    min_step_samples: int = Field(default=100, ge=0)
    """Candidate calls at the current step before advancing from it."""
    min_step_s: float = Field(default=3600.0, ge=0)
    """Minimum dwell time at each step, in seconds, before advancing from it (rollbacks never wait)."""
    min_units: float = Field(default=10.0, ge=1)
    """Effective units per arm (Kish's ``(sum N)^2 / sum N^2`` over the sticky key's units) before any
    test decides, rollback included: with fewer, a few heavy users' own habits look like an effect.
    Calls without a sticky key count one each."""
    rollback_min_samples: int = Field(default=50, ge=1)
    """Calls per arm before a rollback (keeps the normal approximation honest)."""
    steps: list[float] = Field(default_factory=lambda: [1.0, 5.0, 25.0, 50.0, 100.0], min_length=1)
    """Ramp of candidate shares, in percent; after the last comes ``primary``."""
    check_interval_s: float = Field(default=3600.0, gt=0)
    """Seconds between checks."""
    srm_alpha: float = Field(default=0.001, gt=0, lt=1)
    """Sample-ratio-mismatch threshold: below it the controller does not advance."""
    max_untested_share: float = Field(default=5.0, ge=0, le=100)
    """Highest share the controller *widens* to from a step too small to test: after the dwell
    time, the candidate's arm is worth fewer than ``min_units`` effective units, both now and as
    projected for the step (its units' volumes, `evals.strata.Evidence.projected_units_candidate`),
    so no test can ever decide at that share. The advance is untested (``Decision.widened``);
    rollbacks stay possible at the wider step. 0 turns widening off."""
    pre_period_s: float = Field(default=7 * 86400.0, ge=0)
    """Covariate window before the canary began, in seconds: each unit's calls and outcomes there
    (every call served by the baseline) adjust the comparison (CUPED, `evals.strata`), which
    removes most of the variance of users' own habits; 0 turns the adjustment off."""

    @field_validator("steps")
    @classmethod
    def _ramp(cls, steps: list[float]) -> list[float]:
        if any(not 0 < s <= 100 for s in steps) or steps != sorted(set(steps)):
            raise ValueError("steps must be increasing percentages in (0, 100]")
        return steps

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], route: str | None = None) -> CanaryPolicy:
        """Load a YAML or JSON policy: one policy, or ``{"routes": {name: policy}}``."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ControllerError(f"cannot read policy {path}: {exc}") from exc
        if isinstance(data, dict) and isinstance(data.get("routes"), dict):
            if route not in data["routes"]:
                raise ControllerError(f"policy {path} has no entry for route {route!r}")
            data = {**data["routes"][route], "route": route}
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ControllerError(f"invalid policy {path}: {where}: {first['msg']}") from exc

    def next_share(self, share: float) -> float | None:
        """The step after ``share``; ``None`` when the next move is to ``primary``."""
        for step in self.steps:
            if step > share + 1e-9 and step < 100:
                return step
        return None


# -- the pure decision -------------------------------------------------------------------
@dataclass(frozen=True)
class Observation:
    """What the controller knows at one check."""

    mode: str
    share: float
    """Candidate share now, in percent."""
    baseline: ArmStats = field(default_factory=lambda: ArmStats("baseline"))
    """Served baseline calls since the canary began (counts; the evidence is in ``evidence``)."""
    candidate: ArmStats = field(default_factory=lambda: ArmStats("candidate"))
    step_calls: tuple[int, int] = (0, 0)
    """(baseline, candidate) served calls since the current step began."""
    srm_p: float | None = None
    specs: dict[str, MetricSpec] = field(default_factory=lambda: dict(METRICS))
    evidence: dict[str, Evidence] | None = None
    """Per metric, combined over periods of constant share. Without it, ``baseline`` and
    ``candidate`` are taken as one period (each call its own unit)."""
    step_age_s: float | None = None
    """Seconds since the current step began (None: not known, the dwell rule is not applied)."""
    traffic_per_s: float | None = None
    """Served calls per second at the current step (for the forecast)."""

    def evidence_for(self, metric: str) -> Evidence | None:
        if self.evidence is not None:
            return self.evidence.get(metric)
        b, c = self.baseline.metrics.get(metric), self.candidate.metrics.get(metric)
        if b is None or c is None:
            return None
        spec = self.specs.get(metric)
        cells = [b.cell("all", "baseline"), c.cell("all", "candidate")]
        return stratified_difference(cells, rate=spec is not None and spec.kind == "rate")


@dataclass(frozen=True)
class GuardrailCheck:
    metric: str
    status: Literal["worse", "not_worse", "undecided", "insufficient"]
    margin: float
    baseline: float | None
    candidate: float | None
    diff: float | None
    """Candidate minus baseline, in the metric's units (combined over periods)."""
    p_worse: float
    """Always-valid p-value of "the candidate is not worse"."""
    p_noninferior: float
    """Always-valid p-value of "the candidate is worse by at least the margin"."""
    n_baseline: int
    n_candidate: int
    variance: float = 0.0
    units_baseline: int = 0
    units_candidate: int = 0
    effective_units: float = 0.0
    """The smaller arm's effective number of units."""

    def describe(self) -> str:
        if self.diff is None:
            return f"{self.metric}: no data"
        return (
            f"{self.metric} {_fmt(self.baseline)} -> {_fmt(self.candidate)} (diff {self.diff:+.4g}, margin "
            f"{self.margin:g}, n {self.n_baseline}/{self.n_candidate}, units {self.units_baseline}/"
            f"{self.units_candidate} ({self.effective_units:.3g} effective), p_worse {self.p_worse:.3g}, p_noninferior {self.p_noninferior:.3g})"
        )


@dataclass(frozen=True)
class Decision:
    action: Action
    share_from: float
    share_to: float
    mode_to: str
    reason: str
    checks: tuple[GuardrailCheck, ...] = ()
    widened: bool = False
    """An untested advance: the step was too small to test (`CanaryPolicy.max_untested_share`)."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["checks"] = [asdict(c) for c in self.checks]
        return out


def check_guardrail(policy: CanaryPolicy, g: Guardrail, obs: Observation) -> GuardrailCheck:
    """One guardrail's two sequential tests on the evidence combined over periods."""
    spec = obs.specs.get(g.metric)
    ev = obs.evidence_for(g.metric)
    if spec is None or ev is None or not ev.n_baseline or not ev.n_candidate:
        nb, nc = (int(ev.n_baseline), int(ev.n_candidate)) if ev is not None else (0, 0)
        return GuardrailCheck(g.metric, "insufficient", g.margin, None, None, None, 1.0, 1.0, nb, nc)
    diff, variance = float(ev.estimate), float(ev.variance)
    good = diff if spec.higher_is_better else -diff  # > 0: the candidate is better
    tau = g.tau or g.margin
    p_worse = msprt_p_value(good, variance, tau, theta0=0.0, alternative="less")
    p_ni = msprt_p_value(good, variance, tau, theta0=-g.margin, alternative="greater")
    n = min(ev.n_baseline, ev.n_candidate)
    units = min(ev.effective_units_baseline, ev.effective_units_candidate)
    status: Literal["worse", "not_worse", "undecided", "insufficient"]
    if units < policy.min_units:
        status = "insufficient"
    elif n >= policy.rollback_min_samples and p_worse < policy.alpha / len(policy.guardrails):
        status = "worse"
    elif n < policy.min_samples:
        status = "insufficient"
    elif p_ni < policy.alpha:
        status = "not_worse"
    else:
        status = "undecided"
    return GuardrailCheck(
        g.metric,
        status,
        g.margin,
        float(ev.baseline_mean),
        float(ev.candidate_mean),
        diff,
        p_worse,
        p_ni,
        int(ev.n_baseline),
        int(ev.n_candidate),
        variance,
        int(ev.units_baseline),
        int(ev.units_candidate),
        float(units),
    )


def decide(policy: CanaryPolicy, obs: Observation) -> Decision:
    """Roll back, advance one step, or wait (see the module docstring). Pure."""
    share = obs.share
    if obs.mode != "canary":
        return Decision("idle", share, share, obs.mode, f"route is in {obs.mode} mode: nothing to control")
    checks = tuple(check_guardrail(policy, g, obs) for g in policy.guardrails)
    worse = [c for c in checks if c.status == "worse"]
    if worse:
        level = policy.alpha / len(policy.guardrails)
        reason = f"rollback at {share:g}%: significantly worse (mSPRT p < {level:.3g}): " + "; ".join(
            c.describe() for c in worse
        )
        return Decision("rollback", share, 0.0, "shadow", reason, checks)
    summary = "; ".join(c.describe() for c in checks)

    def wait(why: str) -> Decision:
        return Decision("wait", share, share, "canary", f"wait at {share:g}%: {why}; {summary}", checks)

    if obs.srm_p is not None and obs.srm_p < policy.srm_alpha:
        return wait(f"sample ratio mismatch (p {obs.srm_p:.3g} < {policy.srm_alpha:g})")
    nxt = policy.next_share(share)
    if nxt is not None and too_small_to_test(policy, obs, nxt):
        units = min(float(c.effective_units) for c in checks)
        return Decision(
            "advance",
            share,
            nxt,
            "canary",
            f"widen {share:g}% -> {nxt:g}% untested: the candidate's arm is worth {units:.3g} effective "
            f"units, fewer than {policy.min_units:g}, and will stay so at this share; {summary}",
            checks,
            widened=True,
        )
    pending = [c.metric for c in checks if c.status != "not_worse"]
    if pending:
        return wait(f"not yet shown not worse on {', '.join(pending)}")
    if obs.step_calls[1] < policy.min_step_samples:
        return wait(f"{obs.step_calls[1]} candidate calls at this step, need {policy.min_step_samples}")
    if obs.step_age_s is not None and obs.step_age_s < policy.min_step_s:
        return wait(f"at this step for {obs.step_age_s:.0f}s, need {policy.min_step_s:g}s")
    if nxt is None:
        return Decision(
            "advance",
            share,
            100.0,
            "primary",
            f"promote {share:g}% -> primary: not worse on every guardrail; {summary}",
            checks,
        )
    return Decision(
        "advance",
        share,
        nxt,
        "canary",
        f"advance {share:g}% -> {nxt:g}%: not worse on every guardrail; {summary}",
        checks,
    )


def too_small_to_test(policy: CanaryPolicy, obs: Observation, nxt: float) -> bool:
    """Whether the current step can never yield a test: after the dwell time, every guardrail's
    candidate arm is worth fewer than ``min_units`` effective units now and as projected for the
    step, and the next share is at most ``max_untested_share``."""
    if nxt > policy.max_untested_share or (obs.step_age_s is not None and obs.step_age_s < policy.min_step_s):
        return False
    for g in policy.guardrails:
        ev = obs.evidence_for(g.metric)
        if ev is None or not ev.n_candidate:
            return False
        if max(float(ev.effective_units_candidate), float(ev.projected_units_candidate)) >= policy.min_units:
            return False
    return True


# -- how long a decision will take -------------------------------------------------------
def forecast(policy: CanaryPolicy, obs: Observation) -> dict[str, Any]:
    """Expected further calls (both arms, at the current share) and time to a decision.

    If each guardrail's difference stays at its current estimate, the information ``1/V``
    grows with the calls at the current share (in proportion to what it gained per call so far,
    scaled by ``share (1 - share)`` against the canary's average split);
    the mSPRT boundary then gives the calls each test still needs. A rollback needs one
    guardrail to be significantly worse, an advance every guardrail shown not worse (and
    the step's minimum samples and dwell time). ``None``: not reachable at the estimate.
    """
    pi = obs.share / 100
    per_metric: dict[str, dict[str, float | None]] = {}
    rollback: list[float] = []
    advance: list[float] = []
    for g in policy.guardrails:
        spec = obs.specs.get(g.metric)
        ev = obs.evidence_for(g.metric)
        if spec is None or ev is None or not 0 < pi < 1:
            per_metric[g.metric] = {"rollback_calls": None, "advance_calls": None}
            advance.append(math.inf)
            continue
        good = float(ev.estimate) if spec.higher_is_better else -float(ev.estimate)
        tau = g.tau or g.margin
        calls_seen = float(obs.baseline.calls + obs.candidate.calls)
        per_obs = float(ev.n_candidate + ev.n_baseline) / calls_seen if calls_seen else 1.0
        per_balance = float(ev.weight) / float(ev.balance) if float(ev.balance) > 0 else 0.0
        growth = per_balance * pi * (1 - pi) * (per_obs or 1.0)  # information per further call
        args = (good, float(ev.variance), tau, float(ev.weight), growth)
        r = _calls_to_reject(
            *args, theta0=0.0, alternative="less", alpha=policy.alpha / len(policy.guardrails)
        )
        a = _calls_to_reject(*args, theta0=-g.margin, alternative="greater", alpha=policy.alpha)
        need = max(0.0, policy.min_samples - float(min(ev.n_baseline, ev.n_candidate)))
        if a is not None and need:
            a = max(a, need / (min(pi, 1 - pi) * (per_obs or 1.0)))
        per_metric[g.metric] = {"rollback_calls": r, "advance_calls": a}
        if r is not None:
            rollback.append(r)
        advance.append(math.inf if a is None else a)
    adv = max(advance) if advance else math.inf
    if math.isfinite(adv):
        adv = max(adv, (policy.min_step_samples - obs.step_calls[1]) / pi if pi else 0.0, 0.0)
    rb = min(rollback) if rollback else math.inf
    best = min(adv, rb)
    rate = obs.traffic_per_s
    seconds = best / rate if rate and math.isfinite(best) else None
    if seconds is not None and best == adv and obs.step_age_s is not None:
        seconds = max(seconds, policy.min_step_s - obs.step_age_s)
    return {
        "expected_calls": best if math.isfinite(best) else None,
        "expected_seconds": seconds,
        "likely": None if not math.isfinite(best) else ("rollback" if rb < adv else "advance"),
        "traffic_per_s": rate,
        "guardrails": per_metric,
    }


def _calls_to_reject(
    good: float,
    variance: float,
    tau: float,
    weight: float,
    growth: float,
    *,
    theta0: float,
    alternative: str,
    alpha: float,
) -> float | None:
    if weight <= 0 or variance <= 0 or growth <= 0:
        return None
    f = information_factor_to_reject(
        good, variance, tau, theta0=theta0, alternative=alternative, alpha=alpha, log_lr=msprt_log_lr
    )
    return None if f is None else (f - 1) * weight / growth


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"
