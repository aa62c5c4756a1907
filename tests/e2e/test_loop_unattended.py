"""The loop runs by itself (issue 14): with the gateway started, nothing is typed.

Set-up (what an operator has before): last week's traffic, dates in 2023, answered by the
prompted baseline; a LoRA candidate (v1) trained on it and served by the dev server, in shadow.
Start: the gateway, with its scheduled drift check, retraining triggers and canary controller.
Then only traffic arrives — the dates are now in 2024 — and the test watches the state:

drifted traffic -> output drift flagged on the candidate (it keeps writing 2023) -> the trigger
fires by itself -> dataset -> LoRA (v2) -> fast eval against the current model (v1) and the
baseline on the fixed test split -> deploy in shadow (or rejection) -> the judge on shadow
traffic (both orders) -> canary -> the controller's decision.

Every milestone's time since start is printed (``-s``); `docs/walkthrough.md` shows the same run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from typing import Any

import httpx
import pytest
import yaml

from gateway.store import LogWriter
from tests.support.fake_judge import FakeJudge, ServerThread
from tests.support.fake_upstream import extract_order
from tests.support.tiny_model import LORA_HP, call_record, extraction_example, shared_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.real_clock, pytest.mark.timeout(1200)]

DAY_US = 86_400 * 1_000_000
HP_V1 = {**LORA_HP, "epochs": 6}
HP = {**LORA_HP, "epochs": 4}  # the retraining run's: more data, fewer epochs
BUDGET_S = 300  # issue 14: 5 minutes on the 2-core machine; printed, not asserted (load varies), see docs/benchmarks.md
DEADLINE_S = 540  # past this the loop is stuck, not slow


def order(rng: random.Random, year: int) -> list[dict[str, str]]:
    messages, _ = extraction_example(rng)
    messages[-1]["content"] += f" Ordered on {year}-0{rng.randint(1, 9)}-{rng.randint(10, 28)}."
    return messages


def policies(tmp_path: Any, model: str, gateway_url: str, judge_url: str) -> str:
    steps = {
        s: f"evals.retrain.steps:{s}" for s in ("build_dataset", "train", "evaluate", "register", "deploy")
    }
    policy = {
        "drift_windows": None,  # input drift alone does not retrain here: what the candidate writes does
        "new_examples": None,
        "output_drift": True,
        "min_new_examples": 200,  # ...once there is new data to learn from
        "backoff_s": 3600,
        "steps": steps,
        "params": {
            "base_model": model,
            "hyperparameters": HP,
            "metric": "field_match",
            "serve": "dev",
            "gateway_url": gateway_url,
        },
        "auto_canary": {"judges": ["judge-tie"], "judge_url": judge_url, "min_pairs": 20, "share": 5},
    }
    path = tmp_path / "policies.yaml"
    path.write_text(yaml.safe_dump({"routes": {"orders": policy}}))
    return str(path)


CANARY = """
guardrails:
  - {metric: error_rate, margin: 0.05}
min_samples: 1000
min_step_s: 0
"""


class Traffic(threading.Thread):
    """Clients sending 2024 orders through the gateway until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.sent = 0
        self.rng = random.Random(2024)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as http:
            while not self.stop.is_set():
                body = {
                    "model": "orders",
                    "messages": order(self.rng, 2024),
                    "temperature": 0,
                    "max_tokens": 60,
                }
                http.post("/v1/chat/completions", json=body).raise_for_status()
                self.sent += 1
                time.sleep(0.4)


class LoopWatch:
    """What the test sees of the loop, read from the log dir and the state once a second (`poll`):
    each milestone's time since the start in ``marks``, printed as it is reached."""

    def __init__(self, log_dir: str, loc: str, policy_file: str) -> None:
        self.log_dir, self.loc, self.policy_file = log_dir, loc, policy_file
        self.t0 = time.monotonic()
        self.marks: dict[str, float] = {}
        self.reports: list[dict[str, Any]] = []
        self.finding: dict[str, Any] | None = None
        self.outcome: dict[str, Any] | None = None
        self.v2: str | None = None
        self.status_at_deploy = ""
        self.pids: list[int] = []

    def mark(self, name: str) -> None:
        if name not in self.marks:
            self.marks[name] = round(time.monotonic() - self.t0, 1)
            print(f"[{self.marks[name]:6.1f}s] {name}", flush=True)

    def poll(self) -> bool:
        """Read the state once; True when the loop has gone as far as it will (the controller decided,
        or the training run ended otherwise than deployed)."""
        from evals.drift.output import load_output_reports
        from evals.online.controller import read_decisions
        from evals.retrain.state import load_runs

        self.reports = load_output_reports(self.log_dir, "orders")
        self.finding = next(
            (
                f
                for r in self.reports
                for f in r["findings"]
                if f["variant"] == "candidate" and f["check"] == "novel_years"
            ),
            None,
        )
        if self.finding:
            self.mark("output drift flagged on the candidate")
        runs = load_runs(self.loc, "orders")
        trained = [r for r in runs if r.get("kind", "train") == "train"]
        if trained and not self._training_run(trained[0]):
            return True
        if any(r["status"] == "canary" for r in runs if r.get("kind") == "promote"):
            self.mark("judge: not worse -> canary")
        if self.v2 and any(
            d.get("candidate") == self.v2 and d.get("mode") == "canary"
            for d in read_decisions(self.loc, "orders")
        ):
            self.mark("controller decided on the canary")
            return True
        return False

    def _training_run(self, run: dict[str, Any]) -> bool:
        """Marks the first training run's steps; False once it ended otherwise than deployed."""
        self.mark("trigger fired")
        for step in run["steps"]:
            if step["status"] != "running":
                self.mark(f"step {step['step']} {step['status']}")
        if run["status"] == "running":
            return True
        self.outcome = run
        self.mark(f"run {run['status']}")
        if run["status"] != "deployed":
            return False
        if self.v2 is None:
            self.status_at_deploy = _command(["triggers", "status", "--route", "orders", "--policy",
                                              self.policy_file, "--log-dir", self.log_dir])  # fmt: skip
        deployed = run["steps"][-1]["result"]
        self.v2 = deployed["candidate"]
        if deployed["pid"] not in self.pids:
            self.pids.append(deployed["pid"])
        return True


