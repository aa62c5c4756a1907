"""The canary controller run by the gateway itself, against its own admin API."""

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from gateway import jobs
from tests.unit.evals.test_outcomes_cli import POLICY, write_traffic

pytestmark = pytest.mark.real_clock  # the gateway runs the check as a `shadowtune` subprocess


def test_the_gateway_rolls_back_a_worse_canary_by_itself(make_settings, start_gateway, log_dir, tmp_path):
    import time

    from evals.online.controller import read_state

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    settings = make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": "echo-cand"}},
        routes={"chat": {"baseline": "base", "candidate": "cand", "mode": "canary", "share": 1}},
        controller={"routes": [{"route": "chat", "policy": str(policy), "every_s": 3600}]},
    )
    reader = InMemoryMetricReader()
    gw = start_gateway(settings, metric_readers=[reader])
    ctl = settings.controller.routes[0]

    first = jobs.run_controller(gw.ctx, ctl)  # starts the canary clock
    assert first is not None and [d["action"] for d in first] == ["wait"]
    start = read_state(log_dir, "chat")["canary_started_at"]
    write_traffic(log_dir, n_base=2000, n_cand=200, cand_error_every=3, start=start + 0.001, spacing=1e-6)
    time.sleep(0.1)

    second = jobs.run_controller(gw.ctx, ctl)
    assert second is not None and [d["action"] for d in second] == ["rollback"]
    assert (gw.ctx.routes.get("chat").mode, gw.ctx.routes.get("chat").share) == ("shadow", 0.0)
    history = gw.ctx.routes.history("chat")
    assert history[-1]["actor"] == "controller" and "error_rate" in history[-1]["reason"]
    points = [
        (p.attributes["shadowtune.controller.action"], p.value)
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "shadowtune.controller.decisions"
        for p in m.data.data_points
    ]
    assert ("rollback", 1) in points
