"""The canary clock: when a route entered canary, read from its audit history.

The controller compares arms on the calls made since the canary began; that moment is the
audit entry that put the route into ``canary`` with its current candidate, not the
controller's own first check (which may come much later, after a restart or a new leader).
"""

from __future__ import annotations

from typing import Any


def canary_entered_at(
    history: list[dict[str, Any]], candidate: Any, share: float, now: float
) -> tuple[float, float]:
    """``(entered canary, share set)`` from a route's audit entries (oldest first); ``now`` when unknown.

    The canary began at the last change that put the route into canary with ``candidate``
    (from another mode or another candidate); its current step at the last change of the
    share since then."""
    entered = step = None
    last_share = None
    for h in history:
        after, before = h.get("after") or {}, h.get("before") or {}
        if "mode" not in after:
            continue  # an upstream change
        ts = float(h.get("ts") or now)
        if after.get("mode") != "canary" or after.get("candidate") != candidate:
            entered = step = None
            continue
        if entered is None or before.get("mode") != "canary" or before.get("candidate") != candidate:
            entered = step = ts
        elif before.get("share") != after.get("share"):
            step = ts
        last_share = after.get("share")
    if entered is None or entered > now:
        return now, now
    if last_share is None or float(last_share) != float(share):
        step = now  # the share changed outside the history: its step starts now
    return entered, step if step is not None and step <= now else entered
