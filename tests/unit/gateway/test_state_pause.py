"""The controller's pause has one format (`gateway.state.pause`): what the review console's
operations page writes, the controller reads, and the other way round."""

from __future__ import annotations

from evals.online.controller import CanaryController, read_decisions, read_state, set_paused
from evals.online.decision import CanaryPolicy
from gateway.admin_client import AdminClient
from gateway.state import open_backend, pause


def test_a_pause_written_by_the_gateway_stops_the_controller(tmp_path):
    loc = str(tmp_path / "state")
    state = pause.set_paused(open_backend(loc), "org/model", True, actor="reviewer:ana", reason="incident 7")
    assert read_state(loc, "org/model") == state
    assert pause.pause_of(state)["by"] == "reviewer:ana" and pause.pause_of(state)["reason"] == "incident 7"
    with AdminClient("http://127.0.0.1:9") as unreachable:  # a paused controller never asks the gateway
        record = CanaryController(CanaryPolicy(), unreachable, str(tmp_path), "org/model", state=loc).check()
    assert record["action"] == "paused" and record["reason"] == "paused by reviewer:ana"
    assert [d["action"] for d in read_decisions(loc, "org/model")] == ["pause", "paused"]


def test_a_resume_by_the_controller_cli_is_read_by_the_gateway(tmp_path):
    loc = str(tmp_path / "state")
    backend = open_backend(loc)
    backend.put_doc("controller", "bot", {"route": "bot", "step_share": 25.0})
    set_paused(loc, "bot", True, actor="operator", reason="holiday")
    paused = pause.pause_of(backend.get_doc("controller", "bot") or {})
    assert paused is not None and paused["by"] == "operator" and paused["at"] is not None
    set_paused(loc, "bot", False)
    after = backend.get_doc("controller", "bot") or {}
    assert pause.pause_of(after) is None
    assert after["step_share"] == 25.0 and after["paused_by"] is None  # the controller's own fields kept
    decisions = read_decisions(loc, "bot")
    assert [(d["action"], d["reason"]) for d in decisions] == [("pause", "holiday"), ("resume", None)]
