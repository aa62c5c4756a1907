"""The controller's canary clock starts when the route entered canary (its audit history),
not at the controller's own first check."""

from __future__ import annotations

import time

import httpx
import pytest

from evals.online.canary_clock import canary_entered_at
from evals.online.controller import read_state
from gateway import jobs


def entry(ts, before, after):
    return {"ts": ts, "route": "r", "before": before, "after": after}


def test_the_clock_comes_from_the_last_entry_into_canary_with_this_candidate():
    off = {"mode": "off", "candidate": "c1", "share": 0}
    can5 = {"mode": "canary", "candidate": "c1", "share": 5}
    can25 = {"mode": "canary", "candidate": "c1", "share": 25}
    other = {"mode": "canary", "candidate": "c2", "share": 5}
    h = [entry(10, off, can5), entry(20, can5, can25)]
    assert canary_entered_at(h, "c1", 25, 100) == (10, 20)
    assert canary_entered_at([*h, entry(30, can25, {**can25, "salt": "x"})], "c1", 25, 100) == (10, 20)
    assert canary_entered_at([*h, entry(30, can25, off), entry(40, off, can5)], "c1", 5, 100) == (40, 40)
    assert canary_entered_at([*h, entry(30, can25, other)], "c2", 5, 100) == (30, 30)
    assert canary_entered_at(
        [*h, {"ts": 35, "upstream": "u", "after": {"base_url": "x"}}], "c1", 25, 100
    ) == (
        10,
        20,
    )
    assert canary_entered_at(h, "c1", 50, 100) == (10, 100)  # a share the history does not explain
    assert canary_entered_at([], "c1", 5, 100) == (100, 100)
    assert canary_entered_at([entry(10, off, off)], "c1", 5, 100) == (100, 100)


@pytest.mark.real_clock  # the gateway runs the controller as a `shadowtune` subprocess
def test_the_in_gateway_controller_starts_the_clock_when_the_route_entered_canary(
    make_settings, start_gateway, log_dir
):
    settings = make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": "echo-cand"}},
        routes={"chat": {"baseline": "base", "candidate": "cand", "mode": "shadow"}},
        controller={"routes": [{"route": "chat", "every_s": 3600}]},
    )
    gw = start_gateway(settings)
    r = httpx.patch(gw.url + "/admin/routes/chat", json={"mode": "canary", "share": 5, "reason": "go"})
    assert r.status_code == 200
    entered = gw.ctx.routes.history("chat")[-1]["ts"]
    time.sleep(1.0)
    before_check = time.time()
    [decision] = jobs.run_controller(gw.ctx, settings.controller.routes[0]) or [None]
    assert decision is not None and decision["action"] == "wait"
    state = read_state(log_dir, "chat")
    assert state["canary_started_at"] == entered < before_check - 0.9
    assert decision["canary_started_at"] == entered and decision["step_started_at"] == entered
