"""Streamed chat completions: relayed chunk by chunk, assembled in the log, failing cleanly
midway, and cancelled upstream when the client goes away."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest

from tests.support.calllog import response, row, rows, wait_for_rows

MESSAGES = [{"role": "user", "content": "stream me please"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]


def client_for(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0, timeout=10)


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n") if line.startswith("data: ")]


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_sync_stream_is_relayed_and_assembled_in_the_log(gateway, log_dir):
    with client_for(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(model="echo-s", messages=MESSAGES, stream=True)
        assert raw.headers["content-type"].startswith("text/event-stream")
        call_id = raw.headers["x-request-id"]
        assert float(raw.headers["x-shadowtune-overhead-ms"]) >= 0
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo-s: stream me please"
    assert len(chunks) > 3  # relayed as chunks, not one blob
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)  # no usage chunk unless asked for

    r = row(gateway, log_dir, call_id)
    assert r["stream"] is True
    assert r["status"] == 200
    assert r["output_text"] == text
    assert r["finish_reason"] == "stop"
    assert r["response_id"] == chunks[0].id
    assert r["ttft_ms"] is not None and r["ttft_ms"] >= 0
    assert r["error_type"] is None
    assembled = response(r)
    assert assembled["object"] == "chat.completion"
    assert assembled["choices"][0]["message"] == {"role": "assistant", "content": text}


async def test_async_stream_with_include_usage_ends_with_a_usage_chunk(gateway, fake_upstream, log_dir):
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="sk-test", max_retries=0, timeout=10
    ) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="echo-usage", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in raw.parse()]
    assert fake_upstream.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    assert chunks[-1].choices == []
    assert chunks[-1].usage.prompt_tokens == 7
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "echo-usage: stream me please"
    )
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert (r["input_tokens"], r["output_tokens"]) == (7, chunks[-1].usage.completion_tokens)
    assert response(r)["usage"]["total_tokens"] == chunks[-1].usage.total_tokens


def test_streamed_tool_call_deltas_are_assembled_in_the_log(gateway, log_dir):
    with client_for(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="echo-st", messages=MESSAGES, tools=TOOLS, tool_choice="required", stream=True
        )
        chunks = list(raw.parse())
    args = "".join(
        tc.function.arguments or ""
        for c in chunks
        if c.choices
        for tc in (c.choices[0].delta.tool_calls or ())
    )
    assert json.loads(args) == {"q": "stream me please"}
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert r["finish_reason"] == "tool_calls"
    message = response(r)["choices"][0]["message"]
    assert message["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": args}}
    ]


def test_streamed_n_choices_and_logprobs_are_assembled_per_choice(gateway, log_dir):
    with client_for(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="echo-sn", messages=MESSAGES, stream=True, n=2, logprobs=True
        )
        chunks = list(raw.parse())
    by_index: dict[int, str] = {}
    for c in chunks:
        for ch in c.choices:
            by_index[ch.index] = by_index.get(ch.index, "") + (ch.delta.content or "")
    assert by_index == {0: "echo-sn: stream me please", 1: "echo-sn: stream me please"}
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    choices = response(r)["choices"]
    assert [c["message"]["content"] for c in choices] == [by_index[0], by_index[1]]
    assert [c["finish_reason"] for c in choices] == ["stop", "stop"]
    tokens = "".join(t["token"] for t in choices[1]["logprobs"]["content"])
    assert tokens == by_index[1]


def test_unknown_fields_in_stream_chunks_come_back_unchanged(gateway):
    body = {"model": "echo-sx", "messages": MESSAGES, "stream": True, "x_reply_extra": {"x_shard": "b7"}}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, timeout=10) as resp:
        text = resp.read().decode()
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["x_shard"] == "b7" for e in events[:-1])


def test_a_stream_failing_midway_sends_one_error_event_and_closes(gateway, log_dir):
    body = {"model": "break", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, timeout=10) as resp:
        assert resp.status_code == 200
        call_id = resp.headers["x-request-id"]
        text = resp.read().decode()  # returns: the gateway closed the stream
    events = [json.loads(e) for e in sse_events(text) if e != "[DONE]"]
    errors = [e for e in events if "error" in e]
    assert len(errors) == 1
    assert events[-1] is errors[0]
    assert errors[0]["error"]["type"] == "upstream_error"
    assert set(errors[0]["error"]) == {"message", "type", "param", "code"}
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events[:-1]) == "break: s"

    r = row(gateway, log_dir, call_id)
    assert r["stream"] is True
    assert r["status"] == 502
    assert r["error_type"] == "upstream_error"
    assert r["error_message"]
    assert r["output_text"] == "break: s"  # what the user saw before the failure
    assert response(r)["error"]["type"] == "upstream_error"


def test_the_sdk_raises_on_a_stream_failing_midway(gateway):
    with client_for(gateway) as client:
        stream = client.chat.completions.create(model="break", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError):
            for _ in stream:
                pass


def test_an_upstream_stalling_midway_times_out_with_an_error_event(make_settings, start_gateway, log_dir):
    gw = start_gateway(
        make_settings(
            upstreams={"staller": {"model": "stall", "timeout": 0.5, "retries": 0}},
            routes={"st": {"baseline": "staller"}},
        )
    )
    body = {"model": "st", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", gw.base_url + "/chat/completions", json=body, timeout=10) as resp:
        call_id = resp.headers["x-request-id"]
        text = resp.read().decode()
    errors = [json.loads(e) for e in sse_events(text) if e != "[DONE]" and "error" in json.loads(e)]
    assert [e["error"]["type"] for e in errors] == ["timeout_error"]
    r = row(gw, log_dir, call_id)
    assert (r["status"], r["error_type"]) == (504, "timeout_error")


def test_chunks_reach_the_client_before_the_upstream_has_finished(gateway, fake_upstream):
    body = {"model": "stall", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, timeout=10) as resp:
        seen = ""
        for piece in resp.iter_text():
            seen += piece
            if "stal" in seen and "l: s" in seen:
                break
    # the upstream is still holding the stream open: what we read was relayed, not buffered
    assert "[DONE]" not in seen
    assert wait_until(lambda: fake_upstream.in_flight == 0)


def test_a_client_disconnect_midstream_cancels_the_upstream_call_and_a_healthy_call_follows(
    gateway, fake_upstream, log_dir
):
    body = {"model": "stall", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", gateway.base_url + "/chat/completions", json=body, timeout=10) as resp:
        call_id = resp.headers["x-request-id"]
        received = resp.iter_raw()  # keep a reference: a collected generator closes the stream
        seen = b""
        # the first text delta's whole event has been relayed (and so logged): the relay passes on
        # what it reads as it reads it, so under load the delta can arrive before the rest of its
        # event, and the role event before it (whose "model": "stall" also holds "stal")
        delta = b'"content": "stal"'
        while delta not in seen or b"\n\n" not in seen[seen.index(delta) :]:
            seen += next(received)
        assert seen.startswith(b"data: ")
        assert wait_until(lambda: fake_upstream.in_flight == 1)
        assert fake_upstream.cancelled == 0
    # leaving the block closes the connection mid-stream
    assert wait_until(lambda: fake_upstream.in_flight == 0 and fake_upstream.cancelled == 1)

    logged = wait_for_rows(gateway, log_dir, f"call_id = '{call_id}'", 1)
    assert len(logged) == 1
    assert logged[0]["status"] == 499
    assert logged[0]["error_type"] == "client_disconnected"
    assert logged[0]["stream"] is True
    assert (logged[0]["output_text"] or "").startswith("stal")

    with client_for(gateway) as client:
        completion = client.chat.completions.create(model="echo-after", messages=MESSAGES)
    assert completion.choices[0].message.content == "echo-after: stream me please"
    assert len(rows(gateway, log_dir, "status = 499")) == 1


def test_a_client_disconnect_before_the_answer_cancels_a_non_streamed_call(gateway, fake_upstream, log_dir):
    body = {"model": "slow-30", "messages": MESSAGES}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gateway.base_url + "/chat/completions", json=body, timeout=httpx.Timeout(10, read=0.3))
    assert wait_until(lambda: fake_upstream.in_flight == 0 and fake_upstream.cancelled == 1)
    logged = wait_for_rows(gateway, log_dir, "status = 499", 1)
    assert [r["error_type"] for r in logged] == ["client_disconnected"]
    assert logged[0]["stream"] is False
