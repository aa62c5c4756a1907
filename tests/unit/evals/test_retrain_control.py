"""Retraining runs by itself and stays in a person's hand: back-off after a rejection (drift
evidence kept), pause/resume, cancel mid-step, progress in the run record, output drift fires,
and the auto shadow->canary step through a real gateway and a judge over HTTP."""

from __future__ import annotations

import json
import threading
import time

from evals_traffic import call_row, write_shadow_pairs

from evals.drift import DriftReport, save_report
from evals.drift.guardrail import write_guardrail
from evals.retrain.control import request_cancel, set_paused
from evals.retrain.promote import maybe_promote, verdict
from evals.retrain.state import load_runs, load_state, update_state
from evals.retrain.triggers import Pipeline, TriggerPolicy, evaluate, run
from gateway.progress import Bar
from gateway.store import LogWriter
from gateway.store.ids import new_id

LOSES = {
    "build_dataset": "evals_traffic:build_dataset_step",
    "train": "evals_traffic:train_step",
    "evaluate": "evals_traffic:evaluate_loses_step",
    "register": "evals_traffic:register_step",
    "deploy": "evals_traffic:deploy_step",
}


def _drifted(log_dir: str, route: str, n: int) -> None:
    with LogWriter(log_dir) as w:
        w.append("calls", call_row(route=route, prompt="p", answer="a"))
    for _ in range(n):
        save_report(log_dir, DriftReport(new_id("drift"), route, "ref", "cur", 100, 50, 0.05, True, []))


def test_a_rejected_run_backs_off_and_keeps_the_drift_evidence(log_dir):
    _drifted(log_dir, "orders", 2)
    policy = TriggerPolicy("orders", drift_windows=2, new_examples=None, steps=LOSES, backoff_s=0.6)
    first = run(policy, log_dir, Pipeline.from_policy(policy))
    assert first["status"] == "rejected"
    ev = evaluate(policy, log_dir)
    assert not ev.fire and ev.signals["drift_streak"] == 2  # the evidence stays...
    assert ev.signals["backoff"]["runs"] == 1  # ...but the route waits
    assert run(policy, log_dir, Pipeline.from_policy(policy))["status"] == "not_triggered"
    time.sleep(0.7)
    assert evaluate(policy, log_dir).fire  # the back-off is over, the drift is still there
    assert run(policy, log_dir, Pipeline.from_policy(policy))["status"] == "rejected"
    state = load_state(log_dir)["orders"]
    assert state["rejections_in_a_row"] == 2 and "last_training_at" not in state
    time.sleep(0.7)  # the second back-off is twice as long
    assert not evaluate(policy, log_dir).fire
    time.sleep(0.6)
    assert evaluate(policy, log_dir).fire


def test_pause_holds_a_firing_route_until_resume(log_dir):
    _drifted(log_dir, "orders", 3)
    policy = TriggerPolicy("orders", drift_windows=3, new_examples=None, steps=LOSES)
    set_paused(log_dir, "orders", True, by="ana", reason="holiday")
    ev = evaluate(policy, log_dir)
    assert not ev.fire and ev.reasons and ev.signals["paused"]["by"] == "ana"
    assert run(policy, log_dir, Pipeline.from_policy(policy))["status"] == "not_triggered"
    assert load_runs(log_dir, "orders") == []
    set_paused(log_dir, "orders", False, by="ana")
    assert evaluate(policy, log_dir).fire


def slow_train(ctx):
    """A training step that reports progress and would take a minute."""
    with Bar(600, "train") as bar:
        for i in range(600):
            time.sleep(0.1)
            bar.set(i + 1, loss=1.0 / (i + 1))
    return {"model": "never"}


