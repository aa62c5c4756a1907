"""Retraining state in the gateway's state backend (`gateway.state`): per route, and per run.

* ``trigger_state/<route>``: last training and deployment, the last run and its status, pause,
  cancel requests, the back-off after a rejected or failed run, auto-canary promotions;
* ``trigger_run/<run_id>``: a run's reasons, signals and steps (with each step's progress),
  rewritten as it goes; auto-canary checks are runs of kind ``promote``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from evals.errors import TriggerError


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.isoformat()


def _parse_time(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _backend(location: str) -> Any:
    from gateway.state import open_backend

    return open_backend(location)


def _state_call(fn: Callable[..., Any], *args: Any) -> Any:
    from gateway.state import StateUnavailable

    try:
        return fn(*args)
    except StateUnavailable as exc:
        raise TriggerError(f"trigger state: {exc.message}") from exc


def load_state(location: str) -> dict[str, dict[str, Any]]:
    """Per route: last training time, model, dataset, run (from the state backend at ``location``)."""
    docs = _state_call(_backend(location).list_docs, "trigger_state")
    return {str(d["route"]): d for d in docs if isinstance(d, dict) and d.get("route")}


def update_state(location: str, route: str, **values: Any) -> None:
    backend = _backend(location)
    state = _state_call(backend.get_doc, "trigger_state", route) or {}
    state.update(values, route=route)
    _state_call(backend.put_doc, "trigger_state", route, json.loads(json.dumps(state, default=str)))


def load_runs(location: str, route: str | None = None) -> list[dict[str, Any]]:
    """Recorded runs, oldest first."""
    runs = _state_call(_backend(location).list_docs, "trigger_run")
    return [r for r in runs if route is None or r.get("route") == route]


def save_run(location: str, record: dict[str, Any]) -> None:
    doc = json.loads(json.dumps(record, default=str))
    _state_call(_backend(location).put_doc, "trigger_run", record["run_id"], doc)