def test_the_loop_runs_by_itself_from_drifted_traffic_to_the_controller(
    log_dir, make_settings, start_gateway, tmp_path, monkeypatch
):
    from evals.retrain.state import load_runs, load_state
    from trainer.dataset import build_dataset
    from trainer.lora import train_lora
    from trainer.registry import Registry
    from trainer.serve import start_dev_server

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two cores shared: torch threads spinning slow it all down
    setup_t0 = time.monotonic()
    model = shared_tiny_model()
    rng = random.Random(5)
    now_us = int(time.time() * 1e6)
    with LogWriter(log_dir) as w:
        for i in range(120):
            messages = order(rng, 2023)
            answer = extract_order(messages[-1]["content"])
            w.append(
                "calls", call_record(messages, answer, route="orders", ts_us=now_us - 7 * DAY_US + i * 1000)
            )
    build_dataset(log_dir, "orders-auto", route="orders", warn=False)
    v1 = train_lora(log_dir, model, "orders-auto", hyperparameters=HP_V1, progress=False, exact_match_limit=0)
    from evals.retrain.state import update_state
    from gateway.state import location_of

    # the first round was trained by hand: the trigger state says when, so "new data" means since then
    update_state(location_of(settings_for_state(log_dir)), "orders", last_training_at=v1.created_at)
    served = start_dev_server(log_dir, v1.version)
    pids, v1_url = [served.pid], served.url
    judge = FakeJudge()
    judge_server = ServerThread(judge.app).__enter__()
    ctl_policy = tmp_path / "canary.yaml"
    ctl_policy.write_text(CANARY)
    policy_file = policies(tmp_path, model, "http://127.0.0.1:0", judge_server.url)  # URL fixed below
    settings = make_settings(
        upstreams={"base": {"model": "extract-base"}, v1.version: {"base_url": v1_url, "model": v1.version}},
        routes={"orders": {"baseline": "base", "candidate": v1.version, "mode": "shadow"}},
        drift={
            "checks": [
                {
                    "route": "orders",
                    "reference": "dataset:orders-auto",
                    "current": "1h",
                    "every_s": 5,
                    "rounds": 19,
                }
            ]
        },
        triggers={"routes": [{"route": "orders", "policy": policy_file, "every_s": 5, "timeout_s": 500}]},
        controller={"routes": [{"route": "orders", "policy": str(ctl_policy), "every_s": 5}]},
        shadow={
            "max_in_flight": 2,
            "queue_size": 2,
        },  # a CPU dev server answers ~1 call/s: shadow the rest never
    )
    setup_s = time.monotonic() - setup_t0

    from gateway.state import location_of

    loc = location_of(settings)
    gw = start_gateway(settings)  # -- start: from here on nothing is typed --
    policies(tmp_path, model, gw.url, judge_server.url)  # the gateway reads the file at each tick
    watch = LoopWatch(log_dir, loc, policy_file)
    traffic = Traffic(gw.url)
    traffic.start()
    try:
        while time.monotonic() - watch.t0 < DEADLINE_S:
            time.sleep(1)
            if watch.poll():
                break
    finally:
        traffic.stop.set()
        traffic.join(30)
        judge_server.__exit__(None, None, None)
    finding, outcome, v2, marks = watch.finding, watch.outcome, watch.v2, watch.marks
    pids += watch.pids

    elapsed = time.monotonic() - watch.t0
    cpu = os.times()
    print(
        f"setup {setup_s:.0f}s; unattended loop {elapsed:.0f}s (budget {BUDGET_S}s); {traffic.sent} client calls; "
        f"load average {os.getloadavg()[0]:.1f}; cpu of this process and its reaped children "
        f"{cpu.user + cpu.system + cpu.children_user + cpu.children_system:.0f}s; marks {json.dumps(marks)}"
    )
    try:
        assert finding is not None, "no output drift on the candidate"
        assert finding["years"] == ["2023"] and finding["input_years"] == ["2024"]
        assert finding["field"] == "date", finding  # named even when the tiny model's JSON is broken
        assert outcome is not None, f"no run finished in time: {marks}"
        assert any(
            "output drift: candidate writes year 2023 in field date" in r for r in outcome["reasons"]
        ), outcome
        steps = {s["step"]: s for s in outcome["steps"]}
        ev = steps["evaluate"]["result"]
        assert ev["current"]["model"] == v1.version  # against the model it would replace...
        assert ev["baseline"]["model"] == "orders" and "error" not in ev["baseline"]  # ...and the baseline
        assert ev["test_examples"] >= 10
        registry = Registry(log_dir)
        if outcome["status"] == "rejected":  # the rejection path works; the test still needs a deployment
            assert registry.get(steps["train"]["result"]["version"]).status == "rejected"
            assert load_state(loc)["orders"]["backoff_until"]
            pytest.fail(  # the back-off is right, but the chain after deployment went untested
                f"v2 lost its fast eval ({ev['new']} vs {ev['current']}): the loop stopped at rejection"
            )
        assert outcome["status"] == "deployed" and ev["wins"]
        assert registry.get(v2).status == "ready"
        assert "controller decided on the canary" in marks, marks
        route = gw.ctx.routes.get("orders")
        assert route.candidate == v2
        history = gw.ctx.routes.history("orders", 20)
        assert any("auto canary" in (h.get("reason") or "") for h in history)
        outputs = walkthrough_outputs(log_dir, gw.url, tmp_path, watch.reports, marks)
        outputs["triggers status"] = watch.status_at_deploy
        if not os.environ.get("WALKTHROUGH_OUT"):
            check_walkthrough(outputs)
    finally:
        running = [r.get("pid") for r in load_runs(loc, "orders") if r.get("status") == "running"]
        for pid in pids + [p for p in running if p]:  # dev servers, and a next training started meanwhile
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)


