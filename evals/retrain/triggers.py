"""Retraining triggers: when a route's traffic or outcomes say so, start a new training round.

A `TriggerPolicy` per route fires on any of:

* **drift**: the last ``drift_windows`` stored drift reports of the route (made since the
  last training) all found drift;
* **new data**: at least ``new_examples`` served, successful calls since the last training;
* **guardrail**: the JSON file that slow evals write (``guardrail_file``) says a guardrail
  is breached: ``{"breached": true}`` at the top level, or an entry of ``guardrails`` (or
  ``checks``) with ``"breached": true``; a file older than the last training is ignored.

A firing runs the `Pipeline`: build dataset -> train -> fast eval -> register -> deploy.
Every step is a plain callable ``step(ctx: PipelineContext) -> Any``, named in the policy
as ``module:function`` (the trainer provides them); deploy defaults to the gateway admin
API (``PATCH /admin/routes/{route}``, ``mode: shadow``: a new model never reaches users
straight away). When the fast eval's result has ``wins`` false, the run stops there.

The policies are a file, ``<log_dir>/triggers/policies.yaml`` (or ``.json``). The state is
in the gateway's state backend (`gateway.state`; by default files under ``<log_dir>/triggers/``,
or PostgreSQL): per route the last training time, model, dataset and run
(``state/<route>.json``); every run's reasons, signals and step results, rewritten after
each step (``runs/<run_id>.json``); and a lease ``trigger-run-<route>`` held (and renewed)
while a run is in progress, so one route never trains twice at once, on any host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import importlib
import json
import os
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evals.drift import load_reports
from evals.errors import TriggerError
from evals.retrain.control import Cancelled, after_run, backoff, check_cancel, mark_cancelled
from evals.retrain.state import (
    _backend,
    _iso,
    _now,
    _parse_time,
    load_runs,
    load_state,
    save_run,
    update_state,
)
from gateway.store import LogStore, queries
from gateway.store.ids import new_id

STEPS = ("build_dataset", "train", "evaluate", "register", "deploy")
DEFAULT_ADMIN_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class TriggerPolicy:
    """When to retrain one route, and which callables do the work."""

    route: str
    drift_windows: int | None = 3
    """Fire after this many drifted reports in a row (None: never on drift)."""
    new_examples: int | None = 1000
    """Fire after this many new served calls since the last training (None: never on volume)."""
    guardrail_file: str | None = None
    """JSON written by slow evals; relative paths are under the log dir."""
    steps: Mapping[str, str] = field(default_factory=dict)
    """Step name -> ``module:function``."""
    params: Mapping[str, Any] = field(default_factory=dict)
    """Passed to every step (backend, base model, judges...)."""
    enabled: bool = True
    output_drift: bool = True
    """Fire when the route's latest output-drift report finds drift on the candidate (`evals.drift.output`)."""
    backoff_s: float = 3600.0
    """After a rejected or failed run, wait this long (doubled per rejection in a row, at most 8x)."""
    min_new_examples: int | None = None
    """Whatever fires, wait for this many new served calls since the last training (new data to learn from)."""
    auto_canary: Mapping[str, Any] | None = None
    """Move a shadow candidate to canary when the judge finds it not worse (`evals.retrain.promote`)."""


def policies_path(log_dir: str) -> Path:
    base = Path(log_dir) / "triggers"
    for name in ("policies.yaml", "policies.yml", "policies.json"):
        if (base / name).exists():
            return base / name
    return base / "policies.yaml"


