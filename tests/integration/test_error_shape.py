"""Every error path answers in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``
with the right status, through the real ``openai`` SDK where it can send the request; none
hangs (the clients time out after a few seconds), and each call is logged with its error."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.calllog import row
from tests.support.servers import free_port

MESSAGES = [{"role": "user", "content": "hi"}]
TIMEOUT = 8


def client_for(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-test", max_retries=0, timeout=TIMEOUT)


def post(gw, path: str = "/chat/completions", **kw) -> httpx.Response:
    return httpx.post(gw.base_url + path, timeout=TIMEOUT, **kw)


def error_of(resp: httpx.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    assert body["error"]["code"] is None or isinstance(body["error"]["code"], str)
    return body["error"]


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b'{"model": "echo", "messages": [', None),
        (b"", None),
        (b"not json at all", None),
        (b'["model", "echo"]', None),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "hi"}]}', "model"),
        (b'{"model": "echo"}', "messages"),
        (b'{"model": "echo", "messages": []}', "messages"),
        (b'{"model": "echo", "messages": "hi"}', "messages"),
        (b'{"model": "echo", "messages": [{"content": "hi"}]}', "messages[0].role"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "n": 0}', "n"),
        (b'{"model": "echo", "messages": [{"role": "user", "content": "hi"}], "n": "2"}', "n"),
        (b'\xff\xfe{"model"', None),
    ],
    ids=[
        "truncated-json",
        "empty-body",
        "not-json",
        "not-an-object",
        "no-model",
        "model-not-a-string",
        "no-messages",
        "empty-messages",
        "messages-not-a-list",
        "message-without-role",
        "stream-not-a-bool",
        "n-zero",
        "n-a-string",
        "not-utf8",
    ],
)
def test_malformed_or_invalid_chat_requests_are_400_never_422_or_500(
    gateway, fake_upstream, log_dir, content, param
):
    resp = post(gateway, content=content, headers={"content-type": "application/json"})
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert fake_upstream.requests == []
    r = row(gateway, log_dir, resp.headers["x-request-id"])
    assert (r["status"], r["error_type"]) == (400, "invalid_request_error")
    assert r["error_message"] == err["message"]


def test_an_embeddings_request_without_input_is_400(gateway):
    resp = post(gateway, "/embeddings", json={"model": "emb"})
    assert resp.status_code == 400
    assert error_of(resp)["param"] == "input"


def test_the_sdk_sees_a_bad_request_error_with_its_param(gateway):
    with client_for(gateway) as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="echo", messages=MESSAGES, n=0)
    assert info.value.status_code == 400
    assert info.value.param == "n"
    assert info.value.type == "invalid_request_error"


def test_an_unknown_model_is_404_model_not_found(make_settings, start_gateway, fake_upstream, log_dir):
    gw = start_gateway(
        make_settings(
            server={"passthrough_url": None},
            upstreams={"up": {"model": "echo-x"}},
            routes={"bot": {"baseline": "up"}},
        )
    )
    with client_for(gw) as client, pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.with_raw_response.create(model="no-such-model", messages=MESSAGES)
    exc = info.value
    assert exc.status_code == 404
    assert (exc.type, exc.param, exc.code) == ("invalid_request_error", "model", "model_not_found")
    assert "no-such-model" in exc.message
    assert fake_upstream.requests == []
    r = row(gw, log_dir, exc.response.headers["x-request-id"])
    assert (r["status"], r["route"]) == (404, None)

    with client_for(gw) as client:  # the configured route still answers
        assert (
            client.chat.completions.create(model="bot", messages=MESSAGES).choices[0].message.content
            == "echo-x: hi"
        )


def test_a_body_over_the_limit_is_413(make_settings, start_gateway, fake_upstream, log_dir):
    gw = start_gateway(make_settings(server={"max_body_bytes": 2000}))
    big = [{"role": "user", "content": "x" * 5000}]
    with client_for(gw) as client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="echo", messages=big)
    exc = info.value
    assert exc.status_code == 413
    assert (exc.type, exc.code) == ("invalid_request_error", "payload_too_large")

    def chunked():  # no content-length: the limit holds while the body streams in
        yield b'{"model": "echo", "messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}]}'

    resp = post(gw, content=chunked(), headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert error_of(resp)["code"] == "payload_too_large"
    assert fake_upstream.requests == []
    assert row(gw, log_dir, resp.headers["x-request-id"])["status"] == 413

    ok = post(gw, json={"model": "echo", "messages": MESSAGES})  # under the limit: fine
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("status", "exc_class"),
    [
        (400, openai.BadRequestError),
        (403, openai.PermissionDeniedError),
        (404, openai.NotFoundError),
        (422, openai.UnprocessableEntityError),
    ],
)
def test_an_upstream_4xx_passes_through_with_its_status_and_body_and_is_not_retried(
    gateway, fake_upstream, log_dir, status, exc_class
):
    with client_for(gateway) as client, pytest.raises(exc_class) as info:
        client.chat.completions.create(model=f"reject-{status}", messages=MESSAGES)
    exc = info.value
    assert exc.status_code == status
    assert (exc.type, exc.param, exc.code) == ("invalid_request_error", "messages", "scripted_reject")
    assert exc.body["message"] == f"rejected {status}"
    assert len(fake_upstream.requests) == 1
    r = row(gateway, log_dir, exc.response.headers["x-request-id"])
    assert (r["status"], r["error_type"], r["error_message"]) == (
        status,
        "invalid_request_error",
        f"rejected {status}",
    )


def test_an_upstream_error_that_is_not_json_is_wrapped_in_openais_shape(gateway, log_dir):
    resp = post(gateway, json={"model": "html-418", "messages": MESSAGES})
    assert resp.status_code == 418
    assert resp.headers["content-type"].startswith("application/json")
    err = error_of(resp)
    assert err["type"] == "upstream_error"
    assert err["code"] == "418"
    assert "bad gateway" in err["message"]
    r = row(gateway, log_dir, resp.headers["x-request-id"])
    assert (r["status"], r["error_type"]) == (418, "upstream_error")


@pytest.mark.parametrize("status", [429, 500, 503])
def test_an_upstream_429_or_5xx_is_retried_and_then_succeeds(gateway, fake_upstream, log_dir, status):
    with client_for(gateway) as client:
        raw = client.chat.completions.with_raw_response.create(model=f"flaky-{status}", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == f"flaky-{status}: hi"
    assert len(fake_upstream.requests) == 2
    assert fake_upstream.requests[0]["body"] == fake_upstream.requests[1]["body"]
    r = row(gateway, log_dir, raw.headers["x-request-id"])
    assert (r["status"], r["error_type"], r["output_text"]) == (200, None, f"flaky-{status}: hi")


def test_a_streamed_call_is_retried_before_the_first_byte(gateway, fake_upstream):
    with client_for(gateway) as client:
        stream = client.chat.completions.create(model="flaky-503", messages=MESSAGES, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "flaky-503: hi"
    assert len(fake_upstream.requests) == 2


def test_retries_are_bounded_and_the_last_upstream_error_is_returned(
    make_settings, start_gateway, fake_upstream, log_dir
):
    gw = start_gateway(
        make_settings(
            upstreams={"down": {"model": "error-503", "retries": 2}}, routes={"r": {"baseline": "down"}}
        )
    )
    with client_for(gw) as client, pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="r", messages=MESSAGES)
    assert info.value.status_code == 503
    assert info.value.body["message"] == "scripted 503"
    assert len(fake_upstream.requests) == 3
    r = row(gw, log_dir, info.value.response.headers["x-request-id"])
    assert (r["status"], r["error_type"]) == (503, "server_error")


def test_an_upstream_rate_limit_that_persists_reaches_the_caller_as_429(gateway, fake_upstream):
    with client_for(gateway) as client, pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="error-429", messages=MESSAGES)
    assert info.value.type == "rate_limit_error"
    assert len(fake_upstream.requests) == 3  # passthrough default: 2 retries


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_slower_than_its_timeout_is_504(
    make_settings, start_gateway, fake_upstream, log_dir, stream
):
    gw = start_gateway(
        make_settings(
            upstreams={"slow": {"model": "slow-2", "timeout": 0.3, "retries": 0}},
            routes={"r": {"baseline": "slow"}},
        )
    )
    resp = post(gw, json={"model": "r", "messages": MESSAGES, "stream": stream})
    assert resp.status_code == 504
    err = error_of(resp)
    assert (err["type"], err["code"]) == ("timeout_error", "upstream_timeout")
    r = row(gw, log_dir, resp.headers["x-request-id"])
    assert (r["status"], r["error_type"], r["stream"]) == (504, "timeout_error", stream)

    with client_for(gw) as client, pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="r", messages=MESSAGES)
    assert info.value.status_code == 504


def test_an_unreachable_upstream_is_502(make_settings, start_gateway, log_dir):
    closed = free_port()
    gw = start_gateway(
        make_settings(
            upstreams={"gone": {"base_url": f"http://127.0.0.1:{closed}/v1", "retries": 1}},
            routes={"r": {"baseline": "gone"}},
        )
    )
    with client_for(gw) as client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="r", messages=MESSAGES, stream=True)
    exc = info.value
    assert exc.status_code == 502
    assert (exc.type, exc.code) == ("upstream_error", "upstream_unavailable")
    r = row(gw, log_dir, exc.response.headers["x-request-id"])
    assert (r["status"], r["error_type"], r["upstream"]) == (502, "upstream_error", "gone")
    # the caller gets a generic message with the call id; the log keeps the detail
    assert r["call_id"] in exc.body["message"] and "127.0.0.1" not in exc.body["message"]
    assert "Connection refused" in r["error_message"] and f"127.0.0.1:{closed}" in r["error_message"]


def test_errors_outside_the_hot_path_have_the_same_shape(gateway):
    resp = httpx.get(gateway.url + "/v1/nowhere", timeout=TIMEOUT)
    assert resp.status_code == 404
    assert error_of(resp)["type"] == "invalid_request_error"
    resp = httpx.get(gateway.base_url + "/chat/completions", timeout=TIMEOUT)
    assert 400 <= resp.status_code < 500
    error_of(resp)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "echo"},  # rejected by the gateway
        {"model": "reject-400", "messages": MESSAGES},  # rejected by the upstream
        {"model": "error-500", "messages": MESSAGES},  # failed upstream after retries
    ],
    ids=["gateway-400", "upstream-400", "upstream-500"],
)
def test_error_answers_carry_the_request_id_and_overhead_headers(gateway, log_dir, body):
    resp = post(gateway, json=body)
    assert resp.status_code >= 400
    assert resp.headers.get_list("x-request-id") == [resp.headers["x-request-id"]]
    assert resp.headers["x-request-id"].startswith("call_")
    assert float(resp.headers["x-shadowtune-overhead-ms"]) >= 0
    assert row(gateway, log_dir, resp.headers["x-request-id"])["status"] == resp.status_code


def test_wrong_method_on_a_proxied_path_is_a_405_in_openai_shape(gateway):
    import httpx as _httpx

    r = _httpx.get(gateway.base_url + "/chat/completions")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_every_response_carries_a_request_id_and_the_overhead(gateway):
    import httpx as _httpx

    for path in ("/healthz", "/readyz", "/v1/models", "/no-such-page"):
        r = _httpx.get(gateway.url + path)
        assert r.headers["x-request-id"], path
        assert float(r.headers["x-shadowtune-overhead-ms"]) >= 0, path