WALKTHROUGH = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "walkthrough.md")


def settings_for_state(log_dir: str) -> Any:
    from gateway.config import Settings

    return Settings.model_validate({"store": {"log_dir": log_dir}})


def _command(args: list[str]) -> str:
    """The text a read-only ``shadowtune`` command prints (looking is not steering)."""
    from click.testing import CliRunner

    from gateway.cli import main

    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, (args, res.output)
    return res.output.rstrip()


def walkthrough_outputs(
    log_dir: str, url: str, tmp_path: Any, reports: list[dict[str, Any]], marks: dict[str, float]
) -> dict[str, str]:
    """What the walkthrough's read-only commands print now (and the scheduled drift check printed then)."""
    from click.testing import CliRunner

    from evals.drift.text import format_output_report
    from gateway.cli import main

    flagged = next(r for r in reports if r["findings"])
    out = {"drift check (outputs)": format_output_report(flagged)}
    policy = str(tmp_path / "policies.yaml")
    for name, args in {
        "triggers status (end)": [
            "triggers",
            "status",
            "--route",
            "orders",
            "--policy",
            policy,
            "--log-dir",
            log_dir,
        ],
        "triggers history": ["triggers", "history", "--route", "orders", "--log-dir", log_dir],
        "models list": ["models", "list", "--log-dir", log_dir],
        "routes history": ["routes", "history", "orders", "--url", url],
    }.items():
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, (name, res.output)
        out[name] = res.output.rstrip()
    out["marks"] = json.dumps(marks)
    if os.environ.get("WALKTHROUGH_OUT"):  # regenerate the doc's blocks from a real run
        with open(os.environ["WALKTHROUGH_OUT"], "w") as f:
            json.dump(out, f, indent=1)
    return out


def _shape(line: str) -> str:
    """A line with what changes from run to run (ids, times, numbers) masked."""
    import re

    line = re.sub(r"\b[a-z]+_[0-9A-Z]{26}\b", "<id>", line)
    line = re.sub(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d(:\d\d(\.\d+)?)?(\+00:00)?", "<time>", line)
    line = re.sub(r"\d+(\.\d+)?", "<n>", line)
    return " ".join(line.split())


def check_walkthrough(outputs: dict[str, str]) -> None:
    """Each console block of docs/walkthrough.md headed ``<!-- output: NAME -->`` has the shape of
    this run's output of NAME: every line of the block appears (masked) in the real output."""
    import re

    with open(WALKTHROUGH, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"<!-- output: (.+?) -->\s*```console\n(.*?)```", text, re.S)
    assert {name for name, _ in blocks} >= {"drift check (outputs)", "triggers status", "triggers history"}
    for name, block in blocks:
        real = {_shape(line) for line in outputs[name].splitlines()}
        for line in block.splitlines():
            if line.startswith("$ ") or not line.strip() or line.strip() == "...":
                continue
            assert _shape(line) in real, (
                f"docs/walkthrough.md, {name}: {line!r} is not what the command prints now"
            )
