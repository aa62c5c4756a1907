"""The canary controller's pause, written and read in one place.

The flag lives in the route's controller state document (kind ``controller``, named by the
route) next to the controller's own fields: ``paused``, ``paused_by``, ``paused_reason`` and
``paused_at`` (epoch seconds). Each change also appends a ``pause`` or ``resume`` record to
the ``decisions`` log, so the controller's history shows who stopped it and why.

`set_paused` is what ``shadowtune controller pause`` (`evals.online.controller`) and the review
console's operations page (`gateway.web.ops`) both call; `pause_of` is how the controller and
the page read it back. The gateway cannot import evals, so the format is here, in the state
layer they both reach.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, TypedDict

from gateway.state.base import StateBackend

KIND = "controller"
"""The state documents' kind: one document per route."""


class Pause(TypedDict):
    """Who paused a route's controller, why, and when (epoch seconds)."""

    by: str | None
    reason: str | None
    at: float | None


def set_paused(
    backend: StateBackend, route: str, paused: bool, *, actor: str, reason: str | None = None
) -> dict[str, Any]:
    """Pause or resume the controller of ``route`` (and log the decision); returns its new state.

    Raises `gateway.state.StateUnavailable` when the backend cannot be read or written.
    """
    state = backend.get_doc(KIND, route) or {}
    state.update(
        {
            "route": route,
            "paused": paused,
            "paused_by": actor if paused else None,
            "paused_reason": reason if paused else None,
            "paused_at": time.time() if paused else None,
        }
    )
    backend.put_doc(KIND, route, state)
    backend.append_record(
        "decisions",
        {
            "ts": time.time(),
            "route": route,
            "action": "pause" if paused else "resume",
            "actor": actor,
            "reason": reason,
        },
    )
    return state


def pause_of(state: Mapping[str, Any]) -> Pause | None:
    """The pause recorded in a controller state document, or None when the controller runs."""
    if not state.get("paused"):
        return None
    return Pause(by=state.get("paused_by"), reason=state.get("paused_reason"), at=state.get("paused_at"))
