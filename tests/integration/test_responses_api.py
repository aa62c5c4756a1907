"""``/v1/responses`` and ``/v1/completions`` through the gateway, with the official ``openai`` SDK:
relayed both ways, streamed as typed events, logged in the same call log (``endpoint`` tells
the rows apart), shadowed and canaried when self-contained, kept on one variant when they
continue a conversation stored upstream (``previous_response_id``)."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.support.calllog import request, response, row, rows, wait_for_rows

TIMEOUT = 20


def client_for(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0, timeout=TIMEOUT)


def test_responses_create_is_relayed_and_logged(gateway, fake_upstream, log_dir):
    with client_for(gateway) as client:
        raw = client.responses.with_raw_response.create(model="echo-r", input="hello there", user="u1")
        resp = raw.parse()
    assert resp.output_text == "echo-r: hello there"
    assert resp.id.startswith("resp_")
    assert fake_upstream.requests[-1]["path"] == "/v1/responses"
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert (r["endpoint"], r["status"], r["stream"], r["error_type"]) == ("responses", 200, False, None)
    assert r["output_text"] == "echo-r: hello there"
    assert (r["response_id"], r["finish_reason"], r["input_tokens"], r["user"]) == (
        resp.id,
        "completed",
        7,
        "u1",
    )
    assert request(r)["input"] == "hello there"
    assert response(r)["output"][0]["content"][0]["text"] == "echo-r: hello there"


def test_responses_stream_relays_the_typed_events_and_logs_the_final_response(gateway, log_dir):
    with client_for(gateway) as client:
        raw = client.responses.with_raw_response.create(
            model="echo-r",
            input=[{"role": "user", "content": [{"type": "input_text", "text": "stream it"}]}],
            stream=True,
        )
        events = list(raw.parse())
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "echo-r: stream it"
    assert len([k for k in kinds if k == "response.output_text.delta"]) > 2  # relayed event by event
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert (r["endpoint"], r["status"], r["stream"], r["error_type"]) == ("responses", 200, True, None)
    assert (r["output_text"], r["finish_reason"]) == (text, "completed")
    assert r["response_id"] == events[-1].response.id
    assert r["output_tokens"] == 3 and r["ttft_ms"] is not None


def test_the_sdk_stream_helper_works_through_the_gateway(gateway):
    with client_for(gateway) as client, client.responses.stream(model="echo-h", input="helper") as stream:
        final = stream.get_final_response()
    assert final.output_text == "echo-h: helper"


@pytest.mark.parametrize(("model", "error_type"), [("errevent", "server_error"), ("failed", "server_error")])
def test_a_responses_stream_ending_in_an_error_is_relayed_and_logged_as_an_error(
    gateway, log_dir, model, error_type
):
    body = {"model": model, "input": "hi", "stream": True}
    resp = httpx.post(gateway.base_url + "/responses", json=body, timeout=TIMEOUT)
    assert resp.status_code == 200
    kinds = [json.loads(line[6:])["type"] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert kinds[-1] == ("error" if model == "errevent" else "response.failed")
    r = row(gateway, log_dir, resp.headers["x-request-id"])
    assert (r["status"], r["error_type"]) == (502, error_type)
    assert r["error_message"]


def test_responses_errors_keep_openai_shape(gateway, log_dir):
    with client_for(gateway) as client:
        with pytest.raises(openai.APIStatusError) as info:
            client.responses.create(model="badjson", input="hi")
        assert (info.value.status_code, info.value.code) == (502, "upstream_invalid_response")
        with pytest.raises(openai.NotFoundError) as missing:
            client.responses.create(model="echo", input="hi", previous_response_id="resp_unknown")
        assert missing.value.code == "previous_response_not_found"  # the upstream's 404, relayed
        with pytest.raises(openai.BadRequestError) as bad:
            client.responses.create(model="echo", input=42)  # type: ignore[arg-type]
        assert bad.value.param == "input"


def test_completions_legacy_endpoint_is_relayed_and_logged(gateway, log_dir):
    with client_for(gateway) as client:
        raw = client.completions.with_raw_response.create(model="echo-c", prompt="once upon")
        done = raw.parse()
        streamed = client.completions.with_raw_response.create(
            model="echo-c", prompt="a time", stream=True, stream_options={"include_usage": True}
        )
        chunks = list(streamed.parse())
    assert done.choices[0].text == "echo-c: once upon"
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "echo-c: a time"
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert (r["endpoint"], r["status"], r["output_text"], r["finish_reason"]) == (
        "completions",
        200,
        "echo-c: once upon",
        "stop",
    )
    s = row(gateway, log_dir, streamed.headers["x-request-id"])
    assert (s["endpoint"], s["stream"], s["output_text"], s["finish_reason"]) == (
        "completions",
        True,
        text,
        "stop",
    )
    assert s["input_tokens"] == 5
    with pytest.raises(openai.BadRequestError) as bad, client_for(gateway) as client:
        client.completions.create(model="echo-c", prompt=None)  # type: ignore[arg-type]
    assert bad.value.param == "prompt"


@pytest.fixture
def routed(make_settings, start_gateway):
    def start(mode: str, share: float = 0.0):
        settings = make_settings(
            upstreams={"base": {"model": "base-model"}, "cand": {"model": "cand-model"}},
            routes={"bot": {"baseline": "base", "candidate": "cand", "mode": mode, "share": share}},
        )
        return start_gateway(settings)

    return start


def test_a_self_contained_responses_request_is_shadowed(routed, log_dir):
    gw = routed("shadow")
    with client_for(gw) as client:
        raw = client.responses.with_raw_response.create(model="bot", input="shadow me", store=False)
    call_id = raw.headers["x-request-id"]
    shadow = wait_for_rows(gw, log_dir, f"parent_call_id = '{call_id}'", 1)
    assert len(shadow) == 1
    assert (shadow[0]["endpoint"], shadow[0]["variant"], shadow[0]["served"]) == (
        "responses",
        "candidate",
        False,
    )
    assert shadow[0]["output_text"] == "cand-model: shadow me"
    assert row(gw, log_dir, call_id)["output_text"] == "base-model: shadow me"


def test_a_continued_conversation_is_served_by_the_baseline_only_and_not_shadowed(
    routed, fake_upstream, log_dir
):
    gw = routed("shadow")
    with client_for(gw) as client:
        first = client.responses.create(model="bot", input="turn one")
        raw = client.responses.with_raw_response.create(
            model="bot", input="turn two", previous_response_id=first.id
        )
    assert raw.parse().output_text == "base-model: turn two"
    r = row(gw, log_dir, raw.headers["x-request-id"])
    assert r["variant"] == "baseline" and "stateful:baseline" in r["tags"]
    assert gw.ctx.shadow.skipped[("bot", "stateful:baseline")] == 1
    assert rows(gw, log_dir, f"parent_call_id = '{r['call_id']}'") == []
    asked = [q["body"]["model"] for q in fake_upstream.requests if q["body"].get("input") == "turn two"]
    assert asked == ["base-model"]


def test_a_conversation_the_candidate_began_stays_on_the_candidate(routed, fake_upstream, log_dir):
    gw = routed("canary", share=100)
    with client_for(gw) as client:
        first = client.responses.create(model="bot", input="turn one", user="alice")
        assert first.output_text == "cand-model: turn one"
        raw = client.responses.with_raw_response.create(
            model="bot", input="turn two", user="alice", previous_response_id=first.id
        )
    assert raw.parse().output_text == "cand-model: turn two"
    r = row(gw, log_dir, raw.headers["x-request-id"])
    assert r["variant"] == "candidate" and "stateful:candidate" in r["tags"]
