"""`eval outcomes` and `controller` commands via CliRunner on a real log directory.

The controller talks to a small admin endpoint served over real HTTP on 127.0.0.1
(a stand-in until the gateway's admin API exists).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from evals.online.controller import CanaryController, read_decisions, read_state, set_paused
from evals.online.decision import CanaryPolicy
from evals.outcomes_cli import controller, outcomes, parse_since
from gateway.admin_client import AdminClient
from gateway.store import LogWriter


@pytest.fixture
def log_dir(tmp_path, monkeypatch):
    log = str(tmp_path / "log")
    monkeypatch.setenv("SHADOWTUNE_LOG_DIR", log)
    return log


def write_traffic(log, *, n_base, n_cand, cand_error_every=0, route="chat", start=None, spacing=0.01):
    start = time.time() - 3600 if start is None else start
    with LogWriter(log) as w:
        for variant, n in (("baseline", n_base), ("candidate", n_cand)):
            for j in range(n):
                err = cand_error_every and variant == "candidate" and j % cand_error_every == 0
                cid = f"call_{variant[0]}{j:06d}"
                w.append(
                    "calls",
                    {
                        "call_id": cid,
                        "ts": int((start + j * spacing) * 1e6),
                        "route": route,
                        "variant": variant,
                        "served": True,
                        "mode": "canary",
                        "user": f"{variant}-u{j}",
                        "status": 500 if err else 200,
                        "latency_ms": 100.0,
                        "cost_usd": 0.001,
                    },
                )
                if j % 10 == 0:
                    w.append(
                        "events",
                        {
                            "event_id": f"evt_{cid}",
                            "call_id": cid,
                            "ts": int((start + j * spacing) * 1e6) + 1,
                            "kind": "thumbs",
                            "value": "down",
                            "value_num": 0.0,
                        },
                    )


def test_outcomes_prints_rates_with_intervals_and_differences(log_dir):
    write_traffic(log_dir, n_base=2000, n_cand=500, cand_error_every=5, spacing=0.001)
    res = CliRunner().invoke(outcomes, ["--route", "chat", "--since", "1d", "--expected-share", "20"])
    assert res.exit_code == 0, res.output
    assert "error_rate" in res.output and "20.0% [" in res.output  # candidate: 100 errors of 500
    assert "candidate - baseline" in res.output and "worse" in res.output
    assert "split: expected 20%, observed 20.00% of 2500 units" in res.output


def test_outcomes_json_by_day(log_dir):
    write_traffic(log_dir, n_base=50, n_cand=50)
    res = CliRunner().invoke(outcomes, ["--route", "chat", "--since", "2d", "--by", "day", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert len(rep["periods"]) >= 1 and all(p["day"] for p in rep["periods"])
    assert sum(p["variants"]["baseline"]["calls"] for p in rep["periods"]) == 50
    assert rep["periods"][-1]["variants"]["baseline"]["thumbs_down_rate"]["count"] >= 1


def test_outcomes_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(outcomes, ["--route", "chat", "--log-dir", str(tmp_path / "nope")])
    assert res.exit_code == 1 and res.output.startswith("Error: no call log at")
    res = CliRunner().invoke(
        outcomes, ["--route", "chat", "--since", "yesterday", "--log-dir", str(tmp_path)]
    )
    assert res.exit_code == 2 and "cannot read time" in res.output


def test_parse_since():
    assert parse_since("7d", now=1000.0) == 1000.0 - 7 * 86400
    assert parse_since("2025-01-01") == 1735689600.0


class FakeAdmin:
    """The admin API's route endpoints, served over HTTP, recording every PATCH."""

    def __init__(self, token="secret", **route):
        self.route = {
            "route": "chat",
            "baseline": "gpt-big",
            "candidate": "ft-small",
            "mode": "canary",
            "share": 1.0,
            "version": 3,
            **route,
        }
        self.patches: list[dict] = []
        admin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _authorised(self):
                if self.headers.get("authorization") != f"Bearer {token}":
                    self._reply(
                        401, {"error": {"message": "bad admin token", "type": "authentication_error"}}
                    )
                    return False
                return True

            def do_GET(self):
                if self._authorised():
                    self._reply(200, admin.route)

            def do_PATCH(self):
                if not self._authorised():
                    return
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                admin.patches.append({"path": self.path, **body})
                admin.route.update(mode=body["mode"], share=body["share"], version=admin.route["version"] + 1)
                self._reply(200, admin.route)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


