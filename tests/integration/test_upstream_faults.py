"""Every upstream misbehaviour, through the gateway to a fault-injecting fake upstream.

For each fault: 5xx only when the upstream is at fault, always in OpenAI's error shape; the
call logged with its error; the gateway still alive; and no secret (the password in the
upstream URL, the provider key) in the answer, the log row or the span.
"""

from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.support.calllog import row, rows

PASSWORD = "s3cret-pw-4242"
KEY = "sk-secret-upstream-key-9876"
SECRETS = (PASSWORD, KEY)
MESSAGES = [{"role": "user", "content": "hello there"}]
TIMEOUT = 20


@pytest.fixture
def faulty(make_settings, start_gateway, fake_upstream, monkeypatch):
    """The gateway in zero-config mode, its upstream URL holding a password, its key a secret."""
    monkeypatch.setenv("FAULT_TEST_KEY", KEY)
    url = fake_upstream.base_url.replace("http://", f"http://ops:{PASSWORD}@")
    exporter = InMemorySpanExporter()
    settings = make_settings(server={"passthrough_url": url, "upstream_key_env": "FAULT_TEST_KEY"})
    gw = start_gateway(settings, span_exporter=exporter)
    gw.exporter = exporter
    return gw


def post(gw, model: str, stream: bool = False) -> httpx.Response:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    return httpx.post(gw.base_url + "/chat/completions", json=body, timeout=TIMEOUT)


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        blob = text if isinstance(text, str) else json.dumps(text, default=str)
        for secret in SECRETS:
            assert secret not in blob


def assert_openai_error(resp: httpx.Response, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    assert resp.headers["x-request-id"] in err["message"]  # the call id, to find the detail in the log
    assert "127.0.0.1" not in err["message"]  # no internal URL
    return err


def spans_text(gw) -> str:
    gw.flush()
    out = []
    for span in gw.exporter.get_finished_spans():
        out.append(json.dumps(dict(span.attributes or {}), default=str))
        out.append(str(span.status.description))
    return "\n".join(out)


def alive(gw) -> dict:
    health = httpx.get(gw.url + "/healthz", timeout=TIMEOUT)
    assert health.status_code == 200
    return health.json()


@pytest.mark.parametrize(
    ("model", "stream", "code"),
    [
        ("badjson", False, "upstream_invalid_response"),
        ("notjson", False, "upstream_invalid_response"),
        ("badjson", True, "upstream_invalid_response"),  # asked for a stream, got broken JSON
        ("cut", False, "upstream_broke_off"),
        ("br", False, "upstream_bad_encoding"),
        ("br", True, "upstream_bad_encoding"),
    ],
)
def test_a_broken_answer_is_a_502_in_openai_shape_logged_as_an_upstream_error(
    faulty, log_dir, model, stream, code
):
    resp = post(faulty, model, stream)
    err = assert_openai_error(resp, 502, code)
    assert err["type"] == "upstream_error"
    r = row(faulty, log_dir, resp.headers["x-request-id"])
    assert (r["status"], r["error_type"]) == (502, "upstream_error")
    assert r["error_message"] and r["error_message"] != err["message"]
    assert_no_secret(resp.text, r, spans_text(faulty))
    health = alive(faulty)
    assert health["upstreams"]["passthrough"]["errors"] >= 1
    assert_no_secret(health)


def test_the_sdk_gets_an_api_error_not_a_json_decode_crash(faulty):
    client = openai.OpenAI(base_url=faulty.base_url, api_key="sk-caller", max_retries=0, timeout=TIMEOUT)
    with client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="badjson", messages=MESSAGES)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_invalid_response"


