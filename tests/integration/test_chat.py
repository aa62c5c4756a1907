"""``POST /v1/chat/completions`` through the official ``openai`` SDK, sync and async, against
the fake upstream: every request field reaches the upstream unchanged, every response field
comes back unchanged, and every call lands in the log once with the right fields."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support.calllog import request, response, row

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "ping"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "look something up",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
        },
    }
]


def sync_client(gw, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0, timeout=10, **kw)


def async_client(gw, **kw) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0, timeout=10, **kw)


def test_sync_sdk_call_is_answered_with_headers_and_logged_once(gateway, log_dir):
    with sync_client(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(model="echo-a", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo-a: ping"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id.startswith("chatcmpl-")
    assert completion.system_fingerprint == "fp_fake"
    call_id = raw.headers["x-request-id"]
    assert call_id.startswith("call_")
    assert "," not in call_id
    assert float(raw.headers["x-shadowtune-overhead-ms"]) >= 0

    r = row(gateway, log_dir, call_id)
    assert r["endpoint"] == "chat.completions"
    assert r["route"] == "echo-a"
    assert r["upstream"] == "passthrough"
    assert r["upstream_model"] == "echo-a"
    assert r["variant"] == "baseline"
    assert r["served"] is True
    assert r["stream"] is False
    assert r["status"] == 200
    assert r["error_type"] is None
    assert r["output_text"] == "echo-a: ping"
    assert r["finish_reason"] == "stop"
    assert r["response_id"] == completion.id
    assert (r["input_tokens"], r["output_tokens"]) == (7, 2)
    assert request(r)["messages"] == MESSAGES
    assert response(r)["choices"][0]["message"]["content"] == "echo-a: ping"
    assert r["latency_ms"] >= r["upstream_ms"] >= 0
    assert r["overhead_ms"] >= 0
    assert r["ts"] is not None


async def test_async_sdk_call_is_answered_and_logged(gateway, log_dir):
    async with async_client(gateway) as client:
        raw = await client.chat.completions.with_raw_response.create(model="echo-async", messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo-async: ping"
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert r["output_text"] == "echo-async: ping"


def test_every_request_field_known_or_unknown_reaches_the_upstream_unchanged(gateway, fake_upstream):
    params = {
        "temperature": 0.25,
        "top_p": 0.5,
        "max_tokens": 33,
        "stop": ["\n\n", "END"],
        "seed": 1234,
        "user": "user-42",
        "metadata": {"session_id": "sess-1", "tags": "a,b"},
        "presence_penalty": 0.1,
        "logit_bias": {"50256": -100},
    }
    unknown = {"x_vendor_knob": {"nested": [1, 2.5, None, "é"]}, "reasoning_effort": "low", "top_k": 3}
    with sync_client(gateway) as client:
        completion = client.chat.completions.create(
            model="echo-fields", messages=MESSAGES, **params, extra_body=unknown
        )
    assert completion.x_seed_seen == 1234  # the fake echoes the seed it received
    sent = fake_upstream.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    body = sent["body"]
    assert body == {"model": "echo-fields", "messages": MESSAGES, **params, **unknown}


def test_a_route_rewrites_only_the_model_and_keeps_every_other_field(
    make_settings, start_gateway, fake_upstream
):
    gw = start_gateway(
        make_settings(upstreams={"up": {"model": "echo-upstream-id"}}, routes={"bot": {"baseline": "up"}})
    )
    with sync_client(gw) as client:
        completion = client.chat.completions.create(
            model="bot", messages=MESSAGES, seed=7, stop="END", extra_body={"x_vendor_knob": [1, {"a": None}]}
        )
    assert completion.choices[0].message.content == "echo-upstream-id: ping"
    body = fake_upstream.requests[-1]["body"]
    assert body == {
        "model": "echo-upstream-id",
        "messages": MESSAGES,
        "seed": 7,
        "stop": "END",
        "x_vendor_knob": [1, {"a": None}],
    }


def test_unknown_response_fields_come_back_unchanged(gateway):
    extra = {"x_provider_trace": {"region": "eu", "ids": [1, 2]}, "service_tier": "flex"}
    resp = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": "echo-extra", "messages": MESSAGES, "x_reply_extra": extra},
        timeout=10,
    )
    assert resp.status_code == 200
    data = resp.json()
    assert data["x_provider_trace"] == extra["x_provider_trace"]
    assert data["service_tier"] == "flex"
    assert data["system_fingerprint"] == "fp_fake"
    assert data["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}


def test_tools_and_tool_choice_are_forwarded_and_the_tool_call_is_logged(gateway, fake_upstream, log_dir):
    choice = {"type": "function", "function": {"name": "lookup"}}
    with sync_client(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="echo-tools", messages=MESSAGES, tools=TOOLS, tool_choice=choice, parallel_tool_calls=False
        )
    completion = raw.parse()
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"q": "ping"}
    assert completion.choices[0].finish_reason == "tool_calls"
    body = fake_upstream.requests[-1]["body"]
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == choice
    assert body["parallel_tool_calls"] is False

    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert r["finish_reason"] == "tool_calls"
    assert r["output_text"] is None
    logged_call = response(r)["choices"][0]["message"]["tool_calls"][0]
    assert logged_call["function"] == {"name": "lookup", "arguments": json.dumps({"q": "ping"})}
    assert request(r)["tools"] == TOOLS


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "json_object"},
        {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "strict": True,
                "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "string"}},
                    "required": ["answer"],
                },
            },
        },
    ],
    ids=["json_object", "json_schema"],
)
def test_json_mode_and_json_schema_are_forwarded_and_answered(gateway, fake_upstream, response_format):
    with sync_client(gateway) as client:
        completion = client.chat.completions.create(
            model="echo-json", messages=MESSAGES, response_format=response_format
        )
    assert json.loads(completion.choices[0].message.content) == {"answer": "echo-json: ping"}
    assert fake_upstream.requests[-1]["body"]["response_format"] == response_format


def test_n_greater_than_one_returns_every_choice_and_logs_them(gateway, log_dir):
    with sync_client(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(model="echo-n", messages=MESSAGES, n=3)
    completion = raw.parse()
    assert [c.index for c in completion.choices] == [0, 1, 2]
    assert {c.message.content for c in completion.choices} == {"echo-n: ping"}
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert len(response(r)["choices"]) == 3
    assert r["output_tokens"] == 6


def test_logprobs_are_forwarded_and_returned(gateway, fake_upstream):
    with sync_client(gateway) as client:
        completion = client.chat.completions.create(
            model="echo-lp", messages=MESSAGES, logprobs=True, top_logprobs=2
        )
    assert completion.choices[0].logprobs.content[0].logprob == pytest.approx(-0.1)
    body = fake_upstream.requests[-1]["body"]
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)


def test_user_metadata_and_session_headers_are_logged(gateway, log_dir):
    with sync_client(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="echo-meta",
            messages=MESSAGES,
            user="user-7",
            metadata={"session_id": "sess-from-metadata", "tags": "alpha,beta"},
            extra_headers={"x-shadowtune-tags": "web, beta-test"},
        )
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert r["user"] == "user-7"
    assert r["session_id"] == "sess-from-metadata"
    assert sorted(r["tags"]) == ["alpha", "beta", "beta-test", "web"]

    with sync_client(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="echo-meta", messages=MESSAGES, extra_headers={"x-shadowtune-session": "sess-from-header"}
        )
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert r["session_id"] == "sess-from-header"
    assert r["user"] is None
    assert r["tags"] is None


def test_the_unprefixed_path_is_served_too(gateway, log_dir):
    resp = httpx.post(
        gateway.url + "/chat/completions", json={"model": "echo-np", "messages": MESSAGES}, timeout=10
    )
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "echo-np: ping"
    assert row(gateway, log_dir, resp.headers["x-request-id"])["status"] == 200


def test_cost_is_estimated_from_the_configured_price_table(make_settings, start_gateway, log_dir):
    gw = start_gateway(
        make_settings(
            upstreams={"priced": {"model": "echo-priced", "price_in": 2.0, "price_out": 10.0}},
            routes={"priced-bot": {"baseline": "priced"}},
        )
    )
    with sync_client(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="priced-bot", messages=MESSAGES)
    r = row(gw, log_dir, raw.headers["x-request-id"])
    assert r["route"] == "priced-bot"
    assert r["upstream"] == "priced"
    assert r["upstream_model"] == "echo-priced"
    assert r["provider"] == "openai"
    assert r["cost_usd"] == pytest.approx((7 * 2.0 + 2 * 10.0) / 1e6)


def test_the_upstreams_own_request_id_does_not_replace_the_call_id(gateway, fake_upstream, log_dir):
    fake_upstream.extra_headers = {"x-request-id": "req_from_provider", "openai-processing-ms": "5"}
    with sync_client(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(model="echo-hdr", messages=MESSAGES)
    assert raw.headers.get_list("x-request-id") == [raw.headers["x-request-id"]]
    call_id = raw.headers["x-request-id"]
    assert call_id.startswith("call_")
    assert raw.headers["openai-processing-ms"] == "5"  # other provider headers pass through
    assert raw.headers["x-upstream-request-id"] == "req_from_provider"
    assert row(gateway, log_dir, call_id)["status"] == 200