POLICY = """
guardrails:
  - {metric: error_rate, margin: 0.02}
alpha: 0.05
min_samples: 200
min_step_samples: 50
min_step_s: 0
"""


def canary_traffic(log_dir, **kw):
    """Traffic logged after the controller's first check (which starts the canary clock), before now."""
    start = read_state(log_dir, "chat")["canary_started_at"]
    write_traffic(log_dir, start=start + 0.001, spacing=1e-6, **kw)
    time.sleep(max(0.0, start + 0.05 - time.time()))


def empty_log(log_dir):
    with LogWriter(log_dir):
        pass


def run_once(admin, log_dir, tmp_path, token="secret"):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return CliRunner().invoke(
        controller,
        [
            "run",
            "--route",
            "chat",
            "--once",
            "--url",
            admin.url,
            "--admin-token",
            token,
            "--policy",
            str(policy),
        ],
    )


def test_controller_rolls_back_a_worse_candidate_through_the_admin_api(log_dir, tmp_path):
    with FakeAdmin() as admin:
        empty_log(log_dir)
        first = run_once(admin, log_dir, tmp_path)  # the canary clock starts now
        assert first.exit_code == 0 and first.output.startswith("wait"), first.output
        canary_traffic(log_dir, n_base=2000, n_cand=200, cand_error_every=3)
        res = run_once(admin, log_dir, tmp_path)
    assert res.exit_code == 0, res.output
    assert res.output.startswith("rollback: rollback at 1%")
    (patch,) = admin.patches
    assert patch["path"] == "/admin/routes/chat"
    assert (patch["mode"], patch["share"], patch["actor"]) == ("shadow", 0.0, "controller")
    assert "error_rate" in patch["reason"] and "p_worse" in patch["reason"]
    last = read_decisions(log_dir, "chat")[-1]
    assert last["action"] == "rollback" and last["applied"] is True
    assert last["checks"][0]["n_candidate"] == 200 and last["arms"]["candidate"]["calls"] == 200


def test_controller_advances_an_equal_candidate(log_dir, tmp_path):
    with FakeAdmin(share=5.0) as admin:
        empty_log(log_dir)
        run_once(admin, log_dir, tmp_path)
        canary_traffic(log_dir, n_base=9500, n_cand=500)
        res = run_once(admin, log_dir, tmp_path)
    assert res.exit_code == 0, res.output
    assert res.output.startswith("advance: advance 5% -> 25%")
    assert [(p["mode"], p["share"]) for p in admin.patches] == [("canary", 25.0)]


def test_a_pause_set_while_a_check_observes_stops_its_advance_and_is_kept(log_dir, tmp_path):
    """An operator pauses the route while a check reads the log (here at the moment it has decided):
    the check applies nothing, and its write of the controller's state keeps the pause."""
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(POLICY)
    policy = CanaryPolicy.from_file(str(policy_file), "chat")

    def operator_pauses_now(decision, *_):
        set_paused(log_dir, "chat", True, actor="operator:bo", reason="incident 9")
        return decision

    with FakeAdmin(share=5.0) as admin:
        empty_log(log_dir)
        run_once(admin, log_dir, tmp_path)
        canary_traffic(log_dir, n_base=9500, n_cand=500)
        with AdminClient(admin.url, "secret") as client:
            record = CanaryController(policy, client, log_dir, "chat", hold=operator_pauses_now).check()
    assert admin.patches == []  # the advance this traffic earns was not applied
    assert (record["action"], record["applied"]) == ("paused", False)
    assert record["reason"] == "paused by operator:bo during the check"
    state = read_state(log_dir, "chat")
    assert (state["paused"], state["paused_by"], state["paused_reason"]) == (
        True,
        "operator:bo",
        "incident 9",
    )
    assert state["last_action"] == "paused" and state["canary_started_at"] is not None


