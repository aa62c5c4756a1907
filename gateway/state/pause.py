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
from collections.abc import Callable, Mapping
from typing import Any, TypedDict

from gateway.state.base import StateBackend

KIND = "controller"
"""The state documents' kind: one document per route."""
FIELDS = ("paused", "paused_by", "paused_reason", "paused_at")
"""The pause's fields of the document. Only `set_paused` writes them: the controller writes its own
fields with `keep_pause`, so a pause set while a check runs is never overwritten by that check."""


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
    fields = {
        "route": route,
        "paused": paused,
        "paused_by": actor if paused else None,
        "paused_reason": reason if paused else None,
        "paused_at": time.time() if paused else None,
    }
    state = backend.update_doc(KIND, route, lambda stored: {**(stored or {}), **fields})
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


def keep_pause(state: Mapping[str, Any]) -> Callable[[dict[str, Any] | None], dict[str, Any]]:
    """For `StateBackend.update_doc`: the controller's ``state`` with the pause as stored now."""

    def merge(stored: dict[str, Any] | None) -> dict[str, Any]:
        out = {k: v for k, v in state.items() if k not in FIELDS}
        out.update({k: v for k, v in (stored or {}).items() if k in FIELDS})
        return out

    return merge


def pause_of(state: Mapping[str, Any]) -> Pause | None:
    """The pause recorded in a controller state document, or None when the controller runs."""
    if not state.get("paused"):
        return None
    return Pause(by=state.get("paused_by"), reason=state.get("paused_reason"), at=state.get("paused_at"))