def test_cancel_stops_a_running_step_and_progress_shows_while_it_runs(log_dir):
    _drifted(log_dir, "orders", 1)
    steps = {**LOSES, "train": "test_retrain_control:slow_train"}
    policy = TriggerPolicy("orders", drift_windows=1, new_examples=None, steps=steps)
    out: dict[str, object] = {}
    worker = threading.Thread(target=lambda: out.update(run(policy, log_dir, Pipeline.from_policy(policy))))
    worker.start()
    deadline = time.monotonic() + 30
    progress = None
    while time.monotonic() < deadline and not progress:
        runs = load_runs(log_dir, "orders")
        steps_now = runs[-1]["steps"] if runs else []
        progress = steps_now[-1].get("progress") if steps_now and steps_now[-1]["step"] == "train" else None
        time.sleep(0.2)
    assert progress and progress["total"] == 600 and progress["done"] >= 1 and "eta_s" in progress
    assert request_cancel(log_dir, "orders", by="ana")["cancelled"] == runs[-1]["run_id"]
    worker.join(20)
    assert not worker.is_alive()
    assert out["status"] == "cancelled"
    [stored] = load_runs(log_dir, "orders")
    assert stored["status"] == "cancelled" and stored["steps"][-1]["status"] == "cancelled"
    assert stored["steps"][-1]["progress"]["done"] < 600
    assert request_cancel(log_dir, "orders")["cancelled"] is None  # nothing left to cancel


def test_output_drift_on_the_candidate_fires_the_trigger(log_dir):
    _drifted(log_dir, "orders", 0)
    report = {
        "report_id": "odrift_1",
        "route": "orders",
        "created_at": "2099-01-01T00:00:00+00:00",
        "variants": {"candidate": {"models": {"orders-lora-v1": 50}}},
        "findings": [
            {
                "variant": "candidate",
                "check": "novel_years",
                "summary": "candidate writes year 2023 in field date",
            }
        ],
    }
    write_guardrail(log_dir, report)
    policy = TriggerPolicy("orders", drift_windows=None, new_examples=None, steps=LOSES)
    ev = evaluate(policy, log_dir)
    assert ev.fire and ev.reasons == ["output drift: candidate writes year 2023 in field date"]
    assert not evaluate(
        TriggerPolicy("orders", drift_windows=None, new_examples=None, output_drift=False), log_dir
    ).fire


def test_a_firing_trigger_waits_for_new_data_when_the_policy_says_so(log_dir):
    _drifted(log_dir, "orders", 2)
    policy = TriggerPolicy("orders", drift_windows=2, new_examples=None, min_new_examples=5)
    waiting = evaluate(policy, log_dir)
    assert not waiting.fire and waiting.signals["waiting_for_data"] == {"new_examples": 1, "need": 5}
    with LogWriter(log_dir) as w:
        for _ in range(4):
            w.append("calls", call_row(route="orders", prompt="q", answer="a"))
    assert evaluate(policy, log_dir).fire


def test_the_verdict_needs_the_interval_not_the_point():
    assert verdict({"n_judged": 40, "wins": 0, "ties": 40, "losses": 0}, 0.1) == "not_worse"
    assert verdict({"n_judged": 40, "wins": 18, "ties": 4, "losses": 18}, 0.1) == "undecided"
    assert verdict({"n_judged": 200, "wins": 95, "ties": 10, "losses": 95}, 0.1) == "not_worse"
    assert verdict({"n_judged": 60, "wins": 5, "ties": 0, "losses": 55}, 0.1) == "worse"
    assert verdict({"n_judged": 0}, 0.1) == "undecided"


def _shadow_route(make_settings, start_gateway, log_dir, candidate_answer):
    gw = start_gateway(
        make_settings(
            upstreams={"base": {"model": "echo-base"}, "orders-lora-v1": {"model": "echo-cand"}},
            routes={"orders": {"baseline": "base", "candidate": "orders-lora-v1", "mode": "shadow"}},
        )
    )
    update_state(
        log_dir, "orders", last_deployed_model="orders-lora-v1", last_deployed_at="2000-01-01T00:00:00+00:00"
    )
    items = [(f"order {i}", f"answer number {i}", candidate_answer(i)) for i in range(40)]
    write_shadow_pairs(
        log_dir, "orders", items, baseline_model="gpt-4o-mini", candidate_model="orders-lora-v1"
    )
    return gw


