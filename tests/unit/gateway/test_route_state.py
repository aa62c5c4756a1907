"""Live route state (`gateway.routing.state`): validated changes, one state file read by
every worker, persistence across restarts, and the audit history."""

from __future__ import annotations

import json
import os

import pytest

from gateway.config import Settings, UpstreamConfig
from gateway.errors import InvalidRequest, NotFound
from gateway.routing.state import RouteState, RouteStateStore


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings.model_validate(
        {
            "upstreams": {
                "base": {"base_url": "http://127.0.0.1:9/v1", "model": "echo-base"},
                "cand": {"base_url": "http://127.0.0.1:9/v1", "model": "echo-cand"},
                "cand2": {"base_url": "http://127.0.0.1:9/v1", "model": "echo-cand2"},
            },
            "routes": {
                "bot": {"baseline": "base", "candidate": "cand", "mode": "shadow", "shadow_rate": 0.5},
                "plain": {"baseline": "base"},
            },
            "store": {"log_dir": str(tmp_path / "log")},
        }
    )


def test_the_config_gives_the_starting_state(settings):
    store = RouteStateStore(settings)
    assert store.snapshot.version == 0
    assert store.get("bot") == RouteState(
        route="bot", baseline="base", candidate="cand", mode="shadow", shadow_rate=0.5
    )
    assert store.get("plain").mode == "off"
    assert not os.path.exists(store.path)
    with pytest.raises(NotFound):
        store.get("nope")


def test_a_change_is_applied_versioned_and_persisted(settings):
    store = RouteStateStore(settings)
    after = store.update("bot", {"mode": "canary", "share": 10}, actor="alice", reason="ticket 123")
    assert (after.mode, after.share, after.candidate) == ("canary", 10, "cand")
    assert store.snapshot.version == 1
    assert store.get("bot") == after
    with open(store.path) as f:
        data = json.load(f)
    assert data["version"] == 1
    assert data["routes"]["bot"]["mode"] == "canary"
    assert data["routes"]["bot"]["share"] == 10


def test_the_state_file_wins_over_the_config_after_a_restart(settings):
    RouteStateStore(settings).update("bot", {"mode": "primary", "shadow_rate": 0.1}, actor="a", reason=None)
    restarted = RouteStateStore(settings)
    assert restarted.snapshot.version == 1
    assert restarted.get("bot").mode == "primary"
    assert restarted.get("bot").shadow_rate == 0.1
    assert restarted.get("plain").mode == "off"  # untouched routes keep their state


def test_another_worker_sees_the_change_on_its_next_poll(settings):
    worker_a = RouteStateStore(settings)
    worker_b = RouteStateStore(settings)
    assert worker_b.reload() is False  # nothing changed yet
    worker_a.update("bot", {"mode": "canary", "share": 25}, actor="a", reason=None)
    assert worker_b.get("bot").mode == "shadow"
    assert worker_b.reload() is True
    assert worker_b.snapshot.version == 1
    assert worker_b.get("bot").share == 25
    assert worker_b.reload() is False
    # a change made through worker b builds on worker a's version
    worker_b.update("bot", {"share": 50}, actor="b", reason=None)
    assert worker_a.reload() is True
    assert worker_a.snapshot.version == 2
    assert (worker_a.get("bot").mode, worker_a.get("bot").share) == ("canary", 50)


def test_a_worker_that_missed_a_poll_still_updates_before_changing(settings):
    worker_a = RouteStateStore(settings)
    worker_b = RouteStateStore(settings)
    worker_a.update("bot", {"mode": "canary", "share": 5}, actor="a", reason=None)
    worker_b.update("plain", {"candidate": "cand2"}, actor="b", reason=None)  # no reload in between
    fresh = RouteStateStore(settings)
    assert fresh.snapshot.version == 2
    assert fresh.get("bot").mode == "canary"  # worker a's change was not overwritten
    assert fresh.get("plain").candidate == "cand2"