@pytest.mark.parametrize("model", ["gzip", "deflate", "rawdeflate"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_compressed_answer_is_decoded_not_corrupted(faulty, fake_upstream, log_dir, model, stream):
    client = openai.OpenAI(base_url=faulty.base_url, api_key="sk-caller", max_retries=0, timeout=TIMEOUT)
    with client:
        if stream:
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=MESSAGES, stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        else:
            raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
            text = raw.parse().choices[0].message.content
    assert text == f"{model}: hello there"
    assert "content-encoding" not in raw.headers
    assert fake_upstream.requests[-1]["headers"]["Accept-Encoding"] == "identity"
    r = row(faulty, log_dir, raw.headers["x-request-id"])
    assert (r["status"], r["error_type"], r["output_text"]) == (200, None, text)


def test_a_stream_ending_in_an_error_event_is_relayed_and_logged_as_an_error(faulty, log_dir):
    resp = post(faulty, "errevent", stream=True)
    assert resp.status_code == 200  # the caller already had its 200 when the event came
    events = [line[6:] for line in resp.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-2])["error"]["code"] == "overloaded"
    r = row(faulty, log_dir, resp.headers["x-request-id"])
    assert (r["status"], r["error_type"]) == (502, "server_error")
    assert r["error_message"] == "the model overloaded midway"
    errors = rows(faulty, log_dir, "coalesce(status, 0) >= 400 OR error_type IS NOT NULL")
    assert [e["call_id"] for e in errors] == [r["call_id"]]  # error rates count it
    spans = [s for s in faulty.exporter.get_finished_spans() if s.attributes.get("error.type")]
    assert len(spans) == 1 and spans[0].attributes["error.type"] == "server_error"
    alive(faulty)


def test_a_connection_dropped_mid_stream_ends_with_one_error_event_and_is_logged(faulty, log_dir):
    resp = post(faulty, "break", stream=True)
    assert resp.status_code == 200
    last = json.loads([line for line in resp.text.splitlines() if line.startswith("data: ")][-1][6:])
    assert last["error"]["code"] == "upstream_broke_off"
    assert resp.headers["x-request-id"] in last["error"]["message"]
    r = row(faulty, log_dir, resp.headers["x-request-id"])
    assert (r["status"], r["error_type"]) == (502, "upstream_error")
    assert_no_secret(resp.text, r, spans_text(faulty))
    alive(faulty)


def test_slow_bytes_within_the_timeout_make_a_whole_answer(faulty, log_dir):
    resp = post(faulty, "drip-0.1")
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "drip-0.1: hello there"
    assert row(faulty, log_dir, resp.headers["x-request-id"])["status"] == 200


def test_slow_bytes_past_the_timeout_are_a_504(make_settings, start_gateway, log_dir, monkeypatch):
    monkeypatch.setenv("FAULT_TEST_KEY", KEY)
    settings = make_settings(
        upstreams={"slow": {"model": "drip-1.5", "timeout": 0.5, "api_key_env": "FAULT_TEST_KEY"}},
        routes={"r": {"baseline": "slow"}},
    )
    gw = start_gateway(settings)
    resp = post(gw, "r")
    err = assert_openai_error(resp, 504, "upstream_timeout")
    assert "0.5s" in err["message"]
    r = row(gw, log_dir, resp.headers["x-request-id"])
    assert (r["status"], r["error_type"]) == (504, "timeout_error")
    assert_no_secret(resp.text, r)


@pytest.mark.parametrize("stream", [False, True])
def test_a_huge_answer_is_relayed_whole_and_logged(faulty, log_dir, stream):
    size = 3_000_000
    resp = post(faulty, f"huge-{size}", stream)
    assert resp.status_code == 200
    if stream:
        events = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
        text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
    else:
        text = resp.json()["choices"][0]["message"]["content"]
    assert len(text) == size
    r = row(faulty, log_dir, resp.headers["x-request-id"])
    assert r["status"] == 200 and len(r["output_text"]) == size


def test_upstream_failures_reach_the_operator_rate_limited(faulty, caplog):
    with caplog.at_level(logging.WARNING, logger="shadowtune.upstream"):
        for _ in range(3):
            assert post(faulty, "badjson").status_code == 502
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "shadowtune.upstream"]
    assert len(lines) == 1  # one line per upstream and error in the interval, not one per call
    assert "'passthrough'" in lines[0] and "upstream_error" in lines[0]
    assert_no_secret(*lines)
    assert alive(faulty)["upstreams"]["passthrough"]["errors"] == 3


def test_a_password_in_an_unreachable_upstream_url_never_reaches_caller_log_or_span(
    make_settings, start_gateway, log_dir
):
    from tests.support.servers import free_port

    exporter = InMemorySpanExporter()
    url = f"http://admin:{PASSWORD}@127.0.0.1:{free_port()}/v1"
    settings = make_settings(
        upstreams={"gone": {"base_url": url, "retries": 0}}, routes={"r": {"baseline": "gone"}}
    )
    gw = start_gateway(settings, span_exporter=exporter)
    gw.exporter = exporter
    for stream in (False, True):
        resp = post(gw, "r", stream)
        assert_openai_error(resp, 502, "upstream_unavailable")
        r = row(gw, log_dir, resp.headers["x-request-id"])
        assert "admin:***@127.0.0.1" in r["error_message"]  # the detail, redacted, for the operator
        assert_no_secret(resp.text, r, spans_text(gw))


@pytest.mark.parametrize(
    ("model", "stream", "error_type"),
    [("badjson", False, "upstream_error"), ("errevent", True, "server_error")],
)
def test_a_shadow_candidate_answering_badly_is_logged_as_an_error(
    make_settings, start_gateway, log_dir, model, stream, error_type
):
    from tests.support.calllog import wait_for_rows

    settings = make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": model}},
        routes={"r": {"baseline": "base", "candidate": "cand", "mode": "shadow"}},
    )
    gw = start_gateway(settings)
    resp = post(gw, "r", stream)
    assert resp.status_code == 200  # the user never sees the shadow
    call_id = resp.headers["x-request-id"]
    shadow = wait_for_rows(gw, log_dir, f"parent_call_id = '{call_id}'", 1)
    assert len(shadow) == 1
    assert (shadow[0]["variant"], shadow[0]["status"], shadow[0]["error_type"]) == (
        "candidate",
        502,
        error_type,
    )
    assert row(gw, log_dir, call_id)["error_type"] is None


@pytest.mark.parametrize("model", ["badjson", "cut"])
def test_a_candidate_answering_badly_falls_back_to_the_baseline(make_settings, start_gateway, log_dir, model):
    settings = make_settings(
        upstreams={"base": {"model": "echo-base"}, "cand": {"model": model, "retries": 0}},
        routes={"r": {"baseline": "base", "candidate": "cand", "mode": "primary", "shadow_rate": 0.0}},
    )
    gw = start_gateway(settings)
    resp = post(gw, "r")
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "echo-base: hello there"
    served = row(gw, log_dir, resp.headers["x-request-id"])
    assert (served["variant"], served["status"]) == ("baseline", 200)
    [failed] = rows(gw, log_dir, "NOT served")
    assert (failed["variant"], failed["status"], failed["error_type"]) == ("candidate", 502, "upstream_error")
    assert failed["parent_call_id"] == served["call_id"]
