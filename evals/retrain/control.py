"""A person's hand on a route's triggers (pause, resume, cancel), and the back-off after a bad run.

* **Pause** keeps every signal (drift streak, new examples) but fires nothing until **resume**;
  a scheduled run reports ``paused``.
* **Cancel** asks the route's running pipeline to stop: it checks between steps and on every
  progress update of a step (training, evaluation), records ``cancelled`` and marks the model it
  was training ``failed``. A run whose process is gone (killed, host lost) is marked ``cancelled``
  at once.
* **Back-off.** A rejected or failed run keeps the drift evidence (the last training time only
  moves when a model is deployed) and holds the route for ``policy.backoff_s``, doubled for
  each rejection in a row (at most 8 times), instead of retraining at every tick.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
from typing import Any

from evals.errors import TriggerError
from evals.retrain.state import _iso, _now, _parse_time, load_runs, load_state, save_run, update_state


class Cancelled(TriggerError):
    """The run was cancelled by an operator."""

    stops_work = True
    """Raised from a progress listener, it stops the step (`gateway.progress`)."""


def set_paused(
    loc: str, route: str, paused: bool, *, by: str | None = None, reason: str | None = None
) -> dict[str, Any]:
    values: dict[str, Any] = {"paused": paused, "paused_by": by if paused else None}
    values["paused_at" if paused else "resumed_at"] = _iso(_now())
    values["pause_reason"] = reason if paused else None
    update_state(loc, route, **values)
    return load_state(loc).get(route, {})


def running_run(loc: str, route: str) -> dict[str, Any] | None:
    runs = [
        r for r in load_runs(loc, route) if r.get("status") == "running" and r.get("kind", "train") == "train"
    ]
    return runs[-1] if runs else None


def _alive(record: dict[str, Any]) -> bool | None:
    """Whether the run's process lives (None when it runs on another host)."""
    if record.get("host") != socket.gethostname() or not record.get("pid"):
        return None
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def request_cancel(loc: str, route: str, *, by: str | None = None, kill: bool = False) -> dict[str, Any]:
    """Ask the running pipeline of ``route`` to stop; returns what was done."""
    record = running_run(loc, route)
    if record is None:
        return {"route": route, "cancelled": None, "reason": "no run in progress"}
    update_state(loc, route, cancel_requested=record["run_id"], cancel_requested_by=by)
    alive = _alive(record)
    out: dict[str, Any] = {"route": route, "cancelled": record["run_id"], "alive": alive}
    if alive is False:  # nobody left to notice: close the record now
        mark_cancelled(
            loc, record, f"cancelled by {by or 'an operator'} (its process {record['pid']} is gone)"
        )
        out["closed"] = True
    elif alive and kill:
        os.kill(int(record["pid"]), signal.SIGTERM)
        out["signalled"] = int(record["pid"])
    return out


def mark_cancelled(loc: str, record: dict[str, Any], why: str) -> None:
    record["status"] = "cancelled"
    record["finished_at"] = _iso(_now())
    record["cancel_reason"] = why
    for step in record.get("steps") or ():
        if step.get("status") == "running":
            step.update(status="cancelled", finished_at=record["finished_at"])
    save_run(loc, record)
    update_state(
        loc, record["route"], last_run_id=record["run_id"], last_run_status="cancelled", cancel_requested=None
    )


def check_cancel(loc: str, route: str, run_id: str) -> None:
    """Raise `Cancelled` when an operator asked to cancel ``run_id``."""
    if load_state(loc).get(route, {}).get("cancel_requested") == run_id:
        raise Cancelled(f"run {run_id} cancelled by an operator")


def backoff(state: dict[str, Any], now: dt.datetime | None = None) -> dict[str, Any] | None:
    """The active back-off of a route (``until``, ``runs``, ``after``), or None."""
    until = _parse_time(state.get("backoff_until"))
    if until is None or (now or _now()) >= until:
        return None
    return {
        "until": _iso(until),
        "runs": state.get("rejections_in_a_row", 0),
        "after": state.get("last_run_id"),
    }


def after_run(loc: str, route: str, status: str, backoff_s: float) -> None:
    """Record the back-off a run's outcome calls for (none after a deployment)."""
    state = load_state(loc).get(route, {})
    if status in ("rejected", "failed"):
        n = int(state.get("rejections_in_a_row") or 0) + 1
        wait = backoff_s * min(2 ** (n - 1), 8)
        update_state(
            loc,
            route,
            rejections_in_a_row=n,
            backoff_until=_iso(_now() + dt.timedelta(seconds=wait)),
            cancel_requested=None,
        )
    else:
        update_state(loc, route, rejections_in_a_row=0, backoff_until=None, cancel_requested=None)
