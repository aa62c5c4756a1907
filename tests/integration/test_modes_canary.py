"""Canary mode through the running gateway: sticky arms whose shares match the setting,
share increases that only move users into the canary, fallback to the baseline when the
candidate fails before the first byte, and route changes that apply without a restart."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from openai import OpenAI

from gateway.routing.assign import in_canary
from gateway.store import LogStore

CHI2_1DF_P001 = 10.828  # chi-square critical value, 1 degree of freedom, p = 0.001
MSG = [{"role": "user", "content": "hi"}]


def two_models(make_settings, *, mode="canary", candidate=None, route=None, **sections):
    return make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": candidate or {"model": "echo-cand"}},
        routes={"bot": {"baseline": "base", "candidate": "cand", "mode": mode, **(route or {})}},
        **sections,
    )


def arm_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    content = response.json()["choices"][0]["message"]["content"]
    return {"echo-base": "baseline", "echo-cand": "candidate"}[content.split(":", 1)[0]]


def arms(gw, users, *, headers_for=None, concurrency=4) -> dict[str, str]:
    """The arm that served each user, one request per user, ``concurrency`` at a time."""

    async def run() -> dict[str, str]:
        sem = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(base_url=gw.base_url, timeout=30) as client:

            async def one(user: str) -> tuple[str, str]:
                headers = headers_for(user) if headers_for else None
                body = (
                    {"model": "bot", "messages": MSG}
                    if headers_for
                    else {"model": "bot", "messages": MSG, "user": user}
                )
                async with sem:
                    r = await client.post("/chat/completions", json=body, headers=headers)
                return user, arm_of(r)

            return dict(await asyncio.gather(*(one(u) for u in users)))

    return asyncio.run(run())


def patch_route(gw, **changes):
    r = httpx.patch(gw.url + "/admin/routes/bot", json=changes)
    assert r.status_code == 200, r.text
    return r.json()


def test_arm_shares_match_the_setting_and_stay_sticky(make_settings, start_gateway, log_dir):
    gw = start_gateway(two_models(make_settings, route={"share": 25, "salt": "s1"}))
    users = [f"user-{i}" for i in range(2000)]
    first = arms(gw, users)
    n_canary = sum(a == "candidate" for a in first.values())
    expected = len(users) * 0.25
    chi2 = (n_canary - expected) ** 2 / expected + (n_canary - expected) ** 2 / (len(users) - expected)
    assert chi2 < CHI2_1DF_P001, f"{n_canary} of {len(users)} users in the canary at 25 %"
    # every worker and replica computes the same arms: the gateway agrees with the hash
    assert first == {u: "candidate" if in_canary(u, "s1", 25) else "baseline" for u in users}
    # sticky: the same users land in the same arm again
    again = arms(gw, users[:200])
    assert again == {u: first[u] for u in users[:200]}
    # and the log agrees: one served row per call, in the arm the user saw
    rows = LogStore.open(log_dir).sql(
        "SELECT variant, count(*) AS n, bool_and(served) AS served FROM calls "
        "GROUP BY variant ORDER BY variant"
    )
    n_again = sum(a == "candidate" for a in again.values())
    assert [(r["variant"], r["n"], r["served"]) for r in rows] == [
        ("baseline", 2200 - n_canary - n_again, True),
        ("candidate", n_canary + n_again, True),
    ]


def test_raising_the_share_only_moves_users_into_the_canary(make_settings, start_gateway):
    gw = start_gateway(two_models(make_settings, route={"share": 5}))
    users = [f"u{i}" for i in range(300)]
    at_5 = arms(gw, users)
    patch_route(gw, share=10, reason="widen")
    at_10 = arms(gw, users)
    patch_route(gw, share=30)
    at_30 = arms(gw, users)
    for before, after in ((at_5, at_10), (at_10, at_30)):
        in_before = {u for u, a in before.items() if a == "candidate"}
        in_after = {u for u, a in after.items() if a == "candidate"}
        assert in_before <= in_after, "a user left the canary when the share went up"
        assert len(in_after) > len(in_before)
    # lowering it back returns exactly the original arms (nobody flips back and forth)
    patch_route(gw, share=5)
    assert arms(gw, users) == at_5


@pytest.mark.parametrize(
    ("sticky_key", "headers_for"),
    [
        ("session", lambda u: {"x-shadowtune-session": u}),
        ("header:x-tenant", lambda u: {"x-tenant": u}),
    ],
)
def test_other_sticky_keys_keep_their_users_in_one_arm(make_settings, start_gateway, sticky_key, headers_for):
    gw = start_gateway(two_models(make_settings, route={"share": 50, "sticky_key": sticky_key}))
    keys = [f"k{i}" for i in range(120)]
    first = arms(gw, keys, headers_for=headers_for)
    assert first == {k: "candidate" if in_canary(k, "", 50) else "baseline" for k in keys}
    assert arms(gw, keys, headers_for=headers_for) == first


def test_canary_without_a_sticky_key_splits_requests_at_random(make_settings, start_gateway):
    gw = start_gateway(two_models(make_settings, route={"share": 50}))
    with httpx.Client(base_url=gw.base_url) as client:
        served = [
            arm_of(client.post("/chat/completions", json={"model": "bot", "messages": MSG}))
            for _ in range(60)
        ]
    assert set(served) == {"baseline", "candidate"}


@pytest.mark.parametrize("mode", ["canary", "primary"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_candidate_failing_before_the_first_byte_falls_back_to_the_baseline(
    make_settings, start_gateway, log_dir, mode, stream
):
    settings = two_models(
        make_settings, mode=mode, candidate={"model": "error-500", "retries": 0}, route={"share": 100}
    )
    gw = start_gateway(settings)
    client = OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0)
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="bot", messages=MSG, stream=True, user="u"
        ) as resp:
            assert resp.status_code == 200
            call_id = resp.headers["x-request-id"]
            text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(model="bot", messages=MSG, user="u")
        assert raw.status_code == 200
        call_id = raw.headers["x-request-id"]
        text = raw.parse().choices[0].message.content
    assert text == "echo-base: hi"

    rows = LogStore.open(log_dir).sql("SELECT * FROM calls ORDER BY served")
    assert len(rows) == 2 if mode == "canary" else len(rows) >= 2
    failed = [r for r in rows if not r["served"] and r["variant"] == "candidate"]
    [served] = [r for r in rows if r["served"]]
    assert (served["call_id"], served["variant"], served["status"], served["mode"]) == (
        call_id,
        "baseline",
        200,
        mode,
    )
    assert served["output_text"] == "echo-base: hi"
    assert len(failed) == 1
    assert (failed[0]["parent_call_id"], failed[0]["status"], failed[0]["upstream"]) == (call_id, 500, "cand")
    assert (failed[0]["error_type"], failed[0]["error_message"]) == (
        "upstream_error",
        "upstream answered 500",
    )
    assert failed[0]["call_id"] != call_id


def test_a_candidate_that_cannot_be_reached_falls_back_to_the_baseline(make_settings, start_gateway, log_dir):
    dead = {"base_url": "http://127.0.0.1:9/v1", "model": "echo-cand", "retries": 0, "timeout": 2}
    gw = start_gateway(two_models(make_settings, mode="primary", candidate=dead, route={"shadow_rate": 0.0}))
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "bot", "messages": MSG})
    assert arm_of(r) == "baseline"
    rows = LogStore.open(log_dir).sql("SELECT * FROM calls WHERE NOT served")
    assert [(x["variant"], x["parent_call_id"], x["status"]) for x in rows] == [
        ("candidate", r.headers["x-request-id"], 502)
    ]


def test_a_candidate_client_error_is_not_hidden_by_a_fallback(make_settings, start_gateway, log_dir):
    gw = start_gateway(
        two_models(
            make_settings, mode="primary", candidate={"model": "error-400"}, route={"shadow_rate": 0.0}
        )
    )
    r = httpx.post(gw.base_url + "/chat/completions", json={"model": "bot", "messages": MSG})
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "scripted 400"
    [row] = LogStore.open(log_dir).sql("SELECT * FROM calls")
    assert (row["variant"], row["served"], row["status"]) == ("candidate", True, 400)


def test_route_changes_take_effect_without_a_restart(make_settings, start_gateway, log_dir):
    gw = start_gateway(two_models(make_settings, mode="off"))

    def ask():
        return httpx.post(
            gw.base_url + "/chat/completions", json={"model": "bot", "messages": MSG, "user": "u"}
        )

    assert arm_of(ask()) == "baseline"
    v1 = patch_route(gw, mode="primary", shadow_rate=0.0)["version"]
    r = ask()
    assert arm_of(r) == "candidate"
    v2 = patch_route(gw, mode="canary", share=0)["version"]
    assert arm_of(ask()) == "baseline"
    patch_route(gw, share=100)
    assert arm_of(ask()) == "candidate"
    rows = LogStore.open(log_dir).sql("SELECT mode, variant, route_version FROM calls ORDER BY ts, call_id")
    assert [(x["mode"], x["variant"], x["route_version"]) for x in rows] == [
        ("off", "baseline", 0),
        ("primary", "candidate", v1),
        ("canary", "baseline", v2),
        ("canary", "candidate", v2 + 1),
    ]


def test_primary_fallback_does_not_ask_the_baseline_twice(
    make_settings, start_gateway, fake_upstream, log_dir
):
    settings = make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": "error-500", "retries": 0}},
        routes={"bot": {"baseline": "base", "candidate": "cand", "mode": "primary", "shadow_rate": 1.0}},
    )
    gw = start_gateway(settings)
    from openai import OpenAI

    reply = OpenAI(base_url=gw.base_url, api_key="x", max_retries=0).chat.completions.create(
        model="bot", messages=[{"role": "user", "content": "hi"}], user="u1"
    )
    assert reply.choices[0].message.content == "echo-base: hi"
    gw.flush()
    baseline_calls = [r for r in fake_upstream.requests if r["body"]["model"] == "echo-base"]
    assert len(baseline_calls) == 1
    assert ("bot", "fallback") in gw.ctx.shadow.skipped
