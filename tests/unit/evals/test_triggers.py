"""Retraining triggers: policies, signals, recorded runs; steps plugged in as the trainer will."""

from __future__ import annotations

import datetime as dt
import json
import os
import time

import pytest
from evals_traffic import call_row

from evals.drift import DriftReport, save_report
from evals.errors import TriggerError
from evals.retrain.triggers import (
    AdminDeploy,
    Pipeline,
    PipelineContext,
    TriggerPolicy,
    evaluate,
    load_policies,
    load_runs,
    load_state,
    run,
    status,
)
from gateway.store import LogWriter
from gateway.store.ids import new_id

GOOD = {
    "build_dataset": "evals_traffic:build_dataset_step",
    "train": "evals_traffic:train_step",
    "evaluate": "evals_traffic:evaluate_wins_step",
    "register": "evals_traffic:register_step",
    "deploy": "evals_traffic:deploy_step",
}


def add_calls(log_dir: str, route: str, n: int) -> None:
    with LogWriter(log_dir) as w:
        for i in range(n):
            w.append("calls", call_row(route=route, prompt=f"p{i}", answer="a"))


def add_drift(log_dir: str, route: str, *verdicts: bool) -> None:
    for v in verdicts:
        save_report(log_dir, DriftReport(new_id("drift"), route, "ref", "cur", 100, 50, 0.05, v, []))


def test_drift_in_k_windows_in_a_row_fires(log_dir):
    add_calls(log_dir, "support", 1)
    policy = TriggerPolicy("support", drift_windows=3, new_examples=None)
    add_drift(log_dir, "support", True, True)
    assert not evaluate(policy, log_dir).fire
    add_drift(log_dir, "support", True)
    ev = evaluate(policy, log_dir)
    assert ev.fire and ev.signals["drift_streak"] == 3
    assert ev.reasons == ["drift in 3 windows in a row (policy: 3)"]
    add_drift(log_dir, "support", False)
    assert not evaluate(policy, log_dir).fire


def test_n_new_examples_fire_and_a_training_resets_the_count(log_dir):
    add_calls(log_dir, "support", 5)
    add_calls(log_dir, "other", 9)
    policy = TriggerPolicy("support", drift_windows=None, new_examples=5, steps=GOOD)
    ev = evaluate(policy, log_dir)
    assert ev.fire and ev.signals["new_examples"] == 5
    record = run(policy, log_dir, Pipeline.from_policy(policy))
    assert record["status"] == "deployed"
    after = evaluate(policy, log_dir)
    assert after.signals["new_examples"] == 0 and not after.fire


def test_a_breached_guardrail_fires_until_a_training_makes_it_stale(log_dir):
    add_calls(log_dir, "support", 1)
    guard = os.path.join(log_dir, "evals", "outcomes-support.json")
    os.makedirs(os.path.dirname(guard))
    written = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    with open(guard, "w") as f:
        json.dump(
            {
                "created_at": written.isoformat(),
                "guardrails": [{"name": "thumbs_down_rate", "breached": True}],
            },
            f,
        )
    policy = TriggerPolicy(
        "support",
        drift_windows=None,
        new_examples=None,
        guardrail_file="evals/outcomes-support.json",
        steps=GOOD,
    )
    ev = evaluate(policy, log_dir)
    assert ev.fire and ev.reasons == ["guardrail breached: thumbs_down_rate"]
    run(policy, log_dir, Pipeline.from_policy(policy))
    ev = evaluate(policy, log_dir)
    assert not ev.fire and ev.signals["guardrail"]["stale"]


def test_a_run_records_every_step_and_its_reason(log_dir):
    add_calls(log_dir, "support", 3)
    policy = TriggerPolicy("support", drift_windows=None, new_examples=3, steps=GOOD)
    record = run(policy, log_dir, Pipeline.from_policy(policy))
    [stored] = load_runs(log_dir, "support")
    assert stored == json.loads(json.dumps(record, default=str))
    assert [s["step"] for s in stored["steps"]] == [
        "build_dataset",
        "train",
        "evaluate",
        "register",
        "deploy",
    ]
    assert all(s["status"] == "ok" for s in stored["steps"])
    assert stored["reasons"] == ["3 new examples since the last training (policy: 3)"]
    model = stored["steps"][3]["result"]
    assert stored["steps"][4]["result"] == {"candidate": model, "mode": "shadow"}
    state = load_state(log_dir)["support"]
    assert state["last_deployed_model"] == model and state["last_run_status"] == "deployed"


def test_a_candidate_that_loses_the_fast_eval_is_not_deployed(log_dir):
    add_calls(log_dir, "support", 3)
    policy = TriggerPolicy(
        "support",
        drift_windows=None,
        new_examples=3,
        steps={**GOOD, "evaluate": "evals_traffic:evaluate_loses_step"},
    )
    record = run(policy, log_dir, Pipeline.from_policy(policy))
    assert record["status"] == "rejected"
    assert [s["step"] for s in record["steps"]] == ["build_dataset", "train", "evaluate"]
    assert "last_deployed_model" not in load_state(log_dir)["support"]


def test_a_failing_step_is_recorded_with_its_error(log_dir):
    add_calls(log_dir, "support", 3)
    policy = TriggerPolicy(
        "support",
        drift_windows=None,
        new_examples=3,
        steps={**GOOD, "train": "evals_traffic:failing_train_step"},
    )
    record = run(policy, log_dir, Pipeline.from_policy(policy))
    assert record["status"] == "failed"
    assert record["steps"][-1] == {
        **record["steps"][-1],
        "step": "train",
        "status": "failed",
        "error": "RuntimeError: out of memory",
    }
    assert load_runs(log_dir)[0]["status"] == "failed"


