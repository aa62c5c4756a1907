"""Shadow mode (and reverse shadow in primary mode) against a fake upstream serving two models.

The user is always answered exactly as in ``off`` mode; the other variant's answer is a
row of its own (``served = false``) whose parent is the served call.
"""

from __future__ import annotations

import time

import httpx
import pytest
from openai import OpenAI

from gateway.store import LogStore

MSG = [{"role": "user", "content": "hello there"}]


def two_models(make_settings, *, mode="shadow", candidate=None, route=None, **sections):
    return make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": candidate or {"model": "echo-cand"}},
        routes={"bot": {"baseline": "base", "candidate": "cand", "mode": mode, **(route or {})}},
        **sections,
    )


def wait_rows(log_dir, sql, params=(), n=1, timeout=15.0):
    """Rows of ``sql`` once there are at least ``n`` of them (shadow calls finish after the user's)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = LogStore.open(log_dir).sql(sql, list(params))
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.05)


def shadow_rows(log_dir, parent, n=1):
    return wait_rows(log_dir, "SELECT * FROM calls WHERE parent_call_id = ?", [parent], n)


def served_row(log_dir, call_id):
    rows = LogStore.open(log_dir).sql("SELECT * FROM calls WHERE call_id = ?", [call_id])
    assert len(rows) == 1
    return rows[0]


def test_shadow_serves_the_baseline_and_logs_the_candidate_linked_to_it(
    make_settings, start_gateway, log_dir, fake_upstream
):
    gw = start_gateway(two_models(make_settings))
    client = OpenAI(base_url=gw.base_url, api_key="sk-test")
    raw = client.chat.completions.with_raw_response.create(model="bot", messages=MSG, user="u1")
    assert raw.parse().choices[0].message.content == "echo-base: hello there"
    call_id = raw.headers["x-request-id"]

    [shadow] = shadow_rows(log_dir, call_id)
    served = served_row(log_dir, call_id)
    assert (served["variant"], served["served"], served["mode"], served["parent_call_id"]) == (
        "baseline",
        True,
        "shadow",
        None,
    )
    assert (shadow["variant"], shadow["served"], shadow["mode"], shadow["route"]) == (
        "candidate",
        False,
        "shadow",
        "bot",
    )
    assert shadow["output_text"] == "echo-cand: hello there"
    assert shadow["upstream"] == "cand"
    assert shadow["upstream_model"] == "echo-cand"
    assert shadow["status"] == 200
    assert shadow["user"] == "u1"
    assert shadow["route_version"] == served["route_version"]
    assert shadow["request"] == served["request"]
    # the candidate was sent the same conversation
    bodies = [r["body"] for r in fake_upstream.requests]
    assert [b["model"] for b in bodies] == ["echo-base", "echo-cand"]
    assert bodies[1]["messages"] == MSG


def test_shadow_of_a_streamed_request_streams_the_baseline_and_logs_the_candidate(
    make_settings, start_gateway, log_dir
):
    gw = start_gateway(two_models(make_settings))
    client = OpenAI(base_url=gw.base_url, api_key="sk-test")
    with client.chat.completions.with_streaming_response.create(
        model="bot", messages=MSG, stream=True
    ) as resp:
        call_id = resp.headers["x-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    assert text == "echo-base: hello there"

    [shadow] = shadow_rows(log_dir, call_id)
    assert (shadow["variant"], shadow["served"], shadow["stream"]) == ("candidate", False, True)
    assert shadow["output_text"] == "echo-cand: hello there"
    assert shadow["finish_reason"] == "stop"
    served = served_row(log_dir, call_id)
    assert (served["variant"], served["served"], served["stream"]) == ("baseline", True, True)
    assert served["output_text"] == "echo-base: hello there"


def test_off_mode_runs_no_shadow(make_settings, start_gateway, log_dir, fake_upstream):
    gw = start_gateway(two_models(make_settings, mode="off"))
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "bot", "messages": MSG})
    assert r.json()["choices"][0]["message"]["content"] == "echo-base: hello there"
    time.sleep(0.3)  # give a (wrong) shadow call the time to show up
    assert [q["body"]["model"] for q in fake_upstream.requests] == ["echo-base"]
    assert LogStore.open(log_dir).count() == 1


@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_candidate_changes_nothing_for_the_user(make_settings, start_gateway, log_dir, stream):
    settings = two_models(make_settings, candidate={"model": "error-500", "retries": 0})
    gw = start_gateway(settings)
    client = OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0)
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="bot", messages=MSG, stream=True
        ) as resp:
            assert resp.status_code == 200
            call_id = resp.headers["x-request-id"]
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(model="bot", messages=MSG)
        assert raw.status_code == 200
        call_id = raw.headers["x-request-id"]
        text = raw.parse().choices[0].message.content
    assert text == "echo-base: hello there"

    [shadow] = shadow_rows(log_dir, call_id)
    assert (shadow["variant"], shadow["served"], shadow["status"]) == ("candidate", False, 500)
    assert shadow["error_type"] == "server_error"
    assert "scripted 500" in shadow["error_message"]
    served = served_row(log_dir, call_id)
    assert (served["status"], served["error_type"]) == (200, None)


def test_a_hanging_candidate_does_not_hold_up_the_user(make_settings, start_gateway, log_dir, fake_upstream):
    settings = two_models(make_settings, candidate={"model": "slow-30", "timeout": 1.5, "retries": 0})
    gw = start_gateway(settings)
    with httpx.Client(base_url=gw.base_url, timeout=10) as client:
        first = client.post("/chat/completions", json={"model": "bot", "messages": MSG})
        assert first.json()["choices"][0]["message"]["content"] == "echo-base: hello there"
        # wait until the candidate call is under way upstream, then call again while it hangs
        deadline = time.monotonic() + 5
        while fake_upstream.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert fake_upstream.in_flight == 1
        answers = [
            client.post(
                "/chat/completions", json={"model": "bot", "messages": [{"role": "user", "content": f"q{i}"}]}
            )
            for i in range(3)
        ]
        still_hanging = fake_upstream.in_flight
    assert [a.json()["choices"][0]["message"]["content"] for a in answers] == [
        f"echo-base: q{i}" for i in range(3)
    ]
    assert still_hanging >= 1  # the answers arrived while candidate calls were still hanging upstream
    call_id = first.headers["x-request-id"]
    assert LogStore.open(log_dir).sql("SELECT * FROM calls WHERE parent_call_id = ?", [call_id]) == []

    # the hanging candidate ends in its own timeout, logged on its own row
    [shadow] = shadow_rows(log_dir, call_id)
    assert (shadow["variant"], shadow["served"], shadow["status"]) == ("candidate", False, 504)
    assert served_row(log_dir, call_id)["status"] == 200


def test_a_stalling_streamed_candidate_does_not_hold_up_the_user(make_settings, start_gateway, log_dir):
    settings = two_models(make_settings, candidate={"model": "stall", "timeout": 1.0, "retries": 0})
    gw = start_gateway(settings)
    client = OpenAI(base_url=gw.base_url, api_key="sk-test")
    texts, ids = [], []
    for i in range(3):
        msgs = [{"role": "user", "content": f"q{i}"}]
        with client.chat.completions.with_streaming_response.create(
            model="bot", messages=msgs, stream=True
        ) as resp:
            ids.append(resp.headers["x-request-id"])
            texts.append("".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices))
    assert texts == [f"echo-base: q{i}" for i in range(3)]
    # each stalled candidate ends in its own timeout, logged on its own row
    for call_id in ids:
        [shadow] = shadow_rows(log_dir, call_id)
        assert (shadow["variant"], shadow["served"], shadow["status"]) == ("candidate", False, 504)
        assert shadow["error_type"]


def admin_status(gw):
    return httpx.get(gw.url + "/admin/status").json()["shadow"]


def skipped(status, reason):
    return sum(s["count"] for s in status["skipped"] if s["reason"] == reason and s["route"] == "bot")


def test_requests_sampled_out_by_the_shadow_rate_are_counted(make_settings, start_gateway, log_dir):
    gw = start_gateway(two_models(make_settings, route={"shadow_rate": 0.5}))
    n = 60
    with httpx.Client(base_url=gw.base_url) as client:
        for i in range(n):
            client.post("/chat/completions", json={"model": "bot", "messages": MSG, "user": f"u{i}"})
    status = admin_status(gw)
    sampled_out = skipped(status, "sampled")
    assert status["started"] + sampled_out == n
    assert 0 < status["started"] < n  # both outcomes happen at a rate of one half
    rows = wait_rows(log_dir, "SELECT * FROM calls WHERE NOT served", n=status["started"])
    assert len(rows) == status["started"]
    assert LogStore.open(log_dir).count() == n + status["started"]


def test_shadow_rate_zero_runs_no_shadow_and_counts_every_skip(make_settings, start_gateway, fake_upstream):
    gw = start_gateway(two_models(make_settings, route={"shadow_rate": 0.0}))
    for _ in range(5):
        httpx.post(gw.base_url + "/chat/completions", json={"model": "bot", "messages": MSG})
    status = admin_status(gw)
    assert status["started"] == 0
    assert skipped(status, "sampled") == 5
    assert {q["body"]["model"] for q in fake_upstream.requests} == {"echo-base"}


def test_shadow_calls_beyond_the_queue_are_skipped_and_counted(make_settings, start_gateway, log_dir):
    settings = two_models(
        make_settings,
        candidate={"model": "slow-1", "timeout": 10, "retries": 0},
        shadow={"max_in_flight": 1, "queue_size": 1},
    )
    gw = start_gateway(settings)
    with httpx.Client(base_url=gw.base_url) as client:
        answers = [
            client.post(
                "/chat/completions", json={"model": "bot", "messages": [{"role": "user", "content": f"q{i}"}]}
            )
            for i in range(5)
        ]
    assert [a.json()["choices"][0]["message"]["content"] for a in answers] == [
        f"echo-base: q{i}" for i in range(5)
    ]
    status = admin_status(gw)
    assert (status["in_flight"], status["queued"]) == (1, 1)
    assert skipped(status, "queue_full") == 3
    # the queued one runs once the first is done: two candidate rows in the end, for the first two calls
    rows = wait_rows(log_dir, "SELECT parent_call_id FROM calls WHERE NOT served", n=2)
    assert sorted(r["parent_call_id"] for r in rows) == sorted(a.headers["x-request-id"] for a in answers[:2])


def test_primary_mode_serves_the_candidate_and_reverse_shadows_the_baseline(
    make_settings, start_gateway, log_dir
):
    gw = start_gateway(two_models(make_settings, mode="primary"))
    client = OpenAI(base_url=gw.base_url, api_key="sk-test")
    raw = client.chat.completions.with_raw_response.create(model="bot", messages=MSG)
    assert raw.parse().choices[0].message.content == "echo-cand: hello there"
    call_id = raw.headers["x-request-id"]
    [shadow] = shadow_rows(log_dir, call_id)
    assert (shadow["variant"], shadow["served"], shadow["mode"]) == ("baseline", False, "primary")
    assert shadow["output_text"] == "echo-base: hello there"
    served = served_row(log_dir, call_id)
    assert (served["variant"], served["served"], served["mode"]) == ("candidate", True, "primary")


def test_bodies_stay_out_of_shadow_rows_when_the_route_stores_none(make_settings, start_gateway, log_dir):
    gw = start_gateway(two_models(make_settings, route={"store_bodies": False}))
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "bot", "messages": MSG})
    [shadow] = shadow_rows(log_dir, r.headers["x-request-id"])
    assert (shadow["request"], shadow["response"], shadow["output_text"]) == (None, None, None)
    assert shadow["status"] == 200


def test_clients_that_hang_up_after_done_are_logged_complete_and_shadowed(
    make_settings, start_gateway, log_dir
):
    """The SDK closes the connection once it reads [DONE], which may come before the upstream's
    end of body: such a call was answered in full, so it is a 200 with its shadow, never a 499."""
    gw = start_gateway(two_models(make_settings))
    client = OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0)
    ids = []
    for i in range(40):
        with client.chat.completions.with_streaming_response.create(
            model="bot", messages=[{"role": "user", "content": f"q{i}"}], stream=True
        ) as resp:
            ids.append(resp.headers["x-request-id"])
            "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    shadows = wait_rows(log_dir, "SELECT parent_call_id FROM calls WHERE NOT served", n=len(ids))
    assert sorted(r["parent_call_id"] for r in shadows) == sorted(ids)
    served = LogStore.open(log_dir).sql("SELECT status, count(*) AS n FROM calls WHERE served GROUP BY ALL")
    assert served == [{"status": 200, "n": 40}]
