"""What each traffic mode does with one request.

========  ==========================================  =====================================
mode      serves the user                             runs in the background
========  ==========================================  =====================================
off       baseline                                    nothing
shadow    baseline                                    candidate (sampled by shadow_rate)
canary    candidate for users in the canary arm,      nothing
          baseline for the rest (sticky, see assign)
primary   candidate                                   baseline (reverse shadow, shadow_rate)
========  ==========================================  =====================================

A served candidate that fails before the first byte falls back to the baseline
(`gateway.hotpath`). A request without a sticky key is placed at random in canary mode.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.routing.assign import in_canary
from gateway.routing.state import RouteState


@dataclass(frozen=True, slots=True)
class Plan:
    serve: str  # "baseline" | "candidate"
    shadow: str | None = None  # the variant run in the background, if any


_OFF = Plan("baseline")


def plan_for(state: RouteState, sticky_key: str | None, rnd: float) -> Plan:
    """The plan for one request; ``rnd`` is a uniform draw in [0, 1) for sampling."""
    mode = state.mode
    if mode == "off" or state.candidate is None:
        return _OFF
    if mode == "shadow":
        return Plan("baseline", "candidate" if rnd < state.shadow_rate else None)
    if mode == "canary":
        if sticky_key is None:
            return Plan("candidate" if rnd * 100 < state.share else "baseline")
        return Plan("candidate" if in_canary(sticky_key, state.salt, state.share) else "baseline")
    return Plan("candidate", "baseline" if rnd < state.shadow_rate else None)