def test_unconnected_steps_fail_with_a_hint(log_dir):
    add_calls(log_dir, "support", 1)
    policy = TriggerPolicy("support", drift_windows=None, new_examples=1)
    record = run(policy, log_dir, Pipeline.from_policy(policy))
    assert record["status"] == "failed"
    assert "set steps.build_dataset to module:function" in record["steps"][0]["error"]


def test_dry_run_and_quiet_policies_write_nothing(log_dir):
    add_calls(log_dir, "support", 2)
    policy = TriggerPolicy("support", drift_windows=None, new_examples=2, steps=GOOD)
    record = run(policy, log_dir, Pipeline.from_policy(policy), dry_run=True)
    assert record["status"] == "dry_run" and record["would_run"]
    assert record["plan"][0]["step"] == "build_dataset"
    assert record["plan"][1]["target"] == "evals_traffic:train_step"
    quiet = TriggerPolicy("support", drift_windows=None, new_examples=50, steps=GOOD)
    assert run(quiet, log_dir, Pipeline.from_policy(quiet))["status"] == "not_triggered"
    assert load_runs(log_dir) == [] and load_state(log_dir) == {}


def test_policies_load_from_yaml_and_reject_unknown_keys(tmp_path):
    path = tmp_path / "policies.yaml"
    path.write_text(
        "routes:\n  support:\n    drift_windows: 2\n    steps:\n      train: trainer.pipeline:train\n"
    )
    [(name, policy)] = load_policies(path).items()
    assert name == "support" and policy.drift_windows == 2 and policy.new_examples == 1000
    path.write_text("routes:\n  support:\n    drift_window: 2\n")
    with pytest.raises(TriggerError, match="unknown keys drift_window"):
        load_policies(path)


def test_status_lists_signals_and_the_last_run(log_dir):
    add_calls(log_dir, "support", 4)
    policy = TriggerPolicy("support", drift_windows=2, new_examples=3, steps=GOOD)
    [before] = status(log_dir, {"support": policy})
    assert before["would_fire"] and before["runs"] == 0 and before["signals"]["drift_streak"] == 0
    run(policy, log_dir, Pipeline.from_policy(policy))
    [after] = status(log_dir, {"support": policy})
    assert not after["would_fire"] and after["runs"] == 1 and after["last_run"]["status"] == "deployed"


def test_admin_deploy_puts_the_new_model_in_shadow_through_the_real_gateway(
    make_settings, start_gateway, log_dir
):
    settings = make_settings(
        upstreams={"base": {"model": "gpt-4o-mini"}, "tiny@v1": {"model": "tiny"}},
        routes={"support": {"baseline": "base"}},
        server={"admin_token": "admin-secret"},
    )
    gw = start_gateway(settings)
    ctx = PipelineContext(
        "support", TriggerPolicy("support"), log_dir, "trig_X", "drift 3x", None, {"register": "tiny@v1"}
    )
    result = AdminDeploy(gw.url, "admin-secret")(ctx)
    assert result["candidate"] == "tiny@v1" and result["admin_response"]["mode"] == "shadow"
    state = gw.ctx.routes.get("support")
    assert (state.candidate, state.mode) == ("tiny@v1", "shadow")
    [change] = gw.ctx.routes.history("support", 10)
    assert change["reason"] == "trigger trig_X: drift 3x"
    with pytest.raises(TriggerError, match="HTTP 401"):
        AdminDeploy(gw.url, "wrong-token")(ctx)
    ctx.results["register"] = "not-an-upstream"
    with pytest.raises(TriggerError, match="HTTP 400"):
        AdminDeploy(gw.url, "admin-secret")(ctx)


def test_a_second_worker_that_decided_before_the_first_ran_does_not_train_again(log_dir):
    """Two schedulers evaluate the same route; the first takes the lease, trains, deploys and
    lets go; the second, which decided to fire before that, must decide again under the lease
    instead of training a second model on the same evidence."""
    import threading

    add_calls(log_dir, "support", 5)
    guard = os.path.join(log_dir, "evals", "guard.json")
    os.makedirs(os.path.dirname(guard))
    os.mkfifo(guard)  # holds the second worker inside its evaluation, after it counted 5 new calls
    policy = TriggerPolicy("support", drift_windows=None, new_examples=5, guardrail_file=guard, steps=GOOD)
    second: dict[str, object] = {}

    def worker() -> None:
        second.update(run(policy, log_dir, Pipeline.from_policy(policy)))

    thread = threading.Thread(target=worker, daemon=True)  # never holds up the run if this test fails
    thread.start()
    gate = None
    for _ in range(1000):  # the second worker has opened the guardrail file: it has decided to fire
        try:
            gate = os.open(guard, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            time.sleep(0.01)
    assert gate is not None
    plain = guard + ".plain"
    with open(plain, "w") as f:
        f.write("{}")
    os.replace(plain, guard)  # every later read is a plain file
    first = run(policy, log_dir, Pipeline.from_policy(policy))
    assert first["status"] == "deployed"
    os.write(gate, b"{}")
    os.close(gate)
    thread.join(60)
    assert not thread.is_alive()
    assert second["status"] == "not_triggered", second.get("reasons")
    assert [r["status"] for r in load_runs(log_dir, "support")] == ["deployed"]