def load_policies(path: str | os.PathLike[str]) -> dict[str, TriggerPolicy]:
    """Read ``{routes: {<route>: {drift_windows, new_examples, guardrail_file, steps, params}}}``."""
    p = Path(path)
    if not p.exists():
        return {}
    try:
        text = p.read_text(encoding="utf-8")
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, json.JSONDecodeError, yaml.YAMLError) as exc:
        raise TriggerError(f"cannot read trigger policies {p}: {exc}") from exc
    routes = (data or {}).get("routes") if isinstance(data, Mapping) else None
    if not isinstance(routes, Mapping):
        raise TriggerError(f"{p}: expected `routes:` mapping route names to policies")
    known = {f.name for f in dataclasses.fields(TriggerPolicy)} - {"route"}
    out = {}
    for route, spec in routes.items():
        spec = dict(spec or {})
        unknown = set(spec) - known
        if unknown:
            raise TriggerError(f"{p}: route {route}: unknown keys {', '.join(sorted(unknown))}")
        bad = set(spec.get("steps") or {}) - set(STEPS)
        if bad:
            raise TriggerError(
                f"{p}: route {route}: unknown steps {', '.join(sorted(bad))} (steps: {', '.join(STEPS)})"
            )
        out[str(route)] = TriggerPolicy(route=str(route), **spec)
    return out


# -- evaluation ----------------------------------------------------------------------------
@dataclass
class Evaluation:
    """Whether a route's policy fires now, and the signals behind it."""

    route: str
    fire: bool
    reasons: list[str]
    signals: dict[str, Any]


def _drift_streak(log_dir: str, route: str, since: dt.datetime | None) -> int:
    streak = 0
    for rep in reversed(load_reports(log_dir, route)):
        created = _parse_time(rep.get("created_at"))
        if since is not None and (created is None or created <= since):
            break
        if not rep.get("drifted"):
            break
        streak += 1
    return streak


def _new_examples(store: LogStore, route: str, since: dt.datetime | None) -> int:
    return queries.count_served(store, route, after=since)


def _guardrail(log_dir: str, path: str | None, since: dt.datetime | None) -> dict[str, Any] | None:
    if not path:
        return None
    p = Path(path) if os.path.isabs(path) else Path(log_dir) / path
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"file": str(p), "breached": False, "missing": True}
    except (OSError, json.JSONDecodeError) as exc:
        raise TriggerError(f"cannot read guardrail file {p}: {exc}") from exc
    written = (
        _parse_time(data.get("created_at") or data.get("updated_at")) if isinstance(data, dict) else None
    )
    if written is None:
        written = dt.datetime.fromtimestamp(p.stat().st_mtime, dt.UTC)
    entries = []
    if isinstance(data, dict):
        entries = [e for e in (data.get("guardrails") or data.get("checks") or []) if isinstance(e, dict)]
    breached = [str(e.get("name", "?")) for e in entries if e.get("breached")]
    top = isinstance(data, dict) and bool(data.get("breached"))
    stale = since is not None and written <= since
    return {
        "file": str(p),
        "breached": (top or bool(breached)) and not stale,
        "names": breached,
        "stale": stale,
    }


def evaluate(
    policy: TriggerPolicy, log_dir: str, store: LogStore | None = None, *, state_at: str | None = None
) -> Evaluation:
    """Read the signals of ``policy``'s route and say whether it fires (state: ``state_at`` or the log dir)."""
    state = load_state(state_at or log_dir).get(policy.route, {})
    since = _parse_time(state.get("last_training_at"))
    reasons: list[str] = []
    signals: dict[str, Any] = {"last_training_at": state.get("last_training_at")}

    def count_new() -> int:
        if store is not None:
            return _new_examples(store, policy.route, since)
        with LogStore.open(log_dir) as own:
            return _new_examples(own, policy.route, since)

    if policy.drift_windows:
        streak = _drift_streak(log_dir, policy.route, since)
        signals["drift_streak"] = streak
        if streak >= policy.drift_windows:
            reasons.append(f"drift in {streak} windows in a row (policy: {policy.drift_windows})")
    if policy.new_examples:
        n = signals["new_examples"] = count_new()
        if n >= policy.new_examples:
            reasons.append(f"{n} new examples since the last training (policy: {policy.new_examples})")
    guard = _guardrail(log_dir, policy.guardrail_file, since)
    if guard is not None:
        signals["guardrail"] = guard
        if guard["breached"]:
            names = ", ".join(guard["names"]) or "slow-eval guardrail"
            reasons.append(f"guardrail breached: {names}")
    if policy.output_drift:
        _output_drift_signal(log_dir, policy.route, since, state, reasons, signals)
    fire = bool(reasons) and policy.enabled and not _held(policy, state, signals, count_new)
    return Evaluation(policy.route, fire, reasons, signals)


