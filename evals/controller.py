"""Canary controller: moves a route's candidate up the ramp, or rolls it back, from outcome statistics.

The decision is a pure function, `decide(policy, observation) -> Decision`, so it can be
simulated on synthetic outcome streams without a log or a gateway. `CanaryController`
wraps it: it reads the route from the gateway's admin API, computes the statistics from
the call log, decides, acts through the admin API (``PATCH /admin/routes/{route}``) and
writes every decision, with the numbers behind it, to the gateway's state backend
(``<log_dir>/controller/decisions.jsonl`` by default, or PostgreSQL: `gateway.state`).

Rules, per check (``policy.check_interval_s``), while the route is in ``canary`` mode:

1. **Roll back at once** (mode ``shadow``, share 0) when any guardrail is significantly
   worse: the one-sided mSPRT of "candidate no worse than baseline" (``theta0 = 0``)
   rejects at ``alpha / len(guardrails)`` (Bonferroni), with at least
   ``rollback_min_samples`` calls per arm. Statistics are cumulative since the canary
   began, so the whole canary is one always-valid test per guardrail and the
   false-rollback rate of an equal candidate stays below ``alpha`` however often the
   controller looks.
2. **Advance one step** (the next ramp step; ``primary`` after the last) when every
   guardrail is shown not worse than its margin: the one-sided mSPRT of "candidate worse
   by at least the margin" (``theta0 = -margin`` in the metric's good direction) rejects
   at ``alpha`` on every guardrail (an intersection-union test needs no correction),
   each arm has ``min_samples`` calls, and the candidate has ``min_step_samples`` calls
   at the current step, so each step of the ramp is actually observed.
3. Otherwise **wait**; also wait (never advance) while the split fails the
   sample-ratio-mismatch check at ``srm_alpha``.

Operators pause it with ``shadowtune controller pause ROUTE`` (a ``paused`` flag in the
controller's state document, ``<log_dir>/controller/<route>.json`` by default); the gateway's own ``paused`` flag on the route is
honoured too.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evals.canary_clock import canary_entered_at
from evals.outcomes import (
    METRICS,
    ArmStats,
    MetricSpec,
    diff_and_variance,
    msprt_p_value,
    query_arm_stats,
    srm_check,
)

log = logging.getLogger("shadowtune.controller")

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
    """Calls per arm (since the canary began) before advancing."""
    min_step_samples: int = Field(default=100, ge=0)
    """Candidate calls at the current step before advancing from it."""
    rollback_min_samples: int = Field(default=50, ge=1)
    """Calls per arm before a rollback (keeps the normal approximation honest)."""
    steps: list[float] = Field(default_factory=lambda: [1.0, 5.0, 25.0, 50.0, 100.0], min_length=1)
    """Ramp of candidate shares, in percent; after the last comes ``primary``."""
    check_interval_s: float = Field(default=3600.0, gt=0)
    """Seconds between checks."""
    srm_alpha: float = Field(default=0.001, gt=0, lt=1)
    """Sample-ratio-mismatch threshold: below it the controller does not advance."""

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
    baseline: ArmStats
    """Served baseline calls since the canary began."""
    candidate: ArmStats
    step_calls: tuple[int, int] = (0, 0)
    """(baseline, candidate) served calls since the current step began."""
    srm_p: float | None = None
    specs: dict[str, MetricSpec] = field(default_factory=lambda: dict(METRICS))


@dataclass(frozen=True)
class GuardrailCheck:
    metric: str
    status: Literal["worse", "not_worse", "undecided", "insufficient"]
    margin: float
    baseline: float | None
    candidate: float | None
    diff: float | None
    """Candidate minus baseline, in the metric's units."""
    p_worse: float
    """Always-valid p-value of "the candidate is not worse"."""
    p_noninferior: float
    """Always-valid p-value of "the candidate is worse by at least the margin"."""
    n_baseline: int
    n_candidate: int

    def describe(self) -> str:
        if self.diff is None:
            return f"{self.metric}: no data"
        return (
            f"{self.metric} {_fmt(self.baseline)} -> {_fmt(self.candidate)} (diff {self.diff:+.4g}, margin "
            f"{self.margin:g}, n {self.n_baseline}/{self.n_candidate}, p_worse {self.p_worse:.3g}, "
            f"p_noninferior {self.p_noninferior:.3g})"
        )