def test_paused_controller_does_not_act(log_dir, tmp_path):
    runner = CliRunner()
    assert runner.invoke(controller, ["pause", "chat", "--reason", "incident 42"]).exit_code == 0
    empty_log(log_dir)
    with FakeAdmin() as admin:
        run_once(admin, log_dir, tmp_path)
        state = read_state(log_dir, "chat")
        assert state["paused"] is True and "canary_started_at" not in state
        res = run_once(admin, log_dir, tmp_path)
        assert res.output.startswith("paused")
        status = runner.invoke(controller, ["status", "chat"])
        assert "PAUSED (by operator: incident 42)" in status.output
        assert runner.invoke(controller, ["resume", "chat"]).exit_code == 0
        assert run_once(admin, log_dir, tmp_path).output.startswith("wait")
    assert admin.patches == []
    actions = [d["action"] for d in read_decisions(log_dir, "chat")]
    assert actions == ["pause", "paused", "paused", "resume", "wait"]


def test_controller_reports_admin_errors_as_one_line(log_dir, tmp_path):
    with FakeAdmin() as admin:
        res = run_once(admin, log_dir, tmp_path, token="wrong")
    assert res.exit_code == 1
    assert res.output.strip() == "Error: admin API GET /admin/routes/chat: HTTP 401: bad admin token"


def test_controller_rejects_a_bad_policy(log_dir, tmp_path):
    policy = tmp_path / "bad.yaml"
    policy.write_text("guardrails: [{metric: error_rate, margin: -1}]\n")
    res = CliRunner().invoke(controller, ["run", "--route", "chat", "--once", "--policy", str(policy)])
    assert res.exit_code == 1 and "invalid policy" in res.output and "guardrails.0.margin" in res.output


def test_outcomes_lists_versions_and_what_it_did_not_compare(tmp_path):
    from tests.unit.evals.test_outcomes import T0, ramp_log

    log = str(tmp_path / "ramp")
    ramp_log(log)
    args = ["--route", "chat", "--since", "2025-06-14", "--log-dir", log, "--sticky-key", "session"]
    res = CliRunner().invoke(outcomes, args)
    assert res.exit_code == 0, res.output
    assert "2 compared route-state version(s)" in res.output
    assert "not compared: version 1 (2000 baseline calls): only baseline served (mode off)" in res.output
    assert "version 2 (canary" in res.output and "version 3 (canary" in res.output
    assert "Holm-adjusted" in res.output and "note: 22000 calls without a session" in res.output
    assert T0  # the log's first day is 2025-06-15
    bad = CliRunner().invoke(outcomes, [*args, "--mde", "latency_ms"])
    assert bad.exit_code == 2 and "is not METRIC=VALUE" in bad.output
    bad = CliRunner().invoke(outcomes, [*args, "--mde", "latency_ms=-1"])
    assert bad.exit_code == 2 and "positive" in bad.output


def test_a_waiting_controller_prints_its_forecast(log_dir, tmp_path):
    with FakeAdmin(share=5.0) as admin:
        empty_log(log_dir)
        run_once(admin, log_dir, tmp_path)
        canary_traffic(log_dir, n_base=950, n_cand=50)
        res = run_once(admin, log_dir, tmp_path)
    assert res.exit_code == 0 and res.output.startswith("wait"), res.output
    assert "\n  forecast: " in res.output
    last = read_decisions(log_dir, "chat")[-1]
    assert set(last["forecast"]) >= {"expected_calls", "expected_seconds", "likely", "guardrails"}
    assert last["unit"] == "user"