def test_a_shadow_candidate_the_judge_finds_not_worse_moves_to_canary(
    make_settings, start_gateway, log_dir, fake_judge
):
    _, judge_url = fake_judge
    gw = _shadow_route(make_settings, start_gateway, log_dir, lambda i: f"answer numero {i}")
    policy = TriggerPolicy(
        "orders", auto_canary={"judges": ["judge-tie"], "judge_url": judge_url, "min_pairs": 30, "share": 5}
    )
    rec = maybe_promote(policy, log_dir, log_dir, admin_url=gw.url)
    assert rec is not None and rec["status"] == "canary", rec
    assert rec["judge"]["n_judged"] == 40 and rec["verdict"] == "not_worse"
    state = gw.ctx.routes.get("orders")
    assert (state.mode, state.share, state.candidate) == ("canary", 5.0, "orders-lora-v1")
    [change] = gw.ctx.routes.history("orders", 10)
    assert "not worse on 40 shadow pairs" in change["reason"]
    assert maybe_promote(policy, log_dir, log_dir, admin_url=gw.url)["status"] == "idle"  # once
    assert [r["kind"] for r in load_runs(log_dir, "orders")] == ["promote"]


def test_a_route_moved_while_the_judge_runs_is_left_as_it_is(
    make_settings, start_gateway, log_dir, fake_judge
):
    """The judge takes a while; an operator who moves the route meanwhile (here: off, at the first
    judge call) is not overridden by a canary decided on what the route was before."""
    provider, judge_url = fake_judge
    gw = _shadow_route(make_settings, start_gateway, log_dir, lambda i: f"answer numero {i}")
    moved = []

    def operator_acts(body):
        if not moved:
            moved.append(
                gw.ctx.routes.update("orders", {"mode": "off"}, actor="operator", reason="incident 3")
            )

    policy = TriggerPolicy(
        "orders", auto_canary={"judges": ["judge-tie"], "judge_url": judge_url, "min_pairs": 30, "share": 5}
    )
    provider.on_request = operator_acts
    try:
        rec = maybe_promote(policy, log_dir, log_dir, admin_url=gw.url)
    finally:
        provider.on_request = None  # the judge is the session's
    assert moved and rec["verdict"] == "not_worse"
    assert rec["status"] == "idle" and "moved to off" in rec["reason"], rec["reason"]
    assert gw.ctx.routes.get("orders").mode == "off"
    assert [h["actor"] for h in gw.ctx.routes.history("orders", 10)] == ["operator"]


def test_no_look_at_the_candidate_while_a_run_holds_the_route(
    make_settings, start_gateway, log_dir, fake_judge
):
    """A retraining run of the route (which deploys a newer candidate) or another look holds the
    route's lease: the look waits for the next round instead of judging and promoting meanwhile."""
    from evals.retrain.triggers import _route_lock

    provider, judge_url = fake_judge
    gw = _shadow_route(make_settings, start_gateway, log_dir, lambda i: f"answer numero {i}")
    policy = TriggerPolicy(
        "orders", auto_canary={"judges": ["judge-tie"], "judge_url": judge_url, "min_pairs": 30, "share": 5}
    )
    before = provider.calls()  # (the judge serves every test of this module)
    with _route_lock(log_dir, "orders"):
        rec = maybe_promote(policy, log_dir, log_dir, admin_url=gw.url)
    assert rec["status"] == "busy" and "in progress" in rec["reason"], rec
    assert provider.calls() == before and gw.ctx.routes.get("orders").mode == "shadow"
    assert maybe_promote(policy, log_dir, log_dir, admin_url=gw.url)["status"] == "canary"  # next round


def test_a_shadow_candidate_the_judge_finds_worse_stays_in_shadow(
    make_settings, start_gateway, log_dir, fake_judge
):
    _, judge_url = fake_judge
    gw = _shadow_route(
        make_settings, start_gateway, log_dir, lambda i: "no"
    )  # shorter: judge-long prefers the baseline
    policy = TriggerPolicy(
        "orders", auto_canary={"judges": ["judge-long"], "judge_url": judge_url, "min_pairs": 30}
    )
    rec = maybe_promote(policy, log_dir, log_dir, admin_url=gw.url)
    assert rec is not None and rec["status"] == "held" and rec["verdict"] == "worse", json.dumps(rec)[:500]
    assert gw.ctx.routes.get("orders").mode == "shadow"
    assert load_state(log_dir)["orders"]["promotion_refused"] == "orders-lora-v1"
    few = TriggerPolicy(
        "orders", auto_canary={"judges": ["judge-long"], "judge_url": judge_url, "min_pairs": 100}
    )
    update_state(log_dir, "orders", promotion_refused=None)
    assert maybe_promote(few, log_dir, log_dir, admin_url=gw.url)["status"] == "waiting"