@dataclass(frozen=True)
class Decision:
    action: Action
    share_from: float
    share_to: float
    mode_to: str
    reason: str
    checks: tuple[GuardrailCheck, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["checks"] = [asdict(c) for c in self.checks]
        return out


def check_guardrail(policy: CanaryPolicy, g: Guardrail, obs: Observation) -> GuardrailCheck:
    """One guardrail's two sequential tests on the cumulative statistics."""
    spec = obs.specs.get(g.metric)
    b, c = obs.baseline.metrics.get(g.metric), obs.candidate.metrics.get(g.metric)
    if spec is None or b is None or c is None or b.n == 0 or c.n == 0:
        nb, nc = (b.n if b else 0), (c.n if c else 0)
        return GuardrailCheck(g.metric, "insufficient", g.margin, None, None, None, 1.0, 1.0, nb, nc)
    diff, variance = diff_and_variance(b, c)
    good = diff if spec.higher_is_better else -diff  # > 0: the candidate is better
    tau = g.tau or g.margin
    p_worse = msprt_p_value(good, variance, tau, theta0=0.0, alternative="less")
    p_ni = msprt_p_value(good, variance, tau, theta0=-g.margin, alternative="greater")
    n = min(b.n, c.n)
    status: Literal["worse", "not_worse", "undecided", "insufficient"]
    if n >= policy.rollback_min_samples and p_worse < policy.alpha / len(policy.guardrails):
        status = "worse"
    elif n < policy.min_samples:
        status = "insufficient"
    elif p_ni < policy.alpha:
        status = "not_worse"
    else:
        status = "undecided"
    return GuardrailCheck(g.metric, status, g.margin, b.mean, c.mean, diff, p_worse, p_ni, b.n, c.n)


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
    if obs.srm_p is not None and obs.srm_p < policy.srm_alpha:
        return Decision(
            "wait",
            share,
            share,
            "canary",
            f"wait at {share:g}%: sample ratio mismatch (p {obs.srm_p:.3g} < {policy.srm_alpha:g}); "
            + summary,
            checks,
        )
    pending = [c.metric for c in checks if c.status != "not_worse"]
    if pending:
        return Decision(
            "wait",
            share,
            share,
            "canary",
            f"wait at {share:g}%: not yet shown not worse on {', '.join(pending)}; {summary}",
            checks,
        )
    if obs.step_calls[1] < policy.min_step_samples:
        return Decision(
            "wait",
            share,
            share,
            "canary",
            f"wait at {share:g}%: {obs.step_calls[1]} candidate calls "
            f"at this step, need {policy.min_step_samples}; {summary}",
            checks,
        )
    nxt = policy.next_share(share)
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


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


# -- the admin API client ----------------------------------------------------------------
class AdminClient:
    """The gateway's admin API (`gateway.admin_client`), raising `ControllerError`."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        from gateway.admin_client import AdminClient as Client

        self._client = Client(url, token, timeout=timeout, transport=transport)

    def get_route(self, route: str) -> dict[str, Any]:
        info: dict[str, Any] = self._call(self._client.get_route, route)
        return info

    def set_route(self, route: str, *, mode: str, share: float, reason: str) -> dict[str, Any]:
        body = {"mode": mode, "share": float(share), "reason": reason, "actor": "controller"}
        info: dict[str, Any] = self._call(self._client.set_route, route, body)
        return info

    def history(self, route: str, limit: int = 1000) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self._call(self._client.history, route, limit)
        return rows

    @staticmethod
    def _call(fn: Callable[..., Any], *args: Any) -> Any:
        from gateway.admin_client import AdminError

        try:
            return fn(*args)
        except AdminError as exc:
            raise ControllerError(f"admin API {exc.message}") from exc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- state and decision log --------------------------------------------------------------
# Kept in the gateway's state backend (`gateway.state`): ``location`` is its directory (the
# log directory by default: ``<dir>/controller/<route>.json`` and ``decisions.jsonl``) or
# its ``postgresql://`` URL.
def controller_dir(log_dir: str) -> Path:
    return Path(log_dir) / "controller"


def state_path(log_dir: str, route: str) -> Path:
    return controller_dir(log_dir) / (urllib.parse.quote(route, safe="") + ".json")


def _backend(location: str) -> Any:
    from gateway.state import open_backend

    return open_backend(location)


def read_state(location: str, route: str) -> dict[str, Any]:
    """The route's controller state (``{}`` when there is none yet)."""
    from gateway.state import StateUnavailable

    try:
        return _backend(location).get_doc("controller", route) or {}
    except StateUnavailable as exc:
        raise ControllerError(f"cannot read controller state of {route}: {exc.message}") from exc


def write_state(location: str, route: str, state: dict[str, Any]) -> None:
    from gateway.state import StateUnavailable

    try:
        _backend(location).put_doc("controller", route, state)
    except StateUnavailable as exc:
        raise ControllerError(f"cannot write controller state of {route}: {exc.message}") from exc


def set_paused(
    location: str, route: str, paused: bool, *, actor: str = "operator", reason: str | None = None
) -> dict[str, Any]:
    """Pause or resume the controller for a route; returns the new state."""
    state = read_state(location, route)
    state.update(
        {
            "route": route,
            "paused": paused,
            "paused_by": actor if paused else None,
            "paused_reason": reason if paused else None,
            "paused_at": time.time() if paused else None,
        }
    )
    write_state(location, route, state)
    record_decision(
        location,
        {
            "ts": time.time(),
            "route": route,
            "action": "pause" if paused else "resume",
            "actor": actor,
            "reason": reason,
        },
    )
    return state


def record_decision(location: str, record: dict[str, Any]) -> None:
    """Append one decision record (a JSON line in ``<dir>/controller/decisions.jsonl``, or a row)."""
    from gateway.state import StateUnavailable

    clean = orjson.loads(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY))
    try:
        _backend(location).append_record("decisions", clean)
    except StateUnavailable as exc:
        raise ControllerError(f"cannot record the decision: {exc.message}") from exc


