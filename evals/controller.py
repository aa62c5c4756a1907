"""Canary controller: moves a route's candidate up the ramp, or rolls it back, from outcome statistics.

The decision is a pure function, `evals.decision.decide(policy, observation)` (its rules
are in that module's docstring), so it can be simulated on synthetic outcome streams
without a log or a gateway (`bench/controller_bench.py`). `CanaryController` wraps it: it
reads the route from the gateway's admin API, computes the evidence from the call log
(per unit of the route's sticky key, per route-state version, combined across versions:
`evals.strata`), decides, acts through the admin API (``PATCH /admin/routes/{route}``)
and writes every decision, with the numbers behind it and a forecast of the calls and
time a decision still needs, to ``<log_dir>/controller/decisions.jsonl``.

Operators pause it with ``shadowtune controller pause ROUTE`` (a ``paused`` flag in
``<log_dir>/controller/<route>.json``); the gateway's own ``paused`` flag on the route is
honoured too.
"""

from __future__ import annotations

import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson

from evals.decision import (
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
from evals.outcomes import METRICS, ArmStats, MetricSpec, srm_check
from evals.outcomes_query import query_cells
from evals.strata import Evidence, stratified_difference

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


# -- the admin API client ----------------------------------------------------------------
class AdminClient:
    """The gateway's admin API, over HTTP: base URL plus bearer token."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def get_route(self, route: str) -> dict[str, Any]:
        return self._request("GET", route)

    def set_route(self, route: str, *, mode: str, share: float, reason: str) -> dict[str, Any]:
        body = {"mode": mode, "share": float(share), "reason": reason, "actor": "controller"}
        return self._request("PATCH", route, body)

    def _request(self, method: str, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        path = "/admin/routes/" + urllib.parse.quote(route, safe="")
        try:
            resp = self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise ControllerError(f"admin API {method} {path}: {exc}") from exc
        if resp.status_code >= 400:
            try:
                message = resp.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = resp.text[:200]
            raise ControllerError(f"admin API {method} {path}: HTTP {resp.status_code}: {message}")
        data = resp.json()
        if not isinstance(data, dict):
            raise ControllerError(f"admin API {method} {path}: expected a JSON object")
        return data

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- state and decision log --------------------------------------------------------------
def controller_dir(log_dir: str) -> Path:
    return Path(log_dir) / "controller"


def state_path(log_dir: str, route: str) -> Path:
    return controller_dir(log_dir) / (urllib.parse.quote(route, safe="") + ".json")


def read_state(log_dir: str, route: str) -> dict[str, Any]:
    """The route's controller state (``{}`` when there is none yet)."""
    path = state_path(log_dir, route)
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ControllerError(f"cannot read controller state {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def write_state(log_dir: str, route: str, state: dict[str, Any]) -> None:
    path = state_path(log_dir, route)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_bytes(orjson.dumps(state, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)


def set_paused(
    log_dir: str, route: str, paused: bool, *, actor: str = "operator", reason: str | None = None
) -> dict[str, Any]:
    """Pause or resume the controller for a route; returns the new state."""
    state = read_state(log_dir, route)
    state.update(
        {
            "route": route,
            "paused": paused,
            "paused_by": actor if paused else None,
            "paused_reason": reason if paused else None,
            "paused_at": time.time() if paused else None,
        }
    )
    write_state(log_dir, route, state)
    record_decision(
        log_dir,
        {
            "ts": time.time(),
            "route": route,
            "action": "pause" if paused else "resume",
            "actor": actor,
            "reason": reason,
        },
    )
    return state


def record_decision(log_dir: str, record: dict[str, Any]) -> None:
    """Append one JSON line to ``<log_dir>/controller/decisions.jsonl`` (one ``write``)."""
    path = controller_dir(log_dir) / "decisions.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_decisions(log_dir: str, route: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    path = controller_dir(log_dir) / "decisions.jsonl"
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if route is None or rec.get("route") == route:
            out.append(rec)
    return out[-limit:] if limit else out


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
    ) -> None:
        self.policy = policy
        self.admin = admin
        self.log_dir = log_dir
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
        state = read_state(self.log_dir, self.route)
        record: dict[str, Any] = {"ts": now, "route": self.route}
        if state.get("paused"):
            record.update(action="paused", reason=f"paused by {state.get('paused_by') or 'an operator'}")
            record_decision(self.log_dir, record)
            return record
        info = self.admin.get_route(self.route)
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
            record_decision(self.log_dir, record)
            return record
        if mode != "canary":
            state.update(route=self.route, canary_started_at=None, step_started_at=None, step_share=None)
            write_state(self.log_dir, self.route, state)
            decision = decide(
                self.policy, Observation(mode, share, ArmStats("baseline"), ArmStats("candidate"))
            )
            record.update(decision.to_dict())
            record_decision(self.log_dir, record)
            return record

        if state.get("candidate") != info.get("candidate") or not state.get("canary_started_at"):
            state.update(
                candidate=info.get("candidate"), canary_started_at=now, step_started_at=now, step_share=share
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
            forecast=forecast(self.policy, obs),
            unit=self.sticky_key,
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
        write_state(self.log_dir, self.route, state)
        record_decision(self.log_dir, record)
        log.info("controller %s: %s", self.route, decision.reason)
        return record

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
            groups, _ = query_cells(store, self.route, canary_since, now + 1, sticky_key=self.sticky_key)
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
            evidence[name] = stratified_difference(mine, canary.cross.get(name), rate=spec.kind == "rate")
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
