"""Canary controller: moves a route's candidate up the ramp, or rolls it back, from outcome statistics.

The decision is a pure function, `evals.decision.decide(policy, observation)` (its rules
are in that module's docstring), so it can be simulated on synthetic outcome streams
without a log or a gateway (`bench/controller_bench.py`). `CanaryController` wraps it: it
reads the route from the gateway's admin API, computes the evidence from the call log
(per unit of the route's sticky key, per route-state version, combined across versions:
`evals.strata`), decides, acts through the admin API (``PATCH /admin/routes/{route}``)
and writes every decision, with the numbers behind it and a forecast of the calls and
time a decision still needs, to the gateway's state backend
(``<log_dir>/controller/decisions.jsonl`` by default, or PostgreSQL: `gateway.state`). The
canary clock starts when the route entered canary, read from the audit history
(`evals.canary_clock`).

Operators pause it with ``shadowtune controller pause ROUTE`` (a ``paused`` flag in the
controller's state document, ``<log_dir>/controller/<route>.json`` by default); the gateway's own ``paused`` flag on the route is
honoured too.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from evals.online.canary_clock import canary_entered_at
from evals.online.decision import (
    Action,
    CanaryPolicy,
    ControllerError,
    Decision,
    Guardrail,
    GuardrailCheck,
    Observation,
    check_guardrail,
    decide,
    forecast,
)
from evals.online.outcomes import METRICS, ArmStats, MetricSpec, srm_check
from evals.online.outcomes_query import query_cells
from evals.online.strata import PRE, Evidence, stratified_difference
from gateway.admin_client import AdminClient, AdminError
from gateway.state import pause
from gateway.state.base import StateBackend
from gateway.store import layout

log = logging.getLogger("shadowtune.controller")

__all__ = [
    "Action",
    "AdminClient",
    "CanaryController",
    "CanaryPolicy",
    "ControllerError",
    "Decision",
    "Guardrail",
    "GuardrailCheck",
    "Observation",
    "check_guardrail",
    "decide",
    "forecast",
]


# -- the admin API ----------------------------------------------------------------------
# The shared client (`gateway.admin_client.AdminClient`: route names URL-quoted, the gateway's
# own error messages); its `AdminError` becomes a `ControllerError` here.
def _admin(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(*args)
    except AdminError as exc:
        raise ControllerError(f"admin API {exc.message}") from exc


# -- state and decision log --------------------------------------------------------------
# Kept in the gateway's state backend (`gateway.state`): ``location`` is its directory (the
# log directory by default: ``<dir>/controller/<route>.json`` and ``decisions.jsonl``) or
# its ``postgresql://`` URL.
def controller_dir(log_dir: str) -> Path:
    return Path(layout.controller_dir(log_dir))


def state_path(log_dir: str, route: str) -> Path:
    return controller_dir(log_dir) / (urllib.parse.quote(route, safe="") + ".json")


def _backend(location: str) -> StateBackend:
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
    """Write the controller's own fields of ``state``; the pause stays as stored (an operator who
    paused the route while a check ran keeps the pause: `gateway.state.pause.keep_pause`)."""
    from gateway.state import StateUnavailable

    try:
        _backend(location).update_doc("controller", route, pause.keep_pause(state))
    except StateUnavailable as exc:
        raise ControllerError(f"cannot write controller state of {route}: {exc.message}") from exc


def set_paused(
    location: str, route: str, paused: bool, *, actor: str = "operator", reason: str | None = None
) -> dict[str, Any]:
    """Pause or resume the controller for a route; returns the new state (`gateway.state.pause`)."""
    from gateway.state import StateUnavailable

    try:
        return pause.set_paused(_backend(location), route, paused, actor=actor, reason=reason)
    except StateUnavailable as exc:
        raise ControllerError(f"cannot write controller state of {route}: {exc.message}") from exc


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
        hold: Callable[[Decision, str, str, str | None], Decision] | None = None,
    ) -> None:
        self.policy = policy
        self.hold = hold
        """A guardrail outside the outcome statistics (``evals.drift.guardrail.hold_canary``:
        output drift on the candidate rolls it back), given by the CLI that runs the controller."""
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
        self.sticky_key = "user"

    def check(self) -> dict[str, Any]:
        """One check; returns (and records) the decision record."""
        now = self.clock()
        state = read_state(self.state, self.route)
        record: dict[str, Any] = {"ts": now, "route": self.route}
        paused = pause.pause_of(state)
        if paused is not None:
            record.update(action="paused", reason=f"paused by {paused['by'] or 'an operator'}")
            record_decision(self.state, record)
            return record
        info: dict[str, Any] = _admin(self.admin.get_route, self.route)
        self.sticky_key = str(info.get("sticky_key") or "user")
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
        if self.hold is not None:
            decision = self.hold(decision, self.log_dir, self.route, info.get("candidate"))
        record.update(decision.to_dict())
        record.update(
            canary_started_at=state["canary_started_at"],
            step_started_at=state["step_started_at"],
            srm_p=obs.srm_p,
            step_calls=list(obs.step_calls),
            forecast=forecast(self.policy, obs),
            unit=self.sticky_key,
            arms={a.variant: {"calls": a.calls, "units": a.units} for a in (obs.baseline, obs.candidate)},
        )
        record["applied"] = False
        if decision.action in ("rollback", "advance") and (
            late := pause.pause_of(read_state(self.state, self.route))
        ):
            # paused while this check observed: the operator's word wins over a decision made before it
            record.update(action="paused", reason=f"paused by {late['by'] or 'an operator'} during the check")
        elif decision.action in ("rollback", "advance"):
            try:
                changes = {
                    "mode": decision.mode_to,
                    "share": float(decision.share_to),
                    "reason": decision.reason,
                    "actor": "controller",
                }
                _admin(self.admin.set_route, self.route, changes)
            except ControllerError as exc:
                record["error"] = str(exc)
                log.error("controller %s: %s not applied: %s", self.route, decision.action, exc)
            else:
                record["applied"] = True
                state.update(step_share=decision.share_to, step_started_at=now)
                if decision.action == "rollback" or decision.mode_to == "primary":
                    state.update(canary_started_at=None)
        state.update(route=self.route, last_check_at=now, last_action=record["action"])
        write_state(self.state, self.route, state)
        record_decision(self.state, record)
        log.info("controller %s: %s", self.route, decision.reason)
        return record

    def _entered_canary(self, info: dict[str, Any], share: float, now: float) -> tuple[float, float]:
        """When the route entered canary with this candidate, and when its share became ``share``.

        From the route's audit history (the admin API), so the clock does not start at the
        controller's first look; ``now`` for both when the history does not say (a config-file
        canary, or a gateway without history)."""
        try:
            rows: list[dict[str, Any]] = _admin(self.admin.history, self.route, 1000)
        except ControllerError:
            return now, now
        return canary_entered_at(rows, info.get("candidate"), share, now)

    def _observe(
        self, mode: str, share: float, canary_since: float, step_since: float, now: float
    ) -> Observation:
        """The evidence since ``canary_since``: per unit of the sticky key, per route-state version."""
        from gateway.store import LogStoreError

        try:
            store = self._open_store(self.log_dir)
        except LogStoreError as exc:
            raise ControllerError(str(exc)) from exc
        try:
            pre = canary_since - self.policy.pre_period_s if self.policy.pre_period_s > 0 else None
            groups, _ = query_cells(
                store, self.route, canary_since, now + 1, sticky_key=self.sticky_key, pre_since=pre
            )
            step_groups, _ = query_cells(store, self.route, step_since, now + 1, sticky_key=self.sticky_key)
        except LogStoreError as exc:
            raise ControllerError(str(exc)) from exc
        finally:
            store.close()
        return observation(mode, share, groups.get(None), step_groups.get(None), now - step_since)

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


def observation(
    mode: str, share: float, canary: Any, step: Any, step_age_s: float | None = None
) -> Observation:
    """An `Observation` from `evals.outcomes_query.Cells` of the canary and of the current step.

    Only versions where both arms were served count (never calls from before the canary),
    and they are combined, never pooled (`evals.strata.stratified_difference`).
    """
    specs = dict(METRICS)
    evidence: dict[str, Evidence] = {}
    base, cand = ArmStats("baseline"), ArmStats("candidate")
    if canary is not None:
        compared = {p for p, info in canary.periods.items() if info.compared}
        for name, cells in canary.cells.items():
            spec = specs.get(name) or MetricSpec(name, "mean", True)
            specs.setdefault(name, spec)
            mine = [c for c in cells if c.period in compared]
            pre = [c for c in canary.covariates.get(name, []) if c.period.removeprefix(PRE) in compared]
            evidence[name] = stratified_difference(
                mine, canary.cross.get(name), rate=spec.kind == "rate", covariates=pre
            )
        for arm in (base, cand):
            arms = [i.arms[arm.variant] for p, i in canary.periods.items() if p in compared]
            arm.calls = sum(a.calls for a in arms)
            arm.units = sum(a.units for a in arms)
    sb = sc = 0
    ub = uc = 0
    if step is not None:
        for info in step.periods.values():
            if info.compared:
                sb += info.arms["baseline"].calls
                sc += info.arms["candidate"].calls
                ub += info.arms["baseline"].units
                uc += info.arms["candidate"].units
    srm_p = srm_check(ub, uc, share / 100)[1] if 0 < share < 100 and ub + uc >= 100 else None
    rate = (sb + sc) / step_age_s if step_age_s and step_age_s > 0 else None
    return Observation(
        mode=mode,
        share=share,
        baseline=base,
        candidate=cand,
        step_calls=(sb, sc),
        srm_p=srm_p,
        specs=specs,
        evidence=evidence,
        step_age_s=step_age_s,
        traffic_per_s=rate,
    )