def _output_drift_signal(
    log_dir: str,
    route: str,
    since: dt.datetime | None,
    state: dict[str, Any],
    reasons: list[str],
    signals: dict[str, Any],
) -> None:
    """The route's output-drift guardrail, unless its finding is about another model than the deployed one."""
    from evals.drift.guardrail import guardrail_path

    out = _guardrail(log_dir, str(guardrail_path(log_dir, route)), since)
    if out is None or out.get("missing"):
        return
    current = state.get("last_deployed_model")
    if out["breached"] and current and current not in _output_models(out["file"]):
        out.update(breached=False, stale=f"the finding is about another model than {current}")
    signals["output_drift"] = out
    if out["breached"]:
        reasons.append(f"output drift: {_output_reason(out['file'])}")


def _held(
    policy: TriggerPolicy, state: dict[str, Any], signals: dict[str, Any], count_new: Callable[[], int]
) -> bool:
    """Whether a policy that fires waits instead: for new data, for an operator's pause, or a back-off
    (the first that holds it is recorded in ``signals``)."""
    if policy.min_new_examples:
        fresh: int | None = signals.get("new_examples")
        if fresh is None:
            fresh = count_new()
        if fresh < policy.min_new_examples:
            signals["waiting_for_data"] = {"new_examples": fresh, "need": policy.min_new_examples}
            return True
    if state.get("paused"):
        signals["paused"] = {"by": state.get("paused_by"), "at": state.get("paused_at")}
        return True
    held = backoff(state)
    if held is not None:
        signals["backoff"] = held
        return True
    return False


def _output_models(path: str) -> list[str]:
    try:
        return list(json.loads(Path(path).read_text(encoding="utf-8"))["guardrails"][0].get("models") or [])
    except (OSError, ValueError, KeyError, IndexError):
        return []


