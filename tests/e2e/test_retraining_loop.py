"""The loop closes: a drifted stream fires the retraining trigger, a new tiny model is trained on
CPU, evaluated on the fixed test split against the current model, and deployed in shadow; every
step shows in `shadowtune triggers status` and in the log."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import openai
import pytest
import yaml
from click.testing import CliRunner

from gateway.cli import main
from gateway.store import LogStore, LogWriter
from tests.support.tiny_model import LORA_HP, call_record, extraction_example, shared_tiny_model
from trainer.dataset import build_dataset

pytestmark = pytest.mark.slow

HP = LORA_HP
DAY_US = 86_400 * 1_000_000


def _message(rng: random.Random, year: int) -> list[dict[str, str]]:
    messages, _ = extraction_example(rng)
    messages[-1]["content"] += f" Ordered on {year}-0{rng.randint(1, 9)}-1{rng.randint(0, 9)}."
    return messages


def test_drift_fires_the_trigger_and_a_new_model_reaches_shadow(
    log_dir, make_settings, start_gateway, tmp_path
):
    gw = start_gateway(
        make_settings(upstreams={"base": {"model": "echo-base"}}, routes={"orders": {"baseline": "base"}})
    )
    rng = random.Random(5)
    # what the current model learned from: last week's traffic, dates in 2023
    now_us = int(time.time() * 1e6)
    with LogWriter(log_dir) as w:
        for i in range(250):
            messages = _message(rng, 2023)
            answer = f"echo-base: {messages[-1]['content']}"
            w.append(
                "calls", call_record(messages, answer, route="orders", ts_us=now_us - 7 * DAY_US + i * 1000)
            )
    build_dataset(log_dir, "orders-auto", route="orders", warn=False)

    # live traffic through the gateway drifts: the dates are now in 2024
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused")
    for _ in range(150):
        client.chat.completions.create(model="orders", messages=_message(rng, 2024))
    gw.flush()

    runner = CliRunner()
    for _ in range(2):  # two drifted windows in a row
        res = runner.invoke(
            main,
            ["drift", "check", "--route", "orders", "--reference", "dataset:orders-auto", "--current", "1h",
             "--log-dir", log_dir, "--json"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        report = json.loads(res.stdout)
        assert report["drifted"] is True
    assert any("2024" in json.dumps(c) for c in report["checks"] if c["drifted"])

    policy = tmp_path / "policies.yaml"
    steps = {
        s: f"evals.retrain.steps:{s}" for s in ("build_dataset", "train", "evaluate", "register", "deploy")
    }
    params = {"base_model": shared_tiny_model(), "hyperparameters": HP, "serve": "dev", "gateway_url": gw.url}
    policy.write_text(
        yaml.safe_dump(
            {
                "routes": {
                    "orders": {"drift_windows": 2, "new_examples": None, "steps": steps, "params": params}
                }
            }
        )
    )
    status = runner.invoke(
        main, ["triggers", "status", "--policy", str(policy), "--log-dir", log_dir, "--json"]
    )
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)[0]["would_fire"] is True

    res = runner.invoke(
        main,
        ["triggers", "run", "--route", "orders", "--policy", str(policy), "--log-dir", log_dir, "--json"],
    )
    assert res.exit_code == 0, res.output
    runs = json.loads(res.stdout)
    run = runs[0] if isinstance(runs, list) else runs
    pid = None
    try:
        assert run["status"] == "deployed", json.dumps(run, indent=1)[:3000]
        assert "drift" in " ".join(run["reasons"])
        by_step = {s["step"]: s for s in run["steps"]}
        assert [s["step"] for s in run["steps"]] == [
            "build_dataset",
            "train",
            "evaluate",
            "register",
            "deploy",
        ]
        evaluation = by_step["evaluate"]["result"]
        assert evaluation["wins"] is True
        assert evaluation["new"]["exact_match"] > evaluation["current"]["exact_match"]
        deployed = by_step["deploy"]["result"]
        pid = deployed.get("pid")
        version = deployed["candidate"]

        state = gw.ctx.routes.get("orders")
        assert (state.candidate, state.mode) == (version, "shadow")  # shadow, never straight to users

        fresh = [_message(rng, 2024) for _ in range(5)]
        for m in fresh:
            answer = client.chat.completions.create(model="orders", messages=m, temperature=0, max_tokens=60)
            assert answer.choices[0].message.content == f"echo-base: {m[-1]['content']}"
        deadline = time.monotonic() + 120
        while True:
            gw.flush()
            with LogStore.open(log_dir) as store:
                shadow = store.sql(
                    "SELECT status FROM calls WHERE route = 'orders' AND variant = 'candidate' AND NOT served "
                    "AND upstream = ?",
                    [version],
                )
            if len(shadow) >= 5 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert [r["status"] for r in shadow] == [200] * 5

        after = runner.invoke(
            main, ["triggers", "status", "--policy", str(policy), "--log-dir", log_dir, "--json"]
        )
        row = json.loads(after.stdout)[0]
        assert row["state"]["last_run_status"] == "deployed"
        assert row["state"]["last_deployed_model"] == version
        assert os.path.exists(os.path.join(log_dir, "triggers", "runs", f"{run['run_id']}.json"))
    finally:
        if pid:
            os.killpg(pid, signal.SIGTERM)
