"""`eval outcomes`: reviewers' thumbs and choices shown apart from the users' outcomes, and the
split check run on every route-state version against the share the route's history gives it."""

from __future__ import annotations

import json
import time

import pytest
from click.testing import CliRunner

from evals.online.outcomes import outcomes_report, version_shares
from evals.outcomes_cli import outcomes
from gateway.state import open_backend
from gateway.store import LogStore, LogWriter

ROUTE = "chat"


def set_share(location, share):
    """One audit entry putting the route in canary at ``share`` %; returns the new state version."""

    def change(version, data):
        doc = {**data, "routes": {ROUTE: {"mode": "canary", "share": share}}}
        entry = {
            "route": ROUTE,
            "actor": "t",
            "reason": "t",
            "before": {},
            "after": {"mode": "canary", "share": share},
        }
        return doc, entry

    return open_backend(location).change_routes(change)


def write(log, plan, *, start, reviewer_events=True):
    """Per (version, baseline units, candidate units): one call per unit; every 5th call a user's
    thumbs-down; reviewers thumbs-up ten baseline calls and choose on three candidate calls."""
    i = 0
    with LogWriter(log) as w:
        for k, (version, nb, nc) in enumerate(plan):
            for variant, n in (("baseline", nb), ("candidate", nc)):
                for j in range(n):
                    i += 1
                    cid = f"c{i:06d}"
                    ts = int((start + k * 3600 + j * 0.01) * 1e6)
                    w.append(
                        "calls",
                        {
                            "call_id": cid,
                            "ts": ts,
                            "route": ROUTE,
                            "variant": variant,
                            "served": True,
                            "mode": "canary",
                            "route_version": version,
                            "user": f"u{i}",
                            "status": 200,
                            "latency_ms": 100.0,
                        },
                    )
                    ev = {"call_id": cid, "ts": ts + 1, "kind": "thumbs", "value_num": 0.0}
                    if j % 5 == 0:
                        w.append("events", {**ev, "event_id": f"u{i}", "value": "down", "source": "api"})
                    if reviewer_events and k == 0 and variant == "baseline" and j < 10:
                        w.append(
                            "events",
                            {
                                **ev,
                                "event_id": f"r{i}",
                                "value": "up",
                                "value_num": 1.0,
                                "source": "reviewer",
                                "reviewer": "alice",
                            },
                        )
                        w.append(  # the same reviewer again on the same call: one vote
                            "events",
                            {
                                **ev,
                                "event_id": f"r{i}b",
                                "ts": ts + 2,
                                "value": "up",
                                "value_num": 1.0,
                                "source": "reviewer",
                                "reviewer": "alice",
                            },
                        )
                    if reviewer_events and k == 0 and variant == "candidate" and j < 3:
                        w.append(
                            "events",
                            {
                                **ev,
                                "event_id": f"rc{i}",
                                "kind": "choice",
                                "value": "a",
                                "value_num": None,
                                "source": "reviewer",
                                "reviewer": "bob",
                            },
                        )


@pytest.fixture
def log(tmp_path):
    path = str(tmp_path / "log")
    v1 = set_share(path, 10.0)  # the state backend is the log directory (the default)
    v2 = set_share(path, 50.0)
    write(path, [(v1, 900, 100), (v2, 500, 500)], start=time.time() - 7200)
    return path


def test_reviewer_votes_are_counted_apart_and_never_in_the_rates(log):
    with LogStore.open(log) as store:
        rep = outcomes_report(store, ROUTE, 0)
    (period,) = rep["periods"]
    r = period["reviewer"]
    assert r["baseline"] == {"calls": 10, "thumbs_up": 10, "thumbs_down": 0, "choices": {}}
    assert r["candidate"] == {"calls": 3, "thumbs_up": 0, "thumbs_down": 0, "choices": {"a": 3}}
    # the users' rates: only their own thumbs-down (every 5th call), no reviewer thumbs-up
    base = period["variants"]["baseline"]
    assert base["thumbs_up_rate"]["count"] == 0
    assert base["thumbs_down_rate"]["count"] == 180 + 100


def test_every_version_is_checked_against_its_own_share(log):
    with LogStore.open(log) as store:
        history = open_backend(log).history(ROUTE, 100)
        rep = outcomes_report(store, ROUTE, 0, history=history)
        assert version_shares(history, ROUTE) == {1: 0.1, 2: 0.5}
        (period,) = rep["periods"]
        checks = {c["version"]: c for c in period["srm"]["versions"]}
        assert set(checks) == {1, 2} and not period["srm"]["mismatch"]
        assert checks[1]["expected_share"] == 0.1 and checks[1]["p_value"] == pytest.approx(1.0)
        # a history that says the first step was 5 %: that version's split is a mismatch
        wrong = [{**h, "after": {**h["after"], "share": 5.0}} if h["version"] == 1 else h for h in history]
        bad = outcomes_report(store, ROUTE, 0, history=wrong)["periods"][0]["srm"]
        assert bad["mismatch"] and bad["version"] == 1
        assert [c["mismatch"] for c in bad["versions"]] == [True, False]
        # no history: the expected share (now's) is checked on the latest version only
        alone = outcomes_report(store, ROUTE, 0, expected_share=0.5)["periods"][0]["srm"]
        assert [c["version"] for c in alone["versions"]] == [2]


def test_the_command_prints_reviewers_apart_and_a_split_line_per_version(log):
    res = CliRunner().invoke(outcomes, ["--route", ROUTE, "--since", "1d", "--log-dir", log])
    assert res.exit_code == 0, res.output
    assert "reviewers on baseline (not in the rates): 10 calls, thumbs up 10, down 0" in res.output
    assert "reviewers on candidate (not in the rates): 3 calls" in res.output and "choices a 3" in res.output
    assert (
        "split of version 1: expected 10%" in res.output and "split of version 2: expected 50%" in res.output
    )
    data = json.loads(CliRunner().invoke(outcomes, ["--route", ROUTE, "--log-dir", log, "--json"]).output)
    assert data["periods"][0]["reviewer"]["baseline"]["thumbs_up"] == 10
