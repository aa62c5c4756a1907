"""The controller speaks to a real gateway through the shared admin client (`gateway.admin_client`):
route names with ``/`` are URL-quoted, the canary clock comes from the route's history, a rollback
is applied, and an unreachable gateway is a `ControllerError`."""

from __future__ import annotations

import time

import pytest

from evals.online.controller import AdminClient, CanaryController, CanaryPolicy, ControllerError
from gateway.store import LogWriter

TOKEN = "tok-ctl"
ROUTE = "org/model"


@pytest.fixture
def gw(make_settings, start_gateway, tmp_path):
    settings = make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": "echo-cand"}},
        routes={ROUTE: {"baseline": "base", "candidate": "cand"}},
        server={"admin_token": TOKEN, "auth": "auto"},
        store={"state_dir": str(tmp_path / "state")},
    )
    return start_gateway(settings)


def write_canary(log: str, version: int, since: float) -> None:
    """500 calls per arm since ``since``, one user each; a tenth of the candidate's are errors."""
    with LogWriter(log) as w:
        for i in range(1000):
            arm = "candidate" if i % 2 else "baseline"
            bad = arm == "candidate" and i % 20 == 1
            w.append(
                "calls",
                {
                    "call_id": f"c{i:04d}",
                    "ts": int((since + 0.01 + i * 0.0005) * 1e6),
                    "route": ROUTE,
                    "variant": arm,
                    "served": True,
                    "mode": "canary",
                    "route_version": version,
                    "user": f"u{i}",
                    "status": 500 if bad else 200,
                    "error_type": "upstream_error" if bad else None,
                    "latency_ms": 100.0,
                },
            )


def test_the_controller_rolls_back_a_route_with_a_slash_through_the_shared_client(gw, tmp_path):
    with AdminClient(gw.url, TOKEN) as admin:
        info = admin.set_route(ROUTE, {"mode": "canary", "share": 50.0, "reason": "start"})
        started = time.time()
        log = str(tmp_path / "ctl-log")
        write_canary(log, int(info["version"]), started)
        time.sleep(1.0)  # every call is in the past
        ctl = CanaryController(CanaryPolicy(), admin, log, ROUTE, state=str(tmp_path / "ctl-state"))
        record = ctl.check()
    assert record["action"] == "rollback" and record["applied"] is True, record.get("reason")
    # the clock started at the audit entry, read through the quoted /admin/routes/org%2Fmodel/history
    assert abs(record["canary_started_at"] - started) < 5
    route = gw.ctx.routes.get(ROUTE)
    assert (route.mode, route.share) == ("shadow", 0.0)


def test_an_unreachable_gateway_is_a_controller_error(tmp_path):
    with AdminClient("http://127.0.0.1:9", TOKEN) as admin:
        ctl = CanaryController(CanaryPolicy(), admin, str(tmp_path / "log"), ROUTE, state=str(tmp_path / "s"))
        with pytest.raises(ControllerError, match=r"admin API .*cannot reach the gateway"):
            ctl.check()
