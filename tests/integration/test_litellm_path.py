"""The litellm path (every provider that is not OpenAI-compatible), against fake providers on
loopback: an OpenAI-compatible server reached through litellm (``hosted_vllm``) and an
Anthropic-shaped one (``/v1/messages``). Answers come back in OpenAI's wire format, streamed or
not, and are logged like the direct path's; the provider key goes upstream, never to the log."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.calllog import row

KEY = "sk-ant-provider-key-31337"
MESSAGES = [{"role": "user", "content": "through litellm"}]
TIMEOUT = 60  # the first call imports litellm


@pytest.fixture(params=["hosted_vllm", "anthropic"])
def provider(request, make_settings, start_gateway, fake_upstream, monkeypatch):
    monkeypatch.setenv("FAKE_PROVIDER_KEY", KEY)
    name = request.param
    base = fake_upstream.base_url if name == "hosted_vllm" else f"http://127.0.0.1:{fake_upstream.port}"

    def start(model: str = "model-x", **extra):
        upstream = {"provider": name, "base_url": base, "model": model, "api_key_env": "FAKE_PROVIDER_KEY"}
        settings = make_settings(upstreams={"llm": {**upstream, **extra}}, routes={"r": {"baseline": "llm"}})
        return start_gateway(settings)

    start.name = name
    return start


def client_for(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key="sk-caller", max_retries=0, timeout=TIMEOUT)


def sent_key(fake_upstream) -> str:
    headers = fake_upstream.requests[-1]["headers"]
    return headers.get("x-api-key") or headers.get("Authorization", "").removeprefix("Bearer ")


def test_a_completion_through_litellm_is_openai_shaped_and_logged(provider, fake_upstream, log_dir):
    gw = provider()
    with client_for(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="r", messages=MESSAGES)
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.content == "model-x: through litellm"
    expected_path = "/v1/chat/completions" if provider.name == "hosted_vllm" else "/v1/messages"
    assert fake_upstream.requests[-1]["path"] == expected_path
    assert sent_key(fake_upstream) == KEY
    r = row(gw, log_dir, raw.headers["x-request-id"])
    assert (r["status"], r["provider"], r["upstream_model"]) == (200, provider.name, "model-x")
    assert r["output_text"] == "model-x: through litellm"
    assert r["input_tokens"] == 7
    assert KEY not in str(r)


def test_a_stream_through_litellm_is_relayed_as_chunks_and_assembled(provider, fake_upstream, log_dir):
    gw = provider()
    with client_for(gw) as client:
        raw = client.chat.completions.with_raw_response.create(model="r", messages=MESSAGES, stream=True)
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "model-x: through litellm"
    assert len(chunks) > 3
    assert fake_upstream.requests[-1]["body"]["stream"] is True
    r = row(gw, log_dir, raw.headers["x-request-id"])
    assert (r["status"], r["stream"], r["output_text"]) == (200, True, text)
    assert r["finish_reason"] == "stop"


def test_a_provider_failure_through_litellm_is_an_openai_shaped_5xx(provider, log_dir):
    gw = provider(model="error-500", retries=0)
    resp = httpx.post(
        gw.base_url + "/chat/completions", json={"model": "r", "messages": MESSAGES}, timeout=TIMEOUT
    )
    assert 500 <= resp.status_code < 600
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert KEY not in resp.text and "127.0.0.1" not in err["message"]
    r = row(gw, log_dir, resp.headers["x-request-id"])
    assert r["status"] == resp.status_code and r["error_type"]
    assert KEY not in str(r)
    assert httpx.get(gw.url + "/healthz", timeout=10).json()["upstreams"]["llm"]["errors"] == 1


def test_responses_and_completions_through_litellm(provider, log_dir):
    gw = provider()
    with client_for(gw) as client:
        raw = client.responses.with_raw_response.create(model="r", input="hi there")
        events = list(client.responses.create(model="r", input="streamed", stream=True))
        legacy = client.completions.create(model="r", prompt="once")
    assert raw.parse().output_text == "model-x: hi there"
    assert events[-1].type == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "model-x: streamed"
    assert legacy.choices[0].text == "model-x: once"
    r = row(gw, log_dir, raw.headers["x-request-id"])
    assert (r["endpoint"], r["status"], r["output_text"]) == ("responses", 200, "model-x: hi there")


@pytest.fixture
def tls_provider(tmp_path, make_settings, start_gateway, monkeypatch):
    """A litellm provider on a real TLS server whose certificate no trusted CA signed, reached
    through a TCP relay that counts the connections (each attempt is one)."""
    from tests.support.fake_upstream import FakeUpstream
    from tests.support.proxy import Proxy
    from tests.support.tls import make_authority

    monkeypatch.setenv("FAKE_PROVIDER_KEY", KEY)
    up = FakeUpstream(make_authority(tmp_path / "pki").server_context()).start()
    relay = Proxy(relay_to=up.port).start()

    def start(name: str, retries: int = 2):
        base = f"https://127.0.0.1:{relay.port}" + ("/v1" if name == "hosted_vllm" else "")
        upstream = {
            "provider": name,
            "base_url": base,
            "model": "model-x",
            "api_key_env": "FAKE_PROVIDER_KEY",
        }
        settings = make_settings(
            upstreams={"llm": {**upstream, "retries": retries}}, routes={"r": {"baseline": "llm"}}
        )
        return start_gateway(settings)

    yield start, up, relay
    relay.stop()
    up.stop()


@pytest.mark.parametrize("name", ["hosted_vllm", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_untrusted_certificate_through_litellm_is_a_tls_error_tried_once(
    tls_provider, log_dir, name, stream
):
    start, up, relay = tls_provider
    gw = start(name)
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        resp = client.post(
            gw.base_url + "/chat/completions", json={"model": "r", "messages": MESSAGES, "stream": stream}
        )
    assert resp.status_code == 502, resp.text
    err = resp.json()["error"]
    assert (err["type"], err["code"]) == ("upstream_error", "upstream_tls_error")
    assert err["message"].startswith("TLS with the upstream failed")
    assert "127.0.0.1" not in err["message"] and KEY not in resp.text
    assert relay.requests == ["RELAY"]  # one connection: a certificate failure is not retried
    r = row(gw, log_dir, resp.headers["x-request-id"])
    assert (r["status"], r["error_type"]) == (502, "upstream_error")
    assert "certificate" in r["error_message"].lower() or "CERTIFICATE_VERIFY_FAILED" in r["error_message"]
    assert KEY not in str(r)
    assert up.requests == []


def test_a_provider_429_through_litellm_is_retried_by_the_gateway(
    make_settings, start_gateway, fake_upstream, monkeypatch
):
    monkeypatch.setenv("FAKE_PROVIDER_KEY", KEY)
    upstream = {
        "provider": "hosted_vllm",
        "model": "flaky-429",
        "api_key_env": "FAKE_PROVIDER_KEY",
        "retries": 1,
    }
    gw = start_gateway(make_settings(upstreams={"llm": upstream}, routes={"r": {"baseline": "llm"}}))
    with client_for(gw) as client:
        reply = client.chat.completions.create(model="r", messages=[{"role": "user", "content": "retry me"}])
    assert reply.choices[0].message.content == "flaky-429: retry me"
    assert len([q for q in fake_upstream.requests if q["body"].get("model") == "flaky-429"]) == 2


def test_stored_responses_through_litellm(make_settings, start_gateway, fake_upstream, monkeypatch):
    monkeypatch.setenv("FAKE_PROVIDER_KEY", KEY)
    upstream = {"provider": "hosted_vllm", "model": "model-x", "api_key_env": "FAKE_PROVIDER_KEY"}
    settings = make_settings(
        server={"passthrough_url": None}, upstreams={"llm": upstream}, routes={"r": {"baseline": "llm"}}
    )
    gw = start_gateway(settings)
    with client_for(gw) as client:
        made = client.responses.create(model="r", input=[{"role": "user", "content": "keep"}])
        assert client.responses.retrieve(made.id).output_text == "model-x: keep"
        items = client.responses.input_items.list(made.id, limit=5)
        assert [i.content[0].text for i in items.data] == ["keep"]
        upstream_id = next(iter(fake_upstream.stored))  # litellm's id wraps the provider's
        fake_upstream.stored.pop(upstream_id)  # gone upstream: the provider's 404 comes back as one
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(made.id)
    seen = [(q.get("method"), q["path"]) for q in fake_upstream.requests if q.get("method")]
    assert seen[0] == ("GET", f"/v1/responses/{upstream_id}")
    assert seen[1] == ("GET", f"/v1/responses/{upstream_id}/input_items")
    assert fake_upstream.requests[-1]["headers"]["Authorization"] == f"Bearer {KEY}"