def read_decisions(location: str, route: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    from gateway.state import StateUnavailable

    try:
        rows: list[dict[str, Any]] = _backend(location).records("decisions", route, limit)
    except StateUnavailable as exc:
        raise ControllerError(f"cannot read decisions: {exc.message}") from exc
    return rows


# -- the loop ----------------------------------------------------------------------------
class CanaryController:
    """One route's controller: read the route, read the log, decide, act, record."""

    def __init__(
        self,
        policy: CanaryPolicy,
        admin: AdminClient,
        log_dir: str,
        route: str,
        *,
        clock: Callable[[], float] = time.time,
        open_store: Callable[[str], Any] | None = None,
        state: str | None = None,
    ) -> None:
        self.policy = policy
        self.admin = admin
        self.log_dir = log_dir
        self.state = state or log_dir
        """Where the controller's state and decisions live (`gateway.state`): the log dir by default."""
        self.route = route
        self.clock = clock
        if open_store is None:
            from gateway.store import LogStore

            open_store = LogStore.open
        self._open_store = open_store

    def check(self) -> dict[str, Any]:
        """One check; returns (and records) the decision record."""
        now = self.clock()
        state = read_state(self.state, self.route)
        record: dict[str, Any] = {"ts": now, "route": self.route}
        if state.get("paused"):
            record.update(action="paused", reason=f"paused by {state.get('paused_by') or 'an operator'}")
            record_decision(self.state, record)
            return record
        info = self.admin.get_route(self.route)
        share = float(info.get("share") or 0.0)
        mode = str(info.get("mode") or "off")
        record.update(
            candidate=info.get("candidate"),
            baseline=info.get("baseline"),
            route_version=info.get("version"),
            mode=mode,
        )
        if info.get("paused"):
            record.update(action="paused", reason="route paused in the gateway", share_from=share)
            record_decision(self.state, record)
            return record
        if mode != "canary":
            state.update(route=self.route, canary_started_at=None, step_started_at=None, step_share=None)
            write_state(self.state, self.route, state)
            decision = decide(
                self.policy, Observation(mode, share, ArmStats("baseline"), ArmStats("candidate"))
            )
            record.update(decision.to_dict())
            record_decision(self.state, record)
            return record

        if state.get("candidate") != info.get("candidate") or not state.get("canary_started_at"):
            entered, step_at = self._entered_canary(info, share, now)
            state.update(
                candidate=info.get("candidate"),
                canary_started_at=entered,
                step_started_at=step_at,
                step_share=share,
            )
        elif state.get("step_share") != share:
            state.update(step_started_at=now, step_share=share)
        obs = self._observe(mode, share, state["canary_started_at"], state["step_started_at"], now)
        decision = decide(self.policy, obs)
        record.update(decision.to_dict())
        record.update(
            canary_started_at=state["canary_started_at"],
            step_started_at=state["step_started_at"],
            srm_p=obs.srm_p,
            step_calls=list(obs.step_calls),
            arms={a.variant: {"calls": a.calls, "units": a.units} for a in (obs.baseline, obs.candidate)},
        )
        record["applied"] = False
        if decision.action in ("rollback", "advance"):
            try:
                self.admin.set_route(
                    self.route, mode=decision.mode_to, share=decision.share_to, reason=decision.reason
                )
            except ControllerError as exc:
                record["error"] = str(exc)
                log.error("controller %s: %s not applied: %s", self.route, decision.action, exc)
            else:
                record["applied"] = True
                state.update(step_share=decision.share_to, step_started_at=now)
                if decision.action == "rollback" or decision.mode_to == "primary":
                    state.update(canary_started_at=None)
        state.update(route=self.route, last_check_at=now, last_action=decision.action)
        write_state(self.state, self.route, state)
        record_decision(self.state, record)
        log.info("controller %s: %s", self.route, decision.reason)
        return record

    def _entered_canary(self, info: dict[str, Any], share: float, now: float) -> tuple[float, float]:
        """When the route entered canary with this candidate, and when its share became ``share``.

        From the route's audit history (the admin API), so the clock does not start at the
        controller's first look; ``now`` for both when the history does not say (a config-file
        canary, or a gateway without history)."""
        history = getattr(self.admin, "history", None)
        if history is None:
            return now, now
        try:
            rows = history(self.route)
        except ControllerError:
            return now, now
        return canary_entered_at(rows, info.get("candidate"), share, now)

    def _observe(
        self, mode: str, share: float, canary_since: float, step_since: float, now: float
    ) -> Observation:
        from gateway.store import LogStoreError

        try:
            store = self._open_store(self.log_dir)
        except LogStoreError as exc:
            raise ControllerError(str(exc)) from exc
        try:
            groups, specs = query_arm_stats(store, self.route, canary_since, now + 1)
            step_groups, _ = query_arm_stats(store, self.route, step_since, now + 1)
        except LogStoreError as exc:
            raise ControllerError(str(exc)) from exc
        finally:
            store.close()
        arms = groups.get(None, {})
        step = step_groups.get(None, {})
        sb, sc = step.get("baseline", ArmStats("baseline")), step.get("candidate", ArmStats("candidate"))
        srm_p = None
        if 0 < share < 100 and sb.units + sc.units >= 100:
            srm_p = srm_check(sb.units, sc.units, share / 100)[1]
        return Observation(
            mode=mode,
            share=share,
            baseline=arms.get("baseline", ArmStats("baseline")),
            candidate=arms.get("candidate", ArmStats("candidate")),
            step_calls=(sb.calls, sc.calls),
            srm_p=srm_p,
            specs=specs,
        )

    def run(self, *, once: bool = False, sleep: Callable[[float], None] = time.sleep) -> None:
        """Check every ``policy.check_interval_s`` seconds (or ``once``); errors are logged, then retried."""
        while True:
            try:
                self.check()
            except ControllerError as exc:
                if once:
                    raise
                log.error("controller %s: %s", self.route, exc)
            if once:
                return
            sleep(self.policy.check_interval_s)