def _output_reason(path: str) -> str:
    try:
        entry = json.loads(Path(path).read_text(encoding="utf-8"))["guardrails"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return "on the candidate"
    return str(entry.get("reason") or "on the candidate")


# -- pipeline ------------------------------------------------------------------------------
@dataclass
class PipelineContext:
    """What a step sees: the route, its policy, why we run, and the earlier steps' results."""

    route: str
    policy: TriggerPolicy
    log_dir: str
    run_id: str
    reason: str
    since: dt.datetime | None
    """Last training time: data after it is new."""
    results: dict[str, Any] = field(default_factory=dict)


Step = Callable[[PipelineContext], Any]


def _not_connected(name: str) -> Step:
    def step(ctx: PipelineContext) -> Any:
        raise TriggerError(
            f"no {name} step configured for route {ctx.route}: set steps.{name} to module:function"
        )

    step.__qualname__ = f"not_connected({name})"
    return step


def load_step(spec: str) -> Step:
    """A step callable from ``module:function``."""
    module, _, attr = spec.partition(":")
    module = {"evals.steps": "evals.retrain.steps"}.get(module, module)  # the former home of the steps
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise TriggerError(f"cannot load step {spec}: {exc}") from exc
    if not callable(fn):
        raise TriggerError(f"step {spec} is not callable")
    return fn  # type: ignore[no-any-return]


class AdminDeploy:
    """Deploy step: make the registered model the route's candidate in shadow mode via the admin API."""

    def __init__(self, url: str = DEFAULT_ADMIN_URL, token: str | None = None, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def __call__(self, ctx: PipelineContext) -> dict[str, Any]:
        name = ctx.results.get("register") or ctx.results.get("train")
        if isinstance(name, Mapping):
            name = name.get("name") or name.get("model")
        if not name:
            raise TriggerError("nothing to deploy: register returned no model name", step="deploy")
        from gateway.admin_client import AdminClient, AdminError

        body = {"candidate": str(name), "mode": "shadow", "reason": f"trigger {ctx.run_id}: {ctx.reason}"}
        with AdminClient(self.url, self.token, timeout=self.timeout) as client:
            try:
                answer = client.set_route(ctx.route, body)
            except AdminError as exc:
                if exc.status == 0:
                    raise TriggerError(
                        f"cannot reach the gateway admin API: {exc.message}", step="deploy"
                    ) from exc
                raise TriggerError(f"admin API refused the deploy: {exc.message}", step="deploy") from exc
        return {"candidate": str(name), "mode": "shadow", "admin_response": answer}


@dataclass
class Pipeline:
    """The five steps, in order."""

    build_dataset: Step
    train: Step
    evaluate: Step
    register: Step
    deploy: Step

    @classmethod
    def from_policy(
        cls,
        policy: TriggerPolicy,
        *,
        admin_url: str = DEFAULT_ADMIN_URL,
        admin_token: str | None = None,
        overrides: Mapping[str, Step] | None = None,
    ) -> Pipeline:
        steps: dict[str, Step] = {name: _not_connected(name) for name in STEPS}
        steps["deploy"] = AdminDeploy(admin_url, admin_token)
        steps.update({name: load_step(spec) for name, spec in policy.steps.items()})
        steps.update(overrides or {})
        return cls(**steps)

    def describe(self) -> list[dict[str, str]]:
        out = []
        for name in STEPS:
            fn = getattr(self, name)
            target = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', type(fn).__name__)}"
            if isinstance(fn, AdminDeploy):
                target = f"PATCH {fn.url}/admin/routes/<route> (mode shadow)"
            out.append({"step": name, "target": target})
        return out


class RunBusy(TriggerError):
    """Another process runs this route's pipeline now."""


@contextlib.contextmanager
def _route_lock(location: str, route: str) -> Iterator[None]:
    """One run per route at a time, across hosts: a lease in the state backend, renewed while it runs."""
    from gateway.state import LeaseBusy, StateUnavailable, hold

    try:
        with hold(
            _backend(location), f"trigger-run-{route}", ttl=60.0, what=f"a trigger run for route {route}"
        ):
            yield
    except LeaseBusy as exc:
        raise RunBusy(str(exc)) from exc
    except StateUnavailable as exc:
        raise TriggerError(f"trigger state: {exc.message}") from exc


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def _wins(result: Any) -> bool:
    if isinstance(result, Mapping):
        return bool(result.get("wins", result.get("candidate_wins", False)))
    return bool(getattr(result, "wins", result))


def run(
    policy: TriggerPolicy,
    log_dir: str,
    pipeline: Pipeline,
    *,
    dry_run: bool = False,
    force: bool = False,
    store: LogStore | None = None,
    state_at: str | None = None,
) -> dict[str, Any]:
    """Evaluate the policy and, when it fires (or ``force``), run the pipeline; returns the run record.

    A dry run or a policy that does not fire writes nothing and returns ``status``
    ``dry_run`` or ``not_triggered`` with the signals and the steps that would run.
    """
    loc = state_at or log_dir
    ev = evaluate(policy, log_dir, store, state_at=loc)
    reasons = list(ev.reasons) or (["forced by operator"] if force else [])
    record: dict[str, Any] = {
        "route": policy.route,
        "reasons": reasons,
        "forced": force and not ev.fire,
        "signals": ev.signals,
        "steps": [],
    }
    if dry_run or not (ev.fire or force):
        record["status"] = "dry_run" if dry_run else "not_triggered"
        record["would_run"] = ev.fire or force
        record["plan"] = pipeline.describe()
        return record
    run_id = new_id("trig")
    started = _now()
    record.update(
        run_id=run_id,
        kind="train",
        started_at=_iso(started),
        status="running",
        pid=os.getpid(),
        host=socket.gethostname(),
    )
    with _route_lock(loc, policy.route):
        if not force:
            # decide again under the lease: another worker may have run this route (and moved its
            # last training time or set a back-off) between the look above and taking the lease
            ev = evaluate(policy, log_dir, store, state_at=loc)
            if not ev.fire:
                return {
                    "route": policy.route,
                    "reasons": list(ev.reasons),
                    "forced": False,
                    "signals": ev.signals,
                    "steps": [],
                    "status": "not_triggered",
                    "would_run": False,
                    "plan": pipeline.describe(),
                }
            record.update(reasons=list(ev.reasons), signals=ev.signals)
            reasons = list(ev.reasons)
        since = _parse_time(ev.signals.get("last_training_at"))
        ctx = PipelineContext(policy.route, policy, log_dir, run_id, "; ".join(reasons), since)
        save_run(loc, record)
        try:
            _run_steps(pipeline, ctx, record, loc)
        except Cancelled as exc:
            mark_cancelled(loc, record, str(exc))
        record["finished_at"] = _iso(_now())
        record["duration_s"] = round((_now() - started).total_seconds(), 1)
        save_run(loc, record)
        # recorded before the lease goes: a worker waiting for it must see this run's back-off
        update_state(
            loc, policy.route, last_run_id=run_id, last_run_status=record["status"], last_reason=ctx.reason
        )
        after_run(loc, policy.route, record["status"], policy.backoff_s)
    return record


def _cancelled(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, Cancelled):
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def _run_steps(pipeline: Pipeline, ctx: PipelineContext, record: dict[str, Any], loc: str) -> None:
    """The steps in order, each with its progress in the run record; stops at a rejection or failure."""
    from gateway.progress import listening

    route, run_id = ctx.route, ctx.run_id
    for name in STEPS:
        check_cancel(loc, route, run_id)
        entry: dict[str, Any] = {"step": name, "started_at": _iso(_now()), "status": "running"}
        record["steps"].append(entry)
        save_run(loc, record)

        def progress(snapshot: dict[str, Any], entry: dict[str, Any] = entry) -> None:
            entry["progress"] = snapshot
            save_run(loc, record)
            check_cancel(loc, route, run_id)

        t0 = _now()
        try:
            with listening(progress):
                result = getattr(pipeline, name)(ctx)
        except Exception as exc:  # a step is user code: record whatever it raised
            if _cancelled(exc):
                raise Cancelled(f"run {run_id} cancelled by an operator during {name}") from exc
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", finished_at=_iso(_now()))
            record["status"] = "failed"
            return
        ctx.results[name] = result
        entry.update(status="ok", result=_jsonable(result), finished_at=_iso(_now()))
        entry["duration_s"] = round((_now() - t0).total_seconds(), 1)
        if name == "evaluate" and not _wins(result):
            record["status"] = "rejected"
            return
    record["status"] = "deployed"
    deployed = ctx.results.get("deploy") or {}
    update_state(
        loc,
        route,
        last_training_at=record["started_at"],
        last_deployed_model=deployed.get("candidate") if isinstance(deployed, Mapping) else str(deployed),
        last_deployed_at=_iso(_now()),
    )


def status(
    log_dir: str, policies: Mapping[str, TriggerPolicy], *, state_at: str | None = None
) -> list[dict[str, Any]]:
    """Per route: policy, state, whether it would fire now, and its last run."""
    loc = state_at or log_dir
    state = load_state(loc)
    routes = sorted(set(policies) | set(state))
    out = []
    store = LogStore.open(log_dir) if any(p.new_examples for p in policies.values()) else None
    try:
        for route in routes:
            policy = policies.get(route)
            runs = load_runs(loc, route)
            entry: dict[str, Any] = {
                "route": route,
                "policy": dataclasses.asdict(policy) if policy else None,
                "state": state.get(route, {}),
                "runs": len(runs),
                "last_run": runs[-1] if runs else None,
            }
            if policy is not None:
                ev = evaluate(policy, log_dir, store, state_at=loc)
                entry.update(would_fire=ev.fire, reasons=ev.reasons, signals=ev.signals)
            out.append(entry)
    finally:
        if store is not None:
            store.close()
    return out