@pytest.mark.parametrize(
    ("changes", "param"),
    [
        ({"candidate": "gpt-unknown"}, "candidate"),
        ({"baseline": "nope"}, "baseline"),
        ({"share": 101}, "share"),
        ({"share": -1}, "share"),
        ({"share": 10.005}, "share"),
        ({"shadow_rate": 1.5}, "shadow_rate"),
        ({"mode": "blue-green"}, "mode"),
        ({"sticky_key": "cookie"}, "sticky_key"),
        ({"sticky_key": "header:"}, "sticky_key"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_an_invalid_change_is_refused_and_nothing_is_applied(settings, changes, param):
    store = RouteStateStore(settings)
    store.update("bot", {"share": 1}, actor="a", reason=None)
    before = store.get("bot")
    with pytest.raises(InvalidRequest) as info:
        store.update("bot", changes, actor="a", reason="bad")
    assert info.value.param == param
    assert info.value.status == 400
    assert store.get("bot") == before
    assert store.snapshot.version == 1
    assert RouteStateStore(settings).get("bot") == before
    assert len(store.history()) == 1


def test_a_mode_other_than_off_needs_a_candidate(settings):
    store = RouteStateStore(settings)
    for mode in ("shadow", "canary", "primary"):
        with pytest.raises(InvalidRequest, match="needs a candidate") as info:
            store.update("plain", {"mode": mode}, actor="a", reason=None)
        assert info.value.param == "candidate"
    with pytest.raises(InvalidRequest):
        store.update("bot", {"candidate": None}, actor="a", reason=None)  # bot is in shadow
    assert store.snapshot.version == 0
    assert store.history() == []


@pytest.mark.parametrize("share", ["ten", None, [10]])
def test_a_share_of_the_wrong_type_is_a_clear_error(settings, share):
    store = RouteStateStore(settings)
    with pytest.raises(InvalidRequest) as info:
        store.update("bot", {"share": share}, actor="a", reason=None)
    assert info.value.param == "share"
    assert store.snapshot.version == 0


def test_a_route_is_created_when_a_baseline_is_given(settings):
    store = RouteStateStore(settings)
    with pytest.raises(NotFound):
        store.update("new", {"mode": "off"}, actor="a", reason=None)
    created = store.update(
        "new", {"baseline": "base", "candidate": "cand", "mode": "shadow"}, actor="a", reason=None
    )
    assert created.route == "new"
    assert RouteStateStore(settings).get("new") == created
    assert store.history("new")[0]["before"] is None


def test_the_history_records_who_when_why_before_and_after(settings):
    store = RouteStateStore(settings)
    store.update("bot", {"mode": "canary", "share": 5}, actor="alice", reason="ticket 123")
    store.update("bot", {"share": 10}, actor="bob", reason="looks good")
    store.update("plain", {"candidate": "cand"}, actor="carol", reason=None)
    rows = store.history("bot")
    assert [r["actor"] for r in rows] == ["alice", "bob"]
    assert [r["reason"] for r in rows] == ["ticket 123", "looks good"]
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[0]["before"]["mode"] == "shadow"
    assert (rows[0]["after"]["mode"], rows[0]["after"]["share"]) == ("canary", 5)
    assert (rows[1]["before"]["share"], rows[1]["after"]["share"]) == (5, 10)
    assert rows[0]["ts"] <= rows[1]["ts"]
    assert len(store.history()) == 3
    assert [r["actor"] for r in store.history(limit=1)] == ["carol"]


def test_an_upstream_registered_at_run_time_can_be_used_by_a_route(settings):
    store = RouteStateStore(settings)
    with pytest.raises(InvalidRequest):
        store.update("bot", {"candidate": "ft-new"}, actor="a", reason=None)
    store.put_upstream(
        "ft-new", UpstreamConfig(base_url="http://127.0.0.1:9/v1", model="ft"), actor="a", reason="deploy"
    )
    store.update("bot", {"candidate": "ft-new"}, actor="a", reason=None)
    restarted = RouteStateStore(settings)
    assert restarted.snapshot.upstreams["ft-new"].model == "ft"
    assert restarted.get("bot").candidate == "ft-new"
    assert restarted.history()[0]["upstream"] == "ft-new"
